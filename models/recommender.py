"""The one place a recommendation is computed: history → prompt → generated text →
query vector → ranked items, from one model bundle.

Evaluation ranks the whole catalog with it; the Ray Serve Generator runs its first stage
and the Retriever its second, with Milvus doing the search over the same stored vectors;
the stream worker runs the fast path and the gate. Offline figures and live answers
therefore cannot drift apart. Nothing here knows Kafka, Ray or Milvus.

Two paths answer. The **fast path** (:meth:`MixupRecommender.recommend_fast`) is the
last-title mix-up: the shopper's last item's stored title vector is the whole text query,
with the bundle's fast fusion; no LLM, no encoder call. The **LLM path**
(:meth:`MixupRecommender.recommend`) grounds the generated text. The **gate**
(:meth:`MixupRecommender.decide`, :mod:`models.gate`) reads the fast path's answer and
decides whether the LLM path is worth asking; :meth:`MixupRecommender.serve` is the whole
served system in process.

The stages, each batched:

1. :meth:`MixupRecommender.generate`: the LoRA-tuned LLM writes the next item's title.
2. :meth:`MixupRecommender.queries`: the title encoder embeds that text, SASRec gives the
   shopper's state, and the bundle's fusion makes one mix-up query vector of them;
   :meth:`MixupRecommender.exclusions` lists bought items to leave out (unless the text
   names them: a predicted re-buy).
3. :meth:`MixupRecommender.search`: one inner-product search over the stored item vectors,
   out-of-stock items never answered, on a :class:`SearchBackend`: the in-process index
   here, the bundle's Milvus collection in serving. :meth:`MixupRecommender.rank`
   composes the stages (repeat term and repeat/explore split included) for either path and
   either backend, so the Retriever runs this very code rather than a copy of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from models.bundle import Bundle
from models.gate import Decision, Gate, gate_features
from models.metrics import NextItemEvents
from models.mixup import (
    Fusion,
    Hit,
    MixupIndex,
    anchored_text,
    mixup_query,
    rebuy_exclusions,
    repeat_boosts,
    split_answer,
    split_scores,
    unit,
)

LLM_PATH = "llm"
FAST_PATH = "last-title"  # the last-title mix-up: the best answer that needs no LLM
ID_ONLY_PATH = "id-only"


@dataclass(frozen=True)
class History:
    """A shopper's events in time order, as the live sequence table holds them (``times``:
    seconds since the epoch, one per event, or empty when unknown)."""

    item_ids: tuple[str, ...]
    kinds: tuple[str, ...]
    times: tuple[float, ...] = ()

    @classmethod
    def of(cls, item_ids: Sequence[str], kinds: Sequence[str] | None = None,
           times: Sequence[float] | None = None) -> History:
        kinds = kinds if kinds is not None else ["purchase"] * len(item_ids)
        if len(kinds) != len(item_ids):
            raise ValueError(f"{len(item_ids)} items but {len(kinds)} kinds")
        if times is not None and len(times) and len(times) != len(item_ids):
            raise ValueError(f"{len(item_ids)} items but {len(times)} times")
        return cls(tuple(str(i) for i in item_ids), tuple(str(k) for k in kinds),
                   tuple(float(t) for t in times) if times is not None else ())

    def bought(self) -> list[str]:
        """Purchased items, each once, oldest first."""
        return list(dict.fromkeys(i for i, k in zip(self.item_ids, self.kinds, strict=True)
                                  if k == "purchase"))

    def recent(self, n: int) -> History:
        return History(self.item_ids[-n:], self.kinds[-n:], self.times[-n:])


@dataclass(frozen=True)
class Ranked:
    """One answer: the ranked items, the text that grounded them, which path answered, and
    the gate's decision when one was asked (:meth:`MixupRecommender.serve`)."""

    items: list[Hit]
    generated_text: str
    path: str
    gate: Decision | None = None


class ScoredItem(Protocol):
    item_id: str
    score: float


class SearchBackend(Protocol):
    """Where the stored item vectors are searched: :class:`LocalSearch` (the in-process
    index) or, in serving, :class:`indexer.collection.ItemCollection` (Milvus)."""

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[str]]
               ) -> Sequence[Sequence[ScoredItem]]:
        """The ``k`` best in-stock items per query row, ``exclude[r]`` left out of row ``r``."""
        ...

    def vectors(self, item_ids: Iterable[str], in_stock_only: bool = False) -> Mapping[str, np.ndarray]:
        """Stored vectors of the given items that the backend holds."""
        ...


