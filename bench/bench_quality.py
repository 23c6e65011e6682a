"""Quality benchmark: the full offline evaluation with the real SmolLM2, per data set.

Data sets: ``synth`` (``synthesize(users=600, items=1000, seed=0)``); ``hm-sample`` (the real
H&M sample in ``../shared/data/hm-sample``, every purchase with the whole catalogue's text);
``amazon-clothing`` and ``amazon-clothing-loo`` (Amazon Clothing, Shoes and Jewelry 2014,
5-core with titles, in ``../shared/data/amazon-clothing-2014``: the temporal split and
leave-one-out). For each it runs :func:`models.evaluate.evaluate` (SASRec, both title
encoders, LoRA-tuned SmolLM2-135M-Instruct generating next-item titles, mix-up with its
fusion and repeat term chosen on validation, the content and last-title baselines, paired
bootstrap differences) and writes ``bench/results/quality_<name>.json`` plus the report
folder ``bench/results/reports/<name>/`` (report.md, metrics.json, manifest.json, PNG charts).

The systems that need no LLM score every test purchase; the LLM systems a seeded sample of
``--llm-test-events`` (2,000 by default). With ``--lora-runs DIR`` the parts trained on a
GPU box by ``bench_convergence.py --sasrec --answers --pack`` are used: the LoRA adapter,
SASRec and the answers for the validation and test events (then every test event is
scored with the LLM). Large artefacts (merged model, ONNX export) go under
``--home``/eval-work/<name>, not into bench/results; nothing is downloaded.

    python bench/bench_quality.py --help
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_info  # noqa: E402

from models.data import Dataset  # noqa: E402
from models.evaluate import ENCODERS, EvalConfig, run_evaluation  # noqa: E402
from models.sasrec import SASRecConfig  # noqa: E402

DATASETS = ("synth", "hm-sample", "amazon-clothing", "amazon-clothing-loo")
HM_SAMPLE = ROOT.parent / "shared" / "data" / "hm-sample"
AMAZON = ROOT.parent / "shared" / "data" / "amazon-clothing-2014"
AMAZON_FILES = ("Clothing_Shoes_and_Jewelry_2014.jsonl.gz", "meta_Clothing_Shoes_and_Jewelry_2014.jsonl.gz")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The options of a quality run (shared with bench_convergence.py)."""
    p = argparse.ArgumentParser(description=description or __doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", default="synth,hm-sample",
                   help=f"comma-separated, some of: {', '.join(DATASETS)}")
    p.add_argument("--home", type=Path, default=ROOT / ".stylestream",
                   help="stylestream home: SmolLM2 is materialised (once) under home/models/base")
    p.add_argument("--base-model", type=Path, default=None,
                   help="a local HF causal-LM folder instead of SmolLM2")
    p.add_argument("--hm-dir", type=Path, default=HM_SAMPLE, help="the H&M sample folder")
    p.add_argument("--amazon-dir", type=Path, default=AMAZON,
                   help="the Amazon Clothing 2014 folder (amazon-clothing: temporal split; "
                        "amazon-clothing-loo: leave-one-out)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--encoders", default="minilm,lstm", help="title encoders")
    p.add_argument("--engine", choices=("torch", "onnx"), default="onnx",
                   help="generation engine (ONNX Runtime is ~3x faster on CPU)")
    p.add_argument("--lora-steps", type=int, default=40)
    p.add_argument("--lora-batch", type=int, default=4)
    p.add_argument("--lora-max-length", type=int, default=256)
    p.add_argument("--lora-lr", type=float, default=5e-4)
    p.add_argument("--lora-eval-every", type=int, default=0,
                   help="validation-period loss every N LoRA steps (0: none)")
    p.add_argument("--lora-patience", type=int, default=0,
                   help="stop LoRA after N evaluations without improvement (0: never)")
    p.add_argument("--lora-device", default="auto", help="LoRA training device")
    p.add_argument("--lora-runs", type=Path, default=None,
                   help="folder with a finished LoRA run per data set (<folder>/<name>/: adapter/ "
                        "+ manifest.json, e.g. from bench_convergence.py on a GPU) to use "
                        "instead of training here")
    p.add_argument("--answers", type=Path, default=None,
                   help="an answers file (models/answers.py) for the LLM systems, made by ANOTHER LoRA run than "
                        "the one trained here (say bench/results/answers_lora500_amazon-clothing-loo.json, from "
                        "an H200); the report records which run made them. One data set only")
    p.add_argument("--max-history", type=int, default=8, help="history events in a prompt")
    p.add_argument("--max-val-events", type=int, default=48)
    p.add_argument("--max-test-events", type=int, default=0,
                   help="test purchases scored by the systems that need no LLM (0: every one)")
    p.add_argument("--llm-test-events", type=int, default=2000,
                   help="seeded sample of those scored by the LLM systems too (0: every one; "
                        "answers generated elsewhere with --lora-runs cover what they cover)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--lstm-steps", type=int, default=300)
    p.add_argument("--minilm-steps", type=int, default=20)
    p.add_argument("--sasrec-epochs", type=int, default=25)
    p.add_argument("--sasrec-dropout", type=float, default=0.5)
    p.add_argument("--sasrec-batch", type=int, default=64)
    p.add_argument("--sasrec-device", default="cpu", help="SASRec training device (auto: GPU if any)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="",
                   help="a name for this variant: writes quality_<name>_<tag>.json and reports/<name>_<tag> "
                        "beside the default run's instead of over them")
    p.add_argument("--reuse-bundle", action="store_true",
                   help="evaluate the bundle a previous run left in --home/eval-work/<name> instead of "
                        "training a new one (the default retrains: code changes reach the numbers)")
    return p


