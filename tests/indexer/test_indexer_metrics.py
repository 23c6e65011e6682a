"""``GET /metrics`` of the real indexer worker (embedded broker, Milvus Lite server, the
fixture and helpers of test_indexer_worker): updates by op and dead letters agree with
``/stats/``, one batch-time observation per batch written, catalog.updates lag drains to 0."""

from __future__ import annotations

import json

import pytest
import test_indexer_worker as worker_tests
from harness import consumer_lags, metric_value, scrape, wait_for

from stylestream.records import CATALOG

pytestmark = pytest.mark.slow

indexed = worker_tests.indexed  # the fixture: broker, Milvus with the tiny bundle indexed, indexer worker


def test_indexer_metrics_match_stats_and_lag_drains(indexed):
    stack, bootstrap, client, bundle = indexed
    indexer = stack.indexer
    worker_tests.send(bootstrap, [worker_tests.upsert(f"m-{i}", 10.0, title=f"Plain navy wool scarf {i}",
                                                      category="scarf") for i in range(3)])
    wait_for(lambda: indexer.stats()["applied"] == 3, 60, "the three upserts written")
    # a delete writes its tombstone to the indexer's table from a batch (it once crashed the agent)
    worker_tests.send(bootstrap, [
        worker_tests.upsert("m-1", 5.0, title="An older title"),  # older than what is indexed: skipped
        (b"m-2", b"not json"),  # dead-lettered
        (b"m-0", json.dumps({"op": "delete", "item_id": "m-0", "ts": 11.0}).encode()),
    ])
    try:
        wait_for(lambda: indexer.stats()["read"] == 6 and indexer.stats()["applied"] == 5, 60, "every record handled")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; stats {indexer.stats()}") from None
    stats = indexer.stats()
    assert (stats["upserted"], stats["deleted"], stats["older"], stats["dead_lettered"]) == (3, 1, 1, 1)
    assert "Crashed" not in indexer.log_path.read_text(), "the agent never crashed"

    ctype, families = scrape(indexer.web_port)
    assert ctype.startswith("text/plain; version=0.0.4")
    for op, key in (("upsert", "upserted"), ("delete", "deleted"), ("skipped-stale", "older")):
        assert metric_value(families, "stylestream_indexer_updates_total", op=op) == stats[key], op
    assert metric_value(families, "stylestream_indexer_dead_lettered_total") == stats["dead_lettered"] == 1
    assert metric_value(families, "stylestream_indexer_batch_seconds_count") == stats["batches"] >= 2
    assert metric_value(families, "stylestream_indexer_batch_seconds_bucket", le="+Inf") == stats["batches"]
    assert 0 < metric_value(families, "stylestream_indexer_batch_seconds_sum") < 60

    expected = {(CATALOG, p) for p in range(stack.settings.topic_partitions)}

    def drained() -> bool:
        got = consumer_lags(scrape(indexer.web_port)[1])
        return set(got) == expected and not any(got.values())

    wait_for(drained, 30, "a lag of 0 on every catalog.updates partition")
