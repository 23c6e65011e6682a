"""What Faust's consumer loop spends per record to hand it over, with and without
``stylestream.consumer_fast_path``, on both event loops.

The consumer awaits ``wait_first(callback(message), suspend_flow.wait())`` for every
record; this times that call with a callback that finishes at once (the usual case: the
record fits in the agent's queue) and with one that waits a loop turn.
Figures are printed and written to bench/results/consumer_fast_path.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path


def measure(loop_kind: str, fast: bool, calls: int) -> dict:
    """µs per ``wait_first`` call in a fresh process (a clean loop per measurement)."""
    code = f"""
import asyncio, json, time
from mode import Service
from stylestream import consumer_fast_path

class Probe(Service):  # Faust's Consumer is a mode Service; only wait_first is exercised
    pass

wait_first = consumer_fast_path.wait_first if {fast} else Service.wait_first

async def at_once():
    return None

async def one_turn():
    await asyncio.sleep(0)

async def main():
    probe, flow = Probe(), asyncio.Event()
    out = {{}}
    for name, cb in (("at_once", at_once), ("waits_a_turn", one_turn)):
        for _ in range(200):
            await wait_first(probe, cb(), flow.wait())
        t = time.perf_counter()
        for _ in range({calls}):
            await wait_first(probe, cb(), flow.wait())
        out[name] = (time.perf_counter() - t) / {calls} * 1e6
    print(json.dumps(out))

if {loop_kind == "uvloop"}:
    import uvloop
    uvloop.install()
asyncio.run(main())
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {k: round(v, 2) for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000, help="wait_first calls per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="alternating measurements of each variant (best kept)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/consumer_fast_path.json"))
    args = ap.parse_args()
    results: dict = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
                     "calls": args.calls, "us_per_record": {}}
    for loop_kind in ("aio", "uvloop"):
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):  # alternate, so drift hits both variants alike
            for variant, fast in (("faust", False), ("fast_path", True)):
                got = measure(loop_kind, fast, args.calls)
                prev = best.setdefault(variant, got)
                best[variant] = {k: min(v, prev[k]) for k, v in got.items()}
        ratio = {k: round(best["faust"][k] / best["fast_path"][k], 1) for k in best["faust"]}
        results["us_per_record"][loop_kind] = {**best, "faust_over_fast_path": ratio}
        print(f"{loop_kind:6}  Faust's loop {best['faust']}  fast path {best['fast_path']}  ratio {ratio}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
