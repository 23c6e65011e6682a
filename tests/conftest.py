"""Shared fixtures: a tiny data set, and real services (embedded broker) for integration tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from models.data import Dataset
from stylestream.config import Settings
from stylestream.devstack import DevStack  # noqa: I001 - first: it turns gRPC fork support off

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




@dataclass(frozen=True)
class TinyBundle:
    """A real model bundle, trained in seconds: small synthetic shop, tiny random Llama, LSTM encoder."""

    folder: Path
    data_dir: Path
    dataset: Dataset


def train_tiny_bundle(root: Path, seed: int = 0) -> TinyBundle:
    import torch
    from harness import tiny_llama

    from models.data.synth import synthesize
    from models.sasrec import SASRecConfig
    from models.train import TrainConfig, train_bundle

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = synthesize(users=120, items=200, seed=seed)
        data_dir = data.save(root / "data")
        base = tiny_llama(root / "llama", data.items["title"].astype(str).tolist())
        cfg = TrainConfig(base_model=base, title_encoders=("lstm",), lstm_steps=40, lora_steps=2, lora_batch_size=2,
                          lora_max_length=192, max_history=3, max_val_events=24, max_new_tokens=6, gen_batch_size=24,
                          seed=seed, sasrec=SASRecConfig(dim=32, epochs=8, patience=3))
        bundle = train_bundle(data, cfg, root / "bundle", progress=False)
    finally:
        torch.set_num_threads(threads)
    return TinyBundle(bundle.folder, data_dir, data)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    return train_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"))
