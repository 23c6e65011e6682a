"""What the generated text is worth as a query: answer sets compared through the bundle.

Each answer set (:mod:`models.answers`: the LoRA run's greedy answers, beam search, the
untrained base model's, and the last item's title as if it were an answer) is turned
into the text query and ranked by the bundle's served computation, on the events every set
covers (validation and test), three ways:

- ``text half, generated text``: title similarity to the answer alone (λ = 1, no anchor,
  no repeat term): how close the text lands to what was bought;
- ``mix-up, generated text alone``: the served fusion with the anchor at 0;
- ``mix-up (served)``: the served fusion as chosen on validation (anchor included).

Each is compared with the first answer set by a paired bootstrap.  ``--base-answers N``
first generates the untrained base model's answers here (the served generation code, on
this machine's CPU: about a second an answer) for a seeded N of the first set's test
events; ``--beam-answers N`` the LoRA run's answers by beam search, likewise (among the
events the untrained answers cover, when there are any).  Writes
``bench/results/query_quality_<name>.json``.

    python bench/query_quality.py --datasets amazon-clothing-loo --encoders minilm \\
        --answers lora=.stylestream/runs/amazon-clothing-loo/answers.json --base-answers 500
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_quality import build_parser, config_for, load_dataset, start  # noqa: E402

from models.answers import Answers, event_keys, generate_answers  # noqa: E402
from models.bundle import Bundle  # noqa: E402
from models.evaluate import llm_sample, mixup_ranks, subset, test_events  # noqa: E402
from models.metrics import (  # noqa: E402
    NextItemEvents,
    hits_at_k,
    mrr,
    ndcg_at_k,
    ndcg_gains,
    paired_bootstrap,
    recall_at_k,
)
from models.mixup import DEFAULT_LAMBDAS, Fusion  # noqa: E402
from models.recommender import History, MixupRecommender  # noqa: E402
from models.train import ANCHORS, CHOICE_K, TIE_BREAK, base_model_path, validation_events  # noqa: E402

LAST = "last title"
REFIT = "mix-up (anchor and λ chosen on its own validation answers)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--answers", action="append", default=[], metavar="NAME=PATH",
                        help="an answer set; the first is the reference of the paired differences")
    parser.add_argument("--base-answers", type=int, default=0, metavar="N",
                        help="generate the untrained base model's answers here for a seeded N of the "
                             "first set's test events, and compare them")
    parser.add_argument("--base-label", default="untrained",
                        help="the name of the --base-answers set (another --base-model: another name)")
    parser.add_argument("--beam-answers", type=int, default=0, metavar="N",
                        help="generate the LoRA run's (--lora-runs) answers by beam search here for "
                             "a seeded N of the first set's test events, and compare them")
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--sample-answers", type=int, default=0, metavar="N",
                        help="generate --samples sampled answers of the LoRA run here per event for a "
                             "seeded N of the first set's test events; their embeddings are averaged")
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per event (temperature 0.8)")
    parser.add_argument("--tuned-answers", type=int, default=0, metavar="N",
                        help="generate the LoRA run's (--lora-runs) greedy answers here for a seeded N of the "
                             "first set's test events (a run trained elsewhere, e.g. on another --base-model)")
    parser.add_argument("--tuned-label", default="tuned", help="the name of the --tuned-answers set")
    parser.add_argument("--retries", type=int, default=0, metavar="K",
                        help="--tuned-answers: a malformed answer is drawn again, K samples, the first "
                             "well-formed one kept (the paper's output validation)")
    parser.add_argument("--tuned-val", action="store_true",
                        help="the --tuned-answers set answers the validation events too, so that its "
                             "own text query's anchor and λ are chosen on them")
    args = parser.parse_args(argv)
    if not args.answers:
        parser.error("give at least one --answers NAME=PATH")
    sets = dict(_named(a, parser) for a in args.answers)
    for name in start(args):
        out = compare(name, args, sets)
        path = args.results / f"query_quality_{name}{'_' + args.tag if args.tag else ''}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"[bench] wrote {path}", flush=True)
    return 0


def _named(spec: str, parser: Any) -> tuple[str, Path]:
    name, _, path = spec.partition("=")
    if not path or not Path(path).is_file():
        parser.error(f"--answers {spec!r}: expected NAME=PATH of an answers file")
    return name, Path(path)


def compare(name: str, args: Any, sets: dict[str, Path]) -> dict[str, Any]:
    data = load_dataset(name, args)
    cfg = config_for(name, args)
    bundle = Bundle.load(cfg.bundle)
    bundle.require_data(data.data_hash())
    rec = MixupRecommender(bundle, engine=cfg.engine, device="cpu")
    answers = {k: Answers.load(p) for k, p in sets.items()}
    for k, a in answers.items():
        if a.data_hash != data.data_hash():
            raise SystemExit(f"--answers {k}: made on data {a.data_hash}, not {name} ({data.data_hash()})")
    items = data.items["item_id"].astype(str).tolist()
    parts = {"val": validation_events(data, cfg), "test": test_events(data, cfg)}
    costs: dict[str, Any] = {}
    for label, n, kind in ((args.base_label, args.base_answers, "untrained"),
                           (f"beam{args.beam_width}", args.beam_answers, "beam"),
                           (f"sampled{args.samples}", args.sample_answers, "sampled"),
                           (args.tuned_label, args.tuned_answers, "tuned")):
        if n:
            saved = args.results / f"answers_{label}_{name}.json"
            if saved.is_file():
                answers[label] = Answers.load(saved)
            else:
                answers[label] = made_here(data, cfg, parts, items, list(answers.values()), n, kind, args, costs)
                answers[label].save(saved)
            if kind == "tuned" and args.tuned_val and not answers[label].val:
                answers[label].val = validation_answers(data, cfg, parts["val"], costs, args.retries)
                answers[label].save(saved)
    answers[LAST] = last_titles(data, parts, items)
    out: dict[str, Any] = {"benchmark": "query_quality", "dataset": name, "data_hash": data.data_hash(),
                           "bundle": bundle.version, "fusion": rec.fusion.to_json(),
                           "answer_sets": {k: {"model_version": a.model_version, "costs": a.costs}
                                           for k, a in answers.items()},
                           "costs": costs}
    val_histories = [History.of(h, k) for h, k in zip(parts["val"].histories, parts["val"].kinds, strict=True)]
    val_states = rec.user_states(val_histories)
    refits = {k: f for k, a in answers.items()
              if (f := refit_fusion(rec, parts["val"], items, a.val, val_histories, val_states))}
    out["refit_fusions"] = {k: f.to_json() for k, f in refits.items()}
    for k, f in refits.items():
        print(f"  {k}: its validation answers choose anchor {f.anchor}, λ {f.lam}", flush=True)
    for part, events in parts.items():
        out[part] = score_part(rec, events, items, answers, part, refits)
        print(_table(part, out[part]), flush=True)
    return out


def refit_fusion(rec: MixupRecommender, events: NextItemEvents, items: list[str], table: dict[str, str],
                 histories: list[History], states: np.ndarray) -> Fusion | None:
    """The anchor and λ that an answer set's own validation answers choose (the bundle's ID
    half, σ and repeat term kept): the served fusion was chosen on the bundle's answers, and
    another model's text may want another share of the last title. None without answers
    for every validation event."""
    keys = event_keys(events, items)
    if not keys or not all(k in table for k in keys):
        return None
    vecs = query_vectors(rec, [table[k] for k in keys])
    best: tuple[float, Fusion] | None = None
    for a in ANCHORS:
        for lam in DEFAULT_LAMBDAS:
            fusion = rec.fusion.with_anchor(a).with_lambda(lam)
            ranks = mixup_ranks(rec, vecs, states, histories, events.targets, fusion)
            objective = recall_at_k(ranks, CHOICE_K) + TIE_BREAK * mrr(ranks)
            if best is None or objective > best[0]:
                best = (objective, fusion)
    return best[1] if best else None


def lora_generator(cfg: Any) -> Any:
    """The LoRA run's (``--lora-runs``) adapter on its base model, on this CPU."""
    from models.llm.generate import Generator

    return Generator(base_model_path(cfg), adapter=Path(cfg.lora_run) / "adapter", device="cpu")


