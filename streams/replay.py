"""Replay historic interactions into the event topics, in time order, as fast or as paced as asked.

Used by the demo and for evaluation: the live pipeline sees exactly what it would
have seen, keyed by user so each shopper's events stay in order on one partition.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd

from stylestream.delivery import Deliveries, reliable_producer
from stylestream.kafka_security import PLAINTEXT, KafkaSecurity
from stylestream.records import CLICKS, PURCHASES


@dataclass
class ReplayProgress:
    sent: int = 0
    total: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def rate(self) -> float:
        end = self.finished or time.monotonic()
        return self.sent / max(end - self.started, 1e-9)


def event_records(interactions: pd.DataFrame, id_prefix: str) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic, key, value) for each interaction row, in the frame's (time) order."""
    ts = interactions["ts"].astype("int64").to_numpy() / 1e3  # ms → s
    rows = zip(interactions.index, interactions["user_id"], interactions["item_id"], interactions["kind"],
               interactions["query"], ts, strict=True)
    for idx, user, item, kind, query, t in rows:
        value: dict[str, object] = {"event_id": f"{id_prefix}-{idx}", "user_id": user, "item_id": item, "ts": t}
        if kind == "click" and isinstance(query, str):
            value["query"] = query
        yield (CLICKS if kind == "click" else PURCHASES), user.encode(), json.dumps(value).encode()


def replay(interactions: pd.DataFrame, bootstrap: str, id_prefix: str, rate: float = 0.0,
           progress: ReplayProgress | None = None, stop: threading.Event | None = None,
           on_send: Callable[[str, bytes, bytes], None] | None = None, speed: float = 0.0,
           before_send: Callable[[], None] | None = None, security: KafkaSecurity = PLAINTEXT) -> ReplayProgress:
    """Produce every interaction; ``rate`` events/s, or ``speed`` × the log's own event times
    (0 = as fast as the producer goes). ``before_send`` may block: back-pressure from the
    consumer side ("as fast as the system takes them")."""
    progress = progress or ReplayProgress()
    progress.total, progress.started = len(interactions), time.monotonic()
    times = interactions["ts"].astype("int64").to_numpy() / 1e3 if len(interactions) else []
    producer, deliveries = reliable_producer(bootstrap, security, linger_ms=5), Deliveries()
    try:
        for topic, key, value in event_records(interactions, id_prefix):
            if stop is not None and stop.is_set():
                break
            if speed > 0:
                _sleep_until(progress.started + (times[progress.sent] - times[0]) / speed)
            elif rate > 0:
                _pace(progress, rate)
            if before_send is not None:
                producer.flush()
                before_send()
            deliveries.track(producer.send(topic, key=key, value=value))
            progress.sent += 1
            if on_send is not None:
                on_send(topic, key, value)
        producer.flush()
    finally:
        producer.close()
        progress.finished = time.monotonic()
    deliveries.check("replayed events")
    return progress


def _pace(progress: ReplayProgress, rate: float) -> None:
    _sleep_until(progress.started + progress.sent / rate)


def _sleep_until(due: float) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
