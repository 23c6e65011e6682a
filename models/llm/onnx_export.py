"""Export a (merged) causal LM to ONNX with a key/value cache, and decode it with ONNX Runtime.

One graph serves both phases: inputs are ``input_ids``, ``attention_mask`` (past + new
positions), ``position_ids`` and one past key and value per layer; outputs are the logits
of the LAST position only (full-sequence logits at batch 16 x 300 tokens x 49k vocabulary
would be ~1 GB per call) and the updated cache.  The prompt is fed once with an empty
(length-0) cache, then one token per step, so ONNX decoding costs what torch's cached
decoding costs instead of re-reading the whole sequence per token.

The model is exported with eager attention through the TorchScript-based exporter, which
traces the cache handling cleanly.  Runtime providers prefer CUDA and fall back to the CPU:
``onnxruntime-gpu`` lists CUDA even where its libraries are missing, so the attempt is made
with ORT's logger silenced and the providers actually in use are reported instead.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from models.llm.base_model import load_base_model, prepare_tokenizer, stop_token_ids
from models.llm.generate import (
    GenerationResult,
    build_result,
    count_new_tokens,
    left_pad,
    newline_token_ids,
)
from models.llm.prompts import encode_prompt

ONNX_NAME = "model.onnx"
MANIFEST_NAME = "onnx_manifest.json"
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
ORT_DEFAULT_SEVERITY = 2  # warnings and above, ORT's own default
MIN_PREFIX = 16  # shorter shared prefixes are not worth a cache


@dataclass
class OnnxExport:
    """What was exported and how well it matches torch on a probe input."""

    folder: Path
    onnx_path: Path
    source: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    opset: int
    export_seconds: float
    max_abs_diff: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["folder"], out["onnx_path"] = str(self.folder), str(self.onnx_path)
        return out


class _CachedDecoder(torch.nn.Module):
    """Flat-tensor facade over an HF causal LM: the cache goes in and out as plain tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # no ``config``: every layer keeps its whole past, so the graph's cache axes hold for
        # sliding-window layers too (Gemma 3); the attention mask still applies the window
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1])
                                             for i in range(self.num_layers)])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits[:, -1, :], *present)


def cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a decoder config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def has_sliding_window(config: Any) -> bool:
    """True when some layer attends through a sliding window (Gemma 3's local layers)."""
    return "sliding_attention" in (getattr(config, "layer_types", None) or ())


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the exported graph."""
    past = [f"past.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids for left-padded rows: 0 at each row's first real token (pads get 0)."""
    return np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)


