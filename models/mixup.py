"""Mix-up retrieval: ground generated text in the catalog by blending two similarities.

The blended score of item ``i`` for a query made of generated text ``t_q`` and a user
state ``u`` is (our reading of the paper, see DESIGN.md)

    s(i) = λ·cos(t_q, t_i) + (1 − λ)·sim(u, e_i)

where the ID half ``sim`` is either ``cos(u, e_i)`` (``id_half="cosine"``) or SASRec's
own logit ``u·e_i / σ`` (``id_half="logit"``: the norms carry signal the cosine throws
away, and at λ = 0 the ranking is exactly SASRec's). Either way it is ONE inner product,
``s(i) = q · x_i``, with the weights on the query side only:

    x_i = [t̂_i ; ê_i]  (cosine)   or   [t̂_i ; e_i]    (logit)
    q   = [λ·t̂_q ; (1−λ)·û]        or   [λ·t̂_q ; (1−λ)·u/σ]

so every item is stored once, as ``x_i``, independent of λ and σ, in any inner-product
vector index (Milvus in production, :class:`MixupIndex` in process), a new λ needs no
re-indexing, and one search answers the blended query. λ = 1 is pure title retrieval,
λ = 0 pure ID retrieval.

Also here: :class:`IdImputer` (ID embeddings for items the sequential model has not
seen yet), :class:`QueryMemory` (past search queries mapped to what shoppers took next)
and :func:`choose_lambda`. Pure numpy; nothing here knows about Milvus.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from models.metrics import recall_at_k, target_ranks

ID_HALVES = ("cosine", "logit")

# -- the blend -------------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (cosine 0 with everything)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


@dataclass(frozen=True)
class Fusion:
    """How the two halves are blended; chosen on validation and recorded with the bundle.

    ``rebuy_threshold``: items the shopper already bought are left out of the answer
    unless the generated text names them (``cos(t_q, t_i) >= threshold``: the model
    predicts a re-buy). ``None`` keeps bought items rankable like any other.

    ``repeat``: the repeat term, a score added to the items of the shopper's own history
    by recency rank (``repeat[0]`` to the newest distinct item; ranks past the end get the
    last weight); empty: off. Shoppers buy again, and the search alone cannot know which
    items a shopper has.

    ``repeat_slots`` (with the repeat term): a repeat/explore split of the answer, a fixed
    gate in the spirit of RepeatNet. The first ``repeat_slots`` places go to the shopper's own
    items ranked by the score above; the rest to the ranking of a second query at
    ``explore_lam``, which can lean on the text (new items have no trained ID vector). 0: one
    ranking.

    ``anchor``: how much of the text query is the title of the shopper's last item,
    ``t_q = unit((1−a)·t̂_gen + a·t̂_last)``; 0: the generated text alone. A small LLM's
    text drifts, and the last item's title is a strong query on its own (the content
    baseline); the blend lets validation decide how far to trust the generation.
    """

    lam: float
    id_half: str = "cosine"
    sigma: float = 1.0
    rebuy_threshold: float | None = None
    repeat: tuple[float, ...] = ()
    repeat_slots: int = 0
    explore_lam: float = 1.0
    anchor: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"λ must be in [0, 1], got {self.lam}")
        if not 0.0 <= self.anchor <= 1.0:
            raise ValueError(f"the anchor weight must be in [0, 1], got {self.anchor}")
        if self.id_half not in ID_HALVES:
            raise ValueError(f"id_half must be one of {', '.join(ID_HALVES)}, not {self.id_half!r}")
        if not self.sigma > 0:
            raise ValueError(f"σ must be positive, got {self.sigma}")

    def with_lambda(self, lam: float) -> Fusion:
        return replace(self, lam=float(lam))

    def with_anchor(self, anchor: float) -> Fusion:
        return replace(self, anchor=float(anchor))

    def with_repeat(self, repeat: Sequence[float], slots: int | None = None, explore_lam: float | None = None
                    ) -> Fusion:
        """The repeat term (and split) changed; an empty term turns the split off too."""
        weights = tuple(float(w) for w in repeat)
        slots = (self.repeat_slots if slots is None else int(slots)) if weights else 0
        return replace(self, repeat=weights, repeat_slots=slots,
                       explore_lam=self.explore_lam if explore_lam is None else float(explore_lam))

    def explore(self) -> Fusion:
        """The explore query's fusion: λ = ``explore_lam``, no repeat term, the same text query."""
        return Fusion(self.explore_lam, self.id_half, self.sigma, self.rebuy_threshold, anchor=self.anchor)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "repeat": list(self.repeat)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fusion:
        kept = {k: data[k] for k in ("lam", "id_half", "sigma", "rebuy_threshold", "repeat_slots", "explore_lam",
                                     "anchor") if k in data}
        return cls(**kept, repeat=tuple(data.get("repeat") or ()))


