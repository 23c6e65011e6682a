"""``GET /metrics`` of a real stream worker on the embedded broker: the counters agree with
``/stats/``, the latency histogram counts the recommendations published, and the consumer
lag of every assigned event partition is there and drains to 0. Plus the collectors alone."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.types import TP
from harness import consumer_lags, dumps, event, metric_value, read_topic, scrape, wait_for
from kafka import KafkaProducer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stylestream.metrics import ConsumerLag, IndexerMetrics, StreamMetrics
from stylestream.records import CATALOG, CLICKS, PURCHASES, RECS


def stream_stats(**counts: int) -> SimpleNamespace:
    """The fields of streams.agents.Stats (not imported: that would make the worker's Faust app)."""
    return SimpleNamespace(**{"received": 0, "processed": 0, "duplicates": 0, "dead_lettered": 0, **counts},
                           recs_by_path=Counter(), recs_by_gate=Counter())


@pytest.mark.slow
def test_worker_metrics_match_stats_and_lag_drains(stack_factory):
    stack = stack_factory(trigger_every_clicks=2, trigger_idle_seconds=0)
    bootstrap = stack.start_broker()
    worker = stack.start_worker()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    good = [event("click", 0, "u1", "i0"), event("click", 1, "u1", "i1"), event("click", 2, "u2", "i2")]
    for ev in good:
        producer.send(CLICKS, key=ev["user_id"].encode(), value=dumps(ev))
    producer.send(CLICKS, key=b"u1", value=dumps(good[0]))  # redelivered: a duplicate
    producer.send(PURCHASES, key=b"u3", value=b"{not json")  # dead-lettered
    producer.flush()
    producer.close()

    wait_for(lambda: worker.stats()["received"] >= 5 and worker.stats()["recs_published"] >= 1, 60,
             "every record seen and u1's second click answered")
    stats = worker.stats()
    assert (stats["received"], stats["processed"], stats["duplicates"], stats["dead_lettered"]) == (5, 3, 1, 1)
    assert len(read_topic(bootstrap, RECS)) == stats["recs_published"] == 1

    ctype, families = scrape(worker.web_port)
    assert ctype.startswith("text/plain; version=0.0.4")
    for name, key in (("received", "received"), ("processed", "processed"), ("duplicates", "duplicates"),
                      ("dead_lettered", "dead_lettered")):
        assert metric_value(families, f"stylestream_events_{name}_total") == stats[key], name
    by_path = Counter({s.labels["path"]: s.value for s in families["stylestream_recommendations"]
                       if s.name == "stylestream_recommendations_total"})
    assert +by_path == Counter(stats["recs_by_path"])
    latency = "stylestream_recommendation_latency_seconds"
    assert metric_value(families, f"{latency}_count") == stats["recs_published"]
    for path, n in stats["recs_by_path"].items():
        assert metric_value(families, f"{latency}_count", path=path) == n
        assert metric_value(families, f"{latency}_bucket", path=path, le="+Inf") == n
    assert metric_value(families, "stylestream_recs_pending") == 0

    partitions = stack.settings.topic_partitions
    expected = {(topic, p) for topic in (CLICKS, PURCHASES) for p in range(partitions)}

    def drained() -> bool:
        got = consumer_lags(scrape(worker.web_port)[1])
        return set(got) == expected and not any(got.values())

    wait_for(drained, 30, "a lag of 0 on every assigned events partition")
    assert worker.proc.poll() is None


def test_collectors_read_stats_and_the_consumer_at_scrape_time():
    """No broker: a stand-in consumer with Faust's attributes; two registries side by side."""
    tp, other = TP(CLICKS, 2), TP("stylestream-sequences-changelog", 0)
    consumer = SimpleNamespace(assignment=lambda: {tp, other},
                               highwater=lambda tp: 120, _committed_offset={tp: 100})
    stats, pending = stream_stats(received=7, processed=5, duplicates=1, dead_lettered=1), {object()}
    stats.recs_by_path["llm"] += 2
    stats.recs_by_gate["declined"] += 1
    first = StreamMetrics(SimpleNamespace(consumer=consumer), stats, pending)
    second = StreamMetrics(SimpleNamespace(consumer=consumer), stream_stats(), set())  # its own registry: no clash
    first.observe_latency("llm", 0.2)
    first.observe_latency("llm", 0.02)
    families = {f.name: f.samples for f in text_string_to_metric_families(generate_latest(first.registry).decode())}
    assert metric_value(families, "stylestream_events_received_total") == 7
    assert metric_value(families, "stylestream_recommendations_total", path="llm") == 2
    assert metric_value(families, "stylestream_recommendations_total", path="last-title") == 0
    assert metric_value(families, "stylestream_gate_decisions_total", decision="declined") == 1
    assert metric_value(families, "stylestream_recommendation_latency_seconds_count", path="llm") == 2
    assert metric_value(families, "stylestream_recommendation_latency_seconds_bucket", path="llm", le="0.025") == 1
    assert metric_value(families, "stylestream_recs_pending") == 1
    assert consumer_lags(families) == {(CLICKS, 2): 20}

    async def ends(*tps):  # the broker's answer at scrape time, newer than the last fetch's
        return {tp: 130 for tp in tps}

    consumer.highwaters = ends
    asyncio.run(first.lag.refresh())
    assert first.lag.lags() == {(CLICKS, 2): 30}
    assert b"stylestream_events_received_total 0.0" in generate_latest(second.registry)

    def not_started():
        raise RuntimeError("Consumer thread not yet started")

    assert ConsumerLag(SimpleNamespace(consumer=SimpleNamespace(assignment=not_started)), [CLICKS]).lags() == {}


def test_every_stylestream_metric_the_grafana_dashboard_queries_is_exposed():
    dashboard = json.loads((Path(__file__).parents[2] / "k8s" / "grafana" / "stylestream.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queried = {name for expr in exprs for name in re.findall(r"\bstylestream_\w+", expr)}
    app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: {TP(CLICKS, 0), TP(CATALOG, 0)},
                                                   highwater=lambda tp: 3, _committed_offset={}))
    exposed: dict[str, set[str]] = {}
    indexer_stats = SimpleNamespace(upserted=0, deleted=0, older=0, dead_lettered=0, retries=0)
    for metrics in (StreamMetrics(app, stream_stats(), set()), IndexerMetrics(app, indexer_stats)):
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
            for sample in family.samples:
                exposed.setdefault(sample.name, set()).update(sample.labels)
    assert queried and queried <= set(exposed), queried - set(exposed)
    for expr in exprs:  # every label a query groups by is one the metric has (le aside)
        for labels, name in re.findall(r"by \(([\w, ]+)\) \(\w*\(?(stylestream_\w+)", expr):
            assert set(labels.replace(" ", "").split(",")) - {"le", "pod"} <= exposed[name], expr
