"""The offline evaluation end to end on a small synthetic shop with a tiny random Llama,
the slice logic on a hand-made frame, and the ``stylestream eval`` command's edges."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from harness import tiny_llama

from models.data.dataset import Dataset
from models.data.split import TemporalSplit
from models.data.synth import synthesize
from models.evaluate import (
    CONTENT,
    LAST_TITLE_MIXUP,
    SERVED,
    EvalConfig,
    EvalResult,
    event_slices,
    run_evaluation,
    write_report,
)
from models.metrics import NextItemEvents
from models.sasrec import SASRecConfig
from models.train import tune_llm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_evaluate_end_to_end(tmp_path: Path, one_thread: None) -> None:
    data = synthesize(users=120, items=200, seed=0)
    base = tiny_llama(tmp_path / "llama", data.items["title"].astype(str).tolist())
    cfg = EvalConfig(base_model=base, title_encoders=("lstm",), lstm_steps=60, lora_steps=2,
                     lora_batch_size=2, lora_eval_every=1, lora_max_length=192, max_history=3, max_val_events=24,
                     max_test_events=None, llm_test_events=48, max_new_tokens=6, gen_batch_size=24,
                     sasrec=SASRecConfig(dim=32, epochs=15, patience=3))
    out = tmp_path / "report"
    result = run_evaluation(data, cfg, out, progress=False)

    for name in ("report.md", "metrics.json", "manifest.json", "lambda_sweep.png", "systems.png",
                 "slices.png", "lora_convergence.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    generations = json.loads((out / "generations.json").read_text())
    assert len(generations["test"]) == 48 and {"generated", "bought"} <= set(generations["test"][0])
    metrics = json.loads((out / "metrics.json").read_text())
    expected = {"popularity", "co-occurrence", "sasrec", "id-only", "title-only (lstm)",
                "mix-up (lstm)", CONTENT, LAST_TITLE_MIXUP, SERVED}
    assert expected <= set(metrics["systems"]) <= expected | {"mix-up without repeat term (lstm)",
                                                              "mix-up, generated text alone (lstm)"}
    assert set(metrics["slices"]) == {"all", "repeat", "explore", "cold-start"}
    for slice_systems in [metrics["systems"], *metrics["slices"].values()]:
        for m in slice_systems.values():
            for key, value in m.items():
                if key.startswith(("recall@", "ndcg@", "mrr")) and not key.endswith("_ci"):
                    assert 0.0 <= value <= 1.0, (key, value)
    n_all = result.dataset["n_test_events"]
    assert n_all > 48 and result.dataset["n_llm_test_events"] == 48
    for name, m in metrics["systems"].items():  # the LLM systems on the sample, the others on all
        assert m["n_events"] == (48 if "(lstm)" in name or name == SERVED else n_all), name
    assert all(m["n_events"] == 48 for m in metrics["slices"]["all"].values())  # paired: same events
    served = result.served  # what users get: the gate's choice between the LLM path and the fast path
    assert served["n_events"] == 48 and 0.0 <= served["llm_share"] <= 1.0
    assert served["llm_calls_per_1000"] == pytest.approx(1000 * served["llm_share"], abs=0.1)
    by_rival = {p["rival"]: p for p in metrics["paired"] if p["system"] == SERVED}
    assert set(by_rival) == {LAST_TITLE_MIXUP, CONTENT, "mix-up (lstm)"}
    if served["llm_share"] == 0.0:  # the gate declined every event: the fast path answered them all
        assert by_rival[LAST_TITLE_MIXUP]["recall@10"]["diff"] == 0.0
    if served["llm_share"] == 1.0:
        assert by_rival["mix-up (lstm)"]["recall@10"]["diff"] == 0.0
    assert "## The served system" in (out / "report.md").read_text()
    rivals = {p["rival"] for p in metrics["paired"]}
    assert {"sasrec", "title-only (lstm)", "id-only", CONTENT, LAST_TITLE_MIXUP} <= rivals
    for p in metrics["paired"]:
        assert p["recall@10"]["ci"][0] <= p["recall@10"]["diff"] <= p["recall@10"]["ci"][1]
        assert 0.0 <= p["ndcg@10"]["p_value"] <= 1.0
    choice = result.choices["lstm"]
    assert choice["lambda"] in cfg.lambdas
    assert choice["one_vector_search_max_abs_diff"] < 1e-4
    assert len(result.sweep["lstm"]) == len(cfg.lambdas)
    anchors = [r["anchor"] for r in choice["anchor_sweep"]]  # what the last item's title adds to the text
    assert anchors == sorted({0.0, *cfg.anchors, 1.0}) and set(choice["anchor"]["val_curve"]) >= {"0.0"}
    if choice["fusion"]["anchor"]:
        assert "mix-up, generated text alone (lstm)" in metrics["systems"]
    learned = max(result.systems["mix-up (lstm)"]["recall@10"], result.systems["sasrec"]["recall@10"])
    assert learned > result.systems["popularity"]["recall@10"]
    report = (out / "report.md").read_text()
    assert "score-level blend" in report and "hold" in report and "the last item's title" in report
    assert result.costs["lora_seconds_per_step"] > 0 and 0 <= result.costs["malformed_rate"] <= 1
    assert [e["step"] for e in result.costs["lora_held_out_curve"]] == [0, 1, 2]

    # the report can be rebuilt from metrics.json (JSON keys are strings), also for leave-one-out
    saved = json.loads((out / "metrics.json").read_text())
    saved.pop("out_dir")
    saved["dataset"]["split"] = {"protocol": "leave-one-out"}
    write_report(EvalResult(**saved, out_dir=tmp_path / "again"), tmp_path / "again")
    assert "leave-one-out" in (tmp_path / "again" / "report.md").read_text()

    # the LoRA run is reusable elsewhere (e.g. trained on a GPU box), but only on its data set
    run = out / "bundle" / "llm" / "lora"
    adopted = replace(cfg, lora_run=run)
    costs: dict = {}
    tuned = tune_llm(data, adopted, tmp_path / "elsewhere", progress=False, costs=costs)
    assert tuned["model_version"] == result.versions["llm"] and costs["lora_run_adopted"] == str(run)
    assert (Path(tuned["merged_dir"]) / "config.json").is_file()
    with pytest.raises(ValueError, match="not on this data set"):
        tune_llm(synthesize(users=100, items=200, seed=1), adopted, tmp_path / "x", False, {})


def test_event_slices_on_a_hand_made_frame() -> None:
    """repeat = the target is in the shopper's history; explore = the rest; cold-start =
    explore events whose target had no training interaction."""
    ts = pd.to_datetime(["2025-01-01", "2025-01-02", "2025-06-01", "2025-06-02"], utc=True)
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "title": list("abcd")})
    inter = pd.DataFrame({"user_id": ["x", "x", "x", "x"], "item_id": ["a", "b", "c", "d"], "ts": ts,
                          "kind": "purchase"})
    data = Dataset(items, inter, split=TemporalSplit(ts[2], ts[3]))  # train: a, b
    events = NextItemEvents(
        user_ids=["u1", "u2", "u3", "u4"],
        histories=[["a", "b"], ["a"], ["c", "a"], ["b"]],
        kinds=[["purchase", "click"], ["click"], ["click", "purchase"], ["purchase"]],
        targets=np.array([0, 1, 2, 3]),
        target_kinds=["purchase"] * 4,
    )
    masks = event_slices(data, events)
    assert masks["repeat"].tolist() == [True, False, True, False]  # a in u1's history, c in u3's
    assert masks["explore"].tolist() == [False, True, False, True]
    # c is new but u3 had it (a repeat, not cold); d is new and not in u4's history
    assert masks["cold-start"].tolist() == [False, False, False, True]
    assert masks["all"].all()


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "STYLESTREAM_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stylestream.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def test_eval_cli_help(tmp_path: Path) -> None:
    done = _cli("eval", "--help", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    for option in ("--dataset", "--base-model", "--lora-steps", "--lora-patience", "--lora-run",
                   "--max-test-events", "--llm-test-events", "--protocol", "--answers", "--sasrec-run",
                   "--encoders", "--engine", "--out"):
        assert option in done.stdout


def test_eval_cli_rejects_an_unknown_protocol(tmp_path: Path) -> None:
    data = synthesize(users=20, items=30, seed=0).save(tmp_path / "data")
    done = _cli("eval", "--dataset", str(data), "--protocol", "random", tmp_path=tmp_path)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "protocol" in lines[0], done.stderr


def test_eval_cli_rejects_a_folder_that_is_no_lora_run(tmp_path: Path) -> None:
    done = _cli("eval", "--lora-run", str(tmp_path), tmp_path=tmp_path)
    assert done.returncode == 2 and "not a finished LoRA run" in done.stderr
    assert "Traceback" not in done.stderr


def test_eval_cli_missing_dataset(tmp_path: Path) -> None:
    done = _cli("eval", "--dataset", "/no/such", tmp_path=tmp_path)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "/no/such" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
