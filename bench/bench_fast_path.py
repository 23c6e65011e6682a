"""The fast path: the last-title mix-up against the ID-only search it replaced, in one run.

1. In process: :class:`streams.fast_path.FastPathRecommender` answering one request at a time
   and batches of 32 (what the worker's 2 ms window gathers under load), both kinds
   alternating, p50/p99 per call; the gate's decision included (it rides on every answer
   behind the LLM path).
2. The stream: one worker with ``STYLESTREAM_RECOMMENDER=fast`` draining a pre-loaded backlog
   (events/s and worker CPU per event), and the event → ``recs.out`` latency at a fixed input
   rate, for each kind, rounds alternating (``bench_stream.py``'s measurements).
3. The catalogue's size: the same in-process answer over 1,000 to 105,542 stored vectors (the
   whole H&M catalogue's article count; random vectors of the bundle's width: the cost of an
   exact search does not depend on their values), exact and through the approximate index
   (:class:`models.mixup.IvfIndex`), one request and a batch of 32.

The bundle is trained here on the synthetic shop ``bench_stream.py`` uses (a short LoRA of
SmolLM2: the fast path does not touch the LLM). Figures are printed and written to
``bench/results/fast_path.json``; ratios are last-title / id-only in the same run.

    python bench/bench_fast_path.py --help
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_stream import drain_rate, latency_at_rate  # noqa: E402
from machine import machine_info  # noqa: E402

from models.bundle import Bundle  # noqa: E402
from models.data.synth import synthesize  # noqa: E402
from models.mixup import IvfIndex, MixupIndex  # noqa: E402
from models.recommender import FAST_PATH, ID_ONLY_PATH, MixupRecommender  # noqa: E402
from models.train import TrainConfig, train_bundle  # noqa: E402
from streams.fast_path import FastPathRecommender  # noqa: E402
from stylestream.config import Settings  # noqa: E402
from stylestream.devstack import DevStack  # noqa: E402
from stylestream.recommender import HistoryItem, RecommendRequest  # noqa: E402

KINDS = (FAST_PATH, ID_ONLY_PATH)
HM_ARTICLES = 105_542  # articles in the whole H&M catalogue


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--home", type=Path, default=ROOT / ".stylestream",
                   help="stylestream home: SmolLM2 is materialised under home/models/base; the bundle goes to "
                        "home/bench-fast-path")
    p.add_argument("--events", type=int, default=20_000, help="backlog the worker drains")
    p.add_argument("--rate", type=float, default=500.0, help="input rate of the latency runs (events/s)")
    p.add_argument("--latency-events", type=int, default=5_000)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the stream runs (kinds alternate)")
    p.add_argument("--calls", type=int, default=300, help="in-process calls per kind and batch size")
    p.add_argument("--sizes", default=f"1000,10000,30000,{HM_ARTICLES}", help="catalogue sizes of part 3")
    p.add_argument("--parts", default="process,stream,scale", help="which parts to run (and recall)")
    p.add_argument("--recall-datasets", default="hm-sample,amazon-clothing-loo",
                   help="part recall: data sets whose bench_quality.py bundle (home/eval-work/<name>/bundle) "
                        "answers every test purchase exactly and through the inverted file")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fast_path.json")
    return p.parse_args(argv)


def bench_bundle(home: Path, data: Any) -> Bundle:
    """A bundle of the synthetic shop (trained once; reused while the data set is the same)."""
    folder = home / "bench-fast-path"
    if (folder / "bundle.json").is_file():
        bundle = Bundle.load(folder)
        if bundle.data_hash == data.data_hash():
            return bundle
    cfg = TrainConfig(home=home, title_encoders=("minilm",), lora_steps=4, lora_batch_size=2, max_val_events=32,
                      max_new_tokens=16)
    return train_bundle(data, cfg, folder, progress=True)


def requests_for(bundle: Bundle, data: Any, n: int, seed: int = 0) -> list[RecommendRequest]:
    """Histories as the worker holds them: each shopper's newest 50 events, ts in seconds."""
    inter = data.interactions.sort_values("ts", kind="stable")
    users = np.random.default_rng(seed).choice(inter["user_id"].unique(), n, replace=False)
    out = []
    for user in users:
        mine = inter[inter["user_id"] == user].tail(50)
        out.append(RecommendRequest(str(user), [HistoryItem(str(i), str(k), float(t.timestamp()))
                                                for i, k, t in zip(mine["item_id"], mine["kind"], mine["ts"],
                                                                   strict=True)], k=10))
    return out