Ranking = Sequence[Sequence[tuple[str, float]]]  # per shopper: (item, score), best first


def split_answer(repeat_rows: Ranking, explore_rows: Ranking, own: Sequence[set[str]], slots: int,
                 k: int) -> list[list[tuple[str, float]]]:
    """The repeat/explore split: per shopper, the first ``slots`` of their own items in
    ``repeat_rows`` order, then ``explore_rows`` (without those items) up to ``k``."""
    out = []
    for rep, exp, mine in zip(repeat_rows, explore_rows, own, strict=True):
        first = [(i, s) for i, s in rep if i in mine][:slots]
        taken = {i for i, _ in first}
        out.append((first + [(i, s) for i, s in exp if i not in taken])[:k])
    return out


def split_scores(repeat_scores: np.ndarray, explore_scores: np.ndarray, own_rows: Sequence[np.ndarray],
                 slots: int) -> np.ndarray:
    """Whole-catalog scores whose order is :func:`split_answer`'s: each shopper's best
    ``slots`` own items (by ``repeat_scores``) above everything, the rest by ``explore_scores``."""
    out = np.array(explore_scores, dtype=np.float64, copy=True)
    for r, rows in enumerate(own_rows):
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[np.isfinite(repeat_scores[r, rows])]
        best = rows[np.argsort(-repeat_scores[r, rows], kind="stable")[:slots]]
        out[r, best] = 1e9 + repeat_scores[r, best]
    return out


def repeat_boosts(history_items: Sequence[str], weights: Sequence[float]) -> dict[str, float]:
    """The repeat term of one shopper: a weight per distinct history item by recency rank
    (newest first; ranks past the last weight get the last weight). No weights: nothing."""
    out: dict[str, float] = {}
    if not len(weights):
        return out
    for item in reversed(list(history_items)):
        if item not in out:
            out[item] = float(weights[min(len(out), len(weights) - 1)])
    return out


def id_part(id_emb: np.ndarray, id_half: str) -> np.ndarray:
    """The stored ID half of the item vectors: ê_i (cosine) or e_i itself (logit)."""
    e = np.atleast_2d(np.asarray(id_emb, dtype=np.float64))
    return unit(e) if id_half == "cosine" else e


def mixup_item_vectors(title_emb: np.ndarray, id_emb: np.ndarray, id_half: str = "cosine") -> np.ndarray:
    """x_i = [t̂_i ; ê_i] or [t̂_i ; e_i], one row per item: what the vector index stores."""
    if id_half not in ID_HALVES:
        raise ValueError(f"id_half must be one of {', '.join(ID_HALVES)}, not {id_half!r}")
    t, e = np.atleast_2d(title_emb), np.atleast_2d(id_emb)
    if len(t) != len(e):
        raise ValueError(f"{len(t)} title rows but {len(e)} ID rows")
    return np.concatenate([unit(t), id_part(e, id_half)], axis=1).astype(np.float32)


