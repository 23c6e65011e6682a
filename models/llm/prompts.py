"""Recommendation prompts built from a shopper's ordered history (the paper's prompt recipe).

Each prompt has a task description, execution requirements and a strict output format,
then the history: one line per interaction, oldest first and newest last, each with its
position, its kind (clicked/bought), the item title and its named attributes (the paper
found attributes matter most).  Long histories lose their OLDEST items first, to fit a token
budget, because the recent items say most about the next purchase.

The main task generates the title of the next purchased item.  Auxiliary tasks from the
same data (the next item's category, the next search query) are trained together with it:
they reuse the same history and teach the model the catalog's vocabulary.

:func:`render_prompt` is also what serving calls on a live sequence, so training and
serving prompts cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

SPLITS = ("train", "val", "test", "all")
KIND_WORDS = {"click": "clicked", "purchase": "bought"}
ATTRIBUTES = ("category", "colour", "brand")
PLAIN_ANSWER_CUE = "### Answer\n"


@dataclass(frozen=True)
class TaskSpec:
    """What one task asks for: the words that differ between task prompts."""

    name: str
    goal: str
    output: str


TASKS: dict[str, TaskSpec] = {
    "title": TaskSpec("title", "the title of the next product the shopper will buy",
                      "the product title only"),
    "category": TaskSpec("category", "the category of the next product the shopper will buy",
                         "the category name only"),
    "query": TaskSpec("query", "the next search query the shopper will type",
                      "the search query only"),
}


@dataclass(frozen=True)
class HistoryEvent:
    """One interaction as the prompt shows it."""

    kind: str  # "click" | "purchase"
    title: str
    category: str | None = None
    colour: str | None = None
    brand: str | None = None


@dataclass
class Example:
    """One training/evaluation pair: the rendered prompt and the text the model should produce."""

    prompt: str
    target: str
    task: str
    user_id: str
    target_item_id: str
    n_history: int = 0


# -- rendering ---------------------------------------------------------------------------
def render_event(position: int, event: HistoryEvent) -> str:
    """``3. bought: Linen Midi Dress | category: dresses | colour: red | brand: Mango``."""
    kind = KIND_WORDS.get(event.kind, event.kind)
    attrs = [f"{name}: {value}" for name in ATTRIBUTES
             if (value := getattr(event, name)) not in (None, "")]
    return " | ".join([f"{position}. {kind}: {event.title}", *attrs])


def prompt_body(events: Sequence[HistoryEvent], task: str = "title") -> str:
    """The instruction text (before any chat template) for ``events`` in time order."""
    spec = TASKS[task]
    lines = [
        "### Task",
        f"You are a fashion recommendation assistant. From the shopper's history below, "
        f"predict {spec.goal}.",
        "### Requirements",
        "- The history is in time order: item 1 is the oldest, the last item is the most recent.",
        "- 'bought' marks a purchase and 'clicked' a product view; purchases weigh more.",
        "- Prefer the categories, colours and brands the shopper returns to.",
        "### Output format",
        f"Reply with {spec.output}, on a single line, with no numbering, quotes or explanation.",
        "### History",
        *(render_event(i, e) for i, e in enumerate(events, start=1)),
    ]
    return "\n".join(lines)


def apply_template(body: str, tokenizer: Any | None) -> str:
    """Wrap the body in the tokenizer's chat template when it has one, else a plain cue."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": body}],
                                             tokenize=False, add_generation_prompt=True)
    return f"{body}\n{PLAIN_ANSWER_CUE}"


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a rendered prompt, the one encoding training, torch and ONNX all share.

    Special tokens are added unless the text already starts with the BOS token (chat
    templates usually write it themselves), so BOS is never doubled.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and prompt.startswith(bos))
    return list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])


def token_counter(tokenizer: Any | None) -> Callable[[str], int]:
    """Counts prompt tokens with the tokenizer, or whitespace words when there is none."""
    if tokenizer is None:
        return lambda text: len(text.split())
    return lambda text: len(encode_prompt(tokenizer, text))


