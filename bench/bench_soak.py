"""The soak: the full path on loopback at a steady event rate for ``--minutes`` (default 10).

Started here, as the dev stack starts them: the embedded broker (noida-db), the Milvus Lite
server, local Ray with the Serve application (the LLM path, the bundle indexed in Milvus), the
catalog indexer, and ONE stream worker with ``STYLESTREAM_RECOMMENDER=serving`` and the gate open
(the LLM path for every event, the fast path behind it).

- A producer thread sends ``--rate`` events/s: the bundle's data set interactions, cycled, each
  with a fresh ``event_id`` and the current time (or, for a bundle of another data set,
  synthetic events over its catalog's items), with ``--malformed-share`` malformed records
  (``tests/fuzz_records.py``'s twelve ``MALFORMATIONS``, round robin) and ``--duplicate-share``
  good events sent twice; what the broker acknowledged is counted by kind.
- Every ``--sample-seconds`` (5): the worker's ``/stats/``; consumer lag, max over partitions,
  from the worker's ``/metrics`` (``stylestream_consumer_lag``) and, as a cross-check, end
  offsets minus the group's committed offsets (kafka-python); RSS and CPU% of every process
  of the stack (every descendant of this process: broker, worker, indexer, Milvus, each Ray
  process) and of this process (producer, recs consumer, Ray driver).
- A consumer thread reads ``recs.out`` throughout: recommendations and ``latency_ms`` p50/p99
  by path, and every recommended ``item_id`` looked up in the bundle's catalog.
- When the time is up: wait for the worker to have received everything sent and answered
  everything pending, then report the rate held, max and final lag, RSS at the end of the
  warm-up (``--warmup-seconds``, 60; half the run when the run is shorter) vs at the end of
  sending (each the median of 3 samples) per process (MiB, %, slope; and the growth of RSS
  less shared/file-backed pages, which tells heap from mapped data files), the accounting
  (``received == processed + duplicates + dead_lettered``, ``sent == received - reread``: what
  the stream's continuity check read again is delivered twice, and counted as duplicates; events lost,
  expected vs counted duplicates and dead letters, ``events.dlq`` records), recommendations
  by path and their latency, and unknown items recommended.

Printed as rich tables; written with the time series to ``--out`` (bench/results/soak.json).
Needs a bundle (``--bundle``; default: the demo's, trained if absent).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from machine import machine_info  # noqa: E402

from models.bundle import Bundle  # noqa: E402
from models.data import Dataset  # noqa: E402
from stylestream.config import Settings  # noqa: E402
from stylestream.devstack import DevStack  # noqa: E402
from stylestream.devstack.processes import free_port  # noqa: E402
from stylestream.records import CLICKS, DLQ, PURCHASES, RECS  # noqa: E402

try:  # the fuzz tests' twelve malformations (needs hypothesis, a dev dependency)
    from fuzz_records import MALFORMATIONS  # noqa: E402
except ImportError:  # a few of our own
    def _dumps(value: object) -> bytes:
        return json.dumps(value, allow_nan=True).encode()

    MALFORMATIONS = {
        "bad JSON": lambda r: (r["user_id"].encode(), _dumps(r)[:-2]),
        "not an object": lambda r: (r["user_id"].encode(), _dumps([r])),
        "missing item_id": lambda r: (r["user_id"].encode(), _dumps({k: v for k, v in r.items() if k != "item_id"})),
        "ts NaN": lambda r: (r["user_id"].encode(), _dumps({**r, "ts": math.nan})),
        "ts in ms": lambda r: (r["user_id"].encode(), _dumps({**r, "ts": r["ts"] * 1000})),
        "tombstone": lambda r: (r["user_id"].encode(), None),
    }

GROUP = "stylestream"  # the stream workers' consumer group (the Faust app id)
MIB = 1024 * 1024


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


# -- events --------------------------------------------------------------------------------------


class EventSource:
    """An endless stream of (topic, key, value, kind): rows of interactions, cycled, each sent
    as a new event (fresh ``event_id``, the current time); ``kind`` is ``good``, ``duplicate``
    (the previous good event again) or ``malformed:<name>``."""

    def __init__(self, rows: list[tuple[str, str, str, str | None]], malformed_share: float,
                 duplicate_share: float, seed: int = 0):
        self.rows, self.malformed_share, self.duplicate_share = rows, malformed_share, duplicate_share
        self.rng = random.Random(seed)
        self.kinds = itertools.cycle(list(MALFORMATIONS))
        self.n = 0
        self.last: tuple[str, bytes, bytes] | None = None

    def __iter__(self) -> Iterator[tuple[str, bytes | None, bytes | None, str]]:
        return self

    def __next__(self) -> tuple[str, bytes | None, bytes | None, str]:
        roll = self.rng.random()
        if self.last is not None and roll < self.duplicate_share:
            topic, key, value = self.last
            self.last = None  # never a duplicate of a duplicate
            return topic, key, value, "duplicate"
        user, item, kind, query = self.rows[self.n % len(self.rows)]
        record: dict[str, Any] = {"event_id": f"soak-{self.n}", "user_id": user, "item_id": item, "ts": time.time()}
        if kind == "click" and isinstance(query, str) and query:
            record["query"] = query
        self.n += 1
        topic = CLICKS if kind == "click" else PURCHASES
        if roll >= 1.0 - self.malformed_share:
            name = next(self.kinds)
            key, value = MALFORMATIONS[name](record)  # type: ignore[operator]
            return topic, key, value, f"malformed:{name}"
        key, value = user.encode(), json.dumps(record).encode()
        self.last = (topic, key, value)
        return topic, key, value, "good"


def event_rows(bundle: Bundle, data: Dataset | None, seed: int = 0) -> tuple[list[tuple[str, str, str, str | None]],
                                                                              str]:
    """(user, item, kind, query) rows, and where they come from."""
    if data is not None:
        inter = data.interactions
        query = inter["query"] if "query" in inter else [None] * len(inter)
        rows = list(zip(inter["user_id"].astype(str), inter["item_id"].astype(str), inter["kind"].astype(str),
                        query, strict=True))
        return rows, f"the bundle's data set's {len(rows):,} interactions, cycled (fresh event ids, current time)"
    items = bundle.items()["item_id"].astype(str).tolist()
    rng = random.Random(seed)
    rows = [(f"soak-u{rng.randrange(600)}", rng.choice(items), "purchase" if rng.random() < 0.1 else "click", None)
            for _ in range(50_000)]
    return rows, f"synthetic: 600 shoppers over the bundle's {len(items):,} catalog items, 10% purchases"


class SendCounts:
    """What the broker acknowledged (and what it refused), by kind, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.errors: list[str] = []
        self.attempted = 0
        self.started = self.finished = 0.0

    def ack(self, kind: str) -> None:
        with self.lock:
            self.acked[kind] += 1

    def fail(self, kind: str, exc: BaseException) -> None:
        with self.lock:
            self.failed[kind] += 1
            if len(self.errors) < 5:
                self.errors.append(repr(exc)[:300])

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.acked.values())

    def by_kind(self) -> dict[str, Any]:
        with self.lock:
            acked = dict(self.acked)
        malformed = {k.split(":", 1)[1]: v for k, v in sorted(acked.items()) if k.startswith("malformed:")}
        return {"total": sum(acked.values()), "good": acked.get("good", 0), "duplicates": acked.get("duplicate", 0),
                "malformed": sum(malformed.values()), "malformed_by_kind": malformed,
                "failed_to_send": sum(self.failed.values()), "send_errors": list(self.errors)}


