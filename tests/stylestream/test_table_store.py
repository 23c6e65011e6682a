"""A worker's local tables survive a clean stop and are rebuilt after anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from stylestream.table_store import CLEAN_MARK, kept_if_stopped_cleanly


def run(tabledir: Path, exit_code: int | None) -> None:
    with pytest.raises(SystemExit), kept_if_stopped_cleanly(tabledir):
        (tabledir / "sequences-0.db").mkdir(parents=True, exist_ok=True)
        raise SystemExit(exit_code)


def test_a_store_left_by_a_clean_stop_is_kept_and_unmarked_while_the_worker_runs(tmp_path: Path):
    tables = tmp_path / "tables"
    run(tables, 0)
    assert (tables / CLEAN_MARK).exists()
    with pytest.raises(SystemExit), kept_if_stopped_cleanly(tables):
        assert (tables / "sequences-0.db").is_dir()
        assert not (tables / CLEAN_MARK).exists(), "a kill from here on must leave no mark"
        raise SystemExit(1)
    assert not (tables / CLEAN_MARK).exists()


@pytest.mark.parametrize("how", ["killed", "failed", "raised"])
def test_a_store_whose_worker_did_not_stop_cleanly_is_deleted(tmp_path: Path, how: str):
    tables = tmp_path / "tables"
    if how == "killed":  # SIGKILL: the context never exits
        (tables / "sequences-0.db").mkdir(parents=True)
    elif how == "failed":
        run(tables, 1)
    else:
        with pytest.raises(RuntimeError), kept_if_stopped_cleanly(tables):
            (tables / "sequences-0.db").mkdir(parents=True)
            raise RuntimeError("crash")
    assert (tables / "sequences-0.db").is_dir() and not (tables / CLEAN_MARK).exists()
    with kept_if_stopped_cleanly(tables):
        assert not tables.exists()


def test_a_first_start_has_nothing_to_delete(tmp_path: Path):
    with kept_if_stopped_cleanly(tmp_path / "tables"):
        pass
    assert not (tmp_path / "tables").exists()