def mixup_query(text_emb: np.ndarray | None, user_state: np.ndarray | None, fusion: Fusion | float,
                text_dim: int | None = None, id_dim: int | None = None) -> np.ndarray:
    """q = [λ·t̂_q ; (1−λ)·û] (cosine) or [λ·t̂_q ; (1−λ)·u/σ] (logit), for one query
    ([d]) or a batch ([b, d]). A bare float is λ with the cosine ID half.

    A missing half (no generated text, or a shopper with no state) becomes zeros, so
    that half contributes nothing; give its dimension (``text_dim`` / ``id_dim``) then.
    """
    fusion = fusion if isinstance(fusion, Fusion) else Fusion(float(fusion))
    one = (text_emb if text_emb is not None else user_state)
    if one is None:
        raise ValueError("a mix-up query needs generated text, a user state, or both")
    single = np.asarray(one).ndim == 1
    rows = 1 if single else len(one)
    t = _half(text_emb, rows, text_dim, "text_dim")
    u = _half(user_state, rows, id_dim, "id_dim")
    u = unit(u) if fusion.id_half == "cosine" else u / fusion.sigma
    q = np.concatenate([fusion.lam * unit(t), (1.0 - fusion.lam) * u], axis=1)
    return q[0].astype(np.float32) if single else q.astype(np.float32)


def anchored_text(text_emb: np.ndarray, last_title: np.ndarray, anchor: float) -> np.ndarray:
    """The text query with the last item's title mixed in: unit((1−a)·t̂_gen + a·t̂_last), row
    by row ([b, d]). A row with neither (no text, no known last item) stays zero."""
    t = np.atleast_2d(np.asarray(text_emb, dtype=np.float64))
    if anchor == 0.0:
        return t
    return unit((1.0 - anchor) * unit(t) + anchor * unit(np.atleast_2d(last_title)))


def _half(x: np.ndarray | None, rows: int, dim: int | None, name: str) -> np.ndarray:
    if x is not None:
        return np.atleast_2d(np.asarray(x, dtype=np.float64))
    if dim is None:
        raise ValueError(f"that half of the query is missing: pass {name}")
    return np.zeros((rows, dim))


def blended_score(text_emb: np.ndarray, user_state: np.ndarray, title_emb: np.ndarray,
                  id_emb: np.ndarray, fusion: Fusion | float) -> np.ndarray:
    """s(i) = λ·cos(t_q, t_i) + (1−λ)·sim(u, e_i), computed directly (the reference formula)."""
    fusion = fusion if isinstance(fusion, Fusion) else Fusion(float(fusion))
    lam = fusion.lam
    if fusion.id_half == "cosine":
        ids = unit(id_emb) @ unit(user_state)
    else:
        ids = np.asarray(id_emb, dtype=np.float64) @ np.asarray(user_state, dtype=np.float64) / fusion.sigma
    return lam * (unit(title_emb) @ unit(text_emb)) + (1 - lam) * ids


def rebuy_exclusions(bought: Sequence[Sequence[str]], text_sim: Callable[[int, str], float],
                     threshold: float | None) -> list[list[str]]:
    """Per query ``r``, the bought items to leave out of its answer.

    ``text_sim(r, item)`` is cos(t_q of query r, t_item). A bought item stays when the
    generated text names it (similarity at least ``threshold``: the model predicts a
    re-buy); ``threshold=None`` keeps every bought item rankable.
    """
    if threshold is None:
        return [[] for _ in bought]
    return [[i for i in items if not text_sim(r, i) >= threshold] for r, items in enumerate(bought)]


# -- exact in-memory index -----------------------------------------------------------------------


class Hit(NamedTuple):
    item_id: str
    score: float


