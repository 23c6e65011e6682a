"""What every stylestream Faust worker shares (the stream, the indexer): the app's
settings and the way a bad record goes to the dead-letter topic."""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import faust
from faust.streams import _current_event  # Faust's own binding of the event being processed

from stylestream.config import Settings
from stylestream.kafka_security import KafkaSecurity
from stylestream.records import DeadLetter
from stylestream.table_store import kept_if_stopped_cleanly

log = logging.getLogger(__name__)

def key_as_record_key(table: Any) -> Any:
    """Store and send ``table``'s keys (``str``) as the producers' record keys, raw UTF-8
    rather than JSON: so a changelog record hashes to the partition its events came from and
    ``@app.table_route`` finds the worker that owns a key. Faust derives a table's key
    serializer from its key type (``json`` for ``str``) and takes no parameter for it; it is
    read when the store is made, at start; the changelog topic, made with the table, is
    derived anew."""
    table.key_serializer = "raw"
    table.changelog_topic = table.changelog_topic.derive(key_serializer="raw")
    return table


def faust_app(app_id: str, settings: Settings, web_port: int) -> faust.App:
    """One Faust app on the configured broker: tables in the configured store, backed by
    changelog topics, static group membership, fast joins, quiet client logs."""
    from stylestream import consumer_fast_path, fetch_backoff

    fetch_backoff.install(settings.fetch_idle_wait_ms)
    consumer_fast_path.install(settings.consumer_fast_path)
    # Debug records from the clients cost ~6% of a busy worker even when nothing prints them.
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(settings.log_level.upper())))
    # one folder per worker: RocksDB locks its files, and two workers of a group may share a host
    datadir = settings.home / "faust" / app_id / settings.worker_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers or '127.0.0.1:9092'}",
        broker_credentials=KafkaSecurity.of(settings).faust_credentials(),
        store=f"{settings.table_store}://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        table_standby_replicas=settings.table_standby_replicas,
        canonical_url=f"http://{settings.worker_web_host}:{web_port}",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=1,
        broker_commit_interval=settings.commit_interval,
        producer_linger=settings.producer_linger_ms / 1000,
        consumer_auto_offset_reset="earliest",
        # Static membership: a crashed worker restarted under the same id takes its partitions
        # back at once, instead of waiting for the group to evict the dead member (which
        # noida-db never does: its dead leader blocks the group forever).
        consumer_group_instance_id=f"{app_id}-{settings.worker_id}",
        web_bind=settings.worker_web_bind,
        web_port=web_port,
        web_in_thread=False,
        datadir=str(datadir),
        autodiscover=False,
    )


def table_options(settings: Settings) -> dict[str, Any] | None:
    """Store options of every table: RocksDB's memory bounded per partition. Faust's defaults
    (three 64 MiB memtables and a 2 GiB block cache for each partition of each table) let a
    worker's memory grow with what it writes until its pod's limit kills it."""
    if settings.table_store != "rocksdb":
        return None
    return {"write_buffer_size": settings.rocksdb_write_buffer_mb * 2**20, "max_write_buffer_number": 2,
            "block_cache_size": settings.rocksdb_block_cache_mb * 2**20}


def worker_tables(app: faust.App) -> AbstractContextManager[None]:
    """Around ``python -m <app> worker``: its local table store is kept only after a clean stop
    (:mod:`stylestream.table_store`); other commands leave the store alone."""
    if "worker" not in sys.argv[1:]:
        return nullcontext()
    return kept_if_stopped_cleanly(Path(app.conf.tabledir))


@contextmanager
def processing(event: Any) -> Iterator[None]:
    """Table writes inside act as if ``event`` were being iterated: Faust takes a write's
    changelog partition (and, with RocksDB, the partition's store) from the current event,
    which a batch consumer (``stream.take_events``) has to name itself."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


async def send_dead_letter(dlq: Any, message: Any, reason: str) -> None:
    """Put a record that failed validation on the dead-letter topic ``dlq``: where it came
    from, its original bytes and the reason, so nothing is lost and nothing stops."""
    letter = DeadLetter.of(message.topic, message.partition, message.offset, message.value, reason)
    await dlq.send(key=None, value=letter.to_bytes())
    log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)
