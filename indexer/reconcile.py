"""Compare the live collection with a catalog file, and repair the difference.

Drift comes in four kinds: items of the catalog missing from Milvus, items in Milvus the
catalog no longer has, rows whose fields (title, category, stock) differ from the
catalog, and rows whose vector is not what the live bundle makes of them (written by
another bundle, or a title changed without its vector). Vectors are re-made for a sample
of rows (all of them with ``vector_sample=0``); a row written by another bundle version
counts as stale without recomputing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from indexer.build import catalog_rows, fit
from indexer.collection import ItemCollection
from models.item_vectors import ItemVectorizer
from stylestream.records import FIELD_MAX_BYTES, TITLE_MAX_BYTES

log = logging.getLogger(__name__)
VECTOR_TOLERANCE = 1e-3


@dataclass
class Drift:
    collection: str
    catalog_items: int
    indexed_items: int
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    stale_fields: list[str] = field(default_factory=list)
    stale_vectors: list[str] = field(default_factory=list)
    vectors_checked: int = 0

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.stale_fields) + len(self.stale_vectors)

    def summary(self) -> dict[str, int]:
        return {"missing": len(self.missing), "extra": len(self.extra), "stale_fields": len(self.stale_fields),
                "stale_vectors": len(self.stale_vectors), "vectors_checked": self.vectors_checked}


def find_drift(live: ItemCollection, catalog: pd.DataFrame, vectorizer: ItemVectorizer,
               vector_sample: int = 1000, seed: int = 0) -> Drift:
    """What differs between the live collection and ``catalog`` (see the module's docstring)."""
    stored = {r["item_id"]: r for r in live.scan()}
    want = catalog.set_index("item_id", drop=False)
    drift = Drift(live.name, len(want), len(stored))
    drift.missing = sorted(set(want.index) - set(stored))
    drift.extra = sorted(set(stored) - set(want.index))
    both = [i for i in want.index if i in stored]
    expected = _expected_fields(want.loc[both])
    for item in both:
        row, exp = stored[item], expected[item]
        if (row["title"], row["category"], bool(row["in_stock"])) != exp:
            drift.stale_fields.append(item)
    version = vectorizer.bundle.version
    other = [i for i in both if stored[i]["bundle_version"] != version]
    rest = [i for i in both if stored[i]["bundle_version"] == version and i not in set(drift.stale_fields)]
    if vector_sample and len(rest) > vector_sample:
        rest = sorted(np.random.default_rng(seed).choice(rest, vector_sample, replace=False).tolist())
    drift.stale_vectors = sorted(set(other) | set(_stale_vectors(live, rest, vectorizer)))
    drift.vectors_checked = len(rest)
    return drift


def _expected_fields(rows: pd.DataFrame) -> dict[str, tuple[str, str, bool]]:
    cats = rows["category"] if "category" in rows else pd.Series("", index=rows.index)
    return {item: (fit(str(t), TITLE_MAX_BYTES), fit("" if pd.isna(c) else str(c), FIELD_MAX_BYTES), bool(s))
            for item, t, c, s in zip(rows["item_id"], rows["title"], cats, rows["in_stock"], strict=True)}


def _stale_vectors(live: ItemCollection, items: list[str], vectorizer: ItemVectorizer,
                   batch: int = 512) -> list[str]:
    stale = []
    for lo in range(0, len(items), batch):
        rows = live.rows(items[lo:lo + batch], vectors=True)
        ids = list(rows)
        made = vectorizer.vectors(ids, [rows[i]["title"] for i in ids], [rows[i]["category"] for i in ids])
        have = np.array([rows[i]["vector"] for i in ids], np.float32)
        off = np.abs(have - made.vectors).max(axis=1) > VECTOR_TOLERANCE
        stale += [i for i, bad in zip(ids, off, strict=True) if bad]
    return stale


def repair(live: ItemCollection, catalog: pd.DataFrame, vectorizer: ItemVectorizer, drift: Drift,
           batch: int = 1000) -> int:
    """Make the collection match ``catalog`` where ``drift`` says it does not. Repaired rows
    keep their catalog time (new ones get 0), so any real update still wins over them."""
    todo = sorted(set(drift.missing) | set(drift.stale_fields) | set(drift.stale_vectors))
    want = catalog.set_index("item_id", drop=False)
    for lo in range(0, len(todo), batch):
        part = want.loc[todo[lo:lo + batch]].reset_index(drop=True)
        stored = live.rows(part["item_id"])
        part["ts"] = [float(stored[i]["ts"]) if i in stored else 0.0 for i in part["item_id"]]
        part["category"] = part["category"].fillna("") if "category" in part else ""
        made = vectorizer.vectors(part["item_id"].tolist(), part["title"].tolist(), part["category"].tolist())
        part["imputed"] = made.imputed
        live.upsert(catalog_rows(part, made.vectors, vectorizer.bundle.version))
    live.delete(drift.extra)
    live.client.flush(live.name)
    log.info("repaired %d rows and deleted %d in %s", len(todo), len(drift.extra), live.name)
    return len(todo) + len(drift.extra)


def index_stats(live: ItemCollection) -> dict[str, Any]:
    """Rows by state: trained ID vector, imputed, out of stock; and by bundle version."""
    def count(expr: str) -> int:
        return int(live.client.query(live.name, filter=expr, output_fields=["count(*)"])[0]["count(*)"])

    return {"collection": live.name, "items": count(""), "trained": count("imputed == false"),
            "imputed": count("imputed == true"), "in_stock": count("in_stock == true"),
            "out_of_stock": count("in_stock == false"), **{f"about_{k}": v for k, v in live.about().items()}}
