"""Replay evaluation on a small log through the whole live path (embedded broker, Milvus
Lite server, local Ray, tiny bundle): the `llm`-path figures equal the offline
computation's on the same events, and the report is written."""

from __future__ import annotations

import json

import pandas as pd
import pytest

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


def test_replay_llm_figures_equal_the_offline_computation(tiny_bundle, tmp_path):
    settings = Settings.from_env({"STYLESTREAM_HOME": str(tmp_path / "home")}, bundle=tiny_bundle.folder,
                                 dataset=tiny_bundle.data_dir, serve_port=free_port(),
                                 ray_dashboard_port=free_port(), serving_timeout_ms=120_000,
                                 serving_max_in_flight=64, gen_max_replicas=1)
    out = tmp_path / "report"
    result = run_replay_evaluation(settings, tiny_bundle.dataset, tiny_bundle.data_dir, tiny_bundle.folder, out,
                                   users=6, trigger="every-event")
    assert result.counts["by_path"] == {"llm": result.counts["recommendations"]}, "no fallback with a long deadline"
    cmp = result.comparison
    assert cmp["n"] >= 5
    k = result.config["k"]
    assert cmp["identical_top_k"] == 1.0, cmp["differences"]
    for m in ("recall", "ndcg", "mrr"):
        assert cmp["live"][f"{m}@{k}"] == pytest.approx(cmp["offline"][f"{m}@{k}"])
    saved = json.loads((out / "replay.json").read_text())
    assert saved["comparison"]["n"] == cmp["n"]
    assert (out / "README.md").read_text().startswith("# Replay evaluation")
    assert (out / "latency.png").stat().st_size > 1000 and (out / "metrics_by_path.png").is_file()