class MixupIndex:
    """Exact inner-product search over stored mix-up vectors (in-process serving, evaluation).

    Holds the same vectors the Milvus collection holds, so offline numbers and the
    served ranking agree up to the approximate index's recall. ``available`` marks the
    items that may be answered (in stock); the others are never returned.
    """

    def __init__(self, item_ids: Sequence[str], vectors: np.ndarray,
                 available: np.ndarray | None = None):
        self.item_ids = np.asarray([str(i) for i in item_ids])
        self.vectors = np.asarray(vectors, dtype=np.float32)
        if len(self.item_ids) != len(self.vectors):
            raise ValueError(f"{len(self.item_ids)} ids but {len(self.vectors)} vectors")
        self.available = (np.ones(len(self.item_ids), bool) if available is None
                          else np.asarray(available, dtype=bool))
        self._all_available = bool(self.available.all())
        self.ivf: IvfIndex | None = None
        self.index = {item: i for i, item in enumerate(self.item_ids)}

    @classmethod
    def build(cls, item_ids: Sequence[str], title_emb: np.ndarray, id_emb: np.ndarray,
              id_half: str = "cosine") -> MixupIndex:
        return cls(item_ids, mixup_item_vectors(title_emb, id_emb, id_half))

    def __len__(self) -> int:
        return len(self.item_ids)

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Scores of every item, in stored order ([n] for one query, [b, n] for a batch)."""
        return np.asarray(q, dtype=np.float32) @ self.vectors.T

    def search(self, q: np.ndarray, k: int = 10,
               exclude: Sequence[str] | Sequence[Sequence[str]] | None = None,
               boosts: Sequence[Mapping[str, float]] | None = None) -> list[Hit] | list[list[Hit]]:
        """The ``k`` best available items, best first; ``exclude`` lists item ids to leave
        out (one list for a single query, one list per query for a batch); ``boosts`` (exact
        search only) adds a score to some items per query (the repeat term). Exact: one matrix
        product and one partial sort for the whole batch; through :meth:`approximate`'s index,
        the items of each query's nearest lists only."""
        single = np.asarray(q).ndim == 1
        if boosts is not None and self.ivf is not None:
            raise ValueError("boosts need the exact search (every item scored)")
        if self.ivf is not None:
            out = self._search_lists(np.atleast_2d(np.asarray(q, np.float32)), k,
                                     [exclude] if single else (exclude or [None] * len(np.atleast_2d(q))))
            return out[0] if single else out
        scores = np.atleast_2d(self.scores(q))
        if not self._all_available:
            scores[:, ~self.available] = -np.inf
        excl = [exclude] if single else (exclude or [None] * len(scores))
        for r, ex in enumerate(excl):
            if ex:
                scores[r, [self.index[i] for i in ex if i in self.index]] = -np.inf
        for r, boost in enumerate(boosts or ()):
            rows = [self.index[i] for i in boost if i in self.index]
            scores[r, rows] += np.asarray([boost[i] for i in boost if i in self.index], np.float32)
        top = top_k_matrix(scores, k)
        out = [[Hit(str(self.item_ids[i]), float(row[i])) for i in best if np.isfinite(row[i])]
               for row, best in zip(scores, top, strict=True)]
        return out[0] if single else out


    def approximate(self, ivf: IvfIndex | None) -> MixupIndex:
        """Search through ``ivf`` from now on (None: exactly again); scores stay exact."""
        self.ivf = ivf
        return self

    def _search_lists(self, q: np.ndarray, k: int, exclude: Sequence[Sequence[str] | None]) -> list[list[Hit]]:
        assert self.ivf is not None
        out = []
        for row, ex in zip(q, exclude, strict=True):
            rows, scores = self.ivf.scores(row)
            if not self._all_available:
                scores[~self.available[rows]] = -np.inf
            if ex:
                scores[np.isin(rows, [self.index[i] for i in ex if i in self.index])] = -np.inf
            best = top_k_matrix(scores[None], k)[0]
            out.append([Hit(str(self.item_ids[rows[i]]), float(scores[i])) for i in best if np.isfinite(scores[i])])
        return out


