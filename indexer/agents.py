"""The indexer's data flow: catalog.updates → validate → batch → Milvus upsert / delete.

Batches are ``STYLESTREAM_INDEX_BATCH_SIZE`` updates or whatever arrived within
``STYLESTREAM_INDEX_BATCH_WAIT_MS``. A batch's offsets are committed only after Milvus
acknowledged its writes (``take_events`` acks when the next batch is asked for), so a
crash re-applies a batch and never skips one; re-applying is harmless (same catalog time
→ same row). When Milvus cannot be reached the agent retries the same batch with
back-off rather than move on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from indexer.app import app, catalog_topic, deleted_at, dlq_topic, settings
from indexer.collection import connect
from indexer.sync import CatalogSync, SyncReport
from stylestream.faust_app import processing, send_dead_letter
from stylestream.metrics import IndexerMetrics, exposition
from stylestream.records import BadRecord, CatalogUpdate, parse_catalog_update

log = logging.getLogger(__name__)


@dataclass
class Stats:
    read: int = 0
    applied: int = 0  # valid updates handled: upserted + deleted + older
    upserted: int = 0
    deleted: int = 0
    older: int = 0
    imputed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    collection: str = ""
    last_write_ms: float = 0.0


stats = Stats()
metrics = IndexerMetrics(app, stats)  # /metrics: reads stats at scrape time
_sync: CatalogSync | None = None


def sync() -> CatalogSync:
    global _sync
    if _sync is None:
        _sync = CatalogSync(connect(settings.milvus_uri or _embedded_uri(), settings.milvus_token),
                            settings.milvus_collection, settings.bundle_dir)
    return _sync


def _embedded_uri() -> str:
    from stylestream.devstack.milvus import running_endpoint

    uri = running_endpoint(settings.home)
    if not uri:
        raise RuntimeError("no Milvus: set MILVUS_URI, or start the stack (`stylestream up`) first")
    return uri


@app.agent(catalog_topic)
async def apply_catalog_updates(stream):
    async for events in stream.take_events(settings.index_batch_size, within=settings.index_batch_wait_ms / 1000):
        updates: list[CatalogUpdate] = []
        read_in: dict[str, Any] = {}  # item_id -> the event its last update came in
        for event in events:
            stats.read += 1
            msg = event.message
            try:
                updates.append(parse_catalog_update(msg.value, msg.key))
                read_in[updates[-1].item_id] = event
            except BadRecord as exc:
                await dead_letter(msg, str(exc))
        if updates:
            await write(updates, read_in)


async def write(updates: list[CatalogUpdate], read_in: dict[str, Any]) -> None:
    """Apply one batch, retrying until Milvus takes it; then remember its deletes (each on the
    partition its update came from)."""
    tombstones = {u.item_id: deleted_at[u.item_id] for u in updates if deleted_at.get(u.item_id) is not None}
    delay = 0.5
    while True:
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            report: SyncReport = await asyncio.to_thread(sync().apply, updates, tombstones)
            took = loop.time() - started
            stats.last_write_ms = round(1000 * took, 1)
            metrics.batch_seconds.observe(took)
            break
        except Exception as exc:  # noqa: BLE001 - Milvus down, alias missing: wait and retry the same batch
            stats.retries += 1
            log.warning("catalog batch of %d not written (%s); retrying in %.1f s", len(updates), exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    for item, ts in report.deleted_at.items():
        with processing(read_in[item]):
            deleted_at[item] = ts
    stats.batches += 1
    stats.applied += report.applied
    stats.upserted += report.upserted
    stats.deleted += report.deleted
    stats.older += report.older
    stats.imputed += report.imputed
    stats.collection = report.collection


async def dead_letter(message: Any, reason: str) -> None:
    await send_dead_letter(dlq_topic, message, reason)
    stats.dead_lettered += 1


@app.task
async def connect_milvus() -> None:
    """Connect and load the live collection's bundle at start, not on the first update."""
    try:
        await asyncio.to_thread(sync().live)
    except Exception as exc:  # noqa: BLE001 - the first batch retries until it works
        log.warning("Milvus not ready yet: %s", exc)


@app.page("/stats/")
async def stats_page(web, request):
    ready = (app.tables.recovery.completed.is_set() and not app.rebalancing and not app.in_recovery
             and _sync is not None)
    return web.json({**vars(stats), "ready": ready})


@app.page("/metrics")
async def metrics_page(web, request):
    """Prometheus text format (stylestream.metrics): updates by op, batch time, lag."""
    return await exposition(web, metrics)