def validation_answers(data: Any, cfg: Any, events: NextItemEvents, costs: dict[str, Any],
                       retries: int = 0) -> dict[str, str]:
    """The LoRA run's (``--lora-runs``) greedy answers for the validation events, on this CPU."""
    from tqdm import tqdm

    from models.llm.generate import GenerationTotals

    generator = lora_generator(cfg)
    totals, t0 = GenerationTotals(), time.perf_counter()
    with tqdm(total=len(events.targets), desc="validation answers") as bar:
        out = generate_answers(generator, data.items, events, cfg.max_history, cfg.max_new_tokens,
                               cfg.gen_batch_size, totals, bar, retries=retries)
    costs["tuned_val_answers"] = {"device": "cpu", "answers": totals.n, "seconds": round(time.perf_counter() - t0, 1),
                                  "malformed_rate": round(totals.malformed_rate, 4)}
    return out


def last_titles(data: Any, parts: dict[str, NextItemEvents], items: list[str]) -> Answers:
    """The last item's title as if it were the answer: the query the generated text must beat."""
    title = dict(zip(items, data.items["title"].fillna("").astype(str), strict=True))
    out = Answers("last-title", data.data_hash())
    for part, events in parts.items():
        setattr(out, part, {k: title.get(str(h[-1]), "") for k, h in
                            zip(event_keys(events, items), events.histories, strict=True) if len(h)})
    return out


