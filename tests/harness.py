"""Helpers shared by the integration tests (imported as ``harness``; conftest names clash across folders)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable


def event(kind: str, i: int, user: str, item: str = "i1", ts: float | None = None) -> dict:
    return {"event_id": f"{kind[0]}{i}", "user_id": user, "item_id": item,
            "ts": ts if ts is not None else 1_800_000_000 + i}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_topic(bootstrap: str, topic: str, timeout_ms: int = 3000) -> list:
    """Everything currently on ``topic``, read with a plain kafka-python consumer."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=timeout_ms, enable_auto_commit=False)
    try:
        return list(consumer)
    finally:
        consumer.close()


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()
