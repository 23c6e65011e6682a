"""Offline ranking metrics over the full catalog, one relevant target per test event.

Every model is judged the same way: it scores the whole catalog for one shopper at one
moment, and the item the shopper actually took next is the single relevant target. What
matters is the target's 0-based rank, so the metrics take ranks; :func:`target_ranks`
turns a score matrix into ranks. Sampled-negative evaluation is deliberately absent: it
inflates numbers and reorders models.

This module also fixes the evaluation protocol (:func:`next_item_events`) so that
SASRec, the baselines and the LLM path are compared on exactly the same events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# -- ranks -------------------------------------------------------------------------------


def target_ranks(scores: np.ndarray, targets: Sequence[int] | np.ndarray,
                 exclude: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """0-based rank of each row's target among all catalog items, ties counted half.

    ``scores`` is [n_events, n_items] (or [n_items] for one event). Ties are split evenly
    (rank = #better + #tied/2) so a model that gives many items the same score, such as
    popularity with its zero-count tail, gets neither a lucky nor an unlucky rank.
    ``exclude[r]`` lists item indices removed from row ``r`` (e.g. already-bought items);
    the target itself is never removed, so excluding history cannot hide a repeat.
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"{s.shape[0]} score rows but {t.shape[0]} targets")
    if exclude is not None:
        s = s.copy()
        for r, idx in enumerate(exclude):
            idx = np.asarray([i for i in idx if i != t[r]], dtype=np.int64)
            s[r, idx] = -np.inf
    target_score = s[np.arange(len(t)), t][:, None]
    better = (s > target_score).sum(axis=1)
    tied = (s == target_score).sum(axis=1) - 1  # the target ties with itself
    return better + tied / 2.0


def recall_at_k(ranks: np.ndarray, k: int = 10) -> float:
    """Share of events whose target is in the top ``k`` (= HitRate@k with one target)."""
    return float(np.mean(hits_at_k(ranks, k))) if len(ranks) else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k; with a single target the ideal DCG is 1, so NDCG = 1/log2(rank+2)."""
    return float(np.mean(ndcg_gains(ranks, k))) if len(ranks) else 0.0


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the full catalog (no cut-off)."""
    r = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(1.0 / (r + 1.0))) if len(r) else 0.0


def hits_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-event 0/1 hit indicators; the unit the bootstrap resamples."""
    return (np.asarray(ranks, dtype=np.float64) < k).astype(np.float64)


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-event NDCG@k values (0 outside the top ``k``)."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-event values.

    Test sets here are small (hundreds to thousands of events), so differences between
    models must be read against this interval, not as bare point estimates.
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return (0.0, 0.0)
    means = _resampled_means(v, n_boot, seed)
    return (float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2)))


def _resampled_means(v: np.ndarray, n_boot: int, seed: int, chunk: int = 64) -> np.ndarray:
    """Means of ``n_boot`` resamples with replacement (drawn in chunks: 40k events × 1000
    resamples would be 320 MB of indices at once)."""
    rng = np.random.default_rng(seed)
    out = [v[rng.integers(0, len(v), size=(min(chunk, n_boot - lo), len(v)))].mean(axis=1)
           for lo in range(0, n_boot, chunk)]
    return np.concatenate(out)


@dataclass(frozen=True)
class PairedDifference:
    """``a − b`` on the same events: the mean difference, its percentile bootstrap interval
    and the two-sided bootstrap p-value of "no difference"."""

    diff: float
    ci: tuple[float, float]
    p_value: float
    n_events: int

    def as_dict(self) -> dict[str, object]:
        return {"diff": self.diff, "ci": list(self.ci), "p_value": self.p_value, "n_events": self.n_events}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
                     seed: int = 0) -> PairedDifference:
    """Paired bootstrap of per-event values of two systems scored on the same events.

    Resampling the per-event differences keeps the pairing, so the events both systems find
    easy or hard cancel out: far tighter than comparing two separate intervals. The p-value
    is twice the share of resampled mean differences on the far side of zero (capped at 1).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must match: {a.shape} vs {b.shape}")
    d = a - b
    if len(d) == 0 or not np.any(d):
        return PairedDifference(0.0, (0.0, 0.0), 1.0, len(d))
    means = _resampled_means(d, n_boot, seed)
    lo, hi = float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))
    p = min(1.0, 2.0 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return PairedDifference(float(d.mean()), (lo, hi), p, len(d))


@dataclass(frozen=True)
class RankingReport:
    """The numbers one model gets on one event set; what evaluation reports print."""

    n_events: int
    k: int
    recall: float
    ndcg: float
    mrr: float
    recall_ci: tuple[float, float] | None = None
    ndcg_ci: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, object]:
        return {f"recall@{self.k}": self.recall, f"ndcg@{self.k}": self.ndcg, "mrr": self.mrr,
                "n_events": self.n_events, f"recall@{self.k}_ci": self.recall_ci,
                f"ndcg@{self.k}_ci": self.ndcg_ci}


