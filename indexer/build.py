"""Fill Milvus from a model bundle without a gap: a new collection beside the live one,
loaded in batches, the alias switched to it, the updates that landed meanwhile caught up,
and collections older than the previous one dropped.

What goes in is the *live catalog*: when the alias already points at a collection (kept
true to the catalog by the indexer), its items, titles, stock and catalog times are
carried over, with vectors made by the new bundle; the bundle's own catalog is used only
when there is no live collection (or with ``catalog="bundle"``). Updates the indexer
writes to the old collection while the build runs are re-applied to the new one right
after the switch and once more a moment later (the indexer resolves the alias per batch).

``stylestream index build --bundle DIR`` runs this; ``stylestream serve`` runs it when the
bundle's collection is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from indexer.collection import (
    ItemCollection,
    alias_target,
    collection_name,
    index_type,
    resolve_collection,
    switch_alias,
    wait_loaded,
)
from models.bundle import Bundle
from models.item_vectors import ItemVectorizer
from stylestream.records import FIELD_MAX_BYTES, TITLE_MAX_BYTES

log = logging.getLogger(__name__)
CATALOG_SOURCES = ("auto", "live", "bundle")


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
    catalog: str = "bundle"
    caught_up: int = 0


def build_index(client: Any, bundle: Bundle, alias: str, batch_size: int = 2000, index: str = "auto",
                rebuild: bool = False, progress: bool = True, catalog: str = "auto",
                settle_s: float = 1.0) -> BuildReport:
    """Load every live catalog item's mix-up vector into a collection of this bundle's own,
    then point ``alias`` at it. A complete collection of the same version is reused unless
    ``rebuild``; a rebuild goes into a new generation beside the live one."""
    if catalog not in CATALOG_SOURCES:
        raise ValueError(f"catalog must be one of {', '.join(CATALOG_SOURCES)}, not {catalog!r}")
    started = time.perf_counter()
    existing = resolve_collection(client, alias, bundle.version)
    live = alias_target(client, alias)
    if existing is not None and not rebuild and _complete(ItemCollection(client, existing)):
        log.info("collection %s already holds bundle %s", existing, bundle.version)
        wait_loaded(client, existing)
        previous = switch_alias(client, alias, existing)
        return BuildReport(existing, alias, ItemCollection(client, existing).count(),
                           round(time.perf_counter() - started, 2), "", previous,
                           drop_older(client, alias, keep={existing, previous}), reused=True)
    source = ("live" if live is not None else "bundle") if catalog == "auto" else catalog
    if source == "live" and live is None:
        raise ValueError(f"no live collection behind alias {alias} to carry the catalog over from")
    name = new_collection_name(client, alias, bundle.version)
    since = time.time()
    items, vectors = (live_catalog(ItemCollection(client, live), bundle) if source == "live"
                      else bundle_catalog(bundle))
    kind = index_type(len(items), index)
    target = ItemCollection(client, name).create(vectors.shape[1], kind, about={
        "bundle": str(bundle.folder.resolve()), "version": bundle.version})
    rows = catalog_rows(items, vectors, bundle.version)
    with tqdm(total=len(rows), desc=f"index {name}", unit="item", disable=not progress) as bar:
        for lo in range(0, len(rows), batch_size):
            target.insert(rows[lo:lo + batch_size])
            bar.update(len(rows[lo:lo + batch_size]))
    target.finish()
    wait_loaded(client, name)
    previous = switch_alias(client, alias, name)
    caught = 0
    if source == "live" and live is not None and live != name:
        snapshot = set(items["item_id"].astype(str))
        caught = catch_up(ItemCollection(client, live), target, bundle, since, snapshot)
        time.sleep(settle_s)  # a batch the indexer resolved to the old collection before the switch
        caught += catch_up(ItemCollection(client, live), target, bundle, since, snapshot)
    dropped = drop_older(client, alias, keep={name, previous})
    report = BuildReport(name, alias, len(items), round(time.perf_counter() - started, 2), kind, previous,
                         dropped, False, source, caught)
    log.info("indexed %d items (%s catalog) into %s (%s) in %.1f s; alias %s now points at it; %d caught up",
             report.rows, source, name, kind, report.seconds, alias, caught)
    return report


def new_collection_name(client: Any, alias: str, version: str) -> str:
    """The version's base name if free, else a new generation beside it."""
    base = collection_name(alias, version)
    return base if not client.has_collection(base) else f"{base}__g{time.time_ns() // 1_000_000}"


