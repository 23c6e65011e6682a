"""The two evaluation protocols, as splits of the interactions into train / val / test.

- :class:`TemporalSplit` (the default, what a live system faces): one global cut in time,
  ``train < val_start <= validation < test_start <= test``.
- :class:`LeaveOneOutSplit` (how published results on Amazon data are reported): per
  shopper, the last purchase and whatever follows it is test, from the purchase before it
  up to the last one is validation, everything earlier is train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

PROTOCOLS = ("temporal", "leave-one-out")


@dataclass(frozen=True)
class TemporalSplit:
    val_start: pd.Timestamp
    test_start: pd.Timestamp
    protocol = "temporal"

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, val_frac: float = 0.1,
                          test_frac: float = 0.1) -> TemporalSplit:
        """Cut by time: the last ``test_frac`` of interactions is test, the ``val_frac``
        before it validation."""
        ts = interactions["ts"].sort_values(kind="stable")
        n = len(ts)
        val_at = ts.iloc[min(n - 1, int(n * (1 - val_frac - test_frac)))]
        test_at = ts.iloc[min(n - 1, int(n * (1 - test_frac)))]
        return cls(pd.Timestamp(val_at), pd.Timestamp(test_at))

    def apply(self, interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        ts = interactions["ts"]
        train = interactions[ts < self.val_start]
        val = interactions[(ts >= self.val_start) & (ts < self.test_start)]
        test = interactions[ts >= self.test_start]
        return train, val, test

    def to_dict(self) -> dict[str, str]:
        return {"val_start": self.val_start.isoformat(), "test_start": self.test_start.isoformat()}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> TemporalSplit:
        return cls(pd.Timestamp(d["val_start"]), pd.Timestamp(d["test_start"]))


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Per shopper by position in time: ``[0, p_prev)`` train, ``[p_prev, p_last)`` validation,
    ``[p_last, end)`` test, where ``p_last`` is the last purchase and ``p_prev`` the one
    before it. A shopper with one purchase has it in test; one with none stays in train.
    Nothing later than a shopper's test purchase is ever in train."""

    protocol = "leave-one-out"

    def apply(self, interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        part = self.parts_of(interactions)
        return interactions[part == 0], interactions[part == 1], interactions[part == 2]

    @staticmethod
    def parts_of(interactions: pd.DataFrame) -> np.ndarray:
        """0 (train), 1 (validation) or 2 (test) for every row, in the frame's row order."""
        order = np.lexsort((np.arange(len(interactions)), interactions["ts"].to_numpy(),
                            interactions["user_id"].astype(str).to_numpy()))
        frame = interactions.iloc[order]
        pos = frame.groupby("user_id", sort=False).cumcount().to_numpy()
        buy = (frame["kind"] == "purchase").to_numpy()
        users = frame["user_id"].to_numpy()
        buys = frame.loc[buy, ["user_id"]].assign(pos=pos[buy])
        from_end = buys.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
        last_of = dict(zip(buys["user_id"][from_end == 0], buys["pos"][from_end == 0], strict=True))
        prev_of = dict(zip(buys["user_id"][from_end == 1], buys["pos"][from_end == 1], strict=True))
        last = pd.Series(users).map(last_of).fillna(-1).to_numpy()
        prev = pd.Series(users).map(prev_of).fillna(-1).to_numpy()
        out_sorted = np.zeros(len(frame), dtype=np.int8)
        out_sorted[(last >= 0) & (pos >= last)] = 2
        out_sorted[(prev >= 0) & (pos >= prev) & (pos < last)] = 1
        out = np.empty_like(out_sorted)
        out[order] = out_sorted
        return out

    def to_dict(self) -> dict[str, str]:
        return {"protocol": self.protocol}


Split = TemporalSplit | LeaveOneOutSplit


def split_from_dict(d: dict[str, Any]) -> Split:
    """The split a manifest recorded (no ``protocol`` key: a temporal split)."""
    if d.get("protocol") == LeaveOneOutSplit.protocol:
        return LeaveOneOutSplit()
    return TemporalSplit.from_dict(d)