def summarise(ranks: np.ndarray, k: int = 10, ci: bool = False, seed: int = 0) -> RankingReport:
    """Recall@k, NDCG@k and MRR of a rank vector, with bootstrap intervals if asked."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return RankingReport(
        n_events=len(ranks), k=k, recall=recall_at_k(ranks, k), ndcg=ndcg_at_k(ranks, k),
        mrr=mrr(ranks),
        recall_ci=bootstrap_ci(hits_at_k(ranks, k), seed=seed) if ci else None,
        ndcg_ci=bootstrap_ci(ndcg_gains(ranks, k), seed=seed) if ci else None,
    )


# -- the evaluation protocol ----------------------------------------------------------------


@dataclass
class NextItemEvents:
    """Test events: for each, the shopper's history before it and the item taken next.

    ``targets`` are catalog indices (position in the items frame); histories are item ids
    in time order with their kinds, as a live worker would hold them.
    """

    user_ids: list[str]
    histories: list[list[str]]
    kinds: list[list[str]]
    targets: np.ndarray
    target_kinds: list[str]
    times: list[list[float]] = field(default_factory=list)  # seconds since the epoch, per history event

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, rows: Sequence[int] | np.ndarray) -> NextItemEvents:
        """The events at ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return NextItemEvents([self.user_ids[i] for i in rows], [self.histories[i] for i in rows],
                              [self.kinds[i] for i in rows], self.targets[rows],
                              [self.target_kinds[i] for i in rows],
                              [self.times[i] for i in rows] if self.times else [])


def next_item_events(item_ids: Sequence[str], before: pd.DataFrame, part: pd.DataFrame,
                     target_kinds: Sequence[str] = ("purchase",), max_history: int = 50,
                     max_events: int | None = None, seed: int = 0) -> NextItemEvents:
    """Every ``part`` interaction of a wanted kind becomes an event; history = all earlier ones.

    History includes interactions from ``before`` (e.g. train) and earlier ones in
    ``part`` itself, so later test events see earlier test events, as in streaming.
    Events with an empty history or a target outside the catalog are dropped (nothing
    to personalise / nothing to rank). ``max_events`` samples a fixed subset, for cheap
    validation during training.
    """
    index = {item: i for i, item in enumerate(item_ids)}
    both = pd.concat([before.assign(_eval=False), part.assign(_eval=True)])
    both = both.sort_values("ts", kind="stable")
    out = NextItemEvents([], [], [], np.zeros(0, dtype=np.int64), [])
    targets: list[int] = []
    wanted = set(target_kinds)
    for user, rows in both.groupby("user_id", sort=False):
        items = rows["item_id"].tolist()
        kinds = rows["kind"].tolist()
        seconds = epoch_seconds(rows["ts"])
        flags = rows["_eval"].to_numpy()
        for j in np.flatnonzero(flags):
            if j == 0 or kinds[j] not in wanted or items[j] not in index:
                continue
            lo = max(0, j - max_history)
            out.user_ids.append(str(user))
            out.histories.append(items[lo:j])
            out.kinds.append(kinds[lo:j])
            out.times.append(seconds[lo:j])
            out.target_kinds.append(kinds[j])
            targets.append(index[items[j]])
    out.targets = np.asarray(targets, dtype=np.int64)
    if max_events is not None and len(targets) > max_events:
        out = out.subset(np.sort(np.random.default_rng(seed).choice(len(targets), max_events, replace=False)))
    return out


def epoch_seconds(ts: pd.Series) -> list[float]:
    """Timestamps (datetimes or numbers of seconds) as seconds since the epoch."""
    if pd.api.types.is_numeric_dtype(ts):
        return ts.astype(float).tolist()
    stamps = pd.to_datetime(ts, utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()).tolist()


def evaluate_scorer(score: Callable[[list[str], list[str]], np.ndarray], events: NextItemEvents,
                    k: int = 10, ci: bool = False) -> RankingReport:
    """Rank every event's target under ``score(history, kinds) -> [n_items]`` and summarise.

    One function for every model keeps the comparison honest: same events, same
    full-catalog ranking, same tie rule.
    """
    ranks = np.empty(len(events), dtype=np.float64)
    for r, (hist, kinds) in enumerate(zip(events.histories, events.kinds, strict=True)):
        ranks[r] = target_ranks(score(hist, kinds), [events.targets[r]])[0]
    return summarise(ranks, k=k, ci=ci)
