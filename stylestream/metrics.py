"""Prometheus metrics of the Faust workers, served on ``GET /metrics`` of each worker's web
port (stream workers 6066, indexer 6067) in the text exposition format.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (never the global one),
so two Faust apps in one process never clash. The event counters are not counted twice:
the workers' ``stats`` objects (what ``/stats/`` shows) stay the one source of truth and
are read at scrape time, so the hot path pays nothing extra for them. Consumer lag is also
computed at scrape time, from the Faust consumer's committed offsets and the partitions'
ends. Only the histograms are
observed as things happen, once per recommendation or per Milvus batch, through label
children looked up once and cached.

The names are the ones k8s/grafana/stylestream.json queries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from stylestream.records import CATALOG, CLICKS, PURCHASES

log = logging.getLogger(__name__)

PATHS = ("llm", "last-title", "id-only", "baseline")  # stylestream.recommender.RecommendResult.path
# event's broker timestamp → recommendation produced: the fast paths answer in milliseconds,
# the LLM path in tens to hundreds, its deadline and a stalled worker in seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
# one batch written to Milvus: an upsert of a few rows to a 500-row batch with embeddings
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StatsCounters(Collector):
    """Counters read from a worker's ``stats`` at scrape time: ``fields`` maps a metric name
    (without ``_total``) to ``(help, label, read)``; ``read()`` returns the count, or with a
    label a mapping of label value to count."""

    def __init__(self, fields: dict[str, tuple[str, str | None, Callable[[], Any]]]) -> None:
        self.fields = fields

    def collect(self) -> Iterator[Metric]:
        for name, (doc, label, read) in self.fields.items():
            if label is None:
                yield CounterMetricFamily(name, doc, value=read())
                continue
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, value in sorted(read().items()):
                family.add_metric([key], value)
            yield family

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(name, doc, labels=[label] if label else None)
                for name, (doc, label, _) in self.fields.items()]


class ConsumerLag(Collector):
    """``stylestream_consumer_lag{topic,partition}``: for each partition of ``topics`` this
    worker is assigned, the partition's end minus the group's committed offset, i.e. the
    records not yet processed and committed (what ``kafka-consumer-groups`` shows).

    The end is the later of the consumer's highwater (from its last fetch of that partition,
    stale while the fetcher still holds buffered records of it) and the end asked of the
    broker by :meth:`refresh` (one ListOffsets request, made at each scrape). A partition
    whose end is unknown yet is left out."""

    def __init__(self, app: Any, topics: Collection[str]) -> None:
        self.app, self.topics = app, frozenset(topics)
        self._ends: dict[Any, int] = {}

    def assigned(self) -> list[Any]:
        try:
            return [tp for tp in self.app.consumer.assignment() if tp.topic in self.topics]
        except Exception:  # noqa: BLE001 - consumer not started yet, or stopping: no partitions
            return []

    async def refresh(self, timeout: float = 2.0) -> None:
        """Ask the broker for the ends of the assigned partitions (kept on failure: the
        consumer's highwaters still count)."""
        tps = self.assigned()
        if not tps:
            return
        try:
            ends = await asyncio.wait_for(self.app.consumer.highwaters(*tps), timeout)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail for it
            log.debug("consumer lag: no partition ends from the broker (%r)", exc)
            return
        self._ends = {tp: end for tp, end in ends.items() if end is not None}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("stylestream_consumer_lag", "records between the committed offset and the end "
                                   "of each assigned source partition", labels=["topic", "partition"])
        for tp, lag in sorted(self.lags().items()):
            family.add_metric([tp[0], str(tp[1])], lag)
        yield family

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily("stylestream_consumer_lag", "", labels=["topic", "partition"])]

    def lags(self) -> dict[tuple[str, int], int]:
        assigned = self.assigned()
        if not assigned:
            return {}
        consumer = self.app.consumer
        committed = consumer._committed_offset  # Faust's own record: next offset to read, per partition
        out: dict[tuple[str, int], int] = {}
        for tp in assigned:
            try:
                fetched = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - partition revoked meanwhile
                fetched = None
            ends = [end for end in (fetched, self._ends.get(tp)) if end is not None]
            if not ends:
                continue
            done = committed.get(tp)  # .get: the mapping is a defaultdict, reading must not add keys
            out[(tp.topic, tp.partition)] = max(0, max(ends) - (done or 0))
        return out


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    return registry


async def exposition(web: Any, metrics: StreamMetrics | IndexerMetrics) -> Any:
    """The response to ``GET /metrics``: partition ends asked of the broker, then the
    registry in text format 0.0.4."""
    await metrics.lag.refresh()
    return web.bytes(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


class StreamMetrics:
    """The stream worker's metrics; ``stats`` is ``streams.agents.Stats``, ``pending`` the
    set of recommendation tasks in flight."""

    def __init__(self, app: Any, stats: Any, pending: Collection[Any]) -> None:
        self.registry = _registry()
        self.registry.register(StatsCounters({
            "stylestream_events_received": ("records read from events.clicks / events.purchases", None,
                                            lambda: stats.received),
            "stylestream_events_processed": ("events applied to a shopper's sequence", None,
                                             lambda: stats.processed),
            "stylestream_events_duplicates": ("events already in the sequence (redelivered), skipped", None,
                                              lambda: stats.duplicates),
            "stylestream_events_dead_lettered": ("records that failed validation, sent to events.dlq", None,
                                                 lambda: stats.dead_lettered),
            "stylestream_recommendations": ("recommendations written to recs.out, by the path that made them",
                                            "path", lambda: {**dict.fromkeys(PATHS, 0), **stats.recs_by_path}),
            "stylestream_gate_decisions": ("recommendations by the gate's decision before the LLM path (sent: "
                                           "the LLM path was asked; declined: the fast path answered at once)",
                                           "decision", lambda: {"sent": 0, "declined": 0, **stats.recs_by_gate}),
        }))
        self.lag = ConsumerLag(app, (CLICKS, PURCHASES))
        self.registry.register(self.lag)
        Gauge("stylestream_recs_pending", "recommendations in flight (LLM requests and their fallbacks)",
              registry=self.registry).set_function(lambda: len(pending))
        self.latency = Histogram("stylestream_recommendation_latency_seconds",
                                 "event's broker timestamp (or the idle trigger) to the recommendation produced",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._latency_by_path = {path: self.latency.labels(path) for path in PATHS}  # children made once

    def observe_latency(self, path: str, seconds: float) -> None:
        child = self._latency_by_path.get(path)
        if child is None:
            child = self._latency_by_path[path] = self.latency.labels(path)
        child.observe(seconds)


class IndexerMetrics:
    """The indexer's metrics; ``stats`` is ``indexer.agents.Stats``."""

    def __init__(self, app: Any, stats: Any) -> None:
        self.registry = _registry()
        self.registry.register(StatsCounters({
            "stylestream_indexer_updates": ("valid catalog updates handled, by what was done with them", "op",
                                            lambda: {"upsert": stats.upserted, "delete": stats.deleted,
                                                     "skipped-stale": stats.older}),
            "stylestream_indexer_dead_lettered": ("catalog records that failed validation, sent to events.dlq",
                                                  None, lambda: stats.dead_lettered),
            "stylestream_indexer_retries": ("failed attempts to write a batch to Milvus (each retried)", None,
                                            lambda: stats.retries),
        }))
        self.lag = ConsumerLag(app, (CATALOG,))
        self.registry.register(self.lag)
        self.batch_seconds = Histogram("stylestream_indexer_batch_seconds", "time to apply one batch to Milvus",
                                       buckets=BATCH_BUCKETS, registry=self.registry)
