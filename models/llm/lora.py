"""LoRA fine-tuning of a local causal LM on recommendation prompts (peft, CPU or GPU).

Only the answer tokens are learned: prompt positions are labelled -100, so the model is
taught to produce the next item, not to reproduce histories.  Every answer ends with the
model's EOS so the tuned model stops by itself.

Training survives interruption: every ``checkpoint_every`` steps the adapter, optimizer
state, step counter, losses and RNG state are written (atomically, by rename), and a new
run in the same ``out_dir`` continues from the latest one with the same data order.  At the
end the adapter is saved, merged into the base weights (``merge_and_unload``) and exported
as a plain checkpoint that any loader (torch, ONNX export, serving) reads without peft, and
a ``manifest.json`` records what went in.

Convergence is measured, not guessed: with ``eval_every`` the answer loss on held-out
examples (the validation period) is taken every so many steps, and with ``patience`` the
run stops once that loss has not improved for that many evaluations and keeps the best
adapter weights (early stopping).  The manifest records the held-out curve, the best step
and the training seconds it took to reach it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from tqdm.auto import tqdm

from models.llm.base_model import (
    load_base_model,
    quiet_transformers,
    resolve_device,
    stop_token_ids,
)
from models.llm.prompts import Example, encode_prompt

IGNORE_INDEX = -100
MANIFEST_NAME = "manifest.json"
# Attention projections by architecture family, most common first.
TARGET_MODULE_FAMILIES = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Qwen2, Mistral, SmolLM
    ("query_key_value", "dense"),  # Falcon
    ("c_attn", "c_proj"),  # GPT-2
)
# Settings that may change between a run and its resumption without invalidating it.
RESUMABLE_CHANGES = {"steps", "epochs", "checkpoint_every", "keep_checkpoints", "device",
                     "eval_every", "patience", "min_delta", "eval_batch_size"}


@dataclass
class LoraSettings:
    """LoRA and optimisation hyper-parameters; all recorded in the manifest."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: the attention projections of the model
    lr: float = 2e-4
    steps: int | None = None  # optimizer steps; None: `epochs` passes over the examples
    epochs: float = 1.0
    batch_size: int = 4
    max_length: int = 256
    grad_accum: int = 1
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    device: str = "auto"
    eval_every: int = 0  # steps between held-out loss evaluations (0: none)
    patience: int = 0  # stop after this many evaluations without improvement (0: never)
    min_delta: float = 1e-3  # smaller held-out loss gains do not count as improvement
    eval_batch_size: int = 16

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps this run aims for."""
        if self.steps is not None:
            return int(self.steps)
        per_epoch = math.ceil(n_examples / (self.batch_size * self.grad_accum))
        return max(1, math.ceil(per_epoch * self.epochs))


@dataclass
class TrainResult:
    """Where the outputs went and how training went."""

    out_dir: Path
    adapter_dir: Path
    merged_dir: Path | None
    manifest_path: Path
    model_version: str
    steps: int
    start_step: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    seconds_per_step: float = 0.0
    train_seconds: float = 0.0
    truncated_examples: int = 0
    device: str = "cpu"
    eval_curve: list[dict[str, float]] = field(default_factory=list)  # step, loss, train seconds
    best_step: int | None = None  # held-out loss minimum (the adapter kept with early stopping)
    converged: bool = False  # stopped by patience rather than by the step budget


@dataclass
class _Encoded:
    input_ids: list[int]
    labels: list[int]


# -- tokenisation ------------------------------------------------------------------------
def encode_example(tokenizer: Any, example: Example, max_length: int,
                   end_id: int) -> tuple[_Encoded, bool]:
    """Prompt + answer + EOS as ids, with the prompt masked; and whether it was truncated.

    Prompt and answer are encoded separately, exactly as generation will see them (the
    prompt alone, then the model's own tokens).  Over-long pairs lose prompt tokens from
    the left (the oldest history) and, if still too long, answer tokens from the right.
    """
    prompt = encode_prompt(tokenizer, example.prompt)
    answer = list(tokenizer(example.target, add_special_tokens=False)["input_ids"]) + [end_id]
    truncated = len(prompt) + len(answer) > max_length
    if truncated:
        answer = answer[: max(1, max_length // 2)]
        prompt = prompt[len(prompt) - (max_length - len(answer)):]
    return _Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer), truncated


def collate(batch: Sequence[_Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def micro_batch(encoded: Sequence[_Encoded], index: int, batch_size: int,
                seed: int) -> list[_Encoded]:
    """The ``index``-th micro-batch of the whole run, reproducible from the index alone.

    Each epoch is a fresh seeded permutation, so a resumed run sees exactly the batches
    the uninterrupted one would have seen.
    """
    per_epoch = math.ceil(len(encoded) / batch_size)
    epoch, within = divmod(index, per_epoch)
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed + epoch))
    picks = order[within * batch_size:(within + 1) * batch_size].tolist()
    return [encoded[i] for i in picks]


# -- model set-up ------------------------------------------------------------------------
def default_target_modules(model: torch.nn.Module) -> list[str]:
    """The attention projection names this architecture uses (LoRA's usual targets)."""
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear)}
    for family in TARGET_MODULE_FAMILIES:
        found = [n for n in family if n in names]
        if found:
            return found
    return sorted(names - {"lm_head"})


