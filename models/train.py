"""Train a model bundle: SASRec, the title encoders, the LoRA-tuned LLM with its ONNX
export, and the fusion chosen on validation, written to one folder (:mod:`models.bundle`).

Read top to bottom: the configuration, :func:`train_bundle` (one phase per function), the
LLM's tuning, then the choices made on validation.

Protocol (evaluation shares it): every model learns from the train period only; a fixed
seeded sample of validation purchases chooses, per title encoder, whether new items get
imputed ID vectors, the ID half (cosine or SASRec's logit, and its scale σ), whether bought
items are left out (unless the text names them), and λ; the encoder whose mix-up does best
on validation is the one served. Test purchases are never seen here.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from models.answers import Answers, event_keys
from models.bundle import (
    FORMAT,
    ITEMS,
    LLM_LORA,
    LLM_MERGED,
    LLM_ONNX,
    MANIFEST,
    SASREC_DIR,
    VALIDATION,
    Bundle,
    bundle_version,
    encoder_dir,
    imputer_path,
    llm_generator,
    vectors_path,
)
from models.data.dataset import Dataset
from models.gate import Gate, fit_gate
from models.metrics import NextItemEvents, mrr, next_item_events, recall_at_k, target_ranks
from models.mixup import (
    DEFAULT_LAMBDAS,
    ID_HALVES,
    Fusion,
    IdImputer,
    mixup_item_vectors,
    split_scores,
    unit,
)
from models.recommender import History, MixupRecommender, embed_texts, event_histories, history_prompts, user_states
from models.sasrec import SASRec, SASRecConfig, train_sasrec

log = logging.getLogger("stylestream.train")

FULL_HISTORY = 100_000  # events keep the whole history; each model truncates as it needs
CHOICE_K = 10  # choices are made on validation Recall@10
TIE_BREAK = 1e-3  # weight of validation MRR when Recall@10 ties (small sets give flat plateaus)
ENCODERS = ("minilm", "lstm")
ENGINES = ("torch", "onnx")
UNINFORMATIVE = {"", "unknown", "none", "nan", "n/a"}  # LLM targets not worth teaching
ALWAYS_EXCLUDE = 2.0  # a re-buy threshold above any cosine: bought items never come back
REBUY_THRESHOLDS: tuple[float | None, ...] = (None, ALWAYS_EXCLUDE, 0.95, 0.9, 0.8)
ANCHORS = (0.0, 0.2, 0.4, 0.6, 0.8)  # shares of the last item's title in the text query (1 would drop the LLM)
SIGMA_FACTORS = (0.5, 1.0, 2.0)  # logit ID half: σ = factor × (spread of logits / spread of cosines)


# -- configuration ----------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that shapes a bundle; recorded in its manifest."""

    base_model: Path | None = None  # None: SmolLM2 materialised into home/models/base
    home: Path = Path(".stylestream")
    work_dir: Path | None = None  # scratch for runs that are not bundles (benchmarks)
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
    repeat_term: bool = True  # fit the repeat term on validation (kept only if it helps)
    sasrec_run: Path | None = None  # a SASRec trained elsewhere on this data set to use instead
    answers: Path | None = None  # LLM answers generated elsewhere by the same LoRA run
    answers_of_any_llm: bool = False  # benchmarks: take ``answers`` though another LoRA run made them
    max_history: int = 10  # history events shown in an LLM prompt (newest kept)
    max_val_events: int = 64
    max_new_tokens: int = 24
    gen_batch_size: int = 16
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    anchors: tuple[float, ...] = ANCHORS  # shares of the last item's title in the text query tried
    id_halves: tuple[str, ...] = ID_HALVES
    rebuy_thresholds: tuple[float | None, ...] = REBUY_THRESHOLDS
    seed: int = 0
    engine: str = "onnx"  # generation: "onnx" (ONNX Runtime) or "torch"
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
        if not set(self.id_halves) <= set(ID_HALVES) or not self.id_halves:
            raise ValueError(f"ID halves must be some of {', '.join(ID_HALVES)}")
        if self.lora_run is not None:
            from models.llm.lora import MANIFEST_NAME

            if not (Path(self.lora_run) / MANIFEST_NAME).is_file():
                raise ValueError(f"LoRA run {self.lora_run} is not a finished LoRA run "
                                 f"(no {MANIFEST_NAME})")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


# -- the bundle ---------------------------------------------------------------------------------


