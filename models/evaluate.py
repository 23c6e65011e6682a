"""The offline evaluation: every system ranks the whole catalog for the same purchases.

Read top to bottom: configuration, the result, :func:`evaluate` (the protocol, one phase
per function), the scoring of mix-up, the paired comparisons, then :func:`write_report`.

Protocol
--------
- The model bundle (:mod:`models.bundle`) is trained on the train part and makes its
  choices on validation purchases (:func:`models.train.train_bundle`); ``--bundle DIR``
  evaluates a bundle already built, on the data set (and protocol: temporal or
  leave-one-out, :mod:`models.data.split`) it was trained on. Test purchases are reported.
- Events are purchases (:func:`models.metrics.next_item_events`). The systems that need no
  LLM score every test purchase (or ``max_test_events`` of them); the LLM systems a fixed
  seeded sample of ``llm_test_events`` (every one when answers made on a GPU cover them,
  :mod:`models.answers`), and the paired table puts every system on those same events. An
  event's history is everything the shopper did before it, including earlier val/test
  interactions, as a live stream would have it.
- Each system scores the WHOLE catalog; the target's rank counts ties half
  (:func:`models.metrics.target_ranks`).
- The mix-up systems are scored by :class:`models.recommender.MixupRecommender`, the code
  that serves live answers: the same prompts, generation, query vectors, stored item
  vectors, re-buy exclusions, repeat term and repeat/explore split
  (:meth:`~models.recommender.MixupRecommender.answer_scores`). An item the live path would
  leave out cannot be ranked here either.
- Each mix-up is compared with its rivals by the paired bootstrap of per-event Recall@10
  hits and NDCG@10 gains (:func:`models.metrics.paired_bootstrap`).

Systems: ``popularity``, ``co-occurrence``, ``sasrec`` (raw ``u·e_i``), ``id-only`` (the
served encoder's fusion at λ = 0: the stream's fast path before the last-title mix-up),
``content: last item's title``, ``fast path: last-title mix-up`` (the bundle's fast fusion:
what the stream answers without the LLM), per title encoder ``title-only (<enc>)`` (the text
half), ``mix-up (<enc>)`` (the LLM path) and, when its repeat term is on, ``mix-up without
repeat term (<enc>)``; when its text query leans on the last item's title, ``mix-up,
generated text alone (<enc>)``; and ``served: gate + LLM path + fast path``, what users get
(:func:`served_system`).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from models.answers import Answers, event_keys
from models.baselines import CoOccurrence, Popularity
from models.bundle import Bundle
from models.data.dataset import Dataset
from models.metrics import (
    NextItemEvents,
    bootstrap_ci,
    hits_at_k,
    mrr,
    ndcg_at_k,
    ndcg_gains,
    next_item_events,
    paired_bootstrap,
    recall_at_k,
    target_ranks,
)
from models.mixup import Fusion, QueryMemory, blended_score
from models.recommender import History, MixupRecommender, event_histories
from models.sasrec import SASRec
from models.train import CHOICE_K, ENCODERS, FULL_HISTORY, TrainConfig, train_bundle

__all__ = ["ENCODERS", "EvalConfig", "EvalResult", "evaluate", "run_evaluation", "write_report"]

log = logging.getLogger("stylestream.evaluate")

MIXUP_READING = "score-level blend s = λ·cos(t_q,t_i) + (1−λ)·sim(u,e_i) as one inner product"
EXCLUSION = ("already-bought items are left out exactly when the served bundle leaves them out "
             "(its re-buy rule, chosen on validation); the baselines and SASRec exclude nothing")
SCORE_CHUNK = 512  # events scored at once (memory: chunk × catalog floats)


# -- configuration ----------------------------------------------------------------------------


@dataclass
class EvalConfig(TrainConfig):
    """Everything that shapes the numbers: the bundle's training plus the test protocol."""

    bundle: Path | None = None  # load this bundle, or train into it when it holds none
    max_test_events: int | None = None  # test purchases scored by the systems needing no LLM (None: all)
    llm_test_events: int | None = 2000  # seeded sample of those the LLM systems score (None: all)
    ks: tuple[int, ...] = (5, 10, 20)
    ndcg_ks: tuple[int, ...] = (10, 20)
    memory_threshold: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if CHOICE_K not in self.ks:
            self.ks = tuple(sorted({*self.ks, CHOICE_K}))


@dataclass
class EvalResult:
    """All numbers of one evaluation run; ``metrics.json`` is :meth:`to_json`."""

    dataset: dict[str, Any]
    config: dict[str, Any]
    systems: dict[str, dict[str, Any]]  # test metrics per system
    slices: dict[str, dict[str, dict[str, Any]]]  # slice -> system -> metrics
    sweep: dict[str, list[dict[str, float]]]  # encoder -> test λ sweep
    choices: dict[str, dict[str, Any]]  # encoder -> the bundle's validation choices + ablations
    claim: dict[str, Any]
    costs: dict[str, Any]
    versions: dict[str, Any]
    samples: list[dict[str, str]]
    bundle: dict[str, Any] = field(default_factory=dict)  # folder, version, served encoder
    paired: list[dict[str, Any]] = field(default_factory=list)  # mix-up vs rivals, paired bootstrap
    last_title: dict[str, Any] = field(default_factory=dict)  # the fast path's fusion and validation figures
    served: dict[str, Any] = field(default_factory=dict)  # the served system: the gate and the LLM's share
    mixup_reading: str = MIXUP_READING
    exclusion: str = EXCLUSION
    out_dir: Path | None = None
    generations: dict[str, Any] = field(default_factory=dict, repr=False)  # generations.json

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("generations")
        out["out_dir"] = str(self.out_dir) if self.out_dir else None
        return json.loads(json.dumps(out, default=json_default))


# -- the evaluation ------------------------------------------------------------------------------


