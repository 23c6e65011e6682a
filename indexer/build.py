"""Fill Milvus from a model bundle: a new collection for the bundle's version, loaded in
batches, then the alias switched to it, and collections older than the previous one dropped.

``stylestream index build --bundle DIR`` runs this; ``stylestream serve`` runs it when the
bundle's collection is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from indexer.collection import (
    CATEGORY_MAX,
    TITLE_MAX,
    ItemCollection,
    alias_target,
    collection_name,
    index_type,
    switch_alias,
    wait_loaded,
)
from models.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    collection: str
    alias: str
    rows: int
    seconds: float
    index: str
    previous: str | None = None
    dropped: list[str] = field(default_factory=list)
    reused: bool = False


def build_index(client: Any, bundle: Bundle, alias: str, batch_size: int = 2000, index: str = "auto",
                rebuild: bool = False, progress: bool = True) -> BuildReport:
    """Load every catalog item's mix-up vector into the bundle's own collection, then
    point ``alias`` at it. A complete collection of the same version is reused."""
    started = time.perf_counter()
    name = collection_name(alias, bundle.version)
    items = bundle.items()
    vectors = bundle.item_vectors()
    kind = index_type(len(items), index)
    target = ItemCollection(client, name)
    if client.has_collection(name) and not rebuild and _complete(target, len(items)):
        log.info("collection %s already holds bundle %s", name, bundle.version)
        reused = True
    else:
        if client.has_collection(name):
            client.drop_collection(name)
        target.create(vectors.shape[1], kind)
        rows = catalog_rows(items, vectors, bundle.version)
        with tqdm(total=len(rows), desc=f"index {name}", unit="item", disable=not progress) as bar:
            for lo in range(0, len(rows), batch_size):
                target.insert(rows[lo:lo + batch_size])
                bar.update(len(rows[lo:lo + batch_size]))
        target.finish()
        reused = False
    wait_loaded(client, name)
    previous = switch_alias(client, alias, name)
    dropped = drop_older(client, alias, keep={name, previous})
    report = BuildReport(name, alias, len(items), round(time.perf_counter() - started, 2), kind, previous,
                         dropped, reused)
    log.info("indexed %d items into %s (%s) in %.1f s; alias %s now points at it", report.rows, name, kind,
             report.seconds, alias)
    return report


def _complete(collection: ItemCollection, n_items: int) -> bool:
    try:
        collection.client.load_collection(collection.name)
        return collection.count() == n_items
    except Exception:  # noqa: BLE001 - an unreadable collection is rebuilt
        return False


def catalog_rows(items: Any, vectors: np.ndarray, version: str) -> list[dict[str, Any]]:
    """One Milvus row per catalog item (titles and categories cut to the schema's sizes)."""
    flags = {c: items[c].to_numpy(bool) if c in items else np.zeros(len(items), bool)
             for c in ("in_stock", "imputed")}
    in_stock = flags["in_stock"] if "in_stock" in items else np.ones(len(items), bool)
    titles = items["title"].fillna("").astype(str).tolist()
    cats = items["category"].fillna("").astype(str).tolist() if "category" in items else [""] * len(items)
    return [{"item_id": str(item), "vector": vectors[r].tolist(), "title": fit(titles[r], TITLE_MAX),
             "category": fit(cats[r], CATEGORY_MAX), "in_stock": bool(in_stock[r]),
             "imputed": bool(flags["imputed"][r]), "bundle_version": version, "ts": 0.0}
            for r, item in enumerate(items["item_id"].astype(str))]


def fit(text: str, max_bytes: int) -> str:
    """``text`` cut to ``max_bytes`` of UTF-8 without splitting a character."""
    return text.encode()[:max_bytes].decode(errors="ignore")


def drop_older(client: Any, alias: str, keep: set[str | None]) -> list[str]:
    """Drop this alias's bundle collections other than ``keep`` (the live and the previous)."""
    prefix = f"{alias}__"
    current = alias_target(client, alias)
    old = [c for c in client.list_collections() if c.startswith(prefix) and c not in keep and c != current]
    for name in old:
        client.drop_collection(name)
        log.info("dropped old collection %s", name)
    return old
