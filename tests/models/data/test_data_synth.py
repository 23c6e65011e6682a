"""The synthetic shop: deterministic, causal (no event before its item exists), and learnable."""

from __future__ import annotations

import pandas as pd
import pytest

from models.data.dataset import Dataset
from models.data.synth import COLOURS, GARMENTS, synthesize


@pytest.fixture(scope="module")
def small_synth() -> Dataset:
    """300 shoppers x 500 items over a year: big enough for statistics, well under a second."""
    return synthesize(users=300, items=500, seed=0)


def test_same_seed_same_data_other_seed_other_data(small_synth: Dataset) -> None:
    again = synthesize(users=300, items=500, seed=0)
    assert again.data_hash() == small_synth.data_hash()
    pd.testing.assert_frame_equal(again.interactions, small_synth.interactions)
    pd.testing.assert_frame_equal(again.items, small_synth.items)
    assert synthesize(users=300, items=500, seed=1).data_hash() != small_synth.data_hash()


def test_source_and_parameters_are_recorded(small_synth: Dataset) -> None:
    assert small_synth.source == "synthetic (seed=0)"
    extra = small_synth.extra
    assert (extra["users"], extra["items"], extra["seed"], extra["days"]) == (300, 500, 0, 365)
    assert extra["start"] == "2025-01-01"


def test_sizes_and_period(small_synth: Dataset) -> None:
    inter = small_synth.interactions
    assert len(small_synth.items) == 500
    assert inter["user_id"].nunique() == 300
    assert set(inter["item_id"]) <= set(small_synth.items["item_id"])
    assert inter["ts"].min() >= pd.Timestamp("2025-01-01", tz="UTC")
    assert inter["ts"].max() < pd.Timestamp("2026-01-01 01:00", tz="UTC")


def test_nobody_interacts_before_first_seen(small_synth: Dataset) -> None:
    inter = small_synth.interactions
    first_seen = inter["item_id"].map(small_synth.items.set_index("item_id")["first_seen"])
    assert (inter["ts"] >= first_seen).all()


def test_clicks_outnumber_purchases_and_some_clicks_are_searches(small_synth: Dataset) -> None:
    inter = small_synth.interactions
    kinds = inter["kind"].value_counts()
    assert kinds["click"] >= 4 * kinds["purchase"] > 0
    queries = inter.loc[inter["query"].notna()]
    assert (queries["kind"] == "click").all()
    assert 0.02 < len(queries) / kinds["click"] < 0.5
    # a query names a garment type ("navy shirt", "formal trousers")
    assert queries["query"].map(lambda q: any(q.endswith(g) for g in GARMENTS)).all()


def test_titles_are_composed_from_attributes(small_synth: Dataset) -> None:
    items = small_synth.items
    assert items["title"].notna().all() and items["title"].is_unique is not None
    for row in items.head(50).itertuples():
        assert row.title.startswith(row.brand)
        assert row.title.endswith(row.category)
        assert row.colour in COLOURS and f" {row.colour} " in f" {row.title} "
    assert set(items["category"]) <= set(GARMENTS)
    assert (items["price"] > 0).all()


def test_new_items_arrive_in_the_test_period_and_get_bought(small_synth: Dataset) -> None:
    split = small_synth.split
    assert split is not None
    items = small_synth.items
    new = set(items.loc[items["first_seen"] >= split.test_start, "item_id"])
    assert new, "some items must arrive in the test period (cold start)"
    _, _, test = small_synth.parts()
    assert test["item_id"].isin(new).sum() > 0
    at_start = (items["first_seen"] <= pd.Timestamp("2025-01-01", tz="UTC")).mean()
    assert 0.5 < at_start < 0.7


def _purchase_types(data: Dataset) -> pd.DataFrame:
    inter = data.interactions
    buys = inter.loc[inter["kind"] == "purchase", ["user_id", "item_id", "ts"]].copy()
    buys["type"] = buys["item_id"].map(data.items.set_index("item_id")["category"])
    buys["prev"] = buys.groupby("user_id")["type"].shift()
    return buys.dropna(subset=["prev"])


def test_next_purchase_type_is_predictable_from_the_previous_one(small_synth: Dataset) -> None:
    """Outfit completion: a bigram predictor of the next purchase's garment type, fitted on
    train, must clearly beat always predicting the most frequent type on test."""
    split = small_synth.split
    assert split is not None
    pairs = _purchase_types(small_synth)
    train = pairs[pairs["ts"] < split.val_start]
    test = pairs[pairs["ts"] >= split.test_start]
    bigram = train.groupby("prev")["type"].agg(lambda s: s.value_counts().index[0])
    most_frequent = train["type"].value_counts().index[0]
    bigram_acc = (test["prev"].map(bigram) == test["type"]).mean()
    base_acc = (test["type"] == most_frequent).mean()
    assert len(test) > 150
    assert bigram_acc > base_acc + 0.08 and bigram_acc > 1.6 * base_acc


def test_season_shapes_what_is_bought(small_synth: Dataset) -> None:
    inter = small_synth.interactions
    buys = inter[inter["kind"] == "purchase"]
    garment = buys["item_id"].map(small_synth.items.set_index("item_id")["category"])
    month = buys["ts"].dt.month
    summer = garment.isin(["shorts", "sandals", "tank top", "sun hat", "maxi dress"])
    winter = garment.isin(["coat", "puffer jacket", "beanie", "gloves", "boots", "scarf"])
    in_summer, in_winter = month.isin([6, 7, 8]), month.isin([12, 1, 2])
    assert summer[in_summer].mean() > 2 * summer[in_winter].mean()
    assert winter[in_winter].mean() > 2 * winter[in_summer].mean()


def test_tiny_and_invalid_sizes() -> None:
    tiny = synthesize(users=3, items=5, seed=7, days=10, progress=True)
    assert len(tiny.items) == 5 and tiny.interactions["user_id"].nunique() == 3
    with pytest.raises(ValueError):
        synthesize(users=0)
