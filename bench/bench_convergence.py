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

import gzip
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
from models.train import base_model_path, tune_llm, validation_events  # noqa: E402

DEFAULTS = {"lora_steps": 3000, "lora_batch": 16, "lora_eval_every": 25, "lora_patience": 4}


def run_one(name: str, args: Any, pack: Path | None) -> dict[str, Any]:
    """SASRec, the LoRA adapter, then the answer sets asked for, each packed as it finishes (a
    GPU lease can end mid-run); answer sets beyond the first are skipped once ``--deadline``
    seconds have passed."""
    device = resolve_device(args.lora_device)
    data = load_dataset(name, args)
    cfg = config_for(name, args)
    run = Path(cfg.work_dir) / "lora"
    costs: dict[str, Any] = {}
    t0 = time.perf_counter()
    if args.sasrec:
        costs["sasrec"] = fit_sasrec(data, cfg, run / "sasrec", args.sasrec_dropouts)
        write_pack(pack, name, run)
        if args.sasrec_only:
            return {"dataset": name, "sasrec": costs["sasrec"]}
    tuned = tune_llm(data, cfg, Path(cfg.work_dir), progress=True, costs=costs)
    write_pack(pack, name, run)
    out = {"benchmark": "lora_convergence", "dataset": name, "data_hash": data.data_hash(),
           "wall_seconds": round(time.perf_counter() - t0, 1),
           "machine": machine_info(device),
           "model_version": tuned["model_version"], "hyper_parameters": tuned["hyper_parameters"],
           **costs}
    path = args.results / f"lora_convergence_{name}_{device.type}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    if pack is not None:
        (pack / path.name).write_text(path.read_text())
    best = costs.get("lora_best_step")
    print(f"[bench] {name}: {costs['lora_steps']} steps at {costs['lora_seconds_per_step']:.3f} "
          f"s/step on {out['machine']['gpu'] or device.type}; best validation loss at step {best} "
          f"after {costs.get('lora_seconds_to_best')} s; converged={costs['lora_converged']}; "
          f"wrote {path}", flush=True)

    def in_time() -> bool:
        return args.deadline <= 0 or time.perf_counter() - t0 < args.deadline

    if args.answers:
        generator = tuned_generator(tuned, cfg)
        write_answers(data, cfg, generator, tuned["model_version"], run / "answers.json", args.gen_batch)
        write_pack(pack, name, run)
    if args.base_answers and in_time():
        from models.llm.generate import Generator

        write_answers(data, cfg, Generator(base_model_path(cfg), device=cfg.lora_device), "untrained-base",
                      run / "answers_base.json", args.gen_batch, 1, args.variant_test_events)
        write_pack(pack, name, run)
    if args.answers and args.beam_answers > 1 and in_time():
        write_answers(data, cfg, generator, f"{tuned['model_version']}+beam{args.beam_answers}",
                      run / "answers_beam.json", args.gen_batch, args.beam_answers, args.variant_test_events)
        write_pack(pack, name, run)
    return out


def write_pack(pack: Path | None, name: str, run: Path) -> None:
    """``<pack>/<name>-lora.tar.gz`` (SASRec, adapter, manifest) plus each answer set gzipped
    beside it, from what the run folder holds now: rewritten after every part."""
    if pack is None:
        return
    pack.mkdir(parents=True, exist_ok=True)
    with tarfile.open(pack / f"{name}-lora.tar.gz", "w:gz") as tar:
        for part in ("adapter", "manifest.json", "sasrec"):
            if (run / part).exists():
                tar.add(run / part, arcname=f"{name}/{part}")
    for answers in sorted(run.glob("answers*.json")):
        with gzip.open(pack / f"{name}-{answers.name}.gz", "wb") as f:
            f.write(answers.read_bytes())


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


def tuned_generator(tuned: dict[str, Any], cfg: Any) -> Any:
    from models.llm.generate import Generator

    return Generator(Path(tuned["merged_dir"]), device=cfg.lora_device)


def write_answers(data: Any, cfg: Any, generator: Any, version: str, path: Path, batch_size: int,
                  num_beams: int = 1, test_events_cap: int = 0) -> None:
    """A model's answers for the validation events and the evaluation's LLM test events (a
    seeded ``test_events_cap`` of them when > 0: the variants compared with the served answers)."""
    from dataclasses import replace

    from models.llm.generate import GenerationTotals

    answers = Answers(version, data.data_hash())
    t0 = time.perf_counter()
    totals = GenerationTotals()
    answers.val = generate_answers(generator, data.items, validation_events(data, cfg), cfg.max_history,
                                   cfg.max_new_tokens, batch_size, totals, num_beams=num_beams)
    sample_cfg = replace(cfg, llm_test_events=test_events_cap) if test_events_cap > 0 else cfg
    events = llm_sample(test_events(data, cfg), sample_cfg)
    answers.test = generate_answers(generator, data.items, events, cfg.max_history, cfg.max_new_tokens,
                                    batch_size, totals, num_beams=num_beams)
    answers.costs = {"device": str(generator.device), "answers": totals.n, "batch_size": batch_size,
                     "num_beams": num_beams, "seconds": round(time.perf_counter() - t0, 1),
                     "tokens": totals.tokens, "tokens_per_s": round(totals.tokens_per_s, 1),
                     "malformed_rate": round(totals.malformed_rate, 4)}
    answers.save(path)
    print(f"[bench] {path.name}: {len(answers.val)} validation + {len(answers.test)} test in "
          f"{answers.costs['seconds']} s on {generator.device} ({answers.costs['tokens_per_s']} tok/s, "
          f"{answers.costs['malformed_rate']:.1%} malformed)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, default=None,
                        help="write <pack>/<name>-lora.tar.gz (adapter + manifest) per data set")
    parser.add_argument("--sasrec", action="store_true",
                        help="also train SASRec here (GPU when there is one) and pack it")
    parser.add_argument("--sasrec-only", action="store_true",
                        help="with --sasrec: stop after SASRec (a later run in the same --home adds the rest)")
    parser.add_argument("--sasrec-dropouts", default="0.2,0.5",
                        help="SASRec dropouts tried with --sasrec; the best on validation is kept")
    parser.add_argument("--answers", action="store_true",
                        help="also generate the answers for validation and the LLM test events")
    parser.add_argument("--base-answers", action="store_true",
                        help="also the untrained base model's answers (validation + a test sample)")
    parser.add_argument("--beam-answers", type=int, default=0,
                        help="also the tuned model's answers by beam search of this width")
    parser.add_argument("--variant-test-events", type=int, default=4000,
                        help="test events the base and beam answer sets cover (a seeded sample)")
    parser.add_argument("--deadline", type=float, default=0,
                        help="seconds after which the optional answer sets are skipped (0: never)")
    parser.set_defaults(**DEFAULTS)
    args = parser.parse_args(argv)
    for name in start(args):
        run_one(name, args, args.pack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
