from pathlib import Path

import pytest

from stylestream.config import ConfigError, Settings, documented_settings


def test_environment_variables_with_prefix_and_plain_names():
    s = Settings.from_env({"STYLESTREAM_SEQUENCE_LENGTH": "7", "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
                           "MILVUS_URI": "http://m:19530", "STYLESTREAM_HOME": "/x"})
    assert (s.sequence_length, s.kafka_bootstrap_servers, s.milvus_uri, s.home) == (7, "k:9092", "http://m:19530",
                                                                                      Path("/x"))
    assert s.dataset_dir == Path("/x/data/synth")


def test_overrides_win_and_round_trip_through_env():
    s = Settings.from_env({}, recs_k=3, broker="tansu")
    assert Settings.from_env(s.as_env()) == s


@pytest.mark.parametrize(("env", "message"), [
    ({"STYLESTREAM_TOPIC_PARTITIONS": "four"}, "STYLESTREAM_TOPIC_PARTITIONS='four' is not a valid int"),
    ({"STYLESTREAM_BROKER": "kafka"}, "STYLESTREAM_BROKER must be 'noida' or 'tansu'"),
    ({"STYLESTREAM_RECS_K": "0"}, "STYLESTREAM_RECS_K must be at least 1"),
    ({"STYLESTREAM_RECOMMENDER": "llm"}, "STYLESTREAM_RECOMMENDER must be auto, serving, fast or baseline"),
    ({"STYLESTREAM_FAST_PATH": "popular"}, "STYLESTREAM_FAST_PATH must be last-title or id-only"),
    ({"STYLESTREAM_GATE": "ajar"}, "STYLESTREAM_GATE must be bundle, open or closed"),
    ({"STYLESTREAM_GEN_ENGINE": "vllm"}, "STYLESTREAM_GEN_ENGINE must be onnx or torch"),
    ({"STYLESTREAM_GEN_NUM_GPUS": "many"}, "STYLESTREAM_GEN_NUM_GPUS must be auto or a number"),
    ({"STYLESTREAM_GEN_MAX_BATCH_SIZE": "-1"}, "STYLESTREAM_GEN_MAX_BATCH_SIZE must be 0"),
    ({"STYLESTREAM_GEN_MIN_REPLICAS": "3", "STYLESTREAM_GEN_MAX_REPLICAS": "2"}, "STYLESTREAM_GEN_MIN_REPLICAS"),
    ({"STYLESTREAM_SERVING_MAX_IN_FLIGHT": "0"}, "STYLESTREAM_SERVING_MAX_IN_FLIGHT must be at least 1"),
    ({"STYLESTREAM_SESSION_TIMEOUT": "2"}, "STYLESTREAM_SESSION_TIMEOUT must be at least 6 s"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_every_setting_is_documented():
    assert all(doc for _, _, doc in documented_settings())