def made_here(data: Any, cfg: Any, parts: dict[str, NextItemEvents], items: list[str], covering: list[Answers],
              n: int, kind: str, args: Any, costs: dict[str, Any]) -> Answers:
    """Answers generated on this machine's CPU by the served generation code, for a seeded
    ``n`` of the test events that every set in ``covering`` answers: the untrained base
    model's (greedy), or the LoRA run's, greedy or by beam search or sampling (a saved file is reused:
    they cost seconds an answer)."""
    from tqdm import tqdm

    from models.llm.generate import GenerationTotals, Generator

    test = llm_sample(parts["test"], cfg)
    keys = event_keys(test, items)
    covered = np.array([i for i, k in enumerate(keys) if all(k in a.test for a in covering)])
    rows = np.sort(np.random.default_rng(cfg.seed + 11).choice(covered, min(n, len(covered)), replace=False))
    options = {"beam": {"num_beams": args.beam_width}, "sampled": {"samples": args.samples},
               "tuned": {"retries": args.retries} if args.retries else {}}.get(kind, {})
    if kind == "untrained":
        base = base_model_path(cfg)
        generator, version = Generator(base, device="cpu"), f"untrained-{base.name}"
    elif kind == "tuned":
        generator = lora_generator(cfg)
        version = json.loads((Path(cfg.lora_run) / "manifest.json").read_text())["model_version"]
        version += f"+retry{args.retries}" if args.retries else ""
    else:
        generator = lora_generator(cfg)
        version = f"{covering[0].model_version}+{kind}{max(options.values())}"
    torch.manual_seed(cfg.seed)
    out = Answers(version, data.data_hash())
    totals, t0 = GenerationTotals(), time.perf_counter()
    events = subset(test, rows)
    with tqdm(total=len(events), desc=f"{kind} answers") as bar:
        out.test = generate_answers(generator, data.items, events, cfg.max_history, cfg.max_new_tokens,
                                    cfg.gen_batch_size, totals, bar, **options)
    out.costs = {"device": "cpu", "answers": totals.n, **options,
                 "seconds": round(time.perf_counter() - t0, 1), "malformed_rate": round(totals.malformed_rate, 4),
                 "retried": totals.retried, "recovered": totals.recovered}
    costs[f"{kind}_answers"] = out.costs
    return out


