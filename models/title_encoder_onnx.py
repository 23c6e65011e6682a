"""Title encoders on ONNX Runtime: export either torch variant, encode without the torch model.

:func:`export_title_encoder` writes a folder with the neural part as ``title_encoder.onnx``,
the tokenizer or vocabulary beside it and a ``manifest.json``; :class:`OnnxTitleEncoder`
reads that folder and offers the torch encoders' interface (``encode(texts) -> [n, dim]``
unit rows, ``dim``, ``manifest``).

- MiniLM: the graph is the BERT transformer + masked mean pooling + L2 normalisation over
  ``input_ids`` / ``attention_mask`` ``[batch, tokens]`` (both axes dynamic). Text is
  tokenised with the model's own ``tokenizer.json`` (``tokenizers`` library), truncated
  to the encoder's ``max_seq_length`` exactly as sentence-transformers does.
- LSTM: the graph is embedding -> BiLSTM -> masked mean -> projection -> L2 normalisation
  over right-padded ``input_ids`` / ``attention_mask`` ``[batch, tokens]``. Words are split
  and looked up exactly as :meth:`LSTMTitleEncoder.token_ids` does, and texts are batched
  the same way (the torch LSTM runs over the padding too, so a row's embedding depends on
  the longest title in its batch; same batches give the same numbers).

Sessions come from :func:`models.llm.onnx_export.create_session` (CUDA first when it works,
CPU otherwise).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.llm.onnx_export import create_session
from models.title_encoder import (
    MANIFEST_FILE,
    PAD_TOKEN,
    UNK_TOKEN,
    LSTMTitleEncoder,
    MiniLMTitleEncoder,
    length_buckets,
    words,
)

ONNX_FILE = "title_encoder.onnx"
VOCAB_FILE = "vocab.txt"
TOKENIZER_DIR = "tokenizer"
LSTM_BATCH = 512  # LSTMTitleEncoder.encode's default: the batching is part of its numbers
MINILM_BATCH = 64
INPUTS, OUTPUT = ["input_ids", "attention_mask"], "embedding"
PROBE_TITLES = [
    "red linen midi dress",
    "",
    "black leather ankle boots with a chunky heel and side zip",
    "zzqx unseen wordz 42",
    "Crème brûlée silk scarf — limited edition!",
    "oversized wool coat " * 12,
    "blue",
]


# -- graphs ------------------------------------------------------------------------------


class _LSTMGraph(nn.Module):
    """LSTMTitleEncoder.forward after tokenisation: ids and mask in, unit rows out."""

    def __init__(self, encoder: LSTMTitleEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # unpacked (ONNX has no packed sequences): exact for batches of one title length
        hidden, _ = self.encoder.lstm(self.encoder.embed(input_ids))
        return self.encoder.pool(hidden, attention_mask)


class _MiniLMGraph(nn.Module):
    """sentence-transformers' Transformer -> mean Pooling -> Normalize over token tensors."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1)


def _minilm_parts(encoder: MiniLMTitleEncoder) -> tuple[Any, Any, int]:
    """(HF transformer, HF tokenizer, max_seq_length), refusing pipelines the graph does not cover."""
    modules = list(encoder.model)
    names = [type(m).__name__ for m in modules]
    if names[:2] != ["Transformer", "Pooling"] or any(n != "Normalize" for n in names[2:]):
        raise NotImplementedError(f"only Transformer -> Pooling [-> Normalize] is exported, got {names}")
    mode = getattr(modules[1], "pooling_mode", None)
    if mode is None:  # sentence-transformers < 6 keeps one flag per mode
        mode = "mean" if modules[1].get_config_dict().get("pooling_mode_mean_tokens") else "other"
    if mode != "mean":
        raise NotImplementedError(f"only mean pooling is exported, got {mode!r}")
    return modules[0].auto_model, modules[0].tokenizer, int(encoder.model.max_seq_length)


# -- export ------------------------------------------------------------------------------


