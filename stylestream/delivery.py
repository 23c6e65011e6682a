"""Producing with kafka-python so that a record the broker never acknowledged is not lost quietly.

kafka-python's ``flush()`` returns once every send has *completed*, failed ones included: a
record refused by the broker, or timed out after ``delivery_timeout_ms``, only shows on its
own future. Replay and catalog publishing are the tools that feed the live pipeline, and a
replay that silently drops events makes its evaluation wrong, so both send through
``reliable_producer`` (acks from every in-sync replica, idempotent retries) and ask
``Deliveries.check`` after the flush.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer

from stylestream.kafka_security import PLAINTEXT, KafkaSecurity


class DeliveryError(RuntimeError):
    """Some records were not acknowledged by the broker."""


class Deliveries:
    """Counts the records whose futures failed; ``check`` raises if any did."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: BaseException | None = None

    def track(self, future: Any) -> Any:
        future.add_errback(self._failed)
        return future

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = exc

    def check(self, what: str) -> None:
        if self.failed:
            raise DeliveryError(f"{self.failed} {what} were not acknowledged by the broker "
                                f"(first error: {type(self.first_error).__name__}: {self.first_error})")


def reliable_producer(bootstrap: str, security: KafkaSecurity = PLAINTEXT, **options: Any) -> KafkaProducer:
    """A KafkaProducer that waits for all in-sync replicas and retries idempotently.

    With Strimzi's three replicas and ``min.insync.replicas=2`` (k8s/), ``acks=1`` would count
    a record written to the leader alone as sent; a leader lost right then loses it.
    """
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                         **options, **security.kafka_python())
