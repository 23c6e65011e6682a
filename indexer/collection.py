"""The Milvus collection of mix-up item vectors, and the alias readers search through.

One row per catalog item: ``item_id`` (primary key), ``vector`` = x_i = [t̂_i ; e_i]
(λ-free: the fusion weights live on the query side, :mod:`models.mixup`), ``title``,
``category``, ``in_stock``, ``imputed``, ``bundle_version``, ``ts`` (the catalog time of
the row's last update) and ``indexed_at`` (when it was written: a rebuild catches up on
rows written while it ran). Each bundle gets a collection of its own, named after its
version (a rebuild of the same version adds a ``__g<time>`` generation), and the
collection's properties name the bundle folder that made it; the alias
(``STYLESTREAM_MILVUS_COLLECTION``) is switched to a collection only once it is complete and
loaded, so readers never see a half-built index. A Retriever searches its own bundle's
collection, so during a rollout old and new replicas each
search the vectors their models made.

The same code runs against Milvus Lite's server (the embedded default), a Milvus server
from PyPI and a Milvus cluster: everything goes through ``MilvusClient``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stylestream.records import FIELD_MAX_BYTES, ITEM_ID_MAX_BYTES, TITLE_MAX_BYTES

log = logging.getLogger(__name__)

ABOUT = "stylestream."  # prefix of the collection properties this project writes
OUTPUT_FIELDS = ["item_id", "title", "category"]
ROW_FIELDS = ["item_id", "title", "category", "in_stock", "imputed", "bundle_version", "ts", "indexed_at"]
FLAT_BELOW = 20_000  # smaller catalogs are searched exactly: as fast, and no recall loss
HNSW_PARAMS = {"M": 16, "efConstruction": 200}


# pymilvus pings an idle connection every 10 s; a stock gRPC server (Milvus Lite's) allows
# one ping per 5 minutes without calls and answers more with GOAWAY "too_many_pings", which
# kills the channel. Ping no more often than the server allows.
KEEPALIVE = {"grpc.keepalive_time_ms": 330_000, "grpc.keepalive_permit_without_calls": False}


def connect(uri: str, token: str = "") -> Any:
    """A MilvusClient for ``uri`` (``http://host:port`` of a server or the embedded one)."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's fork notices flood every child's log
    from pymilvus import MilvusClient

    # Milvus Lite's server has no mvcc timestamp to give an iterator; pymilvus warns on every
    # batch (set after the import: pymilvus configures its loggers when imported).
    logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
    extra = {"token": token} if token else {}
    return MilvusClient(uri=uri, grpc_options=dict(KEEPALIVE), **extra)


def ids_filter(item_ids: Iterable[str]) -> str:
    """``item_id in [...]`` with each id a double-quoted literal, its backslashes and quotes
    escaped: Milvus reads it back exactly. (Milvus knows no ``\\u`` escape; ids never carry
    control characters: the records refuse them.)"""
    return "item_id in [" + ",".join('"' + str(i).replace("\\", "\\\\").replace('"', '\\"') + '"'
                                     for i in item_ids) + "]"


def collection_name(alias: str, version: str) -> str:
    """The collection of one bundle version (Milvus names: letters, digits, underscores)."""
    return f"{alias}__{re.sub(r'[^0-9A-Za-z_]', '_', version)}"


def index_type(n_items: int, wanted: str = "auto") -> str:
    return wanted if wanted != "auto" else ("FLAT" if n_items < FLAT_BELOW else "HNSW")


@dataclass(frozen=True)
class SearchHit:
    item_id: str
    score: float
    title: str


class ItemCollection:
    """One collection of item vectors (or the alias pointing at one): search and fetch."""

    def __init__(self, client: Any, name: str):
        self.client = client
        self.name = name

    # -- creating and filling -------------------------------------------------------------
    def create(self, dim: int, index: str = "FLAT", about: dict[str, str] | None = None) -> ItemCollection:
        """A new empty collection; ``about`` is kept as its properties (``stylestream.<key>``)."""
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=ITEM_ID_MAX_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("title", DataType.VARCHAR, max_length=TITLE_MAX_BYTES)
        schema.add_field("category", DataType.VARCHAR, max_length=FIELD_MAX_BYTES)
        schema.add_field("in_stock", DataType.BOOL)
        schema.add_field("imputed", DataType.BOOL)
        schema.add_field("bundle_version", DataType.VARCHAR, max_length=64)
        schema.add_field("ts", DataType.DOUBLE)
        schema.add_field("indexed_at", DataType.DOUBLE)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index, metric_type="IP",
                         params=HNSW_PARAMS if index == "HNSW" else {})
        self.client.create_collection(self.name, schema=schema, index_params=params)
        if about:
            self.client.alter_collection_properties(self.name, properties={f"{ABOUT}{k}": str(v)
                                                                           for k, v in about.items()})
        return self

    def upsert(self, rows: Sequence[dict[str, Any]]) -> int:
        return int(self.client.upsert(self.name, list(rows)).get("upsert_count", len(rows)))

    def delete(self, item_ids: Sequence[str]) -> int:
        if not item_ids:
            return 0
        self.client.delete(self.name, filter=ids_filter(item_ids))  # answers a dict or a list, by pymilvus version
        return len(item_ids)

    def insert(self, rows: Sequence[dict[str, Any]]) -> int:
        return int(self.client.insert(self.name, list(rows)).get("insert_count", len(rows)))

    def finish(self) -> None:
        """Flush the buffered rows and load the collection for search."""
        self.client.flush(self.name)
        self.client.load_collection(self.name)

    def count(self) -> int:
        return int(self.client.query(self.name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    # -- reading --------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[str]] | None = None,
               ef: int = 128) -> list[list[SearchHit]]:
        """The ``k`` best in-stock items per query, ``exclude[r]`` left out of row ``r``.

        One search call for the whole batch: each row's own exclusions are applied to a
        result over-fetched by the longest exclusion list, so every row still gets ``k``.
        """
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        exclude = exclude or [[] for _ in range(len(q))]
        limit = k + max((len(e) for e in exclude), default=0)
        found = self.client.search(self.name, data=[row.tolist() for row in q], limit=limit,
                                   filter="in_stock == true", output_fields=OUTPUT_FIELDS,
                                   search_params={"params": {"ef": max(ef, limit)}})
        out = []
        for hits, skip in zip(found, exclude, strict=True):
            skip = set(skip)
            rows = [SearchHit(h["entity"]["item_id"], float(h["distance"]), h["entity"].get("title") or "")
                    for h in hits if h["entity"]["item_id"] not in skip]
            out.append(rows[:k])
        return out

    def rows(self, item_ids: Iterable[str], vectors: bool = False) -> dict[str, dict[str, Any]]:
        """The stored rows of the given items, by id (missing items are absent)."""
        ids = list(dict.fromkeys(str(i) for i in item_ids))
        if not ids:
            return {}
        fields = ROW_FIELDS + (["vector"] if vectors else [])
        return {r["item_id"]: dict(r) for r in self._get(ids, fields)}

    def _get(self, ids: list[str], fields: list[str]) -> list[dict[str, Any]]:
        """Rows by id. Not ``MilvusClient.get``: it quotes string ids without escaping them, so
        an id with a backslash or a quote (any shopper's history may carry one) broke the
        expression, a 500 on ``/recommend`` (found by the fuzz test)."""
        return self.client.query(self.name, filter=ids_filter(ids), output_fields=fields)

    def scan(self, fields: Sequence[str] = tuple(ROW_FIELDS), filter: str = "",
             batch_size: int = 4000) -> Iterable[dict[str, Any]]:
        """Every row (``fields`` of it) matching ``filter``, in batches: the whole catalog
        without Milvus's 16,384-row query limit."""
        it = self.client.query_iterator(self.name, batch_size=batch_size, filter=filter,
                                        output_fields=list(fields))
        try:
            while batch := it.next():
                yield from batch
        finally:
            it.close()

    def about(self) -> dict[str, str]:
        """What the collection's creator wrote about it (the bundle folder and version)."""
        props = self.client.describe_collection(self.name).get("properties") or {}
        return {k[len(ABOUT):]: v for k, v in props.items() if k.startswith(ABOUT)}

    def vectors(self, item_ids: Iterable[str], in_stock_only: bool = False) -> dict[str, np.ndarray]:
        """Stored vectors of the given items (missing items, and with ``in_stock_only`` the
        ones out of stock, are absent from the answer)."""
        ids = list(dict.fromkeys(str(i) for i in item_ids))
        if not ids:
            return {}
        rows = self._get(ids, ["item_id", "vector", "in_stock"])
        return {r["item_id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows
                if r.get("in_stock", True) or not in_stock_only}

    def titles(self, item_ids: Iterable[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(str(i) for i in item_ids))
        rows = self._get(ids, ["item_id", "title"]) if ids else []
        return {r["item_id"]: r.get("title") or "" for r in rows}


# -- aliases -------------------------------------------------------------------------------


def alias_target(client: Any, alias: str) -> str | None:
    """The collection ``alias`` points at, or None."""
    quiet = logging.getLogger("pymilvus.decorators")  # it logs a traceback for "no such alias"
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return client.describe_alias(alias).get("collection_name")
    except Exception:  # noqa: BLE001 - pymilvus raises its own error types for "no such alias"
        return None
    finally:
        quiet.setLevel(level)


def switch_alias(client: Any, alias: str, name: str) -> str | None:
    """Point ``alias`` at ``name`` in one call; returns the collection it pointed at before."""
    before = alias_target(client, alias)
    if before == name:
        return before
    if before is None:
        client.create_alias(name, alias)
    else:
        client.alter_alias(name, alias)
    log.info("alias %s -> %s (was %s)", alias, name, before)
    return before


def resolve_collection(client: Any, alias: str, version: str) -> str | None:
    """The collection that serves bundle ``version``: the alias's target when it holds that
    version, else the newest of that version's collections (a rollout's old replicas)."""
    base = collection_name(alias, version)
    target = alias_target(client, alias)
    if target is not None and (target == base or target.startswith(base + "__g")):
        return target
    mine = sorted(c for c in client.list_collections() if c == base or c.startswith(base + "__g"))
    return mine[-1] if mine else None


def wait_loaded(client: Any, name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = str(client.get_load_state(name).get("state", ""))
        if "Loaded" in state:
            return
        time.sleep(0.2)
    raise TimeoutError(f"Milvus collection {name} did not load within {timeout:.0f} s")
