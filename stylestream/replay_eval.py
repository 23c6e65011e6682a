"""Replay evaluation: the historic log through the live path, measured like ``eval``.

``stylestream replay --evaluate`` starts the whole stack (broker, Milvus, Ray Serve,
a stream worker), sends a sample of shoppers' earlier events as warm-up (they fill the
sequence table and trigger nothing), then their events of the evaluated period in time
order, at ``speed`` × real time or as fast as the system takes them. It listens on
``recs.out`` and joins each recommendation with what the shopper bought next.

The report gives Recall@K, NDCG@K and MRR@K of the served system (every answer, whichever
path gave it) and by answering path, the gate's decisions, catalog coverage, the latency
distribution, throughput and the fallback share. For the comparison with the offline
evaluation it takes the recommendations made just before a purchase (the next event of the
shopper is that purchase): their history is exactly the history ``eval`` gives that
purchase, so the in-process served system (:meth:`models.recommender.MixupRecommender.serve`:
the fast path, the gate, the LLM path for what it sends) is run on the same histories and
the two are compared answer by answer. With the ``live`` trigger a recommendation is made
only when the trigger fires, so fewer purchases are preceded by one; ``every-event`` (the
default here) recommends at every event, for the comparison.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from models.bundle import Bundle
from models.data import Dataset
from models.evaluate import json_default, pyplot, save_figure
from models.metrics import bootstrap_ci, epoch_seconds, mrr, ndcg_at_k, recall_at_k
from models.recommender import LLM_PATH, History, MixupRecommender
from stylestream.config import Settings
from stylestream.records import RECS

PERIODS = ("train", "val", "test")


@dataclass
class ReplayPlan:
    """The shoppers replayed, their warm-up history and their events of the evaluated period."""

    users: list[str]
    warm: pd.DataFrame
    period: pd.DataFrame
    period_start_s: float
    longest_history: int


def plan_replay(data: Dataset, period: str, users: int, seed: int = 0) -> ReplayPlan:
    """``users`` shoppers (seeded sample; 0 = all) who buy in ``period``, with their earlier
    events as warm-up."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    inter = data.interactions.sort_values("ts", kind="stable")
    part = dict(zip(PERIODS, data.parts(), strict=True))[period]
    start = part["ts"].min()
    candidates = sorted(part.loc[part["kind"] == "purchase", "user_id"].unique())
    if users and len(candidates) > users:
        candidates = sorted(np.random.default_rng(seed).choice(candidates, users, replace=False).tolist())
    chosen = set(candidates)
    mine = inter[inter["user_id"].isin(chosen)]
    period_rows = mine[mine.index.isin(part.index)]
    warm = mine[~mine.index.isin(part.index) & (mine["ts"] < start)]
    longest = int(mine.groupby("user_id").size().max()) if len(mine) else 0
    return ReplayPlan(candidates, warm, period_rows, pd.Timestamp(start).timestamp(), longest)


@dataclass
class ReplayResult:
    config: dict[str, Any]
    counts: dict[str, Any]
    by_path: dict[str, dict[str, Any]]
    comparison: dict[str, Any]
    latency_ms: dict[str, Any]
    throughput: dict[str, float]
    coverage: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def join_next_purchases(recs: list[dict[str, Any]], data: Dataset, plan: ReplayPlan, prefix: str) -> pd.DataFrame:
    """One row per recommendation: its trigger, what the shopper bought next in the period
    (None if nothing), whether that purchase was the very next event, and the history."""
    inter = pd.concat([plan.warm, plan.period]).sort_values("ts", kind="stable")
    rows = []
    per_user = {u: g for u, g in inter.groupby("user_id", sort=False)}
    position = {}
    for user, g in per_user.items():
        for j, idx in enumerate(g.index):
            position[f"{prefix}-{idx}"] = (user, j)
    in_period = set(plan.period.index)
    for rec in recs:
        where = position.get(rec["trigger_event_id"])
        if where is None:
            continue
        user, j = where
        g = per_user[user]
        later = g.iloc[j + 1:]
        buys = later[(later["kind"] == "purchase") & later.index.isin(in_period)]
        target = str(buys["item_id"].iloc[0]) if len(buys) else None
        next_is_buy = len(later) > 0 and later["kind"].iloc[0] == "purchase" and later.index[0] in in_period
        rows.append({"user_id": user, "trigger_event_id": rec["trigger_event_id"], "path": rec["path"],
                     "gate": rec.get("gate"),
                     "items": [i["item_id"] for i in rec["items"]], "generated_text": rec.get("generated_text", ""),
                     "latency_ms": rec["latency_ms"], "produced_at": rec["produced_at"], "target": target,
                     "comparable": bool(next_is_buy),
                     "history": g["item_id"].iloc[:j + 1].astype(str).tolist(),
                     "kinds": g["kind"].iloc[:j + 1].astype(str).tolist(),
                     "times": epoch_seconds(g["ts"].iloc[:j + 1])})
    return pd.DataFrame(rows)