class IvfIndex:
    """Approximate inner-product search for large catalogues (an inverted file, as Milvus's
    IVF_FLAT): the stored vectors grouped into lists by k-means; a query scores the lists'
    centroids, then exactly the items of its ``nprobe`` best lists. A query then reads about
    ``nprobe / lists`` of the vectors instead of all of them (exact search reads every stored
    vector for every query, so its cost grows with the catalogue)."""

    def __init__(self, centroids: np.ndarray, order: np.ndarray, starts: np.ndarray, vectors: np.ndarray,
                 nprobe: int):
        self.centroids = centroids  # [lists, d]
        self.order = order  # item rows, list by list
        self.starts = starts  # [lists + 1]: list c holds order[starts[c]:starts[c + 1]]
        self.vectors = vectors  # the stored vectors in ``order``: each list is one contiguous block
        self.nprobe = nprobe

    @classmethod
    def build(cls, vectors: np.ndarray, lists: int | None = None, nprobe: int | None = None, iters: int = 8,
              sample: int = 20_000, seed: int = 0) -> IvfIndex:
        """k-means (inner-product assignment) on a sample of the rows, then every row to its list.
        Defaults: √n lists, 1/16 of them probed."""
        x = np.asarray(vectors, np.float32)
        n = len(x)
        lists = max(1, min(n, lists or round(np.sqrt(n))))
        nprobe = max(1, min(lists, nprobe or -(-lists // 16)))
        rng = np.random.default_rng(seed)
        train = x[rng.choice(n, min(n, max(sample, lists)), replace=False)]
        centroids = train[rng.choice(len(train), lists, replace=False)].copy()
        for _ in range(iters):
            assign = np.argmax(train @ centroids.T, axis=1)
            for c in np.unique(assign):
                centroids[c] = train[assign == c].mean(axis=0)
        assign = np.concatenate([np.argmax(x[lo:lo + 8192] @ centroids.T, axis=1) for lo in range(0, n, 8192)])
        order = np.argsort(assign, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=lists))])
        return cls(centroids, order, starts, x[order], nprobe)

    def scores(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item rows, their exact scores) of the query's ``nprobe`` nearest lists."""
        lists = top_k_matrix((self.centroids @ q)[None], self.nprobe)[0]
        spans = [(self.starts[c], self.starts[c + 1]) for c in lists]
        rows = np.concatenate([self.order[a:b] for a, b in spans])
        scores = np.concatenate([self.vectors[a:b] @ q for a, b in spans]).astype(np.float32)
        return rows, scores


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best finite scores, best first; ties in catalog order."""
    best = top_k_matrix(np.atleast_2d(scores), k)[0]
    return best[np.isfinite(scores[best])]


def top_k_matrix(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the ``k`` best scores [rows, k], best first; ties in catalog order."""
    k = min(k, scores.shape[1])
    if k <= 0:
        return np.zeros((len(scores), 0), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals))
    return np.take_along_axis(part, order, axis=1)


# -- ID embeddings for new items ---------------------------------------------------------------


