"""The stream's data flow: validate → sequence table → trigger → recommend → ``recs.out``.

Bad records go to ``events.dlq`` with their raw bytes and the reason; the agent
never stops for one.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from faust.types import TP

from streams.app import app, catalog_state, catalog_topic, dlq_topic, events_topic, sequences, settings
from streams.sequence_table import UserSequence
from streams.source_offsets import SourceOffsets
from streams.trigger import IdleTracker, TriggerPolicy
from stylestream.config import ConfigError, Settings
from stylestream.faust_app import processing, send_dead_letter
from stylestream.metrics import StreamMetrics, exposition
from stylestream.recommender import HistoryItem, Recommender, RecommendRequest
from stylestream.records import (
    RECS,
    BadRecord,
    ClickEvent,
    PurchaseEvent,
    Recommendation,
    parse_catalog_update,
    parse_event,
)

log = logging.getLogger(__name__)


@dataclass
class Stats:
    received: int = 0
    processed: int = 0
    duplicates: int = 0  # deliveries not applied again: a producer's repeats and the re-reads below
    reread: int = 0  # of those, deliveries the continuity check dropped (streams/source_offsets.py)
    dead_lettered: int = 0
    recs_published: int = 0
    recs_by_path: Counter[str] = field(default_factory=Counter)
    recs_by_gate: Counter[str] = field(default_factory=Counter)  # sent / declined (with an LLM path)


stats = Stats()
policy = TriggerPolicy(settings.trigger_every_clicks, settings.trigger_idle_seconds, settings.trigger_mode,
                       settings.trigger_from_ts)
idle = IdleTracker(settings.trigger_idle_seconds if settings.trigger_mode == "live" else 0.0)


SOURCE_AUDIT_S = 2.0  # how often quiet partitions are compared with their checkpoints
LOG_START_TIMEOUT_S = 10.0


async def _seek(source: tuple[str, int], offset: int) -> None:
    await app.consumer.seek(TP(*source), offset)


async def _log_start(source: tuple[str, int]) -> int:
    offsets = await asyncio.wait_for(app.consumer.earliest_offsets(TP(*source)), LOG_START_TIMEOUT_S)
    return int(next(iter(offsets.values())))


# Rebalances, not the group's generation id: a coordinator that lost its state (a broker
# restarted without it) numbers generations from 1 again, and the change went unseen.
source_offsets = SourceOffsets(sequences, _seek, _log_start, lambda: app.rebalancing_count)
_recommender: Recommender | None = None


def recommender() -> Recommender:
    """The recommender, loaded once per worker (see STYLESTREAM_RECOMMENDER)."""
    global _recommender
    if _recommender is None:
        _recommender = make_recommender(settings)
        log.info("recommender %s (%s)", _recommender.model_version, type(_recommender).__name__)
    return _recommender


def make_recommender(s: Settings) -> Recommender:
    """serving: the gate, then the LLM path over Ray Serve, with the fast path answering what
    the gate declines and what Serve does not answer in time; fast: the fast path alone;
    baseline: category popularity (no bundle needed)."""
    mode = s.recommender
    has_bundle = (s.bundle_dir / "bundle.json").is_file()
    if mode == "auto":
        mode = ("serving" if s.serving_url else "fast") if has_bundle else "baseline"
    if mode == "baseline":
        from streams.baseline import BaselineRecommender

        return BaselineRecommender.from_folder(s.dataset_dir)
    from streams.fast_path import FastPathRecommender

    if mode == "fast":
        return FastPathRecommender.from_folder(s.bundle_dir, s.fast_path, available=offered, category_of=category_of,
                                               search=s.fast_path_search)
    if not s.serving_url:
        raise ConfigError("STYLESTREAM_RECOMMENDER=serving needs STYLESTREAM_SERVING_URL (the Serve ingress)")
    from streams.serving_recommender import ServingRecommender

    fast = FastPathRecommender.from_folder(s.bundle_dir, s.fast_path, gate=s.gate, available=offered,
                                           category_of=category_of, search=s.fast_path_search)
    return ServingRecommender(s.serving_url, fast, timeout_s=s.serving_timeout_ms / 1000,
                              max_in_flight=s.serving_max_in_flight, max_history=s.max_request_history)


def offered(item_id: str) -> bool:
    """Whether the catalog still offers an item (unknown to the catalog stream: yes)."""
    state = catalog_state.get(item_id)
    return True if state is None else bool(state["available"])


def category_of(item_id: str) -> str | None:
    """The category the catalog stream gave an item (for items newer than the bundle)."""
    state = catalog_state.get(item_id)
    return None if state is None else state.get("category")


@app.task
async def load_recommender() -> None:
    """Load the model when the worker starts, not on the first event (which would stall ~1 s)."""
    recommender()


@app.agent(events_topic)
async def sequence_events(stream):
    """Events in batches (``STYLESTREAM_STREAM_BATCH_MAX_EVENTS`` or what arrived within
    ``…_BATCH_WAIT_MS``): each shopper's sequence is read, updated with all of its events in
    the batch, and written back once, so the changelog gets one record per shopper per
    batch instead of one per event. Faust acks a batch's offsets only after this returns."""
    async for batch in stream.take_events(settings.stream_batch_max_events, settings.stream_batch_wait_ms / 1000):
        await apply_batch(batch)