def produce(bootstrap: str, source: EventSource, rate: float, seconds: float, counts: SendCounts,
            stop: threading.Event) -> None:
    """Send at ``rate`` events/s for ``seconds`` (paced against the start, so a stall is made up)."""
    from kafka import KafkaProducer

    # kafka-python's defaults: acks=all, idempotent, so a send retried under load is written once
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    total = round(seconds * rate)
    counts.started = time.monotonic()
    try:
        while counts.attempted < total and not stop.is_set():
            due = min(int((time.monotonic() - counts.started) * rate) + 1, total)
            while counts.attempted < due:
                topic, key, value, kind = next(source)
                future = producer.send(topic, key=key, value=value)
                future.add_callback(lambda _meta, k=kind: counts.ack(k))
                future.add_errback(lambda exc, k=kind: counts.fail(k, exc))
                counts.attempted += 1
            time.sleep(max(0.0, counts.started + (counts.attempted + 1) / rate - time.monotonic()))
        producer.flush(60)
    finally:
        counts.finished = time.monotonic()
        producer.close(30)


# -- recs.out --------------------------------------------------------------------------------------


class RecsReader(threading.Thread):
    """Reads ``recs.out`` from its start: counts and latencies by path, items not in the catalog."""

    def __init__(self, bootstrap: str, catalog: set[str]):
        super().__init__(daemon=True, name="recs-reader")
        self.bootstrap, self.catalog = bootstrap, catalog
        self.stop_event, self.ready = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.by_path: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.unknown: Counter[str] = Counter()
        self.items_seen = 0
        self.empty = 0
        self.bad_records = 0
        self.error = ""

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.by_path.values())

    def run(self) -> None:
        from kafka import KafkaConsumer

        try:
            consumer = KafkaConsumer(RECS, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                                     enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100)
            consumer.poll(1000)
            self.ready.set()
            while not self.stop_event.is_set():
                for batch in consumer.poll(200).values():
                    for message in batch:
                        self.take(message.value)
            consumer.close()
        except Exception as exc:  # noqa: BLE001 - reported, not raised from a thread
            self.error = repr(exc)[:300]
            self.ready.set()

    def take(self, value: bytes) -> None:
        try:
            rec = json.loads(value)
            path, items = str(rec["path"]), [str(i["item_id"]) for i in rec["items"]]
            latency = float(rec["latency_ms"])
        except (ValueError, KeyError, TypeError):
            with self.lock:
                self.bad_records += 1
            return
        with self.lock:
            self.by_path[path] += 1
            self.latency[path].append(latency)
            self.items_seen += len(items)
            self.empty += not items
            self.unknown.update(i for i in items if i not in self.catalog)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            every = [x for values in self.latency.values() for x in values]
            return {
                "total": sum(self.by_path.values()), "by_path": dict(self.by_path),
                "latency_ms": {path: {"p50": pct(v, 50), "p99": pct(v, 99), "max": round(max(v), 1)}
                               for path, v in sorted(self.latency.items())} | (
                    {"all": {"p50": pct(every, 50), "p99": pct(every, 99), "max": round(max(every), 1)}}
                    if every else {}),
                "items_recommended": self.items_seen, "recs_without_items": self.empty,
                "unknown_items_recommended": sum(self.unknown.values()),
                "unknown_item_ids": sorted(self.unknown)[:20], "unreadable_records": self.bad_records,
                "reader_error": self.error or None}


