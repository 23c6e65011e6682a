"""Kafka security settings reach every client, and secrets stay out of reprs."""

from __future__ import annotations

import faust
import pytest

from stylestream.config import ConfigError, Settings
from stylestream.faust_app import faust_app
from stylestream.kafka_security import KafkaSecurity

SECURED = {"KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "KAFKA_SASL_USERNAME": "stylestream-streams", "KAFKA_SASL_PASSWORD": "s3cret-pw",
           "MILVUS_TOKEN": "root:milvus-s3cret"}


def test_plaintext_by_default():
    security = KafkaSecurity.of(Settings.from_env({}))
    assert security.kafka_python() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials() is None


def test_sasl_scram_over_tls_for_plain_clients_and_faust(tmp_path):
    settings = Settings.from_env({**SECURED, "STYLESTREAM_HOME": str(tmp_path)})
    options = KafkaSecurity.of(settings).kafka_python()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("stylestream-streams", "s3cret-pw")
    assert options["ssl_context"] is not None
    app = faust_app("security-test", settings, 6099)
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials) and credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is not None and credentials.password == "s3cret-pw"


def test_secrets_stay_out_of_reprs():
    settings = Settings.from_env(SECURED)
    for text in (repr(settings), repr(KafkaSecurity.of(settings))):
        assert "s3cret" not in text
    assert "s3cret" in settings.as_env()["KAFKA_SASL_PASSWORD"], "children still get it, through the environment"


@pytest.mark.parametrize(("env", "message"), [
    ({**SECURED, "KAFKA_SASL_PASSWORD": ""}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ({**SECURED, "KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
    ({**SECURED, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM must be one of"),
    ({**SECURED, "KAFKA_BOOTSTRAP_SERVERS": ""}, "the embedded broker speaks PLAINTEXT only"),
])
def test_bad_security_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        KafkaSecurity.of(Settings.from_env(env))
