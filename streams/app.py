"""The Faust app: one app object, its topics and the per-user sequence table.

Configured from :class:`stylestream.config.Settings` (environment variables), so
``python -m streams worker`` started by the dev stack, by Kubernetes or by hand
reads the same settings.
"""

from __future__ import annotations

import logging

import faust

from streams import fetch_backoff
from stylestream.config import Settings
from stylestream.records import CLICKS, DLQ, PURCHASES, RECS

settings = Settings.from_env()
fetch_backoff.install(settings.fetch_idle_wait_ms)
# Debug records from the clients cost ~6% of a busy worker even when nothing prints them.
for _name in ("aiokafka", "faust", "mode"):
    logging.getLogger(_name).setLevel(max(logging.INFO, logging.getLevelName(settings.log_level.upper())))

app = faust.App(
    "stylestream",
    broker=f"kafka://{settings.kafka_bootstrap_servers or '127.0.0.1:9092'}",
    store="memory://",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=1,
    table_standby_replicas=0,
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=1,
    broker_commit_interval=settings.commit_interval,
    producer_linger=settings.producer_linger_ms / 1000,
    consumer_auto_offset_reset="earliest",
    # Static membership: a crashed worker restarted under the same id takes its partitions
    # back at once, instead of waiting for the group to evict the dead member (which
    # noida-db never does: its dead leader blocks the group forever).
    consumer_group_instance_id=settings.worker_id,
    web_bind=settings.worker_web_bind,
    web_port=settings.worker_web_port,
    web_in_thread=False,
    datadir=str(settings.home / "faust"),
    autodiscover=False,
)

# Raw bytes in: validation is ours, so a bad record becomes a dead letter, not a crash.
events_topic = app.topic(CLICKS, PURCHASES, key_serializer="raw", value_serializer="raw")
recs_topic = app.topic(RECS, key_serializer="raw", value_serializer="raw")
dlq_topic = app.topic(DLQ, key_serializer="raw", value_serializer="raw")

# Values are plain JSON dicts (see streams.sequence_table), readable by any Kafka client.
sequences = app.Table("sequences", default=dict, partitions=settings.topic_partitions,
                      help="rolling per-user event sequence")