# -- lag ----------------------------------------------------------------------------------------------


def metrics_lag(worker_port: int) -> dict[str, int] | None:
    """``stylestream_consumer_lag`` by partition from the worker's ``/metrics`` (None: no such page)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "stylestream_consumer_lag":
            return {f"{s.labels['topic']}/{s.labels['partition']}": int(s.value) for s in family.samples}
    return None


class CommittedLag:
    """End offsets of the event topics minus the group's committed offsets (kafka-python)."""

    def __init__(self, bootstrap: str):
        from kafka import KafkaAdminClient, KafkaConsumer

        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        self.error = ""

    def partitions(self, *topics: str) -> list[Any]:
        from kafka import TopicPartition

        return [TopicPartition(t, p) for t in topics for p in sorted(self.consumer.partitions_for_topic(t) or [])]

    def ends(self, *topics: str) -> dict[Any, int]:
        return self.consumer.end_offsets(self.partitions(*topics))

    def sample(self) -> dict[str, int] | None:
        try:
            ends = self.ends(CLICKS, PURCHASES)
            if hasattr(self.admin, "list_group_offsets"):  # kafka-python 3
                committed = self.admin.list_group_offsets(GROUP).get(GROUP, {})
            else:
                committed = self.admin.list_consumer_group_offsets(GROUP)
        except Exception as exc:  # noqa: BLE001 - a sample must not end the soak
            self.error = repr(exc)[:200]
            return None
        out = {}
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            out[f"{tp.topic}/{tp.partition}"] = max(0, end - done)
        return out

    def close(self) -> None:
        for client in (self.admin, self.consumer):
            try:
                client.close()
            except Exception:  # noqa: BLE001,S110 - closing at the end
                pass


# -- processes -----------------------------------------------------------------------------------------


