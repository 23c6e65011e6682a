"""Fixtures for the data tests: a small synthetic shop and the real H&M sample's location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.data.dataset import Dataset
from models.data.synth import synthesize

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def small_synth() -> Dataset:
    """300 shoppers x 500 items over a year: big enough for statistics, well under a second."""
    return synthesize(users=300, items=500, seed=0)


@pytest.fixture(scope="session")
def hm_sample_dir() -> Path:
    """The real H&M sample (``shared/data/hm-sample`` next to the repo, or under
    ``$STYLESTREAM_SHARED_DATA``); the test is skipped where it is not present."""
    candidates = []
    if os.environ.get("STYLESTREAM_SHARED_DATA"):
        env = Path(os.environ["STYLESTREAM_SHARED_DATA"])
        candidates += [env / "hm-sample", env / "data" / "hm-sample"]
    candidates.append(REPO / ".." / "shared" / "data" / "hm-sample")
    for folder in candidates:
        if (folder / "transactions_train_sample.csv").is_file():
            return folder.resolve()
    pytest.skip("the shared H&M sample is not present here")
