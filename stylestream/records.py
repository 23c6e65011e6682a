"""Typed records for every topic (DESIGN.md, "Topics and records").

Events are validated at the edge with pydantic; anything that fails becomes a
:class:`DeadLetter` carrying the original bytes and the reason.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

CLICKS = "events.clicks"
PURCHASES = "events.purchases"
CATALOG = "catalog.updates"
RECS = "recs.out"
DLQ = "events.dlq"
EVENT_TOPICS = (CLICKS, PURCHASES)


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


# The largest fields a record may carry (UTF-8 bytes); longer ones are refused with the reason
# (dead-lettered), never cut silently: whatever is accepted ends up in the sequence table, its
# changelog, Milvus and every recommendation, so its size must be bounded here.
ITEM_ID_MAX_BYTES = 256
ID_MAX_BYTES = 128  # event_id, user_id, session_id
TITLE_MAX_BYTES = 1024  # also a click's search query
FIELD_MAX_BYTES = 256
RECORD_MAX_BYTES = 16 * 1024  # a whole raw record, refused before it is parsed
# Event time must be a real moment: NaN breaks the time-ordered insert, 1e300 would pin a
# shopper's sequence forever, and milliseconds (1.7e12) are a common producer mistake.
EVENT_TS_MIN = 631_152_000.0  # 1990-01-01T00:00:00Z
EVENT_TS_MAX = 4_102_444_800.0  # 2100-01-01T00:00:00Z
QUANTITY_MAX = 10_000


def _fits(limit: int, printable: bool = False):
    def check(value: str | None) -> str | None:
        if value is not None and len(value.encode()) > limit:
            raise ValueError(f"longer than {limit} bytes ({len(value.encode())})")
        if printable and value is not None and CONTROL.search(value):
            raise ValueError("control characters are not allowed in an id")
        return value
    return AfterValidator(check)


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _event_time(ts: float) -> float:
    if not EVENT_TS_MIN <= ts <= EVENT_TS_MAX:
        hint = " (milliseconds? send seconds)" if EVENT_TS_MAX < ts <= EVENT_TS_MAX * 1000 else ""
        raise ValueError(f"{ts!r} is not an event time between 1990 and 2100 in seconds since the epoch{hint}")
    return ts


Id = Annotated[str, Field(min_length=1), _fits(ID_MAX_BYTES, printable=True)]
ItemId = Annotated[str, Field(min_length=1), _fits(ITEM_ID_MAX_BYTES, printable=True)]
EventTime = Annotated[float, Field(allow_inf_nan=False, description="event time, seconds since the epoch"),
                      AfterValidator(_event_time)]


class ClickEvent(_Record):
    event_id: Id
    user_id: Id
    item_id: ItemId
    ts: EventTime
    session_id: Annotated[str | None, _fits(ID_MAX_BYTES, printable=True)] = None
    query: Annotated[str | None, _fits(TITLE_MAX_BYTES)] = None


class PurchaseEvent(_Record):
    event_id: Id
    user_id: Id
    item_id: ItemId
    ts: EventTime
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    quantity: int | None = Field(default=None, ge=1, le=QUANTITY_MAX)


class CatalogUpdate(_Record):
    """One change to the catalog. An upsert may be partial: a field left out (``None``, or an
    empty title) keeps the indexed value, so ``{op: upsert, item_id, in_stock: false, ts}``
    is a stock change alone."""

    op: Literal["upsert", "delete"]
    item_id: str = Field(min_length=1)
    title: str = ""
    category: str | None = None
    brand: str | None = None
    colour: str | None = None
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    in_stock: bool | None = None
    ts: float = Field(ge=0, allow_inf_nan=False,
                      description="catalog time of the change (a clock or a version number: only its order "
                                  "matters); an older one never overwrites a newer one")

    @field_validator("item_id", "title", "category", "brand", "colour")
    @classmethod
    def _fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        limit = {"item_id": ITEM_ID_MAX_BYTES, "title": TITLE_MAX_BYTES}.get(info.field_name or "", FIELD_MAX_BYTES)
        if value is not None and len(value.encode()) > limit:
            raise ValueError(f"longer than {limit} bytes ({len(value.encode())})")
        if info.field_name == "item_id" and value is not None and CONTROL.search(value):
            raise ValueError("control characters are not allowed in an id")
        return value


class RecItem(_Record):
    item_id: str
    score: float
    title: str


RecPath = Literal["llm", "last-title", "id-only", "baseline"]
GateDecision = Literal["sent", "declined"]


class Recommendation(_Record):
    request_id: str
    user_id: str
    trigger_event_id: str
    items: list[RecItem]
    generated_text: str
    model_version: str
    path: RecPath = Field(description="what answered: the LLM path, the fast path (last-title: the last-title mix-up; "
                                      "id-only: SASRec alone), or the baseline")
    produced_at: float
    latency_ms: float
    gate: GateDecision | None = Field(default=None, description="the gate before the LLM path: sent (the LLM path "
                                                                "was asked; path says whether it answered in time) "
                                                                "or declined; null without an LLM path")
    gate_score: float | None = Field(default=None, description="the gate's probability that the LLM path answers "
                                                               "better than the fast path")


DEAD_LETTER_RAW_MAX_BYTES = 64 * 1024


class DeadLetter(_Record):
    """A record that failed validation: where it is, its bytes and why. The bytes are kept whole
    up to 64 KiB; a larger record keeps its first 64 KiB (``raw_bytes`` says how long it was),
    so a dead letter always fits the broker's message limit; the whole record stays at its
    topic, partition and offset for the topic's retention."""

    topic: str
    partition: int
    offset: int
    raw: str = Field(description="original bytes: UTF-8 text when decodable, else 'base64:' + base64")
    raw_bytes: int | None = Field(default=None, description="length of the original when raw keeps only its start")
    error: str

    @classmethod
    def of(cls, topic: str, partition: int, offset: int, raw: bytes | None, error: str) -> DeadLetter:
        raw = raw or b""
        kept = raw[:DEAD_LETTER_RAW_MAX_BYTES]
        return cls(topic=topic, partition=partition, offset=offset, raw=kept, error=error,
                   raw_bytes=len(raw) if len(kept) < len(raw) else None)

    @field_validator("raw", mode="before")
    @classmethod
    def _encode_raw(cls, value: object) -> object:
        if isinstance(value, bytes | bytearray):
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                return "base64:" + base64.b64encode(bytes(value)).decode()
        return value