def evaluate(dataset: Dataset, config: EvalConfig | None = None, out_dir: Path | str = "report",
             progress: bool = True) -> EvalResult:
    """Train (or load) the bundle, then score every system on the same test purchases: the
    systems that need no LLM on every test purchase, all of them on the LLM sample."""
    cfg = config or EvalConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bundle = obtain_bundle(dataset, cfg, out_dir, progress)
    events = test_events(dataset, cfg)
    if not len(events):
        raise ValueError("no test purchases with a history: nothing to evaluate")
    rows = llm_sample_rows(len(events), cfg)
    llm_ev = subset(events, rows)
    log.info("events: %d test purchases; %d of them for the LLM systems (same events for every system "
             "in the paired table)", len(events), len(rows))
    histories = event_histories(events)
    llm_histories = [histories[i] for i in rows]
    served = MixupRecommender(bundle, engine=cfg.engine, device="cpu" if cfg.engine == "onnx" else "auto")
    costs = {k: v for k, v in bundle.manifest.get("costs", {}).items()}
    texts = test_texts(served, dataset, llm_ev, llm_histories, cfg, progress, costs)
    sasrec = bundle.sasrec()
    states = served.user_states(histories)
    ranks = baseline_ranks(dataset, sasrec, events, states)
    ranks["id-only"] = mixup_ranks(served, None, states, histories, events.targets,
                                   served.fusion.with_lambda(0.0).with_repeat(()))
    ranks[CONTENT] = content_ranks(served, histories, states, events.targets)
    ranks[LAST_TITLE_MIXUP] = fast_path_ranks(served, histories, states, events.targets)
    last_title = {"fast_fusion": served.fast_fusion.to_json(),
                  "validation": bundle.manifest["encoders"][served.encoder_name].get("fast", {})}
    llm_ranks: dict[str, np.ndarray] = {}
    choices, sweep = {}, {}
    for name in bundle.encoders:
        rec = served if name == served.encoder_name else MixupRecommender(bundle, name, generator=served.generator)
        part = score_encoder(rec, texts, states[rows], llm_histories, llm_ev, dataset, cfg)
        llm_ranks[f"title-only ({name})"] = part.pop("title_only_ranks")
        llm_ranks[f"mix-up ({name})"] = part.pop("mixup_ranks")
        if "without_repeat_ranks" in part:
            llm_ranks[f"mix-up without repeat term ({name})"] = part.pop("without_repeat_ranks")
        if "unanchored_ranks" in part:
            llm_ranks[f"mix-up, generated text alone ({name})"] = part.pop("unanchored_ranks")
        sweep[name] = part.pop("sweep")
        choices[name] = {**bundle.manifest["encoders"][name], "lambda": rec.fusion.lam, **part}
    served_part = served_system(served, llm_histories, llm_ranks[f"mix-up ({served.encoder_name})"],
                                ranks[LAST_TITLE_MIXUP][rows])
    llm_ranks[SERVED] = served_part.pop("ranks")
    costs["total_seconds"] = round(time.perf_counter() - started, 1)

    systems = {name: ranking_metrics(r, cfg) for name, r in {**ranks, **llm_ranks}.items()}
    same = {**{name: r[rows] for name, r in ranks.items()}, **llm_ranks}
    masks = event_slices(dataset, llm_ev)
    slices = {s: {name: ranking_metrics(r[m], cfg) for name, r in same.items()} for s, m in masks.items()}
    paired = paired_comparisons(same, bundle.encoders, cfg) + served_comparisons(same, served.encoder_name, cfg)
    return EvalResult(
        dataset=dataset_summary(dataset, bundle, events, llm_ev, masks, sasrec),
        config=cfg.to_json(), systems=systems, slices=slices, sweep=sweep, choices=choices,
        claim=claim_check(slices["all"], paired, bundle.encoders), costs=costs,
        versions=versions(dataset, bundle), samples=samples(dataset, llm_ev, texts),
        bundle={"folder": str(bundle.folder), "version": bundle.version, "served_encoder": bundle.chosen_encoder},
        paired=paired, last_title=last_title, served=served_part,
        out_dir=out_dir, generations=generation_log(dataset, bundle, llm_ev, texts))


def obtain_bundle(dataset: Dataset, cfg: EvalConfig, out_dir: Path, progress: bool) -> Bundle:
    """``cfg.bundle`` when it holds a bundle of this data set; else train one there (or in
    ``out_dir/bundle``)."""
    folder = Path(cfg.bundle) if cfg.bundle else out_dir / "bundle"
    if cfg.bundle and (folder / "bundle.json").is_file():
        bundle = Bundle.load(folder)
        bundle.require_data(dataset.data_hash())
        log.info("evaluating bundle %s from %s", bundle.version, folder)
        return bundle
    return train_bundle(dataset, cfg, folder, progress)


def test_events(dataset: Dataset, cfg: EvalConfig) -> NextItemEvents:
    """Every test purchase (or a fixed seeded sample of ``max_test_events``); histories reach
    back through every period."""
    train, val, test = dataset.parts()
    return next_item_events(dataset.items["item_id"].tolist(), pd.concat([train, val]), test,
                            target_kinds=("purchase",), max_history=FULL_HISTORY,
                            max_events=cfg.max_test_events, seed=cfg.seed)


def llm_sample_rows(n_events: int, cfg: EvalConfig) -> np.ndarray:
    """The rows of the test events that the LLM systems score: a fixed seeded sample of
    ``llm_test_events`` (every row when that is None or not smaller)."""
    if cfg.llm_test_events is None or cfg.llm_test_events >= n_events:
        return np.arange(n_events)
    return np.sort(np.random.default_rng(cfg.seed + 7).choice(n_events, cfg.llm_test_events, replace=False))


def subset(events: NextItemEvents, rows: np.ndarray) -> NextItemEvents:
    return events.subset(rows)


