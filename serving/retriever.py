"""The Retriever deployment: the mix-up query and one Milvus search per batch.

It runs :meth:`models.recommender.MixupRecommender.recommend` (the code evaluation scores:
the text query, SASRec's state, the mix-up query, the re-buy exclusions, the repeat term and
the repeat/explore split) with the bundle's own Milvus collection (the alias's target while
it holds this bundle) as its search, in-stock items only. Requests are batched so one
search call answers many shoppers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import torch
from ray import serve

from indexer.collection import ItemCollection, SearchHit, connect, resolve_collection
from models.bundle import Bundle
from models.recommender import History, MixupRecommender


class MissingIndex(RuntimeError):
    """The bundle's vectors are not in Milvus yet."""


@serve.deployment(name="Retriever", max_ongoing_requests=128, graceful_shutdown_timeout_s=30)
class Retriever:
    def __init__(self, bundle_dir: str, milvus_uri: str, alias: str, milvus_token: str = ""):
        torch.set_num_threads(1)  # small batched forwards; the Generator needs the cores
        bundle = Bundle.load(bundle_dir)
        self.version = bundle.version
        self.rec = MixupRecommender(bundle)
        self.rec.encoder, self.rec.sasrec  # noqa: B018 - load both now, not on the first request
        self.client, self.alias = connect(milvus_uri, milvus_token), alias
        name = resolve_collection(self.client, alias, bundle.version)
        if name is None:
            raise MissingIndex(f"Milvus at {milvus_uri} has no collection for bundle {bundle.version}: "
                               f"run `stylestream index build --bundle {bundle_dir}`")
        self.client.load_collection(name)
        self.items = ItemCollection(self.client, name)
        self.resolved_at = time.monotonic()

    def collection(self) -> ItemCollection:
        """This bundle's live collection, looked up again each second: a rebuild of the same
        bundle (a new generation behind the alias) is followed without a restart."""
        if time.monotonic() - self.resolved_at > 1.0:
            name = resolve_collection(self.client, self.alias, self.version)
            if name is not None and name != self.items.name:
                self.items = ItemCollection(self.client, name)
            self.resolved_at = time.monotonic()
        return self.items

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def retrieve(self, requests: list[tuple[History, str, int]]) -> list[list[SearchHit]]:
        return await asyncio.to_thread(self.search, requests)

    def search(self, requests: list[tuple[History, str, int]]) -> list[list[SearchHit]]:
        """(history, generated text, k) per shopper -> ranked in-stock items, best first:
        :meth:`models.recommender.MixupRecommender.recommend` with Milvus as its search."""
        titled = TitledSearch(self.collection())
        k_max = max(k for _, _, k in requests)
        answers = self.rec.recommend([h for h, _, _ in requests], k_max, [t for _, t, _ in requests], backend=titled)
        titles = titled.titles_of([h.item_id for a in answers for h in a.items])
        return [[SearchHit(h.item_id, h.score, titles.get(h.item_id, "")) for h in a.items[:k]]
                for a, (_, _, k) in zip(answers, requests, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {"bundle_version": self.version, "collection": self.items.name}


class TitledSearch:
    """The Milvus collection as the recommender's search backend, keeping the titles its
    hits carry: an answer's titles then cost a fetch only for the shopper's own items that
    the repeat term brought in."""

    def __init__(self, items: ItemCollection) -> None:
        self.items = items
        self.titles: dict[str, str] = {}

    def search(self, queries: Any, k: int, exclude: Any) -> list[list[SearchHit]]:
        hits = self.items.search(queries, k, exclude)
        self.titles.update((h.item_id, h.title) for row in hits for h in row)
        return hits

    def vectors(self, item_ids: Any, in_stock_only: bool = False) -> dict[str, Any]:
        return self.items.vectors(item_ids, in_stock_only=in_stock_only)

    def titles_of(self, item_ids: list[str]) -> dict[str, str]:
        missing = [i for i in dict.fromkeys(item_ids) if i not in self.titles]
        if missing:
            self.titles.update(self.items.titles(missing))
        return self.titles
