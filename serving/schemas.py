"""The typed boundary of the Serve application: what ``POST /recommend`` takes and answers.

Every field is bounded, unknown fields are refused, and FastAPI turns a violation into a
422 that names the field and the reason, before any model code runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stylestream.records import ID_MAX_BYTES, ITEM_ID_MAX_BYTES

MAX_ID = ID_MAX_BYTES  # characters here: every id an event may carry (bytes) fits
MAX_K = 100
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # ids carry no control characters (as in stylestream.records)


class HistoryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item_id: str = Field(min_length=1, max_length=ITEM_ID_MAX_BYTES, pattern=PRINTABLE)
    kind: Literal["click", "purchase"] = "purchase"
    ts: float | None = Field(default=None, allow_inf_nan=False)


class RecommendBody(BaseModel):
    """A shopper's history, oldest event first (the stream worker's rolling sequence)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID, pattern=PRINTABLE)
    history: list[HistoryEvent] = Field(min_length=1)
    k: int = Field(default=10, ge=1, le=MAX_K)


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str


class RecommendAnswer(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    generated_text: str
    path: Literal["llm", "last-title"] = Field(description="llm, or last-title when the LLM wrote nothing usable "
                                                           "and the fast path's answer stands in")
    model_version: str
    timings_ms: dict[str, float]


class Version(BaseModel):
    bundle_version: str
    encoder: str
    fusion: dict[str, float | str | list[float] | None]  # λ, ID half, σ, re-buy rule, repeat term, split
    data_hash: str
