"""Typed records for every topic (DESIGN.md, "Topics and records").

Events are validated at the edge with pydantic; anything that fails becomes a
:class:`DeadLetter` carrying the original bytes and the reason.
"""

from __future__ import annotations

import base64
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

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


class ClickEvent(_Record):
    event_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    ts: float = Field(description="event time, seconds since the epoch")
    session_id: str | None = None
    query: str | None = None


class PurchaseEvent(_Record):
    event_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    item_id: str = Field(min_length=1)
    ts: float
    price: float | None = None
    quantity: int | None = Field(default=None, ge=1)


# The largest catalog fields the index stores (UTF-8 bytes); longer ones are refused with the
# reason (dead-lettered), never cut silently.
ITEM_ID_MAX_BYTES = 256
TITLE_MAX_BYTES = 1024
FIELD_MAX_BYTES = 256


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
    price: float | None = None
    in_stock: bool | None = None
    ts: float = Field(description="catalog time of the change, seconds since the epoch; an older one never "
                                  "overwrites a newer one")

    @field_validator("item_id", "title", "category", "brand", "colour")
    @classmethod
    def _fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        limit = {"item_id": ITEM_ID_MAX_BYTES, "title": TITLE_MAX_BYTES}.get(info.field_name or "", FIELD_MAX_BYTES)
        if value is not None and len(value.encode()) > limit:
            raise ValueError(f"longer than {limit} bytes ({len(value.encode())})")
        return value


class RecItem(_Record):
    item_id: str
    score: float
    title: str


RecPath = Literal["llm", "id-only", "baseline"]


class Recommendation(_Record):
    request_id: str
    user_id: str
    trigger_event_id: str
    items: list[RecItem]
    generated_text: str
    model_version: str
    path: RecPath = Field(description="what answered: the LLM path, the ID-only fast path, or the baseline")
    produced_at: float
    latency_ms: float


class DeadLetter(_Record):
    topic: str
    partition: int
    offset: int
    raw: str = Field(description="original bytes: UTF-8 text when decodable, else 'base64:' + base64")
    error: str

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


def parse_event(topic: str, raw: bytes | None) -> ClickEvent | PurchaseEvent:
    """Decode and validate one raw event from ``topic``; raise :class:`BadRecord` with the reason."""
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
