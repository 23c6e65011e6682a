"""How every Kafka client of stylestream authenticates: Faust's workers and the plain
kafka-python clients (topics, replay, catalog publish) read the same settings.

``KAFKA_SECURITY_PROTOCOL`` is PLAINTEXT (the embedded broker), SSL, SASL_PLAINTEXT or
SASL_SSL (Strimzi's SCRAM-SHA-512 listener); ``KAFKA_SSL_CAFILE`` names the cluster CA to
trust (empty: the system's). The password never appears in a repr or a log line.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from stylestream.config import ConfigError, Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    cafile: str = ""

    @classmethod
    def of(cls, settings: Settings) -> KafkaSecurity:
        security = cls(settings.kafka_security_protocol.upper(), settings.kafka_sasl_mechanism.upper(),
                       settings.kafka_sasl_username, settings.kafka_sasl_password, settings.kafka_ssl_cafile)
        security.validate()
        return security

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if self.sasl:
            if self.sasl_mechanism not in MECHANISMS:
                raise ConfigError(f"KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, "
                                  f"not {self.sasl_mechanism!r}")
            if not (self.username and self.password):
                raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs KAFKA_SASL_USERNAME and "
                                  "KAFKA_SASL_PASSWORD")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.cafile or None)

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaProducer / KafkaConsumer / KafkaAdminClient."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        if self.sasl:
            options.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                           sasl_plain_password=self.password)
        return options

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for ``faust.App`` (None: plaintext)."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(username=self.username, password=self.password,
                                         mechanism=self.sasl_mechanism, ssl_context=self.ssl_context())
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


PLAINTEXT = KafkaSecurity()