def train_bundle(dataset: Dataset, cfg: TrainConfig | None = None, out: Path | str = "bundle",
                 progress: bool = True) -> Bundle:
    """Train every part on the train period, choose on validation, write the bundle to ``out``."""
    cfg = cfg or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-written folder is never a valid bundle
    costs: dict[str, Any] = {}
    started = time.perf_counter()
    val_ev = validation_events(dataset, cfg)
    if not len(val_ev):
        raise ValueError("no validation purchases with a history: nothing to choose the fusion on")
    sasrec = fit_sasrec(dataset, cfg, out / SASREC_DIR, progress, costs)
    llm = tune_llm(dataset, cfg, out / "llm", progress, costs)
    _place(Path(llm["merged_dir"]), out / LLM_MERGED)
    if cfg.lora_run is not None:  # keep the adopted run's adapter and manifest with the bundle
        shutil.rmtree(out / "llm" / "lora-adopted", ignore_errors=True)
        shutil.copytree(cfg.lora_run, out / LLM_LORA, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("checkpoints", "merged"))
    export_llm(out, costs)
    val = Validation.of(val_ev)
    val.texts = generate_validation(dataset, val, out, cfg, progress, costs, llm["model_version"])
    val.states = user_states(sasrec, val.histories, sasrec.cfg.max_len)
    choices = {name: fit_encoder(dataset, name, sasrec, val, cfg, out, progress, costs)
               for name in cfg.title_encoders}
    chosen = max(choices, key=lambda n: choices[n]["objective"])
    write_items(dataset, sasrec, choices[chosen]["impute"], out)
    manifest = bundle_manifest(dataset, cfg, sasrec, llm, choices, chosen, val, costs)
    gate = fit_bundle_gate(Bundle(out, manifest), val, cfg.seed)  # every part is on disk but the manifest
    log.info("gate: %s", _gate_summary(gate))
    costs["train_seconds"] = round(time.perf_counter() - started, 1)
    manifest = bundle_manifest(dataset, cfg, sasrec, llm, choices, chosen, val, costs, gate.to_json())
    (out / VALIDATION).write_text(json.dumps(val.to_json(dataset), indent=1) + "\n")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("bundle %s written to %s (encoder %s, %s)", manifest["version"], out, chosen,
             choices[chosen]["fusion"])
    return Bundle.load(out)


def validation_events(dataset: Dataset, cfg: TrainConfig) -> NextItemEvents:
    """A fixed seeded sample of validation purchases; histories are everything before them."""
    train, val, _ = dataset.parts()
    return next_item_events(dataset.items["item_id"].tolist(), train, val, target_kinds=("purchase",),
                            max_history=FULL_HISTORY, max_events=cfg.max_val_events, seed=cfg.seed)


@dataclass
class Validation:
    """The validation events with what the choices need: the LLM's texts and SASRec states."""

    events: NextItemEvents
    histories: list[History]
    texts: list[str] = field(default_factory=list)
    states: np.ndarray | None = None
    prompt_example: str = ""

    @classmethod
    def of(cls, events: NextItemEvents) -> Validation:
        return cls(events, event_histories(events))

    def to_json(self, dataset: Dataset) -> dict[str, Any]:
        ids = dataset.items["item_id"].astype(str).to_numpy()
        return {"user_ids": self.events.user_ids, "targets": ids[self.events.targets].tolist(),
                "texts": self.texts}


def _place(src: Path, dest: Path) -> None:
    """Move a finished folder into the bundle (replacing what was there)."""
    if src.resolve() == dest.resolve():
        return
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dest))


def fit_sasrec(dataset: Dataset, cfg: TrainConfig, folder: Path, progress: bool,
               costs: dict[str, Any]) -> SASRec:
    """Train SASRec on the train period, or adopt ``cfg.sasrec_run`` (trained on a GPU box by
    ``bench_convergence.py --sasrec``) when it was trained on this very data set."""
    t0 = time.perf_counter()
    if cfg.sasrec_run is not None:
        model = SASRec.load(cfg.sasrec_run)
        if model.manifest.get("data_hash") != dataset.data_hash():
            raise ValueError(f"SASRec in {cfg.sasrec_run} was trained on data "
                             f"{model.manifest.get('data_hash')}, not on this data set ({dataset.data_hash()})")
        log.info("using SASRec %s from %s", model.version, cfg.sasrec_run)
        costs["sasrec_adopted"] = str(cfg.sasrec_run)
        costs["sasrec_train_seconds"] = model.manifest.get("train_seconds")
        model.save(folder)
        return model
    log.info("training SASRec (ID embeddings e_i, user state u) on the train period")
    model = train_sasrec(dataset, cfg.sasrec, progress=progress)
    costs["sasrec_train_seconds"] = round(time.perf_counter() - t0, 2)
    model.save(folder)
    log.info("SASRec %s: best epoch %s, %.1f s", model.version, model.manifest.get("best_epoch"),
             costs["sasrec_train_seconds"])
    return model


