"""The per-user rolling sequence: the value stored in the Faust table, one per shopper.

Kept in the table as compact JSON bytes (so the changelog is readable by any Kafka client,
and a write is serialised once, not once for the changelog and again for the store) and
handled through :class:`UserSequence` everywhere else.
Redeliveries are dropped three times over. The stream first checks each source partition
against its checkpoint (``streams.source_offsets``): what is at or below it never gets here.
Then the value records, per source partition, the offset of the last event it applied, and
it is written to the changelog in the same record as the event itself, so "applied" and
"remembered as applied" cannot diverge: an event at or below that offset is a redelivery,
however old. A producer that sends the same event twice (new offset, same ``event_id``) is
caught by ``event_id`` within the rolling window.
"""

from __future__ import annotations

import bisect
import json
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
    offsets: dict[str, int] = field(default_factory=dict)  # "topic/partition" -> last applied offset

    def add(self, event: ClickEvent | PurchaseEvent, max_len: int, source: tuple[str, int, int] | None = None) -> bool:
        """Append ``event`` read at ``source`` (topic, partition, offset).

        Return False, changing nothing, if it was already applied.
        """
        if source is not None:
            where, offset = f"{source[0]}/{source[1]}", source[2]
            if offset <= self.offsets.get(where, -1):
                return False
            self.offsets[where] = offset
        if any(e.event_id == event.event_id for e in self.events):
            return False
        kind = "purchase" if isinstance(event, PurchaseEvent) else "click"
        # the two topics interleave: insert in event-time order (after equal times, as a stable sort would)
        bisect.insort_right(self.events, SeqEvent(event.event_id, event.item_id, kind, event.ts), key=lambda e: e.ts)
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
                "c": self.clicks_since_rec, "t": self.last_ts, "o": self.offsets}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> UserSequence:
        if not d:
            return cls()
        return cls([SeqEvent(*e) for e in d["events"]], d["n"], d["c"], d["t"], dict(d.get("o", {})))

    def to_bytes(self) -> bytes:
        """The table value: :meth:`to_dict` as compact JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> UserSequence:
        return cls.from_dict(json.loads(raw)) if raw else cls()
