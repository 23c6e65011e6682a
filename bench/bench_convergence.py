"""LoRA training to convergence: the evaluation's LLM, trained exactly as ``stylestream eval``
(and ``bench_quality.py``) trains it, with the validation period held out.

Every ``--lora-eval-every`` steps the answer loss on validation-period prompts is taken; the
run stops once it has not improved for ``--lora-patience`` evaluations and keeps the best
adapter.  Per data set it writes ``bench/results/lora_convergence_<name>_<device>.json``
(seconds per step, step and training seconds to the best held-out loss, both loss curves)
and, with ``--pack DIR``, ``DIR/<name>-lora.tar.gz`` (adapter + manifest, a few MB) that
``bench_quality.py --lora-runs`` evaluates on another machine: train on a GPU, evaluate
anywhere.  The data set must be the same (its hash is checked).

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

from models.llm.base_model import resolve_device  # noqa: E402
from models.train import tune_llm  # noqa: E402

DEFAULTS = {"lora_steps": 3000, "lora_batch": 16, "lora_eval_every": 25, "lora_patience": 4}


def run_one(name: str, args: Any, pack: Path | None) -> dict[str, Any]:
    device = resolve_device(args.lora_device)
    data = load_dataset(name, args)
    cfg = config_for(name, args)
    work = Path(cfg.work_dir)
    costs: dict[str, Any] = {}
    t0 = time.perf_counter()
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
    if pack is not None:
        pack.mkdir(parents=True, exist_ok=True)
        with tarfile.open(pack / f"{name}-lora.tar.gz", "w:gz") as tar:
            tar.add(work / "lora" / "adapter", arcname=f"{name}/adapter")
            tar.add(work / "lora" / "manifest.json", arcname=f"{name}/manifest.json")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, default=None,
                        help="write <pack>/<name>-lora.tar.gz (adapter + manifest) per data set")
    parser.set_defaults(**DEFAULTS)
    args = parser.parse_args(argv)
    for name in start(args):
        run_one(name, args, args.pack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
