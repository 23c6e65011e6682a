"""A stream worker's recovery time at a real shop's size: memory store against RocksDB.

The sequence table's changelog is filled with ``--shoppers`` sequences (written straight to
``stylestream-sequences-changelog`` by a plain producer, keyed and partitioned as the worker
writes them), then a worker is started and timed until it is ready (partitions assigned,
tables recovered):

- memory store: every start reads the whole changelog back into memory;
- RocksDB, first start: the same read, into the local store;
- RocksDB, restart after a clean stop: only what the changelog gained since (nothing here);
- RocksDB, restart after ``--tail`` more records were written while it was down.

Each start's ready time and the worker's RSS are printed and written to
``bench/results/recovery.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
from kafka import KafkaProducer
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_info  # noqa: E402

from models.data.synth import synthesize  # noqa: E402
from stylestream.config import Settings  # noqa: E402
from stylestream.devstack import DevStack  # noqa: E402
from stylestream.topics import ensure_topics  # noqa: E402

CHANGELOG = "stylestream-sequences-changelog"


def sequence(user: int, events: int, rng: random.Random) -> bytes:
    """A table value as the worker writes it (streams.sequence_table.UserSequence.to_dict)."""
    t = 1_800_000_000.0 + user
    evs = [[f"u{user}-{j}", f"i{rng.randrange(3000)}", "click", t + j] for j in range(events)]
    return json.dumps({"events": evs, "n": events, "c": events, "t": t + events, "o": {}}).encode()


def fill_changelog(bootstrap: str, shoppers: int, events: int, start: int = 0) -> float:
    """Write ``shoppers`` sequences; the default partitioner puts each on its key's partition,
    as the events' producers do. Returns the seconds it took."""
    rng = random.Random(start)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1,
                             compression_type=None)
    began = time.monotonic()
    for user in tqdm(range(start, start + shoppers), desc="changelog", unit="shopper", mininterval=2):
        producer.send(CHANGELOG, key=f"u{user}".encode(), value=sequence(user, events, rng))
    producer.flush()
    producer.close()
    return time.monotonic() - began


def timed_start(stack: DevStack, label: str) -> dict:
    began = time.monotonic()
    worker = stack.start_worker(timeout=3600)
    ready_s = time.monotonic() - began
    rss = psutil.Process(worker.proc.pid).memory_info().rss / 2**20
    sample = worker.get("/users/u7/")
    stack.stop_worker(worker)
    run = {"start": label, "ready_s": round(ready_s, 1), "worker_rss_mib": round(rss),
           "u7_events": len(sample["events"])}
    print(json.dumps(run), flush=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shoppers", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=10, help="events in each shopper's sequence")
    ap.add_argument("--tail", type=int, default=20_000, help="sequences written while the RocksDB worker is down")
    ap.add_argument("--out", type=Path, default=Path("bench/results/recovery.json"))
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="stylestream-recovery-"))
    synthesize(users=50, items=100, seed=1).save(home / "data")
    results: dict = {"machine": machine_info(), "shoppers": args.shoppers, "events_per_sequence": args.events,
                     "starts": []}
    try:
        base = dict(dataset=home / "data", log_level="WARNING", trigger_mode="off")
        with DevStack(Settings.from_env({"STYLESTREAM_HOME": str(home / "mem")}, table_store="memory",
                                        **base)) as mem:
            bootstrap = mem.start_broker()
            ensure_topics(bootstrap, mem.settings.topic_partitions, [CHANGELOG])
            results["fill_s"] = round(fill_changelog(bootstrap, args.shoppers, args.events), 1)
            results["starts"].append(timed_start(mem, "memory"))
            # the same broker and changelog, a RocksDB worker with its own data folder
            rocks = DevStack(Settings.from_env({"STYLESTREAM_HOME": str(home / "mem")}, table_store="rocksdb",
                                               worker_id="rocks-1", **base))
            rocks.broker, rocks.workers = mem.broker, []
            results["starts"].append(timed_start(rocks, "rocksdb, first start (empty local store)"))
            results["starts"].append(timed_start(rocks, "rocksdb, restart after a clean stop"))
            fill_changelog(bootstrap, args.tail, args.events, start=args.shoppers)
            results["starts"].append(timed_start(rocks, f"rocksdb, restart with {args.tail:,} new records"))
            rocks.broker = None
            rocks.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    starts = {s["start"]: s["ready_s"] for s in results["starts"]}
    results["memory_vs_rocksdb_restart"] = round(starts["memory"] / max(starts["rocksdb, restart after a clean stop"],
                                                                       0.01), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