def render_prompt(events: Sequence[HistoryEvent], task: str = "title", tokenizer: Any | None = None,
                  max_history: int | None = None, max_prompt_tokens: int | None = None) -> str:
    """The full prompt for a history, keeping the newest events that fit the budgets.

    ``max_history`` caps the number of events; ``max_prompt_tokens`` caps the rendered
    prompt's length, dropping the oldest events first (at least the newest one stays).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    events = list(events)[-max_history:] if max_history else list(events)

    def render(keep: int) -> str:
        return apply_template(prompt_body(events[len(events) - keep:], task), tokenizer)

    if max_prompt_tokens is None or len(events) <= 1:
        return render(len(events))
    count = token_counter(tokenizer)
    if count(render(len(events))) <= max_prompt_tokens:
        return render(len(events))
    lo, hi = 1, len(events) - 1  # the largest `keep` that fits; token counts grow with keep
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(render(mid)) <= max_prompt_tokens:
            lo = mid
        else:
            hi = mid - 1
    return render(lo)


def history_length(prompt: str) -> int:
    """How many history lines a rendered prompt holds (used by tests and diagnostics)."""
    body = prompt.split("### History", 1)[-1]
    return sum(1 for line in body.splitlines() if line[:1].isdigit() and ". " in line)


# -- examples from a data set ------------------------------------------------------------
def build_examples(dataset_frames: Any, split: str = "train", max_history: int = 20,
                   tokenizer: Any | None = None, max_prompt_tokens: int | None = None,
                   tasks: Iterable[str] = ("title", "category"), min_history: int = 1,
                   max_per_user: int | None = None, rows: pd.Index | None = None) -> list[Example]:
    """Examples whose targets fall in ``split``; their histories are everything earlier.

    ``dataset_frames`` is a :class:`models.data.Dataset` or an ``(items, interactions)``
    pair.  Targets are purchases for ``title``/``category`` and clicks carrying a search
    query for ``query``.  A history may reach back into earlier splits, as a live system's
    would, but never past its target.  ``max_per_user`` keeps each user's latest targets;
    ``rows`` (interaction index labels) limits the targets to those rows, so a run that reads
    a few thousand examples does not render and tokenise hundreds of thousands.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected some of {', '.join(TASKS)}")
    items, interactions, in_split = _frames(dataset_frames, split)
    if rows is not None:
        in_split = in_split.intersection(rows)
        interactions = interactions[interactions["user_id"].isin(interactions.loc[in_split, "user_id"])]
    catalog = _catalog(items)
    out: list[Example] = []
    for user_id, rows in interactions.groupby("user_id", sort=True):
        out.extend(_user_examples(str(user_id), rows, in_split, catalog, tasks, tokenizer,
                                  max_history, max_prompt_tokens, min_history, max_per_user))
    return out


def _frames(dataset_frames: Any, split: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.Index]:
    """Items, all interactions (time-sorted) and the index labels of the split's rows."""
    if isinstance(dataset_frames, tuple | list):
        from models.data import Dataset  # local import: only needed for raw frames

        dataset_frames = Dataset(dataset_frames[0], dataset_frames[1])
    interactions = dataset_frames.interactions
    if split == "all":
        return dataset_frames.items, interactions, interactions.index
    part = dict(zip(("train", "val", "test"), dataset_frames.parts(), strict=True))[split]
    return dataset_frames.items, interactions, part.index


def _catalog(items: pd.DataFrame) -> dict[str, HistoryEvent]:
    """item_id -> an event template (kind filled in later) with the item's text fields."""
    def text(value: Any) -> str | None:
        return None if value is None or pd.isna(value) or str(value).strip() == "" else str(value)

    return {str(r.item_id): HistoryEvent("click", text(r.title) or f"item {r.item_id}",
                                         text(r.category), text(r.colour), text(r.brand))
            for r in items.itertuples(index=False)}


def events_for(item_ids: Sequence[str], kinds: Sequence[str],
               catalog: Mapping[str, HistoryEvent]) -> list[HistoryEvent]:
    """History events for item ids and kinds, filling text from the catalog (unknown ids kept)."""
    out = []
    for item_id, kind in zip(item_ids, kinds, strict=True):
        base = catalog.get(str(item_id)) or HistoryEvent(kind, f"item {item_id}")
        out.append(HistoryEvent(kind, base.title, base.category, base.colour, base.brand))
    return out


def _user_examples(user_id: str, rows: pd.DataFrame, in_split: pd.Index,
                   catalog: Mapping[str, HistoryEvent], tasks: tuple[str, ...], tokenizer: Any,
                   max_history: int, max_prompt_tokens: int | None, min_history: int,
                   max_per_user: int | None) -> list[Example]:
    """All examples of one user; rows are that user's interactions in time order."""
    events = events_for(list(rows["item_id"]), list(rows["kind"]), catalog)
    wanted = rows.index.isin(in_split)
    targets = [j for j in range(len(rows)) if wanted[j] and j >= min_history]
    if max_per_user is not None:
        targets = targets[-max_per_user:] if max_per_user > 0 else []
    out = []
    for j in targets:
        row = rows.iloc[j]
        history = events[max(0, j - max_history):j]
        for task in tasks:
            target = _target_text(task, row, catalog)
            if target is None:
                continue
            prompt = render_prompt(history, task, tokenizer, max_history, max_prompt_tokens)
            out.append(Example(prompt, target, task, user_id, str(row["item_id"]),
                               history_length(prompt)))
    return out


def _target_text(task: str, row: pd.Series, catalog: Mapping[str, HistoryEvent]) -> str | None:
    """The answer for ``task`` at this row, or None when the row is no target for it."""
    item = catalog.get(str(row["item_id"]))
    if task == "query":
        query = row["query"]
        return None if pd.isna(query) or not str(query).strip() else str(query).strip()
    if row["kind"] != "purchase" or item is None:
        return None
    if task == "title":  # a placeholder title ("item <id>") is no answer to learn
        return None if item.title == f"item {row['item_id']}" else item.title
    return item.category