def llm_sample(events: NextItemEvents, cfg: EvalConfig) -> NextItemEvents:
    return subset(events, llm_sample_rows(len(events), cfg))


def test_texts(rec: MixupRecommender, dataset: Dataset, events: NextItemEvents, histories: list[History],
               cfg: EvalConfig, progress: bool, costs: dict[str, Any]) -> list[str]:
    """The served LLM's answer for every LLM test event: from ``cfg.answers`` (made by the
    same LoRA run elsewhere, :mod:`models.answers`) where it has them, generated here for
    the rest."""
    texts: list[str | None] = [None] * len(histories)
    if cfg.answers is not None:
        answers = Answers.load(cfg.answers)
        answers.require(answers.model_version if cfg.answers_of_any_llm else rec.bundle.manifest["components"]["llm"],
                        dataset.data_hash())
        keys = event_keys(events, dataset.items["item_id"].astype(str).tolist())
        texts = [answers.test.get(k) for k in keys]
        costs["answers_file"] = str(cfg.answers)
        costs["answers_costs"] = answers.costs
    missing = [i for i, t in enumerate(texts) if t is None]
    costs["test_answers_from_file"] = len(texts) - len(missing)
    if missing:
        made = generate_texts(rec, [histories[i] for i in missing], cfg, progress, costs)
        for i, t in zip(missing, made, strict=True):
            texts[i] = t
    return [t or "" for t in texts]


def generate_texts(rec: MixupRecommender, histories: list[History], cfg: EvalConfig, progress: bool,
                   costs: dict[str, Any]) -> list[str]:
    """The served LLM's answer for each history (the Generator deployment's code)."""
    from models.llm.generate import GenerationTotals

    totals = GenerationTotals()
    with tqdm(total=len(histories), desc="generate test", disable=not progress, dynamic_ncols=True) as bar:
        texts = rec.generate(histories, cfg.gen_batch_size, totals, bar)
    costs.update(generation_engine=cfg.engine, generated=totals.n,
                 generation_seconds=round(totals.seconds, 1), generation_tokens=totals.tokens,
                 generation_tokens_per_s=round(totals.tokens_per_s, 2),
                 malformed_rate=round(totals.malformed_rate, 4))
    log.info("generated %d answers with %s: %.1f tokens/s, %.1f%% malformed", totals.n, cfg.engine,
             totals.tokens_per_s, 100 * totals.malformed_rate)
    return texts


def generation_log(dataset: Dataset, bundle: Bundle, test_ev: NextItemEvents,
                   texts: list[str]) -> dict[str, Any]:
    """Every generated answer next to the title actually bought (for auditing the LLM half)."""
    titles = dict(zip(dataset.items["item_id"].astype(str), dataset.items["title"].fillna("").astype(str),
                      strict=True))
    ids = dataset.items["item_id"].astype(str).to_numpy()
    val = bundle.validation()
    return {"example_prompt": bundle.manifest.get("prompt", {}).get("example", ""),
            "val": [{"user_id": u, "generated": t, "bought": titles.get(b, "")}
                    for u, t, b in zip(val.get("user_ids", []), val.get("texts", []), val.get("targets", []),
                                       strict=True)],
            "test": [{"user_id": u, "generated": t, "bought": titles[ids[target]]}
                     for u, t, target in zip(test_ev.user_ids, texts, test_ev.targets, strict=True)]}


# -- baselines and SASRec -------------------------------------------------------------------------


def baseline_ranks(dataset: Dataset, sasrec: SASRec, events: NextItemEvents,
                   states: np.ndarray) -> dict[str, np.ndarray]:
    """Test ranks of popularity, co-occurrence and raw SASRec ``u·e_i`` (all fitted on
    train only; ``states`` are SASRec's states for the events), scored in chunks."""
    train, _, _ = dataset.parts()
    out = {}
    for name, model in (("popularity", Popularity(dataset.items, train)),
                        ("co-occurrence", CoOccurrence(dataset.items, train))):
        out[name] = np.concatenate([
            target_ranks(np.stack([model.score(h) for h in events.histories[lo:lo + SCORE_CHUNK]]),
                         events.targets[lo:lo + SCORE_CHUNK])
            for lo in range(0, len(events), SCORE_CHUNK)])
    e = sasrec.item_embeddings()
    out["sasrec"] = np.concatenate([target_ranks(states[lo:lo + SCORE_CHUNK] @ e.T, events.targets[lo:lo + SCORE_CHUNK])
                                    for lo in range(0, len(events), SCORE_CHUNK)])
    return out


CONTENT = "content: last item's title"
LAST_TITLE_MIXUP = "fast path: last-title mix-up"
SERVED = "served: gate + LLM path + fast path"


def content_ranks(rec: MixupRecommender, histories: list[History], states: np.ndarray,
                  targets: np.ndarray) -> np.ndarray:
    """Title similarity to the shopper's last item alone (λ = 1), the shopper's own items left
    out: the content baseline, with the served encoder's stored title vectors."""
    titles = rec.index.vectors[:, :rec.text_dim]
    fusion = Fusion(1.0, rec.fusion.id_half, rec.fusion.sigma, None)
    out = np.empty(len(histories))
    for lo in range(0, len(histories), SCORE_CHUNK):
        part = histories[lo:lo + SCORE_CHUNK]
        last = np.zeros((len(part), rec.text_dim), np.float32)
        for r, h in enumerate(part):
            row = rec.index.index.get(h.item_ids[-1]) if h.item_ids else None
            if row is not None:
                last[r] = titles[row]
        q = rec.queries(last, states[lo:lo + SCORE_CHUNK], fusion)
        exclude = [list(dict.fromkeys(h.item_ids)) for h in part]
        out[lo:lo + SCORE_CHUNK] = target_ranks(rec.scores(q, exclude), targets[lo:lo + SCORE_CHUNK])
    return out


