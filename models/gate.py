"""The gate: whether an event's recommendation is worth a call to the LLM.

The fast path (the last-title mix-up, :meth:`models.recommender.MixupRecommender.recommend_fast`)
answers every event in about a millisecond; the LLM path costs about a second of a CPU or a
slot of a GPU batch, and on real data it is often no better. The gate is a small logistic
regression over what the stream knows at trigger time (:data:`FEATURES`), fitted on the
bundle's validation events to predict where the LLM path's answer beats the fast path's.
An event whose probability is below the threshold is answered by the fast path at once.

The threshold is chosen on validation with cross-fitted probabilities (each fold's events
scored by a model that did not see them), as the share of events sent that gives the best
validation Recall@10 of the served system (gate + LLM + fast path); a share that does not
beat the fast path alone closes the gate (the threshold is then above every probability).
Everything is stored as plain numbers in the bundle's manifest, so any process that loads
the bundle makes the same decision for the same event.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

FEATURES = ("history_events", "categories", "gap_seconds", "clicks_share", "last_is_repeat",
            "last_has_title", "fast_top_score", "fast_margin")
SEND_SHARES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # shares of validation events sent, tried
FOLDS = 5
L2 = 1.0
CLOSED = math.inf  # a threshold no probability reaches
GATE_MODES = ("bundle", "open", "closed")


class HistoryLike(Protocol):
    item_ids: tuple[str, ...]
    kinds: tuple[str, ...]
    times: tuple[float, ...]


class ScoredLike(Protocol):
    item_id: str
    score: float


def gate_features(history: HistoryLike, fast_answer: Sequence[ScoredLike], category_of: Callable[[str], str | None],
                  has_title: Callable[[str], bool], prompt_window: int) -> np.ndarray:
    """The features of one event, in :data:`FEATURES` order, from what the stream has when
    the trigger fires: the shopper's history (newest last) and the fast path's answer."""
    items = history.item_ids
    recent = items[-prompt_window:]
    cats = {c for c in (category_of(i) for i in recent) if c}
    times = history.times
    gap = max(0.0, times[-1] - times[-2]) if len(times) >= 2 else 0.0
    scores = [h.score for h in fast_answer[:2]]
    top = scores[0] if scores else 0.0
    margin = scores[0] - scores[1] if len(scores) == 2 else 0.0
    return np.array([
        math.log1p(len(items)),
        len(cats),
        math.log1p(gap),
        sum(k == "click" for k in history.kinds) / max(len(items), 1),
        float(bool(items) and items[-1] in items[:-1]),
        float(bool(items) and has_title(items[-1])),
        top,
        margin,
    ], dtype=np.float64)


@dataclass(frozen=True)
class Decision:
    send: bool  # the LLM path is asked
    score: float  # the gate's probability that the LLM path's answer is the better one


@dataclass(frozen=True)
class Gate:
    """A fitted gate: standardisation, logistic weights and the threshold, plus how it was chosen.

    ``mode``: "bundle" decides by the model; "open" sends every event and "closed" none
    (settings override the bundle's choice with these, say to measure the LLM path alone).
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    features: tuple[str, ...] = FEATURES
    mode: str = "bundle"
    validation: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def always(cls, mode: str) -> Gate:
        """A gate that sends every event ("open") or none ("closed")."""
        if mode not in ("open", "closed"):
            raise ValueError(f"a fixed gate is open or closed, not {mode!r}")
        n = len(FEATURES)
        return cls((0.0,) * n, (1.0,) * n, (0.0,) * n, 0.0, CLOSED, mode=mode)

    def with_mode(self, mode: str) -> Gate:
        """This gate under a setting: "bundle" keeps it, "open"/"closed" fix the decision."""
        if mode not in GATE_MODES:
            raise ValueError(f"the gate's mode is one of {', '.join(GATE_MODES)}, not {mode!r}")
        return replace(self, mode=mode)

    @property
    def closed(self) -> bool:
        return self.mode == "closed" or (self.mode == "bundle" and self.threshold == CLOSED)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        return _sigmoid(z @ np.asarray(self.weights) + self.bias)

    def decide(self, x: np.ndarray) -> list[Decision]:
        """One decision per feature row."""
        p = self.probabilities(x)
        if self.mode == "open":
            return [Decision(True, float(s)) for s in p]
        if self.mode == "closed":
            return [Decision(False, float(s)) for s in p]
        return [Decision(bool(s >= self.threshold), float(s)) for s in p]

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "bias": self.bias,
                "threshold": None if self.threshold == CLOSED else self.threshold,
                "validation": dict(self.validation)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gate:
        features = tuple(data["features"])
        if features != FEATURES:
            raise ValueError(f"the bundle's gate uses features {features}; this version computes {FEATURES}")
        threshold = data.get("threshold")
        return cls(tuple(data["mean"]), tuple(data["scale"]), tuple(data["weights"]), float(data["bias"]),
                   CLOSED if threshold is None else float(threshold), features,
                   validation=dict(data.get("validation") or {}))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 50
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Standardised L2 logistic regression by Newton's method: (mean, scale, weights, bias)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.c_[(x - mean) / scale, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0  # the intercept is not shrunk
    for _ in range(steps):
        p = _sigmoid(z @ w)
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return mean, scale, w[:-1], float(w[-1])


def cross_fitted(x: np.ndarray, y: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Each event's probability from a model fitted on the other folds."""
    n = len(y)
    order = np.random.default_rng(seed).permutation(n)
    out = np.full(n, float(np.mean(y)) if n else 0.0)
    for f in range(min(folds, n)):
        held = order[f::folds]
        train = np.setdiff1d(order, held)
        if len(np.unique(y[train])) < 2:
            continue
        mean, scale, w, b = fit_logistic(x[train], y[train])
        out[held] = _sigmoid(((x[held] - mean) / scale) @ w + b)
    return out


def fit_gate(x: np.ndarray, llm_ranks: np.ndarray, fast_ranks: np.ndarray, k: int = 10, tie_break: float = 1e-3,
             seed: int = 0) -> Gate:
    """Fit the gate on validation: features ``x`` [n, len(FEATURES)] and each event's target
    rank (0-based, whole catalog) under the LLM path and under the fast path.

    The label is "the LLM path ranks the target better within the top ``k``" (NDCG@k gain);
    the send share is the one of :data:`SEND_SHARES` whose served Recall@k (+ ``tie_break`` ×
    MRR) on the cross-fitted probabilities is best, fewer calls on ties; none beating the
    fast path alone closes the gate."""
    llm_g, fast_g = _gain(llm_ranks, k), _gain(fast_ranks, k)
    y = (llm_g > fast_g).astype(np.float64)
    stats = {"n_events": int(len(y)), "llm_better": int(y.sum()), "fast_better": int((fast_g > llm_g).sum()),
             "recall@10_fast": _recall(fast_ranks, k), "recall@10_llm": _recall(llm_ranks, k)}
    if len(y) < FOLDS or len(np.unique(y)) < 2:
        mean, scale, w, b = np.zeros(x.shape[1]), np.ones(x.shape[1]), np.zeros(x.shape[1]), 0.0
        return Gate(tuple(mean), tuple(scale), tuple(w), b, CLOSED,
                    validation={**stats, "send_share": 0.0, "recall@10_served": stats["recall@10_fast"],
                                "why": "too few events where the LLM path is the better one"})
    p = cross_fitted(x, y, seed=seed)
    curve, best = {}, None
    for share in SEND_SHARES:
        cut = _threshold_for(p, share)
        send = p >= cut
        served = np.where(send, llm_ranks, fast_ranks)
        objective = _recall(served, k) + tie_break * _mrr(served)
        curve[str(share)] = round(_recall(served, k), 5)
        if best is None or objective > best[0] + 1e-12:
            best = (objective, share, float(send.mean()), _recall(served, k))
    assert best is not None
    mean, scale, w, b = fit_logistic(x, y)
    base = _recall(fast_ranks, k) + tie_break * _mrr(fast_ranks)
    share = best[1] if best[0] > base + 1e-12 else 0.0
    threshold = CLOSED if share == 0.0 else _threshold_for(_sigmoid(((x - mean) / scale) @ w + b), share)
    return Gate(tuple(mean), tuple(scale), tuple(w), b, threshold,
                validation={**stats, "send_share": share, "send_share_cross_fitted": best[2] if share else 0.0,
                            "recall@10_served": best[3] if share else stats["recall@10_fast"],
                            "recall@10_by_share": curve})


def _threshold_for(p: np.ndarray, share: float) -> float:
    """The probability above which ``share`` of the events lie (share 0: none; 1: all)."""
    if share <= 0.0:
        return CLOSED
    if share >= 1.0:
        return -1.0  # below every probability
    return float(np.quantile(p, 1.0 - share))


def _gain(ranks: np.ndarray, k: int) -> np.ndarray:
    r = np.asarray(ranks, np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def _recall(ranks: np.ndarray, k: int) -> float:
    return float((np.asarray(ranks) < k).mean()) if len(ranks) else 0.0


def _mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / (np.asarray(ranks, np.float64) + 1.0))) if len(ranks) else 0.0
