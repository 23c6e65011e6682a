"""The Retriever deployment: the mix-up query and one Milvus search per batch.

It embeds the generated text with the bundle's title encoder (ONNX), takes the shopper's
state from SASRec, builds the query vector and the re-buy exclusions with
:class:`models.recommender.MixupRecommender` (the code evaluation scores), and searches the
bundle's own Milvus collection (the alias's target while it holds this bundle), in-stock
items only. Requests are batched so one search
call answers many shoppers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import torch
from ray import serve

from indexer.collection import ItemCollection, SearchHit, connect, resolve_collection
from models.bundle import Bundle
from models.mixup import split_answer
from models.recommender import History, MixupRecommender, with_repeats


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
        """(history, generated text, k) per shopper -> ranked in-stock items, best first."""
        histories = [h for h, _, _ in requests]
        items = self.collection()
        text_vecs = self.rec.text_query(histories, self.rec.text_vectors([t for _, t, _ in requests]),
                                        items.vectors)
        states = self.rec.user_states(histories)
        queries = self.rec.queries(text_vecs, states)
        exclude = self.rec.exclusions(histories, text_vecs, items.vectors)
        k_max = max(k for _, _, k in requests)
        boosts = self.rec.boosts(histories)
        extra = max((len(b) for b in boosts), default=0)
        hits = items.search(queries, k_max + extra, exclude)
        fusion = self.rec.fusion
        if extra:  # the repeat term: the shopper's own items join the candidates, boosted
            hits = repeat_hits(items, hits, queries, boosts, exclude, None if fusion.repeat_slots else k_max)
        if fusion.repeat_slots:  # the repeat/explore split: a second search leaning on the text
            explore = items.search(self.rec.queries(text_vecs, states, fusion.explore()),
                                   k_max + fusion.repeat_slots, exclude)
            hits = split_hits(hits, explore, histories, fusion.repeat_slots, k_max)
        return [row[:k] for row, (_, _, k) in zip(hits, requests, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {"bundle_version": self.version, "collection": self.items.name}


def repeat_hits(items: ItemCollection, hits: list[list[SearchHit]], queries: Any, boosts: list[dict[str, float]],
                exclude: list[list[str]], k: int | None) -> list[list[SearchHit]]:
    """The repeat term after the Milvus search: :func:`models.recommender.with_repeats` over
    the hits plus the shoppers' in-stock history items, fetched from the collection (all
    kept with ``k`` None, for the repeat/explore split)."""
    rows = [[(h.item_id, h.score) for h in row] for row in hits]
    ranked = with_repeats(rows, queries, boosts, exclude, lambda ids: items.vectors(ids, in_stock_only=True), k)
    titles = {h.item_id: h.title for row in hits for h in row}
    titles.update(items.titles([i for row in ranked for i, _ in row if i not in titles]))
    return [[SearchHit(i, s, titles.get(i, "")) for i, s in row] for row in ranked]


def split_hits(repeat: list[list[SearchHit]], explore: list[list[SearchHit]], histories: list[History],
               slots: int, k: int) -> list[list[SearchHit]]:
    """:func:`models.mixup.split_answer` over Milvus hits (titles kept)."""
    titles = {h.item_id: h.title for rows in (repeat, explore) for row in rows for h in row}
    ranked = split_answer([[(h.item_id, h.score) for h in row] for row in repeat],
                          [[(h.item_id, h.score) for h in row] for row in explore],
                          [set(h.item_ids) for h in histories], slots, k)
    return [[SearchHit(i, s, titles.get(i, "")) for i, s in row] for row in ranked]