def fast_path_ranks(rec: MixupRecommender, histories: list[History], states: np.ndarray,
                    targets: np.ndarray) -> np.ndarray:
    """The fast path's whole-catalog target ranks (the bundle's last-title mix-up, as served)."""
    return np.concatenate([target_ranks(rec.fast_answer_scores(histories[lo:lo + SCORE_CHUNK],
                                                               states[lo:lo + SCORE_CHUNK]),
                                        targets[lo:lo + SCORE_CHUNK])
                           for lo in range(0, len(histories), SCORE_CHUNK)] or [np.zeros(0)])


def served_system(rec: MixupRecommender, histories: list[History], llm: np.ndarray, fast: np.ndarray
                  ) -> dict[str, Any]:
    """The served system on the LLM events: the gate reads each event's fast-path answer
    (:meth:`~models.recommender.MixupRecommender.decide`, as the stream worker does); the
    ranks are the LLM path's where it sends the event, the fast path's elsewhere."""
    decisions = []
    for lo in range(0, len(histories), SCORE_CHUNK):
        part = histories[lo:lo + SCORE_CHUNK]
        decisions += rec.decide(part, rec.recommend_fast(part, CHOICE_K))
    send = np.array([d.send for d in decisions], dtype=bool)
    share = float(send.mean()) if len(send) else 0.0
    return {"ranks": np.where(send, llm, fast), "llm_share": share, "llm_calls_per_1000": round(1000 * share, 1),
            "n_events": int(len(send)), "gate_closed": rec.gate.closed, "gate_mode": rec.gate.mode,
            "gate": rec.gate.to_json()}


# -- mix-up through the served code ---------------------------------------------------------------------


def mixup_ranks(rec: MixupRecommender, text_vecs: np.ndarray | None, states: np.ndarray,
                histories: list[History], targets: np.ndarray, fusion: Fusion) -> np.ndarray:
    """Whole-catalog target ranks of the served computation: query vectors, re-buy
    exclusions, one inner product over the bundle's stored vectors and the repeat term."""
    out = np.empty(len(histories))
    for lo in range(0, len(histories), SCORE_CHUNK):
        hi = lo + SCORE_CHUNK
        t = None if text_vecs is None else text_vecs[lo:hi]
        out[lo:hi] = target_ranks(rec.answer_scores(histories[lo:hi], t, states[lo:hi], fusion), targets[lo:hi])
    return out


def llm_path_ranks(rec: MixupRecommender, text_vecs: np.ndarray, states: np.ndarray, histories: list[History],
                   targets: np.ndarray) -> np.ndarray:
    """The LLM path's whole-catalog target ranks, as it answers (an empty text: the fast path)."""
    out = np.empty(len(histories))
    for lo in range(0, len(histories), SCORE_CHUNK):
        hi = lo + SCORE_CHUNK
        out[lo:hi] = target_ranks(rec.llm_answer_scores(histories[lo:hi], text_vecs[lo:hi], states[lo:hi]),
                                  targets[lo:hi])
    return out


def score_encoder(rec: MixupRecommender, texts: list[str], states: np.ndarray, histories: list[History],
                  events: NextItemEvents, dataset: Dataset, cfg: EvalConfig) -> dict[str, Any]:
    """Mix-up, title-only (the pure text half: no repeat term) and the λ sweep on the LLM
    events for one encoder of the bundle; mix-up without its repeat term when it has one;
    the query-memory ablation and the one-vector-search check."""
    text_vecs = rec.text_vectors(texts)
    targets = events.targets
    mixup = llm_path_ranks(rec, text_vecs, states, histories, targets)
    title_only = mixup_ranks(rec, text_vecs, states, histories, targets, rec.fusion.with_lambda(1.0).with_repeat(()))
    sweep = [{"lambda": float(lam), **_sweep_point(mixup_ranks(rec, text_vecs, states, histories, targets,
                                                                 rec.fusion.with_lambda(lam)))}
             for lam in cfg.lambdas]
    scored = {rec.fusion.anchor: (mixup, title_only)}  # the anchor sweep reuses what is scored already
    out = {
        "mixup_ranks": mixup,
        "title_only_ranks": title_only,
        "sweep": sweep,
        "anchor_sweep": anchor_sweep(rec, text_vecs, states, histories, targets, cfg, scored),
        "query_memory": query_memory_ablation(rec, text_vecs, states, histories, targets, dataset, cfg),
        "one_vector_search_max_abs_diff": one_vector_search_gap(rec, text_vecs, states),
    }
    if rec.fusion.anchor:
        out["unanchored_ranks"] = scored[0.0][0]
    without = rec.bundle.manifest["encoders"][rec.encoder_name].get("fusion_without_repeat")
    if rec.fusion.repeat and without:
        out["without_repeat_ranks"] = mixup_ranks(rec, text_vecs, states, histories, targets,
                                                  Fusion.from_json(without))
    return out


def anchor_sweep(rec: MixupRecommender, text_vecs: np.ndarray, states: np.ndarray, histories: list[History],
                 targets: np.ndarray, cfg: EvalConfig,
                 scored: dict[float, tuple[np.ndarray, np.ndarray]] | None = None) -> list[dict[str, Any]]:
    """Test figures per share of the last item's title in the text query (the served fusion
    otherwise): the mix-up, and the text half alone. Anchor 0 is the generated text alone,
    so the rows say what the LLM's text is worth beside the last title.

    ``scored``: anchor -> (mix-up ranks, text-half ranks) already computed; filled in with
    the rest, so the caller can use them too."""
    scored = {} if scored is None else scored
    out = []
    for a in sorted({0.0, *cfg.anchors, 1.0}):
        if a not in scored:
            fusion = rec.fusion.with_anchor(a)
            scored[a] = (mixup_ranks(rec, text_vecs, states, histories, targets, fusion),
                         mixup_ranks(rec, text_vecs, states, histories, targets,
                                     fusion.with_lambda(1.0).with_repeat(())))
        mix, text_only = scored[a]
        out.append({"anchor": float(a), **_sweep_point(mix), "text_only_recall@10": recall_at_k(text_only, 10)})
    return out


