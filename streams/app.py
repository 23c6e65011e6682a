"""The Faust app: one app object, its topics and the per-user sequence table.

Configured from :class:`stylestream.config.Settings` (environment variables), so
``python -m streams worker`` started by the dev stack, by Kubernetes or by hand
reads the same settings.
"""

from __future__ import annotations

from stylestream.config import Settings
from stylestream.faust_app import faust_app, key_as_record_key, table_options
from stylestream.records import CATALOG, CLICKS, DLQ, PURCHASES

settings = Settings.from_env()
app = faust_app("stylestream", settings, settings.worker_web_port)

# Raw bytes in: validation is ours, so a bad record becomes a dead letter, not a crash.
# recs.out is written with app.producer.send in streams.agents (one send per answer).
events_topic = app.topic(CLICKS, PURCHASES, key_serializer="raw", value_serializer="raw")
dlq_topic = app.topic(DLQ, key_serializer="raw", value_serializer="raw")
catalog_topic = app.topic(CATALOG, key_serializer="raw", value_serializer="raw")

# Values are JSON bytes (see streams.sequence_table), readable by any Kafka client.
sequences = key_as_record_key(app.Table("sequences", default=bytes, partitions=settings.topic_partitions, key_type=str,
                                        value_type=bytes, help="rolling per-user event sequence",
                                        options=table_options(settings)))

# Every worker's copy of what the catalog offers (item_id -> {"available", "ts"}): the
# in-process fast path leaves out what the catalog deleted or sold out, as Milvus does.
catalog_state = app.GlobalTable("catalog_state", default=None, partitions=settings.topic_partitions,
                                help="which items the catalog still offers", options=table_options(settings))
