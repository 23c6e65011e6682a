"""The Retriever deployment: the mix-up query and one Milvus search per batch.

It embeds the generated text with the bundle's title encoder (ONNX), takes the shopper's
state from SASRec, builds the query vector and the re-buy exclusions with
:class:`models.recommender.MixupRecommender` (the code evaluation scores), and searches the
bundle's own Milvus collection, in-stock items only. Requests are batched so one search
call answers many shoppers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from ray import serve

from indexer.collection import ItemCollection, SearchHit, collection_name, connect
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
        client = connect(milvus_uri, milvus_token)
        name = collection_name(alias, bundle.version)
        if not client.has_collection(name):
            raise MissingIndex(f"Milvus at {milvus_uri} has no collection for bundle {bundle.version} ({name}): "
                               f"run `stylestream index build --bundle {bundle_dir}`")
        client.load_collection(name)
        self.items = ItemCollection(client, name)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def retrieve(self, requests: list[tuple[History, str, int]]) -> list[list[SearchHit]]:
        return await asyncio.to_thread(self.search, requests)

    def search(self, requests: list[tuple[History, str, int]]) -> list[list[SearchHit]]:
        """(history, generated text, k) per shopper -> ranked in-stock items, best first."""
        histories = [h for h, _, _ in requests]
        text_vecs = self.rec.text_vectors([t for _, t, _ in requests])
        queries = self.rec.queries(text_vecs, self.rec.user_states(histories))
        exclude = self.rec.exclusions(histories, text_vecs, self.items.vectors)
        hits = self.items.search(queries, max(k for _, _, k in requests), exclude)
        return [row[:k] for row, (_, _, k) in zip(hits, requests, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {"bundle_version": self.version, "collection": self.items.name}
