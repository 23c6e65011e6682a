"""The offline evaluation: every system ranks the whole catalog for the same purchases.

Read top to bottom: configuration, the result, :func:`evaluate` (the protocol, one phase
per function), the scoring of mix-up and its choices, then :func:`write_report`.

Protocol
--------
- The data set's temporal split: models learn from the train period only; validation
  purchases choose λ, ID imputation and query memory; test purchases are reported.
- Events are purchases (:func:`models.metrics.next_item_events`); a fixed seeded sample
  of ``max_test_events`` test purchases (``max_val_events`` validation purchases) is
  scored by EVERY system, so all numbers are on identical events. An event's history is
  everything the shopper did before it, including earlier val/test interactions, as a
  live stream would have it.
- Each system scores the WHOLE catalog; the target's rank counts ties half
  (:func:`models.metrics.target_ranks`). Nothing is excluded from the ranking: already
  purchased items stay rankable for every system, because repeat purchases are real in
  fashion (the ``repeat`` slice shows how each system does on them).
- λ is the validation Recall@10 argmax, ties broken by validation MRR (small validation
  sets give flat plateaus; the first of equal values would always pick the smallest λ).
- Mix-up reading: the score-level blend ``s = λ·cos(t_q,t_i) + (1−λ)·cos(u,e_i)`` as one
  inner product (:mod:`models.mixup`); ``t_q`` embeds the LoRA-tuned LLM's generated
  next-item title, ``t_i`` the catalog titles, ``u``/``e_i`` come from SASRec.

Systems: ``popularity``, ``co-occurrence``, ``sasrec`` (raw ``u·e_i``), ``id-only``
(mix-up at λ=0: cosine of u and e_i, no imputation), and per title encoder
``title-only (<enc>)`` (λ=1) and ``mix-up (<enc>)`` (λ chosen on validation Recall@10).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from models.baselines import CoOccurrence, Popularity
from models.data.dataset import Dataset
from models.metrics import (
    NextItemEvents,
    bootstrap_ci,
    hits_at_k,
    mrr,
    ndcg_at_k,
    next_item_events,
    recall_at_k,
    target_ranks,
)
from models.mixup import (
    DEFAULT_LAMBDAS,
    IdImputer,
    LambdaChoice,
    MixupIndex,
    QueryMemory,
    choose_lambda,
    mixup_query,
    unit,
)
from models.sasrec import SASRec, SASRecConfig, train_sasrec

log = logging.getLogger("stylestream.evaluate")

MIXUP_READING = "score-level blend s = λ·cos(t_q,t_i) + (1−λ)·cos(u,e_i) as one inner product"
EXCLUSION = ("nothing excluded: already-purchased items stay rankable for every system "
             "(repeat purchases are real; see the repeat slice)")
FULL_HISTORY = 100_000  # events keep the whole history; each model truncates as it needs
CHOICE_K = 10  # λ, imputation and query memory are chosen on validation Recall@10
TIE_BREAK = 1e-3  # weight of validation MRR when Recall@10 ties between λ values
ENCODERS = ("minilm", "lstm")
UNINFORMATIVE = {"", "unknown", "none", "nan", "n/a"}  # LLM targets not worth teaching
ENGINES = ("torch", "onnx")


# -- configuration ----------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """Everything that shapes the numbers; recorded in ``manifest.json``."""

    base_model: Path | None = None  # None: SmolLM2 materialised into home/models/base
    home: Path = Path(".stylestream")
    work_dir: Path | None = None  # LoRA run, merged model, ONNX export (None: out_dir/work)
    title_encoders: tuple[str, ...] = ENCODERS
    lstm_steps: int = 300
    minilm_steps: int = 20
    lora_steps: int = 60
    lora_batch_size: int = 4
    lora_max_length: int = 256
    lora_rank: int = 16
    lora_lr: float = 5e-4
    lora_eval_every: int = 0  # held-out (validation-period) loss every N steps; 0: none
    lora_patience: int = 0  # early stop after N evaluations without improvement; 0: never
    lora_device: str = "auto"  # LoRA training device ("auto": the GPU when there is one)
    lora_run: Path | None = None  # a finished LoRA run (adapter + manifest) to use instead
    max_history: int = 10  # history events shown in an LLM prompt (newest kept)
    max_val_events: int = 64
    max_test_events: int = 256
    max_new_tokens: int = 24
    gen_batch_size: int = 16
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    ks: tuple[int, ...] = (5, 10, 20)
    ndcg_ks: tuple[int, ...] = (10, 20)
    memory_threshold: float = 0.8
    seed: int = 0
    engine: str = "torch"  # generation: "torch" or "onnx" (ONNX Runtime)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)

    def __post_init__(self) -> None:
        unknown = [e for e in self.title_encoders if e not in ENCODERS]
        if unknown or not self.title_encoders:
            raise ValueError(f"title encoders must be some of {', '.join(ENCODERS)}; got "
                             f"{', '.join(self.title_encoders) or 'none'}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be torch or onnx, not {self.engine!r}")
        if self.lora_patience and not self.lora_eval_every:
            raise ValueError("LoRA patience needs held-out evaluations (lora_eval_every > 0)")
        if self.lora_run is not None:
            from models.llm.lora import MANIFEST_NAME

            if not (Path(self.lora_run) / MANIFEST_NAME).is_file():
                raise ValueError(f"LoRA run {self.lora_run} is not a finished LoRA run "
                                 f"(no {MANIFEST_NAME})")
        if CHOICE_K not in self.ks:
            self.ks = tuple(sorted({*self.ks, CHOICE_K}))

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class EvalResult:
    """All numbers of one evaluation run; ``metrics.json`` is :meth:`to_json`."""

    dataset: dict[str, Any]
    config: dict[str, Any]
    systems: dict[str, dict[str, Any]]  # test metrics per system
    slices: dict[str, dict[str, dict[str, Any]]]  # slice -> system -> metrics
    sweep: dict[str, list[dict[str, float]]]  # encoder -> test λ sweep
    choices: dict[str, dict[str, Any]]  # encoder -> λ / imputation / memory decisions
    claim: dict[str, Any]
    costs: dict[str, Any]
    versions: dict[str, Any]
    samples: list[dict[str, str]]
    mixup_reading: str = MIXUP_READING
    exclusion: str = EXCLUSION
    out_dir: Path | None = None
    generations: dict[str, Any] = field(default_factory=dict, repr=False)  # generations.json

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("generations")
        out["out_dir"] = str(self.out_dir) if self.out_dir else None
        return json.loads(json.dumps(out, default=_json_default))


# -- the evaluation ------------------------------------------------------------------------------


def evaluate(dataset: Dataset, config: EvalConfig | None = None, out_dir: Path | str = "report",
             progress: bool = True) -> EvalResult:
    """Train everything on the train period, choose on validation, report on test."""
    cfg = config or EvalConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(cfg.work_dir) if cfg.work_dir else out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    costs: dict[str, Any] = {}
    started = time.perf_counter()

    val_ev, test_ev = evaluation_events(dataset, cfg)
    log.info("events: %d validation, %d test purchases (same events for every system)",
             len(val_ev), len(test_ev))
    if not len(val_ev) or not len(test_ev):
        raise ValueError("no validation or test purchases with a history: nothing to evaluate")

    sasrec = fit_sasrec(dataset, cfg, work, progress, costs)
    encoders = fit_encoders(dataset, cfg, progress, costs)
    llm = generate_texts(dataset, {"val": val_ev, "test": test_ev}, cfg, work, progress, costs)

    ranks: dict[str, np.ndarray] = baseline_ranks(dataset, sasrec, test_ev)
    id_state = {split: sasrec.user_states(_recent(ev.histories, sasrec.cfg.max_len),
                                          _recent(ev.kinds, sasrec.cfg.max_len))
                for split, ev in (("val", val_ev), ("test", test_ev))}
    raw_ids = unit(sasrec.item_embeddings())
    ranks["id-only"] = target_ranks(_cos(id_state["test"], raw_ids), test_ev.targets)
    choices, sweep = {}, {}
    for name, encoder in encoders.items():
        log.info("mix-up with the %s title encoder", name)
        part = score_encoder(dataset, encoder, sasrec, llm["texts"], id_state,
                             {"val": val_ev, "test": test_ev}, cfg)
        ranks[f"title-only ({name})"] = part.pop("title_only_ranks")
        ranks[f"mix-up ({name})"] = part.pop("mixup_ranks")
        sweep[name] = part.pop("sweep")
        choices[name] = part
    costs["total_seconds"] = round(time.perf_counter() - started, 1)

    systems = {name: ranking_metrics(r, cfg) for name, r in ranks.items()}
    masks = event_slices(dataset.items, test_ev, dataset.split.val_start)
    slices = {s: {name: ranking_metrics(r[m], cfg) for name, r in ranks.items()}
              for s, m in masks.items()}
    result = EvalResult(
        dataset=dataset_summary(dataset, val_ev, test_ev, masks, sasrec),
        config=cfg.to_json(), systems=systems, slices=slices, sweep=sweep, choices=choices,
        claim=claim_check(systems, list(encoders)), costs=costs,
        versions=versions(dataset, sasrec, encoders, llm), samples=samples(dataset, test_ev,
                                                                           llm["texts"]["test"]),
        out_dir=out_dir, generations=generation_log(dataset, {"val": val_ev, "test": test_ev}, llm))
    return result


def generation_log(dataset: Dataset, events: dict[str, NextItemEvents],
                   llm: dict[str, Any]) -> dict[str, Any]:
    """Every generated answer next to the title actually bought (for auditing the LLM half)."""
    titles = dataset.items["title"].fillna("").astype(str).to_numpy()
    return {"example_prompt": llm["prompts_example"],
            **{split: [{"user_id": u, "generated": t, "bought": titles[target]}
                       for u, t, target in zip(ev.user_ids, llm["texts"][split], ev.targets,
                                               strict=True)]
               for split, ev in events.items()}}


def evaluation_events(dataset: Dataset, cfg: EvalConfig) -> tuple[NextItemEvents, NextItemEvents]:
    """Validation and test purchase events, each a fixed seeded sample; full histories."""
    train, val, test = dataset.parts()
    ids = dataset.items["item_id"].tolist()
    common = {"target_kinds": ("purchase",), "max_history": FULL_HISTORY, "seed": cfg.seed}
    val_ev = next_item_events(ids, train, val, max_events=cfg.max_val_events, **common)
    test_ev = next_item_events(ids, pd.concat([train, val]), test, max_events=cfg.max_test_events,
                               **common)
    return val_ev, test_ev


def fit_sasrec(dataset: Dataset, cfg: EvalConfig, work: Path, progress: bool,
               costs: dict[str, Any]) -> SASRec:
    log.info("training SASRec (ID embeddings e_i, user state u) on the train period")
    t0 = time.perf_counter()
    model = train_sasrec(dataset, cfg.sasrec, progress=progress)
    costs["sasrec_train_seconds"] = round(time.perf_counter() - t0, 2)
    model.save(work / "sasrec")
    log.info("SASRec %s: best epoch %s, %.1f s", model.version, model.manifest.get("best_epoch"),
             costs["sasrec_train_seconds"])
    return model


def fit_encoders(dataset: Dataset, cfg: EvalConfig, progress: bool,
                 costs: dict[str, Any]) -> dict[str, Any]:
    """Both title encoders, triplet loss on train-period co-purchases (small CPU budgets)."""
    from models.title_encoder import train_title_encoder

    out = {}
    for name in cfg.title_encoders:
        steps = cfg.lstm_steps if name == "lstm" else cfg.minilm_steps
        log.info("training the %s title encoder (%d triplet steps)", name, steps)
        t0 = time.perf_counter()
        out[name] = train_title_encoder(name, dataset, steps=steps, progress=progress, seed=cfg.seed)
        costs[f"title_encoder_{name}_seconds"] = round(time.perf_counter() - t0, 2)
    return out


# -- the LLM: LoRA tuning and generation ------------------------------------------------------------


def base_model_path(cfg: EvalConfig) -> Path:
    from models.llm.base_model import default_base_model_path, materialise_smollm2

    if cfg.base_model is not None:
        return Path(cfg.base_model)
    return materialise_smollm2(default_base_model_path(cfg.home))


def lora_settings(cfg: EvalConfig) -> Any:
    """The LoRA hyper-parameters of an evaluation (also what a reused run must have used)."""
    from models.llm.lora import LoraSettings

    return LoraSettings(rank=cfg.lora_rank, alpha=2 * cfg.lora_rank, lr=cfg.lora_lr,
                        steps=cfg.lora_steps, batch_size=cfg.lora_batch_size,
                        max_length=cfg.lora_max_length, seed=cfg.seed, checkpoint_every=0,
                        keep_checkpoints=1, device=cfg.lora_device,
                        eval_every=cfg.lora_eval_every, patience=cfg.lora_patience)


def tune_llm(dataset: Dataset, cfg: EvalConfig, work: Path, progress: bool,
             costs: dict[str, Any]) -> dict[str, Any]:
    """LoRA-tune the base model on train-period prompts (title + category tasks), with the
    validation period held out for early stopping; or adopt ``cfg.lora_run``.

    Returns the run's manifest plus ``merged_dir``; training costs go into ``costs``.
    """
    from models.llm.lora import train_lora

    base = base_model_path(cfg)
    if cfg.lora_run is not None:
        return adopt_lora_run(dataset, cfg, base, work, costs)
    tokenizer = _tokenizer(base)
    examples = training_examples(dataset, cfg, tokenizer)
    held_out = validation_examples(dataset, cfg, tokenizer) if cfg.lora_eval_every else []
    log.info("LoRA-tuning %s: up to %d steps × %d on %d prompts (title + category tasks)%s",
             base.name, cfg.lora_steps, cfg.lora_batch_size, len(examples),
             f", early stopping on {len(held_out)} validation prompts" if held_out else "")
    tuned = train_lora(base, examples, lora_settings(cfg), work / "lora", resume=False,
                       progress=progress, data_hash=dataset.data_hash(), eval_examples=held_out)
    manifest = json.loads(tuned.manifest_path.read_text())
    _lora_costs(manifest, costs)
    return {**manifest, "merged_dir": str(tuned.merged_dir), "base": str(base)}


def adopt_lora_run(dataset: Dataset, cfg: EvalConfig, base: Path, work: Path,
                   costs: dict[str, Any]) -> dict[str, Any]:
    """Use a LoRA run trained elsewhere (say on a GPU box with ``bench/bench_convergence.py``):
    refuse it unless it was trained on this data set, then merge it into the local base."""
    from models.llm.lora import MANIFEST_NAME, merge_adapter

    run = Path(cfg.lora_run)  # EvalConfig made sure it holds a manifest
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    if manifest.get("data_hash") != dataset.data_hash():
        raise ValueError(f"LoRA run {run} was trained on data {manifest.get('data_hash')}, "
                         f"not on this data set ({dataset.data_hash()})")
    log.info("using the LoRA run in %s (%s, %s steps on %s)", run, manifest["model_version"],
             manifest["steps"], manifest.get("device", "?"))
    merged = merge_adapter(base, run, work / "lora-adopted" / "merged")
    _lora_costs(manifest, costs)
    costs["lora_run_adopted"] = str(run)
    return {**manifest, "merged_dir": str(merged), "base": str(base)}


def _lora_costs(manifest: dict[str, Any], costs: dict[str, Any]) -> None:
    costs.update(lora_device=manifest.get("device", "cpu"), lora_steps=manifest["steps"],
                 lora_seconds_per_step=manifest["seconds_per_step"],
                 lora_train_seconds=round(sum(manifest.get("step_seconds", [])), 1),
                 lora_examples=manifest["n_examples"], lora_final_loss=manifest["final_loss"],
                 lora_best_step=manifest.get("best_step"),
                 lora_converged=manifest.get("converged", False),
                 lora_seconds_to_best=manifest.get("train_seconds_to_best"),
                 lora_held_out_curve=manifest.get("held_out_curve", []),
                 lora_loss_curve=[round(float(x), 4) for x in manifest.get("loss_curve", [])])


def generate_texts(dataset: Dataset, events: dict[str, NextItemEvents], cfg: EvalConfig,
                   work: Path, progress: bool, costs: dict[str, Any]) -> dict[str, Any]:
    """Tune the LLM (or adopt a tuned one), then generate an answer for every event."""
    tuned = tune_llm(dataset, cfg, work, progress, costs)
    generator, engine = make_generator(Path(tuned["merged_dir"]), cfg.engine, work, costs)
    catalog = _catalog(dataset.items)
    texts: dict[str, list[str]] = {}
    totals = {"tokens": 0, "seconds": 0.0, "malformed": 0, "n": 0}
    for split, ev in events.items():
        prompts = [event_prompt(h, k, catalog, generator.tokenizer, cfg)
                   for h, k in zip(ev.histories, ev.kinds, strict=True)]
        texts[split] = generate_all(generator, prompts, cfg, progress, totals, split)
    costs.update(generation_engine=engine, generated=totals["n"],
                 generation_seconds=round(totals["seconds"], 1),
                 generation_tokens=totals["tokens"],
                 generation_tokens_per_s=round(totals["tokens"] / max(totals["seconds"], 1e-9), 2),
                 malformed_rate=round(totals["malformed"] / max(totals["n"], 1), 4))
    log.info("generated %d answers with %s: %.1f tokens/s, %.1f%% malformed", totals["n"], engine,
             costs["generation_tokens_per_s"], 100 * costs["malformed_rate"])
    return {"texts": texts, "prompts_example": prompts[0] if prompts else "",
            "model_version": tuned["model_version"], "base": tuned["base"],
            "merged_dir": tuned["merged_dir"]}


def _tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    from models.llm.base_model import prepare_tokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(base, local_files_only=True))


def training_examples(dataset: Dataset, cfg: EvalConfig, tokenizer: Any) -> list[Any]:
    """Title + category prompts whose targets are train-period purchases; as many as the
    LoRA run will read (a seeded sample), so prompt building stays cheap."""
    from models.llm.prompts import build_examples

    examples = build_examples(dataset, "train", max_history=cfg.max_history, tokenizer=tokenizer,
                              tasks=("title", "category"))
    # an answer that carries no information ("unknown" category of an item without article
    # data, as in most of the H&M sample) would teach the model to say "unknown" for every task
    examples = [ex for ex in examples if ex.target.strip().lower() not in UNINFORMATIVE]
    if not examples:
        raise ValueError("no train-period purchases to build LLM prompts from")
    wanted = max(1, cfg.lora_steps * cfg.lora_batch_size)
    if len(examples) > wanted:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(examples), wanted, replace=False))
        examples = [examples[i] for i in keep]
    return examples


def validation_examples(dataset: Dataset, cfg: EvalConfig, tokenizer: Any,
                        limit: int = 256) -> list[Any]:
    """Held-out title prompts from the validation period (early stopping; test untouched)."""
    from models.llm.prompts import build_examples

    examples = [ex for ex in build_examples(dataset, "val", max_history=cfg.max_history,
                                            tokenizer=tokenizer, tasks=("title",))
                if ex.target.strip().lower() not in UNINFORMATIVE]
    if len(examples) > limit:
        keep = np.sort(np.random.default_rng(cfg.seed + 1).choice(len(examples), limit,
                                                                  replace=False))
        examples = [examples[i] for i in keep]
    return examples


def make_generator(merged_dir: Path | None, engine: str, work: Path,
                   costs: dict[str, Any]) -> tuple[Any, str]:
    """The tuned model ready to generate; ONNX Runtime when asked (torch if export fails)."""
    from models.llm.generate import Generator

    if merged_dir is None:
        raise ValueError("LoRA training produced no merged model")
    if engine == "onnx":
        try:
            from models.llm.onnx_export import OnnxGenerator, export_onnx

            exported = export_onnx(merged_dir, work / "onnx", check=False, overwrite=True)
            costs["onnx_export_seconds"] = round(exported.export_seconds, 1)
            return OnnxGenerator(exported.folder), "onnx"
        except Exception as exc:  # noqa: BLE001 - any export failure falls back to torch
            log.warning("ONNX export failed (%s); generating with torch", exc)
    return Generator(merged_dir, device="cpu"), "torch"


def _catalog(items: pd.DataFrame) -> dict[str, Any]:
    from models.llm.prompts import _catalog as prompt_catalog

    return prompt_catalog(items)


def event_prompt(history: Sequence[str], kinds: Sequence[str], catalog: dict[str, Any],
                 tokenizer: Any, cfg: EvalConfig) -> str:
    """The serving prompt (title task) for the newest ``max_history`` events."""
    from models.llm.prompts import events_for, render_prompt

    events = events_for(list(history)[-cfg.max_history:], list(kinds)[-cfg.max_history:], catalog)
    return render_prompt(events, "title", tokenizer, cfg.max_history)


def generate_all(generator: Any, prompts: list[str], cfg: EvalConfig, progress: bool,
                 totals: dict[str, Any], label: str) -> list[str]:
    """Greedy answers for all prompts, batched by similar length; order preserved."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc=f"generate {label}", disable=not progress,
               dynamic_ncols=True)
    for lo in range(0, len(order), cfg.gen_batch_size):
        batch = order[lo:lo + cfg.gen_batch_size]
        res = generator.generate([prompts[i] for i in batch], max_new_tokens=cfg.max_new_tokens)
        for i, text in zip(batch, res.texts, strict=True):
            out[i] = text
        totals["tokens"] += res.tokens_generated
        totals["seconds"] += res.seconds
        totals["malformed"] += res.n_malformed
        totals["n"] += len(batch)
        bar.update(len(batch))
    bar.close()
    return out