def score_part(rec: MixupRecommender, events: NextItemEvents, items: list[str], answers: dict[str, Answers],
               part: str, refits: dict[str, Fusion] | None = None) -> dict[str, Any]:
    """Per answer set and query, Recall@10 / NDCG@10 on the events every set covers; paired
    differences against the first set. A set in ``refits`` also scores the mix-up with the
    fusion its own validation answers chose."""
    keys = event_keys(events, items)
    tables = {k: t for k, a in answers.items() if (t := a.val if part == "val" else a.test)}
    rows = np.array([i for i, key in enumerate(keys) if all(key in t for t in tables.values())], dtype=int)
    if not len(rows):
        return {"n_events": 0}
    ev = subset(events, rows)
    histories = [History.of(h, k) for h, k in zip(ev.histories, ev.kinds, strict=True)]
    states = rec.user_states(histories)
    queries = {"text half, generated text": rec.fusion.with_lambda(1.0).with_anchor(0.0).with_repeat(()),
               "mix-up, generated text alone": rec.fusion.with_anchor(0.0),
               "mix-up (served)": rec.fusion}
    ranks: dict[str, dict[str, np.ndarray]] = {}
    out: dict[str, Any] = {"n_events": int(len(rows)), "systems": {}, "paired": {}, "distinct_answers": {}}
    for name, table in tables.items():
        texts = [table[keys[i]] for i in rows]
        out["distinct_answers"][name] = len(set(texts))
        vecs = query_vectors(rec, texts)
        own = {**queries, **({REFIT: refits[name]} if refits and name in refits else {})}
        ranks[name] = {q: mixup_ranks(rec, vecs, states, histories, ev.targets, f) for q, f in own.items()}
        out["systems"][name] = {q: {"recall@10": recall_at_k(r, 10), "ndcg@10": ndcg_at_k(r, 10)}
                                for q, r in ranks[name].items()}
    first = next(iter(tables))
    for name in list(tables)[1:]:
        out["paired"][f"{name} - {first}"] = _paired(ranks[name], ranks[first])
    if LAST in tables and REFIT in ranks[LAST]:  # the bar: the last title's mix-up, λ chosen on validation
        out["paired_vs_last_title"] = {f"{name} - {LAST}": _paired({REFIT: r[REFIT]}, ranks[LAST])
                                       for name, r in ranks.items() if name != LAST and REFIT in r}
    return out


def _paired(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Paired bootstrap differences for every query both sides scored."""
    return {q: {m: paired_bootstrap(f(ours[q], 10), f(theirs[q], 10)).as_dict()
                for m, f in (("recall@10", hits_at_k), ("ndcg@10", ndcg_gains))}
            for q in ours if q in theirs}


def query_vectors(rec: MixupRecommender, texts: list[str]) -> np.ndarray:
    """The text vector of each answer; of an event with several (sampled) answers, one per
    line, the normalised mean of theirs."""
    lines = [t.split("\n") for t in texts]
    flat = rec.text_vectors([x for ls in lines for x in ls])
    ends = np.cumsum([len(ls) for ls in lines])
    means = np.stack([flat[e - len(ls):e].mean(axis=0) for e, ls in zip(ends, lines, strict=True)])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def _table(part: str, res: dict[str, Any]) -> str:
    lines = [f"{part}: {res.get('n_events', 0)} events"]
    for name, systems in res.get("systems", {}).items():
        cells = "  ".join(f"{q} {m['recall@10']:.4f}/{m['ndcg@10']:.4f}" for q, m in systems.items())
        lines.append(f"  {name:10s} ({res['distinct_answers'][name]} distinct) {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
