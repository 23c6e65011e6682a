"""The live LLM path, measured: Milvus search, Serve batching and overhead, the stream at
offered recommendation rates, and the stream's event rate with the LLM path against the baseline.

Parts (``--parts``, default all), each printed and written to ``bench/results/serving_<part>.json``:

- ``milvus``: latency p50/p99 of the mix-up search (top 10, in-stock filter, 3 exclusions),
  one query per call and 16 per call, with the embedded Milvus Lite server and with a Milvus
  server (``pip install milvus==2.3.5``, ``milvus-server``; skipped when it is not installed),
  on the synthetic catalog (the bundle's vectors) and on the whole 105,542-article H&M
  catalogue (titles embedded by the bundle's MiniLM export; the ID half is random, since no
  ID model covers the catalogue, and search time does not depend on its values).
- ``batching``: Serve dynamic batching on (max 8 per batch) vs off (1), recommendations/s
  under 16 concurrent requests, same run.
- ``overhead``: ``POST /recommend`` time minus the bare in-process generation + retrieval
  (same requests, same Milvus, interleaved).
- ``rates``: event → ``recs.out`` latency p50/p99, LLM answers/s and the fallback share at
  offered 0.5, 1, 2 and 5 recommendations/s (one purchase = one recommendation).
- ``stream``: events/s a worker sustains with the ServingRecommender (LLM path + fast path)
  against the baseline recommender, from the same backlog, same run.

Needs a bundle (``--bundle``; default: the demo's, trained if absent) and its data set.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_stream import drain_rate  # noqa: E402
from machine import machine_info  # noqa: E402

from indexer.build import catalog_rows  # noqa: E402
from indexer.collection import ItemCollection, connect  # noqa: E402
from models.bundle import Bundle  # noqa: E402
from models.data import Dataset  # noqa: E402
from models.recommender import History, MixupRecommender  # noqa: E402
from stylestream.config import Settings  # noqa: E402
from stylestream.devstack import DevStack  # noqa: E402
from stylestream.devstack.processes import free_port, spawn, stop, wait_until  # noqa: E402
from stylestream.records import PURCHASES, RECS  # noqa: E402
from stylestream.topic_watch import TopicWatch  # noqa: E402

PARTS = ("milvus", "batching", "overhead", "rates", "stream")
HM_LEGEND = ROOT.parent / "shared" / "data" / "hm-sample" / "articles_legend.csv.gz"


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else float("nan")


def write(args: argparse.Namespace, part: str, result: dict[str, Any]) -> None:
    result = {"benchmark": f"serving_{part}", "machine": machine_info(), **result}
    path = args.results / f"serving_{part}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] {part}: {json.dumps({k: v for k, v in result.items() if k != 'machine'})[:1500]}", flush=True)
    print(f"[bench] wrote {path}", flush=True)


def histories(rec: MixupRecommender, data: Dataset, n: int, seed: int = 0) -> list[History]:
    """Real test-period histories (the newest 10 events before a test purchase)."""
    from models.metrics import next_item_events

    train, val, test = data.parts()
    import pandas as pd

    ev = next_item_events(rec.item_ids, pd.concat([train, val]), test, max_history=10, max_events=n, seed=seed)
    return [History.of(h, k) for h, k in zip(ev.histories, ev.kinds, strict=True)]


# -- Milvus -------------------------------------------------------------------------------------


class MilvusServer:
    """The ``milvus`` PyPI package's standalone server (binds every interface; stop with SIGINT)."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port, self.proc = data_dir, free_port(), None

    @staticmethod
    def installed() -> bool:
        return shutil.which("milvus-server", path=str(Path(sys.executable).parent)) is not None

    def start(self) -> str:
        exe = shutil.which("milvus-server", path=str(Path(sys.executable).parent))
        if exe is None:
            raise FileNotFoundError("milvus-server not installed (pip install milvus==2.3.5)")
        self.proc = spawn([exe, "--data", str(self.data_dir), "--proxy-port", str(self.port)],
                          self.data_dir.parent / "milvus-server.log")
        uri = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: connect(uri).list_collections() is not None, 180, "milvus-server", self.proc)
        return uri

    def stop(self) -> None:
        import signal

        stop(self.proc, signal.SIGINT, timeout=30)