def timed(fn: Any, calls: int) -> dict[str, float]:
    fn()  # warm
    t = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    ms = 1000 * np.asarray(t)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def part_process(bundle: Bundle, requests: list[RecommendRequest], calls: int) -> dict[str, Any]:
    recs = {kind: FastPathRecommender(bundle, kind, gate="bundle") for kind in KINDS}
    out: dict[str, Any] = {}
    for batch in (1, 32):
        for kind in KINDS:  # alternate: the machine's noise hits both
            rec = recs[kind]
            state = {"i": 0}

            def call(rec: FastPathRecommender = rec, batch: int = batch, state: dict = state) -> None:
                lo = (state["i"] * batch) % max(len(requests) - batch, 1)
                state["i"] += 1
                rec.answer(requests[lo:lo + batch])

            out[f"{kind}, batch {batch}"] = timed(call, calls if batch == 1 else max(calls // 4, 20))
            print(f"[bench] in process, {kind}, batch {batch}: {out[f'{kind}, batch {batch}']}", flush=True)
    out["last-title / id-only p99, batch 1"] = round(out[f"{FAST_PATH}, batch 1"]["p99_ms"]
                                                     / out[f"{ID_ONLY_PATH}, batch 1"]["p99_ms"], 2)
    out["last-title / id-only p99, batch 32"] = round(out[f"{FAST_PATH}, batch 32"]["p99_ms"]
                                                      / out[f"{ID_ONLY_PATH}, batch 32"]["p99_ms"], 2)
    return out


def part_stream(args: argparse.Namespace, bundle: Bundle, data: Any, data_dir: Path, work: Path) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    events = data.interactions.sort_values("ts", kind="stable")
    for rnd in range(args.rounds):
        for kind in KINDS if rnd % 2 == 0 else KINDS[::-1]:
            settings = Settings.from_env(home=work / f"{kind}-{rnd}", dataset=data_dir, bundle=bundle.folder,
                                         recommender="fast", fast_path=kind, log_level="WARNING")
            with DevStack(settings) as stack:
                drain = drain_rate(stack, events.iloc[:args.events], f"d{rnd}{kind[:2]}")
            with DevStack(Settings.from_env(home=work / f"{kind}-{rnd}-lat", dataset=data_dir,
                                            bundle=bundle.folder, recommender="fast", fast_path=kind,
                                            log_level="WARNING")) as stack:
                lat = latency_at_rate(stack, events.iloc[:args.latency_events], f"l{rnd}{kind[:2]}", args.rate)
            run = {"kind": kind, "round": rnd + 1, **{k: drain[k] for k in ("events_per_s_sustained",
                                                                           "worker_cpu_us_per_event", "drain_s")},
                   **{f"{k}_at_{args.rate:g}_per_s": lat[k] for k in ("latency_ms_p50", "latency_ms_p99",
                                                                      "recs")}}
            runs.append(run)
            print(f"[bench] stream: {json.dumps(run)}", flush=True)

    def mean(kind: str, key: str) -> float:
        return float(np.mean([r[key] for r in runs if r["kind"] == kind]))

    rate_key = "events_per_s_sustained"
    p99_key = f"latency_ms_p99_at_{args.rate:g}_per_s"
    means = {kind: {rate_key: round(mean(kind, rate_key), 1), p99_key: round(mean(kind, p99_key), 2),
                    "worker_cpu_us_per_event": round(mean(kind, "worker_cpu_us_per_event"), 1)} for kind in KINDS}
    return {"runs": runs, "mean": means,
            "last-title / id-only events/s": round(mean(FAST_PATH, rate_key) / mean(ID_ONLY_PATH, rate_key), 3),
            "last-title / id-only latency p99": round(mean(FAST_PATH, p99_key) / mean(ID_ONLY_PATH, p99_key), 3)}


def part_scale(bundle: Bundle, requests: list[RecommendRequest], sizes: list[int], calls: int) -> dict[str, Any]:
    """The fast path's answer over catalogues of ``sizes`` items, exact and approximate."""
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    base = MixupRecommender(bundle)
    width = base.index.vectors.shape[1]
    vectors = rng.standard_normal((max(sizes), width)).astype(np.float32)
    vectors[:len(base.item_ids)] = base.index.vectors  # the bundle's own items keep their vectors
    for n in sizes:
        ids = base.item_ids + [f"extra-{i}" for i in range(max(0, n - len(base.item_ids)))]
        ids = ids[:n]
        for search in ("exact", "ivf"):
            fast = FastPathRecommender(bundle, FAST_PATH, gate="bundle")
            index = MixupIndex(ids, vectors[:n])
            if search == "ivf":
                index.approximate(IvfIndex.build(index.vectors))
            fast.rec._index, fast.rec._item_ids = index, ids
            for batch in (1, 8, 32):
                state = {"i": 0}

                def call(fast: FastPathRecommender = fast, batch: int = batch, state: dict = state) -> None:
                    lo = (state["i"] * batch) % max(len(requests) - batch, 1)
                    state["i"] += 1
                    fast.answer(requests[lo:lo + batch])

                row = {"items": n, "search": search, "batch": batch,
                       **timed(call, calls if batch == 1 else max(calls // 10, 10))}
                rows.append(row)
                print(f"[bench] scale: {json.dumps(row)}", flush=True)
    return {"rows": rows, "vectors": f"{width} floats per item (the bundle's title + ID halves)"}


def part_recall(home: Path, names: list[str]) -> dict[str, Any]:
    """What the approximate index costs: the fast path's Recall@10 on every test purchase of a
    real data set, exact against the inverted file, paired; and how much of the exact top 10
    the inverted file finds."""
    from bench_quality import load_dataset, parse_args

    from models.evaluate import EvalConfig, test_events
    from models.metrics import hits_at_k, paired_bootstrap, recall_at_k
    from models.recommender import event_histories

    out: dict[str, Any] = {}
    for name in names:
        folder = home / "eval-work" / name / "bundle"
        if not (folder / "bundle.json").is_file():
            print(f"[bench] recall: no bundle in {folder} (run bench_quality.py --datasets {name} first)", flush=True)
            continue
        data = load_dataset(name, parse_args([]))
        bundle = Bundle.load(folder)
        bundle.require_data(data.data_hash())
        events = test_events(data, EvalConfig(title_encoders=(bundle.chosen_encoder,)))
        histories = event_histories(events)
        ids = data.items["item_id"].astype(str).to_numpy()
        targets = ids[events.targets]
        rec = MixupRecommender(bundle)
        answers = {}
        for search in ("exact", "ivf"):
            rec.index.approximate(IvfIndex.build(rec.index.vectors) if search == "ivf" else None)
            started = time.perf_counter()
            answers[search] = [[h.item_id for h in a.items] for lo in range(0, len(histories), 256)
                               for a in rec.recommend_fast(histories[lo:lo + 256], 10)]
            answers[f"{search}_seconds"] = round(time.perf_counter() - started, 1)
        ranks = {s: np.array([a.index(t) if t in a else np.inf for a, t in zip(answers[s], targets, strict=True)])
                 for s in ("exact", "ivf")}
        ivf = rec.index.ivf
        out[name] = {"items": len(rec.index), "events": len(events), "lists": len(ivf.centroids), "nprobe": ivf.nprobe,
                     "recall@10_exact": recall_at_k(ranks["exact"], 10), "recall@10_ivf": recall_at_k(ranks["ivf"], 10),
                     "ivf_minus_exact": paired_bootstrap(hits_at_k(ranks["ivf"], 10),
                                                         hits_at_k(ranks["exact"], 10)).as_dict(),
                     "overlap@10": float(np.mean([len(set(a) & set(b)) / max(len(a), 1) for a, b in
                                                  zip(answers["exact"], answers["ivf"], strict=True)])),
                     "seconds": {s: answers[f"{s}_seconds"] for s in ("exact", "ivf")}}
        print(f"[bench] recall: {name}: {json.dumps(out[name])}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",")}
    data = synthesize(users=2000, items=3000, seed=1)
    work = Path(tempfile.mkdtemp(prefix="stylestream-fast-path-"))
    data_dir = data.save(work / "data")
    out: dict[str, Any] = {"benchmark": "fast path", "machine": machine_info("cpu"),
                           "data": "synthesize(users=2000, items=3000, seed=1)"}
    try:
        bundle = bench_bundle(args.home, data)
        out["bundle"] = {"version": bundle.version, "fast_fusion": bundle.fast_fusion().to_json(),
                         "gate_closed": bundle.gate().closed}
        requests = requests_for(bundle, data, 256)
        if "process" in parts:
            out["in_process"] = part_process(bundle, requests, args.calls)
        if "scale" in parts:
            out["scale"] = part_scale(bundle, requests, [int(s) for s in args.sizes.split(",")], args.calls)
        if "stream" in parts:
            out["stream"] = part_stream(args, bundle, data, data_dir, work)
        if "recall" in parts:
            out["recall"] = part_recall(args.home, [n.strip() for n in args.recall_datasets.split(",") if n.strip()])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"[bench] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
