"""Where one LoRA optimizer step's time goes on this device, per batch size.

Builds the base architecture from a model folder's ``config.json`` with random weights (step
time does not depend on weight values, so no checkpoint is needed), wraps it with the same
peft LoRA as :func:`models.llm.lora.train_lora` and times the same step (`_one_step`) on
random token sequences of ``--length`` tokens.  Per batch size it reports seconds per step
and, on a GPU, how much of the step the GPU was busy (torch.profiler's device time over
wall time): a step whose time does not grow with the batch and whose GPU is mostly idle is
bound by Python/kernel-launch overhead, not by arithmetic.  Writes
``bench/results/lora_step_<device>.json``.

    python bench/bench_lora_step.py --help
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from machine import machine_info  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from models.llm.base_model import resolve_device  # noqa: E402
from models.llm.lora import LoraSettings, _Encoded, _one_step, _peft_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", type=Path, required=True,
                   help="a model folder (or its config.json) giving the architecture")
    p.add_argument("--device", default="auto")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--length", type=int, default=200, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=10, help="timed steps per batch size")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def random_examples(n: int, length: int, vocab: int, seed: int = 0) -> list[_Encoded]:
    """Sequences whose second half is the answer (labels), like a prompt + title pair."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(10, vocab, (length,), generator=g).tolist()
        half = length // 2
        out.append(_Encoded(ids, [-100] * half + ids[half:]))
    return out


def gpu_busy_fraction(step: Any, device: torch.device) -> float | None:
    """Device time / wall time of one step under torch.profiler (None on CPU)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    busy_us = sum(e.self_device_time_total for e in prof.key_averages())
    return busy_us / 1e6 / wall


def time_batch(model: Any, optimizer: Any, params: list[Any], batch: int, args: argparse.Namespace,
               device: torch.device, vocab: int) -> dict[str, Any]:
    examples = random_examples(batch * (args.steps + 2), args.length, vocab)
    settings = LoraSettings(batch_size=batch, max_length=args.length)
    counter = iter(range(10**9))

    def step() -> float:
        return _one_step(model, optimizer, params, examples, settings, next(counter), device, 0)

    step()  # warm-up: allocations, kernel selection
    seconds = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()  # ends with float(loss): the device is synchronised
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    busy = gpu_busy_fraction(step, device)
    median = statistics.median(seconds)
    return {"batch_size": batch, "length": args.length, "seconds_per_step_median": median,
            "tokens_per_s": batch * args.length / median, "gpu_busy_fraction": busy,
            "step_seconds": [round(s, 4) for s in seconds]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    config = AutoConfig.from_pretrained(args.config.parent if args.config.name == "config.json"
                                        else args.config)
    torch.manual_seed(0)
    model = _peft_model(AutoModelForCausalLM.from_config(config).to(device), LoraSettings())
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    results = {"machine": machine_info(device),
               "architecture": config.architectures, "n_params": sum(p.numel() for p in
                                                                      model.parameters()),
               "batches": {}}
    for batch in args.batches:
        row = time_batch(model, optimizer, params, batch, args, device, config.vocab_size)
        results["batches"][str(batch)] = row
        busy = row["gpu_busy_fraction"]
        print(f"batch {batch:>3}: {row['seconds_per_step_median']:.4f} s/step, "
              f"{row['tokens_per_s']:,.0f} tokens/s"
              + (f", GPU busy {100 * busy:.0f}% of the step" if busy is not None else ""),
              flush=True)
    out = args.out or ROOT / "bench" / "results" / f"lora_step_{device.type}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"[bench] wrote {out}")
    return results


if __name__ == "__main__":
    main()