class IdImputer:
    """ID embeddings for items the sequential model never saw, from what they do have.

    New items are the fashion norm; without an ID vector their mix-up vector would only
    score on title. Order of preference: a ridge projection text→ID fitted on items that
    have both (captures which title features go with which behaviour), else the mean ID
    embedding of the item's category, else the global mean.
    """

    def __init__(self, alpha: float = 1.0, min_items: int = 20):
        self.alpha = alpha
        self.min_items = min_items
        self.weights: np.ndarray | None = None  # [d_text + 1, d_id], last row = intercept
        self.category_means: dict[str, np.ndarray] = {}
        self.global_mean: np.ndarray | None = None

    def fit(self, title_emb: np.ndarray, id_emb: np.ndarray, has_id: np.ndarray | None = None,
            categories: Sequence[str | None] | None = None) -> IdImputer:
        """Learn from rows with ``has_id`` (default: all). The projection needs ``min_items``.

        Fits whatever ``id_emb`` it is given; pass unit rows if the imputed vectors feed
        mix-up retrieval (only directions matter there).
        """
        t = np.asarray(title_emb, dtype=np.float64)
        e = np.asarray(id_emb, dtype=np.float64)
        known = np.ones(len(e), bool) if has_id is None else np.array(has_id, dtype=bool)
        known &= np.isfinite(e).all(axis=1) & _has_text(t)
        if not known.any():
            raise ValueError("no item has both a title and an ID embedding: nothing to learn")
        self.global_mean = e[known].mean(axis=0)
        if categories is not None:
            cats = pd.Series(list(categories), dtype="object")[known].fillna("").astype(str)
            frame = pd.DataFrame(e[known]).groupby(cats.to_numpy()).mean()
            self.category_means = {c: frame.loc[c].to_numpy() for c in frame.index if c}
        if known.sum() >= self.min_items:
            self.weights = ridge(t[known], e[known], self.alpha)
        return self

    def impute(self, title_emb: np.ndarray | None,
               categories: Sequence[str | None] | None = None, n: int | None = None
               ) -> np.ndarray:
        """Imputed ID embeddings [n, d_id] for items given by title and/or category."""
        if self.global_mean is None:
            raise RuntimeError("fit the imputer first")
        n = len(title_emb) if title_emb is not None else (len(categories) if categories is not None
                                                          else n)
        if n is None:
            raise ValueError("give title embeddings, categories or n")
        out = np.tile(self.global_mean, (n, 1))
        cats = list(categories) if categories is not None else [None] * n
        for r, c in enumerate(cats):
            if c is not None and not pd.isna(c) and str(c) in self.category_means:
                out[r] = self.category_means[str(c)]
        if self.weights is not None and title_emb is not None:
            t = np.asarray(title_emb, dtype=np.float64)
            ok = _has_text(t)
            out[ok] = np.c_[t[ok], np.ones(ok.sum())] @ self.weights
        return out

    def fill(self, title_emb: np.ndarray, id_emb: np.ndarray, has_id: np.ndarray,
             categories: Sequence[str | None] | None = None) -> np.ndarray:
        """``id_emb`` with the rows lacking an ID embedding imputed."""
        out = np.array(id_emb, dtype=np.float64)
        missing = ~np.asarray(has_id, bool)
        if missing.any():
            cats = None if categories is None else [categories[i] for i in np.flatnonzero(missing)]
            out[missing] = self.impute(np.asarray(title_emb)[missing], cats)
        return out

    def save(self, path: Path | str) -> Path:
        """One .npz file at exactly ``path``."""
        if self.global_mean is None:
            raise RuntimeError("fit the imputer before saving it")
        path = Path(path)
        cats = sorted(self.category_means)
        with path.open("wb") as f:
            np.savez(f, weights=self.weights if self.weights is not None else np.zeros((0, 0)),
                     global_mean=self.global_mean,
                     category_means=np.array([self.category_means[c] for c in cats]),
                     categories=np.array(json.dumps(cats)),
                     params=np.array([self.alpha, self.min_items], dtype=np.float64))
        return path

    @classmethod
    def load(cls, path: Path | str) -> IdImputer:
        z = np.load(path)
        imp = cls(alpha=float(z["params"][0]), min_items=int(z["params"][1]))
        imp.weights = z["weights"] if z["weights"].size else None
        imp.global_mean = z["global_mean"]
        cats = json.loads(str(z["categories"]))
        imp.category_means = dict(zip(cats, z["category_means"], strict=True))
        return imp


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression with an unpenalised intercept: weights [d_x + 1, d_y]."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return np.vstack([w, ym - xm @ w])


def _has_text(t: np.ndarray) -> np.ndarray:
    """Rows that are a usable title embedding (finite, not all zero)."""
    return np.isfinite(t).all(axis=1) & (np.abs(t).sum(axis=1) > 0)


# -- query memory ------------------------------------------------------------------------------


