"""How settings become the Serve application's options (pure logic, no Ray cluster)."""

from __future__ import annotations

from serving.app import batch_size, generator_options, serve_config
from stylestream.config import Settings


def test_generator_options_follow_the_settings():
    s = Settings.from_env({}, gen_num_gpus="1", gen_min_replicas=1, gen_max_replicas=3,
                          gen_target_ongoing_requests=4.0, gen_batch_wait_ms=20.0)
    opts = generator_options(s)
    assert opts["ray_actor_options"]["num_gpus"] == 1.0
    assert opts["autoscaling_config"] == {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 3,
                                          "target_ongoing_requests": 4.0, "upscale_delay_s": 3.0,
                                          "downscale_delay_s": 30.0}
    assert opts["user_config"] == {"max_batch_size": 16, "batch_wait_ms": 20.0}, "auto: 16 on a GPU"
    assert opts["max_ongoing_requests"] >= opts["user_config"]["max_batch_size"]


def test_batch_size_auto_is_small_on_a_cpu_and_explicit_values_win():
    assert batch_size(Settings.from_env({}), gpus=0.0) == 2
    assert batch_size(Settings.from_env({}), gpus=1.0) == 16
    assert batch_size(Settings.from_env({}, gen_max_batch_size=5), gpus=0.0) == 5
    cpu = generator_options(Settings.from_env({}, gen_num_gpus="0"))
    assert cpu["ray_actor_options"]["num_gpus"] == 0.0 and cpu["user_config"]["max_batch_size"] == 2


def test_serve_config_is_what_serve_deploy_reads(tmp_path):
    s = Settings.from_env({}, serve_port=8123, gen_max_replicas=4)
    config = serve_config(s, tmp_path / "bundle", "http://127.0.0.1:19530")
    app = config["applications"][0]
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert app["import_path"] == "serving.app:app_builder" and app["route_prefix"] == "/"
    assert app["args"]["bundle"] == str((tmp_path / "bundle").resolve()) and app["args"]["gen_max_replicas"] == 4
    assert Settings.from_env({}, **{k: v for k, v in app["args"].items() if k not in ("bundle", "milvus_uri")})
