"""The fuzzing, as a bench run: the property tests' strategies at ``--scale`` times their CI
counts, freshly random, and a seeded mix of good and malformed events through a live worker.

1. Property runs: hypothesis (``tests/fuzz_records.py``) drives ``parse_event``,
   ``parse_catalog_update`` and ``RecommendBody`` with ``--scale`` x the CI count of cases
   (events 7,000; catalog 3,000; ``/recommend`` bodies 2,000; raw bytes 1,000), not
   derandomised, no example database. Every case is tallied: accepted or refused, refusals by
   reason class; the tests' invariants are checked (an accepted record is bounded, a refusal
   is one line, its dead letter < 100 KiB) and any other exception counts as a crash (expected
   0). Failures are tallied, not raised, so a run always finishes; the first few failing
   examples are kept whole in the JSON. Each run is split over ``--jobs`` processes (shards of
   independent random runs; hypothesis spends most of a case drawing it, on one core).
2. Live mix: an embedded broker and one stream worker (baseline recommender, no click or idle
   triggers) get ``event_mix(--live-total, --live-malformed, users=500)`` from a kafka-python
   producer. Once the worker's ``/stats/`` shows every record received: its counters, whether
   ``received == processed + duplicates + dead_lettered``, expected vs actual dead letters,
   duplicates and events.dlq reasons (the expected reasons are ``parse_event``'s own for each
   malformed record sent), events/s, and 50 sampled shoppers' sequences hold only good events.

Figures are printed (rich) and written to ``bench/results/fuzz.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from fuzz_records import catalog_records, event_mix, event_records, recommend_bodies  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from serving.schemas import MAX_ID, MAX_K, RecommendBody  # noqa: E402
from streams.sequence_table import UserSequence  # noqa: E402
from stylestream.records import (  # noqa: E402
    CATALOG,
    CLICKS,
    DLQ,
    EVENT_TS_MAX,
    EVENT_TS_MIN,
    ID_MAX_BYTES,
    ITEM_ID_MAX_BYTES,
    PURCHASES,
    TITLE_MAX_BYTES,
    BadRecord,
    DeadLetter,
    parse_catalog_update,
    parse_event,
)

CI_COUNTS = {"events": 7_000, "catalog": 3_000, "bodies": 2_000, "raw_bytes": 1_000}
KEEP_EXAMPLES = 5  # failing examples kept per run and kind
EXAMPLE_CHARS = 2_000


# ---- reason classes -------------------------------------------------------------------------

def reason_class(reason: str) -> str:
    """A refusal's class: the reason up to its first ':', the field for ``invalid record: <field>: ...``;
    reasons that carry the record's values before any ':' are named by their fixed words."""
    if reason.startswith("invalid record: "):
        return "invalid record: " + reason.removeprefix("invalid record: ").split(":", 1)[0]
    if reason.startswith("key "):
        return "key does not match " + ("item_id" if " does not match item_id " in reason else "user_id")
    if reason.startswith("record of "):
        return "record over 16 KiB"
    return reason.split(":", 1)[0]


def body_reason_class(exc: ValidationError) -> str:
    """A 422's class: the first error's field (list indices left out); ``body`` for a non-object."""
    loc = exc.errors()[0]["loc"] if exc.errors() else ()
    return ".".join(str(p) for p in loc if not isinstance(p, int)) or "body (not an object)"


# ---- one case: (outcome, reason class, failure) ---------------------------------------------

def _bounded(text: str | None, limit: int) -> bool:
    return text is None or len(text.encode("utf-8", "surrogatepass")) <= limit


def _refusal_problem(reason: str, topic: str, value: bytes | None) -> str | None:
    if not reason or "\n" in reason or len(reason) >= 2_000:
        return f"refusal reason not one short line: {reason[:300]!r}"
    size = len(DeadLetter.of(topic, 0, 0, value, reason).to_bytes())
    if size >= 100 * 1024:
        return f"dead letter of {size} bytes (limit 100 KiB)"
    return None


