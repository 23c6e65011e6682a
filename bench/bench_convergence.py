"""LoRA training to convergence: the evaluation's LLM, trained exactly as ``stylestream eval``
(and ``bench_quality.py``) trains it, with the validation period held out.

Every ``--lora-eval-every`` steps the answer loss on validation-period prompts is taken; the
run stops once it has not improved for ``--lora-patience`` evaluations and keeps the best
adapter.  Per data set it writes ``bench/results/lora_convergence_<name>_<device>.json``
(seconds per step, step and training seconds to the best held-out loss, both loss curves)
and, with ``--pack DIR``, ``DIR/<name>-lora.tar.gz`` (adapter + manifest, a few MB) that
``bench_quality.py --lora-runs`` evaluates on another machine: train on a GPU, evaluate
anywhere.  The data set must be the same (its hash is checked).

With ``--answers`` the tuned model also writes its answers (:mod:`models.answers`) for the
validation events and the test events the evaluation will score (``--llm-test-events``; 0:
every one), with the served generation code on this machine's device, into the run's folder
(and pack): on a GPU that is every test event in minutes, where the CPU manages ~1 s each.

    python bench/bench_convergence.py --help
"""

from __future__ import annotations

import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_quality import build_parser, config_for, load_dataset, start  # noqa: E402
from machine import machine_info  # noqa: E402

from models.answers import Answers, generate_answers  # noqa: E402
from models.evaluate import llm_sample, test_events  # noqa: E402
from models.llm.base_model import resolve_device  # noqa: E402
from models.sasrec import train_sasrec  # noqa: E402
from models.train import tune_llm, validation_events  # noqa: E402

DEFAULTS = {"lora_steps": 3000, "lora_batch": 16, "lora_eval_every": 25, "lora_patience": 4}


def run_one(name: str, args: Any, pack: Path | None) -> dict[str, Any]:
    device = resolve_device(args.lora_device)
    data = load_dataset(name, args)
    cfg = config_for(name, args)
    work = Path(cfg.work_dir)
    costs: dict[str, Any] = {}
    t0 = time.perf_counter()
    if args.sasrec:
        costs["sasrec"] = fit_sasrec(data, cfg, work / "lora" / "sasrec", args.sasrec_dropouts)
    tuned = tune_llm(data, cfg, work, progress=True, costs=costs)
    out = {"benchmark": "lora_convergence", "dataset": name, "data_hash": data.data_hash(),
           "wall_seconds": round(time.perf_counter() - t0, 1),
           "machine": machine_info(device),
           "model_version": tuned["model_version"], "hyper_parameters": tuned["hyper_parameters"],
           **costs}
    path = args.results / f"lora_convergence_{name}_{device.type}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    best = costs.get("lora_best_step")
    print(f"[bench] {name}: {costs['lora_steps']} steps at {costs['lora_seconds_per_step']:.3f} "
          f"s/step on {out['machine']['gpu'] or device.type}; best validation loss at step {best} "
          f"after {costs.get('lora_seconds_to_best')} s; converged={costs['lora_converged']}; "
          f"wrote {path}", flush=True)
    if args.answers:
        write_answers(data, cfg, tuned, work / "lora" / "answers.json", args.gen_batch)
    if args.base_answers:
        write_base_answers(data, cfg, work / "lora" / "answers_base.json", args.gen_batch)
    if pack is not None:
        pack.mkdir(parents=True, exist_ok=True)
        with tarfile.open(pack / f"{name}-lora.tar.gz", "w:gz") as tar:
            tar.add(work / "lora" / "adapter", arcname=f"{name}/adapter")
            tar.add(work / "lora" / "manifest.json", arcname=f"{name}/manifest.json")
            if args.answers:
                tar.add(work / "lora" / "answers.json", arcname=f"{name}/answers.json")
            if args.base_answers:
                tar.add(work / "lora" / "answers_base.json", arcname=f"{name}/answers_base.json")
            if args.sasrec:
                tar.add(work / "lora" / "sasrec", arcname=f"{name}/sasrec")
    return out