def export_llm(out: Path, costs: dict[str, Any]) -> None:
    """The ONNX export of the merged LLM (KV cache), what ONNX Runtime serves."""
    from models.llm.onnx_export import export_onnx

    exported = export_onnx(out / LLM_MERGED, out / LLM_ONNX, check=True, overwrite=True)
    costs["onnx_export_seconds"] = round(exported.export_seconds, 1)
    costs["onnx_max_abs_diff"] = exported.max_abs_diff
    log.info("LLM exported to ONNX in %.1f s (max |logit diff| %.1e)", exported.export_seconds,
             exported.max_abs_diff or 0.0)


def generate_validation(dataset: Dataset, val: Validation, out: Path, cfg: TrainConfig, progress: bool,
                        costs: dict[str, Any], llm_version: str = "") -> list[str]:
    """The tuned LLM's answer for every validation event, as serving would generate it."""
    from models.llm.generate import GenerationTotals, generate_in_batches
    from models.llm.prompts import _catalog

    if cfg.answers is not None:  # made by the same LoRA run on another machine (a GPU box)
        answers = Answers.load(cfg.answers)
        answers.require(answers.model_version if cfg.answers_of_any_llm else llm_version, dataset.data_hash())
        costs["answers_llm"] = answers.model_version
        texts = answers.lookup("val", event_keys(val.events, dataset.items["item_id"].astype(str).tolist()))
        if texts is not None:
            log.info("validation answers from %s (%s)", cfg.answers, answers.costs.get("device"))
            costs.update(val_answers_file=str(cfg.answers), val_generated=len(texts))
            return texts
        log.warning("%s lacks some validation events: generating them here", cfg.answers)
    generator = llm_generator(out, cfg.engine, device="cpu" if cfg.engine == "onnx" else "auto")
    prompts = history_prompts(val.histories, _catalog(dataset.items), generator.tokenizer, cfg.max_history)
    totals = GenerationTotals()
    with tqdm(total=len(prompts), desc="generate validation", disable=not progress, dynamic_ncols=True) as bar:
        texts = generate_in_batches(generator, prompts, cfg.max_new_tokens, cfg.gen_batch_size, totals, bar)
    costs.update(generation_engine=cfg.engine, val_generated=totals.n,
                 val_generation_seconds=round(totals.seconds, 1),
                 val_generation_tokens_per_s=round(totals.tokens_per_s, 2),
                 val_malformed_rate=round(totals.malformed_rate, 4))
    val.prompt_example = prompts[0] if prompts else ""
    return texts


def fit_encoder(dataset: Dataset, name: str, sasrec: SASRec, val: Validation, cfg: TrainConfig,
                out: Path, progress: bool, costs: dict[str, Any]) -> dict[str, Any]:
    """Train one title encoder (triplet loss), export it to ONNX, embed the catalog with the
    export (what serving will use), choose its fusion and store its item vectors."""
    from models.title_encoder import train_title_encoder
    from models.title_encoder_onnx import OnnxTitleEncoder, export_title_encoder

    steps = cfg.lstm_steps if name == "lstm" else cfg.minilm_steps
    log.info("training the %s title encoder (%d triplet steps)", name, steps)
    t0 = time.perf_counter()
    trained = train_title_encoder(name, dataset, steps=steps, progress=progress, seed=cfg.seed)
    costs[f"title_encoder_{name}_seconds"] = round(time.perf_counter() - t0, 2)
    folder = export_title_encoder(trained, encoder_dir(out, name))
    encoder = OnnxTitleEncoder(folder)
    t0 = time.perf_counter()
    titles = embed_texts(encoder, dataset.items["title"].fillna("").astype(str).tolist())
    costs[f"title_vectors_{name}_seconds"] = round(time.perf_counter() - t0, 2)
    halves = ValidationHalves.of(titles, embed_texts(encoder, val.texts), val, sasrec, dataset.items)
    choice = choose_fusion(halves, val.events.targets, cfg)
    choice = choose_anchor(halves, val.events.targets, choice, cfg.anchors, cfg.lambdas)
    if cfg.repeat_term:
        choice = choose_repeat(halves, val.events.targets, choice, cfg.lambdas)
    fast = choose_fast_fusion(halves, val.events.targets, choice, cfg)
    choice = {**choice, "fast_fusion": fast.pop("fusion"), "fast": fast}
    log.info("%s: %s, imputation %s; validation R@10 %.4f (fast path %.4f: %s)", name, choice["fusion"],
             "on" if choice["impute"] else "off", choice["val_recall@10"], fast["val_recall@10"],
             choice["fast_fusion"])
    id_emb = halves.id_emb[(choice["impute"], choice["fusion"]["id_half"])]
    vectors_path(out, name).parent.mkdir(parents=True, exist_ok=True)
    np.save(vectors_path(out, name), mixup_item_vectors(titles, id_emb, choice["fusion"]["id_half"]))
    imputer_path(out, name).parent.mkdir(parents=True, exist_ok=True)
    halves.imputers[choice["fusion"]["id_half"]].save(imputer_path(out, name))
    return {**choice, "dim": int(encoder.dim), "manifest": trained.manifest,
            "onnx_max_abs_diff": encoder.manifest.get("max_abs_diff")}