def query_memory_ablation(rec: MixupRecommender, text_vecs: np.ndarray, states: np.ndarray,
                          histories: list[History], targets: np.ndarray, dataset: Dataset,
                          cfg: EvalConfig) -> dict[str, Any]:
    """Test Recall@10 without and with the paper's query memory added to the text half.

    An ablation only: the served path does not use it (it is not one vector search).
    """
    train, _, _ = dataset.parts()
    titles = rec.index.vectors[:, :rec.text_dim]
    memory = QueryMemory.build(train, rec.item_ids, rec.encoder.encode, titles)
    if not len(memory):
        return {"size": 0, "test_recall@10_off": None, "test_recall@10_on": None, "hit_rate": 0.0}
    boost = np.zeros((len(text_vecs), len(rec.item_ids)))
    for r, t in enumerate(text_vecs):
        hit = memory.lookup(t, cfg.memory_threshold) if np.any(t) else None
        if hit is not None and hit.max() > 0:
            boost[r] = hit / hit.max()
    q = rec.queries(text_vecs, states)
    base = rec.scores(q, rec.exclusions(histories, text_vecs, rec.stored_vectors))
    on = base + rec.fusion.lam * boost
    return {"size": len(memory), "hit_rate": float((boost.max(axis=1) > 0).mean()),
            "test_recall@10_off": recall_at_k(target_ranks(base, targets), CHOICE_K),
            "test_recall@10_on": recall_at_k(target_ranks(on, targets), CHOICE_K)}


def _sweep_point(ranks: np.ndarray) -> dict[str, float]:
    return {"recall@10": recall_at_k(ranks, 10), "ndcg@10": ndcg_at_k(ranks, 10)}


def one_vector_search_gap(rec: MixupRecommender, text_vecs: np.ndarray, states: np.ndarray) -> float:
    """Max |q·x_i − (λ·cos(t_q,t_i) + (1−λ)·sim(u,e_i))| over the test queries: the stored
    λ-free vectors and the query-side weights really give the blend."""
    x = rec.index.vectors.astype(np.float64)
    t_i, e_i = x[:, :rec.text_dim], x[:, rec.text_dim:]
    q = rec.queries(text_vecs, states).astype(np.float64)
    gap = 0.0
    for r in range(min(len(q), 64)):
        ref = blended_score(text_vecs[r], states[r], t_i, e_i, rec.fusion) if np.any(text_vecs[r]) else None
        if ref is not None:
            gap = max(gap, float(np.abs(x @ q[r] - ref).max()))
    return gap


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


def event_slices(dataset: Dataset, events: NextItemEvents) -> dict[str, np.ndarray]:
    """Boolean masks over events: ``all``; ``repeat`` (the target is in the shopper's own
    history); ``explore`` (the rest); ``cold-start`` (an explore event whose target had no
    training interaction at all: only its text can find it)."""
    train, _, _ = dataset.parts()
    ids = dataset.items["item_id"].astype(str).to_numpy()
    trained = set(train["item_id"].astype(str))
    repeat = np.array([ids[t] in set(h) for t, h in zip(events.targets, events.histories, strict=True)], dtype=bool)
    unseen = np.array([ids[t] not in trained for t in events.targets], dtype=bool)
    return {"all": np.ones(len(events), bool), "repeat": repeat, "explore": ~repeat,
            "cold-start": unseen & ~repeat}


# systems compared with each mix-up: (label, rival system; {enc} is the encoder)
RIVALS = (("sasrec", "sasrec"), ("its text half", "title-only ({enc})"), ("its ID half", "id-only"),
          ("content", CONTENT), ("fast path", LAST_TITLE_MIXUP),
          ("without repeat term", "mix-up without repeat term ({enc})"),
          ("generated text alone", "mix-up, generated text alone ({enc})"))


def paired_comparisons(ranks: dict[str, np.ndarray], encoders: list[str], cfg: EvalConfig) -> list[dict[str, Any]]:
    """Each mix-up against its rivals on the same events: the paired bootstrap difference of
    Recall@10 and NDCG@10, with 95% CIs and p-values."""
    out = []
    for enc in encoders:
        mix = ranks[f"mix-up ({enc})"]
        for label, rival in RIVALS:
            other = ranks.get(rival.format(enc=enc))
            if other is None:
                continue
            row = {"system": f"mix-up ({enc})", "rival": rival.format(enc=enc), "label": label}
            for metric, per_event in (("recall@10", hits_at_k), ("ndcg@10", ndcg_gains)):
                row[metric] = paired_bootstrap(per_event(mix, 10), per_event(other, 10), seed=cfg.seed).as_dict()
            out.append(row)
    return out


def served_comparisons(ranks: dict[str, np.ndarray], encoder: str, cfg: EvalConfig) -> list[dict[str, Any]]:
    """The served system against the fast path, the content baseline and the LLM path alone."""
    out = []
    for label, rival in (("fast path", LAST_TITLE_MIXUP), ("content", CONTENT), ("LLM path", f"mix-up ({encoder})")):
        if SERVED not in ranks or rival not in ranks:
            continue
        row = {"system": SERVED, "rival": rival, "label": label}
        for metric, per_event in (("recall@10", hits_at_k), ("ndcg@10", ndcg_gains)):
            row[metric] = paired_bootstrap(per_event(ranks[SERVED], 10), per_event(ranks[rival], 10),
                                           seed=cfg.seed).as_dict()
        out.append(row)
    return out


