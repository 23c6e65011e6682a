"""The embedded dev stack: a Kafka-protocol broker, Milvus Lite and local Ray, owned by this process."""

from stylestream.devstack.broker import BrokerError, EmbeddedBroker
from stylestream.devstack.stack import DevStack

__all__ = ["BrokerError", "DevStack", "EmbeddedBroker"]
