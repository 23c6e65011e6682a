"""The fast path that needs no LLM: the bundle's mix-up search at λ = 0, in the worker.

It ranks with SASRec's view of the shopper over the same stored item vectors the Milvus
collection holds (``models.recommender.MixupRecommender.recommend_id_only``), in a few
milliseconds, so the stream can always answer: when no Ray Serve application is
configured, and whenever the LLM path is late, failing or saturated.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.bundle import Bundle
from models.recommender import History, MixupRecommender
from stylestream.recommender import RecommendRequest, RecommendResult
from stylestream.records import RecItem


class IdOnlyRecommender:
    def __init__(self, bundle: Bundle):
        torch.set_num_threads(1)  # one small forward per answer: more threads only contend with the stream
        self.rec = MixupRecommender(bundle)
        self.model_version = bundle.version
        self.titles = dict(zip(self.rec.item_ids, bundle.items()["title"].fillna("").astype(str), strict=True))
        self.rec.index  # noqa: B018 - load SASRec and the item vectors now, not on the first event
        self.rec.sasrec  # noqa: B018

    @classmethod
    def from_folder(cls, folder: Path) -> IdOnlyRecommender:
        return cls(Bundle.load(folder))

    async def recommend(self, request: RecommendRequest) -> RecommendResult:
        return self.answer(request)

    def answer(self, request: RecommendRequest) -> RecommendResult:
        """Synchronous: one SASRec forward and one matrix product (milliseconds)."""
        history = History.of([h.item_id for h in request.history], [h.kind for h in request.history])
        ranked = self.rec.recommend_id_only([history], k=request.k)[0]
        items = [RecItem(item_id=h.item_id, score=round(h.score, 6), title=self.titles.get(h.item_id, ""))
                 for h in ranked.items]
        return RecommendResult(items=items, path=ranked.path, model_version=self.model_version)