def write_items(dataset: Dataset, sasrec: SASRec, impute: bool, out: Path) -> None:
    """The bundle's catalog: the data set's items, all in stock, with their ID-vector state."""
    cols = [c for c in ("item_id", "title", "category", "brand", "colour", "price") if c in dataset.items]
    items = dataset.items[cols].copy()
    known = sasrec.known_items()
    items["in_stock"] = True
    items["known"] = known
    items["imputed"] = ~known if impute else False
    items.to_parquet(out / ITEMS, index=False)


def bundle_manifest(dataset: Dataset, cfg: TrainConfig, sasrec: SASRec, llm: dict[str, Any],
                    choices: dict[str, dict[str, Any]], chosen: str, val: Validation,
                    costs: dict[str, Any], gate: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch
    import transformers

    encoders = {name: {k: v for k, v in c.items() if k != "objective"} for name, c in choices.items()}
    parts = {"data_hash": dataset.data_hash(), "sasrec": sasrec.version, "llm": llm["model_version"],
             "encoders": {n: {"fusion": c["fusion"], "fast_fusion": c.get("fast_fusion"), "impute": c["impute"],
                              "source": c["manifest"]} for n, c in encoders.items()},
             "chosen": chosen, "prompt": [cfg.max_history, cfg.max_new_tokens], "gate": gate}
    return {
        "format": FORMAT, "version": bundle_version(parts),
        "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "dataset": {"name": dataset.name, "data_hash": dataset.data_hash(), "n_items": len(dataset.items),
                    "split": dataset.split.to_dict() if dataset.split else None},
        "chosen_encoder": chosen, "encoders": encoders, "gate": gate,
        "prompt": {"max_history": cfg.max_history, "max_new_tokens": cfg.max_new_tokens,
                   "example": val.prompt_example},
        "components": {"sasrec": sasrec.version, "sasrec_best_epoch": sasrec.manifest.get("best_epoch"),
                       "sasrec_val_recall@10": sasrec.manifest.get(f"val_recall@{sasrec.cfg.eval_k}"),
                       "llm": llm["model_version"], "llm_base": llm["base"],
                       "lora_run_adopted": str(cfg.lora_run) if cfg.lora_run else None},
        "validation": {"n_events": len(val.events), "choice_k": CHOICE_K},
        "config": cfg.to_json(), "costs": costs,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version(), "machine": platform.platform()},
    }


# -- the LLM: LoRA tuning ---------------------------------------------------------------------------


def base_model_path(cfg: TrainConfig) -> Path:
    from models.llm.base_model import default_base_model_path, materialise_smollm2

    if cfg.base_model is not None:
        return Path(cfg.base_model)
    return materialise_smollm2(default_base_model_path(cfg.home))


def lora_settings(cfg: TrainConfig) -> Any:
    """The LoRA hyper-parameters of a bundle (also what a reused run must have used)."""
    from models.llm.lora import LoraSettings

    return LoraSettings(rank=cfg.lora_rank, alpha=2 * cfg.lora_rank, lr=cfg.lora_lr,
                        steps=cfg.lora_steps, batch_size=cfg.lora_batch_size,
                        max_length=cfg.lora_max_length, seed=cfg.seed, checkpoint_every=0,
                        keep_checkpoints=1, device=cfg.lora_device,
                        eval_every=cfg.lora_eval_every, patience=cfg.lora_patience)


