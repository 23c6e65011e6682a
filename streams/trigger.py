"""When to recommend: on every purchase, on every k-th click, and when a clicking shopper goes idle."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TriggerPolicy:
    every_clicks: int = 5  # 0: clicks alone never trigger
    idle_seconds: float = 30.0  # 0: no idle trigger
    mode: str = "live"  # every-event: each event triggers (replay evaluation); off: none does
    from_ts: float = 0.0  # older events (event time) fill the sequence and trigger nothing

    def on_event(self, kind: str, clicks_since_rec: int, ts: float | None = None) -> bool:
        """Decide for an event that was just applied to the shopper's sequence."""
        if self.mode == "off" or (ts is not None and ts < self.from_ts):
            return False
        if self.mode == "every-event" or kind == "purchase":
            return True
        return self.every_clicks > 0 and clicks_since_rec >= self.every_clicks


@dataclass
class IdleTracker:
    """Shoppers with clicks not yet answered by a recommendation, by last wall-clock activity.

    Lives in worker memory: after a restart, pending idle triggers are dropped
    (the next event re-arms them), which costs one idle recommendation at most.
    """

    idle_seconds: float
    pending: dict[str, tuple[float, str]] = field(default_factory=dict)  # user -> (wall time, event_id)

    def touch(self, user_id: str, event_id: str, answered: bool, now: float | None = None) -> None:
        if answered or self.idle_seconds <= 0:
            self.pending.pop(user_id, None)
        else:
            self.pending[user_id] = (time.monotonic() if now is None else now, event_id)

    def due(self, now: float | None = None) -> list[tuple[str, str]]:
        """Pop and return (user_id, last event_id) of every shopper idle for ``idle_seconds``."""
        now = time.monotonic() if now is None else now
        due = [(u, ev) for u, (t, ev) in self.pending.items() if now - t >= self.idle_seconds]
        for user, _ in due:
            del self.pending[user]
        return due