def claim_check(systems: dict[str, dict[str, Any]], paired: list[dict[str, Any]],
                encoders: list[str]) -> dict[str, Any]:
    """The issue's target on the LLM events: mix-up ≥ 1.3 × the best system that is not a
    mix-up (SASRec, title-only, content) on Recall@10 and NDCG@10, the paired difference's
    95% CI above zero, and mix-up above both of its halves."""
    per = {}
    for enc in encoders:
        mix = systems[f"mix-up ({enc})"]
        rivals = ["sasrec", f"title-only ({enc})", CONTENT]
        best = {m: max(rivals, key=lambda s, m=m: systems[s][m]) for m in ("recall@10", "ndcg@10")}
        ratio = {m: mix[m] / systems[best[m]][m] if systems[best[m]][m] else math.inf for m in best}
        vs = {(p["rival"]): p for p in paired if p["system"] == f"mix-up ({enc})"}
        ci_above = {m: vs[best[m]][m]["ci"][0] > 0 for m in best}
        halves = all(mix["recall@10"] > systems[h]["recall@10"] for h in (f"title-only ({enc})", "id-only"))
        per[enc] = {"best_rival": best, "ratio": ratio, "ci_above_zero": ci_above, "beats_both_halves": halves,
                    "holds": all(r >= 1.3 for r in ratio.values()) and all(ci_above.values()) and halves}
    return {"statement": "mix-up ≥ 1.3 × the best of SASRec, title-only and content on Recall@10 and "
                         "NDCG@10 (paired 95% CI above zero), and above both of its halves",
            "per_encoder": per, "holds": any(v["holds"] for v in per.values())}


# -- provenance ----------------------------------------------------------------------------------------


def dataset_summary(dataset: Dataset, bundle: Bundle, events: NextItemEvents, llm_ev: NextItemEvents,
                    masks: dict[str, np.ndarray], sasrec: SASRec) -> dict[str, Any]:
    train, val, test = dataset.parts()
    m = dataset.manifest()
    known = sasrec.known_items()
    return {
        "name": dataset.name, "source": dataset.source, "data_hash": m["data_hash"],
        "protocol": dataset.protocol,
        "n_items": m["n_items"], "n_users": m["n_users"], "n_interactions": m["n_interactions"],
        "n_purchases": m["n_purchases"], "split": m["split"],
        "interactions_train_val_test": [len(train), len(val), len(test)],
        "test_purchases": int((test["kind"] == "purchase").sum()),
        "n_val_events": bundle.manifest["validation"]["n_events"], "n_test_events": len(events),
        "n_llm_test_events": len(llm_ev),
        **{f"n_llm_test_events_{s}": int(mask.sum()) for s, mask in masks.items() if s != "all"},
        "test_targets_unknown_to_sasrec": int((~known[events.targets]).sum()),
        "items_known_to_sasrec": int(known.sum()),
    }


