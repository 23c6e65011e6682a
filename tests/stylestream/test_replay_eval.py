"""Replay evaluation on a small log through the whole live path (embedded broker, Milvus
Lite server, local Ray, tiny bundle, a gate that sends about half the events): the served
system's figures equal the offline computation's and eval's on the same events, and the
report is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from models.bundle import MANIFEST, Bundle
from models.evaluate import fast_path_ranks, llm_path_ranks, served_system
from models.metrics import epoch_seconds, recall_at_k
from models.recommender import FAST_PATH, LLM_PATH, History, MixupRecommender
from stylestream.config import Settings
from stylestream.devstack.processes import free_port
from stylestream.replay_eval import join_next_purchases, plan_replay, run_replay_evaluation

pytestmark = pytest.mark.slow


def test_plan_and_join_find_the_next_purchase(tiny_bundle):
    data = tiny_bundle.dataset
    plan = plan_replay(data, "test", users=5, seed=1)
    assert len(plan.users) == 5 and set(plan.period["user_id"]) <= set(plan.users)
    assert (plan.warm["ts"] < plan.period["ts"].min()).all()
    user = plan.users[0]
    mine = pd.concat([plan.warm, plan.period]).sort_values("ts", kind="stable")
    mine = mine[mine["user_id"] == user]
    buys = [i for i, kind in zip(mine.index, mine["kind"], strict=True)
            if kind == "purchase" and i in plan.period.index]
    before = mine.index[list(mine.index).index(buys[0]) - 1]
    rec = {"trigger_event_id": f"p-{before}", "path": "llm", "items": [{"item_id": "x"}], "latency_ms": 1.0,
           "produced_at": 0.0}
    joined = join_next_purchases([rec], data, plan, "p")
    row = joined.iloc[0]
    assert row["target"] == mine.loc[buys[0], "item_id"] and row["comparable"]
    assert row["history"] == mine.loc[:before, "item_id"].tolist()


def half_open_bundle(tiny_bundle, folder, users: int) -> Bundle:
    """The tiny bundle with its gate's threshold at the median probability of the events the
    replay will trigger on, so both paths answer."""
    shutil.copytree(tiny_bundle.folder, folder)
    plan = plan_replay(tiny_bundle.dataset, "test", users=users)
    every = pd.concat([plan.warm, plan.period]).sort_values("ts", kind="stable")
    rec = MixupRecommender(Bundle.load(folder))
    histories = [History.of(g["item_id"].iloc[:j + 1].tolist(), g["kind"].iloc[:j + 1].tolist())
                 for _, g in every.groupby("user_id") for j in range(len(g))]
    scores = rec.gate.probabilities(rec.gate_features(histories, rec.recommend_fast(histories, 10)))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["gate"]["threshold"] = float(np.median(scores))
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return Bundle.load(folder)


def test_replay_served_figures_equal_the_offline_computation_and_eval(tiny_bundle, tmp_path):
    bundle = half_open_bundle(tiny_bundle, tmp_path / "bundle", users=6)
    settings = Settings.from_env({"STYLESTREAM_HOME": str(tmp_path / "home")}, bundle=bundle.folder,
                                 dataset=tiny_bundle.data_dir, serve_port=free_port(),
                                 ray_dashboard_port=free_port(), serving_timeout_ms=120_000,
                                 serving_max_in_flight=64, gen_max_replicas=1, gate="bundle")
    out = tmp_path / "report"
    result = run_replay_evaluation(settings, tiny_bundle.dataset, tiny_bundle.data_dir, bundle.folder, out,
                                   users=6, trigger="every-event")
    assert set(result.counts["by_path"]) == {LLM_PATH, FAST_PATH}, result.counts
    assert result.counts["by_gate"]["sent"] == result.counts["by_path"][LLM_PATH], "no fallback: long deadline"
    assert result.counts["by_gate"]["declined"] == result.counts["by_path"][FAST_PATH]
    cmp = result.comparison
    assert cmp["n"] >= 5
    k = result.config["k"]
    assert cmp["identical_top_k"] == 1.0 and cmp["identical_path"] == 1.0, cmp["differences"]
    for m in ("recall", "ndcg", "mrr"):
        assert cmp["live"][f"{m}@{k}"] == pytest.approx(cmp["offline"][f"{m}@{k}"])

    # eval's served system (whole-catalog ranks: the gate's choice of the LLM path's or the fast
    # path's) measures what the replay measured on the same events
    comparable = _comparable_histories(tiny_bundle.dataset, out)
    assert len(comparable) == cmp["n"]
    rec = MixupRecommender(bundle)
    histories = [h for h, _ in comparable]
    index = {item: i for i, item in enumerate(rec.item_ids)}
    targets = np.array([index[t] for _, t in comparable])
    states = rec.user_states(histories)
    texts = rec.generate(histories)
    llm = llm_path_ranks(rec, rec.text_vectors(texts), states, histories, targets)
    fast = fast_path_ranks(rec, histories, states, targets)
    served = served_system(rec, histories, llm, fast)["ranks"]
    assert recall_at_k(served, k) == pytest.approx(cmp["live"][f"recall@{k}"])

    saved = json.loads((out / "replay.json").read_text())
    assert saved["comparison"]["n"] == cmp["n"]
    report = (out / "README.md").read_text()
    assert report.startswith("# Replay evaluation") and "served" in report
    assert (out / "latency.png").stat().st_size > 1000 and (out / "metrics_by_path.png").is_file()


def _comparable_histories(data, out) -> list[tuple[History, str]]:
    """(history, target) of each recommendation made just before a purchase, from the report."""
    rows = pd.read_json(out / "recommendations.jsonl", lines=True)
    rows = rows[rows["comparable"]]
    plan_events = data.interactions.sort_values("ts", kind="stable")
    out_rows: list[tuple[History, str]] = []
    for _, row in rows.iterrows():
        idx = int(str(row["trigger_event_id"]).rsplit("-", 1)[1])
        user = plan_events.loc[idx, "user_id"]
        mine = plan_events[plan_events["user_id"] == user]
        upto = mine.loc[:idx]
        out_rows.append((History.of(upto["item_id"].astype(str).tolist(), upto["kind"].astype(str).tolist(),
                                    epoch_seconds(upto["ts"])), row["target"]))
    return out_rows