def _event_problem(event: Any, topic: str, key: bytes | None) -> str | None:
    checks = {
        "ts finite and 1990..2100": math.isfinite(event.ts) and EVENT_TS_MIN <= event.ts <= EVENT_TS_MAX,
        "event_id/user_id <= 128 bytes": _bounded(event.event_id, ID_MAX_BYTES) and _bounded(event.user_id,
                                                                                             ID_MAX_BYTES),
        "session_id <= 128 bytes": _bounded(getattr(event, "session_id", None), ID_MAX_BYTES),
        "query <= 1024 bytes": _bounded(getattr(event, "query", None), TITLE_MAX_BYTES),
        "item_id <= 256 bytes": _bounded(event.item_id, ITEM_ID_MAX_BYTES),
        "ids non-empty": bool(event.event_id and event.user_id and event.item_id),
        "key == user_id": key is not None and key.decode(errors="replace") == event.user_id,
    }
    if failed := [name for name, ok in checks.items() if not ok]:
        return "accepted out of bounds: " + ", ".join(failed)
    seq = UserSequence()
    if not seq.add(event, 50, (topic, 0, 0)):
        return "a first event was not added to an empty sequence"
    json.dumps(seq.to_dict(), allow_nan=False)  # raises (a crash) if the table value is not strict JSON
    return None


def case_event(record: tuple) -> tuple[str, str, str | None]:
    topic, key, value = record
    try:
        event = parse_event(topic, value, key)
    except BadRecord as exc:
        return "refused", reason_class(str(exc)), _refusal_problem(str(exc), topic, value)
    return "accepted", "", _event_problem(event, topic, key)


def case_raw_bytes(record: tuple) -> tuple[str, str, str | None]:
    return case_event(record)


def case_catalog(record: tuple) -> tuple[str, str, str | None]:
    key, value = record
    try:
        update = parse_catalog_update(value, key)
    except BadRecord as exc:
        return "refused", reason_class(str(exc)), _refusal_problem(str(exc), CATALOG, value)
    checks = {
        "ts finite and >= 0": math.isfinite(update.ts) and update.ts >= 0,
        "price finite and >= 0": update.price is None or (math.isfinite(update.price) and update.price >= 0),
        "item_id <= 256 bytes": _bounded(update.item_id, ITEM_ID_MAX_BYTES),
        "title <= 1024 bytes": _bounded(update.title, TITLE_MAX_BYTES),
        "key == item_id": key is None or key.decode(errors="replace") == update.item_id,
    }
    failed = [name for name, ok in checks.items() if not ok]
    return "accepted", "", ("accepted out of bounds: " + ", ".join(failed)) if failed else None


def case_body(body: object) -> tuple[str, str, str | None]:
    try:
        request = RecommendBody.model_validate(body)
    except ValidationError as exc:
        return "refused", body_reason_class(exc), None if exc.errors() else "a 422 that names nothing"
    checks = {
        "user_id 1..128": 0 < len(request.user_id) <= MAX_ID,
        "k 1..100": 1 <= request.k <= MAX_K,
        "history non-empty": bool(request.history),
        "history item_id 1..256": all(0 < len(e.item_id) <= ITEM_ID_MAX_BYTES for e in request.history),
        "history kind click/purchase": all(e.kind in ("click", "purchase") for e in request.history),
        "history ts finite": all(e.ts is None or math.isfinite(e.ts) for e in request.history),
    }
    failed = [name for name, ok in checks.items() if not ok]
    return "accepted", "", ("accepted out of bounds: " + ", ".join(failed)) if failed else None


CASES = {"events": (case_event, lambda: (event_records(),)),
         "catalog": (case_catalog, lambda: (catalog_records(),)),
         "bodies": (case_body, lambda: (recommend_bodies,)),
         "raw_bytes": (case_raw_bytes, lambda: (st.tuples(st.sampled_from([CLICKS, PURCHASES]),
                                                          st.binary(max_size=16), st.binary(max_size=512)),))}


# ---- a property run (one shard, in its own process) ----------------------------------------

