"""Non-learned recommenders: global popularity, popularity within recent categories, co-occurrence.

They are the baselines of the offline evaluation and the recommender the stream
workers use until the LLM path is deployed. Pure numpy/pandas: no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd

PURCHASE_WEIGHT = 1.0
CLICK_WEIGHT = 0.2


def interaction_weights(interactions: pd.DataFrame) -> pd.Series:
    """Purchases count fully, clicks a fifth: clicks are many and weak."""
    return np.where(interactions["kind"] == "purchase", PURCHASE_WEIGHT, CLICK_WEIGHT)


class Popularity:
    """Most-interacted items over the training period."""

    def __init__(self, items: pd.DataFrame, train: pd.DataFrame):
        w = pd.Series(interaction_weights(train), index=train.index)
        counts = w.groupby(train["item_id"]).sum()
        self.item_ids = items["item_id"].to_numpy()
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.scores = counts.reindex(self.item_ids).fillna(0.0).to_numpy(dtype=np.float64)

    def score(self, history: Sequence[str]) -> np.ndarray:
        """One score per catalog item (same order as ``items``)."""
        return self.scores.copy()

    def recommend(self, history: Sequence[str], k: int = 10, exclude: Sequence[str] = ()) -> list[tuple[str, float]]:
        return top_k(self.score(history), self.item_ids, k, [self.index[i] for i in exclude if i in self.index])


class CategoryPopularity(Popularity):
    """Popularity within the categories of the shopper's recent items, newest weighted most.

    Falls back to global popularity for shoppers whose recent items are unknown.
    """

    def __init__(self, items: pd.DataFrame, train: pd.DataFrame, recent: int = 10):
        super().__init__(items, train)
        self.recent = recent
        self.category = items["category"].fillna("unknown").astype(str).to_numpy()
        self.item_category = dict(zip(self.item_ids, self.category, strict=True))
        total = self.scores.sum() or 1.0
        self.global_share = self.scores / total
        self.members = {cat: np.flatnonzero(self.category == cat) for cat in np.unique(self.category)}

    def score(self, history: Sequence[str]) -> np.ndarray:
        weights: dict[str, float] = defaultdict(float)
        for age, item in enumerate(reversed(list(history)[-self.recent:])):
            cat = self.item_category.get(item)
            if cat is not None:
                weights[cat] += 0.8**age
        scores = self.global_share.copy()  # tie-breaker and cold-user fallback
        for cat, w in weights.items():
            idx = self.members[cat]
            scores[idx] += w * self.global_share[idx] * 100.0
        return scores


class CoOccurrence(Popularity):
    """Items that follow the shopper's recent items in other shoppers' sequences."""

    def __init__(self, items: pd.DataFrame, train: pd.DataFrame, window: int = 3, recent: int = 5):
        super().__init__(items, train)
        self.recent = recent
        follow: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        codes = train["item_id"].map(self.index)
        for _, seq in codes.groupby(train["user_id"], sort=False):
            s = [int(c) for c in seq.dropna()]
            for i, a in enumerate(s):
                for b in s[i + 1:i + 1 + window]:
                    if a != b:
                        follow[a][b] += 1.0
        self.follow = follow
        total = self.scores.sum() or 1.0
        self.global_share = self.scores / total

    def score(self, history: Sequence[str]) -> np.ndarray:
        scores = self.global_share * 1e-3
        for age, item in enumerate(reversed(list(history)[-self.recent:])):
            idx = self.index.get(item)
            if idx is None:
                continue
            for b, c in self.follow.get(idx, {}).items():
                scores[b] += c * 0.7**age
        return scores


def top_k(scores: np.ndarray, item_ids: np.ndarray, k: int, exclude_idx: Sequence[int] = ()) -> list[tuple[str, float]]:
    """The ``k`` best (item_id, score) pairs, ``exclude_idx`` removed, best first."""
    scores = scores.astype(np.float64, copy=True)
    if len(exclude_idx):
        scores[list(exclude_idx)] = -np.inf
    k = min(k, len(scores))
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(str(item_ids[i]), float(scores[i])) for i in best if np.isfinite(scores[i])]