class ProcessWatch:
    """RSS and CPU% of this process and every descendant (by pid, labelled by role)."""

    def __init__(self, roles: Callable[[], dict[int, str]]):
        import psutil

        self.psutil = psutil
        self.roles = roles
        self.me = psutil.Process()
        self.procs: dict[int, Any] = {}
        self.labels: dict[int, str] = {}
        psutil.cpu_percent(None)

    def label(self, proc: Any) -> str:
        role = self.roles().get(proc.pid)
        if role:
            return role
        if proc.pid == self.me.pid:
            return "bench driver (producer, recs reader, Ray driver)"
        try:
            cmd = proc.cmdline()
        except (self.psutil.Error, OSError):
            cmd = []
        if cmd and cmd[0].startswith("ray::"):
            return cmd[0].split()[0]
        exe = os.path.basename(cmd[0]) if cmd else proc.name()
        if exe in ("gcs_server", "raylet"):
            return f"ray {exe}"
        if exe.startswith("ray-"):  # the dashboard's module processes name themselves
            return exe
        script = next((a for a in cmd[1:] if a.endswith(".py")), "")
        if script:
            parts = Path(script).parts
            return f"ray {'/'.join(parts[-2:])}" if "ray" in parts else f"{exe} {Path(script).name}"
        if "-m" in cmd[1:-1]:
            return f"{exe} -m {cmd[cmd.index('-m') + 1]}"
        if "-c" in cmd[1:-1]:
            code = cmd[cmd.index("-c") + 1].replace(";", " ").replace('"', " ").split()
            module = code[code.index("from") + 1] if "from" in code[:-1] else code[0] if code else ""
            return f"{exe} -c ({module})"
        return " ".join(cmd)[:80] or proc.name()

    def sample(self) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """(RSS MiB, RSS less file-backed and shared pages MiB, CPU%) by pid (as a string)."""
        psutil = self.psutil
        try:
            current = [self.me, *self.me.children(recursive=True)]
        except psutil.Error:
            current = [self.me]
        for proc in current:
            if proc.pid not in self.procs:
                self.procs[proc.pid] = proc
                try:
                    proc.cpu_percent(None)  # primes it: the next call measures since now
                except psutil.Error:
                    pass
            try:
                self.labels[proc.pid] = self.label(proc)  # Ray workers change title (IDLE -> an actor)
            except psutil.Error:
                pass
        rss, anon, cpu = {}, {}, {}
        for pid, proc in list(self.procs.items()):
            try:
                with proc.oneshot():
                    mem = proc.memory_info()
                    rss[str(pid)] = round(mem.rss / MIB, 1)
                    anon[str(pid)] = round((mem.rss - getattr(mem, "shared", 0)) / MIB, 1)
                    cpu[str(pid)] = round(proc.cpu_percent(None), 1)
            except psutil.Error:
                del self.procs[pid]
        return rss, anon, cpu