def ranks_of(lists: list[list[str]], targets: list[str]) -> np.ndarray:
    """0-based rank of each target in its answer (as :func:`models.metrics.target_ranks`
    counts); inf when absent (beyond K)."""
    return np.array([lst.index(t) if t in lst else np.inf for lst, t in zip(lists, targets, strict=True)])


def metrics(lists: list[list[str]], targets: list[str], k: int) -> dict[str, Any]:
    r = ranks_of(lists, targets)
    return {f"recall@{k}": recall_at_k(r, k), f"ndcg@{k}": ndcg_at_k(r, k), f"mrr@{k}": mrr(r), "n": int(len(r))}


def offline_answers(bundle: Bundle, joined: pd.DataFrame, k: int, gate: str = "bundle"
                    ) -> tuple[list[list[str]], list[str], list[str]]:
    """What ``eval``'s computation answers for the same histories (in process, same bundle,
    same gate): items, generated texts and answering paths."""
    rec = MixupRecommender(bundle, engine="onnx", device="cpu", gate=gate)
    histories = [History.of(h, kd, t) for h, kd, t in zip(joined["history"], joined["kinds"], joined["times"],
                                                          strict=True)]
    ranked = rec.serve(histories, k=k) if histories else []
    return ([[h.item_id for h in r.items] for r in ranked], [r.generated_text for r in ranked],
            [r.path for r in ranked])


def compare_with_offline(bundle: Bundle, joined: pd.DataFrame, k: int, gate: str = "bundle") -> dict[str, Any]:
    """The served system's live answers made just before a purchase against the in-process
    served system's (fast path, gate, LLM path) for the same histories, event by event.
    Live answers of the fast path that stood in for a late or failed LLM answer (the gate
    sent them) are counted apart: the offline computation has no deadline."""
    same = joined[joined["comparable"]].reset_index(drop=True)
    if same.empty:
        return {"n": 0}
    offline, texts, paths = offline_answers(bundle, same, k, gate)
    live = same["items"].tolist()
    targets = same["target"].tolist()
    stood_in = [lp != LLM_PATH and g == "sent" for lp, g in zip(same["path"], same["gate"], strict=True)]
    return {"n": int(len(same)), "live": metrics(live, targets, k), "offline": metrics(offline, targets, k),
            "identical_top_k": float(np.mean([a == b for a, b in zip(live, offline, strict=True)])),
            "identical_path": float(np.mean([a == b for a, b in zip(same["path"], paths, strict=True)])),
            "identical_text": float(np.mean([a == b for a, b in zip(same["generated_text"], texts, strict=True)])),
            "live_by_path": same["path"].value_counts().to_dict(),
            "offline_by_path": pd.Series(paths).value_counts().to_dict(),
            "fast_path_stood_in": int(sum(stood_in)),
            "differences": [{"user_id": u, "live": a, "offline": b}
                            for u, a, b in zip(same["user_id"], live, offline, strict=True) if a != b][:5]}


