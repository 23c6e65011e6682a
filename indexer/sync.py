"""Apply catalog updates to the live Milvus collection: the indexer's one job, free of Kafka.

The live collection is the alias's target, resolved per batch, so after a rebuild the next
batch writes to the new collection; its vectors are made by the bundle that made the
collection (named in the collection's properties), so a written row always matches the
rows beside it. Rules:

- upsert: the title half from the bundle's title encoder, the ID half from SASRec for an
  item it knows, else imputed (and marked ``imputed``). Fields an update leaves out keep
  their indexed values; a row whose title and category are unchanged keeps its vector.
- delete: the row is removed; the delete's time is remembered (a tombstone, kept by the
  caller) so an older upsert arriving later cannot bring the item back.
- ``in_stock: false`` keeps the row and the search filter leaves it out.
- An update older than what is indexed (or than the item's delete) changes nothing; one
  of the same time is applied again, so replaying a log is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.build import catalog_rows
from indexer.collection import ItemCollection, alias_target
from models.bundle import Bundle
from models.item_vectors import ItemVectorizer
from stylestream.records import CatalogUpdate

log = logging.getLogger(__name__)


class NoLiveCollection(RuntimeError):
    """The alias points at nothing: build the index first (``stylestream index build``)."""


@dataclass
class SyncReport:
    upserted: int = 0
    deleted: int = 0
    older: int = 0  # valid updates that changed nothing: older than what is indexed
    imputed: int = 0
    collection: str = ""
    deleted_at: dict[str, float] = field(default_factory=dict)  # the new tombstones

    @property
    def applied(self) -> int:
        return self.upserted + self.deleted + self.older


class CatalogSync:
    """Applies batches of :class:`CatalogUpdate` to the collection behind ``alias``."""

    def __init__(self, client: Any, alias: str, default_bundle: Path | None = None):
        self.client = client
        self.alias = alias
        self.default_bundle = default_bundle
        self._vectorizers: dict[str, ItemVectorizer] = {}

    def live(self) -> tuple[ItemCollection, ItemVectorizer]:
        name = alias_target(self.client, self.alias)
        if name is None:
            raise NoLiveCollection(f"Milvus alias {self.alias} points at no collection: run `stylestream index build`")
        if name not in self._vectorizers:
            self._vectorizers[name] = ItemVectorizer(self._bundle_of(ItemCollection(self.client, name)))
            log.info("writing catalog updates to %s (bundle %s)", name, self._vectorizers[name].bundle.version)
        return ItemCollection(self.client, name), self._vectorizers[name]

    def _bundle_of(self, collection: ItemCollection) -> Bundle:
        about = collection.about()
        for folder in (about.get("bundle"), self.default_bundle):
            if folder and (Path(folder) / "bundle.json").is_file():
                bundle = Bundle.load(folder)
                if not about.get("version") or bundle.version == about["version"]:
                    return bundle
        raise NoLiveCollection(f"no bundle for collection {collection.name} (made by {about.get('version')} at "
                               f"{about.get('bundle')}); set STYLESTREAM_BUNDLE to it")

    def apply(self, updates: Sequence[CatalogUpdate], tombstones: Mapping[str, float] | None = None
              ) -> SyncReport:
        """Write ``updates`` (any order; per item the newest wins) in one upsert and one delete.

        ``tombstones`` gives the time each of these items was last deleted, if ever.
        """
        collection, vectorizer = self.live()
        tombstones = tombstones or {}
        report = SyncReport(collection=collection.name)
        newest: dict[str, CatalogUpdate] = {}
        for u in updates:
            if u.item_id not in newest or u.ts >= newest[u.item_id].ts:
                newest[u.item_id] = u
        report.older += len(updates) - len(newest)
        stored = collection.rows(newest, vectors=True)
        upserts: list[dict[str, Any]] = []
        deletes: list[str] = []
        for item, u in newest.items():
            floor = max(float(stored[item]["ts"]) if item in stored else -np.inf, tombstones.get(item, -np.inf))
            if u.ts < floor:
                report.older += 1
            elif u.op == "delete":
                deletes.append(item)
                report.deleted_at[item] = u.ts
            else:
                upserts.append(merged(u, stored.get(item)))
        if upserts:
            self._vectorize(upserts, vectorizer)
            report.imputed = sum(r["imputed"] for r in upserts if r["_fresh"])
            collection.upsert(_rows(upserts, vectorizer.bundle.version))
        collection.delete(deletes)
        report.upserted, report.deleted = len(upserts), len(deletes)
        return report

    @staticmethod
    def _vectorize(rows: list[dict[str, Any]], vectorizer: ItemVectorizer) -> None:
        fresh = [r for r in rows if r["_fresh"]]
        if fresh:
            made = vectorizer.vectors([r["item_id"] for r in fresh], [r["title"] for r in fresh],
                                      [r["category"] for r in fresh])
            for r, vec, imputed in zip(fresh, made.vectors, made.imputed, strict=True):
                r["vector"], r["imputed"] = vec, bool(imputed)


def merged(u: CatalogUpdate, stored: dict[str, Any] | None) -> dict[str, Any]:
    """The row an upsert leaves: its fields over the stored ones; ``_fresh`` when the vector
    must be made again (a new item, or a new title or category)."""
    old = stored or {}
    title = u.title or old.get("title", "")
    category = u.category if u.category is not None else old.get("category", "")
    in_stock = u.in_stock if u.in_stock is not None else old.get("in_stock", True)
    fresh = stored is None or title != old.get("title") or category != old.get("category")
    return {"item_id": u.item_id, "title": title, "category": category or "", "in_stock": bool(in_stock),
            "ts": u.ts, "vector": None if fresh else old["vector"], "imputed": bool(old.get("imputed", False)),
            "_fresh": fresh}


def _rows(rows: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    import pandas as pd

    frame = pd.DataFrame([{k: v for k, v in r.items() if k not in ("vector", "_fresh")} for r in rows])
    frame["indexed_at"] = time.time()
    return catalog_rows(frame, np.stack([np.asarray(r["vector"], np.float32) for r in rows]), version,
                        keep_indexed_at=True)
