"""The two protocols: a global temporal cut, and leave-one-out per shopper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data.dataset import DataError, Dataset
from models.data.split import LeaveOneOutSplit, split_from_dict
from models.data.synth import synthesize


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["a", "a", "a", "a", "b", "b", "c", "d"],
        "item_id": ["1", "2", "3", "4", "1", "2", "5", "6"],
        "ts": pd.to_datetime([1, 2, 3, 4, 1, 2, 5, 9], unit="s", utc=True),
        "kind": ["purchase", "click", "purchase", "click", "purchase", "purchase", "click", "purchase"],
    })


def test_leave_one_out_by_hand():
    parts = LeaveOneOutSplit.parts_of(frame())
    # a: p(1) c(2) p(3) c(4) -> the purchase before the last starts validation, the last starts test
    # b: p p -> val, test; c: clicks only -> train; d: one purchase -> test
    assert parts.tolist() == [1, 1, 2, 2, 1, 2, 0, 2]


def test_leave_one_out_last_purchase_is_test_and_nothing_later_is_train():
    data = synthesize(users=80, items=120, seed=3).with_protocol("leave-one-out")
    train, val, test = data.parts()
    assert len(train) + len(val) + len(test) == len(data.interactions)
    buys = data.interactions[data.interactions["kind"] == "purchase"]
    last = buys.sort_values("ts", kind="stable").groupby("user_id").tail(1)
    assert set(last.index) <= set(test.index)  # each shopper's last purchase is in test
    first_test = test.groupby("user_id")["ts"].min()
    latest_train = train.groupby("user_id")["ts"].max()
    both = latest_train.index.intersection(first_test.index)
    assert (latest_train[both] <= first_test[both]).all()  # nothing later than the test in train
    assert (test[test["kind"] == "purchase"].groupby("user_id").size() == 1).all()


def test_protocol_is_part_of_the_data_version_and_manifest(tmp_path):
    data = synthesize(users=30, items=50, seed=1)
    loo = data.with_protocol("leave-one-out")
    assert data.protocol == "temporal" and loo.protocol == "leave-one-out"
    assert loo.data_hash() != data.data_hash() and data.with_protocol("temporal") is data
    again = Dataset.load(loo.save(tmp_path / "loo"))
    assert again.protocol == "leave-one-out" and again.data_hash() == loo.data_hash()
    assert isinstance(split_from_dict({"protocol": "leave-one-out"}), LeaveOneOutSplit)
    with pytest.raises(DataError, match="protocol"):
        data.with_protocol("random")
    assert np.array_equal(LeaveOneOutSplit.parts_of(frame().iloc[::-1]), LeaveOneOutSplit.parts_of(frame())[::-1])