def summarise(joined: pd.DataFrame, recs: list[dict[str, Any]], n_items: int, k: int, seconds: float,
              events: int) -> dict[str, Any]:
    scored = joined[joined["target"].notna()]
    by_path = {p: metrics(g["items"].tolist(), g["target"].tolist(), k) for p, g in scored.groupby("path")}
    by_path["served (all paths)"] = metrics(scored["items"].tolist(), scored["target"].tolist(), k)
    frame = pd.DataFrame({"path": [r["path"] for r in recs], "ms": [r["latency_ms"] for r in recs]})
    paths = frame["path"].value_counts().to_dict()
    recommended = {i for r in recs for i in (x["item_id"] for x in r["items"])}

    def pct(ms: pd.Series) -> dict[str, float]:
        return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))} if len(ms) else {}

    return {
        "by_path": by_path,
        "latency_ms": {**pct(frame["ms"]), "by_path": {p: pct(g["ms"]) for p, g in frame.groupby("path")}},
        "throughput": {"events_per_s": round(events / max(seconds, 1e-9), 2),
                       "recs_per_s": round(len(recs) / max(seconds, 1e-9), 2), "seconds": round(seconds, 1)},
        "coverage": {"items_recommended": len(recommended), "catalog": n_items,
                     "share": round(len(recommended) / max(n_items, 1), 4)},
        "counts": {"recommendations": len(recs), "by_path": paths,
                   "by_gate": pd.Series([r.get("gate") or "none" for r in recs]).value_counts().to_dict()
                   if recs else {},
                   "fallback_share": round(1 - paths.get("llm", 0) / max(len(recs), 1), 4),
                   "scored": int(len(scored)), "without_next_purchase": int(joined["target"].isna().sum()),
                   "comparable": int(joined["comparable"].sum())},
    }


def run_replay_evaluation(settings: Settings, data: Dataset, dataset_dir: Path, bundle_dir: Path, out: Path,
                          period: str = "test",
                          speed: float = 0.0, users: int = 40, trigger: str = "every-event", seed: int = 0,
                          max_pending: int = 4, console: Console | None = None) -> ReplayResult:
    """Start the stack, replay, join, compare with the offline computation, write the report.

    With ``speed`` 0 the replay goes as fast as the stack takes it: the next event waits
    while ``max_pending`` recommendations are open (a paced replay does not wait, and the
    fallback answers what the LLM path cannot)."""
    from streams.replay import replay
    from stylestream.devstack import DevStack
    from stylestream.devstack.processes import wait_until
    from stylestream.topic_watch import TopicWatch

    console = console or Console()
    bundle = Bundle.load(bundle_dir)
    bundle.require_data(data.data_hash())
    plan = plan_replay(data, period, users, seed)
    if plan.period.empty:
        raise ValueError(f"no shopper buys in the {period} period after some history: nothing to replay")
    # The worker keeps every replayed event of a shopper, so its histories are eval's histories.
    run = Settings.from_env(
        home=settings.home / "replay-run", dataset=dataset_dir,
        bundle=bundle.folder, trigger_mode=trigger, trigger_from_ts=plan.period_start_s,
        sequence_length=max(settings.sequence_length, plan.longest_history), trigger_idle_seconds=0.0,
        serving_timeout_ms=settings.serving_timeout_ms, gate=settings.gate, fast_path=settings.fast_path,
        # Back-pressure keeps about max_pending open; room above it, so the gate's lag is not an overload.
        serving_max_in_flight=max(settings.serving_max_in_flight, 2 * max_pending if speed <= 0 else 0),
        gen_max_replicas=settings.gen_max_replicas, serve_port=settings.serve_port,
        ray_dashboard_port=settings.ray_dashboard_port, milvus_uri=settings.milvus_uri,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers)
    shutil.rmtree(run.home, ignore_errors=True)  # a fresh broker: the replay's ids and counts start at zero
    prefix = f"replay{data.data_hash()[:6]}"
    with DevStack(run) as stack:
        with console.status("starting the broker, Milvus, Ray Serve and a stream worker"):
            bootstrap = stack.start_broker()
            stack.start_milvus()
            stack.start_serving()
            worker = stack.start_worker()
        watch = TopicWatch(bootstrap, RECS)
        console.log(f"warm-up: {len(plan.warm):,} earlier events of {len(plan.users)} shoppers (no triggers)")
        replay(plan.warm, bootstrap, prefix)
        wait_until(lambda: worker.stats()["processed"] + worker.stats()["duplicates"] >= len(plan.warm), 600,
                   "the stream worker to take the warm-up events", worker.proc, worker.log_path)
        console.log(f"replaying the {period} period: {len(plan.period):,} events "
                    + (f"at {speed:g}× real time" if speed > 0 else "as fast as the stack takes them")
                    + f", trigger {trigger}")
        started = time.monotonic()
        def take_breath() -> None:
            while worker.stats()["recs_pending"] >= max_pending:
                time.sleep(0.02)

        sender = threading.Thread(target=replay, args=(plan.period, bootstrap, prefix), kwargs={
            "speed": speed, "before_send": None if speed > 0 else take_breath})
        sender.start()
        total = len(plan.warm) + len(plan.period)
        with console.status("waiting for every recommendation") as status:
            while True:
                stats = worker.stats()
                status.update(f"{stats['processed']:,}/{total:,} events, {len(watch.records):,} recommendations, "
                              f"{stats['recs_pending']} in flight")
                if (not sender.is_alive() and stats["processed"] + stats["duplicates"] >= total
                        and stats["recs_pending"] == 0 and len(watch.records) >= stats["recs_published"]):
                    break
                time.sleep(0.25)
        seconds = time.monotonic() - started
        serving = worker.stats().get("serving") or {}
        recs = list(watch.records)
        watch.close()
    joined = join_next_purchases(recs, data, plan, prefix)
    k = run.recs_k
    summary = summarise(joined, recs, len(bundle.items()), k, seconds, len(plan.period))
    comparison = compare_with_offline(bundle, joined, k, run.gate)
    result = ReplayResult(
        config={"dataset": data.name, "period": period, "users": len(plan.users), "speed": speed, "trigger": trigger,
                "gate": run.gate,
                "max_pending": max_pending if speed <= 0 else None, "k": k, "bundle": bundle.version,
                "sequence_length": run.sequence_length, "serving_timeout_ms": run.serving_timeout_ms,
                "warm_up_events": len(plan.warm), "period_events": len(plan.period)},
        counts={**summary["counts"], "fallback_reasons": serving.get("fallback", {})}, by_path=summary["by_path"],
        comparison=comparison,
        latency_ms=summary["latency_ms"], throughput=summary["throughput"], coverage=summary["coverage"],
        notes=notes_for(comparison, trigger))
    write_replay_report(result, joined, recs, out)
    return result