def tune_llm(dataset: Dataset, cfg: TrainConfig, work: Path, progress: bool,
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
    tuned = train_lora(base, examples, lora_settings(cfg), Path(work) / "lora", resume=False,
                       progress=progress, data_hash=dataset.data_hash(), eval_examples=held_out)
    shutil.rmtree(Path(work) / "lora" / "checkpoints", ignore_errors=True)  # optimizer state: not served
    manifest = json.loads(tuned.manifest_path.read_text())
    _lora_costs(manifest, costs)
    return {**manifest, "merged_dir": str(tuned.merged_dir), "base": str(base)}


def adopt_lora_run(dataset: Dataset, cfg: TrainConfig, base: Path, work: Path,
                   costs: dict[str, Any]) -> dict[str, Any]:
    """Use a LoRA run trained elsewhere (say on a GPU box with ``bench/bench_convergence.py``):
    refuse it unless it was trained on this data set, then merge it into the local base."""
    from models.llm.lora import MANIFEST_NAME, merge_adapter

    run = Path(cfg.lora_run)  # TrainConfig made sure it holds a manifest
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    if manifest.get("data_hash") != dataset.data_hash():
        raise ValueError(f"LoRA run {run} was trained on data {manifest.get('data_hash')}, "
                         f"not on this data set ({dataset.data_hash()})")
    log.info("using the LoRA run in %s (%s, %s steps on %s)", run, manifest["model_version"],
             manifest["steps"], manifest.get("device", "?"))
    merged = merge_adapter(base, run, Path(work) / "lora-adopted" / "merged")
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


def _tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    from models.llm.base_model import prepare_tokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(base, local_files_only=True))


def training_examples(dataset: Dataset, cfg: TrainConfig, tokenizer: Any) -> list[Any]:
    """Title + category prompts whose targets are train-period purchases; as many as the
    LoRA run will read (a seeded sample), so prompt building stays cheap."""
    from models.llm.prompts import build_examples

    train, _, _ = dataset.parts()
    buys = train.index[(train["kind"] == "purchase").to_numpy()]
    wanted = max(1, cfg.lora_steps * cfg.lora_batch_size)
    rows = None
    if len(buys) > 2 * wanted:  # render only a seeded sample of targets (twice what is read)
        rows = pd.Index(np.random.default_rng(cfg.seed).choice(buys, 2 * wanted, replace=False))
    examples = build_examples(dataset, "train", max_history=cfg.max_history, tokenizer=tokenizer,
                              tasks=("title", "category"), rows=rows)
    # an answer that carries no information ("unknown" category of an item without article
    # data) would teach the model to say "unknown" for every task
    examples = [ex for ex in examples if ex.target.strip().lower() not in UNINFORMATIVE]
    # a task whose answer never changes (Amazon's one "Clothing, Shoes & Jewelry" category)
    # teaches nothing and would take half the steps
    answers: dict[str, set[str]] = {}
    for ex in examples:
        answers.setdefault(ex.task, set()).add(ex.target.strip().lower())
    examples = [ex for ex in examples if len(answers[ex.task]) > 1]
    if not examples:
        raise ValueError("no train-period purchases to build LLM prompts from")
    if len(examples) > wanted:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(examples), wanted, replace=False))
        examples = [examples[i] for i in keep]
    return examples


def validation_examples(dataset: Dataset, cfg: TrainConfig, tokenizer: Any,
                        limit: int = 256) -> list[Any]:
    """Held-out title prompts from the validation period (early stopping; test untouched)."""
    from models.llm.prompts import build_examples

    _, val, _ = dataset.parts()
    buys = val.index[(val["kind"] == "purchase").to_numpy()]
    rows = None
    if len(buys) > 4 * limit:  # render a seeded sample of targets only
        rows = pd.Index(np.random.default_rng(cfg.seed + 1).choice(buys, 4 * limit, replace=False))
    examples = [ex for ex in build_examples(dataset, "val", max_history=cfg.max_history,
                                            tokenizer=tokenizer, tasks=("title",), rows=rows)
                if ex.target.strip().lower() not in UNINFORMATIVE]
    if len(examples) > limit:
        keep = np.sort(np.random.default_rng(cfg.seed + 1).choice(len(examples), limit,
                                                                  replace=False))
        examples = [examples[i] for i in keep]
    return examples


# -- choices on validation --------------------------------------------------------------------