def export_onnx(model_dir: Path, out_dir: Path, opset: int = 17, check: bool = True,
                overwrite: bool = False) -> OnnxExport:
    """Export the model in ``model_dir`` to ``out_dir/model.onnx`` with its tokenizer.

    An existing export of the same source folder is reused unless ``overwrite``.  With
    ``check`` the export is compared with torch on a small left-padded probe batch.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    manifest = out_dir / MANIFEST_NAME
    if not overwrite and manifest.is_file() and (out_dir / ONNX_NAME).is_file():
        old = json.loads(manifest.read_text())
        if old.get("source") == str(model_dir.resolve()):
            old["folder"], old["onnx_path"] = Path(old["folder"]), Path(old["onnx_path"])
            return OnnxExport(**old)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_base_model(model_dir, device="cpu", attn_implementation="eager")
    started = time.perf_counter()
    _trace_export(model, out_dir / ONNX_NAME, opset)
    layers, kv_heads, head_dim = cache_shape(model.config)
    result = OnnxExport(out_dir, out_dir / ONNX_NAME, str(model_dir.resolve()), layers, kv_heads,
                        head_dim, opset, time.perf_counter() - started)
    tokenizer.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    model.config.save_pretrained(out_dir)
    if check:
        result.max_abs_diff = _probe_parity(model, tokenizer, out_dir)
    manifest.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _trace_export(model: torch.nn.Module, path: Path, opset: int) -> None:
    """Trace with a non-empty past so every cache axis is symbolic, then save."""
    layers, kv_heads, head_dim = cache_shape(model.config)
    batch, new, past_len = 2, 3, 2
    past = [torch.zeros(batch, kv_heads, past_len, head_dim) for _ in range(2 * layers)]
    ids = torch.ones(batch, new, dtype=torch.long)
    mask = torch.ones(batch, past_len + new, dtype=torch.long)
    pos = torch.arange(past_len, past_len + new).expand(batch, new)
    inputs, outputs = io_names(layers)
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "logits": {0: "batch"}}
    axes |= {n: {0: "batch", 2: "past"} for n in inputs[3:]}
    axes |= {n: {0: "batch", 2: "total"} for n in outputs[1:]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(_CachedDecoder(model).eval(), (ids, mask, pos, *past), str(path),
                          input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False)


def _probe_parity(model: Any, tokenizer: Any, folder: Path) -> float:
    """Largest |logit difference| between torch and ORT on two left-padded probe prompts."""
    probe = ["a short probe", "a somewhat longer probe prompt for the export check"]
    runner = OnnxGenerator(folder, providers=["CPUExecutionProvider"])
    ort_logits = runner.next_token_logits(probe)
    ref = torch_next_token_logits(model, tokenizer, probe)
    return float(np.abs(ort_logits - ref).max())


@torch.inference_mode()
def torch_next_token_logits(model: Any, tokenizer: Any, prompts: Sequence[str]) -> np.ndarray:
    """Torch's logits for the token after each prompt, with the same padding and positions."""
    ids, mask = left_pad([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    pos = torch.from_numpy(positions(mask.numpy()))
    device = next(model.parameters()).device
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                position_ids=pos.to(device))
    return out.logits[:, -1, :].float().cpu().numpy()


# -- runtime -----------------------------------------------------------------------------
def onnx_providers(preferred: Sequence[str] = PREFERRED_PROVIDERS) -> list[str]:
    """The preferred providers this onnxruntime build offers, CPU always last."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


def create_session(path: Path, providers: Sequence[str] | None = None, threads: int = 0) -> Any:
    """An ORT session on the best working provider, without ORT's provider-failure noise;
    ``threads`` caps its CPU threads (0: ONNX Runtime's default, one per core)."""
    import onnxruntime as ort

    providers = list(providers) if providers else onnx_providers()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(0, threads)
    # Idle threads sleep instead of spinning: the generator, the retriever, the stream worker
    # and the broker share the cores, and spinning threads starve the others (measured: no
    # loss in generation speed on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if providers == ["CPUExecutionProvider"]:
        return ort.InferenceSession(str(path), options, providers=providers)
    ort.set_default_logger_severity(4)  # a missing CUDA library is expected on CPU hosts
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)


class OnnxGenerator:
    """Greedy decoding of an exported model with ONNX Runtime; same interface as Generator."""

    def __init__(self, folder: Path, providers: Sequence[str] | None = None, prefix_cache: bool = True,
                 threads: int = 0) -> None:
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        folder = Path(folder)
        self.session = create_session(folder / ONNX_NAME, providers, threads)
        self.providers = self.session.get_providers()
        self.tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(folder,
                                                                         local_files_only=True))
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        self.layers, self.kv_heads, self.head_dim = cache_shape(config)
        holder = _ConfigHolder(config, GenerationConfig.from_pretrained(folder,
                                                                        local_files_only=True))
        self.stop_ids = stop_token_ids(holder, self.tokenizer)
        self.newline_ids = newline_token_ids(self.tokenizer)
        self.input_names, _ = io_names(self.layers)
        # a sliding window counts cache slots, and the pads between a shared prefix and a
        # row's own tokens would take some: such models decode whole prompts instead
        self.prefix_cache = prefix_cache and not has_sliding_window(config)
        self._prefix: list[int] | None = None  # the longest token prefix every prompt so far shared
        self._prefix_past: list[np.ndarray] | None = None

    def _empty_cache(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.layers)]

    def _run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray,
             past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = dict(zip(self.input_names, [ids, mask, pos, *past], strict=True))
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def next_token_logits(self, prompts: Sequence[str]) -> np.ndarray:
        """Logits for the token after each prompt (the parity probe's quantity)."""
        ids, mask = left_pad([encode_prompt(self.tokenizer, p) for p in prompts],
                             self.tokenizer.pad_token_id)
        ids_np, mask_np = ids.numpy(), mask.numpy()
        logits, _ = self._run(ids_np, mask_np, positions(mask_np), self._empty_cache(len(prompts)))
        return logits

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 24, num_beams: int = 1,
                 fixed_length: bool = False) -> GenerationResult:
        """Greedy answers for a batch; only ``num_beams=1`` is supported here.

        ``fixed_length`` decodes exactly ``max_new_tokens`` per row (for benchmarks).
        """
        if num_beams != 1:
            raise ValueError("OnnxGenerator decodes greedily only (num_beams=1)")
        if not prompts:
            return GenerationResult([], [], [], 0.0, 0, 0)
        started = time.perf_counter()
        new = torch.from_numpy(self._greedy(prompts, max_new_tokens, fixed_length))
        seconds = time.perf_counter() - started
        if fixed_length:
            counts, finished = [new.shape[1]] * new.shape[0], [True] * new.shape[0]
        else:
            counts, finished = count_new_tokens(new, self.stop_ids, self.newline_ids)
        return build_result(self.tokenizer, new, counts, finished, seconds, len(prompts))

    def _greedy(self, prompts: Sequence[str], max_new_tokens: int,
                fixed_length: bool = False) -> np.ndarray:
        """Generated ids (batch, steps); finished rows continue with the pad token, as in HF."""
        rows = [encode_prompt(self.tokenizer, p) for p in prompts]
        ids, mask, pos, past = self._first_inputs(rows)
        stops = np.array(self.stop_ids, dtype=np.int64)
        newlines = np.array(sorted(self.newline_ids), dtype=np.int64)
        done = np.zeros(len(prompts), dtype=bool)
        steps: list[np.ndarray] = []
        for step in range(max_new_tokens):
            logits, past = self._run(ids, mask, pos, past)
            if fixed_length:  # as HF's min_new_tokens: EOS can never win
                logits[:, stops] = -np.inf
            token = np.where(done, self.tokenizer.pad_token_id, logits.argmax(-1)).astype(np.int64)
            steps.append(token)
            if not fixed_length:
                done |= np.isin(token, stops) | ((step > 0) & np.isin(token, newlines))
            if done.all():
                break
            ids = token[:, None]
            mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=mask.dtype)], axis=1)
            pos = pos[:, -1:] + 1
        return np.stack(steps, axis=1)

    def _first_inputs(self, rows: list[list[int]]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """Inputs of the first step: the prompts, or only what follows a cached shared prefix.

        Recommendation prompts share a long instruction header (a third of SmolLM2's prompt
        tokens). Its keys and values are computed once and reused: each row then feeds only
        its own part, left-padded after the prefix (pads masked out), with positions
        continuing the prefix's, which is what the full prompt would have computed.
        """
        prefix = self._shared_prefix(rows) if self.prefix_cache else []
        n = len(prefix)
        ids_t, mask_t = left_pad([r[n:] for r in rows], self.tokenizer.pad_token_id)
        ids, mask = ids_t.numpy(), mask_t.numpy()
        if not n:
            return ids, mask, positions(mask), self._empty_cache(len(rows))
        past = [np.repeat(t, len(rows), axis=0) for t in self._prefix_kv(prefix)]
        full_mask = np.concatenate([np.ones((len(rows), n), dtype=mask.dtype), mask], axis=1)
        return ids, full_mask, n + positions(mask), past

    def _shared_prefix(self, rows: list[list[int]]) -> list[int]:
        """The longest token prefix shared by these prompts and every earlier one (each row
        keeps at least one token of its own); empty when shorter than ``MIN_PREFIX``."""
        known = self._prefix if self._prefix is not None else rows[0][:-1]
        common = len(known)
        for row in rows:
            limit = min(common, len(row) - 1)
            common = next((i for i in range(limit) if row[i] != known[i]), limit)
        self._prefix = known[:common]
        return self._prefix if common >= MIN_PREFIX else []

    def _prefix_kv(self, prefix: list[int]) -> list[np.ndarray]:
        """Keys and values of the prefix, batch 1, computed once per distinct prefix."""
        if self._prefix_past is None or self._prefix_past[0].shape[2] != len(prefix):
            ids = np.asarray([prefix], dtype=np.int64)
            mask = np.ones_like(ids)
            _, self._prefix_past = self._run(ids, mask, positions(mask), self._empty_cache(1))
        return self._prefix_past


@dataclass
class _ConfigHolder:
    """Duck-types the two model attributes :func:`stop_token_ids` reads."""

    config: Any
    generation_config: Any
