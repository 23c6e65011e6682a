"""LLM answers kept by event, so they can be generated once where it is cheap (a GPU box)
and used where the evaluation runs.

The answers are made by the same two calls the served path makes
(:func:`models.recommender.history_prompts` and
:func:`models.llm.generate.generate_in_batches`, what ``MixupRecommender.generate`` runs),
from the same LoRA run: the file records the run's ``model_version`` and the data set's
hash, and a bundle that adopts another run, or another data set, refuses it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from models.metrics import NextItemEvents

FORMAT = "stylestream-answers/1"


def event_keys(events: NextItemEvents, item_ids: Sequence[str]) -> list[str]:
    """One key per event: shopper, target item and history length (unique per event)."""
    return [f"{u}|{item_ids[t]}|{len(h)}" for u, t, h in
            zip(events.user_ids, events.targets, events.histories, strict=True)]


@dataclass
class Answers:
    """Generated next-item texts per event key, for the validation and the test events."""

    model_version: str
    data_hash: str
    val: dict[str, str] = field(default_factory=dict)
    test: dict[str, str] = field(default_factory=dict)
    costs: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"format": FORMAT, "model_version": self.model_version,
                                    "data_hash": self.data_hash, "costs": self.costs,
                                    "val": self.val, "test": self.test}) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> Answers:
        """The file's answers, cleaned again by today's :func:`~models.llm.generate.clean_output`
        (idempotent on clean text), so a file made before a cleaning rule still holds what
        serving would answer."""
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a stylestream answers file ({FORMAT})")
        val, test = ({k: _clean(v) for k, v in data.get(part, {}).items()} for part in ("val", "test"))
        return cls(data["model_version"], data["data_hash"], val, test, data.get("costs", {}))

    def require(self, model_version: str, data_hash: str) -> None:
        if self.data_hash != data_hash:
            raise ValueError(f"answers were generated on data {self.data_hash}, not {data_hash}")
        if self.model_version != model_version:
            raise ValueError(f"answers come from LLM {self.model_version}, not {model_version}")

    def lookup(self, part: str, keys: Sequence[str]) -> list[str] | None:
        """The answers for ``keys`` in order, or None when any is missing."""
        table = self.val if part == "val" else self.test
        if not all(k in table for k in keys):
            return None
        return [table[k] for k in keys]


def _clean(text: str) -> str:
    """Each answer line cleaned (several lines: sampled answers of one event)."""
    from models.llm.generate import clean_output

    return "\n".join(clean_output(line)[0] for line in text.split("\n"))


def generate_answers(generator: Any, items: pd.DataFrame, events: NextItemEvents, max_history: int,
                     max_new_tokens: int, batch_size: int, totals: Any = None,
                     progress: Any = None, num_beams: int = 1, samples: int = 0,
                     retries: int = 0) -> dict[str, str]:
    """The served generation for each event, keyed by :func:`event_keys` (``num_beams`` > 1:
    beam search instead of the served greedy decoding; ``samples`` > 0: that many sampled
    answers, one per line; ``retries`` > 0: malformed answers drawn again; for comparing them)."""
    from models.llm.generate import generate_in_batches
    from models.llm.prompts import _catalog
    from models.recommender import History, history_prompts

    histories = [History.of(h, k) for h, k in zip(events.histories, events.kinds, strict=True)]
    prompts = history_prompts(histories, _catalog(items), generator.tokenizer, max_history)
    texts = generate_in_batches(generator, prompts, max_new_tokens, batch_size, totals, progress,
                                num_beams, samples, retries)
    return dict(zip(event_keys(events, items["item_id"].astype(str).tolist()), texts, strict=True))