def versions(dataset: Dataset, bundle: Bundle) -> dict[str, Any]:
    import torch
    import transformers

    parts = bundle.manifest["components"]
    return {"data_hash": dataset.data_hash(), "bundle": bundle.version, "sasrec": parts["sasrec"],
            "llm": parts["llm"], "llm_base": parts["llm_base"],
            "title_encoders": {name: {k: v for k, v in c.get("manifest", {}).items() if k != "history"}
                               for name, c in bundle.manifest["encoders"].items()},
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


def json_default(obj: Any) -> Any:
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
    plot_slices(result, out_dir / "slices.png")
    if result.costs.get("lora_loss_curve"):
        plot_lora(result, out_dir / "lora_convergence.png")
    (out_dir / "report.md").write_text(report_markdown(result))
    log.info("report written to %s", out_dir)
    return out_dir


def manifest(result: EvalResult) -> dict[str, Any]:
    return {"created_at": pd.Timestamp.now(tz="UTC").isoformat(), "versions": result.versions,
            "data_hash": result.dataset["data_hash"], "hyper_parameters": result.config,
            "mixup_reading": result.mixup_reading,
            "bundle": result.bundle,
            "choices": {enc: {"fusion": c["fusion"], "impute": c["impute"]} for enc, c in result.choices.items()},
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


def _split(split: dict[str, Any] | None) -> str:
    if not split or "val_start" not in split:
        return "leave-one-out: each shopper's last purchase is test, the one before validation"
    return f"temporal: validation from {split['val_start']}, test from {split['test_start']}"


def _p(p: float) -> str:
    return "< 0.001" if p < 1e-3 else f"{p:.3f}"  # 1,000 paired resamples


def _diff(d: dict[str, Any]) -> str:
    return f"{d['diff']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"


def _id_half(fusion: dict[str, Any]) -> str:
    return "cosine" if fusion["id_half"] == "cosine" else f"logit (σ = {fusion['sigma']:.3g})"


def _repeat(choice: dict[str, Any]) -> str:
    rep = choice.get("repeat")
    if not rep:
        return "not fitted"
    weights = ", ".join(f"{w:.3g}" for w in rep["weights"])
    state = "on" if rep["kept"] else "off (did not help)"
    split = ""
    if choice["fusion"].get("repeat_slots"):
        split = (f"; split: {choice['fusion']['repeat_slots']} places for own items, the rest explore at "
                 f"λ = {choice['fusion']['explore_lam']:g}")
    return (f"{state}: [{weights}] (val R@10 {rep['val_recall@10']:.4f} vs {rep['val_recall@10_without']:.4f})"
            f"{split}")


def _rebuy(threshold: float | None) -> str:
    if threshold is None:
        return "keep bought"
    return "drop bought" if threshold > 1 else f"drop unless cos ≥ {threshold:g}"


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
        ["split", _split(d["split"])],
        ["interactions train / val / test", " / ".join(f"{n:,}" for n in d["interactions_train_val_test"])],
        ["validation events (the bundle's fusion was chosen here)", d["n_val_events"]],
        ["protocol", d.get("protocol", "temporal")],
        ["test events (systems that need no LLM)", f"{d['n_test_events']:,} of {d['test_purchases']:,} test purchases"],
        ["LLM test events (seeded sample; every system in the paired table)", f"{d['n_llm_test_events']:,}"],
        ["LLM test events: repeat / explore / cold-start",
         f"{d['n_llm_test_events_repeat']} / {d['n_llm_test_events_explore']} / {d['n_llm_test_events_cold-start']}"],
        ["test targets without a SASRec embedding", d["test_targets_unknown_to_sasrec"]],
    ])
    lines += _served_section(result, metric_cols)
    lines += ["## Every system on the LLM test events (paired)", ""]
    lines += _table(["system", *metric_cols, "Recall@10 95% CI", "n"],
                    _metric_rows(result.slices["all"], metric_cols))
    lines += ["## Paired differences (mix-up − rival, same events)", ""]
    lines += _table(["mix-up", "rival", "ΔRecall@10 [95% CI]", "p", "ΔNDCG@10 [95% CI]", "p"],
                    [[p["system"], p["rival"], _diff(p["recall@10"]), _p(p["recall@10"]["p_value"]),
                      _diff(p["ndcg@10"]), _p(p["ndcg@10"]["p_value"])] for p in result.paired
                     if p["system"] != SERVED])
    lines += ["## Systems on every test event they can score", "",
              "The systems that need no LLM score every test purchase; the LLM systems score the "
              "sample above.", ""]
    lines += _table(["system", *metric_cols, "Recall@10 95% CI", "n"],
                    _metric_rows(result.systems, metric_cols))
    lt = result.last_title
    if lt.get("fast_fusion"):
        f = lt["fast_fusion"]
        lines += [f"The fast path's fusion was chosen on validation: λ = {f['lam']:g}, ID half {_id_half(f)}, "
                  f"{_rebuy(f['rebuy_threshold'])}, repeat term "
                  f"{'[' + ', '.join(f'{w:.3g}' for w in f['repeat']) + ']' if f['repeat'] else 'off'}"
                  f"{'; ' + str(f['repeat_slots']) + ' places for own items' if f.get('repeat_slots') else ''} "
                  f"(validation Recall@10 {_fmt(lt.get('validation', {}).get('val_recall@10'))}).", ""]
    lines += ["![systems](systems.png)", "", "## Slices (LLM test events)", "",
              "*repeat*: the target is in the shopper's own history; *explore*: the rest; "
              "*cold-start*: explore events whose target had no training interaction.", ""]
    for name, systems in result.slices.items():
        if name == "all":
            continue
        lines += [f"### {name}", ""]
        lines += _table(["system", "recall@10", "ndcg@10", "mrr", "Recall@10 95% CI", "n"],
                        _metric_rows(systems, ["recall@10", "ndcg@10", "mrr"]))
    lines += ["![slices](slices.png)", "", "## λ sweep on test", ""]
    for enc, rows in result.sweep.items():
        lines += [f"### {enc} (chosen λ = {result.choices[enc]['lambda']:.1f} on validation)", ""]
        val = result.choices[enc]["val_curve"]
        lines += _table(["λ", "test Recall@10", "test NDCG@10", "validation Recall@10"],
                        [[f"{r['lambda']:.1f}", r["recall@10"], r["ndcg@10"],
                          val.get(str(float(r["lambda"])))] for r in rows])
    lines += ["![lambda sweep](lambda_sweep.png)", ""] + _anchor_section(result)
    lines += ["## Choices made on validation", "",
              f"Bundle **{result.bundle.get('version')}**; the live path serves the "
              f"**{result.bundle.get('served_encoder')}** encoder (best validation objective).", ""]
    lines += _table(["encoder", "λ", "ID half (σ)", "re-buy rule", "repeat term", "imputation", "val R@10",
                     "val R@10 by ID half", "val R@10 by re-buy rule", "query memory test R@10 off / on",
                     "one-search max |diff|"],
                    [[enc, f"{ch['lambda']:.1f}", _id_half(ch["fusion"]), _rebuy(ch["fusion"]["rebuy_threshold"]),
                      _repeat(ch), "on" if ch["impute"] else "off", ch["val_recall@10"],
                      ", ".join(f"{k} {_fmt(v)}" for k, v in ch["options"]["id_half"].items()),
                      ", ".join(f"{_rebuy(None if k == 'None' else float(k))} {_fmt(v)}"
                                for k, v in ch["options"]["rebuy_threshold"].items()),
                      f"{_fmt(ch['query_memory']['test_recall@10_off'])} / "
                      f"{_fmt(ch['query_memory']['test_recall@10_on'])}",
                      f"{ch['one_vector_search_max_abs_diff']:.2e}"]
                     for enc, ch in result.choices.items()])
    lines += ["Every choice is the argmax of validation Recall@10 (validation MRR breaks ties) over "
              "imputation × ID half (cosine, or SASRec's logit u·e_i/σ) × re-buy rule × λ. The re-buy "
              "rule leaves bought items out of the answer unless the generated text names them "
              "(cosine to their title at least the threshold). The query memory is an ablation: the "
              "served path does not use it. The last column checks that the blend equals one inner "
              "product over the stored λ-free item vectors.", "",
              "## The paper's claim", "",
              f"*{result.claim['statement']}*:", ""]
    for enc, v in result.claim["per_encoder"].items():
        verdict = "**holds**" if v["holds"] else "**does not hold**"
        parts = [f"{m}: {v['ratio'][m]:.2f} × {v['best_rival'][m]} (paired CI "
                 f"{'above' if v['ci_above_zero'][m] else 'not above'} zero)" for m in v["ratio"]]
        halves = "above both halves" if v["beats_both_halves"] else "not above both halves"
        lines.append(f"- {enc}: {verdict}: {'; '.join(parts)}; {halves}.")
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


