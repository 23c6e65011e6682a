"""Batched, deterministic generation of next-item text from a tuned (or base) model.

Generation is greedy by default so the same sequence always yields the same
recommendation (beam search is optional).  Prompts are left-padded so every row's last
prompt token sits at the same position and new tokens line up.  Only the first line of
each output counts; it is validated against the prompt's strict format, and a malformed
answer (chatty prefix, quotes, numbering, several lines, cut off) is cleaned rather than
dropped, and counted: the paper reports ~7% malformed generations, so the count is a
metric worth watching.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from models.llm.base_model import load_base_model, resolve_device, stop_token_ids
from models.llm.prompts import encode_prompt

MAX_ANSWER_WORDS = 32
_PREFIX = re.compile(r"^(?:(?:the\s+)?(?:next\s+)?(?:product\s+|item\s+)?(?:title|category|"
                     r"query|search query|answer|recommendation|product|item)\s*[:\-]\s*)+",
                     re.IGNORECASE)
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_NUMBERING = re.compile(r"^\s*(?:[-*•]+|\d+[.)])\s*")
_QUOTES = "\"'`“”‘’"


@dataclass
class GenerationResult:
    """Cleaned answers plus what it cost to produce them."""

    texts: list[str]
    raw_texts: list[str]
    malformed: list[bool]
    seconds: float
    tokens_generated: int
    batch_size: int = 1
    new_tokens: list[int] = field(default_factory=list)

    @property
    def n_malformed(self) -> int:
        return sum(self.malformed)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_generated / self.seconds if self.seconds > 0 else 0.0


def clean_output(raw: str, finished: bool = True) -> tuple[str, bool]:
    """(answer, malformed): the first non-empty line, cleaned of prefixes, numbering, quotes.

    An answer is well formed when it needed no cleaning, was a single line, ended before
    the token limit (``finished``) and is short enough to be a title.
    """
    lines = [ln.strip() for ln in raw.strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    text = _NUMBERING.sub("", first, count=1)
    text = _PREFIX.sub("", text).strip()
    bold = _BOLD.search(text)  # chatty answers often bold the product: "... is a **X**"
    if bold:
        text = bold.group(1)
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    text = text.strip(_QUOTES).rstrip(".").strip()
    text = re.sub(r"\s+", " ", text)
    text, looped = cut_repeats(text)
    ok = (bool(text) and text == first and len(lines) <= 1 and finished and not looped
          and len(text.split()) <= MAX_ANSWER_WORDS)
    return text, not ok


def cut_repeats(text: str) -> tuple[str, bool]:
    """(text, cut): ``text`` up to where a pair of words comes round again.

    A small model that has lost its way loops ("Rose Gold Rose Gold Rose ..."); the loop
    adds nothing to the title and pulls its embedding towards the looped words.  A repeated
    single word is kept: titles repeat words ("Gold Plated ... Rose Gold").
    """
    words = text.split(" ")
    seen: set[tuple[str, str]] = set()
    for i in range(len(words) - 1):
        pair = (words[i].lower(), words[i + 1].lower())
        if pair in seen:
            return " ".join(words[:i + 1]).rstrip(" ,;-"), True
        seen.add(pair)
    return text, False


class _StopAtLineEnd(StoppingCriteria):
    """Per-row stop once a newline token appears: only the first line is ever used."""

    def __init__(self, newline_ids: set[int], prompt_len: int) -> None:
        self.newline_ids = torch.tensor(sorted(newline_ids), dtype=torch.long)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1]
        hit = torch.isin(last, self.newline_ids.to(last.device))
        return hit & (input_ids.shape[1] > self.prompt_len + 1)


def newline_token_ids(tokenizer: Any) -> set[int]:
    """Ids of vocabulary entries that decode to text containing a line break."""
    ids = set()
    for token, tid in tokenizer.get_vocab().items():
        if "\n" in token or "Ċ" in token:  # Ċ: byte-level BPE's spelling of "\n"
            if "\n" in tokenizer.decode([tid]):
                ids.add(int(tid))
    return ids


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with each row right-aligned, as decoder-only batching needs."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def count_new_tokens(new: torch.Tensor, stop_ids: Sequence[int],
                     newline_ids: set[int]) -> tuple[list[int], list[bool]]:
    """Per row: tokens actually generated (through the first stop) and whether it stopped."""
    counts, finished = [], []
    stops = set(stop_ids)
    for row in new.tolist():
        n, done = len(row), False
        for i, tid in enumerate(row):  # a leading line break does not end the answer
            if tid in stops or (i > 0 and tid in newline_ids):
                n, done = i + 1, True
                break
        counts.append(n)
        finished.append(done)
    return counts, finished


class Generator:
    """A causal LM ready to turn prompts into next-item text, loaded from a local folder.

    ``path`` is a plain (e.g. merged) checkpoint, or an adapter folder written by
    :func:`models.llm.lora.train_lora`; ``adapter`` adds a LoRA adapter on top of ``path``.
    Adapters are merged at load time, so serving pays no LoRA overhead.
    """

    def __init__(self, path: Path, adapter: Path | None = None, device: str = "auto",
                 dtype: torch.dtype = torch.float32) -> None:
        path = Path(path)
        if adapter is None and (path / "adapter_config.json").is_file():
            path, adapter = _adapter_base(path), path
        self.device = resolve_device(device)
        self.model, self.tokenizer = load_base_model(path, dtype=dtype, device=self.device)
        if adapter is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter)).merge_and_unload()
            self.model.eval()
        self.path, self.adapter = path, adapter
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.newline_ids = newline_token_ids(self.tokenizer)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask for prompts, encoded as training encoded them."""
        return left_pad([encode_prompt(self.tokenizer, p) for p in prompts],
                        self.tokenizer.pad_token_id)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 24, num_beams: int = 1,
                 fixed_length: bool = False, samples: int = 0, temperature: float = 0.8) -> GenerationResult:
        """Generate one answer per prompt in a single batch (greedy unless ``num_beams`` > 1).

        ``fixed_length`` decodes exactly ``max_new_tokens`` per row, ignoring EOS and line
        ends: benchmarks use it so throughput does not depend on what the model says.
        ``samples`` > 0 draws that many sampled answers per prompt instead (at ``temperature``),
        prompt after prompt in the result: for averaging their embeddings.
        """
        if not prompts:
            return GenerationResult([], [], [], 0.0, 0, 0)
        started = time.perf_counter()
        ids, mask = self.encode(prompts)
        stopping = None
        if self.newline_ids and num_beams == 1 and not fixed_length:
            stopping = StoppingCriteriaList([_StopAtLineEnd(self.newline_ids, ids.shape[1])])
        decoding = ({"do_sample": True, "num_return_sequences": samples, "temperature": temperature,
                     "top_p": None, "top_k": None} if samples > 0 else
                    {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        out = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens if fixed_length else None,
            num_beams=num_beams, eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=stopping, **decoding)
        new = out[:, ids.shape[1]:].cpu()
        seconds = time.perf_counter() - started
        return self._result(new, seconds, len(prompts), fixed_length)

    def _result(self, new: torch.Tensor, seconds: float, batch: int,
                fixed_length: bool = False) -> GenerationResult:
        if fixed_length:
            counts, finished = [new.shape[1]] * new.shape[0], [True] * new.shape[0]
        else:
            counts, finished = count_new_tokens(new, self.stop_ids, self.newline_ids)
        return build_result(self.tokenizer, new, counts, finished, seconds, batch)


def build_result(tokenizer: Any, new: torch.Tensor, counts: list[int], finished: list[bool],
                 seconds: float, batch: int) -> GenerationResult:
    """Decode, validate and time a batch of generated ids (shared with the ONNX generator)."""
    raws = [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in
            zip(new.tolist(), counts, strict=True)]
    cleaned = [clean_output(raw, done) for raw, done in zip(raws, finished, strict=True)]
    return GenerationResult([c for c, _ in cleaned], raws, [bad for _, bad in cleaned],
                            seconds, sum(counts), batch, counts)


def _adapter_base(adapter_dir: Path) -> Path:
    """The local base-model folder an adapter was trained on (from its adapter_config.json)."""
    import json

    base = json.loads((adapter_dir / "adapter_config.json").read_text()).get(
        "base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(f"adapter {adapter_dir} names base model {base!r}, which is not "
                                "a local model folder; pass the base path and adapter= explicitly")
    return Path(base)


@dataclass
class GenerationTotals:
    """Running totals over many batches: what generation cost and how often it was malformed."""

    n: int = 0
    tokens: int = 0
    seconds: float = 0.0
    malformed: int = 0
    retried: int = 0  # malformed answers drawn again (``retries``)
    recovered: int = 0  # of those, the ones a retry made well-formed

    def add(self, result: GenerationResult) -> None:
        self.n += len(result.texts)
        self.tokens += result.tokens_generated
        self.seconds += result.seconds
        self.malformed += result.n_malformed

    def add_retry(self, result: GenerationResult, retried: int, recovered: int) -> None:
        """What the retries cost; the malformed rate stays that of the first answers."""
        self.tokens += result.tokens_generated
        self.seconds += result.seconds
        self.retried += retried
        self.recovered += recovered

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def malformed_rate(self) -> float:
        return self.malformed / self.n if self.n else 0.0


def generate_in_batches(generator: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                        totals: GenerationTotals | None = None, progress: Any = None,
                        num_beams: int = 1, samples: int = 0, retries: int = 0) -> list[str]:
    """Greedy (or beam-search, or sampled) answers for many prompts, batched by similar length (less
    padding); order kept.

    ``generator`` is a :class:`Generator` or an ONNX ``OnnxGenerator`` (greedy only);
    ``progress`` is an optional tqdm-like bar advanced per batch.  ``samples`` > 0: that many
    sampled answers per prompt, joined by line breaks (an answer is one line).  ``retries`` > 0:
    the paper's output validation, see :func:`retry_malformed` (a :class:`Generator` only).
    """
    options: dict[str, int] = {"num_beams": num_beams} if num_beams > 1 else {}
    if samples > 0:
        options["samples"] = samples
    per_prompt = max(1, samples)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    malformed = [False] * len(prompts)
    for lo in range(0, len(order), max(1, batch_size)):
        batch = order[lo:lo + max(1, batch_size)]
        result = generator.generate([prompts[i] for i in batch], max_new_tokens=max_new_tokens, **options)
        if len(result.texts) != len(batch) * per_prompt:
            raise RuntimeError(f"{len(result.texts)} answers for {len(batch)} prompts × {per_prompt}")
        for j, i in enumerate(batch):
            out[i] = "\n".join(result.texts[j * per_prompt:(j + 1) * per_prompt])
            if retries > 0 and per_prompt == 1:
                malformed[i] = result.malformed[j]
        if totals is not None:
            totals.add(result)
        if progress is not None:
            progress.update(len(batch))
    if retries > 0:
        retry_malformed(generator, prompts, out, malformed, retries, max_new_tokens, batch_size, totals)
    return out


def retry_malformed(generator: Any, prompts: Sequence[str], out: list[str], malformed: Sequence[bool],
                    retries: int, max_new_tokens: int, batch_size: int,
                    totals: GenerationTotals | None = None) -> int:
    """The paper's output validation: a malformed answer is rejected and drawn again.

    Greedy decoding would only repeat itself, so ``retries`` answers are sampled for each
    malformed one in one call and the first well-formed draw replaces it in ``out``; when
    every draw is malformed too, the cleaned first answer stays.  Returns how many were
    recovered.
    """
    todo = [i for i, bad in enumerate(malformed) if bad]
    recovered = 0
    for lo in range(0, len(todo), max(1, batch_size)):
        batch = todo[lo:lo + max(1, batch_size)]
        result = generator.generate([prompts[i] for i in batch], max_new_tokens=max_new_tokens,
                                    samples=retries)
        fixed = 0
        for j, i in enumerate(batch):
            draws = range(j * retries, (j + 1) * retries)
            good = next((k for k in draws if not result.malformed[k]), None)
            if good is not None:
                out[i], fixed = result.texts[good], fixed + 1
        recovered += fixed
        if totals is not None:
            totals.add_retry(result, len(batch), fixed)
    return recovered
