"""Generation: deterministic, batched equals one-by-one, output validation and timing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.llm.generate import (
    GenerationResult,
    GenerationTotals,
    Generator,
    clean_output,
    count_new_tokens,
    generate_in_batches,
    left_pad,
)
from models.llm.prompts import HistoryEvent, render_prompt


def prompts_for(tokenizer, n: int = 3) -> list[str]:
    """Prompts of different lengths, so batching needs real padding."""
    events = [HistoryEvent("click", "blue denim jacket", "outerwear", "blue", "levis"),
              HistoryEvent("purchase", "white cotton shirt", "tops", "white", "cos"),
              HistoryEvent("click", "green wool scarf", "accessories", "green", "uniqlo")]
    return [render_prompt(events[: i + 1], "title", tokenizer) for i in range(n)]


@pytest.fixture(scope="module")
def generators(tiny_llama: Path, tiny_qwen: Path, tiny_gemma3: Path) -> dict[str, Generator]:
    return {"llama": Generator(tiny_llama, device="cpu"),
            "qwen": Generator(tiny_qwen, device="cpu"),
            "gemma3": Generator(tiny_gemma3, device="cpu")}


@pytest.mark.parametrize("arch", ["llama", "qwen", "gemma3"])
def test_greedy_is_deterministic_and_batch_equals_one_by_one(generators, arch: str) -> None:
    gen = generators[arch]
    prompts = prompts_for(gen.tokenizer)
    batched = gen.generate(prompts, max_new_tokens=6)
    again = gen.generate(prompts, max_new_tokens=6)
    singles = [gen.generate([p], max_new_tokens=6) for p in prompts]
    assert batched.raw_texts == again.raw_texts
    assert batched.raw_texts == [s.raw_texts[0] for s in singles]
    assert batched.new_tokens == [s.new_tokens[0] for s in singles]
    assert batched.batch_size == 3 and len(batched.texts) == 3
    assert batched.tokens_generated == sum(batched.new_tokens) > 0
    assert batched.seconds > 0 and batched.tokens_per_s > 0
    assert batched.n_malformed == sum(batched.malformed)


def test_beam_search_is_available(generators) -> None:
    gen = generators["llama"]
    result = gen.generate(prompts_for(gen.tokenizer, 2), max_new_tokens=4, num_beams=3)
    assert len(result.texts) == 2 and result.tokens_generated > 0


def test_sampling_draws_several_answers_per_prompt_in_prompt_order(generators) -> None:
    gen = generators["llama"]
    prompts = prompts_for(gen.tokenizer, 3)
    torch.manual_seed(0)
    result = gen.generate(prompts, max_new_tokens=6, samples=4, temperature=5.0)
    assert len(result.texts) == 12
    texts = generate_in_batches(gen, prompts, 6, batch_size=2, samples=4)
    assert [len(t.split("\n")) for t in texts] == [4, 4, 4]
    assert len({line for t in texts for line in t.split("\n")}) > 3  # draws, not one greedy answer


class ScriptedGenerator:
    """Answers from a script: greedy gives each prompt's first answer, a sampled call the
    rest in turn (pure logic of the retry, apart from any model)."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script, self.calls = script, []

    def generate(self, prompts, max_new_tokens=24, samples=0, **_):
        self.calls.append((list(prompts), samples))
        texts = [a for p in prompts for a in (self.script[p][1:1 + samples] if samples else self.script[p][:1])]
        bad = [t.startswith("BAD") for t in texts]
        return GenerationResult(texts, texts, bad, 0.1, len(texts), len(prompts))


def test_malformed_answers_are_drawn_again_and_the_first_good_draw_kept() -> None:
    gen = ScriptedGenerator({"p1": ["fine", "x", "y"], "p2": ["BAD a", "BAD b", "good b"],
                             "p3": ["BAD c", "BAD d", "BAD e"]})
    totals = GenerationTotals()
    texts = generate_in_batches(gen, ["p1", "p2", "p3"], 8, batch_size=4, totals=totals, retries=2)
    assert texts == ["fine", "good b", "BAD c"]  # p3: every draw malformed, the first answer stays
    assert gen.calls[-1] == (["p2", "p3"], 2)  # only the malformed ones, sampled
    assert (totals.n, totals.malformed, totals.retried, totals.recovered) == (3, 2, 2, 1)


def test_no_retries_is_the_served_greedy_path() -> None:
    gen = ScriptedGenerator({"p1": ["BAD a", "good"]})
    assert generate_in_batches(gen, ["p1"], 8, batch_size=4) == ["BAD a"]
    assert [samples for _, samples in gen.calls] == [0]


def test_retries_with_a_real_model_keep_one_answer_per_prompt(generators) -> None:
    gen = generators["llama"]
    prompts = prompts_for(gen.tokenizer, 3)
    greedy = generate_in_batches(gen, prompts, 3, batch_size=3)  # 3 tokens: cut off, so malformed
    totals = GenerationTotals()
    torch.manual_seed(0)
    texts = generate_in_batches(gen, prompts, 3, batch_size=3, totals=totals, retries=2)
    assert len(texts) == 3 and all("\n" not in t for t in texts)
    assert totals.retried == totals.malformed > 0
    assert sum(a != b for a, b in zip(texts, greedy, strict=True)) == totals.recovered


def test_empty_batch() -> None:
    gen = Generator.__new__(Generator)  # no model needed for the empty case
    assert gen.generate([]).texts == []


@pytest.mark.parametrize(("raw", "finished", "text", "malformed"), [
    ("Green Wool Scarf", True, "Green Wool Scarf", False),
    ("  Green Wool Scarf\n", True, "Green Wool Scarf", False),
    ("Title: Green Wool Scarf", True, "Green Wool Scarf", True),
    ('"Green Wool Scarf"', True, "Green Wool Scarf", True),
    ("1. Green Wool Scarf", True, "Green Wool Scarf", True),
    ("Green Wool Scarf\nBecause the shopper likes wool.", True, "Green Wool Scarf", True),
    ("Green Wool Scarf", False, "Green Wool Scarf", True),  # cut off by the token limit
    ("The next product the shopper will buy is a **White Cotton Shirt**", True,
     "White Cotton Shirt", True),
    ("", True, "", True),
    (" ".join(f"w{i}" for i in range(40)), True, " ".join(f"w{i}" for i in range(40)), True),
    ("Sterling Silver 18K Gold Rose Gold Rose Gold Rose", False, "Sterling Silver 18K Gold Rose Gold",
     True),  # a loop is cut where a pair of words comes round again
    ("word " * 40, True, "word word", True),
    ("Rose Gold Plated Ring, Gold", True, "Rose Gold Plated Ring, Gold", False),  # a word may recur
])
def test_clean_output(raw: str, finished: bool, text: str, malformed: bool) -> None:
    assert clean_output(raw, finished) == (text, malformed)


def test_left_pad_and_new_token_counts() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    new = torch.tensor([[4, 2, 9, 9], [10, 4, 4, 4], [4, 11, 4, 4]])
    counts, done = count_new_tokens(new, stop_ids=[2], newline_ids={10, 11})
    # row 0 stops at EOS; row 1 starts with a line break (not an end); row 2 ends at its break
    assert counts == [2, 4, 2] and done == [True, False, True]