def notes_for(comparison: dict[str, Any], trigger: str) -> list[str]:
    notes = []
    if trigger == "live":
        notes.append("Trigger `live`: a recommendation is made when the trigger fires (purchases, every k-th click, "
                     "idle shoppers), not before every purchase, so fewer purchases are scored than `eval` scores; "
                     "use `--trigger every-event` for the like-for-like comparison.")
    if comparison.get("n"):
        same = comparison["identical_top_k"]
        if same == 1.0:
            notes.append("Every live answer made just before a purchase equals the offline served system's "
                         "answer for the same history: the figures agree exactly.")
        else:
            notes.append(f"{100 * (1 - same):.1f}% of live answers differ from the offline served system's "
                         f"(the same path in {100 * comparison['identical_path']:.1f}%, generated text identical in "
                         f"{100 * comparison['identical_text']:.1f}%): the fast path stands in for LLM answers that "
                         "miss the deadline; the Generator batches concurrent prompts with left padding, and a "
                         "padded batch's float arithmetic can turn a greedy choice; ties in Milvus's order can swap "
                         "equal scores.")
    else:
        notes.append("No live answer was made just before a purchase: no like-for-like comparison possible "
                     "(the trigger never fired there).")
    return notes


def write_replay_report(result: ReplayResult, joined: pd.DataFrame, recs: list[dict[str, Any]], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps(asdict(result), indent=2, default=json_default))
    joined.drop(columns=["history", "kinds", "times"]).to_json(out / "recommendations.jsonl", orient="records",
                                                             lines=True)
    plot_latency(recs, out / "latency.png")
    plot_paths(result, out / "metrics_by_path.png")
    (out / "README.md").write_text(replay_markdown(result))
    return out


