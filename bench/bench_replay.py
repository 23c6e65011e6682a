"""Replay of a data set's test period through the whole live path, against the offline
computation: ``stylestream replay --evaluate`` as a benchmark.

By default the H&M sample (``../shared/data/hm-sample``, imported on the spot) with a bundle
trained by the demo's recipe (MiniLM, 3 LoRA steps of the real SmolLM2; cached under
``--work``): a seeded sample of ``--users`` shoppers who buy in the test period, their earlier
events as warm-up, then their test events with a recommendation at every event
(``--trigger every-event``) so every purchase is preceded by one. The report (Markdown, PNG,
JSON) goes to ``bench/results/reports/replay-<dataset>/``; its figures to
``bench/results/replay_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_info  # noqa: E402

from models.bundle import Bundle, BundleError  # noqa: E402
from models.data import Dataset  # noqa: E402
from stylestream.config import Settings  # noqa: E402
from stylestream.devstack.processes import free_port  # noqa: E402
from stylestream.replay_eval import run_replay_evaluation  # noqa: E402

HM_SAMPLE = ROOT.parent / "shared" / "data" / "hm-sample"


def dataset(name: str, work: Path) -> tuple[Dataset, Path]:
    folder = work / "data" / name
    if (folder / "manifest.json").is_file():
        return Dataset.load(folder), folder
    if name == "hm-sample":
        from models.data.hm import import_hm_sample

        data = import_hm_sample(HM_SAMPLE).dataset
    else:
        from models.data.synth import synthesize

        data = synthesize(users=600, items=1000, seed=0)
    data.save(folder)
    return Dataset.load(folder), folder


def bundle_for(data: Dataset, settings: Settings, folder: Path) -> Bundle:
    from models.train import train_bundle
    from stylestream.demo import demo_training

    try:
        bundle = Bundle.load(folder)
        if bundle.data_hash == data.data_hash():
            return bundle
    except BundleError:
        pass
    print(f"[bench] training a bundle for {data.name} into {folder} (demo recipe)", flush=True)
    t0 = time.perf_counter()
    bundle = train_bundle(data, demo_training(settings), folder, progress=True)
    print(f"[bench] trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return bundle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="hm-sample", choices=("hm-sample", "synth"))
    ap.add_argument("--bundle", type=Path, default=None, help="bundle of that data set (default: trained, cached)")
    ap.add_argument("--work", type=Path, default=Path(".stylestream/bench-replay"), help="data, bundle, stack home")
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--trigger", default="every-event", choices=("every-event", "live"))
    ap.add_argument("--speed", type=float, default=0.0)
    ap.add_argument("--max-pending", type=int, default=4)
    ap.add_argument("--deadline-ms", type=float, default=30_000.0, help="the stream's deadline for an LLM answer")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data, data_dir = dataset(args.dataset, args.work)
    settings = Settings.from_env({"STYLESTREAM_HOME": str(args.work / "home")}, dataset=data_dir,
                                 serving_timeout_ms=args.deadline_ms, serving_max_in_flight=args.max_pending,
                                 gen_max_replicas=1, serve_port=free_port(), ray_dashboard_port=free_port())
    bundle = Bundle.load(args.bundle) if args.bundle else bundle_for(data, settings, args.work / f"bundle-{data.name}")
    out = args.results / "reports" / f"replay-{data.name}"
    t0 = time.perf_counter()
    result = run_replay_evaluation(settings, data, data_dir, bundle.folder, out, speed=args.speed, users=args.users,
                                   trigger=args.trigger, max_pending=args.max_pending)
    figures = {"benchmark": f"replay_{data.name}", "machine": machine_info(), "wall_seconds":
               round(time.perf_counter() - t0, 1), "report": str(out.relative_to(ROOT)), **asdict(result)}
    path = args.results / f"replay_{data.name}.json"
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"[bench] {json.dumps({k: v for k, v in figures.items() if k not in ('machine',)}, default=str)[:3000]}")
    print(f"[bench] wrote {path} and {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
