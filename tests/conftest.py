"""Shared fixtures: a tiny data set, and real services (embedded broker) for integration tests."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from models.data import Dataset
from stylestream.config import Settings
from stylestream.devstack import DevStack

CATEGORIES = ["tops", "bottoms", "shoes"]


def tiny_dataset() -> Dataset:
    """30 items in 3 categories, 10 users with purchase histories: enough for the baseline recommender."""
    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(30)],
        "title": [f"{CATEGORIES[i % 3]} item {i}" for i in range(30)],
        "category": [CATEGORIES[i % 3] for i in range(30)],
    })
    rows = [(f"u{u}", f"i{(u * 7 + j) % 30}", 1_700_000_000 + u * 100 + j, "purchase")
            for u in range(10) for j in range(8)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "kind"])
    return Dataset(items, inter, name="tiny")


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    return tiny_dataset().save(tmp_path / "data")


@pytest.fixture
def stack_factory(tmp_path: Path, tiny_data_dir: Path) -> Iterator[Callable[..., DevStack]]:
    """Build a DevStack on the embedded broker in ``tmp_path``; everything is stopped after the test."""
    stacks: list[DevStack] = []

    def make(**overrides: object) -> DevStack:
        env = {"STYLESTREAM_HOME": str(tmp_path / "home"), "STYLESTREAM_DATASET": str(tiny_data_dir),
               "STYLESTREAM_BROKER": os.environ.get("STYLESTREAM_BROKER", "noida")}
        stack = DevStack(Settings.from_env(env, **overrides))
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


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


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()
