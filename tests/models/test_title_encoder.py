"""Title encoders: triplet mining, shapes and norms, learning from triplets, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.title_encoder import (
    LSTMConfig,
    MiniLMTitleEncoder,
    Triplet,
    build_vocabulary,
    evaluate_triplets,
    load_title_encoder,
    mine_triplets,
    next_purchase_pairs,
    train_title_encoder,
)

COLOURS = ["red", "blue", "green", "black", "white", "pink"]
GARMENTS = ["dress", "shirt", "coat", "boots", "skirt", "scarf"]


def colour_triplets(n: int, seed: int) -> list[Triplet]:
    """Planted signal: people take a second item of the SAME colour next."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c, other = rng.choice(len(COLOURS), 2, replace=False)
        g = rng.choice(len(GARMENTS), 3)
        out.append(Triplet(f"{COLOURS[c]} {GARMENTS[g[0]]}", f"{COLOURS[c]} {GARMENTS[g[1]]}",
                           f"{COLOURS[other]} {GARMENTS[g[2]]}"))
    return out


def small_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"],
                          "title": ["red dress", "red boots", "blue coat", "blue scarf"],
                          "category": ["dress", "shoes", "coat", "coat"]})
    inter = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u1", "u2", "u2"],
                          "item_id": ["a", "c", "b", "d", "c", "d"],
                          "ts": [1, 2, 3, 4, 1, 2],
                          "kind": ["click", "click", "purchase", "purchase", "click", "purchase"]})
    return items, inter


def test_next_purchase_pairs_follow_each_event_to_the_next_purchase():
    _, inter = small_frames()
    assert sorted(next_purchase_pairs(inter)) == sorted([
        ("a", "b"), ("c", "b"), ("b", "d"), ("c", "d")])


def test_mined_triplets_use_titles_and_never_the_positive_as_negative():
    items, inter = small_frames()
    triplets = mine_triplets(items, inter, 50, hard_fraction=1.0, seed=1)
    titles = set(items["title"])
    assert len(triplets) == 50
    for t in triplets:
        assert {t.anchor, t.positive, t.negative} <= titles
        assert t.negative not in (t.anchor, t.positive)


def test_vocabulary_keeps_special_tokens_first():
    vocab = build_vocabulary(["Red dress", "red SHIRT!"])
    assert vocab[:3] == ["<pad>", "<unk>", "red"] and "shirt" in vocab


def test_lstm_shapes_norms_and_learning(tmp_path):
    train, held = colour_triplets(400, seed=0), colour_triplets(200, seed=1)
    untrained = train_title_encoder("lstm", None, steps=0, triplets=train, progress=False,
                                    lstm=LSTMConfig(word_dim=16, hidden=16, dim=16))
    enc = train_title_encoder("lstm", None, steps=120, batch_size=32, triplets=train,
                              progress=False, lstm=LSTMConfig(word_dim=16, hidden=16, dim=16))
    emb = enc.encode(["red dress", "", "words never seen", "blue"])
    assert emb.shape == (4, 16) and enc.dim == 16 and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert enc.encode([]).shape == (0, 16)
    before, after = evaluate_triplets(untrained, held), evaluate_triplets(enc, held)
    assert after < 0.5 * before
    back = load_title_encoder(enc.save(tmp_path / "lstm"))
    np.testing.assert_array_equal(back.encode(["red dress", "blue coat"]),
                                  enc.encode(["red dress", "blue coat"]))
    assert back.manifest["steps"] == 120 and back.manifest["kind"] == "lstm"


def test_lstm_trains_from_frames():
    enc = train_title_encoder("lstm", small_frames(), steps=3, batch_size=4, progress=False)
    assert enc.manifest["n_triplets"] == 12 and "boots" in enc.vocab


@pytest.mark.slow
def test_minilm_shapes_learning_and_round_trip(tmp_path):
    held = colour_triplets(60, seed=1)
    base = MiniLMTitleEncoder.pretrained()
    emb = base.encode(["red dress", "blue coat"])
    assert emb.shape == (2, 384) and base.dim == 384
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    before = evaluate_triplets(base, held)
    enc = train_title_encoder("minilm", None, steps=15, batch_size=16, lr=5e-5,
                              triplets=colour_triplets(240, seed=0), progress=False)
    assert evaluate_triplets(enc, held) < before
    back = load_title_encoder(enc.save(tmp_path / "minilm"))
    np.testing.assert_allclose(back.encode(["red dress"]), enc.encode(["red dress"]), atol=1e-6)