async def apply_batch(batch: list[Any]) -> None:
    stats.received += len(batch)
    admitted = await source_offsets.admit(batch)  # each source partition continued exactly
    reread = admitted.redelivered + admitted.held_back
    stats.reread += reread
    stats.duplicates += reread
    by_user: dict[str, list[tuple[ClickEvent | PurchaseEvent, Any, Any]]] = {}
    last_of_source: dict[tuple[str, int], Any] = {}
    for event in admitted.events:
        msg = event.message
        last_of_source[(msg.topic, msg.partition)] = event
        try:
            ev = parse_event(msg.topic, msg.value, msg.key)
        except BadRecord as exc:
            await dead_letter(msg, str(exc))
            continue
        by_user.setdefault(ev.user_id, []).append((ev, msg, event))
    for user_id, events in by_user.items():
        apply_events(user_id, in_event_time(events))
    source_offsets.checkpoint(last_of_source, write_value)  # after the sequences it covers


def in_event_time(events: list[tuple[ClickEvent | PurchaseEvent, Any, Any]]) -> list:
    """A shopper's events of one batch merged across topics in event-time order: a click that
    happened before a purchase but arrived after it (the two topics are read independently)
    is in the sequence when the purchase triggers. Each partition's own order is kept, since
    its offsets are the redelivery check."""
    by_source: dict[tuple[str, int], list] = {}
    for item in events:
        by_source.setdefault((item[1].topic, item[1].partition), []).append(item)
    if len(by_source) == 1:
        return events
    return list(heapq.merge(*by_source.values(), key=lambda item: item[0].ts))


def apply_events(user_id: str, events: list[tuple[ClickEvent | PurchaseEvent, Any, Any]]) -> None:
    """Apply one shopper's events (in arrival order) and write the sequence once."""
    seq = UserSequence.from_bytes(sequences[user_id])
    changed = False
    for ev, msg, _ in events:
        if not seq.add(ev, settings.sequence_length, (msg.topic, msg.partition, msg.offset)):
            stats.duplicates += 1
            continue
        changed = True
        kind = "purchase" if isinstance(ev, PurchaseEvent) else "click"
        fire = policy.on_event(kind, seq.clicks_since_rec, ev.ts)
        if fire:
            seq.clicks_since_rec = 0
        stats.processed += 1
        idle.touch(user_id, ev.event_id, answered=fire)
        if fire:  # the sequence as it stood after this event, not after the whole batch
            spawn(publish_recommendation(user_id, replace(seq, events=list(seq.events)), ev.event_id,
                                         msg.timestamp))
    if changed:
        write_value(events[-1][2], user_id, seq.to_bytes())


def write_value(event: Any, key: str, value: bytes) -> None:
    """``sequences[key] = value`` on the partition of ``event`` (a shopper's last in the batch)."""
    with processing(event):
        sequences[key] = value


# Recommendations run beside the stream, never inside it: the agent goes on with the next
# event while the LLM path answers (or its deadline passes and the fast path does).
pending: set[asyncio.Task] = set()
metrics = StreamMetrics(app, stats, pending)  # /metrics: reads stats and pending at scrape time


def spawn(job: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(job)
    pending.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Task) -> None:
    pending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("recommendation failed: %r", task.exception())


