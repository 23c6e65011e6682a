"""The baseline recommender behind the :class:`~stylestream.recommender.Recommender` interface.

Popularity within the shopper's recent categories, learned from the data set's
training period. Real enough that the whole path works end to end before the
LLM path is deployed; the offline evaluation reports how it compares.
"""

from __future__ import annotations

from pathlib import Path

from models.baselines import CategoryPopularity
from models.data import Dataset
from stylestream.recommender import RecommendRequest, RecommendResult
from stylestream.records import RecItem


class BaselineRecommender:
    def __init__(self, dataset: Dataset):
        train, _, _ = dataset.parts()
        self.model = CategoryPopularity(dataset.items, train)
        titles = dataset.items["title"].fillna("").astype(str)
        self.titles = dict(zip(dataset.items["item_id"], titles, strict=True))
        self.model_version = f"category-popularity@{dataset.data_hash()}"

    @classmethod
    def from_folder(cls, folder: Path) -> BaselineRecommender:
        return cls(Dataset.load(folder))

    async def recommend(self, request: RecommendRequest) -> RecommendResult:
        history = [h.item_id for h in request.history]
        bought = {h.item_id for h in request.history if h.kind == "purchase"}
        ranked = self.model.recommend(history, k=request.k, exclude=sorted(bought))
        # our own values: constructed without re-validation (the hot path of every recommendation)
        items = [RecItem.model_construct(item_id=i, score=round(s, 6), title=self.titles.get(i, "")) for i, s in ranked]
        return RecommendResult(items=items, path="baseline", model_version=self.model_version)