EVENT_TYPES: dict[str, type[ClickEvent] | type[PurchaseEvent]] = {
    CLICKS: ClickEvent,
    PURCHASES: PurchaseEvent,
}


class BadRecord(ValueError):
    """Raised by :func:`parse_event` with a one-line reason fit for the dead-letter topic."""


def parse_event(topic: str, raw: bytes | None,
                key: bytes | None | Literal[False] = False) -> ClickEvent | PurchaseEvent:
    """Decode and validate one raw event from ``topic`` with its Kafka ``key`` (``False``: not
    checked); raise :class:`BadRecord` with the reason.

    An event must be keyed by its ``user_id``: the sequence table is partitioned by shopper,
    so a keyless event (which the producer spreads over partitions) would land in a partition
    that does not hold its shopper's sequence. It is dead-lettered, to be re-sent with its key.
    """
    if key is None:
        raise BadRecord("no key: events must be keyed by user_id (the sequence table is partitioned by shopper)")
    event = _parse_event(topic, raw)
    if key is not False and key.decode(errors="replace") != event.user_id:
        raise BadRecord(f"key {key[:64]!r} does not match user_id {event.user_id!r}")
    return event


def _parse_event(topic: str, raw: bytes | None) -> ClickEvent | PurchaseEvent:
    kind = EVENT_TYPES.get(topic)
    if kind is None:
        raise BadRecord(f"unknown event kind: topic {topic!r}")
    data = _json_object(raw)
    declared = data.get("kind")
    if declared is not None and declared != ("click" if kind is ClickEvent else "purchase"):
        raise BadRecord(f"unknown event kind: {declared!r} on topic {topic}")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise BadRecord(summarise(exc)) from None


def parse_catalog_update(raw: bytes | None, key: bytes | None = None) -> CatalogUpdate:
    """Decode and validate one ``catalog.updates`` record; raise :class:`BadRecord` with the reason."""
    data = _json_object(raw)
    try:
        update = CatalogUpdate.model_validate(data)
    except ValidationError as exc:
        raise BadRecord(summarise(exc)) from None
    if key is not None and key.decode(errors="replace") != update.item_id:
        raise BadRecord(f"key {key[:64]!r} does not match item_id {update.item_id!r}")
    return update


def _json_object(raw: bytes | None) -> dict:
    if raw is None:
        raise BadRecord("empty value (tombstone)")
    if len(raw) > RECORD_MAX_BYTES:
        raise BadRecord(f"record of {len(raw)} bytes; at most {RECORD_MAX_BYTES} are accepted")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRecord(f"bad JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRecord(f"bad JSON: expected an object, got {type(data).__name__}")
    return data


def summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "invalid record: " + "; ".join(parts)