@dataclass
class ValidationHalves:
    """The two halves of the blend on validation, precomputed once, so every candidate
    fusion costs one weighted sum: ``text`` = cos(t_q, t_i); ``ids[(impute, id_half)]`` =
    cos(u, e_i) or the raw logit u·e_i; ``bought`` = each event's bought catalog rows;
    ``last`` = cos(t_last, t_i) and ``text_last`` = cos(t_q, t_last) for the anchored query."""

    text: np.ndarray
    ids: dict[tuple[bool, str], np.ndarray]
    id_emb: dict[tuple[bool, str], np.ndarray]
    imputers: dict[str, IdImputer]
    bought: list[np.ndarray]
    recent: list[np.ndarray] = field(default_factory=list)  # distinct history rows, newest first
    last: np.ndarray | None = None
    text_last: np.ndarray | None = None

    @classmethod
    def of(cls, titles: np.ndarray, text_vecs: np.ndarray, val: Validation, sasrec: SASRec,
           items: pd.DataFrame) -> ValidationHalves:
        assert val.states is not None
        raw = sasrec.item_embeddings()
        known = sasrec.known_items()
        cats = items["category"].astype("object").where(items["category"].notna(), None).tolist()
        ids, id_emb, imputers = {}, {}, {}
        for id_half in ID_HALVES:
            base = unit(raw) if id_half == "cosine" else raw.astype(np.float64)
            imputers[id_half] = IdImputer().fit(titles, base, has_id=known, categories=cats)
            for impute in (False, True):
                e = imputers[id_half].fill(titles, base, known, cats) if impute else base
                id_emb[(impute, id_half)] = e
                u = unit(val.states) if id_half == "cosine" else val.states
                ids[(impute, id_half)] = (u @ (unit(e) if id_half == "cosine" else e).T).astype(np.float32)
        t_hat = unit(titles)
        text = (unit(text_vecs) @ t_hat.T).astype(np.float32)
        index = {item: r for r, item in enumerate(items["item_id"].astype(str))}
        rows = [index.get(h.item_ids[-1]) if h.item_ids else None for h in val.histories]
        last_vecs = np.array([t_hat[r] if r is not None else np.zeros(t_hat.shape[1]) for r in rows])
        last = (last_vecs @ t_hat.T).astype(np.float32)
        text_last = np.sum(unit(text_vecs) * last_vecs, axis=1)
        bought = [np.array([index[i] for i in h.bought() if i in index], dtype=np.int64) for h in val.histories]
        recent = [np.array([index[i] for i in dict.fromkeys(reversed(h.item_ids)) if i in index], dtype=np.int64)
                  for h in val.histories]
        return cls(text, ids, id_emb, imputers, bought, recent, last, text_last)

    def text_at(self, anchor: float) -> np.ndarray:
        """cos(t_q, t_i) for the anchored text query unit((1−a)·t̂_gen + a·t̂_last): the two
        cosines mixed, over the mixed vector's length (zero rows stay zero)."""
        if not anchor or self.last is None or self.text_last is None:
            return self.text
        a = float(anchor)
        gen = (np.abs(self.text).sum(axis=1) > 0).astype(np.float64)
        has_last = (np.abs(self.last).sum(axis=1) > 0).astype(np.float64)
        norm2 = (1 - a) ** 2 * gen + a ** 2 * has_last + 2 * a * (1 - a) * self.text_last
        norm = np.sqrt(np.maximum(norm2, 0.0))[:, None]
        mixed = (1 - a) * self.text + a * self.last
        return np.divide(mixed, norm, out=np.zeros_like(mixed), where=norm > 0).astype(np.float32)

    def sigma_base(self, impute: bool) -> float:
        """Spread of the logits over the spread of the text cosines: σ = 1× this puts the halves on a par."""
        return float(np.std(self.ids[(impute, "logit")]) / max(np.std(self.text), 1e-9))

    def scores(self, fusion: Fusion, impute: bool) -> np.ndarray:
        """The blended validation scores, excluded items at -inf (as serving would leave them out)."""
        ids = self.ids[(impute, fusion.id_half)]
        if fusion.id_half == "logit":
            ids = ids / fusion.sigma
        text = self.text_at(fusion.anchor)
        s = fusion.lam * text + (1.0 - fusion.lam) * ids
        if fusion.rebuy_threshold is not None:
            for r, rows in enumerate(self.bought):
                out = rows[~(text[r, rows] >= fusion.rebuy_threshold)]
                s[r, out] = -np.inf
        if fusion.repeat:
            s = s.astype(np.float64)
            for r, rows in enumerate(self.recent):
                w = np.asarray(fusion.repeat)[np.minimum(np.arange(len(rows)), len(fusion.repeat) - 1)]
                live = np.isfinite(s[r, rows])
                s[r, rows[live]] += w[live]
        return s


