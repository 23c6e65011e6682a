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
import psutil
from kafka import KafkaConsumer

from models.data.synth import synthesize
from streams.replay import ReplayProgress, replay
from stylestream.config import Settings
from stylestream.devstack import DevStack
from stylestream.records import RECS


def drain_rate(stack: DevStack, events, prefix: str, workers: int = 1) -> dict:
    """Pre-load ``events``, start ``workers`` in one group, and fit the group's rate once all
    of them are in (the joins rebalance; that time does not count)."""
    bootstrap = stack.start_broker()
    replay(events, bootstrap, prefix)  # pre-load: the workers start with a backlog
    t0 = time.monotonic()
    group = [stack.start_worker() for _ in range(workers)]
    t_ready = time.monotonic()
    cpu = CpuMeter([w.proc.pid for w in group] + [stack.broker.proc.pid])
    samples = []
    while True:
        stats = [w.stats() for w in group]
        received = sum(s["received"] for s in stats)
        samples.append((time.monotonic(), received))
        if received >= len(events):
            break
        time.sleep(0.5)
    *worker_cpu, broker_cpu = cpu.seconds()
    handled = received - samples[0][1]
    ts, n = np.array(samples).T
    start = n[0] + 0.1 * (len(events) - n[0])  # the middle of what is left once all have joined
    mid = (n >= start) & (n <= 0.9 * len(events))
    sustained = float(np.polyfit(ts[mid], n[mid], 1)[0]) if mid.sum() >= 3 else float("nan")
    total_s = samples[-1][0] - t_ready
    for w in group:
        stack.stop_worker(w)
    return {"workers": workers, "events": len(events), "events_before_all_joined": int(n[0]),
            "workers_start_s": round(t_ready - t0, 2), "drain_s": round(total_s, 2),
            "events_per_s_sustained": round(sustained, 1),
            "events_per_s_per_worker": round(sustained / workers, 1),
            "received_by_worker": [s["received"] for s in stats],
            "recs_published": sum(s["recs_published"] for s in stats),
            # what a worker costs whatever else the machine runs: its CPU time per event drained
            "worker_cpu_us_per_event": round(sum(worker_cpu) / max(handled, 1) * 1e6, 1),
            "events_per_worker_cpu_s": round(max(handled, 1) / max(sum(worker_cpu), 1e-9), 1),
            "broker_cpu_s": round(broker_cpu, 2), "workers_cpu_s": round(sum(worker_cpu), 2)}


class CpuMeter:
    """CPU seconds (user + system) each process has used since this was made: a busy host
    slows the wall clock, not the CPU a worker spends per event."""

    def __init__(self, pids: list[int]):
        self.procs = [psutil.Process(pid) for pid in pids]
        self.start = [self._used(p) for p in self.procs]

    @staticmethod
    def _used(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    def seconds(self) -> list[float]:
        return [self._used(p) - s for p, s in zip(self.procs, self.start, strict=True)]


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
    ap.add_argument("--events", type=int, default=60000,
                    help="events for the throughput runs (two workers drain 20,000 too fast to fit a rate)")
    ap.add_argument("--workers", default="1,2", help="group sizes for the throughput runs (comma-separated)")
    ap.add_argument("--batch-sizes", default="1,500",
                    help="STYLESTREAM_STREAM_BATCH_MAX_EVENTS values compared (1 = an event at a time)")
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
                     "catalog_items": len(data.items), "throughput": []}
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    try:
        for workers in (int(w) for w in args.workers.split(",")):
            for batch in batch_sizes:
                settings = Settings.from_env(home=home / f"tp-{workers}-{batch}", dataset=home / "data",
                                             broker=args.broker, log_level="WARNING", stream_batch_max_events=batch)
                with DevStack(settings) as stack:
                    run = {"batch_max_events": batch, **drain_rate(stack, events.iloc[: args.events], "tp", workers)}
                results["throughput"].append(run)
                print("throughput:", json.dumps(run), flush=True)
        settings = Settings.from_env(home=home / "lat", dataset=home / "data", broker=args.broker,
                                     log_level="WARNING", stream_batch_max_events=max(batch_sizes))
        with DevStack(settings) as stack:
            results["latency"] = {"batch_max_events": max(batch_sizes),
                                  **latency_at_rate(stack, events.iloc[: args.latency_events], "lat", args.rate)}
        print("latency:", json.dumps(results["latency"]), flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    one = {r["batch_max_events"]: r["events_per_s_sustained"] for r in results["throughput"] if r["workers"] == 1}
    if len(one) > 1:
        results["batched_vs_per_event_one_worker"] = round(one[max(one)] / one[min(one)], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
