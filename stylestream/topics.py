"""Topic administration with kafka-python: source topics are created up front with a fixed partition count."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from stylestream.kafka_security import PLAINTEXT, KafkaSecurity
from stylestream.records import CATALOG, CLICKS, DLQ, PURCHASES, RECS

log = logging.getLogger(__name__)

ALL_TOPICS = (CLICKS, PURCHASES, RECS, DLQ, CATALOG)


def ensure_topics(bootstrap: str, partitions: int, names: Iterable[str] = ALL_TOPICS,
                  security: KafkaSecurity = PLAINTEXT) -> None:
    """Create missing topics; Faust's co-partitioning needs event topics with the table's partitions."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000, **security.kafka_python())
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", ", ".join(t.name for t in new))
    finally:
        admin.close()