def export_title_encoder(encoder: LSTMTitleEncoder | MiniLMTitleEncoder, out_dir: Path,
                         opset: int = 17) -> Path:
    """Export ``encoder`` to ``out_dir`` (graph, tokenizer, manifest) and return ``out_dir``.

    The manifest records ``max_abs_diff``: the largest |torch - ONNX Runtime (CPU)| over a
    probe batch of titles (empty, unknown words, over-long).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if isinstance(encoder, LSTMTitleEncoder):
        manifest = _export_lstm(encoder, out_dir, opset)
    elif isinstance(encoder, MiniLMTitleEncoder):
        manifest = _export_minilm(encoder, out_dir, opset)
    else:
        raise TypeError(f"cannot export {type(encoder).__name__}")
    manifest.update({"dim": int(encoder.dim), "opset": opset, "onnx": ONNX_FILE,
                     "export_seconds": round(time.perf_counter() - started, 3),
                     "source": encoder.manifest, "max_abs_diff": None})
    _write_manifest(out_dir, manifest)
    onnx_emb = OnnxTitleEncoder(out_dir, providers=["CPUExecutionProvider"]).encode(PROBE_TITLES)
    manifest["max_abs_diff"] = float(np.abs(onnx_emb - encoder.encode(PROBE_TITLES)).max())
    _write_manifest(out_dir, manifest)
    return out_dir


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def _export_lstm(encoder: LSTMTitleEncoder, out_dir: Path, opset: int) -> dict[str, Any]:
    was_training = encoder.training
    encoder.eval()
    try:
        ids = encoder.token_ids(["a b c", "", "a"])  # padded rows so the mask path is traced
        _trace(_LSTMGraph(encoder), (ids, (ids != 0).long()), out_dir / ONNX_FILE, opset)
    finally:
        encoder.train(was_training)
    (out_dir / VOCAB_FILE).write_text("\n".join(encoder.vocab) + "\n")
    return {"variant": "lstm", "max_tokens": encoder.cfg.max_tokens, "batch_size": LSTM_BATCH}


def _export_minilm(encoder: MiniLMTitleEncoder, out_dir: Path, opset: int) -> dict[str, Any]:
    transformer, tokenizer, max_len = _minilm_parts(encoder)
    feats = tokenizer(["a longer probe title to pad against", "short"], padding=True,
                      truncation=True, max_length=max_len, return_tensors="pt")
    was_training, attn = transformer.training, transformer.config._attn_implementation
    transformer.eval()
    _set_attention(transformer, "eager")  # plain matmul/softmax: traces cleanly for any opset
    try:
        _trace(_MiniLMGraph(transformer), (feats["input_ids"], feats["attention_mask"]),
               out_dir / ONNX_FILE, opset)
    finally:
        _set_attention(transformer, attn)
        transformer.train(was_training)
    tokenizer.save_pretrained(str(out_dir / TOKENIZER_DIR))
    if not (out_dir / TOKENIZER_DIR / "tokenizer.json").is_file():
        raise RuntimeError("the MiniLM tokenizer has no tokenizer.json (not a fast tokenizer)")
    return {"variant": "minilm", "max_seq_length": max_len, "batch_size": MINILM_BATCH,
            "pad_id": int(tokenizer.pad_token_id), "pad_token": str(tokenizer.pad_token)}


def _set_attention(model: Any, implementation: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(implementation)
    else:
        model.config._attn_implementation = implementation


def _trace(graph: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    """TorchScript export with dynamic batch and token axes (as the LLM export does)."""
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS} | {OUTPUT: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on Python-side shape checks, LSTM batch
        torch.onnx.export(graph.eval(), args, str(path), input_names=INPUTS,
                          output_names=[OUTPUT], dynamic_axes=axes, opset_version=opset,
                          dynamo=False)


# -- runtime -----------------------------------------------------------------------------


class OnnxTitleEncoder:
    """An exported title encoder on ONNX Runtime: ``encode(texts) -> [n, dim]`` unit rows."""

    def __init__(self, folder: Path | str, providers: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        self.manifest: dict[str, Any] = json.loads((self.folder / MANIFEST_FILE).read_text())
        self.variant: str = self.manifest["variant"]
        self.dim = int(self.manifest["dim"])
        self.batch_size = int(self.manifest["batch_size"])
        self.session = create_session(self.folder / self.manifest.get("onnx", ONNX_FILE), providers)
        self.providers: list[str] = list(self.session.get_providers())
        if self.variant == "lstm":
            vocab = (self.folder / VOCAB_FILE).read_text().split("\n")[:-1]
            if vocab[0] != PAD_TOKEN:
                raise ValueError(f"{self.folder / VOCAB_FILE}: the first entry must be {PAD_TOKEN}")
            self.index = {w: i for i, w in enumerate(vocab)}
            self.unk = self.index[UNK_TOKEN]
            self.max_tokens = int(self.manifest["max_tokens"])
        elif self.variant == "minilm":
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_DIR / "tokenizer.json"))
            self.tokenizer.enable_truncation(max_length=int(self.manifest["max_seq_length"]))
            self.tokenizer.no_padding()
        else:
            raise ValueError(f"unknown title encoder variant {self.variant!r}")

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids and attention mask ``[n, t]`` (int64), as the torch encoder makes them."""
        if self.variant == "lstm":
            rows = [[self.index.get(w, self.unk) for w in words(t)][:self.max_tokens] or [self.unk]
                    for t in texts]
            pad = 0
        else:
            rows = [e.ids for e in self.tokenizer.encode_batch([str(t) for t in texts])]
            pad = int(self.manifest["pad_id"])
        ids = np.full((len(rows), max((len(r) for r in rows), default=0)), pad, np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return ids, mask

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        ids, mask = self.token_ids(texts)
        return self.session.run([OUTPUT], {"input_ids": ids, "attention_mask": mask})[0]

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Unit-normalised embeddings [n, dim] (float32), in input order."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        size = batch_size or self.batch_size
        if self.variant == "lstm":  # equal-length batches, as LSTMTitleEncoder.encode: no padding at all
            _, mask = self.token_ids(texts)
            out = np.empty((len(texts), self.dim), np.float32)
            for pick in length_buckets(mask.sum(1), size):
                out[pick] = self._run([texts[j] for j in pick])
            return out
        # MiniLM: padding is masked out exactly, so batch similar lengths together
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), np.float32)
        for i in range(0, len(texts), size):
            pick = order[i:i + size]
            out[pick] = self._run([texts[j] for j in pick])
        return out
