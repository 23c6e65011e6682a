"""SASRec: windows, causality, the public interface, learning a planted pattern, persistence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from models.data.dataset import Dataset
from models.metrics import evaluate_scorer, next_item_events
from models.sasrec import KIND_INDEX, SASRec, SASRecConfig, train_sasrec, training_windows

N_ITEMS = 40


def cyclic_dataset(users: int = 120, steps: int = 16, seed: int = 0) -> Dataset:
    """Shoppers walk the catalog: item j is followed by j+1 (mostly). Popularity is flat,
    so only a sequential model can rank the next item well."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(N_ITEMS)],
                          "title": [f"item {j}" for j in range(N_ITEMS)],
                          "category": ["c"] * N_ITEMS})
    rows = []
    for u in range(users):
        cur, t = int(rng.integers(N_ITEMS)), 1_700_000_000 + int(rng.integers(0, 86_400 * 20))
        for _ in range(steps):
            rows.append((f"u{u}", f"i{cur}", t, "purchase" if rng.random() < 0.3 else "click"))
            t += 3_600 + int(rng.integers(0, 600))
            cur = (cur + 1) % N_ITEMS if rng.random() < 0.9 else int(rng.integers(N_ITEMS))
    return Dataset(items, pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "kind"]))


FAST = SASRecConfig(dim=32, layers=1, heads=2, max_len=12, epochs=25, batch_size=64, lr=5e-3,
                    dropout=0.1, patience=5)


@pytest.fixture(scope="module")
def trained() -> tuple[SASRec, Dataset]:
    data = cyclic_dataset()
    return train_sasrec(data, FAST, progress=False), data


def test_training_windows_cut_from_the_end_with_bos():
    cfg = SASRecConfig(max_len=3, purchase_weight=2.0)
    train = pd.DataFrame({"user_id": ["u"] * 4, "item_id": ["a", "b", "c", "zz"],
                          "kind": ["click", "purchase", "click", "click"]})
    w = training_windows(train, {"a": 0, "b": 1, "c": 2}, bos=4, cfg=cfg)
    # sequence [BOS, a, b, c] -> ids [4, 1, 2, 3]; unknown "zz" is dropped
    assert w.items.tolist() == [[4, 1, 2]]
    assert w.targets.tolist() == [[1, 2, 3]]
    assert w.kinds.tolist() == [[0, KIND_INDEX["click"], KIND_INDEX["purchase"]]]
    assert w.weights.tolist() == [[1.0, 2.0, 1.0]]
    longer = pd.DataFrame({"user_id": ["u"] * 5, "item_id": list("abcab"), "kind": ["click"] * 5})
    w2 = training_windows(longer, {"a": 0, "b": 1, "c": 2}, bos=4, cfg=cfg)
    # [BOS, a, b, c, a, b]: every item is a target exactly once, newest window first
    assert w2.targets.tolist() == [[3, 1, 2], [0, 1, 2]]
    assert w2.items.tolist() == [[2, 3, 1], [0, 4, 1]]


def test_attention_is_causal():
    model = SASRec([f"i{j}" for j in range(10)], SASRecConfig(dim=16, max_len=6)).eval()
    items = torch.tensor([[0, 11, 1, 2, 3, 4]])
    kinds = torch.tensor([[0, 0, 1, 1, 2, 1]])
    changed = items.clone()
    changed[0, -1] = 7
    with torch.no_grad():
        a, b = model(items, kinds), model(changed, kinds)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_interface_shapes_and_unknown_items(trained):
    model, _ = trained
    assert model.item_embeddings().shape == (N_ITEMS, 32)
    assert model.known_items().all() and model.manifest["n_known_items"] == N_ITEMS
    u = model.user_state(["i1", "i2"], ["click", "purchase"])
    assert u.shape == (32,)
    np.testing.assert_allclose(model.user_state(["nope", "i1", "i2"], ["click", "click", "purchase"]),
                               u, atol=1e-6)
    assert np.isfinite(model.user_state([])).all()  # BOS only
    assert model.score(["i1"]).shape == (N_ITEMS,)
    with pytest.raises(ValueError):
        model.user_state(["i1"], ["click", "click"])


def test_learns_the_planted_sequence(trained):
    model, data = trained
    train, val, test = data.parts()
    events = next_item_events(model.item_ids, pd.concat([train, val]), test,
                              target_kinds=("click", "purchase"))
    report = evaluate_scorer(model.score, events, k=5)
    assert report.recall > 0.6  # flat popularity gives ~5/40
    assert int(np.argmax(model.score(["i3", "i4"]))) == 5
    assert model.manifest["best_epoch"] >= 1 and model.version.startswith("sasrec-")


def test_save_load_round_trip(trained, tmp_path):
    model, data = trained
    model.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["data_hash"] == data.data_hash()
    assert manifest["config"]["dim"] == 32 and manifest["model_version"] == model.version
    back = SASRec.load(tmp_path / "m")
    history = ["i5", "i6", "i7"]
    np.testing.assert_array_equal(back.score(history), model.score(history))
    assert back.item_ids == model.item_ids and back.version == model.version
    np.testing.assert_array_equal(back.known_items(), model.known_items())


def test_trains_from_frames_without_validation():
    data = cyclic_dataset(users=20, steps=6)
    cfg = SASRecConfig(dim=16, layers=1, max_len=8, epochs=2)
    model = train_sasrec((data.items, data.interactions), cfg, progress=False)
    assert model.manifest["best_epoch"] == 2 and model.manifest["n_val_events"] == 0
    unseen = set(data.items["item_id"]) - set(data.interactions["item_id"])
    assert model.known_items().sum() == N_ITEMS - len(unseen)
