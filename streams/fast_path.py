"""The fast path: the bundle's best answer that needs no LLM, computed in the worker.

By default the last-title mix-up (:meth:`models.recommender.MixupRecommender.recommend_fast`):
the shopper's last item's stored title vector as the text query, SASRec's state as the ID
half, the bundle's fast fusion (repeat term and re-buy rule included), one search over the
same stored item vectors the Milvus collection holds; no LLM and no encoder call, so the
stream can always answer: when no Ray Serve application is configured, and whenever the LLM
path is late, failing or saturated. ``kind="id-only"`` is SASRec's view alone (the fast path
before the last-title mix-up, kept to measure against).

With ``gate=True`` (the LLM path behind it) each answer also carries the gate's decision,
read from that answer (:meth:`~models.recommender.MixupRecommender.decide`): whether the
event is worth a call to the LLM path.

Requests that arrive within ``window_ms`` of each other share one batched SASRec forward and
one matrix product, which matters exactly when the LLM path is saturated and every answer
comes from here. An exact search reads every stored vector for every query, so above
``IVF_ABOVE`` items the search goes through an in-process inverted file
(:class:`models.mixup.IvfIndex`; ``STYLESTREAM_FAST_PATH_SEARCH``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from models.bundle import Bundle
from models.mixup import IvfIndex
from models.recommender import FAST_PATH, ID_ONLY_PATH, History, MixupRecommender
from stylestream.recommender import RecommendRequest, RecommendResult
from stylestream.records import RecItem

log = logging.getLogger(__name__)

OVERFETCH = 32  # extra candidates per answer, for items the catalog has since withdrawn
KINDS = (FAST_PATH, ID_ONLY_PATH)
SEARCHES = ("auto", "exact", "ivf")
IVF_ABOVE = 50_000  # "auto": the approximate index for catalogues larger than this
LARGE_CATALOGUE_BATCH = 8  # most requests answered together above IVF_ABOVE items


class FastPathRecommender:
    """``available(item_id)`` says whether the catalog still offers an item (deleted and
    out-of-stock items are left out, as the Milvus search of the LLM path leaves them out);
    ``category_of(item_id)`` the category of an item new in the catalog (the bundle does not
    hold its title vector: its category's mean stands in)."""

    def __init__(self, bundle: Bundle, kind: str = FAST_PATH, gate: str | None = None, max_batch: int = 32,
                 window_ms: float = 2.0, available: Callable[[str], bool] | None = None,
                 category_of: Callable[[str], str | None] | None = None, search: str = "auto"):
        if kind not in KINDS:
            raise ValueError(f"the fast path is one of {', '.join(KINDS)}, not {kind!r}")
        if search not in SEARCHES:
            raise ValueError(f"the fast path's search is one of {', '.join(SEARCHES)}, not {search!r}")
        self.kind = kind
        self.available = available or (lambda item: True)
        # small forwards and products: more threads only contend with the stream (on a busy
        # 2-core machine a [32 × 448] · [448 × 3,000] product took 16 ms on two BLAS threads, 2.4 on one)
        torch.set_num_threads(1)
        threadpool_limits(1, user_api="blas")
        self.rec = MixupRecommender(bundle, gate=gate or "bundle", category_of=category_of)
        self.gated = gate is not None
        self.model_version = bundle.version
        self.titles = dict(zip(self.rec.item_ids, bundle.items()["title"].fillna("").astype(str), strict=True))
        self.max_batch, self.window_s = max_batch, window_ms / 1000
        self._waiting: list[tuple[RecommendRequest, asyncio.Future[RecommendResult]]] = []
        self._flush_at: asyncio.TimerHandle | None = None
        self.rec.sasrec  # noqa: B018 - load SASRec and the item vectors now, not on the first event
        if len(self.rec.index) > IVF_ABOVE:  # each query costs more: smaller batches keep the wait short
            self.max_batch = min(self.max_batch, LARGE_CATALOGUE_BATCH)
        if search == "ivf" or (search == "auto" and len(self.rec.index) > IVF_ABOVE):
            started = time.perf_counter()
            self.rec.index.approximate(IvfIndex.build(self.rec.index.vectors))
            log.info("fast path: an inverted file over %d items (%d lists, %d probed) built in %.1f s",
                     len(self.rec.index), len(self.rec.index.ivf.centroids), self.rec.index.ivf.nprobe,
                     time.perf_counter() - started)

    @classmethod
    def from_folder(cls, folder: Path, kind: str = FAST_PATH, gate: str | None = None,
                    available: Callable[[str], bool] | None = None,
                    category_of: Callable[[str], str | None] | None = None, search: str = "auto"
                    ) -> FastPathRecommender:
        return cls(Bundle.load(folder), kind, gate, available=available, category_of=category_of, search=search)

    async def recommend(self, request: RecommendRequest) -> RecommendResult:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[RecommendResult] = loop.create_future()
        self._waiting.append((request, answer))
        if len(self._waiting) >= self.max_batch:
            self._flush()
        elif self._flush_at is None:
            self._flush_at = loop.call_later(self.window_s, self._flush)
        return await answer

    def _flush(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        batch, self._waiting = self._waiting, []
        live = [(request, answer) for request, answer in batch if not answer.done()]
        if not live:
            return
        try:
            results = self.answer([request for request, _ in live])
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
            for _, answer in live:
                answer.set_exception(exc)
            return
        for (_, answer), result in zip(live, results, strict=True):
            answer.set_result(result)

    def _offered(self, hits: list, k: int) -> list:
        """The first ``k`` hits the catalog still offers."""
        out = []
        for h in hits:
            if self.available(h.item_id):
                out.append(h)
                if len(out) == k:
                    break
        return out

    def answer(self, requests: list[RecommendRequest]) -> list[RecommendResult]:
        """Synchronous: one batched SASRec forward and one matrix product for all requests;
        the gate's decisions (when asked) read the answers before withdrawn items are dropped,
        as evaluation reads them."""
        histories = [History.of([h.item_id for h in r.history], [h.kind for h in r.history],
                                [h.ts for h in r.history]) for r in requests]
        k = max(r.k for r in requests) + OVERFETCH
        ranked = (self.rec.recommend_fast(histories, k) if self.kind == FAST_PATH
                  else self.rec.recommend_id_only(histories, k))
        decisions = self.rec.decide(histories, ranked) if self.gated else [None] * len(ranked)
        return [RecommendResult(items=[RecItem.model_construct(item_id=h.item_id, score=round(h.score, 6),
                                                               title=self.titles.get(h.item_id, ""))
                                       for h in self._offered(one.items, r.k)],
                                path=one.path, model_version=self.model_version,
                                gate=None if d is None else ("sent" if d.send else "declined"),
                                gate_score=None if d is None else round(d.score, 4))
                for r, one, d in zip(requests, ranked, decisions, strict=True)]