def load_dataset(name: str, args: argparse.Namespace) -> Dataset:
    if name == "synth":
        from models.data.synth import synthesize

        return synthesize(users=600, items=1000, seed=0)
    if name == "hm-sample":
        from models.data.hm import import_hm_sample

        return import_hm_sample(args.hm_dir).dataset
    if name.startswith("amazon-clothing"):
        from models.data.amazon import import_amazon

        reviews, meta = (args.amazon_dir / f for f in AMAZON_FILES)
        data = import_amazon(reviews, meta, progress=False, name="amazon-clothing").dataset
        return data.with_protocol("leave-one-out" if name.endswith("-loo") else "temporal")
    raise SystemExit(f"unknown data set {name!r}; expected some of {', '.join(DATASETS)}")


def config_for(name: str, args: argparse.Namespace) -> EvalConfig:
    encoders = tuple(e.strip() for e in args.encoders.split(",") if e.strip())
    if any(e not in ENCODERS for e in encoders):
        raise SystemExit(f"--encoders must be some of {', '.join(ENCODERS)}")
    return EvalConfig(
        base_model=args.base_model, home=args.home, work_dir=args.home / "eval-work" / name,
        bundle=args.home / "eval-work" / name / "bundle",  # ~1 GB: never inside bench/results
        title_encoders=encoders, lstm_steps=args.lstm_steps, minilm_steps=args.minilm_steps,
        lora_steps=args.lora_steps, lora_batch_size=args.lora_batch,
        lora_max_length=args.lora_max_length, lora_lr=args.lora_lr,
        lora_eval_every=args.lora_eval_every, lora_patience=args.lora_patience,
        lora_device=args.lora_device,
        lora_run=args.lora_runs / name if args.lora_runs else None, max_history=args.max_history,
        max_val_events=args.max_val_events, max_test_events=args.max_test_events or None,
        llm_test_events=args.llm_test_events or None,
        answers=args.answers or (_answers(args.lora_runs / name) if args.lora_runs else None),
        answers_of_any_llm=args.answers is not None,
        max_new_tokens=args.max_new_tokens, gen_batch_size=args.gen_batch, engine=args.engine,
        sasrec_run=_part(args.lora_runs / name / "sasrec") if args.lora_runs else None,
        seed=args.seed, sasrec=SASRecConfig(epochs=args.sasrec_epochs, dropout=args.sasrec_dropout,
                                            batch_size=args.sasrec_batch, device=args.sasrec_device,
                                            patience=5, seed=args.seed))


def _answers(run: Path) -> Path | None:
    """A LoRA run's answers file (bench_convergence.py --answers), when it has one."""
    return _part(run / "answers.json")


def _part(path: Path) -> Path | None:
    """A part trained elsewhere (bench_convergence.py on a GPU), when the run folder has it."""
    return path if path.exists() else None


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"[bench] {name}: loading data", flush=True)
    machine = machine_info("cpu")
    t0 = time.perf_counter()
    data = load_dataset(name, args)
    cfg = config_for(name, args)
    if not getattr(args, "reuse_bundle", False) and cfg.bundle is not None:
        (Path(cfg.bundle) / "bundle.json").unlink(missing_ok=True)  # train afresh
    label = f"{name}_{args.tag}" if getattr(args, "tag", "") else name
    report_dir = args.results / "reports" / label
    result = run_evaluation(data, cfg, report_dir, progress=True)
    out = {
        "benchmark": "quality", "dataset": name, "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": {**machine, "load_avg_end": os.getloadavg(),
                    "note": "shared machine: other processes may compete for the cores"},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "report_dir": str(report_dir), **result.to_json(),
    }
    path = args.results / f"quality_{label}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"[bench] {name}: {out['wall_seconds']:.0f} s; wrote {path}", flush=True)
    for system, m in result.systems.items():
        lo, hi = m["recall@10_ci"]
        print(f"  {system:22s} R@10 {m['recall@10']:.4f} [{lo:.3f}, {hi:.3f}]  "
              f"NDCG@10 {m['ndcg@10']:.4f}  MRR {m['mrr']:.4f}", flush=True)
    return out


def start(args: argparse.Namespace) -> list[str]:
    """Logging on, results folder made; the data set names asked for (unknown ones: exit)."""
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown data set(s) {unknown}; expected some of {', '.join(DATASETS)}")
    args.results.mkdir(parents=True, exist_ok=True)
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in start(args):
        run_one(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