class QueryMemory:
    """Past search queries and the items shoppers took after them.

    Generated text often reads like a search ("navy slim shirt") rather than a title.
    When it is closer to a query shoppers typed than to any catalog title, what those
    shoppers went on to take is better evidence than title similarity.
    """

    def __init__(self, queries: Sequence[str], query_emb: np.ndarray, item_weights: np.ndarray,
                 title_emb: np.ndarray):
        self.queries = list(queries)
        self.query_emb = unit(query_emb).astype(np.float32)
        self.item_weights = np.asarray(item_weights, dtype=np.float32)  # [n_queries, n_items]
        self.title_emb = unit(title_emb).astype(np.float32)

    @classmethod
    def build(cls, interactions: pd.DataFrame, item_ids: Sequence[str],
              encode: Callable[[list[str]], np.ndarray], title_emb: np.ndarray,
              window: pd.Timedelta | str = "30min", purchase_weight: float = 1.0,
              click_weight: float = 0.3) -> QueryMemory:
        """Map each distinct (normalised) query to the items taken in ``window`` after it.

        Taken = the item clicked with the query, the next click, and any purchase in
        the window. Weights are normalised per query so popular queries do not dominate.
        """
        index = {item: i for i, item in enumerate(item_ids)}
        taken = query_outcomes(interactions, window, purchase_weight, click_weight)
        taken = taken[taken["item_id"].isin(index)]
        queries = sorted(taken["query"].unique())
        qpos = {q: r for r, q in enumerate(queries)}
        weights = np.zeros((len(queries), len(index)), np.float32)
        grouped = taken.groupby(["query", "item_id"])["weight"].sum()
        for (q, item), w in grouped.items():
            weights[qpos[q], index[item]] += w
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        emb = encode(queries) if queries else np.zeros((0, np.shape(title_emb)[1]))
        return cls(queries, emb, weights, title_emb)

    def __len__(self) -> int:
        return len(self.queries)

    def nearest(self, text_emb: np.ndarray) -> tuple[str, float] | None:
        """The stored query closest to the text, with its cosine."""
        if not len(self.queries):
            return None
        sims = self.query_emb @ unit(text_emb)
        best = int(np.argmax(sims))
        return self.queries[best], float(sims[best])

    def lookup(self, text_emb: np.ndarray, threshold: float = 0.8) -> np.ndarray | None:
        """Item scores [n_items] from the matching queries, or None when the memory
        should not be used: no query reaches ``threshold``, or some title is at least
        as close to the text as the best query (then it reads like a title)."""
        if not len(self.queries):
            return None
        t = unit(text_emb).astype(np.float32)
        sims = self.query_emb @ t
        best = float(sims.max())
        if best < threshold or best <= float((self.title_emb @ t).max()):
            return None
        use = sims >= threshold
        return (sims[use] @ self.item_weights[use]).astype(np.float64)


def query_outcomes(interactions: pd.DataFrame, window: pd.Timedelta | str = "30min",
                   purchase_weight: float = 1.0, click_weight: float = 0.3) -> pd.DataFrame:
    """Rows (query, item_id, weight): what each query's shopper took within ``window``."""
    window = pd.Timedelta(window)
    frame = interactions.sort_values("ts", kind="stable").reset_index(drop=True)
    out: list[tuple[str, str, float]] = []
    for _, rows in frame.groupby("user_id", sort=False):
        ts = rows["ts"].to_numpy()
        items, kinds, queries = (rows[c].tolist() for c in ("item_id", "kind", "query"))
        for j in np.flatnonzero(rows["query"].notna().to_numpy()):
            q = normalise_query(queries[j])
            if not q:
                continue
            out.append((q, items[j], purchase_weight if kinds[j] == "purchase" else click_weight))
            end = np.searchsorted(ts, ts[j] + window.to_timedelta64(), side="right")
            next_click = True
            for m in range(j + 1, end):
                if kinds[m] == "purchase":
                    out.append((q, items[m], purchase_weight))
                elif next_click:
                    out.append((q, items[m], click_weight))
                    next_click = False
    return pd.DataFrame(out, columns=["query", "item_id", "weight"])


def normalise_query(text: object) -> str:
    """Case and spacing do not make a different query."""
    return " ".join(str(text).lower().split()) if not pd.isna(text) else ""


# -- choosing λ -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LambdaChoice:
    """The λ picked on validation and the whole curve, recorded with the model version."""

    lam: float
    recall: float
    k: int
    curve: dict[float, float]


DEFAULT_LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def choose_lambda(score_fn: Callable[[float], np.ndarray | float],
                  lambdas: Sequence[float] = DEFAULT_LAMBDAS,
                  targets: Sequence[int] | np.ndarray | None = None, k: int = 10) -> LambdaChoice:
    """Pick the λ with the best validation Recall@k (the first one on ties).

    ``score_fn(λ)`` returns either the validation score matrix [n_events, n_items] (then
    ``targets`` gives each event's catalog index) or the Recall@k itself as a number.
    """
    curve: dict[float, float] = {}
    for lam in lambdas:
        out = score_fn(float(lam))
        if np.ndim(out) == 0:
            curve[float(lam)] = float(out)
        elif targets is None:
            raise ValueError("score_fn returned scores: pass targets")
        else:
            curve[float(lam)] = recall_at_k(target_ranks(out, targets), k)
    best = max(curve, key=lambda lam: curve[lam])  # max keeps the first of equal values
    return LambdaChoice(lam=best, recall=curve[best], k=k, curve=curve)