def hm_catalogue(bundle: Bundle, cache: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, titles, vectors) of every H&M article: MiniLM text half (cached), random ID half."""
    import pandas as pd

    from models.data.hm import hm_title
    from models.recommender import embed_texts

    arts = pd.read_csv(HM_LEGEND, dtype=str).fillna("")
    titles = [hm_title(n, c, None, t) or "" for n, c, t in zip(arts["prod_name"], arts["colour_group_name"],
                                                                arts["product_type_name"], strict=True)]
    path = cache / "hm_minilm_title_vectors.npy"
    if path.is_file():
        text = np.load(path)
    else:
        name = "minilm" if "minilm" in bundle.encoders else bundle.chosen_encoder
        print(f"[bench] embedding {len(titles):,} H&M titles with the {name} export (cached in {path})", flush=True)
        t0 = time.perf_counter()
        text = embed_texts(bundle.title_encoder(name), titles)
        print(f"[bench] embedded in {time.perf_counter() - t0:.0f} s", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, text)
    id_dim = bundle.item_vectors().shape[1] - bundle.title_encoder().dim
    ids = np.random.default_rng(0).normal(size=(len(titles), id_dim)).astype(np.float32)
    return arts["article_id"].tolist(), titles, np.concatenate([text, ids], axis=1)


def load_catalog(client: Any, name: str, ids: list[str], titles: list[str], vectors: np.ndarray,
                 index: str) -> dict[str, float]:
    import pandas as pd

    if client.has_collection(name):
        client.drop_collection(name)
    target = ItemCollection(client, name).create(vectors.shape[1], index)
    items = pd.DataFrame({"item_id": ids, "title": titles, "category": ""})
    rows = catalog_rows(items, vectors, "bench")
    t0 = time.perf_counter()
    for lo in range(0, len(rows), 2000):
        target.insert(rows[lo:lo + 2000])
    inserted = time.perf_counter() - t0
    target.finish()
    return {"items": len(rows), "insert_s": round(inserted, 1), "load_s": round(time.perf_counter() - t0, 1)}


def time_searches(client: Any, name: str, queries: np.ndarray, exclude: list[list[str]]) -> dict[str, float]:
    items = ItemCollection(client, name)
    items.search(queries[:2], 10, exclude[:2])  # warm
    single = []
    for q, ex in zip(queries, exclude, strict=True):
        t0 = time.perf_counter()
        items.search(q[None], 10, [ex])
        single.append(1000 * (time.perf_counter() - t0))
    batched = []
    for lo in range(0, len(queries) - 15, 16):
        t0 = time.perf_counter()
        items.search(queries[lo:lo + 16], 10, exclude[lo:lo + 16])
        batched.append(1000 * (time.perf_counter() - t0))
    return {"one_query_p50_ms": pct(single, 50), "one_query_p99_ms": pct(single, 99),
            "sixteen_per_call_p50_ms": pct(batched, 50), "sixteen_per_call_p99_ms": pct(batched, 99),
            "queries": len(single)}


def part_milvus(args: argparse.Namespace, bundle: Bundle, data: Dataset, work: Path) -> dict[str, Any]:
    rec = MixupRecommender(bundle, engine="onnx", device="cpu")
    hist = histories(rec, data, args.queries)
    texts = [bundle.items()["title"].iloc[i % len(bundle.items())] for i in range(len(hist))]  # no LLM needed
    vecs = rec.text_vectors(texts)
    synth_q = rec.queries(vecs, rec.user_states(hist))
    synth_ex = [[*h.bought()[-3:]] for h in hist]
    hm_ids, hm_titles, hm_vectors = hm_catalogue(bundle, args.cache)
    rng = np.random.default_rng(1)
    pick = rng.choice(len(hm_ids), len(hist), replace=False)
    hm_q = hm_vectors[pick] * np.r_[np.full(bundle.title_encoder().dim, 0.7), np.full(hm_vectors.shape[1] -
                                                                                      bundle.title_encoder().dim, 0.3)]
    hm_q = (hm_q + rng.normal(scale=0.05, size=hm_q.shape)).astype(np.float32)
    hm_ex = [[hm_ids[j] for j in rng.choice(len(hm_ids), 3)] for _ in hist]
    backends: dict[str, Any] = {}
    lite = DevStack(Settings.from_env({"STYLESTREAM_HOME": str(work / "lite")}))
    servers = [("milvus-lite server", lambda: lite.start_milvus(), lite.close)]
    server = MilvusServer(work / "server" / "data")
    if shutil.which("milvus-server", path=str(Path(sys.executable).parent)):
        servers.append(("milvus server 2.3.5", server.start, server.stop))
    else:
        backends["milvus server 2.3.5"] = "not installed (pip install milvus==2.3.5)"
    for label, start, finish in servers:
        uri = start()
        client = connect(uri)
        try:
            out: dict[str, Any] = {}
            vectors = bundle.item_vectors()
            items = bundle.items()
            cat = load_catalog(client, "bench_synth", items["item_id"].tolist(), items["title"].tolist(), vectors,
                               "FLAT")
            out["synthetic (FLAT)"] = {**cat, **time_searches(client, "bench_synth", synth_q, synth_ex)}
            for index in ("HNSW", "FLAT") if label.startswith("milvus server") else ("HNSW",):
                cat = load_catalog(client, "bench_hm", hm_ids, hm_titles, hm_vectors, index)
                out[f"H&M catalogue ({index})"] = {**cat, **time_searches(client, "bench_hm", hm_q, hm_ex)}
            backends[label] = out
            print(f"[bench] {label}: {json.dumps(out)}", flush=True)
        finally:
            client.close()
            finish()
    return {"backends": backends, "search": "top 10, filter in_stock == true, 3 excluded ids per query",
            "hm_vectors": "title half: the bundle's MiniLM export of each article title; ID half: random normal"}


# -- Serve: batching and overhead -------------------------------------------------------------------


def post(url: str, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    req = urllib.request.Request(url + "/recommend", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def body(h: History, r: int) -> dict[str, Any]:
    return {"user_id": f"b{r}", "k": 10, "history": [{"item_id": i, "kind": k}
                                                     for i, k in zip(h.item_ids, h.kinds, strict=True)]}


def serving_stack(args: argparse.Namespace, bundle: Bundle, data_dir: Path, work: Path, **overrides: Any) -> DevStack:
    s = Settings.from_env({"STYLESTREAM_HOME": str(work)}, bundle=bundle.folder, dataset=data_dir,
                          serve_port=free_port(), ray_dashboard_port=free_port(), log_level="WARNING",
                          **{"gate": "open", **overrides})  # the LLM path is what these runs measure
    return DevStack(s)


def throughput(url: str, hist: list[History], concurrency: int) -> dict[str, float]:
    rejected = 0

    def ask(r: int, h: History) -> dict[str, Any]:
        nonlocal rejected
        while True:
            try:
                return post(url, body(h, r))
            except urllib.error.HTTPError as exc:  # 503: the Generator's queue is full (back-pressure)
                if exc.code != 503:
                    raise
                rejected += 1
                time.sleep(0.5)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda rh: ask(*rh), enumerate(hist)))
    seconds = time.perf_counter() - t0
    return {"requests": len(hist), "seconds": round(seconds, 2), "recs_per_s": round(len(hist) / seconds, 3),
            "latency_p50_ms": pct([a["timings_ms"]["total"] for a in answers], 50), "rejected_503": rejected}


def part_batching(args: argparse.Namespace, bundle: Bundle, data: Dataset, data_dir: Path,
                  work: Path) -> dict[str, Any]:
    from ray import serve

    hist = histories(MixupRecommender(bundle), data, args.batch_requests)
    out: dict[str, Any] = {"concurrency": 16}
    with serving_stack(args, bundle, data_dir, work / "batching", gen_max_replicas=1) as stack:
        stack.start_serving()
        for label, size in (("batching on (max 8)", 8), ("batching off (1)", 1), ("batching on again (max 8)", 8)):
            serve.run(_app(stack, size), name="stylestream", route_prefix="/")
            post(stack.serving_url, body(hist[0], 0))  # warm
            out[label] = throughput(stack.serving_url, hist, 16)
            print(f"[bench] {label}: {out[label]}", flush=True)
    on = (out["batching on (max 8)"]["recs_per_s"] + out["batching on again (max 8)"]["recs_per_s"]) / 2
    out["throughput_ratio_on_vs_off"] = round(on / out["batching off (1)"]["recs_per_s"], 2)
    return out


def _app(stack: DevStack, batch: int) -> Any:
    from dataclasses import replace

    from serving.app import build_app

    return build_app(replace(stack.settings, gen_max_batch_size=batch, gen_max_replicas=1), stack.settings.bundle_dir,
                     stack.milvus_uri)


def part_overhead(args: argparse.Namespace, bundle: Bundle, data: Dataset, data_dir: Path,
                  work: Path) -> dict[str, Any]:
    rec = MixupRecommender(bundle, engine="onnx", device="cpu")
    hist = histories(rec, data, args.overhead_requests, seed=3)
    bare, served = [], []
    with serving_stack(args, bundle, data_dir, work / "overhead", gen_max_replicas=1) as stack:
        stack.start_serving()
        from indexer.collection import collection_name

        client = connect(stack.milvus_uri)
        items = ItemCollection(client, collection_name(stack.settings.milvus_collection, bundle.version))
        post(stack.serving_url, body(hist[0], 0))
        rec.generate(hist[:1])
        for r, h in enumerate(hist):
            t0 = time.perf_counter()
            text = rec.generate([h])[0]
            vecs = rec.text_vectors([text])
            q = rec.queries(vecs, rec.user_states([h]))
            items.search(q, 10, rec.exclusions([h], vecs, items.vectors))
            bare.append(1000 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            post(stack.serving_url, body(h, r))
            served.append(1000 * (time.perf_counter() - t0))
        client.close()
    overhead = [s - b for s, b in zip(served, bare, strict=True)]
    return {"requests": len(hist), "bare_p50_ms": pct(bare, 50), "served_p50_ms": pct(served, 50),
            "overhead_p50_ms": pct(overhead, 50), "overhead_mean_ms": round(float(np.mean(overhead)), 2),
            "overhead_share_of_bare": round(float(np.median(overhead) / np.median(bare)), 3),
            "how": "sequential requests, each timed bare (in this process: ONNX generation + the Retriever's code "
                   "against the same Milvus) then through POST /recommend"}


# -- the stream ---------------------------------------------------------------------------------------


def part_rates(args: argparse.Namespace, bundle: Bundle, data: Dataset, data_dir: Path, work: Path) -> dict[str, Any]:
    from kafka import KafkaProducer

    _, _, test = data.parts()
    buys = test[test["kind"] == "purchase"].sample(frac=1.0, random_state=0)
    out: dict[str, Any] = {"seconds_per_rate": args.rate_seconds}
    with serving_stack(args, bundle, data_dir, work / "rates", trigger_every_clicks=0, trigger_idle_seconds=0,
                       serving_timeout_ms=args.timeout_ms) as stack:
        bootstrap = stack.start_broker()
        stack.start_milvus()
        stack.start_serving()
        worker = stack.start_worker()
        watch = TopicWatch(bootstrap, RECS)
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        n = 0
        for rate in args.rates:
            wait_until(lambda: worker.stats()["recs_pending"] == 0, 120, "the previous rate to drain")
            ids = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.rate_seconds:
                row = buys.iloc[n % len(buys)]
                event = {"event_id": f"rate{rate}-{n}", "user_id": str(row["user_id"]), "item_id": str(row["item_id"]),
                         "ts": time.time()}
                producer.send(PURCHASES, key=event["user_id"].encode(), value=json.dumps(event).encode())
                ids.append(event["event_id"])
                n += 1
                time.sleep(max(0.0, t0 + len(ids) / rate - time.monotonic()))
            producer.flush()
            wanted = set(ids)
            wait_until(lambda: worker.stats()["recs_pending"] == 0, 120, "the answers to this rate")
            time.sleep(1.0)
            recs = [r for r in watch.records if r["trigger_event_id"] in wanted]
            llm = [r for r in recs if r["path"] == "llm"]
            out[f"{rate:g}/s"] = {
                "offered": len(ids), "answered": len(recs), "llm": len(llm),
                "fallback_share": round(1 - len(llm) / max(len(recs), 1), 3),
                "llm_recs_per_s": round(len(llm) / args.rate_seconds, 3),
                "latency_p50_ms": pct([r["latency_ms"] for r in recs], 50),
                "latency_p99_ms": pct([r["latency_ms"] for r in recs], 99),
                "llm_latency_p50_ms": pct([r["latency_ms"] for r in llm], 50),
                "llm_latency_p99_ms": pct([r["latency_ms"] for r in llm], 99),
            }
            print(f"[bench] {rate:g} recs/s offered: {out[f'{rate:g}/s']}", flush=True)
        out["worker"] = worker.stats()["serving"]
        out["settings"] = {k: getattr(stack.settings, k) for k in ("serving_timeout_ms", "serving_max_in_flight",
                                                                   "gen_max_batch_size", "gen_batch_wait_ms")}
        producer.close()
        watch.close()
    return out


def part_stream(args: argparse.Namespace, bundle: Bundle, data: Dataset, data_dir: Path, work: Path) -> dict[str, Any]:
    """Three runs from the same backlog: the baseline alone; the baseline while an outside
    client keeps the Generator busy (the CPU the LLM takes from the worker, without any
    waiting); the ServingRecommender (LLM path + fast path)."""
    events = data.interactions.iloc[: args.stream_events]
    hist = histories(MixupRecommender(bundle), data, 16, seed=5)
    out: dict[str, Any] = {"gen_threads": args.gen_threads}
    runs = (("baseline", "baseline", False), ("baseline, Generator kept busy", "baseline", True),
            ("serving (LLM path + last-title fast path)", "serving", False))
    for label, recommender, load in runs:
        with serving_stack(args, bundle, data_dir, work / f"stream-{len(out)}", recommender=recommender,
                           gen_threads=args.gen_threads) as stack:
            if recommender == "serving" or load:
                stack.start_milvus()
                stack.start_serving()
            stop = threading.Event()
            pushers = [threading.Thread(target=_keep_busy, args=(stack.serving_url, hist, stop)) for _ in range(2)]
            for t in pushers if load else []:
                t.start()
            out[label] = drain_rate(stack, events, f"s{len(out)}")
            stop.set()
            for t in pushers if load else []:
                t.join(120)
        print(f"[bench] {label}: {out[label]}", flush=True)
    base = out["baseline"]["events_per_s_sustained"]
    out["serving_over_baseline"] = round(out[runs[2][0]]["events_per_s_sustained"] / base, 3)
    out["busy_baseline_over_baseline"] = round(out[runs[1][0]]["events_per_s_sustained"] / base, 3)
    return out


def _keep_busy(url: str, hist: list[History], stop: threading.Event) -> None:
    r = 0
    while not stop.is_set():
        try:
            post(url, body(hist[r % len(hist)], r), timeout=120)
        except OSError:
            pass
        r += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the demo's, trained if absent)")
    ap.add_argument("--home", type=Path, default=Path(".stylestream"), help="stylestream home of the demo data/bundle")
    ap.add_argument("--queries", type=int, default=200, help="Milvus queries per catalog and backend")
    ap.add_argument("--batch-requests", type=int, default=48, help="requests per batching run")
    ap.add_argument("--overhead-requests", type=int, default=20, help="requests timed bare and served")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.5, 1, 2, 5], help="offered recommendations/s")
    ap.add_argument("--rate-seconds", type=float, default=40.0, help="seconds at each offered rate")
    ap.add_argument("--timeout-ms", type=float, default=Settings().serving_timeout_ms,
                    help="the stream's deadline for an LLM answer in the rates part")
    ap.add_argument("--stream-events", type=int, default=20000, help="backlog for the stream part")
    ap.add_argument("--gen-threads", type=int, default=1,
                    help="Generator CPU threads in the stream part (1 leaves a core to the worker on 2 cores)")
    ap.add_argument("--cache", type=Path, default=Path(".stylestream/bench-cache"), help="H&M title vectors cache")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := [p for p in parts if p not in PARTS]:
        ap.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    from rich.console import Console

    from stylestream.demo import ensure_bundle, ensure_dataset

    settings = Settings.from_env(home=args.home, bundle=args.bundle)
    data = ensure_dataset(settings, 600, 1000, 0, Console(stderr=True))
    bundle = ensure_bundle(settings, data, Console(stderr=True))
    args.results.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stylestream-bench-serving-"))
    print(f"[bench] bundle {bundle.version} ({bundle.folder}); data {settings.dataset_dir}; work {work}", flush=True)
    try:
        for part in parts:
            t0 = time.perf_counter()
            if part == "milvus":
                result = part_milvus(args, bundle, data, work / "milvus")
            else:
                runner = {"batching": part_batching, "overhead": part_overhead, "rates": part_rates,
                          "stream": part_stream}[part]
                result = runner(args, bundle, data, settings.dataset_dir, work)
            write(args, part, {"bundle": bundle.version, "wall_seconds": round(time.perf_counter() - t0, 1), **result})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