def choose_fusion(h: ValidationHalves, targets: np.ndarray, cfg: TrainConfig,
                  imputes: Sequence[bool] = (False, True), id_halves: Sequence[str] | None = None,
                  anchor: float = 0.0) -> dict[str, Any]:
    """The fusion with the best validation Recall@10 (+ a pinch of MRR to break ties).

    Candidates: imputation on/off × ID half (cosine; logit at σ = {0.5, 1, 2} × the spread
    ratio) × re-buy rule × λ, at the given ``anchor`` (the last title's share of the text
    query). The winner's λ curve and each option's best objective are recorded, so the
    report shows what each choice was worth.
    """
    candidates = []
    for impute, id_half, factor, threshold in product(imputes, id_halves or cfg.id_halves, SIGMA_FACTORS,
                                                      cfg.rebuy_thresholds):
        if id_half == "cosine" and factor != 1.0:
            continue
        sigma = factor * h.sigma_base(impute) if id_half == "logit" else 1.0
        for lam in cfg.lambdas:
            fusion = Fusion(float(lam), id_half, sigma, threshold, anchor=anchor)
            ranks = target_ranks(h.scores(fusion, impute), targets)
            recall = recall_at_k(ranks, CHOICE_K)
            candidates.append((recall + TIE_BREAK * mrr(ranks), recall, mrr(ranks), impute, factor, fusion))
    best = max(candidates, key=lambda c: c[0])
    _, recall, best_mrr, impute, factor, fusion = best
    same = [c for c in candidates if c[3] == impute and c[5].id_half == fusion.id_half
            and c[4] == factor and c[5].rebuy_threshold == fusion.rebuy_threshold]
    return {
        "fusion": fusion.to_json(), "impute": impute, "objective": best[0],
        "val_recall@10": recall, "val_mrr": best_mrr, "sigma_factor": factor,
        "val_curve": {str(c[5].lam): c[1] for c in same},
        "options": {
            "impute": {str(v): _best(candidates, lambda c, v=v: c[3] == v) for v in (False, True)},
            "id_half": {v: _best(candidates, lambda c, v=v: c[5].id_half == v) for v in id_halves or cfg.id_halves},
            "rebuy_threshold": {str(v): _best(candidates, lambda c, v=v: c[5].rebuy_threshold == v)
                                for v in cfg.rebuy_thresholds},
        },
    }


def choose_anchor(h: ValidationHalves, targets: np.ndarray, choice: dict[str, Any],
                  anchors: Sequence[float], lambdas: Sequence[float]) -> dict[str, Any]:
    """The share of the last item's title in the text query (× λ again, since the text half
    changes), on top of the chosen fusion; kept only when it beats the generated text alone.
    The per-anchor best is recorded so the report shows what the generated text is worth."""
    base = Fusion.from_json(choice["fusion"])
    impute = choice["impute"]
    best, curve = (choice["objective"], choice["val_recall@10"], choice["val_mrr"], base), {}
    for a in anchors:
        for lam in lambdas:
            fusion = base.with_anchor(a).with_lambda(lam)
            ranks = target_ranks(h.scores(fusion, impute), targets)
            recall, m = recall_at_k(ranks, CHOICE_K), mrr(ranks)
            curve[str(float(a))] = max(curve.get(str(float(a)), 0.0), recall)
            if a and recall + TIE_BREAK * m > best[0]:
                best = (recall + TIE_BREAK * m, recall, m, fusion)
    out = {**choice, "anchor": {"val_curve": curve, "kept": best[3].anchor > 0}}
    if best[3].anchor > 0:
        out.update({"fusion": best[3].to_json(), "objective": best[0], "val_recall@10": best[1],
                    "val_mrr": best[2]})
    return out


def choose_fast_fusion(h: ValidationHalves, targets: np.ndarray, choice: dict[str, Any],
                       cfg: TrainConfig) -> dict[str, Any]:
    """The fast path's fusion: the last item's title as the whole text query (anchor 1), over
    the stored vectors the LLM path's choice fixed (imputation, ID half); σ, the re-buy rule,
    λ and the repeat term (with its split) chosen on validation as the LLM path's are."""
    fast = choose_fusion(h, targets, cfg, imputes=(choice["impute"],), id_halves=(choice["fusion"]["id_half"],),
                         anchor=1.0)
    if cfg.repeat_term:
        fast = choose_repeat(h, targets, fast, cfg.lambdas)
    return {"fusion": fast["fusion"], "val_recall@10": fast["val_recall@10"], "val_mrr": fast["val_mrr"],
            "val_curve": fast["val_curve"], "repeat_kept": bool(fast.get("repeat", {}).get("kept"))}


REPEAT_RANKS = 5  # repeat weights for the 4 newest distinct history items, one for the rest
REPEAT_FACTORS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # × the spread of the blended scores


