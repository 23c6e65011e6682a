"""The narrow interface between the stream workers and whatever ranks items.

The baseline (popularity within recent categories), the fast path (the last-title mix-up,
or SASRec's ID-only view) and the LLM + mix-up path over Ray Serve behind its gate implement
the same protocol, so the workers never know which one runs; each answer says which path
produced it and, behind the gate, whether the gate sent it to the LLM path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stylestream.records import RecItem


@dataclass(frozen=True)
class HistoryItem:
    item_id: str
    kind: str  # "click" | "purchase"
    ts: float


@dataclass(frozen=True)
class RecommendRequest:
    user_id: str
    history: list[HistoryItem]  # oldest first
    k: int = 10


@dataclass(frozen=True)
class RecommendResult:
    items: list[RecItem]
    generated_text: str = ""
    path: str = "baseline"  # "llm" | "last-title" | "id-only" | "baseline"
    model_version: str = ""  # what answered (a bundle version, or the baseline's data version)
    gate: str | None = None  # "sent" (the LLM path was asked) | "declined" | None (no LLM path)
    gate_score: float | None = None  # the gate's probability that the LLM path answers better


class Recommender(Protocol):
    model_version: str

    async def recommend(self, request: RecommendRequest) -> RecommendResult:
        """Rank catalog items for the shopper; must not block the event loop for long."""
        ...