class LocalSearch:
    """The in-process index as a :class:`SearchBackend` (exact; evaluation and tests)."""

    def __init__(self, index: MixupIndex) -> None:
        self.index = index

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[str]]) -> list[list[Hit]]:
        return self.index.search(np.atleast_2d(queries), k=k, exclude=list(exclude))

    def vectors(self, item_ids: Iterable[str], in_stock_only: bool = False) -> dict[str, np.ndarray]:
        rows = self.index.index
        return {i: self.index.vectors[rows[i]] for i in item_ids
                if i in rows and (not in_stock_only or self.index.available[rows[i]])}


class MixupRecommender:
    """The bundle's recommender; ``encoder`` picks one of its title encoders (default: the
    one chosen on validation) and ``fusion`` overrides the validated blend (ablations)."""

    def __init__(self, bundle: Bundle, encoder: str | None = None, *, fusion: Fusion | None = None,
                 engine: str = "onnx", device: str = "auto", generator: Any = None,
                 window: int | None = None, gate: str = "bundle",
                 category_of: Callable[[str], str | None] | None = None):
        self.bundle = bundle
        self.encoder_name = encoder or bundle.chosen_encoder
        self.fusion = fusion or bundle.fusion(self.encoder_name)
        self.fast_fusion = bundle.fast_fusion(self.encoder_name)
        self.gate: Gate = bundle.gate().with_mode(gate)
        self.engine, self.device = engine, device
        self._generator = generator
        self._window = window
        self._category_of = category_of  # categories of items the bundle does not hold (new in the catalog)
        self._index: MixupIndex | None = None
        self._catalog: dict[str, Any] | None = None
        self._item_ids: list[str] | None = None
        self._categories: dict[str, str] | None = None
        self._category_titles: dict[str, np.ndarray] | None = None

    # Each stage loads only what it uses: the Generator deployment never loads the item
    # vectors, the Retriever never loads the LLM.
    @property
    def index(self) -> MixupIndex:
        if self._index is None:
            items = self.bundle.items()
            available = items["in_stock"].to_numpy(bool) if "in_stock" in items else None
            self._index = MixupIndex(self.item_ids, self.bundle.item_vectors(self.encoder_name), available)
        return self._index

    @property
    def item_ids(self) -> list[str]:
        if self._item_ids is None:
            self._item_ids = self.bundle.items()["item_id"].astype(str).tolist()
        return self._item_ids

    @property
    def encoder(self) -> Any:
        return self.bundle.title_encoder(self.encoder_name)

    @property
    def text_dim(self) -> int:
        return int(self.bundle.manifest["encoders"][self.encoder_name]["dim"])

    @property
    def sasrec(self) -> Any:
        return self.bundle.sasrec()

    @property
    def window(self) -> int:
        """History events SASRec reads: the live sequence table's length."""
        return self._window or self.sasrec.cfg.max_len

    # -- stage 1: the LLM writes the next item's text (the Generator deployment) ------------
    @property
    def generator(self) -> Any:
        if self._generator is None:
            self._generator = self.bundle.generator(self.engine, self.device)
        return self._generator

    def prompts(self, histories: Sequence[History]) -> list[str]:
        """The title-task prompt for each history's newest ``max_history`` events."""
        from models.llm.prompts import _catalog

        if self._catalog is None:
            self._catalog = _catalog(self.bundle.items())
        return history_prompts(histories, self._catalog, self.generator.tokenizer, self.bundle.max_history)

    def generate(self, histories: Sequence[History], batch_size: int = 16, totals: Any = None,
                 progress: Any = None) -> list[str]:
        """Greedy next-item text for each history (batched by prompt length)."""
        from models.llm.generate import generate_in_batches

        return generate_in_batches(self.generator, self.prompts(histories), self.bundle.max_new_tokens,
                                   batch_size, totals, progress)

    # -- stage 2: the mix-up query (the Retriever deployment) -------------------------------
    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings; an empty text gets a zero row (no text evidence)."""
        return embed_texts(self.encoder, texts)

    def text_query(self, histories: Sequence[History], text_vecs: np.ndarray,
                   stored: Callable[[list[str]], Mapping[str, np.ndarray]] | None = None,
                   fusion: Fusion | None = None) -> np.ndarray:
        """The text half's query: the generated text's vector with the fusion's share of the
        shopper's last item's title vector (:func:`models.mixup.anchored_text`; the fast
        path's share is 1: the last title alone)."""
        anchor = (fusion or self.fusion).anchor
        if not anchor:
            return text_vecs
        return anchored_text(text_vecs, self.last_titles(histories, stored), anchor).astype(np.float32)

    def last_titles(self, histories: Sequence[History],
                    stored: Callable[[list[str]], Mapping[str, np.ndarray]] | None = None) -> np.ndarray:
        """Each history's last item's stored title vector [n, text_dim], with no encoder call.

        ``stored`` gives the stored vectors of items (the in-process index by default, Milvus
        in serving). An item it lacks (new in the catalog, not indexed yet) gets the mean
        title vector of its category, else zeros: that answer rests on the ID half alone."""
        lasts = [h.item_ids[-1] if h.item_ids else "" for h in histories]
        vectors = (stored or self.stored_vectors)([i for i in dict.fromkeys(lasts) if i])
        out = np.zeros((len(histories), self.text_dim), np.float64)
        for r, item in enumerate(lasts):
            if item in vectors:
                out[r] = np.asarray(vectors[item][:self.text_dim], np.float64)
            elif item:
                mean = self.category_titles.get(self.category_of(item) or "")
                if mean is not None:
                    out[r] = mean
        return out

    def category_of(self, item_id: str) -> str | None:
        """The item's category: the bundle's catalog, else what the caller knows of new items."""
        if self._categories is None:
            items = self.bundle.items()
            cats = items["category"] if "category" in items else [None] * len(items)
            self._categories = {str(i): str(c) for i, c in zip(items["item_id"], cats, strict=True)
                                if c is not None and c == c and str(c)}
        found = self._categories.get(item_id)
        return found if found is not None or self._category_of is None else self._category_of(item_id)

    @property
    def category_titles(self) -> dict[str, np.ndarray]:
        """Unit mean stored title vector per category (for items without a vector of their own)."""
        if self._category_titles is None:
            self.category_of("")  # loads the categories
            assert self._categories is not None
            titles = self.index.vectors[:, :self.text_dim].astype(np.float64)
            rows: dict[str, list[int]] = {}
            for r, item in enumerate(self.item_ids):
                cat = self._categories.get(item)
                if cat:
                    rows.setdefault(cat, []).append(r)
            self._category_titles = {c: unit(titles[r].mean(axis=0)) for c, r in rows.items()}
        return self._category_titles

    def user_states(self, histories: Sequence[History]) -> np.ndarray:
        """SASRec's state after each history's newest ``window`` events."""
        return user_states(self.sasrec, histories, self.window)

    def queries(self, text_vecs: np.ndarray | None, states: np.ndarray, fusion: Fusion | None = None
                ) -> np.ndarray:
        """One mix-up query vector per row; ``text_vecs=None`` is the ID-only query."""
        return mixup_query(text_vecs, states, fusion or self.fusion, text_dim=self.text_dim)

    def exclusions(self, histories: Sequence[History], text_vecs: np.ndarray | None,
                   stored: Callable[[list[str]], Mapping[str, np.ndarray]], fusion: Fusion | None = None
                   ) -> list[list[str]]:
        """Bought items to leave out of each answer, unless the text names them (a re-buy).

        ``stored(item_ids)`` returns the stored vectors of those items (the search index's
        copy: the in-process index here, Milvus in serving; the title half is the first
        ``text_dim`` entries). It is called only when the rule compares text with titles.
        """
        threshold = (fusion or self.fusion).rebuy_threshold
        if threshold is None or threshold > 1:  # keep them all, or leave them all out: no cosine exceeds 1
            return rebuy_exclusions([h.bought() for h in histories], lambda r, item: 0.0, threshold)
        vectors = stored(_bought(histories))
        bought = [[i for i in h.bought() if i in vectors] for h in histories]  # the others cannot be answered
        t = (np.zeros((len(histories), self.text_dim), np.float32) if text_vecs is None
             else np.asarray(text_vecs, np.float32))

        def text_sim(r: int, item: str) -> float:
            return float(t[r] @ np.asarray(vectors[item][:self.text_dim], np.float32))

        return rebuy_exclusions(bought, text_sim, threshold)

    def boosts(self, histories: Sequence[History], fusion: Fusion | None = None) -> list[dict[str, float]]:
        """The repeat term per shopper: history item -> score added (empty when it is off)."""
        weights = (fusion or self.fusion).repeat
        return [repeat_boosts(h.item_ids, weights) for h in histories]

    def llm_answer_scores(self, histories: Sequence[History], text_vecs: np.ndarray, states: np.ndarray
                          ) -> np.ndarray:
        """The LLM path's answers as whole-catalog scores (evaluation): its fusion where the
        text says something, the fast path's where it is empty, as :meth:`recommend` answers."""
        out = self.answer_scores(histories, text_vecs, states, self.fusion)
        empty = ~np.abs(np.asarray(text_vecs)).sum(axis=1).astype(bool)
        if empty.any():
            out[empty] = self.answer_scores([h for h, e in zip(histories, empty, strict=True) if e],
                                            np.asarray(text_vecs)[empty], states[empty], self.fast_fusion)
        return out

    def fast_answer_scores(self, histories: Sequence[History], states: np.ndarray) -> np.ndarray:
        """The fast path's answers as whole-catalog scores (evaluation)."""
        return self.answer_scores(histories, np.zeros((len(histories), self.text_dim), np.float32), states,
                                  self.fast_fusion)

    # -- stage 3: the search (Milvus in serving; exact and in process here) -----------------
    @property
    def local(self) -> LocalSearch:
        """The in-process index as a search backend."""
        return LocalSearch(self.index)

    def stored_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        return self.local.vectors(item_ids)

    def search(self, queries: np.ndarray, exclude: Sequence[Sequence[str]], k: int,
               boosts: Sequence[Mapping[str, float]] | None = None, keep_own: bool = False,
               backend: SearchBackend | None = None) -> list[list[Hit]]:
        """The ``k`` best per query; with the repeat term, over the search's candidates plus
        the shopper's history items (:func:`with_repeats`). ``keep_own`` keeps every
        candidate, so the split sees all of a shopper's own items."""
        b = backend if backend is not None else self.local
        q = np.atleast_2d(queries)
        extra = max((len(x) for x in boosts), default=0) if boosts else 0
        if extra and not keep_own and isinstance(b, LocalSearch) and b.index.ivf is None:
            # every item is scored in process anyway: the repeat term goes straight into the scores
            return b.index.search(q, k, list(exclude), boosts=boosts)
        rows = [[(h.item_id, h.score) for h in row] for row in b.search(q, k + extra, exclude)]
        if extra:
            rows = with_repeats(rows, q, boosts, exclude, lambda ids: b.vectors(ids, in_stock_only=True),
                                None if keep_own else k)
        return [[Hit(i, s) for i, s in row] for row in rows]

    def scores(self, queries: np.ndarray, exclude: Sequence[Sequence[str]],
               boosts: Sequence[Mapping[str, float]] | None = None) -> np.ndarray:
        """Whole-catalog scores [n, items], catalog order; excluded and unavailable items
        get -inf (they can never be answered, so evaluation must not count them either);
        the repeat term is added to the history items that may be answered."""
        s = np.atleast_2d(self.index.scores(queries)).astype(np.float64)
        s[:, ~self.index.available] = -np.inf
        for r, ids in enumerate(exclude):
            s[r, [self.index.index[i] for i in ids if i in self.index.index]] = -np.inf
        for r, boost in enumerate(boosts or ()):
            for item, w in boost.items():
                c = self.index.index.get(item)
                if c is not None and np.isfinite(s[r, c]):
                    s[r, c] += w
        return s

    def answer_scores(self, histories: Sequence[History], text_vecs: np.ndarray | None, states: np.ndarray,
                      fusion: Fusion | None = None) -> np.ndarray:
        """Whole-catalog scores whose order is the answer's order: what evaluation ranks.
        The mix-up query's scores with the repeat term, or with the repeat/explore split the
        shopper's best own items above the explore query's ranking."""
        f = fusion or self.fusion
        if text_vecs is not None:
            text_vecs = self.text_query(histories, text_vecs, fusion=f)
        exclude = self.exclusions(histories, text_vecs, self.stored_vectors, f)
        s = self.scores(self.queries(text_vecs, states, f), exclude, self.boosts(histories, f))
        if not f.repeat_slots:
            return s
        explore = self.scores(self.queries(text_vecs, states, f.explore()), exclude)
        own = [np.array([self.index.index[i] for i in dict.fromkeys(h.item_ids) if i in self.index.index],
                        dtype=np.int64) for h in histories]
        return split_scores(s, explore, own, f.repeat_slots)

    # -- the whole path ---------------------------------------------------------------------
    def recommend(self, histories: Sequence[History], k: int = 10,
                  texts: Sequence[str] | None = None, backend: SearchBackend | None = None) -> list[Ranked]:
        """The LLM path: its text (generated here unless given) + ID state → one search per
        shopper (two with the repeat/explore split), on ``backend`` (the in-process index by
        default; the Retriever passes its Milvus collection). A history left without text
        (the LLM wrote nothing usable) gets the fast path's answer, and says so."""
        texts = list(texts) if texts is not None else self.generate(histories)
        paths = [answer_path(t) for t in texts]
        out: list[Ranked | None] = [None] * len(histories)
        for fusion, path in ((self.fusion, LLM_PATH), (self.fast_fusion, FAST_PATH)):
            rows = [r for r, p in enumerate(paths) if p == path]
            if rows:
                given = [texts[r] for r in rows] if path == LLM_PATH else None
                part = self.rank([histories[r] for r in rows], k, given, fusion, path, backend)
                for r, answer in zip(rows, part, strict=True):
                    out[r] = answer
        return [a for a in out if a is not None]

    def recommend_fast(self, histories: Sequence[History], k: int = 10,
                       backend: SearchBackend | None = None) -> list[Ranked]:
        """The fast path: the last-title mix-up (the last item's stored title vector as the
        text query, SASRec's state, the bundle's fast fusion), with no LLM and no encoder call."""
        return self.rank(histories, k, None, self.fast_fusion, FAST_PATH, backend)

    def serve(self, histories: Sequence[History], k: int = 10, texts: Sequence[str] | None = None,
              backend: SearchBackend | None = None) -> list[Ranked]:
        """The served system in process: the fast path answers every history, the gate reads
        that answer, and the histories it sends get the LLM path's answer instead (``texts``:
        every history's generated text, when made elsewhere; else generated here for those sent)."""
        fast = self.recommend_fast(histories, k, backend)
        decisions = self.decide(histories, fast)
        out = [replace(a, gate=d) for a, d in zip(fast, decisions, strict=True)]
        sent = [r for r, d in enumerate(decisions) if d.send]
        if sent:
            given = [texts[r] for r in sent] if texts is not None else None
            for r, answer in zip(sent, self.recommend([histories[r] for r in sent], k, given, backend), strict=True):
                out[r] = replace(answer, gate=decisions[r])
        return out

    def decide(self, histories: Sequence[History], fast_answers: Sequence[Ranked]) -> list[Decision]:
        """The gate's decision for each history, from the fast path's answer to it."""
        return self.gate.decide(self.gate_features(histories, fast_answers))

    def gate_features(self, histories: Sequence[History], fast_answers: Sequence[Ranked]) -> np.ndarray:
        """:func:`models.gate.gate_features` of each history, one row each."""
        rows = self.index.index
        return np.array([gate_features(h, a.items, self.category_of, rows.__contains__, self.bundle.max_history)
                         for h, a in zip(histories, fast_answers, strict=True)]).reshape(len(histories), -1)

    def rank(self, histories: Sequence[History], k: int, texts: Sequence[str] | None, fusion: Fusion, path: str,
             backend: SearchBackend | None = None) -> list[Ranked]:
        """One path's answers: the text query (the texts' vectors, or none: the last title
        alone at the fast fusion's anchor), the mix-up query, re-buy exclusions, the search with
        the repeat term, and the repeat/explore split when the fusion has one."""
        b = backend if backend is not None else self.local
        text_vecs = (self.text_vectors(texts) if texts is not None
                     else np.zeros((len(histories), self.text_dim), np.float32))
        text_vecs = self.text_query(histories, text_vecs, b.vectors, fusion)
        states = self.user_states(histories)
        exclude = self.exclusions(histories, text_vecs, b.vectors, fusion)
        found = self.search(self.queries(text_vecs, states, fusion), exclude, k, self.boosts(histories, fusion),
                            keep_own=bool(fusion.repeat_slots), backend=b)
        if fusion.repeat_slots:
            explore = self.search(self.queries(text_vecs, states, fusion.explore()), exclude,
                                  k + fusion.repeat_slots, backend=b)
            rows = split_answer([[(h.item_id, h.score) for h in row] for row in found],
                                [[(h.item_id, h.score) for h in row] for row in explore],
                                [set(h.item_ids) for h in histories], fusion.repeat_slots, k)
            found = [[Hit(i, sc) for i, sc in row] for row in rows]
        shown = list(texts) if texts is not None else [""] * len(histories)
        return [Ranked(hits, text, path) for hits, text in zip(found, shown, strict=True)]

    def recommend_id_only(self, histories: Sequence[History], k: int = 10) -> list[Ranked]:
        """SASRec's view alone: the same search at λ = 0, without the repeat term (the fast
        path before the last-title mix-up; kept to measure against)."""
        fusion = self.fusion.with_lambda(0.0)
        q = self.queries(None, self.user_states(histories), fusion)
        exclude = self.exclusions(histories, None, self.stored_vectors, fusion)
        return [Ranked(hits, "", ID_ONLY_PATH) for hits in self.search(q, exclude, k)]


def answer_path(text: str) -> str:
    """Which path answers with this generated text: the LLM path, or the fast path when the
    text is empty (nothing usable was generated)."""
    return LLM_PATH if str(text).strip() else FAST_PATH


def event_histories(events: NextItemEvents) -> list[History]:
    """The history of each evaluation event, with its times when the events carry them."""
    times = events.times or [None] * len(events)
    return [History.of(h, k, t) for h, k, t in zip(events.histories, events.kinds, times, strict=True)]


def with_repeats(rows: Sequence[Sequence[tuple[str, float]]], queries: np.ndarray,
                 boosts: Sequence[Mapping[str, float]], exclude: Sequence[Sequence[str]],
                 rankable: Callable[[list[str]], Mapping[str, np.ndarray]], k: int | None
                 ) -> list[list[tuple[str, float]]]:
    """The repeat term on top of a search: each row's candidates ``(item, q·x_i)`` plus the
    shopper's rankable, not excluded history items scored exactly, the boosts added, the
    ``k`` best kept (all with ``k`` None). Equal to the whole-catalog ranking's top ``k``
    whenever the search fetched ``k`` + (history items) candidates, since only history
    items gain."""
    vectors = rankable(list(dict.fromkeys(i for b in boosts for i in b)))
    q = np.asarray(queries, np.float64)
    out = []
    for r, (row, boost) in enumerate(zip(rows, boosts, strict=True)):
        scores = dict(row)
        left_out = set(exclude[r]) if r < len(exclude) else set()
        # exact scores for the shopper's own items, whatever the search said, so Milvus and the
        # in-process index agree
        own = [item for item in boost if item in vectors and item not in left_out]
        if own:
            exact = np.asarray([vectors[item] for item in own], np.float64) @ q[r]
            scores.update(zip(own, exact.tolist(), strict=True))
        for item, w in boost.items():
            if item in scores:
                scores[item] += w
        ranked = sorted(scores.items(), key=lambda x: -x[1])
        out.append(ranked if k is None else ranked[:k])
    return out


def history_prompts(histories: Sequence[History], catalog: Mapping[str, Any], tokenizer: Any,
                    max_history: int) -> list[str]:
    """The title-task prompt of each history's newest ``max_history`` events (as trained)."""
    from models.llm.prompts import events_for, render_prompt

    return [render_prompt(events_for(h.item_ids[-max_history:], h.kinds[-max_history:], catalog), "title",
                          tokenizer, max_history) for h in histories]


def embed_texts(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """Unit text embeddings [n, dim]; an empty text gets a zero row (no text evidence)."""
    texts = [str(t).strip() for t in texts]
    out = np.zeros((len(texts), int(encoder.dim)), np.float32)
    have = [i for i, t in enumerate(texts) if t]
    if have:
        out[have] = encoder.encode([texts[i] for i in have])
    return out


def user_states(sasrec: Any, histories: Sequence[History], window: int) -> np.ndarray:
    """SASRec's state u after each history's newest ``window`` events."""
    recent = [h.recent(window) for h in histories]
    return sasrec.user_states([list(h.item_ids) for h in recent], [list(h.kinds) for h in recent])


def _bought(histories: Sequence[History]) -> list[str]:
    return list(dict.fromkeys(i for h in histories for i in h.bought()))
