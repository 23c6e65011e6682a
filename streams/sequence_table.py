"""The per-user rolling sequence: the value stored in the Faust table, one per shopper.

Kept as a plain JSON-able dict in the table (so the changelog is readable by any
Kafka client) and handled through :class:`UserSequence` everywhere else.
Redeliveries after a crash (at-least-once) are dropped by ``event_id``: any event
still inside the rolling window is recognised, and a replay after a crash only
re-sends the last uncommitted second or so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stylestream.records import ClickEvent, PurchaseEvent


@dataclass(frozen=True)
class SeqEvent:
    event_id: str
    item_id: str
    kind: str  # "click" | "purchase"
    ts: float


@dataclass
class UserSequence:
    events: list[SeqEvent] = field(default_factory=list)
    n_events: int = 0  # distinct events ever applied, for exactly-once accounting
    clicks_since_rec: int = 0
    last_ts: float = 0.0

    def add(self, event: ClickEvent | PurchaseEvent, max_len: int) -> bool:
        """Append ``event``; return False (and change nothing) if it was already applied."""
        if any(e.event_id == event.event_id for e in self.events):
            return False
        kind = "purchase" if isinstance(event, PurchaseEvent) else "click"
        self.events.append(SeqEvent(event.event_id, event.item_id, kind, event.ts))
        self.events.sort(key=lambda e: e.ts)  # the two topics interleave; keep event-time order
        del self.events[:-max_len]
        self.n_events += 1
        self.clicks_since_rec = self.clicks_since_rec + 1 if kind == "click" else self.clicks_since_rec
        self.last_ts = max(self.last_ts, event.ts)
        return True

    @property
    def item_ids(self) -> list[str]:
        return [e.item_id for e in self.events]

    def to_dict(self) -> dict[str, Any]:
        return {"events": [[e.event_id, e.item_id, e.kind, e.ts] for e in self.events], "n": self.n_events,
                "c": self.clicks_since_rec, "t": self.last_ts}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> UserSequence:
        if not d:
            return cls()
        return cls([SeqEvent(*e) for e in d["events"]], d["n"], d["c"], d["t"])