async def publish_recommendation(user_id: str, seq: UserSequence, trigger_event_id: str, since: float) -> None:
    history = [HistoryItem(e.item_id, e.kind, e.ts) for e in seq.events]
    result = await recommender().recommend(RecommendRequest(user_id, history, settings.recs_k))
    now = time.time()
    latency = max(0.0, now - since)
    out = Recommendation(request_id=uuid.uuid4().hex, user_id=user_id, trigger_event_id=trigger_event_id,
                         items=result.items, generated_text=result.generated_text,
                         model_version=result.model_version or recommender().model_version, path=result.path,
                         produced_at=now, latency_ms=round(latency * 1000, 3), gate=result.gate,
                         gate_score=result.gate_score)
    # straight to the producer: Faust's Topic.send adds a channel and callbacks per record
    await app.producer.send(RECS, user_id.encode(), out.to_bytes(), partition=None, timestamp=None, headers=None)
    stats.recs_published += 1
    stats.recs_by_path[result.path] += 1
    if result.gate is not None:
        stats.recs_by_gate[result.gate] += 1
    metrics.observe_latency(result.path, latency)


async def dead_letter(message: Any, reason: str) -> None:
    await send_dead_letter(dlq_topic, message, reason)
    stats.dead_lettered += 1


@app.agent(catalog_topic)
async def follow_catalog(stream):
    """Deletes, stock changes and the categories of new items, for the fast path. Bad records
    are the indexer's to dead-letter; here they are skipped."""
    async for event in stream.events():
        try:
            update = parse_catalog_update(event.message.value, event.message.key)
        except BadRecord:
            continue
        state = catalog_state.get(update.item_id)
        if state is not None and update.ts < state["ts"]:
            continue
        if update.op == "delete":
            catalog_state[update.item_id] = {"available": False, "deleted": True, "ts": update.ts}
        else:  # an upsert that leaves stock out keeps it, or brings a deleted item back in stock
            kept = True if state is None or state.get("deleted") else state["available"]
            available = update.in_stock if update.in_stock is not None else kept
            category = update.category if update.category is not None else (state or {}).get("category")
            catalog_state[update.item_id] = {"available": available, "deleted": False, "ts": update.ts,
                                             "category": category}


@app.timer(interval=1.0)
async def idle_triggers() -> None:
    for user_id, event_id in idle.due():
        seq = UserSequence.from_bytes(sequences.get(user_id))
        if seq.events:
            spawn(publish_recommendation(user_id, seq, event_id, time.time()))


@app.timer(interval=SOURCE_AUDIT_S)
async def audit_source_offsets() -> None:
    """A stretch of events skipped at the end of a partition, with nothing after it to show
    the gap: compare quiet partitions' consumer positions with their checkpoints."""
    if app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():
        return
    await source_offsets.audit(consumed_positions())


def consumed_positions() -> dict[tuple[str, int], int]:
    """Each assigned event partition's next offset the client will hand over: past every
    record it took from the broker, whether Faust gave that record to the agent or not.

    Faust drops the rest of a fetched batch when its flow stops mid-batch, with the client
    already past it (seen after a worker restart: the last 113 purchases of a partition
    never reached the agent, and Faust's own read offset stayed at the record before them).
    So the client's position is read, from its assignment state, not Faust's read offset,
    nor ``consumer.position()``: that call waits for a valid position inside the consumer
    thread's two-worker method queue, and during a recovery (partitions paused) it waited for
    ever, blocking the recovery's own calls behind it (seen: a worker stuck in recovery)."""
    client = app.consumer._thread._consumer  # Faust's aiokafka consumer (in its own thread)
    subscription = client._subscription.subscription if client is not None else None
    assignment = subscription.assignment if subscription is not None else None
    if assignment is None:
        return {}
    positions = {}
    for tp in assignment.tps:
        state = assignment.state_value(tp)
        if tp.topic in events_topic.topics and state is not None and state.has_valid_position:
            positions[(tp.topic, tp.partition)] = state.position
    return positions


@app.page("/stats/")
async def stats_page(web, request):
    ready = (app.tables.recovery.completed.is_set() and not app.rebalancing and not app.in_recovery
             and _recommender is not None)
    serving = getattr(_recommender, "status", None)
    return web.json({**vars(stats), "recs_pending": len(pending), "ready": ready,
                     "rewinds": source_offsets.rewinds, "gaps_accepted": source_offsets.gaps_accepted,
                     "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                     "serving": serving() if serving is not None else None,
                     "recommender": _recommender.model_version if _recommender is not None else None})


@app.page("/metrics")
async def metrics_page(web, request):
    """Prometheus text format (stylestream.metrics): the counters of /stats/, latency, lag."""
    return await exposition(web, metrics)


@app.page("/users/{user_id}/")
@app.table_route(table=sequences, match_info="user_id")
async def user_page(web, request, user_id: str):
    """A shopper's sequence, from whichever worker of the group owns it."""
    return web.bytes(sequences.get(user_id) or b"{}", content_type="application/json")
