"""Typed records for every topic (DESIGN.md, "Topics and records").

Events are validated at the edge with pydantic; anything that fails becomes a
:class:`DeadLetter` carrying the original bytes and the reason.
"""

from __future__ import annotations

import base64
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class CatalogUpdate(_Record):
    op: Literal["upsert", "delete"]
    item_id: str = Field(min_length=1)
    title: str = ""
    category: str | None = None
    brand: str | None = None
    colour: str | None = None
    price: float | None = None
    in_stock: bool | None = None
    ts: float


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
    if raw is None:
        raise BadRecord("empty value (tombstone)")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRecord(f"bad JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRecord(f"bad JSON: expected an object, got {type(data).__name__}")
    declared = data.get("kind")
    if declared is not None and declared != ("click" if kind is ClickEvent else "purchase"):
        raise BadRecord(f"unknown event kind: {declared!r} on topic {topic}")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise BadRecord(_summarise(exc)) from None


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "invalid record: " + "; ".join(parts)