def property_shard(run: str, n: int) -> dict[str, Any]:
    """``n`` hypothesis cases of ``run``, freshly random; every outcome tallied, nothing raised."""
    case, strategies = CASES[run]
    tally: dict[str, Any] = {"cases": 0, "accepted": 0, "refused": 0, "reasons": Counter(), "crashes": 0,
                             "invariant_failures": 0, "examples": []}

    @settings(max_examples=n, derandomize=False, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(*strategies())
    def prop(record: Any) -> None:
        tally["cases"] += 1
        try:
            outcome, reason, problem = case(record)
        except Exception as exc:  # noqa: BLE001 - a crash is what this run looks for
            tally["crashes"] += 1
            _keep(tally, "crash", record, f"{type(exc).__name__}: {exc}")
            return
        tally[outcome] += 1
        if reason:
            tally["reasons"][reason] += 1
        if problem:
            tally["invariant_failures"] += 1
            _keep(tally, "invariant", record, problem)

    t0 = time.perf_counter()
    prop()
    tally["seconds"] = time.perf_counter() - t0
    return tally


def _keep(tally: dict, kind: str, record: Any, what: str) -> None:
    if sum(e["kind"] == kind for e in tally["examples"]) < KEEP_EXAMPLES:
        tally["examples"].append({"kind": kind, "what": what[:EXAMPLE_CHARS], "example": repr(record)[:EXAMPLE_CHARS]})


def property_run(pool: ProcessPoolExecutor, run: str, n: int, jobs: int) -> dict[str, Any]:
    shards = [n // jobs + (i < n % jobs) for i in range(jobs)]
    t0 = time.perf_counter()
    parts = list(pool.map(property_shard, [run] * jobs, shards))
    wall = time.perf_counter() - t0
    reasons: Counter = sum((p["reasons"] for p in parts), Counter())
    cases = sum(p["cases"] for p in parts)
    return {"max_examples": n, "shards": shards, "cases": cases,
            "accepted": sum(p["accepted"] for p in parts), "refused": sum(p["refused"] for p in parts),
            "crashes": sum(p["crashes"] for p in parts),
            "invariant_failures": sum(p["invariant_failures"] for p in parts),
            "wall_seconds": round(wall, 1), "cases_per_s": round(cases / wall, 1),
            "cases_per_s_per_process": round(cases / sum(p["seconds"] for p in parts), 1),
            "refused_by_reason": dict(reasons.most_common()),
            "failing_examples": [e for p in parts for e in p["examples"]]}


# ---- the live mix ---------------------------------------------------------------------------

def tiny_dataset():
    """tests/conftest.py's ``tiny_dataset()``: 30 items in 3 categories, 10 users, enough for the baseline."""
    import pandas as pd

    from models.data import Dataset

    categories = ["tops", "bottoms", "shoes"]
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(30)],
                          "title": [f"{categories[i % 3]} item {i}" for i in range(30)],
                          "category": [categories[i % 3] for i in range(30)]})
    rows = [(f"u{u}", f"i{(u * 7 + j) % 30}", 1_700_000_000 + u * 100 + j, "purchase")
            for u in range(10) for j in range(8)]
    return Dataset(items, pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "kind"]), name="tiny")


def expected_reason(sent: Any) -> str:
    try:
        parse_event(sent.topic, sent.value, sent.key)
    except BadRecord as exc:
        return reason_class(str(exc))
    return "(accepted)"


