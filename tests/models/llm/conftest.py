"""Tiny random causal LMs saved as ordinary HF folders, so tests take the real loading path.

The tokenizer is a 400-token byte-level BPE trained in memory on the prompt template's and a
toy catalog's words with ``tokenizers``, wrapped in ``PreTrainedTokenizerFast``; the
models are 2-layer Llama, Qwen2 and Gemma 3 with hidden size 32.  Building both takes well under a
second, and nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from models.data import Dataset
from models.llm.prompts import HistoryEvent, prompt_body

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
CATALOG = [  # item_id, title, category, brand, colour
    ("i1", "red linen dress", "dresses", "mango", "red"),
    ("i2", "blue denim jacket", "outerwear", "levis", "blue"),
    ("i3", "white cotton shirt", "tops", "cos", "white"),
    ("i4", "black leather boots", "shoes", "zara", "black"),
    ("i5", "green wool scarf", "accessories", "uniqlo", "green"),
    ("i6", "grey slim trousers", "bottoms", "cos", "grey"),
]
QWEN_TEMPLATE = ("{% for m in messages %}user : {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant :{% endif %}")


def corpus() -> list[str]:
    """Text with every word the tests' prompts and answers use."""
    sample = [HistoryEvent(k, t, c, col, b) for k in ("click", "purchase")
              for _, t, c, b, col in CATALOG]
    prompts = [prompt_body(sample, task) for task in ("title", "category", "query")]
    return [*prompts, "### Answer\nuser : assistant : search query linen boots for me"] * 3


def make_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE (like SmolLM2's and Qwen's) trained in memory on the tests' words.

    Byte-level, because transformers re-wraps some architectures' tokenizers (Qwen2) in
    their own byte-level class on load; it also gives the vocabulary real line-break tokens.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<s>", eos_token="</s>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


def _save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (GQA: 4 heads, 2 KV heads) with a word-level tokenizer and no pad token."""
    tok = make_tokenizer()
    tok.pad_token = None  # exercise load_base_model's pad-token fallback
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, initializer_range=0.2,
                      bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    return _save(LlamaForCausalLM(cfg), tok, folder)


def build_tiny_qwen(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2 (attention biases) whose tokenizer carries a chat template."""
    tok = make_tokenizer(QWEN_TEMPLATE)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, initializer_range=0.2,
                      bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return _save(Qwen2ForCausalLM(cfg), tok, folder)


def build_tiny_gemma3(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Gemma 3 (one sliding-window layer, window 8 so the prompts overflow it, one
    global layer; multi-query attention), the architecture of gemma3-270m."""
    tok = make_tokenizer()
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=16, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"],
                           max_position_embeddings=512, initializer_range=0.2,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return _save(Gemma3ForCausalLM(cfg), tok, folder)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core box they lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tokenizer_factory():
    """``make_tokenizer`` as a fixture (test modules must not import this conftest by name)."""
    return make_tokenizer


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.fixture(params=["llama", "qwen", "gemma3"])
def tiny_model(request: pytest.FixtureRequest, tiny_llama: Path, tiny_qwen: Path, tiny_gemma3: Path) -> Path:
    return {"llama": tiny_llama, "qwen": tiny_qwen, "gemma3": tiny_gemma3}[request.param]


def shop_dataset() -> Dataset:
    """Two shoppers over the toy catalog with clicks, purchases and one search query.

    u1: click i1, click i2, buy i1, click i3 (query "linen"), click i4, buy i4, buy i5
    u2: click i6, buy i6, click i2, buy i2
    """
    items = pd.DataFrame(CATALOG, columns=["item_id", "title", "category", "brand", "colour"])
    rows = [
        ("u1", "i1", 100, "click", None), ("u1", "i2", 110, "click", None),
        ("u1", "i1", 120, "purchase", None), ("u1", "i3", 130, "click", "linen"),
        ("u1", "i4", 140, "click", None), ("u1", "i4", 150, "purchase", None),
        ("u1", "i5", 200, "purchase", None),
        ("u2", "i6", 105, "click", None), ("u2", "i6", 115, "purchase", None),
        ("u2", "i2", 160, "click", None), ("u2", "i2", 210, "purchase", None),
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "kind", "query"])
    return Dataset(items, inter, name="toy-shop")


@pytest.fixture
def shop() -> Dataset:
    return shop_dataset()
