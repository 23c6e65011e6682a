"""The internal format: save/load round trip, normalisation errors, the shared temporal split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from models.data.dataset import INTERACTION_COLUMNS, ITEM_COLUMNS, DataError, Dataset
from models.data.split import TemporalSplit
from models.data.synth import synthesize


def _dataset() -> Dataset:
    items = pd.DataFrame({
        "item_id": ["a", "b", "c"],
        "title": ["navy shirt", None, "red dress"],
        "category": ["shirt", "unknown", "dress"],
        "price": [10.0, float("nan"), 30.5],
        "first_seen": pd.to_datetime(["2025-01-01", None, "2025-01-03"], utc=True),
    })
    inter = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2", "u3"],
        "item_id": ["a", "b", "c", "a", "c"],
        "ts": pd.to_datetime(["2025-01-02 10:00", "2025-01-02 09:00", "2025-01-04 00:00",
                              "2025-01-05 00:00", "2025-01-06 00:00"], utc=True),
        "kind": ["click", "purchase", "click", "purchase", "purchase"],
        "query": ["navy shirt", None, None, None, None],
    })
    return Dataset(items, inter, name="t", source="test", extra={"k": 1})


def test_save_load_round_trip(tmp_path: Path) -> None:
    data = _dataset()
    loaded = Dataset.load(data.save(tmp_path / "d"))
    pd.testing.assert_frame_equal(loaded.items, data.items)
    pd.testing.assert_frame_equal(loaded.interactions, data.interactions)
    assert loaded.data_hash() == data.data_hash()
    assert loaded.split == data.split
    assert (loaded.name, loaded.source, loaded.extra) == ("t", "test", {"k": 1})
    assert list(loaded.items.columns) == ITEM_COLUMNS
    assert list(loaded.interactions.columns) == INTERACTION_COLUMNS


def test_interactions_sorted_by_time() -> None:
    ts = _dataset().interactions["ts"]
    assert ts.is_monotonic_increasing


def test_items_without_optional_columns() -> None:
    items = Dataset(pd.DataFrame({"item_id": ["x", "y"]}), pd.DataFrame(
        {"user_id": ["u"], "item_id": ["x"], "ts": [1_700_000_000], "kind": ["click"]})).items
    assert list(items.columns) == ITEM_COLUMNS
    assert items["first_seen"].isna().all() and items["title"].isna().all()


def test_load_of_a_folder_that_is_not_a_data_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a stylestream data set"):
        Dataset.load(tmp_path)


def test_bad_kind_and_missing_column_are_data_errors() -> None:
    inter = pd.DataFrame({"user_id": ["u"], "item_id": ["x"], "ts": [1], "kind": ["view"]})
    with pytest.raises(DataError, match="kind"):
        Dataset(pd.DataFrame({"item_id": ["x"]}), inter)
    with pytest.raises(DataError, match="missing column"):
        Dataset(pd.DataFrame({"item_id": ["x"]}), inter.drop(columns="ts"))


def test_temporal_split_is_disjoint_and_ordered() -> None:
    data = synthesize(users=100, items=200, seed=3)
    train, val, test = data.parts()
    n = len(data.interactions)
    assert len(train) + len(val) + len(test) == n
    assert train["ts"].max() < val["ts"].min() <= val["ts"].max() < test["ts"].min()
    assert not set(train.index) & set(val.index) and not set(val.index) & set(test.index)
    assert 0.75 < len(train) / n < 0.85 and 0.07 < len(test) / n < 0.13


def test_temporal_split_round_trips_through_dict() -> None:
    split = _dataset().split
    assert split is not None
    assert TemporalSplit.from_dict(split.to_dict()) == split