def replay_markdown(r: ReplayResult) -> str:
    k = r.config["k"]
    c = r.config
    pace = f"{c['speed']:g}× real time" if c["speed"] else "flat out"
    lines = [f"# Replay evaluation: {c['dataset']}, {c['period']} period", "",
             f"Bundle `{c['bundle']}`; {c['users']} shoppers, {c['warm_up_events']:,} warm-up events, "
             f"{c['period_events']:,} replayed events ({pace}), "
             f"trigger `{c['trigger']}`, deadline {c['serving_timeout_ms']:,.0f} ms.", "",
             "## Accuracy: the served system and each answering path", "",
             f"| answers | Recall@{k} | NDCG@{k} | MRR@{k} | scored |", "|---|---|---|---|---|"]
    for path, m in r.by_path.items():
        lines.append(f"| {path} | {m[f'recall@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | {m[f'mrr@{k}']:.4f} | {m['n']:,} |")
    gates = ", ".join(f"{g} {n:,}" for g, n in r.counts.get("by_gate", {}).items())
    lines += ["", f"The gate (`{c.get('gate', 'bundle')}`): {gates}."]
    cmp = r.comparison
    lines += ["", "## Against the offline evaluation (same events, same bundle, same gate)", ""]
    if cmp.get("n"):
        lines += [f"| served system | Recall@{k} | NDCG@{k} | MRR@{k} | events |", "|---|---|---|---|---|"]
        for name in ("live", "offline"):
            m = cmp[name]
            lines.append(f"| {name} | {m[f'recall@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | {m[f'mrr@{k}']:.4f} | "
                         f"{m['n']:,} |")
        lines += ["", f"Identical top {k}: {100 * cmp['identical_top_k']:.1f}% of answers; the same answering path: "
                      f"{100 * cmp['identical_path']:.1f}%; identical generated text: "
                      f"{100 * cmp['identical_text']:.1f}%; the fast path stood in for a late or failed LLM answer "
                      f"{cmp['fast_path_stood_in']:,} times."]
    paths = ", ".join(f"{p} {n:,}" for p, n in r.counts["by_path"].items())
    lat = r.latency_ms
    lines += ["", *[f"- {n}" for n in r.notes], "", "## Live figures", "",
              f"- recommendations: {r.counts['recommendations']:,} ({paths}); "
              f"fallback share {100 * r.counts['fallback_share']:.1f}% (reasons: "
              + (", ".join(f"{k} {v:,}" for k, v in r.counts.get("fallback_reasons", {}).items()) or "none") + ")",
              f"- latency event → recs.out: p50 {lat.get('p50', float('nan')):,.0f} ms, "
              f"p99 {lat.get('p99', float('nan')):,.0f} ms (latency.png); by path: "
              + "; ".join(f"{p} p50 {v['p50']:,.0f} / p99 {v['p99']:,.0f} ms" for p, v in lat["by_path"].items()),
              f"- throughput: {r.throughput['events_per_s']:,} events/s, {r.throughput['recs_per_s']:,} "
              f"recommendations/s over {r.throughput['seconds']} s",
              f"- catalog coverage: {r.coverage['items_recommended']:,} of {r.coverage['catalog']:,} items "
              f"({100 * r.coverage['share']:.1f}%)",
              f"- scored: {r.counts['scored']:,} recommendations followed by a purchase; "
              f"{r.counts['without_next_purchase']:,} without one", "",
              "![latency](latency.png)", "", "![metrics by path](metrics_by_path.png)", ""]
    return "\n".join(lines)


def plot_latency(recs: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in sorted({r["path"] for r in recs}):
        lat = [max(r["latency_ms"], 0.1) for r in recs if r["path"] == name]
        ax.hist(lat, bins=np.logspace(-1, 5, 61), alpha=0.6, label=f"{name} ({len(lat):,})")
    ax.set_xscale("log")
    ax.set_xlabel("event → recs.out latency (ms)")
    ax.set_ylabel("recommendations")
    ax.legend()
    save_figure(fig, path)


def plot_paths(result: ReplayResult, path: Path) -> None:
    """Recall@K of each group of answers, with its 95% bootstrap interval and the number of
    events it rests on (a bar resting on one event must not look like a finding)."""
    plt = pyplot()
    k = result.config["k"]
    groups = {n: m for n, m in result.by_path.items()}
    if result.comparison.get("n"):
        groups["served before a purchase (live)"] = result.comparison["live"]
        groups["same events (offline)"] = result.comparison["offline"]
    names = [f"{n} (n={m['n']:,})" for n, m in groups.items()]
    values = np.array([m[f"recall@{k}"] for m in groups.values()])
    ci = np.array([_recall_ci(m[f"recall@{k}"], m["n"]) for m in groups.values()]).reshape(-1, 2)
    err = np.clip(np.vstack([values - ci[:, 0], ci[:, 1] - values]), 0, None)
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    ax.barh(names, values, xerr=err, capsize=3, color="#4c72b0")
    ax.set_xlabel(f"Recall@{k} (95% bootstrap CI)")
    ax.set_xlim(0, 1)
    save_figure(fig, path)


def _recall_ci(recall: float, n: int) -> tuple[float, float]:
    """The bootstrap interval of a recall over ``n`` events (the hits' order does not matter)."""
    if n == 0:
        return (0.0, 0.0)
    hits = np.zeros(n)
    hits[:round(recall * n)] = 1.0
    return bootstrap_ci(hits)