def read_dlq(bootstrap: str, expect: int, timeout_s: float = 120.0) -> list[dict]:
    """Every dead letter on events.dlq: polled until ``expect`` are in, then 3 s more for any extra."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(DLQ, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    letters: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(letters) < expect and time.monotonic() < deadline:
            for batch in consumer.poll(1000).values():
                letters += [json.loads(m.value) for m in batch]
        extra_until = time.monotonic() + 3
        while time.monotonic() < extra_until:
            for batch in consumer.poll(500).values():
                letters += [json.loads(m.value) for m in batch]
    finally:
        consumer.close()
    return letters


def live_mix(total: int, malformed: int, users: int, timeout_s: float) -> dict[str, Any]:
    from kafka import KafkaProducer

    from stylestream.config import Settings
    from stylestream.devstack import DevStack

    t0 = time.perf_counter()
    mix = event_mix(total, malformed, users=users)
    mix_s = time.perf_counter() - t0
    duplicates = sum(s.duplicate for s in mix)
    expected_reasons = Counter(expected_reason(s) for s in mix if s.malformed)
    home = Path(tempfile.mkdtemp(prefix="stylestream-bench-fuzz-"))
    try:
        data_dir = tiny_dataset().save(home / "data")
        env = {"STYLESTREAM_HOME": str(home / "home"), "STYLESTREAM_DATASET": str(data_dir),
               "STYLESTREAM_BROKER": os.environ.get("STYLESTREAM_BROKER", "noida")}
        with DevStack(Settings.from_env(env, trigger_every_clicks=0, trigger_idle_seconds=0,
                                        log_level="WARNING")) as stack:
            bootstrap = stack.start_broker()
            worker = stack.start_worker()
            producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 * 1024 * 1024)
            t_send = time.perf_counter()
            for sent in mix:
                producer.send(sent.topic, key=sent.key, value=sent.value)
            producer.flush()
            send_s = time.perf_counter() - t_send
            producer.close()
            deadline = time.perf_counter() + timeout_s
            while (stats := worker.stats())["received"] < len(mix) and time.perf_counter() < deadline:
                time.sleep(0.25)
            t_done = time.perf_counter()
            time.sleep(2)  # nothing more may arrive: received must stay == sent
            stats = worker.stats()
            letters = read_dlq(bootstrap, stats["dead_lettered"])
            good_users = sorted({s.key.decode() for s in mix if not s.malformed})
            sample = random.Random(0).sample(good_users, min(50, len(good_users)))
            bad_in_sample = []
            applied = 0
            for user in good_users:
                seq = worker.get(f"/users/{user}/")
                applied += seq.get("n", 0)
                if user in sample:
                    bad_in_sample += [e for e in seq.get("events", [])
                                      if not (len(e[0]) < 32 and 1.8e9 <= e[3] < 1.9e9)]
            alive = worker.proc.poll() is None
    finally:
        shutil.rmtree(home, ignore_errors=True)
    got_reasons = Counter(reason_class(letter.get("error", "")) for letter in letters)
    good = total - malformed
    received, processed = stats["received"], stats["processed"]
    return {"sent": len(mix), "malformed_sent": malformed, "users": users, "malformations": 12,
            "received": received, "processed": processed, "duplicates": stats["duplicates"],
            "dead_lettered": stats["dead_lettered"],
            "conserved": received == processed + stats["duplicates"] + stats["dead_lettered"] == len(mix),
            "dead_letters_expected": malformed, "duplicates_expected": duplicates,
            "processed_expected": good - duplicates,
            "dlq_records": len(letters), "dlq_by_reason": dict(got_reasons.most_common()),
            "dlq_by_reason_expected": dict(expected_reasons.most_common()),
            "dlq_reasons_as_expected": got_reasons == expected_reasons,
            "dlq_letters_cut_to_64KiB": sum(1 for letter in letters if letter.get("raw_bytes")),
            "dlq_from_event_topics": all(letter.get("topic") in (CLICKS, PURCHASES) for letter in letters),
            "events_applied_over_all_users": applied, "users_checked": len(sample),
            "malformed_events_in_sampled_sequences": len(bad_in_sample),
            "worker_alive": alive, "mix_build_s": round(mix_s, 1), "send_s": round(send_s, 1),
            "seconds_to_all_received": round(t_done - t_send, 1),
            "events_per_s": round(received / (t_done - t_send), 1)}


# ---- report ---------------------------------------------------------------------------------

def problems_of(results: dict[str, Any]) -> list[str]:
    problems = []
    for run, r in results["property_runs"].items():
        if r["crashes"] or r["invariant_failures"]:
            problems.append(f"{run}: {r['crashes']} crashes, {r['invariant_failures']} invariant failures")
        if r["cases"] < r["max_examples"]:
            problems.append(f"{run}: {r['cases']} cases run of {r['max_examples']}")
    live = results.get("live_mix")
    if live:
        checks = {"received == sent": live["received"] == live["sent"], "conserved": live["conserved"],
                  "dead letters as expected": live["dead_lettered"] == live["dead_letters_expected"],
                  "duplicates as expected": live["duplicates"] == live["duplicates_expected"],
                  "DLQ reasons as expected": live["dlq_reasons_as_expected"],
                  "DLQ holds every dead letter": live["dlq_records"] == live["dead_lettered"],
                  "applied == processed": live["events_applied_over_all_users"] == live["processed"],
                  "only good events in sequences": live["malformed_events_in_sampled_sequences"] == 0,
                  "worker alive": live["worker_alive"]}
        problems += [f"live mix: not {name}" for name, ok in checks.items() if not ok]
    return problems


def print_report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"property runs (scale {results['scale']}, {results['jobs']} processes)")
    for col in ("run", "cases", "accepted", "refused", "crashes", "invariant failures", "wall s", "cases/s",
                "top refusal classes"):
        table.add_column(col, justify="left" if col in ("run", "top refusal classes") else "right")
    for run, r in results["property_runs"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(r["refused_by_reason"].items())[:4])
        table.add_row(run, f"{r['cases']:,}", f"{r['accepted']:,}", f"{r['refused']:,}", str(r["crashes"]),
                      str(r["invariant_failures"]), f"{r['wall_seconds']:.0f}", f"{r['cases_per_s']:.0f}", top)
    console.print(table)
    live = results.get("live_mix")
    if live:
        table = Table(title="live mix (one worker, embedded broker)")
        table.add_column("figure")
        table.add_column("expected", justify="right")
        table.add_column("actual", justify="right")
        rows = [("received", live["sent"], live["received"]),
                ("processed", live["processed_expected"], live["processed"]),
                ("duplicates", live["duplicates_expected"], live["duplicates"]),
                ("dead-lettered", live["dead_letters_expected"], live["dead_lettered"]),
                ("received == processed + duplicates + dead_lettered", True, live["conserved"]),
                ("events.dlq records", live["dead_letters_expected"], live["dlq_records"]),
                ("events applied (sum of n over all shoppers)", live["processed_expected"],
                 live["events_applied_over_all_users"]),
                (f"malformed events in {live['users_checked']} sampled sequences", 0,
                 live["malformed_events_in_sampled_sequences"]),
                ("events/s (first send to all received)", "", live["events_per_s"])]
        for name in sorted(set(live["dlq_by_reason_expected"]) | set(live["dlq_by_reason"])):
            rows.append((f"  DLQ: {name}", live["dlq_by_reason_expected"].get(name, 0),
                         live["dlq_by_reason"].get(name, 0)))
        for name, want, got in rows:
            table.add_row(name, f"{want:,}" if isinstance(want, int) and not isinstance(want, bool) else str(want),
                          f"{got:,}" if isinstance(got, int) and not isinstance(got, bool) else str(got))
        console.print(table)
    style = "bold red" if results["problems"] else "bold green"
    console.print(f"[{style}]problems: {results['problems'] or 'none'}[/]  wall {results['wall_seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10, help="times the CI count of cases per property run")
    ap.add_argument("--live-total", type=int, default=30_000, help="events in the live mix")
    ap.add_argument("--live-malformed", type=int, default=10_000, help="of which malformed")
    ap.add_argument("--live-users", type=int, default=500, help="shoppers in the live mix")
    ap.add_argument("--live-timeout", type=float, default=900.0, help="seconds to wait for the worker to see all")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes per property run (independent random shards)")
    ap.add_argument("--runs", default=",".join(CI_COUNTS), help="property runs, comma-separated")
    ap.add_argument("--no-live", action="store_true", help="skip the live mix")
    ap.add_argument("--out", type=Path, default=Path("bench/results/fuzz.json"))
    args = ap.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := [r for r in runs if r not in CI_COUNTS]:
        ap.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(CI_COUNTS)}")

    t0 = time.perf_counter()
    results: dict[str, Any] = {"benchmark": "fuzz", "scale": args.scale, "jobs": args.jobs,
                               "ci_counts": CI_COUNTS, "property_runs": {}}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        for run in runs:
            r = property_run(pool, run, CI_COUNTS[run] * args.scale, args.jobs)
            results["property_runs"][run] = r
            print(f"[bench] {run}: {json.dumps({k: v for k, v in r.items() if k != 'refused_by_reason'})[:1500]}",
                  flush=True)
    totals = results["property_runs"].values()
    results["property_cases"] = sum(r["cases"] for r in totals)
    results["property_crashes"] = sum(r["crashes"] for r in totals)
    results["property_invariant_failures"] = sum(r["invariant_failures"] for r in totals)
    results["property_wall_seconds"] = round(time.perf_counter() - t0, 1)
    if not args.no_live:
        results["live_mix"] = live_mix(args.live_total, args.live_malformed, args.live_users, args.live_timeout)
        print(f"[bench] live mix: {json.dumps(results['live_mix'])[:2000]}", flush=True)
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results["problems"] = problems_of(results)
    from machine import machine_info  # torch: imported after the forked shards are done

    results = {"benchmark": "fuzz", "machine": machine_info(), **results}
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"[bench] wrote {args.out}", file=sys.stderr)
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
