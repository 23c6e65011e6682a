"""Helpers shared by the integration tests (imported as ``harness``; conftest names clash across folders)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stylestream.topic_watch import TopicWatch  # noqa: F401 - the tests' way to follow recs.out


def event(kind: str, i: int, user: str, item: str = "i1", ts: float | None = None) -> dict:
    return {"event_id": f"{kind[0]}{i}", "user_id": user, "item_id": item,
            "ts": ts if ts is not None else 1_800_000_000 + i}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_topic(bootstrap: str, topic: str, timeout_ms: int = 3000) -> list:
    """Everything currently on ``topic``, read with a plain kafka-python consumer."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=timeout_ms, enable_auto_commit=False)
    try:
        return list(consumer)
    finally:
        consumer.close()


def scrape(port: int) -> tuple[str, dict[str, list]]:
    """(content type, {family name: samples}) of a worker's ``/metrics``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        ctype, text = r.headers["Content-Type"], r.read().decode()
    return ctype, {f.name: f.samples for f in text_string_to_metric_families(text)}


def metric_value(families: dict[str, list], sample: str, **labels: str) -> float:
    """The sum of ``sample`` over the samples whose labels include ``labels``."""
    return sum(s.value for samples in families.values() for s in samples
               if s.name == sample and labels.items() <= s.labels.items())


def consumer_lags(families: dict[str, list]) -> dict[tuple[str, int], float]:
    """``stylestream_consumer_lag`` by (topic, partition)."""
    return {(s.labels["topic"], int(s.labels["partition"])): s.value for s in families["stylestream_consumer_lag"]}


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


def tiny_llama(folder: Path, titles: list[str]) -> Path:
    """A 2-layer random Llama with a byte-level BPE trained on the prompt words and titles
    (the construction of tests/models/llm/conftest.py, with a shop's vocabulary)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from models.llm.prompts import HistoryEvent, prompt_body

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    sample = [HistoryEvent("purchase", t, "tops", "navy", "cos") for t in titles[:20]]
    backend.train_from_iterator([prompt_body(sample, "title"), prompt_body(sample, "category"),
                                 *titles], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<s>", eos_token="</s>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, initializer_range=0.2,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder



@contextmanager
def served_stack(home: Path, bundle: Any, indexer: bool = False, **settings: Any) -> Iterator[tuple]:
    """(stack, bootstrap, worker, watch): the embedded broker, Milvus Lite, Ray Serve (one
    Generator replica, answered once) and a worker on the LLM path (and the indexer), on the
    tests' tiny bundle (``bundle``: the session's ``tiny_bundle``); ``settings`` override."""
    from models.bundle import Bundle
    from stylestream.config import Settings
    from stylestream.devstack import DevStack
    from stylestream.devstack.processes import free_port
    from stylestream.records import RECS

    # the gate open: these tests are about the LLM path, which the tiny bundle's gate may decline
    defaults = {"serve_port": free_port(), "ray_dashboard_port": free_port(), "trigger_every_clicks": 2,
                "trigger_idle_seconds": 0, "serving_timeout_ms": 5000, "gen_min_replicas": 1, "gen_max_replicas": 1,
                "gate": "open"}
    config = Settings.from_env({"STYLESTREAM_HOME": str(home)}, bundle=bundle.folder, dataset=bundle.data_dir,
                               **{**defaults, **settings})
    stack = DevStack(config)
    try:
        bootstrap = stack.start_broker()
        stack.start_milvus()
        stack.start_serving()
        warm_up(config.serve_port, sorted(Bundle.load(bundle.folder).items()["item_id"])[0])
        if indexer:
            stack.start_indexer()
        worker = stack.start_worker()
        watch = TopicWatch(bootstrap, RECS)
        try:
            yield stack, bootstrap, worker, watch
        finally:
            watch.close()
    finally:
        stack.close()


def warm_up(port: int, item_id: str, timeout_s: float = 120.0) -> None:
    """One answered request before a test's burst: Ray Serve's handles learn of the
    replicas on their first request, and a burst that lands meanwhile is shed (503)."""
    body = json.dumps({"user_id": "warm-up", "history": [{"item_id": item_id}]}).encode()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/recommend", data=body,
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def kill_generator_replicas() -> float:
    """SIGKILL every Ray Serve Generator replica for good (Serve must start new ones); the
    time of the kill (``time.time()``, as ``produced_at`` on recs.out)."""
    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "Generator" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    assert replicas, "a Generator replica is running"
    killed_at = time.time()
    for a in replicas:
        ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
    return killed_at
