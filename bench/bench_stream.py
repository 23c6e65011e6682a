"""Stream throughput and latency with one worker and the baseline recommender.

1. Sustained events/s: pre-load N events into the topics, start a worker, and time
   how fast it drains them (worker stats, sampled every 0.5 s).
2. Latency: replay at a fixed input rate (default 500 events/s) into a fresh worker and
   read `latency_ms` (broker timestamp of the trigger event → recommendation produced) from
   every record on recs.out, plus the end-to-end time seen by a consumer.

Figures are printed and written to bench/results/stream.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer

from models.data.synth import synthesize
from streams.replay import ReplayProgress, replay
from stylestream.config import Settings
from stylestream.devstack import DevStack
from stylestream.records import RECS


def drain_rate(stack: DevStack, events, prefix: str) -> dict:
    bootstrap = stack.start_broker()
    replay(events, bootstrap, prefix)  # pre-load: the worker starts with a backlog
    t0 = time.monotonic()
    worker = stack.start_worker()
    t_ready = time.monotonic()
    samples = []
    while True:
        s = worker.stats()
        samples.append((time.monotonic(), s["received"]))
        if s["received"] >= len(events):
            break
        time.sleep(0.5)
    # rate over the middle of the run, where start-up and the tail don't count
    ts, n = np.array(samples).T
    mid = (n >= 0.1 * len(events)) & (n <= 0.9 * len(events))
    sustained = float(np.polyfit(ts[mid], n[mid], 1)[0]) if mid.sum() >= 3 else float("nan")
    total_s = samples[-1][0] - t_ready
    stack.stop_worker(worker)
    return {"events": len(events), "worker_start_s": round(t_ready - t0, 2), "drain_s": round(total_s, 2),
            "events_per_s_overall": round(len(events) / total_s, 1), "events_per_s_sustained": round(sustained, 1),
            "recs_published": s["recs_published"], "recs_by_path": s.get("recs_by_path"),
            "serving": s.get("serving")}


def latency_at_rate(stack: DevStack, events, prefix: str, rate: float) -> dict:
    bootstrap = stack.start_broker()
    worker = stack.start_worker()
    seen: list[tuple[float, dict]] = []
    stop = threading.Event()

    def consume() -> None:
        c = KafkaConsumer(RECS, bootstrap_servers=bootstrap, auto_offset_reset="latest", consumer_timeout_ms=200,
                          fetch_max_wait_ms=10)
        c.poll(1000)
        ready.set()
        while not stop.is_set():
            for batch in c.poll(100).values():
                now = time.time()
                seen.extend((now, json.loads(m.value)) for m in batch)
        c.close()

    ready = threading.Event()
    t = threading.Thread(target=consume, daemon=True)
    t.start()
    ready.wait(10)
    progress = replay(events, bootstrap, prefix, rate=rate, progress=ReplayProgress())
    time.sleep(3)
    stop.set()
    t.join(5)
    stats = worker.stats()
    lat = np.array([r["latency_ms"] for _, r in seen])
    return {"input_rate": rate, "achieved_input_rate": round(progress.rate, 1), "events": len(events),
            "recs": len(seen), "processed": stats["processed"],
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
            "latency_ms_p90": round(float(np.percentile(lat, 90)), 2),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 2),
            "latency_ms_max": round(float(lat.max()), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20000, help="events for the throughput run")
    ap.add_argument("--rate", type=float, default=500.0, help="input rate for the latency run (events/s)")
    ap.add_argument("--latency-events", type=int, default=10000, help="events for the latency run")
    ap.add_argument("--broker", choices=["noida", "tansu"], default="noida")
    ap.add_argument("--out", type=Path, default=Path("bench/results/stream.json"))
    args = ap.parse_args()

    data = synthesize(users=2000, items=3000, seed=1)
    home = Path(tempfile.mkdtemp(prefix="stylestream-bench-"))
    data.save(home / "data")
    events = data.interactions
    results: dict = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
                     "broker": args.broker, "recommender": "category-popularity (baseline)",
                     "catalog_items": len(data.items)}
    try:
        settings = Settings.from_env(home=home / "a", dataset=home / "data", broker=args.broker, log_level="WARNING")
        with DevStack(settings) as stack:
            results["throughput"] = drain_rate(stack, events.iloc[: args.events], "tp")
        print("throughput:", json.dumps(results["throughput"]), flush=True)
        settings = Settings.from_env(home=home / "b", dataset=home / "data", broker=args.broker, log_level="WARNING")
        with DevStack(settings) as stack:
            results["latency"] = latency_at_rate(stack, events.iloc[: args.latency_events], "lat", args.rate)
        print("latency:", json.dumps(results["latency"]), flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