def bundle_catalog(bundle: Bundle) -> tuple[pd.DataFrame, np.ndarray]:
    items = bundle.items().copy()
    items["ts"] = 0.0
    return items, bundle.item_vectors()


def live_catalog(live: ItemCollection, bundle: Bundle) -> tuple[pd.DataFrame, np.ndarray]:
    """The live collection's items with this bundle's vectors: the stored ones where the
    bundle has the item under the same title, freshly made (encoder, SASRec or imputer)
    for the rest."""
    rows = pd.DataFrame(list(live.scan()))
    if rows.empty:
        return bundle_catalog(bundle)
    rows["item_id"] = rows["item_id"].astype(str)
    own = bundle.items()
    row_of = {i: r for r, i in enumerate(own["item_id"].astype(str))}
    own_titles = own["title"].fillna("").astype(str).to_numpy()
    stored = bundle.item_vectors()
    vectors = np.zeros((len(rows), stored.shape[1]), np.float32)
    fresh = []
    for r, (item, title) in enumerate(zip(rows["item_id"], rows["title"].fillna(""), strict=True)):
        b = row_of.get(item)
        if b is not None and own_titles[b] == title:
            vectors[r] = stored[b]
        else:
            fresh.append(r)
    rows["imputed"] = rows["imputed"].astype(bool)
    if fresh:
        made = ItemVectorizer(bundle).vectors(rows["item_id"].iloc[fresh].tolist(),
                                              rows["title"].iloc[fresh].fillna("").tolist(),
                                              rows["category"].iloc[fresh].tolist())
        vectors[fresh] = made.vectors
        rows.loc[rows.index[fresh], "imputed"] = made.imputed
    log.info("carrying %d live items over (%d re-embedded)", len(rows), len(fresh))
    return rows, vectors


def catch_up(old: ItemCollection, new: ItemCollection, bundle: Bundle, since: float, snapshot: set[str]) -> int:
    """Re-apply to ``new`` what was written to ``old`` after ``since`` (upserts) and what
    was deleted from it (items of the snapshot no longer there)."""
    changed = list(old.scan(filter=f"indexed_at >= {since!r}"))
    gone = snapshot - {r["item_id"] for r in old.scan(fields=["item_id"])}
    if changed:
        frame = pd.DataFrame(changed)
        made = ItemVectorizer(bundle).vectors(frame["item_id"].astype(str).tolist(),
                                              frame["title"].fillna("").tolist(), frame["category"].tolist())
        frame["imputed"] = made.imputed
        new.upsert(catalog_rows(frame, made.vectors, bundle.version, keep_indexed_at=True))
    new.delete(sorted(gone))
    if changed or gone:
        log.info("caught up %d updates and %d deletes written during the build", len(changed), len(gone))
    return len(changed) + len(gone)


def _complete(collection: ItemCollection) -> bool:
    """Loaded, readable and of the current schema (older collections are rebuilt)."""
    try:
        collection.client.load_collection(collection.name)
        fields = {f["name"] for f in collection.client.describe_collection(collection.name)["fields"]}
        return "indexed_at" in fields and collection.count() > 0
    except Exception:  # noqa: BLE001 - an unreadable collection is rebuilt
        return False


def catalog_rows(items: pd.DataFrame, vectors: np.ndarray, version: str,
                 keep_indexed_at: bool = False) -> list[dict[str, Any]]:
    """One Milvus row per catalog item (titles and categories cut to the schema's sizes)."""
    n = len(items)

    def column(name: str, default: Any) -> list[Any]:
        return items[name].tolist() if name in items else [default] * n

    now = time.time()
    stamps = column("indexed_at", now) if keep_indexed_at else [now] * n
    return [{"item_id": str(item), "vector": np.asarray(vectors[r], np.float32).tolist(),
             "title": fit(title or "", TITLE_MAX_BYTES), "category": fit(cat or "", FIELD_MAX_BYTES),
             "in_stock": bool(stock), "imputed": bool(imp), "bundle_version": version,
             "ts": float(ts or 0.0), "indexed_at": float(at)}
            for r, (item, title, cat, stock, imp, ts, at) in enumerate(zip(
                items["item_id"].astype(str), _text(column("title", "")), _text(column("category", "")),
                column("in_stock", True), column("imputed", False), column("ts", 0.0), stamps, strict=True))]


def _text(values: list[Any]) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]


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
