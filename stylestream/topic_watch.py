"""Follow topics from a thread: every JSON record that arrives, decoded, in arrival order.

What the demo, the benchmarks and the tests use to watch ``recs.out`` and ``events.dlq``:
one long-lived kafka-python consumer (no group, no commits) polled in a daemon thread.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

IDLE_POLL_S = 0.05  # pause after an empty poll: noida-db answers empty fetches at once, so a poll loop would spin


class TopicWatch:
    def __init__(self, bootstrap: str, *topics: str):
        from kafka import KafkaConsumer

        self.records: list[dict[str, Any]] = []
        self.by_topic: dict[str, list[dict[str, Any]]] = {t: [] for t in topics}
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                       enable_auto_commit=False)
        self._thread = threading.Thread(target=self._run, daemon=True, name="topic-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            batches = self._consumer.poll(timeout_ms=200)
            for batch in batches.values():
                for message in batch:
                    record = json.loads(message.value)
                    self.records.append(record)
                    self.by_topic[message.topic].append(record)
            if not batches:
                time.sleep(IDLE_POLL_S)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()