# -- the run ---------------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, bundle: Bundle, data: Dataset | None, data_dir: Path, work: Path,
         log: Callable[[str], None]) -> dict[str, Any]:
    rows, events_from = event_rows(bundle, data)
    catalog = set(bundle.items()["item_id"].astype(str))
    seconds = args.minutes * 60
    warmup = min(args.warmup_seconds, seconds / 2)
    settings = Settings.from_env({"STYLESTREAM_HOME": str(work)}, bundle=bundle.folder, dataset=data_dir,
                                 serve_port=free_port(), ray_dashboard_port=free_port(), log_level="WARNING",
                                 recommender="serving", gate="open")  # every event offered to the LLM path
    result: dict[str, Any] = {
        "config": {"minutes": args.minutes, "rate": args.rate, "malformed_share": args.malformed_share,
                   "duplicate_share": args.duplicate_share, "warmup_seconds": warmup,
                   "sample_seconds": args.sample_seconds, "events": events_from,
                   "recommender": "serving (gate open: the LLM path over Ray Serve for every event, the "
                                  "last-title fast path when it is late)",
                   "catalog_items": len(catalog), "malformations": list(MALFORMATIONS),
                   **{k: getattr(settings, k) for k in ("broker", "topic_partitions", "trigger_every_clicks",
                                                        "trigger_idle_seconds", "serving_timeout_ms",
                                                        "serving_max_in_flight", "stream_batch_max_events",
                                                        "gen_max_replicas", "gen_max_batch_size")}},
    }
    samples: list[dict[str, Any]] = []
    result["samples"] = samples
    t_start = time.monotonic()
    with DevStack(settings) as stack:
        bootstrap = stack.start_broker()
        log(f"broker at {bootstrap}")
        stack.start_milvus()
        log(f"Milvus at {stack.milvus_uri}; starting Ray Serve (indexing the bundle)")
        stack.start_serving()
        log(f"Serve at {stack.serving_url}")
        try:
            stack.start_indexer()
            result["indexer"] = "started"
        except Exception as exc:  # noqa: BLE001 - the soak goes on without it, and says so
            result["indexer"] = f"not started: {str(exc)[:300]}"
        log(f"indexer: {result['indexer']}")
        try:
            worker = stack.start_worker(timeout=300)
        except RuntimeError as exc:  # seen once on a loaded machine: exit -14 (SIGALRM) during start-up
            result["worker_start_failures"] = [str(exc)[-600:]]
            log(f"stream worker did not start ({str(exc)[:120]}); trying once more")
            worker = stack.start_worker(timeout=300)
        result["stack_start_s"] = round(time.monotonic() - t_start, 1)
        log(f"stream worker pid {worker.proc.pid} ready (web {worker.web_port}); stack up in "
            f"{result['stack_start_s']} s")

        def roles() -> dict[int, str]:
            out = {}
            if stack.broker is not None and stack.broker.proc is not None:
                out[stack.broker.proc.pid] = f"broker ({stack.broker.kind})"
            if stack.milvus is not None and stack.milvus.proc is not None:
                out[stack.milvus.proc.pid] = "milvus lite server"
            for w in stack.workers:
                out[w.proc.pid] = f"stream {w.worker_id}"
            if stack.indexer is not None:
                out[stack.indexer.proc.pid] = "indexer"
            return out

        procs = ProcessWatch(roles)
        committed = CommittedLag(bootstrap)
        reader = RecsReader(bootstrap, catalog)
        reader.start()
        reader.ready.wait(30)
        counts = SendCounts()
        stop = threading.Event()
        source = EventSource(rows, args.malformed_share, args.duplicate_share)
        producer = threading.Thread(target=produce, name="producer", daemon=True,
                                    args=(bootstrap, source, args.rate, seconds, counts, stop))
        lag_source = {"metrics": False}

        def take_sample(phase: str) -> dict[str, Any]:
            now = time.monotonic()
            try:
                stats = worker.stats()
            except OSError as exc:
                stats = {"error": repr(exc)[:200]}
            by_metrics = metrics_lag(worker.web_port)
            by_commit = committed.sample()
            lag_source["metrics"] |= by_metrics is not None
            rss, anon, cpu = procs.sample()
            sample = {
                "t": round(now - (counts.started or now), 1), "phase": phase, "sent": counts.total,
                "stats": {k: stats.get(k) for k in ("received", "processed", "duplicates", "dead_lettered",
                                                    "recs_published", "recs_by_path", "recs_pending", "error")
                          if k in stats},
                "lag_max": max(by_metrics.values(), default=0) if by_metrics is not None else None,
                "lag_committed_max": max(by_commit.values(), default=0) if by_commit is not None else None,
                "lag_total": sum(by_metrics.values()) if by_metrics is not None else None,
                "lag_committed_total": sum(by_commit.values()) if by_commit is not None else None,
                "lag_by_partition": by_metrics if by_metrics is not None else by_commit,
                "recs_read": reader.total, "rss_mib": rss, "anon_rss_mib": anon, "cpu_pct": cpu,
                "cpu_total_pct": psutil_cpu_total(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            }
            samples.append(sample)
            return sample

        take_sample("before")
        producer.start()
        log(f"sending {args.rate:g} events/s for {seconds:.0f} s (warm-up {warmup:.0f} s)")
        next_at = time.monotonic()
        while producer.is_alive():
            next_at += args.sample_seconds
            producer.join(max(0.0, next_at - time.monotonic()))
            s = take_sample("warm-up" if time.monotonic() - counts.started < warmup else "steady")
            if len(samples) % max(1, int(30 / args.sample_seconds)) == 0:
                st = s["stats"]
                log(f"t={s['t']:.0f}s sent {s['sent']:,} received {st.get('received')} lag {s['lag_max']} "
                    f"(committed {s['lag_committed_max']}) recs {s['recs_read']:,} "
                    f"rss total {sum(s['rss_mib'].values()):,.0f} MiB")
        samples[-1]["phase"] = "end of sending"
        end_of_sending = len(samples) - 1
        sent = counts.by_kind()
        log(f"sent {sent['total']:,} in {counts.finished - counts.started:.1f} s; draining")

        # drain: everything sent received, nothing pending, every rec read back
        deadline = time.monotonic() + args.drain_timeout
        drained = False
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                st = worker.stats()
            except OSError:
                continue
            if st["received"] >= sent["total"] and st["recs_pending"] == 0 and reader.total >= st["recs_published"]:
                drained = True
                break
            if time.monotonic() - samples[-1]["t"] - counts.started >= args.sample_seconds:
                take_sample("drain")
        take_sample("drained" if drained else "drain timed out")
        drain_s = round(time.monotonic() - counts.finished, 1)
        # idle triggers may still publish after this: read back at least what was published by now
        final = worker.stats()
        wait_until_true(lambda: reader.total >= final["recs_published"], 30)
        reader.stop_event.set()
        reader.join(10)
        dlq_records = sum(committed.ends(DLQ).values())
        in_topics = sum(committed.ends(CLICKS, PURCHASES).values())
        committed.close()
        result["processes"] = {str(pid): label for pid, label in sorted(procs.labels.items())}
        result["serving_status"] = final.get("serving")
        log(f"drained: {drained} in {drain_s} s; stopping the stack")
    result["wall_seconds"] = round(time.monotonic() - t_start, 1)
    result.update(summarise(args, samples, end_of_sending, warmup, counts, sent, final, reader.summary(),
                            drained, drain_s, dlq_records, in_topics, lag_source["metrics"], committed.error))
    return result


def wait_until_true(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def psutil_cpu_total() -> float:
    import psutil

    return round(psutil.cpu_percent(None), 1)


def summarise(args: argparse.Namespace, samples: list[dict[str, Any]], end_i: int, warmup: float,
              counts: SendCounts, sent: dict[str, Any], final: dict[str, Any], recs: dict[str, Any],
              drained: bool, drain_s: float, dlq_records: int, in_topics: int, lag_from_metrics: bool,
              lag_error: str) -> dict[str, Any]:
    send_s = counts.finished - counts.started
    sending = [s for s in samples[: end_i + 1] if s["phase"] != "before"]
    steady = [s for s in sending if s["t"] >= warmup] or sending[-1:]
    end = samples[end_i]

    # rate: overall, and over each sample interval after the warm-up
    interval = [(b["sent"] - a["sent"]) / (b["t"] - a["t"]) for a, b in itertools.pairwise(steady) if b["t"] > a["t"]]
    rate = {"target": args.rate, "achieved": round(sent["total"] / send_s, 1) if send_s else None,
            "send_seconds": round(send_s, 1),
            "steady_interval_min": round(min(interval), 1) if interval else None,
            "steady_interval_max": round(max(interval), 1) if interval else None}
    rate["held"] = bool(rate["achieved"] and rate["achieved"] >= 0.98 * args.rate)

    key = "lag_max" if lag_from_metrics else "lag_committed_max"
    total_key = "lag_total" if lag_from_metrics else "lag_committed_total"
    lags = [(s["t"], s[key]) for s in steady if s[key] is not None]
    slope = float(np.polyfit(*np.array(lags).T, 1)[0]) if len(lags) >= 3 else None
    bound = max(1000.0, 10 * args.rate)  # ten seconds of input
    lag = {"source": "worker /metrics stylestream_consumer_lag" if lag_from_metrics else
           "end offsets - committed offsets (kafka-python)",
           "max": max((v for s in sending if (v := s[key]) is not None), default=None),
           "max_after_warmup": max((v for _, v in lags), default=None),
           "final_while_sending": end[key], "after_drain": samples[-1][key],
           "total_max": max((v for s in sending if (v := s[total_key]) is not None), default=None),
           "total_final_while_sending": end[total_key],
           "committed_max": max((v for s in sending if (v := s["lag_committed_max"]) is not None), default=None),
           "committed_after_drain": samples[-1]["lag_committed_max"],
           "slope_after_warmup_per_s": round(slope, 3) if slope is not None else None,
           "bound": bound, "bound_rule": "max after warm-up <= bound and slope x steady seconds <= bound / 2",
           "committed_lag_error": lag_error or None}
    # bounded: never more than ten seconds of input behind after the warm-up, and no trend that
    # would take it half that far again over the steady part of the run
    steady_s = lags[-1][0] - lags[0][0] if lags else 0.0
    lag["bounded"] = bool(lag["max_after_warmup"] is not None and lag["max_after_warmup"] <= bound
                          and (slope is None or slope * steady_s <= bound / 2))

    head, tail = steady[:3], steady[-3:]

    def near(group: list[dict[str, Any]], field: str, pid: str) -> float | None:
        values = [s[field][pid] for s in group if pid in s[field]]
        return round(float(np.median(values)), 1) if len(values) == len(group) else None

    labels = {}
    for s in samples:
        labels.update(s["rss_mib"])
    rss: dict[str, Any] = {}
    for pid in labels:
        series = [(s["t"], s["rss_mib"][pid]) for s in steady if pid in s["rss_mib"]]
        first, last = near(head, "rss_mib", pid), near(tail, "rss_mib", pid)
        entry: dict[str, Any] = {"start_mib": first, "end_mib": last}
        if first is not None and last is not None:
            growth = last - first
            a0, a1 = near(head, "anon_rss_mib", pid), near(tail, "anon_rss_mib", pid)
            if a0 is not None and a1 is not None:
                entry.update(anon_start_mib=a0, anon_end_mib=a1, anon_growth_mib=round(a1 - a0, 1))
            per_min = float(np.polyfit(*np.array(series).T, 1)[0]) * 60 if len(series) >= 3 else None
            entry.update(growth_mib=round(growth, 1), growth_pct=round(100 * growth / first, 1) if first else None,
                         slope_mib_per_min=round(per_min, 2) if per_min is not None else None,
                         flat=bool(growth <= max(16.0, 0.05 * first)))
        else:
            entry["note"] = "started after the warm-up" if first is None else "ended before the end of sending"
        rss[pid] = entry
    total_start = sum(v for e in rss.values() if (v := e["start_mib"]) is not None)
    total_end = sum(v for e in rss.values() if (v := e["end_mib"]) is not None)
    cpu_steady = [s["cpu_total_pct"] for s in steady]

    received, processed = final["received"], final["processed"]
    duplicates, dead = final["duplicates"], final["dead_lettered"]
    reread = final.get("reread", 0)  # deliveries the stream's continuity check dropped: counted in duplicates
    accounting = {
        "sent": sent, "received": received, "processed": processed, "duplicates": duplicates, "dead_lettered": dead,
        "reread": reread, "conserved": received == processed + duplicates + dead,
        "sent_equals_received": sent["total"] == received - reread,
        "events_lost": sent["total"] - (received - reread),
        "records_in_event_topics": in_topics, "in_topics_minus_received": in_topics - received,
        "expected": {"processed": sent["good"], "duplicates": sent["duplicates"], "dead_lettered": sent["malformed"]},
        "as_expected": {"processed": processed == sent["good"], "duplicates": duplicates - reread == sent["duplicates"],
                        "dead_lettered": dead == sent["malformed"]},
        "dlq_records": dlq_records, "drained": drained, "drain_seconds": drain_s,
        "recs_published": final["recs_published"], "recs_by_path_worker": final["recs_by_path"],
    }
    checks = {
        "rate held (>= 98% of target)": rate["held"],
        "lag bounded": lag["bounded"],
        "RSS flat, every process": all(e.get("flat", True) for e in rss.values()),
        "received == processed + duplicates + dead_lettered": accounting["conserved"],
        "sent == received - re-read (0 lost)": accounting["sent_equals_received"],
        "duplicates and dead letters as sent": all(accounting["as_expected"].values()),
        "every rec read back": recs["total"] >= final["recs_published"],
        "0 unknown items recommended": recs["unknown_items_recommended"] == 0,
    }
    return {"checks": checks, "passed": all(checks.values()), "rate": rate, "lag": lag,
            "rss": {"start_at_t": [s["t"] for s in head], "end_at_t": [s["t"] for s in tail],
                    "how": "median of the first 3 samples after the warm-up vs of the last 3 before sending ended "
                           "(RSS swings between samples, a broker's most)", "by_pid": rss,
                    "total_start_mib": round(total_start, 1), "total_end_mib": round(total_end, 1)},
            "cpu_total_pct_steady_mean": round(float(np.mean(cpu_steady)), 1) if cpu_steady else None,
            "accounting": accounting, "recommendations": recs}


# -- output -------------------------------------------------------------------------------------------------


def show(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(132, Console().width))
    a, rate, lag, recs = result["accounting"], result["rate"], result["lag"], result["recommendations"]
    t = Table(title=f"soak: {result['config']['minutes']:g} min at {rate['target']:g} events/s "
                    f"(bundle {result['bundle']}, wall {result['wall_seconds']:.0f} s)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    sent = a["sent"]
    for name, value in (
        ("input rate achieved (events/s)", f"{rate['achieved']} (steady intervals {rate['steady_interval_min']}"
                                           f"-{rate['steady_interval_max']})"),
        ("sent: good / duplicates / malformed", f"{sent['good']:,} / {sent['duplicates']:,} / {sent['malformed']:,}"),
        ("received / processed / duplicates / dead-lettered",
         f"{a['received']:,} / {a['processed']:,} / {a['duplicates']:,} / {a['dead_lettered']:,}"),
        ("re-read by the continuity check (in duplicates)", f"{a.get('reread', 0):,}"),
        ("events lost (sent - (received - re-read))", f"{a['events_lost']:,}"),
        ("events.dlq records", f"{a['dlq_records']:,}"),
        (f"lag max / after warm-up / final / after drain ({'metrics' if 'metrics' in lag['source'] else 'committed'})",
         f"{lag['max']} / {lag['max_after_warmup']} / {lag['final_while_sending']} / {lag['after_drain']}"),
        ("lag, all partitions: max / final", f"{lag['total_max']} / {lag['total_final_while_sending']}"),
        ("lag (committed offsets) max / after drain", f"{lag['committed_max']} / {lag['committed_after_drain']}"),
        ("lag slope after warm-up (records/s)", f"{lag['slope_after_warmup_per_s']}"),
        ("drain after sending (s)", f"{a['drain_seconds']}"),
        ("recs by path (recs.out)", ", ".join(f"{k} {v:,}" for k, v in sorted(recs["by_path"].items()))),
        *((f"latency_ms {path} p50 / p99", f"{v['p50']} / {v['p99']}") for path, v in recs["latency_ms"].items()),
        ("unknown items recommended", f"{recs['unknown_items_recommended']}"),
        ("RSS total start / end (MiB)",
         f"{result['rss']['total_start_mib']:,.0f} / {result['rss']['total_end_mib']:,.0f}"),
        ("CPU total, steady mean (%)", f"{result['cpu_total_pct_steady_mean']}"),
    ):
        t.add_row(name, value)
    console.print(t)
    head, tail = result["rss"]["start_at_t"], result["rss"]["end_at_t"]
    p = Table(title=f"RSS per process (MiB), median of 3 samples: t={head[0]:.0f}-{head[-1]:.0f} s (after warm-up) "
                    f"vs t={tail[0]:.0f}-{tail[-1]:.0f} s (end of sending)")
    p.add_column("process", no_wrap=True, overflow="ellipsis", max_width=50)
    for col in ("pid", "start", "end", "growth", "%", "MiB/min", "anon growth", "flat"):
        p.add_column(col, justify="right")
    for pid, e in sorted(result["rss"]["by_pid"].items(), key=lambda kv: -(kv[1].get("end_mib") or 0)):
        p.add_row(result["processes"].get(pid, "?"), pid, str(e.get("start_mib")), str(e.get("end_mib")),
                  str(e.get("growth_mib", "")), str(e.get("growth_pct", "")), str(e.get("slope_mib_per_min", "")),
                  str(e.get("anon_growth_mib", "")), str(e.get("flat", e.get("note", ""))))
    console.print(p)
    c = Table(title="checks")
    c.add_column("check")
    c.add_column("ok")
    for name, ok in result["checks"].items():
        c.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]")
    console.print(c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to send events")
    ap.add_argument("--rate", type=float, default=300.0, help="events/s sent")
    ap.add_argument("--malformed-share", type=float, default=0.02, help="share of events sent malformed")
    ap.add_argument("--duplicate-share", type=float, default=0.01, help="share of good events sent twice")
    ap.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the demo's, trained if absent)")
    ap.add_argument("--home", type=Path, default=Path(".stylestream"), help="stylestream home of the demo data/bundle")
    ap.add_argument("--warmup-seconds", type=float, default=60.0,
                    help="RSS start is taken this long after sending starts (at most half the run)")
    ap.add_argument("--sample-seconds", type=float, default=5.0, help="sampling interval")
    ap.add_argument("--drain-timeout", type=float, default=300.0, help="longest wait for the worker to catch up")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder (logs, broker data)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or not 0 <= args.malformed_share < 1 or not 0 <= args.duplicate_share < 1:
        ap.error("--minutes and --rate must be positive, the shares in [0, 1)")
    from rich.console import Console

    from stylestream.demo import ensure_bundle, ensure_dataset

    console = Console(stderr=True)
    settings = Settings.from_env(home=args.home, bundle=args.bundle)
    data: Dataset | None = ensure_dataset(settings, 600, 1000, 0, console)
    data_dir = settings.dataset_dir
    if args.bundle is None:
        bundle = ensure_bundle(settings, data, console)
    else:
        bundle = Bundle.load(args.bundle)
        if data is None or bundle.data_hash != data.data_hash():
            console.log(f"bundle {bundle.version} is not of the demo data set: synthetic events over its catalog")
            data = None
    machine = machine_info()

    def log(text: str) -> None:
        console.log(f"[soak] {text}")

    work = Path(tempfile.mkdtemp(prefix="stylestream-bench-soak-"))
    log(f"bundle {bundle.version} ({bundle.folder}); work {work}")
    try:
        result = soak(args, bundle, data, data_dir, work, log)
    except BaseException:
        log(f"failed; logs kept in {work / 'logs'}")
        shutil.rmtree(work / "faust", ignore_errors=True)
        shutil.rmtree(work / "milvus", ignore_errors=True)
        raise
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "soak", "machine": machine, "bundle": bundle.version, **result}
    samples = result.pop("samples")
    result["samples"] = samples  # the time series last, after the figures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    show(result)
    log(f"wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