# -- baselines and SASRec -------------------------------------------------------------------------


def baseline_ranks(dataset: Dataset, sasrec: SASRec, events: NextItemEvents) -> dict[str, np.ndarray]:
    """Test ranks of popularity, co-occurrence and raw SASRec (all fitted on train only)."""
    train, _, _ = dataset.parts()
    out = {}
    for name, model in (("popularity", Popularity(dataset.items, train)),
                        ("co-occurrence", CoOccurrence(dataset.items, train))):
        scores = np.stack([model.score(h) for h in events.histories])
        out[name] = target_ranks(scores, events.targets)
    states = sasrec.user_states(_recent(events.histories, sasrec.cfg.max_len),
                                _recent(events.kinds, sasrec.cfg.max_len))
    out["sasrec"] = target_ranks(states @ sasrec.item_embeddings().T, events.targets)
    return out


def _recent(rows: Sequence[Sequence[str]], n: int) -> list[list[str]]:
    return [list(r)[-n:] for r in rows]


def _cos(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Cosine matrix [n_queries, n_items] (zero rows give zero similarity)."""
    return (unit(queries) @ unit(items).T).astype(np.float32)


# -- mix-up: halves, choices, sweep -------------------------------------------------------------------


@dataclass
class Halves:
    """The two similarity matrices of one event set, plus the query-memory boost."""

    text: np.ndarray  # cos(t_q, t_i) [n_events, n_items]
    ids: np.ndarray  # cos(u, e_i)
    memory: np.ndarray | None  # query-memory item scores, row max 1 (zeros: memory silent)

    def blend(self, lam: float, use_memory: bool = False) -> np.ndarray:
        text = self.text + self.memory if use_memory and self.memory is not None else self.text
        return lam * text + (1.0 - lam) * self.ids


def title_embeddings(encoder: Any, items: pd.DataFrame) -> np.ndarray:
    """Catalog title vectors t_i; items without a title get a zero row (no text evidence)."""
    return text_embeddings(encoder, items["title"].fillna("").astype(str).tolist())


def text_embeddings(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    texts = [str(t).strip() for t in texts]
    out = np.zeros((len(texts), encoder.dim), np.float32)
    have = [i for i, t in enumerate(texts) if t]
    if have:
        out[have] = encoder.encode([texts[i] for i in have])
    return out


def id_vectors(sasrec: SASRec, titles: np.ndarray, items: pd.DataFrame,
               impute: bool) -> np.ndarray:
    """Unit e_i; with ``impute``, items SASRec never saw get a title→ID (ridge) estimate,
    falling back to their category's mean."""
    e = unit(sasrec.item_embeddings())
    if not impute:
        return e
    known = sasrec.known_items()
    cats = items["category"].astype("object").where(items["category"].notna(), None).tolist()
    imputer = IdImputer().fit(titles, e, has_id=known, categories=cats)
    return unit(imputer.fill(titles, e, known, cats))


def query_memory_scores(memory: QueryMemory | None, text_emb: np.ndarray,
                        threshold: float) -> np.ndarray | None:
    """Per event: the items taken after past queries close to the generated text (row max 1)."""
    if memory is None or not len(memory):
        return None
    out = np.zeros((len(text_emb), memory.item_weights.shape[1]), np.float32)
    for r, t in enumerate(text_emb):
        if not np.any(t):
            continue
        hit = memory.lookup(t, threshold)
        if hit is not None and hit.max() > 0:
            out[r] = hit / hit.max()
    return out


def score_encoder(dataset: Dataset, encoder: Any, sasrec: SASRec, texts: dict[str, list[str]],
                  states: dict[str, np.ndarray], events: dict[str, NextItemEvents],
                  cfg: EvalConfig) -> dict[str, Any]:
    """Choose imputation, λ and query memory on validation; score the test events."""
    titles = title_embeddings(encoder, dataset.items)
    train, _, _ = dataset.parts()
    memory = QueryMemory.build(train, dataset.items["item_id"].tolist(), encoder.encode, titles)
    ids = {imp: id_vectors(sasrec, titles, dataset.items, imp) for imp in (False, True)}
    gen = {s: text_embeddings(encoder, texts[s]) for s in ("val", "test")}
    mem = {s: query_memory_scores(memory, gen[s], cfg.memory_threshold) for s in gen}

    def halves(split: str, impute: bool) -> Halves:
        return Halves(_cos(gen[split], titles), _cos(states[split], ids[impute]), mem[split])

    val_t = events["val"].targets
    by_impute = {imp: pick_lambda(halves("val", imp), cfg.lambdas, val_t) for imp in (False, True)}
    impute = by_impute[True].recall > by_impute[False].recall
    val_h, test_h = halves("val", impute), halves("test", impute)
    plain = by_impute[impute]
    with_memory = (pick_lambda(val_h, cfg.lambdas, val_t, use_memory=True)
                   if val_h.memory is not None else None)
    use_memory = with_memory is not None and with_memory.recall > plain.recall
    chosen = with_memory if use_memory else plain
    test_t = events["test"].targets
    mixup = target_ranks(test_h.blend(chosen.lam, use_memory), test_t)
    check = one_vector_search_gap(gen["test"], states["test"], titles, ids[impute], chosen.lam,
                                  test_h)
    log.info("λ=%.1f (validation R@10 %.4f), imputation %s, query memory %s", chosen.lam,
             chosen.recall, "on" if impute else "off", "on" if use_memory else "off")
    return {
        "lambda": chosen.lam, "val_recall@10": chosen.recall, "impute": impute,
        "val_recall@10_impute": {"off": by_impute[False].recall, "on": by_impute[True].recall},
        "lambda_impute": {"off": by_impute[False].lam, "on": by_impute[True].lam},
        "query_memory": use_memory, "query_memory_size": len(memory),
        "val_recall@10_memory": {"off": plain.recall,
                                 "on": with_memory.recall if with_memory else None},
        "lambda_memory": {"off": plain.lam, "on": with_memory.lam if with_memory else None},
        "test_recall@10_memory": _memory_test(test_h, plain, with_memory, test_t),
        "memory_hit_rate_test": (float((test_h.memory.max(axis=1) > 0).mean())
                                 if test_h.memory is not None else 0.0),
        "val_curve": {str(k): v for k, v in chosen.curve.items()},
        "one_vector_search_max_abs_diff": check,
        "title_only_ranks": target_ranks(test_h.blend(1.0), test_t),
        "mixup_ranks": mixup,
        "sweep": [{"lambda": float(lam),
                   **_sweep_point(target_ranks(test_h.blend(lam, use_memory), test_t))}
                  for lam in cfg.lambdas],
    }


def pick_lambda(h: Halves, lambdas: Sequence[float], targets: np.ndarray,
                use_memory: bool = False) -> LambdaChoice:
    """The λ with the best validation Recall@10; ties broken by validation MRR.

    Validation sets are small (tens of events), so Recall@10 is often flat over a range of
    λ; taking the first of equal values would always favour the smallest λ. MRR (weight
    ``TIE_BREAK``, too small to outweigh one more hit) picks inside the plateau instead.
    """
    ranks = {float(lam): target_ranks(h.blend(float(lam), use_memory), targets) for lam in lambdas}
    recall = {lam: recall_at_k(r, CHOICE_K) for lam, r in ranks.items()}
    chosen = choose_lambda(lambda lam: recall[lam] + TIE_BREAK * mrr(ranks[lam]), lambdas)
    return LambdaChoice(lam=chosen.lam, recall=recall[chosen.lam], k=CHOICE_K, curve=recall)


def _memory_test(h: Halves, plain: LambdaChoice, with_memory: LambdaChoice | None,
                 targets: np.ndarray) -> dict[str, float | None]:
    """Test Recall@10 without and with the query memory, each at its own validation λ."""
    off = recall_at_k(target_ranks(h.blend(plain.lam), targets), CHOICE_K)
    on = (recall_at_k(target_ranks(h.blend(with_memory.lam, True), targets), CHOICE_K)
          if with_memory is not None else None)
    return {"off": off, "on": on}


def _sweep_point(ranks: np.ndarray) -> dict[str, float]:
    return {"recall@10": recall_at_k(ranks, 10), "ndcg@10": ndcg_at_k(ranks, 10)}


def one_vector_search_gap(text: np.ndarray, states: np.ndarray, titles: np.ndarray,
                          ids: np.ndarray, lam: float, h: Halves) -> float:
    """Max |blend − MixupIndex inner product|: the blend really is one vector search."""
    index = MixupIndex.build(np.arange(len(titles)).astype(str), titles, ids, lam)
    q = mixup_query(text, states, lam)
    return float(np.abs(index.scores(q) - h.blend(lam)).max())


# -- metrics and slices ----------------------------------------------------------------------------


def ranking_metrics(ranks: np.ndarray, cfg: EvalConfig) -> dict[str, Any]:
    """Recall@k, NDCG@k, MRR, n and the 95% bootstrap interval of Recall@10."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, Any] = {f"recall@{k}": recall_at_k(ranks, k) for k in cfg.ks}
    out.update({f"ndcg@{k}": ndcg_at_k(ranks, k) for k in cfg.ndcg_ks})
    out["mrr"] = mrr(ranks)
    out["n_events"] = int(len(ranks))
    out["recall@10_ci"] = list(bootstrap_ci(hits_at_k(ranks, 10), seed=cfg.seed))
    return out


def event_slices(items: pd.DataFrame, events: NextItemEvents,
                 cold_after: pd.Timestamp) -> dict[str, np.ndarray]:
    """Boolean masks over events: ``all``; ``cold-start`` (target first seen at or after
    ``cold_after``, i.e. after training ended); ``repeat`` (target bought before by the
    same shopper, within the event's history)."""
    cutoff = pd.Timestamp(cold_after)
    cutoff = cutoff.tz_localize("UTC") if cutoff.tz is None else cutoff
    seen = pd.to_datetime(items["first_seen"], utc=True).reset_index(drop=True).iloc[events.targets]
    cold = (seen.notna() & (seen >= cutoff)).to_numpy(dtype=bool)  # unknown first_seen: not cold
    ids = items["item_id"].astype(str).to_numpy()
    repeat = np.array([ids[t] in {i for i, k in zip(h, kinds, strict=True) if k == "purchase"}
                       for t, h, kinds in zip(events.targets, events.histories, events.kinds,
                                              strict=True)], dtype=bool)
    return {"all": np.ones(len(events), bool), "cold-start": cold, "repeat": repeat}


def claim_check(systems: dict[str, dict[str, Any]], encoders: list[str]) -> dict[str, Any]:
    """The paper's claim on Recall@10: mix-up beats both its halves and SASRec."""
    r = {name: m["recall@10"] for name, m in systems.items()}
    per = {}
    for enc in encoders:
        mix = f"mix-up ({enc})"
        rivals = [f"title-only ({enc})", "id-only", "sasrec"]
        beats = {k: r[mix] > r[k] for k in rivals}
        lo = systems[mix]["recall@10_ci"][0]
        per[enc] = {"holds": all(beats.values()), "beats": beats, "recall@10": r[mix],
                    "ci_clear_of_sasrec": lo > r["sasrec"]}
    return {"statement": "mix-up beats both halves and beats SASRec on Recall@10",
            "per_encoder": per, "holds": any(v["holds"] for v in per.values())}


# -- provenance ----------------------------------------------------------------------------------------


def dataset_summary(dataset: Dataset, val_ev: NextItemEvents, test_ev: NextItemEvents,
                    masks: dict[str, np.ndarray], sasrec: SASRec) -> dict[str, Any]:
    train, val, test = dataset.parts()
    m = dataset.manifest()
    known = sasrec.known_items()
    return {
        "name": dataset.name, "source": dataset.source, "data_hash": m["data_hash"],
        "n_items": m["n_items"], "n_users": m["n_users"], "n_interactions": m["n_interactions"],
        "n_purchases": m["n_purchases"], "split": m["split"],
        "interactions_train_val_test": [len(train), len(val), len(test)],
        "test_purchases": int((test["kind"] == "purchase").sum()),
        "n_val_events": len(val_ev), "n_test_events": len(test_ev),
        "n_test_events_cold_start": int(masks["cold-start"].sum()),
        "n_test_events_repeat": int(masks["repeat"].sum()),
        "test_targets_unknown_to_sasrec": int((~known[test_ev.targets]).sum()),
        "items_known_to_sasrec": int(known.sum()),
    }


def versions(dataset: Dataset, sasrec: SASRec, encoders: dict[str, Any],
             llm: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    return {"data_hash": dataset.data_hash(), "sasrec": sasrec.version,
            "llm": llm["model_version"], "llm_base": llm["base"],
            "title_encoders": {k: {kk: v for kk, v in e.manifest.items() if kk != "history"}
                               for k, e in encoders.items()},
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.platform()}


def samples(dataset: Dataset, events: NextItemEvents, texts: list[str], n: int = 5
            ) -> list[dict[str, str]]:
    """A few test events: last history item, generated text, the item actually bought."""
    titles = dataset.items["title"].fillna("").astype(str).tolist()
    index = {i: r for r, i in enumerate(dataset.items["item_id"].astype(str))}
    out = []
    for r in range(min(n, len(events))):
        last = events.histories[r][-1]
        out.append({"last_item": titles[index[last]] if last in index else last,
                    "generated": texts[r], "bought": titles[events.targets[r]]})
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# -- the report ----------------------------------------------------------------------------------------


def write_report(result: EvalResult, out_dir: Path | str) -> Path:
    """report.md, metrics.json, manifest.json and the PNG charts in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    (out_dir / "metrics.json").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / "manifest.json").write_text(json.dumps(manifest(result), indent=2) + "\n")
    if result.generations:
        (out_dir / "generations.json").write_text(json.dumps(result.generations, indent=1) + "\n")
    plot_lambda_sweep(result, out_dir / "lambda_sweep.png")
    plot_systems(result, out_dir / "systems.png")
    plot_slices(result, out_dir / "cold_start.png")
    if result.costs.get("lora_loss_curve"):
        plot_lora(result, out_dir / "lora_convergence.png")
    (out_dir / "report.md").write_text(report_markdown(result))
    log.info("report written to %s", out_dir)
    return out_dir


def manifest(result: EvalResult) -> dict[str, Any]:
    return {"created_at": pd.Timestamp.now(tz="UTC").isoformat(), "versions": result.versions,
            "data_hash": result.dataset["data_hash"], "hyper_parameters": result.config,
            "mixup_reading": result.mixup_reading,
            "lambda": {enc: c["lambda"] for enc, c in result.choices.items()},
            "choices": {enc: {k: c[k] for k in ("lambda", "impute", "query_memory")}
                        for enc, c in result.choices.items()},
            "metrics": result.systems, "costs": result.costs}


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _metric_rows(systems: dict[str, dict[str, Any]], cols: list[str]) -> list[list[Any]]:
    rows = []
    for name, m in systems.items():
        ci = m["recall@10_ci"]
        rows.append([name, *[m[c] for c in cols], f"[{ci[0]:.3f}, {ci[1]:.3f}]", m["n_events"]])
    return rows


def report_markdown(result: EvalResult) -> str:
    d, c = result.dataset, result.config
    metric_cols = [k for k in next(iter(result.systems.values())) if k.startswith(("recall@", "ndcg@"))
                   and not k.endswith("_ci")] + ["mrr"]
    lines = [f"# Offline evaluation: {d['name']}", "",
             f"Mix-up reading: **{result.mixup_reading}**. Ranking: whole catalog "
             f"({d['n_items']:,} items), ties count half; {result.exclusion}.", "",
             "## Data set", ""]
    lines += _table(["field", "value"], [
        ["source", d["source"]], ["data hash", d["data_hash"]],
        ["items / shoppers / interactions", f"{d['n_items']:,} / {d['n_users']:,} / {d['n_interactions']:,}"],
        ["purchases", f"{d['n_purchases']:,}"],
        ["split (val start, test start)", f"{d['split']['val_start']}, {d['split']['test_start']}"],
        ["interactions train / val / test", " / ".join(f"{n:,}" for n in d["interactions_train_val_test"])],
        ["validation events (λ, imputation, memory chosen here)", d["n_val_events"]],
        ["test events (same for every system)", f"{d['n_test_events']} of {d['test_purchases']:,} test purchases"],
        ["test events: cold-start / repeat", f"{d['n_test_events_cold_start']} / {d['n_test_events_repeat']}"],
        ["test targets without a SASRec embedding", d["test_targets_unknown_to_sasrec"]],
    ])
    lines += ["## Systems on the test events", ""]
    lines += _table(["system", *metric_cols, "Recall@10 95% CI", "n"],
                    _metric_rows(result.systems, metric_cols))
    lines += ["![systems](systems.png)", "", "## Slices", ""]
    for name, systems in result.slices.items():
        if name == "all":
            continue
        lines += [f"### {name}", ""]
        lines += _table(["system", "recall@10", "ndcg@10", "mrr", "Recall@10 95% CI", "n"],
                        _metric_rows(systems, ["recall@10", "ndcg@10", "mrr"]))
    lines += ["![slices](cold_start.png)", "", "## λ sweep on test", ""]
    for enc, rows in result.sweep.items():
        lines += [f"### {enc} (chosen λ = {result.choices[enc]['lambda']:.1f} on validation)", ""]
        val = result.choices[enc]["val_curve"]
        lines += _table(["λ", "test Recall@10", "test NDCG@10", "validation Recall@10"],
                        [[f"{r['lambda']:.1f}", r["recall@10"], r["ndcg@10"],
                          val.get(str(float(r["lambda"])))] for r in rows])
    lines += ["![lambda sweep](lambda_sweep.png)", "", "## Choices made on validation", ""]
    lines += _table(["encoder", "λ", "val R@10", "imputation (val R@10 off / on)",
                     "query memory (val R@10 off / on)", "memory test R@10 off / on",
                     "memory size", "one-search max |diff|"],
                    [[enc, f"{ch['lambda']:.1f}", ch["val_recall@10"],
                      f"{'on' if ch['impute'] else 'off'} ({_fmt(ch['val_recall@10_impute']['off'])} / "
                      f"{_fmt(ch['val_recall@10_impute']['on'])})",
                      f"{'on' if ch['query_memory'] else 'off'} ({_fmt(ch['val_recall@10_memory']['off'])} / "
                      f"{_fmt(ch['val_recall@10_memory']['on'])})",
                      f"{_fmt(ch['test_recall@10_memory']['off'])} / {_fmt(ch['test_recall@10_memory']['on'])}",
                      ch["query_memory_size"], f"{ch['one_vector_search_max_abs_diff']:.2e}"]
                     for enc, ch in result.choices.items()])
    lines += ["λ = argmax of validation Recall@10, ties broken by validation MRR; imputation and "
              "query memory are kept only when they raise validation Recall@10. The last column "
              "checks that the blend equals one inner product over stored mix-up vectors.", "",
              "## The paper's claim", "",
              f"*{result.claim['statement']}*:", ""]
    for enc, v in result.claim["per_encoder"].items():
        verdict = "**holds**" if v["holds"] else "**does not hold**"
        detail = ", ".join(f"{'>' if b else '≤'} {k}" for k, b in v["beats"].items())
        ci = " (its 95% CI lies above SASRec's point estimate)" if v["ci_clear_of_sasrec"] else \
            " (its 95% CI overlaps SASRec's point estimate)"
        lines.append(f"- {enc}: {verdict}: mix-up R@10 {v['recall@10']:.4f} {detail}{ci}.")
    lines += ["", "## Costs", ""]
    lines += _table(["cost", "value"], [[k, v] for k, v in result.costs.items()
                                        if not isinstance(v, list)])
    lines += _lora_section(result.costs)
    lines += ["## Sample generations (test)", ""]
    lines += _table(["last history item", "generated", "bought"],
                    [[s["last_item"], s["generated"].replace("|", "/"), s["bought"]]
                     for s in result.samples])
    lines += ["## Hyper-parameters", "", "```json", json.dumps(c, indent=1), "```", "",
              "## Versions", "", "```json", json.dumps(result.versions, indent=1), "```", ""]
    return "\n".join(lines)


def _lora_section(costs: dict[str, Any]) -> list[str]:
    if not costs.get("lora_loss_curve"):
        return []
    best, seconds = costs.get("lora_best_step"), costs.get("lora_seconds_to_best")
    how = ("stopped early: the validation-period answer loss stopped improving"
           if costs.get("lora_converged") else "ran its whole step budget")
    lines = ["## LLM fine-tuning", "",
             f"LoRA on {costs.get('lora_device', 'cpu')}: {costs['lora_steps']} steps, "
             f"{costs['lora_seconds_per_step']} s/step; {how}."]
    if best is not None:
        lines.append(f"Best held-out loss at step {best}, after {seconds} s of training; "
                     "the adapter kept is the one from that step." if costs.get("lora_converged")
                     else f"Best held-out loss at step {best} (after {seconds} s of training).")
    return lines + ["", "![lora](lora_convergence.png)", ""]


# -- charts --------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_lora(result: EvalResult, path: Path) -> None:
    """Training loss (per step, smoothed) and validation-period loss against steps."""
    plt = _pyplot()
    train = np.asarray(result.costs["lora_loss_curve"], float)
    window = max(1, len(train) // 50)
    smooth = np.convolve(train, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(len(smooth)) + window, smooth, label=f"train (mean of {window} steps)")
    curve = result.costs.get("lora_held_out_curve") or []
    if curve:
        ax.plot([e["step"] for e in curve], [e["loss"] for e in curve], marker="o",
                label="validation period (held out)")
    if result.costs.get("lora_best_step") is not None:
        ax.axvline(result.costs["lora_best_step"], ls=":", color="grey", label="best step")
    ax.set(xlabel="optimizer step", ylabel="answer-token loss", title="LoRA fine-tuning")
    ax.legend()
    _save(fig, path)


def plot_lambda_sweep(result: EvalResult, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for enc, rows in result.sweep.items():
        lams = [r["lambda"] for r in rows]
        for ax, key in zip(axes, ("recall@10", "ndcg@10"), strict=True):
            ax.plot(lams, [r[key] for r in rows], marker="o", label=enc)
            ax.axvline(result.choices[enc]["lambda"], ls=":", alpha=0.5)
    for ax, key in zip(axes, ("Recall@10", "NDCG@10"), strict=True):
        ax.axhline(result.systems["sasrec"][key.lower()], color="grey", ls="--", label="sasrec")
        ax.set(xlabel="λ (0 = ID only, 1 = title only)", ylabel=key, title=f"{key} vs λ (test)")
        ax.legend()
    _save(fig, path)


def _bars(ax: Any, systems: dict[str, dict[str, Any]], offset: float = 0.0, width: float = 0.8,
          label: str | None = None) -> None:
    names = list(systems)
    vals = np.array([systems[n]["recall@10"] for n in names])
    ci = np.array([systems[n]["recall@10_ci"] for n in names]).reshape(-1, 2)
    err = np.clip(np.vstack([vals - ci[:, 0], ci[:, 1] - vals]), 0, None)
    ax.bar(np.arange(len(names)) + offset, vals, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")


def plot_systems(result: EvalResult, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _bars(ax, result.systems)
    ax.set(ylabel="Recall@10", title=f"Recall@10 per system, 95% bootstrap CI "
                                     f"(n={result.dataset['n_test_events']})")
    _save(fig, path)


def plot_slices(result: EvalResult, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [s for s in result.slices if s != "all"]
    width = 0.8 / max(len(names), 1)
    for j, s in enumerate(names):
        n = next(iter(result.slices[s].values()))["n_events"]
        _bars(ax, result.slices[s], offset=(j - (len(names) - 1) / 2) * width, width=width,
              label=f"{s} (n={n})")
    ax.set(ylabel="Recall@10", title="Recall@10 on the cold-start and repeat slices")
    ax.legend()
    _save(fig, path)


def run_evaluation(dataset: Dataset, config: EvalConfig, out_dir: Path | str,
                   progress: bool = True) -> EvalResult:
    """:func:`evaluate` then :func:`write_report`: what the CLI and the benchmark call."""
    result = evaluate(dataset, config, out_dir, progress)
    write_report(result, out_dir)
    return result
