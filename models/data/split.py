"""The temporal split every evaluation shares.

train < val_start <= validation < test_start <= test
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class TemporalSplit:
    val_start: pd.Timestamp
    test_start: pd.Timestamp

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
