"""The indexer's Faust app: its own consumer group on ``catalog.updates``, the dead-letter
topic, and the table of deletes (tombstones) that keeps an older upsert from bringing a
deleted item back. ``python -m indexer worker`` runs it."""

from __future__ import annotations

from stylestream.config import Settings
from stylestream.faust_app import faust_app, table_options
from stylestream.records import CATALOG, DLQ

settings = Settings.from_env()
app = faust_app("stylestream-indexer", settings, settings.indexer_web_port)

# Raw bytes in: validation is ours, so a bad record becomes a dead letter, not a crash.
catalog_topic = app.topic(CATALOG, key_serializer="raw", value_serializer="raw")
dlq_topic = app.topic(DLQ, key_serializer="raw", value_serializer="raw")

# item_id -> catalog time of its last delete; keyed like the topic, so co-partitioned.
deleted_at = app.Table("catalog_deletes", default=None, partitions=settings.topic_partitions,
                       help="when each deleted item was deleted (catalog time)", options=table_options(settings))
