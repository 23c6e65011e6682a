"""Catalog files in, ``catalog.updates`` records out: how a whole catalog is streamed into
the indexer (``stylestream catalog publish``) and what ``index reconcile`` compares with.

A catalog file is a data set folder or its ``items.parquet``, any parquet/CSV with
``item_id`` and ``title`` columns (optional: category, brand, colour, price, in_stock),
or H&M's ``articles*.csv`` (titles made as the H&M import makes them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from pydantic import ValidationError
from tqdm.auto import tqdm

from stylestream.kafka_security import PLAINTEXT, KafkaSecurity
from stylestream.records import CATALOG, CatalogUpdate, summarise

COLUMNS = ("item_id", "title", "category", "brand", "colour", "price", "in_stock")


class CatalogFileError(ValueError):
    """A catalog file that cannot be read; the message says which and why."""


def read_catalog(path: Path) -> pd.DataFrame:
    """The catalog in ``path`` as rows of :data:`COLUMNS` (in_stock defaults to true)."""
    path = Path(path)
    if path.is_dir():
        path = path / "items.parquet"
    if not path.is_file():
        raise CatalogFileError(f"no catalog file at {path}")
    name = path.name.lower()
    if name.endswith(".parquet"):
        frame = pd.read_parquet(path)
    elif name.endswith((".csv", ".csv.gz")):
        header = pd.read_csv(path, nrows=0).columns
        if "article_id" in header:
            from models.data.hm import hm_catalog

            frame = hm_catalog([path])
        else:
            frame = pd.read_csv(path, dtype={"item_id": str})
    else:
        raise CatalogFileError(f"{path}: not a catalog file (expected .parquet, .csv or .csv.gz)")
    missing = [c for c in ("item_id", "title") if c not in frame]
    if missing:
        raise CatalogFileError(f"{path}: no {' or '.join(missing)} column (has {', '.join(map(str, frame.columns))})")
    frame = frame[[c for c in COLUMNS if c in frame]].copy()
    frame["item_id"] = frame["item_id"].astype(str)
    frame["title"] = frame["title"].astype("object").where(frame["title"].notna(), "").astype(str)
    if "in_stock" not in frame:
        frame["in_stock"] = True
    frame = frame.drop_duplicates("item_id", keep="first").reset_index(drop=True)
    return frame


def catalog_updates(frame: pd.DataFrame, ts: float) -> Iterator[CatalogUpdate]:
    """One upsert per catalog row, all at catalog time ``ts``."""
    optional = [c for c in ("category", "brand", "colour", "price", "in_stock") if c in frame]
    for row in frame.itertuples(index=False):
        fields = {c: getattr(row, c) for c in optional}
        fields = {k: (bool(v) if k == "in_stock" else float(v) if k == "price" else str(v))
                  for k, v in fields.items() if v is not None and not (isinstance(v, float) and v != v)}
        try:
            yield CatalogUpdate(op="upsert", item_id=row.item_id, title=row.title, ts=ts, **fields)
        except ValidationError as exc:
            raise CatalogFileError(f"item {str(row.item_id)[:64]!r}: {summarise(exc)}") from None


def publish_catalog(frame: pd.DataFrame, bootstrap: str, ts: float | None = None, rate: float = 0.0,
                    progress: bool = True, security: KafkaSecurity = PLAINTEXT) -> int:
    """Produce every row to ``catalog.updates`` (key ``item_id``); ``rate`` records/s, 0 = flat out."""
    from stylestream.delivery import Deliveries, reliable_producer

    ts = time.time() if ts is None else ts
    producer = reliable_producer(bootstrap, security, linger_ms=20, batch_size=256 * 1024)
    deliveries = Deliveries()
    sent, started = 0, time.monotonic()
    try:
        for update in tqdm(catalog_updates(frame, ts), total=len(frame), desc="catalog.updates", unit="item",
                           disable=not progress):
            if rate > 0 and (delay := started + sent / rate - time.monotonic()) > 0:
                time.sleep(delay)
            deliveries.track(producer.send(CATALOG, key=update.item_id.encode(), value=update.to_bytes()))
            sent += 1
        producer.flush()
    finally:
        producer.close()
    deliveries.check("catalog updates")
    return sent
