"""Records the broker refuses are counted and reported, not dropped quietly (replay, catalog publishing)."""

from __future__ import annotations

import pandas as pd
import pytest
from harness import read_topic
from kafka.future import Future

from streams.replay import replay
from stylestream.delivery import Deliveries, DeliveryError, reliable_producer
from stylestream.records import CLICKS, PURCHASES


def test_failed_futures_are_counted_and_raised_with_the_first_cause():
    deliveries = Deliveries()
    ok, bad, worse = (deliveries.track(Future()) for _ in range(3))
    deliveries.check("records")  # nothing failed yet
    ok.success(None)
    bad.failure(ValueError("refused"))
    worse.failure(TimeoutError("timed out"))
    assert deliveries.failed == 2
    with pytest.raises(DeliveryError, match=r"2 records were not acknowledged.*ValueError: refused"):
        deliveries.check("records")


def test_the_producer_waits_for_every_in_sync_replica():
    producer = reliable_producer("127.0.0.1:1", api_version=(2, 5))  # no connection is made
    try:
        assert producer.config["acks"] == -1 and producer.config["enable_idempotence"]
    finally:
        producer.close(timeout=0)


@pytest.mark.slow
def test_a_record_the_broker_refuses_is_reported(stack_factory):
    """The broker (not the client) refuses records over its size limit; flush() alone would not tell."""
    bootstrap = stack_factory().start_broker()
    producer = reliable_producer(bootstrap, max_request_size=8 * 1024 * 1024, delivery_timeout_ms=10_000,
                                 request_timeout_ms=5_000)
    deliveries = Deliveries()
    deliveries.track(producer.send(CLICKS, key=b"u1", value=b"{}"))
    deliveries.track(producer.send(CLICKS, key=b"u1", value=b"x" * (2 * 1024 * 1024)))
    producer.flush()
    producer.close()
    with pytest.raises(DeliveryError, match="1 records were not acknowledged.*MessageSizeTooLarge"):
        deliveries.check("records")
    assert [m.value for m in read_topic(bootstrap, CLICKS)] == [b"{}"]


@pytest.mark.slow
def test_replay_sends_every_event_to_its_topic(stack_factory):
    bootstrap = stack_factory().start_broker()
    frame = pd.DataFrame({"user_id": ["u1", "u2", "u1"], "item_id": ["i1", "i2", "i3"],
                          "kind": ["click", "purchase", "purchase"], "query": [None, None, None],
                          "ts": [1_700_000_000_000, 1_700_000_001_000, 1_700_000_002_000]})
    progress = replay(frame, bootstrap, "t")
    assert progress.sent == 3
    assert len(read_topic(bootstrap, CLICKS)) == 1 and len(read_topic(bootstrap, PURCHASES)) == 2