def choose_repeat(h: ValidationHalves, targets: np.ndarray, choice: dict[str, Any],
                  lambdas: Sequence[float] = DEFAULT_LAMBDAS) -> dict[str, Any]:
    """The repeat term on top of the chosen fusion, fitted on validation by coordinate
    ascent over a weight per recency rank; kept only when it beats the fusion without it.

    With the term on, bought items are never left out (the term decides how much they are
    worth), so the re-buy rule is off. Returns the choice, updated when the term is kept.
    """
    base = Fusion.from_json(choice["fusion"])
    impute = choice["impute"]
    plain = Fusion(base.lam, base.id_half, base.sigma, None, anchor=base.anchor)
    s = h.scores(plain, impute)
    spread = float(np.mean(np.std(np.where(np.isfinite(s), s, 0.0), axis=1)))

    def objective(weights: list[float]) -> tuple[float, float, float]:
        ranks = target_ranks(h.scores(plain.with_repeat(weights), impute), targets)
        recall = recall_at_k(ranks, CHOICE_K)
        return recall + TIE_BREAK * mrr(ranks), recall, mrr(ranks)

    weights = [0.0] * REPEAT_RANKS
    best = objective(weights)
    for _ in range(2):
        for r in range(REPEAT_RANKS):
            for f in REPEAT_FACTORS:
                trial = [*weights[:r], f * spread, *weights[r + 1:]]
                got = objective(trial)
                if got[0] > best[0]:
                    best, weights = got, trial
    out = {**choice, "repeat": {"weights": weights, "spread": spread, "val_recall@10": best[1],
                                "val_recall@10_without": choice["val_recall@10"],
                                "kept": bool(best[0] > choice["objective"] and any(weights))}}
    if not out["repeat"]["kept"]:
        return out
    fusion = plain.with_repeat(weights)
    split = choose_split(h, targets, fusion, impute, lambdas)
    out["repeat"]["split"] = split
    if split["objective"] > best[0]:
        fusion = fusion.with_repeat(weights, split["slots"], split["explore_lam"])
        best = (split["objective"], split["val_recall@10"], split["val_mrr"])
    out.update({"fusion": fusion.to_json(), "fusion_without_repeat": choice["fusion"],
                "objective": best[0], "val_recall@10": best[1], "val_mrr": best[2]})
    return out


SPLIT_SLOTS = (1, 2, 3, 4, 5, 6, 8)  # places of the answer kept for the shopper's own items


def choose_split(h: ValidationHalves, targets: np.ndarray, fusion: Fusion, impute: bool,
                 lambdas: Sequence[float]) -> dict[str, Any]:
    """The best repeat/explore split on validation: places for own items × the explore λ."""
    repeat_s = h.scores(fusion, impute)
    best: dict[str, Any] = {"objective": -1.0}
    for lam in lambdas:
        explore = h.scores(Fusion(float(lam), fusion.id_half, fusion.sigma, None, anchor=fusion.anchor), impute)
        for slots in SPLIT_SLOTS:
            ranks = target_ranks(split_scores(repeat_s, explore, h.recent, slots), targets)
            recall, m = recall_at_k(ranks, CHOICE_K), mrr(ranks)
            if recall + TIE_BREAK * m > best["objective"]:
                best = {"objective": recall + TIE_BREAK * m, "val_recall@10": recall, "val_mrr": m,
                        "slots": slots, "explore_lam": float(lam)}
    return best


def fit_bundle_gate(bundle: Bundle, val: Validation, seed: int = 0) -> Gate:
    """The gate before the LLM path, fitted on the validation events through the served code:
    each event's fast-path answer gives its features, and the LLM path's and the fast path's
    whole-catalog target ranks give the label (:func:`models.gate.fit_gate`)."""
    rec = MixupRecommender(bundle)
    histories, targets = val.histories, val.events.targets
    states = val.states if val.states is not None else rec.user_states(histories)
    x = rec.gate_features(histories, rec.recommend_fast(histories, CHOICE_K))
    text = embed_texts(rec.encoder, val.texts or [""] * len(histories))
    llm = target_ranks(rec.llm_answer_scores(histories, text, states), targets)
    fast = target_ranks(rec.fast_answer_scores(histories, states), targets)
    return fit_gate(x, llm, fast, CHOICE_K, TIE_BREAK, seed)


def _gate_summary(gate: Gate) -> str:
    v = gate.validation
    state = "closed" if gate.closed else f"sends {100 * v.get('send_share', 0):.0f}% of events"
    return (f"{state} (validation Recall@10: fast path {v.get('recall@10_fast', 0):.4f}, LLM path "
            f"{v.get('recall@10_llm', 0):.4f}, served {v.get('recall@10_served', 0):.4f}; the LLM path is the "
            f"better one on {v.get('llm_better', 0)} of {v.get('n_events', 0)} events, the fast path on "
            f"{v.get('fast_better', 0)})")


def _best(candidates: Sequence[tuple[Any, ...]], keep: Any) -> float | None:
    """The best validation Recall@10 among candidates with one option fixed."""
    vals = [c[1] for c in candidates if keep(c)]
    return max(vals) if vals else None
