"""ONNX export with a KV cache: logits parity with torch and identical greedy answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.llm.base_model import load_base_model
from models.llm.generate import Generator
from models.llm.onnx_export import (
    OnnxGenerator,
    create_session,
    export_onnx,
    onnx_providers,
    torch_next_token_logits,
)
from models.llm.prompts import HistoryEvent, encode_prompt, render_prompt

LOGIT_ATOL = 1e-4  # fp32 torch vs ONNX Runtime; tiny models agree to ~1e-6


def prompts_for(tokenizer) -> list[str]:
    events = [HistoryEvent("purchase", "red linen dress", "dresses", "red", "mango"),
              HistoryEvent("click", "grey slim trousers", "bottoms", "grey", "cos"),
              HistoryEvent("click", "black leather boots", "shoes", "black", "zara")]
    return [render_prompt(events[: i + 1], "title", tokenizer) for i in range(3)]


@pytest.fixture(scope="module", params=["llama", "qwen", "gemma3"])
def exported(request, tiny_llama: Path, tiny_qwen: Path, tiny_gemma3: Path, tmp_path_factory) -> tuple[Path, Path]:
    source = {"llama": tiny_llama, "qwen": tiny_qwen, "gemma3": tiny_gemma3}[request.param]
    out = tmp_path_factory.mktemp(f"onnx-{request.param}")
    result = export_onnx(source, out)
    assert result.max_abs_diff is not None and result.max_abs_diff < LOGIT_ATOL
    return source, out


def test_next_token_logits_match_torch(exported) -> None:
    source, folder = exported
    model, tok = load_base_model(source, device="cpu")
    prompts = prompts_for(tok)
    ours = OnnxGenerator(folder, providers=["CPUExecutionProvider"]).next_token_logits(prompts)
    ref = torch_next_token_logits(model, tok, prompts)
    assert ours.shape == ref.shape == (3, len(tok))
    np.testing.assert_allclose(ours, ref, atol=LOGIT_ATOL, rtol=0)


def test_greedy_answers_match_torch_batched_and_single(exported) -> None:
    source, folder = exported
    torch_gen = Generator(source, device="cpu")
    onnx_gen = OnnxGenerator(folder)
    prompts = prompts_for(torch_gen.tokenizer)
    ref = torch_gen.generate(prompts, max_new_tokens=8)
    ours = onnx_gen.generate(prompts, max_new_tokens=8)
    assert ours.raw_texts == ref.raw_texts and ours.texts == ref.texts
    assert ours.new_tokens == ref.new_tokens and ours.malformed == ref.malformed
    assert [onnx_gen.generate([p], max_new_tokens=8).raw_texts[0] for p in prompts] == ref.raw_texts
    assert ours.tokens_per_s > 0 and onnx_gen.providers[-1] == "CPUExecutionProvider"
    fixed_ref = torch_gen.generate(prompts, max_new_tokens=8, fixed_length=True)
    fixed = onnx_gen.generate(prompts, max_new_tokens=8, fixed_length=True)
    assert fixed.new_tokens == fixed_ref.new_tokens == [8, 8, 8]
    assert fixed.raw_texts == fixed_ref.raw_texts
    with pytest.raises(ValueError):
        onnx_gen.generate(prompts, num_beams=2)


def test_export_is_reused_for_the_same_source(exported) -> None:
    source, folder = exported
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    again = export_onnx(source, folder)
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp and again.onnx_path.is_file()


def test_providers_fall_back_to_cpu_quietly(exported, capfd) -> None:
    providers = onnx_providers()
    assert providers[-1] == "CPUExecutionProvider"
    session = create_session(exported[1] / "model.onnx", providers)
    assert "CPUExecutionProvider" in session.get_providers()
    assert "Failed to create" not in capfd.readouterr().err  # a missing CUDA is not an error


def test_shared_prefix_cache_gives_the_answers_of_full_prompts(exported) -> None:
    """The instruction header's keys and values are computed once and reused; every answer
    and every step's choice must be what the full prompt gives."""
    _, folder = exported
    cached, plain = OnnxGenerator(folder), OnnxGenerator(folder, prefix_cache=False)
    prompts = prompts_for(cached.tokenizer)
    if folder.name.startswith("onnx-gemma3"):  # its sliding window would count the pads after the prefix
        assert not cached.prefix_cache
        assert cached.generate(prompts, max_new_tokens=8).raw_texts == plain.generate(prompts, 8).raw_texts
        return
    first = cached.generate(prompts[:1], max_new_tokens=8)  # a lone prompt: its own prefix, minus a token
    assert first.raw_texts == plain.generate(prompts[:1], max_new_tokens=8).raw_texts
    for batch in (prompts, prompts[::-1], prompts[1:], [prompts[2]] * 2):
        ours, ref = cached.generate(batch, max_new_tokens=8), plain.generate(batch, max_new_tokens=8)
        assert ours.raw_texts == ref.raw_texts and ours.new_tokens == ref.new_tokens
    header = len(cached._prefix)
    assert header >= 16 and all(encode_prompt(cached.tokenizer, p)[:header] == cached._prefix for p in prompts)
    logits_cached = cached._run(*cached._first_inputs([encode_prompt(cached.tokenizer, p) for p in prompts]))[0]
    np.testing.assert_allclose(logits_cached, plain.next_token_logits(prompts), atol=LOGIT_ATOL, rtol=0)
