"""Answers generated elsewhere are used only for the events, LoRA run and data they belong to."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.answers import Answers, event_keys, generate_answers
from models.metrics import NextItemEvents


def events() -> NextItemEvents:
    return NextItemEvents(["u1", "u1", "u2"], [["a"], ["a", "b"], ["b"]], [["purchase"], ["purchase", "click"],
                          ["purchase"]], np.array([1, 2, 2]), ["purchase"] * 3)


def test_keys_are_unique_per_event_and_answers_round_trip(tmp_path):
    keys = event_keys(events(), ["a", "b", "c"])
    assert keys == ["u1|b|1", "u1|c|2", "u2|c|1"]
    answers = Answers("lora-x", "hash", val={}, test=dict(zip(keys, ["t1", "t2", "t3"], strict=True)))
    again = Answers.load(answers.save(tmp_path / "answers.json"))
    assert again.lookup("test", keys[::-1]) == ["t3", "t2", "t1"]
    assert again.lookup("test", ["u9|a|1"]) is None and again.lookup("val", keys) is None
    again.require("lora-x", "hash")
    with pytest.raises(ValueError, match="LLM"):
        again.require("lora-y", "hash")
    with pytest.raises(ValueError, match="data"):
        again.require("lora-x", "other")


def test_a_file_made_before_a_cleaning_rule_is_cleaned_as_serving_would(tmp_path):
    looped = "Sterling Silver 18K Gold Rose Gold Rose Gold Rose"
    answers = Answers("lora-x", "hash", val={"k": looped}, test={"k": "Green Wool Scarf"})
    again = Answers.load(answers.save(tmp_path / "answers.json"))
    assert again.val["k"] == "Sterling Silver 18K Gold Rose Gold" and again.test["k"] == "Green Wool Scarf"


class EchoGenerator:
    """Pure-logic stand-in: answers with the prompt's length (the real generator is covered
    by the LLM tests and bench_convergence.py)."""

    class tokenizer:  # noqa: N801 - the attribute name the prompt renderer reads
        @staticmethod
        def apply_chat_template(messages, tokenize=False, add_generation_prompt=True):
            return "".join(m["content"] for m in messages)

    def generate(self, prompts, max_new_tokens=24):
        from types import SimpleNamespace

        return SimpleNamespace(texts=[f"len {len(p)}" for p in prompts])


def test_generate_answers_keys_every_event():
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["red dress", "blue jeans", "hat"],
                          "category": [None] * 3, "colour": [None] * 3, "brand": [None] * 3})
    out = generate_answers(EchoGenerator(), items, events(), max_history=5, max_new_tokens=4, batch_size=2)
    assert list(out) == event_keys(events(), ["a", "b", "c"]) and all(v.startswith("len ") for v in out.values())


class BeamRecorder(EchoGenerator):
    def __init__(self):
        self.beams = []

    def generate(self, prompts, max_new_tokens=24, num_beams=1):
        self.beams.append(num_beams)
        return super().generate(prompts, max_new_tokens)


def test_a_beam_width_reaches_the_generator_and_greedy_asks_for_none():
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["red dress", "blue jeans", "hat"],
                          "category": [None] * 3, "colour": [None] * 3, "brand": [None] * 3})
    beam = BeamRecorder()
    generate_answers(beam, items, events(), max_history=5, max_new_tokens=4, batch_size=2, num_beams=4)
    greedy = BeamRecorder()
    generate_answers(greedy, items, events(), max_history=5, max_new_tokens=4, batch_size=2)
    assert beam.beams == [4, 4] and greedy.beams == [1, 1]


class SampleRecorder(EchoGenerator):
    def generate(self, prompts, max_new_tokens=24, samples=0):
        from types import SimpleNamespace

        return SimpleNamespace(texts=[f"{p[:3]} take {s}" for p in prompts for s in range(samples)])


def test_sampled_answers_keep_one_line_per_sample_through_the_file(tmp_path):
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["red dress", "blue jeans", "hat"],
                          "category": [None] * 3, "colour": [None] * 3, "brand": [None] * 3})
    out = generate_answers(SampleRecorder(), items, events(), max_history=5, max_new_tokens=4, batch_size=2,
                           samples=3)
    assert all(len(v.split("\n")) == 3 and v.split("\n")[2].endswith("take 2") for v in out.values())
    again = Answers.load(Answers("lora-x", "hash", test=out).save(tmp_path / "answers.json"))
    assert again.test == out