def _served_section(result: EvalResult, metric_cols: list[str]) -> list[str]:
    """What users get: the served system (gate + LLM path + fast path) against the fast path,
    the LLM path alone and the content baseline, on the same events."""
    sv = result.served
    if not sv:
        return []
    enc = result.bundle.get("served_encoder")
    names = [SERVED, LAST_TITLE_MIXUP, f"mix-up ({enc})", CONTENT]
    rows = {n: result.slices["all"][n] for n in names if n in result.slices["all"]}
    gate = sv.get("gate", {}).get("validation", {})
    state = ("closed: every event is answered by the fast path" if sv["gate_closed"] else
             f"{sv['gate_mode']}: it sent {100 * sv['llm_share']:.1f}% of the test events to the LLM path")
    lines = ["## The served system", "",
             f"The gate before the LLM path is **{state}** ({sv['llm_calls_per_1000']:g} LLM calls per 1,000 "
             "events). Fitted on the validation events: the LLM path's answer was the better one on "
             f"{gate.get('llm_better', '–')} of {gate.get('n_events', '–')}, the fast path's on "
             f"{gate.get('fast_better', '–')}; validation Recall@10 fast path {_fmt(gate.get('recall@10_fast'))}, "
             f"LLM path {_fmt(gate.get('recall@10_llm'))}, served {_fmt(gate.get('recall@10_served'))} "
             "(cross-fitted).", ""]
    lines += _table(["system", *metric_cols, "Recall@10 95% CI", "n"], _metric_rows(rows, metric_cols))
    served = [p for p in result.paired if p["system"] == SERVED]
    if served:
        lines += _table(["served − rival", "ΔRecall@10 [95% CI]", "p", "ΔNDCG@10 [95% CI]", "p"],
                        [[p["rival"], _diff(p["recall@10"]), _p(p["recall@10"]["p_value"]), _diff(p["ndcg@10"]),
                          _p(p["ndcg@10"]["p_value"])] for p in served])
    return lines


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


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_lora(result: EvalResult, path: Path) -> None:
    """Training loss (per step, smoothed) and validation-period loss against steps."""
    plt = pyplot()
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
    save_figure(fig, path)


def _anchor_section(result: EvalResult) -> list[str]:
    """The text query: the generated text against the last item's title, on test."""
    lines = ["## The text query: generated text and the last item's title", "",
             "The text half's query is unit((1−a)·t̂_generated + a·t̂_last item); *a* is chosen on "
             "validation (a = 0: the generated text alone). Test figures at the served λ:", ""]
    for enc, ch in result.choices.items():
        rows = ch.get("anchor_sweep") or []
        if not rows:
            continue
        val = (ch.get("anchor") or {}).get("val_curve", {})
        lines += [f"### {enc} (chosen a = {ch['fusion'].get('anchor', 0.0):.1f})", ""]
        lines += _table(["a", "mix-up test Recall@10", "mix-up test NDCG@10", "text half test Recall@10",
                         "validation Recall@10 (best λ)"],
                        [[f"{r['anchor']:.1f}", r["recall@10"], r["ndcg@10"], r["text_only_recall@10"],
                          val.get(str(float(r["anchor"])))] for r in rows])
    return lines


def plot_lambda_sweep(result: EvalResult, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for enc, rows in result.sweep.items():
        lams = [r["lambda"] for r in rows]
        for ax, key in zip(axes, ("recall@10", "ndcg@10"), strict=True):
            ax.plot(lams, [r[key] for r in rows], marker="o", label=enc)
            ax.axvline(result.choices[enc]["lambda"], ls=":", alpha=0.5)
    for ax, key in zip(axes, ("Recall@10", "NDCG@10"), strict=True):
        ax.axhline(result.slices["all"]["sasrec"][key.lower()], color="grey", ls="--", label="sasrec")
        ax.set(xlabel="λ (0 = ID only, 1 = title only)", ylabel=key, title=f"{key} vs λ (test)")
        ax.legend()
    save_figure(fig, path)


def _bars(ax: Any, systems: dict[str, dict[str, Any]], offset: float = 0.0, width: float = 0.8,
          label: str | None = None) -> None:
    names = list(systems)
    vals = np.array([systems[n]["recall@10"] for n in names])
    ci = np.array([systems[n]["recall@10_ci"] for n in names]).reshape(-1, 2)
    err = np.clip(np.vstack([vals - ci[:, 0], ci[:, 1] - vals]), 0, None)
    ax.bar(np.arange(len(names)) + offset, vals, width, yerr=err, capsize=3, label=label)
    # every bar says how many events it rests on: in its tick (one series) or its legend entry
    ticks = names if label else [f"{n} (n={systems[n]['n_events']:,})" for n in names]
    ax.set_xticks(np.arange(len(names)), ticks, rotation=30, ha="right")


def plot_systems(result: EvalResult, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _bars(ax, result.slices["all"])
    ax.set(ylabel="Recall@10", title=f"Recall@10 per system, 95% bootstrap CI "
                                     f"(n={result.dataset['n_llm_test_events']})")
    save_figure(fig, path)


def plot_slices(result: EvalResult, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [s for s in result.slices if s != "all"]
    width = 0.8 / max(len(names), 1)
    for j, s in enumerate(names):
        n = next(iter(result.slices[s].values()))["n_events"]
        _bars(ax, result.slices[s], offset=(j - (len(names) - 1) / 2) * width, width=width,
              label=f"{s} (n={n})")
    ax.set(ylabel="Recall@10", title="Recall@10 on the repeat, explore and cold-start slices")
    ax.legend()
    save_figure(fig, path)


def run_evaluation(dataset: Dataset, config: EvalConfig, out_dir: Path | str,
                   progress: bool = True) -> EvalResult:
    """:func:`evaluate` then :func:`write_report`: what the CLI and the benchmark call."""
    result = evaluate(dataset, config, out_dir, progress)
    write_report(result, out_dir)
    return result
