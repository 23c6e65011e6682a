"""Prompt building: order, kinds, attributes, truncation from the oldest side, targets, aux."""

from __future__ import annotations

import pytest

from models.llm.prompts import (
    PLAIN_ANSWER_CUE,
    Example,
    HistoryEvent,
    build_examples,
    history_length,
    render_event,
    render_prompt,
)


def history_lines(prompt: str) -> list[str]:
    body = prompt.split("### History", 1)[1]
    return [ln for ln in body.splitlines() if ln[:1].isdigit()]


def test_render_event_has_position_kind_title_and_attributes() -> None:
    line = render_event(3, HistoryEvent("purchase", "red linen dress", "dresses", "red", "mango"))
    assert line == "3. bought: red linen dress | category: dresses | colour: red | brand: mango"
    assert render_event(1, HistoryEvent("click", "scarf")) == "1. clicked: scarf"


def test_prompt_has_task_requirements_format_and_history_in_order() -> None:
    events = [HistoryEvent("click", f"item {i}") for i in range(5)]
    prompt = render_prompt(events, "title")
    for section in ("### Task", "### Requirements", "### Output format", "### History"):
        assert section in prompt
    assert [ln.split(": ", 1)[1] for ln in history_lines(prompt)] == [f"item {i}" for i in range(5)]
    assert prompt.endswith(PLAIN_ANSWER_CUE)  # no chat template: plain answer cue


def test_truncation_keeps_the_newest_items() -> None:
    events = [HistoryEvent("click", f"item number {i}", "tops", "red", "cos") for i in range(40)]
    full = render_prompt(events, "title")
    short = render_prompt(events, "title", max_prompt_tokens=len(full.split()) - 30)
    kept = history_lines(short)
    assert 0 < len(kept) < 40
    assert kept[-1].endswith("item number 39 | category: tops | colour: red | brand: cos")
    assert kept[0].startswith("1. clicked: item number ")  # renumbered from 1
    assert len(short.split()) <= len(full.split()) - 30
    assert history_lines(render_prompt(events, "title", max_history=4))[0].startswith(
        "1. clicked: item number 36")


def test_truncation_counts_tokenizer_tokens_and_keeps_one_item_at_least(tokenizer_factory) -> None:
    tok = tokenizer_factory()
    events = [HistoryEvent("purchase", "red linen dress", "dresses", "red", "mango")] * 10
    prompt = render_prompt(events, "title", tokenizer=tok, max_prompt_tokens=150)
    assert len(tok(prompt)["input_ids"]) <= 150 or history_length(prompt) == 1
    assert history_length(render_prompt(events, "title", tokenizer=tok, max_prompt_tokens=5)) == 1


def test_chat_template_is_used_when_the_tokenizer_has_one(tokenizer_factory) -> None:
    tok = tokenizer_factory("{% for m in messages %}user : {{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %} assistant :{% endif %}")
    prompt = render_prompt([HistoryEvent("click", "scarf")], "title", tokenizer=tok)
    assert prompt.startswith("user : ### Task") and prompt.endswith("assistant :")


def test_build_examples_targets_kinds_and_aux_task(shop) -> None:
    examples = build_examples(shop, "test", max_history=10, tasks=("title", "category"))
    assert all(isinstance(e, Example) for e in examples)
    by_key = {(e.user_id, e.task): e for e in examples}
    assert set(by_key) == {("u1", "title"), ("u1", "category"), ("u2", "title"),
                           ("u2", "category")}
    u1 = by_key[("u1", "title")]
    assert u1.target == "green wool scarf" and u1.target_item_id == "i5"
    assert by_key[("u1", "category")].target == "accessories"
    lines = history_lines(u1.prompt)
    assert len(lines) == 6 and u1.n_history == 6
    assert lines[0] == ("1. clicked: red linen dress | category: dresses | colour: red"
                        " | brand: mango")
    assert lines[2].startswith("3. bought: red linen dress")
    assert lines[-1].startswith("6. bought: black leather boots")  # newest last
    assert "green wool scarf" not in u1.prompt  # the target never leaks into its history
    assert "category of the next product" in by_key[("u1", "category")].prompt


def test_build_examples_split_and_history_limits(shop) -> None:
    train = build_examples(shop, "train", max_history=2, tasks=("title",))
    # u1 bought i1 (120) and i4 (150) in train; u2 bought i6 (115)
    assert sorted((e.user_id, e.target) for e in train) == [
        ("u1", "black leather boots"), ("u1", "red linen dress"), ("u2", "grey slim trousers")]
    assert all(e.n_history <= 2 for e in train)
    boots = next(e for e in train if e.target == "black leather boots")
    assert history_lines(boots.prompt)[-1].startswith("2. clicked: black leather boots")
    latest = build_examples(shop, "all", max_history=5, tasks=("title",), max_per_user=1)
    assert sorted(e.target_item_id for e in latest) == ["i2", "i5"]


def test_query_task_predicts_the_next_search_query(shop) -> None:
    examples = build_examples(shop, "all", max_history=10, tasks=("query",))
    assert [(e.user_id, e.target, e.target_item_id, e.n_history) for e in examples] == [
        ("u1", "linen", "i3", 3)]
    assert "next search query" in examples[0].prompt


def test_build_examples_accepts_raw_frames_and_rejects_bad_arguments(shop) -> None:
    from_frames = build_examples((shop.items, shop.interactions), "test", tasks=("title",))
    assert [e.target for e in from_frames] == [e.target for e in
                                               build_examples(shop, "test", tasks=("title",))]
    with pytest.raises(ValueError):
        build_examples(shop, "holdout")
    with pytest.raises(ValueError):
        build_examples(shop, "train", tasks=("colour",))