def _peft_model(base: Any, settings: LoraSettings) -> Any:
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules or default_target_modules(base),
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def _lr_factor(step: int, settings: LoraSettings, total: int) -> float:
    """Linear warm-up, then linear decay to 10% of the peak at the last step."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, total - settings.warmup_steps)
    return 1.0 - 0.9 * min(1.0, (step - settings.warmup_steps) / span)


# -- checkpoints -------------------------------------------------------------------------
def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or None (half-written ones are ignored)."""
    folder = Path(out_dir) / "checkpoints"
    done = [p for p in folder.glob("step-*") if p.is_dir() and (p / "trainer_state.pt").is_file()
            and not p.name.endswith(".tmp")]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _save_checkpoint(model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                     out_dir: Path, keep: int) -> Path:
    folder = Path(out_dir) / "checkpoints"
    final = folder / f"step-{state['step']:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({**state, "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    done = sorted((p for p in folder.glob("step-*") if not p.name.endswith(".tmp")),
                  key=lambda p: int(p.name.split("-")[1]))
    for old in done[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(ckpt: Path, model: Any, optimizer: torch.optim.Optimizer,
                     fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Restore adapter weights, optimizer and RNG; refuse a checkpoint of another run."""
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    changed = _fingerprint_changes(state.get("fingerprint", {}), fingerprint)
    if changed:
        raise ValueError(f"checkpoint {ckpt} belongs to a different run ({', '.join(changed)} "
                         "changed); pass resume=False or use another out_dir")
    set_peft_model_state_dict(model, load_peft_weights(str(ckpt)))
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return state


def _fingerprint(base_path: Path, settings: LoraSettings, data_hash: str, n: int) -> dict[str, Any]:
    hyper = {k: v for k, v in asdict(settings).items() if k not in RESUMABLE_CHANGES}
    return {"base": str(Path(base_path).resolve()), "data_hash": data_hash, "n_examples": n,
            "settings": hyper}


def _fingerprint_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [k for k in ("base", "data_hash", "n_examples") if old.get(k) != new.get(k)]
    old_s, new_s = old.get("settings", {}), new.get("settings", {})
    return keys + [k for k in new_s if old_s.get(k) != new_s.get(k)]


# -- the training run --------------------------------------------------------------------
def train_lora(base_path: Path, examples: Sequence[Example], settings: LoraSettings, out_dir: Path,
               resume: bool = True, progress: bool = True, data_hash: str = "",
               export_merged: bool = True,
               eval_examples: Sequence[Example] | None = None) -> TrainResult:
    """Fine-tune LoRA adapters on ``examples`` and write adapter, merged model and manifest.

    ``data_hash`` identifies the data version (e.g. ``Dataset.data_hash()``); it goes into
    the manifest and guards resumption against a changed data set.  ``eval_examples`` are
    held out (e.g. the validation period) for ``settings.eval_every`` / ``patience``.
    """
    if not examples:
        raise ValueError("no training examples")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    device = resolve_device(settings.device)
    base, tokenizer = load_base_model(base_path, device=device)
    end_id = stop_token_ids(base, tokenizer)[0]
    pairs = [encode_example(tokenizer, ex, settings.max_length, end_id) for ex in examples]
    encoded = [p for p, _ in pairs]
    held_out = [encode_example(tokenizer, ex, settings.max_length, end_id)[0]
                for ex in eval_examples or []] if settings.eval_every else []
    model = _peft_model(base, settings)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=settings.lr, weight_decay=settings.weight_decay)
    fingerprint = _fingerprint(base_path, settings, data_hash, len(examples))
    state = {"step": 0, "losses": [], "step_seconds": [], "fingerprint": fingerprint,
             "evals": [], "best": None, "stopped": False, "device": device.type}
    ckpt = latest_checkpoint(out_dir) if resume else None
    if not resume:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    if ckpt is not None:
        state = _load_checkpoint(ckpt, model, optimizer, fingerprint)
        state["fingerprint"] = fingerprint
    start_step = int(state["step"])
    total = start_step if state.get("stopped") else max(start_step,
                                                        settings.total_steps(len(examples)))
    run_seconds = _run_steps(model, optimizer, encoded, settings, state, total, device,
                             tokenizer.pad_token_id, out_dir, progress, held_out)
    if int(state["step"]) > start_step:
        _save_checkpoint(model, optimizer, state, out_dir, settings.keep_checkpoints)
    if state.get("best") is not None and settings.patience:
        _restore_trainable(model, state["best"]["weights"])  # early stopping keeps the best
    return _finish(model, tokenizer, examples, settings, state, out_dir, base_path, data_hash,
                   start_step, run_seconds, sum(t for _, t in pairs), export_merged)


def _run_steps(model: Any, optimizer: torch.optim.Optimizer, encoded: Sequence[_Encoded],
               settings: LoraSettings, state: dict[str, Any], total: int, device: torch.device,
               pad_id: int, out_dir: Path, progress: bool,
               held_out: Sequence[_Encoded] = ()) -> float:
    """Optimizer steps from ``state['step']`` to ``total`` (or early stop); mutates ``state``;
    returns seconds."""
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=total, initial=state["step"], desc="lora", disable=not progress,
               dynamic_ncols=True)
    started = time.perf_counter()
    if held_out and not state.get("evals") and state["step"] < total:
        _track_held_out(model, held_out, settings, state, device, pad_id)  # the base's loss
    model.train()
    while state["step"] < total:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _lr_factor(state["step"], settings, total)
        loss = _one_step(model, optimizer, params, encoded, settings, state["step"], device, pad_id)
        state["step"] += 1
        state["losses"].append(loss)
        state["step_seconds"].append(time.perf_counter() - t0)
        bar.update(1)
        postfix = {"loss": f"{loss:.4f}"}
        if held_out and state["step"] % settings.eval_every == 0:
            state["stopped"] = _track_held_out(model, held_out, settings, state, device, pad_id)
            postfix["held_out"] = f"{state['evals'][-1]['loss']:.4f}"
        bar.set_postfix(postfix)
        if state.get("stopped"):
            break
        if settings.checkpoint_every and state["step"] % settings.checkpoint_every == 0 \
                and state["step"] < total:
            _save_checkpoint(model, optimizer, state, out_dir, settings.keep_checkpoints)
    bar.close()
    model.eval()
    return time.perf_counter() - started


def _one_step(model: Any, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
              encoded: Sequence[_Encoded], settings: LoraSettings, step: int,
              device: torch.device, pad_id: int) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns their mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for k in range(settings.grad_accum):
        batch = micro_batch(encoded, step * settings.grad_accum + k, settings.batch_size,
                            settings.seed)
        inputs = {name: t.to(device) for name, t in collate(batch, pad_id).items()}
        loss = model(**inputs).loss / settings.grad_accum
        loss.backward()
        total += float(loss.detach())
    if settings.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    optimizer.step()
    return total


# -- held-out loss and early stopping ----------------------------------------------------
@torch.no_grad()
def held_out_loss(model: Any, held_out: Sequence[_Encoded], batch_size: int,
                  device: torch.device, pad_id: int) -> float:
    """Mean answer-token cross-entropy over ``held_out`` (every answer token weighs the same)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for lo in range(0, len(held_out), batch_size):
        inputs = {k: t.to(device) for k, t in collate(held_out[lo:lo + batch_size], pad_id).items()}
        n = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(model(**inputs).loss) * n
        tokens += n
    model.train(was_training)
    return total / max(tokens, 1)


def _track_held_out(model: Any, held_out: Sequence[_Encoded], settings: LoraSettings,
                    state: dict[str, Any], device: torch.device, pad_id: int) -> bool:
    """Record the held-out loss now; keep the best weights; True once patience runs out."""
    loss = held_out_loss(model, held_out, settings.eval_batch_size, device, pad_id)
    state.setdefault("evals", []).append({"step": int(state["step"]), "loss": loss,
                                          "train_seconds": round(sum(state["step_seconds"]), 3)})
    best = state.get("best")
    if best is None or loss < best["loss"] - settings.min_delta:
        state["best"] = {"step": int(state["step"]), "loss": loss,
                         "weights": {n: p.detach().to("cpu", copy=True)
                                     for n, p in model.named_parameters() if p.requires_grad}}
        return False
    since = sum(1 for e in state["evals"] if e["step"] > state["best"]["step"])
    return bool(settings.patience) and since >= settings.patience


def _restore_trainable(model: Any, weights: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if name in weights:
            param.data.copy_(weights[name].to(param.device))


def _finish(model: Any, tokenizer: Any, examples: Sequence[Example], settings: LoraSettings,
            state: dict[str, Any], out_dir: Path, base_path: Path, data_hash: str,
            start_step: int, run_seconds: float, truncated: int,
            export_merged: bool) -> TrainResult:
    """Save the adapter, the merged model and the manifest."""
    adapter_dir = out_dir / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    version = model_version(base_path, data_hash, settings, len(examples))
    merged_dir = None
    if export_merged:
        merged_dir = save_merged(model, tokenizer, out_dir / "merged")
    losses = [float(x) for x in state["losses"]]
    times = [float(x) for x in state["step_seconds"]]
    ran = int(state["step"]) - start_step
    result = TrainResult(out_dir, adapter_dir, merged_dir, out_dir / MANIFEST_NAME, version,
                         int(state["step"]), start_step, losses[-1] if losses else float("nan"),
                         losses, times, sum(times) / len(times) if times else 0.0,
                         run_seconds, truncated, device=str(state.get("device", "cpu")),
                         eval_curve=[{k: float(v) for k, v in e.items()} for e in state.get("evals", [])],
                         best_step=state["best"]["step"] if state.get("best") else None,
                         converged=bool(state.get("stopped")))
    manifest = _manifest(result, base_path, data_hash, settings, examples, model, ran)
    if merged_dir is not None:
        (merged_dir / "stylestream_model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    result.manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return result


def save_merged(peft_model: Any, tokenizer: Any, merged_dir: Path) -> Path:
    """Fold the adapter into the base weights and save a plain checkpoint (replacing any)."""
    merged_dir = Path(merged_dir)
    shutil.rmtree(merged_dir, ignore_errors=True)
    merged = peft_model.merge_and_unload()
    with quiet_transformers():
        merged.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
    return merged_dir


def merge_adapter(base_path: Path, run_dir: Path, merged_dir: Path) -> Path:
    """Merge the adapter of a finished run (trained anywhere, e.g. on a GPU box) into the
    local base model and save it as a plain checkpoint; returns ``merged_dir``."""
    from peft import PeftModel

    adapter_dir = Path(run_dir) / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"{run_dir} holds no LoRA adapter (expected {adapter_dir})")
    base, tokenizer = load_base_model(base_path, device="cpu")
    save_merged(PeftModel.from_pretrained(base, str(adapter_dir)), tokenizer, merged_dir)
    manifest = Path(run_dir) / MANIFEST_NAME
    if manifest.is_file():
        shutil.copyfile(manifest, Path(merged_dir) / "stylestream_model.json")
    return Path(merged_dir)


def seconds_to(step_seconds: Sequence[float], step: int | None) -> float | None:
    """Training seconds spent up to ``step`` (held-out evaluations excluded)."""
    return None if step is None else round(sum(step_seconds[:step]), 3)


def model_version(base_path: Path, data_hash: str, settings: LoraSettings, n_examples: int) -> str:
    """A stable id from base model, data and hyper-parameters (same inputs, same version)."""
    payload = json.dumps([Path(base_path).name, data_hash, asdict(settings), n_examples],
                         sort_keys=True, default=str)
    return f"{Path(base_path).name}-lora-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def _manifest(result: TrainResult, base_path: Path, data_hash: str, settings: LoraSettings,
              examples: Sequence[Example], model: Any, ran: int) -> dict[str, Any]:
    import peft
    import transformers

    tasks: dict[str, int] = {}
    for ex in examples:
        tasks[ex.task] = tasks.get(ex.task, 0) + 1
    config = model.config
    return {
        "model_version": result.model_version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": {"path": str(Path(base_path).resolve()), "name": Path(base_path).name,
                       "architecture": (getattr(config, "architectures", None) or ["?"])[0],
                       "model_type": config.model_type},
        "data_hash": data_hash,
        "n_examples": len(examples),
        "tasks": tasks,
        "hyper_parameters": asdict(settings),
        "steps": result.steps,
        "resumed_from_step": result.start_step,
        "steps_this_run": ran,
        "train_seconds_this_run": round(result.train_seconds, 3),
        "seconds_per_step": round(result.seconds_per_step, 4),
        "step_seconds": [round(t, 4) for t in result.step_seconds],
        "final_loss": result.final_loss,
        "loss_curve": result.losses,
        "device": result.device,
        "held_out_curve": result.eval_curve,
        "best_step": result.best_step,
        "converged": result.converged,
        "train_seconds_to_best": seconds_to(result.step_seconds, result.best_step),
        "truncated_examples": result.truncated_examples,
        "adapter_dir": str(result.adapter_dir),
        "merged_dir": str(result.merged_dir) if result.merged_dir else None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }
