"""Catalog sync, measured: the indexer worker applying the whole H&M catalogue from
``catalog.updates``, single updates until they are searchable, and a full rebuild with an
alias switch under steady searches.

For each Milvus (the embedded Milvus Lite server; a Milvus server from PyPI,
``pip install milvus==2.3.5``, when installed) on a fresh broker and collection (the
bundle's own catalog, then the 105,542 H&M articles streamed in):

- ``sustained``: upserts/s the indexer worker sustains while the whole catalogue is
  published at once (every vector made by the bundle's title encoder + imputer: no H&M
  article is known to the bundle's SASRec).
- ``visible``: seconds from producing one upsert of a new item until a vector search with
  its title's query, restricted to that item, returns it, one at a time (p50/p99 of
  ``--updates``): the time to be searchable, whatever similar items rank above it.
- ``rebuild``: ``index build --rebuild`` of the live catalogue into a new collection
  (re-embedding every article) while another client searches through the alias: its
  time, search latency before / during / after the switch, failed and empty searches.

Written to ``bench/results/indexer_<milvus>.json``. Needs a bundle (``--bundle``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_serving import HM_LEGEND, MilvusServer, pct  # noqa: E402
from machine import machine_info  # noqa: E402

from indexer.build import build_index  # noqa: E402
from indexer.catalog_file import publish_catalog, read_catalog  # noqa: E402
from indexer.collection import ItemCollection, connect  # noqa: E402
from models.bundle import Bundle  # noqa: E402
from models.recommender import MixupRecommender  # noqa: E402
from stylestream.config import Settings  # noqa: E402
from stylestream.devstack import DevStack  # noqa: E402
from stylestream.records import CATALOG  # noqa: E402

WORDS = ["cobalt", "saffron", "jade", "umber", "lilac", "coral", "ochre", "teal", "plum", "ivory", "sequin",
         "velvet", "satin", "mesh", "pleated", "ruffled", "beaded", "sheer", "tiered", "corset", "organza", "lamé",
         "damask", "brocade", "chiffon", "crepe", "taffeta", "tweed", "gingham", "paisley", "houndstooth"]


def title_query(rec: MixupRecommender, title: str) -> np.ndarray:
    return rec.queries(rec.text_vectors([title]), np.zeros((1, rec.sasrec.cfg.dim), np.float32),
                       rec.fusion.with_lambda(1.0))


def sustained(stack: DevStack, bootstrap: str, catalog: Any, timeout: float) -> dict[str, Any]:
    before = stack.indexer.stats()["applied"]
    t0 = time.perf_counter()
    publish_catalog(catalog, bootstrap, ts=1000.0, progress=False)
    published = time.perf_counter() - t0
    while stack.indexer.stats()["applied"] - before < len(catalog):
        if time.perf_counter() - t0 > timeout:
            break
        time.sleep(0.5)
    done = stack.indexer.stats()["applied"] - before
    seconds = time.perf_counter() - t0
    return {"items": len(catalog), "applied": done, "seconds": round(seconds, 1),
            "publish_seconds": round(published, 1), "upserts_per_s": round(done / seconds, 1),
            "complete": done >= len(catalog)}


def found_by_search(client: Any, name: str, q: np.ndarray, item: str) -> bool:
    """Whether a vector search (its title's query, restricted to the item) returns the item:
    searchable, whatever else ranks above it (similar test titles would, for a small encoder)."""
    hits = client.search(name, data=[q[0].tolist()], limit=1, filter=f'item_id == "{item}" and in_stock == true',
                         output_fields=["item_id"])
    return bool(hits and hits[0])


def visible(stack: DevStack, bootstrap: str, client: Any, rec: MixupRecommender, n: int) -> dict[str, Any]:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    items = ItemCollection(client, stack.settings.milvus_collection)
    seconds: list[float] = []
    missed: list[dict[str, Any]] = []
    for i in range(n):
        title = f"{WORDS[i % len(WORDS)]} {WORDS[(7 * i + 3) % len(WORDS)]} tulle ballgown by Vispera {i}"
        q = title_query(rec, title)
        item = f"vis-{i}-{time.time_ns()}"
        t0 = time.perf_counter()
        producer.send(CATALOG, key=item.encode(), value=json.dumps(
            {"op": "upsert", "item_id": item, "title": title, "category": "dress", "ts": 2e9 + i}).encode())
        producer.flush()
        while not found_by_search(client, items.name, q, item):
            if time.perf_counter() - t0 > 60:
                missed.append({"item": item, "stored": bool(items.rows([item]))})
                break
            time.sleep(0.01)
        seconds.append(time.perf_counter() - t0)
    producer.close()
    return {"updates": n, "p50_s": pct(seconds, 50), "p99_s": pct(seconds, 99), "max_s": round(max(seconds), 3),
            "batch_wait_ms": stack.settings.index_batch_wait_ms, "not_visible_in_60_s": missed}


def rebuild(uri: str, client: Any, bundle: Bundle, alias: str, rec: MixupRecommender) -> dict[str, Any]:
    q = title_query(rec, "black jersey vest top")
    log: list[tuple[float, float, int, str]] = []  # (time, ms, hits, error)
    stop = threading.Event()

    def search() -> None:
        reader = ItemCollection(connect(uri), alias)
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                hits = len(reader.search(q, 10)[0])
                log.append((time.perf_counter(), 1000 * (time.perf_counter() - t0), hits, ""))
            except Exception as exc:  # noqa: BLE001 - counted
                log.append((time.perf_counter(), 1000 * (time.perf_counter() - t0), 0, str(exc)[:100]))
            time.sleep(0.02)

    thread = threading.Thread(target=search, daemon=True)
    thread.start()
    time.sleep(5)
    t_start = time.perf_counter()
    report = build_index(client, bundle, alias, rebuild=True, progress=True)
    t_end = time.perf_counter()
    time.sleep(5)
    stop.set()
    thread.join(30)
    phases = {"before": [r for r in log if r[0] < t_start], "during": [r for r in log if t_start <= r[0] <= t_end],
              "after": [r for r in log if r[0] > t_end]}
    return {"items": report.rows, "seconds": report.seconds, "index": report.index, "catalog": report.catalog,
            "caught_up": report.caught_up,
            "searches": {name: {"n": len(rows), "p50_ms": pct([r[1] for r in rows], 50),
                                "p99_ms": pct([r[1] for r in rows], 99),
                                "failed": sum(bool(r[3]) for r in rows), "empty": sum(r[2] == 0 and not r[3]
                                                                                     for r in rows)}
                         for name, rows in phases.items()}}


def run(args: argparse.Namespace, kind: str, bundle: Bundle, catalog: Any, work: Path) -> dict[str, Any]:
    settings = Settings.from_env({"STYLESTREAM_HOME": str(work / kind / "home")}, bundle=bundle.folder,
                                 index_batch_size=args.batch_size, index_batch_wait_ms=args.batch_wait_ms)
    server = MilvusServer(work / kind / "milvus-server" / "data") if kind == "server" else None
    with DevStack(settings) as stack:
        bootstrap = stack.start_broker()
        if server is not None:
            stack.milvus_uri = server.start()
        uri = stack.start_milvus() if server is None else stack.milvus_uri
        client = connect(uri)
        try:
            build_index(client, bundle, settings.milvus_collection, progress=False)
            stack.start_indexer()
            rec = MixupRecommender(bundle)
            out: dict[str, Any] = {"milvus": kind, "uri": uri, "batch_size": args.batch_size}
            print(f"[bench] {kind}: publishing {len(catalog):,} articles", flush=True)
            out["sustained"] = sustained(stack, bootstrap, catalog, args.timeout)
            print(f"[bench] {kind} sustained: {out['sustained']}", flush=True)
            out["visible"] = visible(stack, bootstrap, client, rec, args.updates)
            print(f"[bench] {kind} visible: {out['visible']}", flush=True)
            if not args.no_rebuild:
                stack.stop_indexer()
                out["rebuild"] = rebuild(uri, client, bundle, settings.milvus_collection, rec)
                print(f"[bench] {kind} rebuild: {out['rebuild']}", flush=True)
            return out
        finally:
            client.close()
            if server is not None:
                server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True, help="model bundle (its title encoder embeds H&M titles)")
    ap.add_argument("--milvus", default="lite,server", help="lite, server or both (server needs milvus==2.3.5)")
    ap.add_argument("--limit", type=int, default=0, help="first N H&M articles only (0 = all 105,542)")
    ap.add_argument("--updates", type=int, default=30, help="single updates timed until visible")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--batch-wait-ms", type=float, default=200.0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="longest wait for the catalogue to be applied")
    ap.add_argument("--no-rebuild", action="store_true")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    catalog = read_catalog(HM_LEGEND)
    if args.limit:
        catalog = catalog.head(args.limit)
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-indexer-") as tmp:
        for kind in args.milvus.split(","):
            if kind == "server" and not MilvusServer.installed():
                print("[bench] milvus-server not installed: skipping the server run", flush=True)
                continue
            result = {"benchmark": f"indexer_{kind}", "machine": machine_info(), "bundle": bundle.version,
                      **run(args, kind, bundle, catalog, Path(tmp))}
            path = args.results / f"indexer_{kind}.json"
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(f"[bench] wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