def fit_sasrec(data: Any, cfg: Any, folder: Path, dropouts: str) -> list[dict[str, Any]]:
    """SASRec at each dropout (on this machine's device); the best on validation is kept."""
    from dataclasses import replace

    tried, best = [], None
    for p in (float(x) for x in dropouts.split(",")):
        model = train_sasrec(data, replace(cfg.sasrec, dropout=p, device="auto"), progress=True)
        m = model.manifest
        tried.append({"dropout": p, "best_epoch": m["best_epoch"], "train_seconds": m["train_seconds"],
                      "val_recall@10": m.get("val_recall@10")})
        print(f"[bench] SASRec dropout {p}: val R@10 {m.get('val_recall@10')} at epoch "
              f"{m['best_epoch']} ({m['train_seconds']} s)", flush=True)
        if best is None or (m.get("val_recall@10") or 0) > (best.manifest.get("val_recall@10") or 0):
            best = model
    assert best is not None
    best.save(folder)
    return tried


def write_answers(data: Any, cfg: Any, tuned: dict[str, Any], path: Path, batch_size: int) -> None:
    """The tuned model's answers for the validation and the evaluation's LLM test events."""
    from models.llm.generate import GenerationTotals, Generator

    generator = Generator(Path(tuned["merged_dir"]), device=cfg.lora_device)
    answers = Answers(tuned["model_version"], data.data_hash())
    t0 = time.perf_counter()
    totals = GenerationTotals()
    val = validation_events(data, cfg)
    answers.val = generate_answers(generator, data.items, val, cfg.max_history, cfg.max_new_tokens,
                                   batch_size, totals)
    events = llm_sample(test_events(data, cfg), cfg)
    answers.test = generate_answers(generator, data.items, events, cfg.max_history, cfg.max_new_tokens,
                                    batch_size, totals)
    answers.costs = {"device": str(generator.device), "answers": totals.n, "batch_size": batch_size,
                     "seconds": round(time.perf_counter() - t0, 1), "tokens": totals.tokens,
                     "tokens_per_s": round(totals.tokens_per_s, 1),
                     "malformed_rate": round(totals.malformed_rate, 4)}
    answers.save(path)
    print(f"[bench] answers: {len(answers.val)} validation + {len(answers.test)} test in "
          f"{answers.costs['seconds']} s on {generator.device} ({answers.costs['tokens_per_s']} tok/s)",
          flush=True)


def write_base_answers(data: Any, cfg: Any, path: Path, batch_size: int) -> None:
    """The untrained base model's answers for the validation events: what the LoRA adds to
    the generated query is measured against these (``bench/query_quality.py``)."""
    from models.llm.generate import GenerationTotals, Generator

    generator = Generator(Path(cfg.base_model), device=cfg.lora_device)
    answers = Answers("untrained-base", data.data_hash())
    totals = GenerationTotals()
    t0 = time.perf_counter()
    answers.val = generate_answers(generator, data.items, validation_events(data, cfg), cfg.max_history,
                                   cfg.max_new_tokens, batch_size, totals)
    answers.costs = {"device": str(generator.device), "answers": totals.n,
                     "seconds": round(time.perf_counter() - t0, 1),
                     "malformed_rate": round(totals.malformed_rate, 4)}
    answers.save(path)
    print(f"[bench] untrained answers: {len(answers.val)} validation in {answers.costs['seconds']} s",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, default=None,
                        help="write <pack>/<name>-lora.tar.gz (adapter + manifest) per data set")
    parser.add_argument("--sasrec", action="store_true",
                        help="also train SASRec here (GPU when there is one) and pack it")
    parser.add_argument("--sasrec-dropouts", default="0.2,0.5",
                        help="SASRec dropouts tried with --sasrec; the best on validation is kept")
    parser.add_argument("--answers", action="store_true",
                        help="also generate the answers for validation and the LLM test events")
    parser.add_argument("--base-answers", action="store_true",
                        help="also the untrained base model's answers for the validation events")
    parser.set_defaults(**DEFAULTS)
    args = parser.parse_args(argv)
    for name in start(args):
        run_one(name, args, args.pack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
