"""Mix-up retrieval: the one-inner-product identity, exact search, imputation, memory, λ."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.mixup import (
    Fusion,
    IdImputer,
    MixupIndex,
    QueryMemory,
    anchored_text,
    blended_score,
    choose_lambda,
    mixup_item_vectors,
    mixup_query,
    query_outcomes,
    rebuy_exclusions,
    repeat_boosts,
    split_answer,
    split_scores,
    unit,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("id_half", ["cosine", "logit"])
@pytest.mark.parametrize("lam", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_one_inner_product_equals_blended_score(lam, id_half):
    titles, ids = RNG.normal(size=(200, 24)), RNG.normal(size=(200, 16)) * 3.0
    text, user = RNG.normal(size=24), RNG.normal(size=16) * 0.1
    fusion = Fusion(lam, id_half, sigma=2.5)
    x = mixup_item_vectors(titles, ids, id_half).astype(np.float64)
    q = mixup_query(text, user, fusion).astype(np.float64)
    np.testing.assert_allclose(x @ q, blended_score(text, user, titles, ids, fusion), atol=1e-5)


def test_stored_vectors_do_not_depend_on_lambda():
    """λ lives on the query side: a new λ needs no re-indexing."""
    titles, ids = RNG.normal(size=(50, 8)), RNG.normal(size=(50, 4))
    x = mixup_item_vectors(titles, ids, "cosine")
    np.testing.assert_allclose(np.linalg.norm(x[:, :8], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x[:, 8:], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(mixup_item_vectors(titles, ids, "logit")[:, 8:], ids, atol=1e-6)


def test_logit_half_at_lambda_zero_ranks_exactly_as_sasrec():
    titles, e = RNG.normal(size=(500, 24)), RNG.normal(size=(500, 16)) * RNG.uniform(0.2, 3.0, size=(500, 1))
    text, u = RNG.normal(size=24), RNG.normal(size=16)
    scores = MixupIndex.build([f"i{j}" for j in range(500)], titles, e, "logit").scores(
        mixup_query(text, u, Fusion(0.0, "logit", sigma=3.7)))
    assert np.argsort(-scores, kind="stable").tolist() == np.argsort(-(e @ u), kind="stable").tolist()
    cosine = MixupIndex.build([f"i{j}" for j in range(500)], titles, e, "cosine").scores(
        mixup_query(text, u, Fusion(0.0)))
    assert np.argsort(-cosine)[:10].tolist() != np.argsort(-(e @ u))[:10].tolist(), "the cosine drops the norms"


def test_lambda_one_ranks_by_title_only():
    titles, e = RNG.normal(size=(300, 24)), RNG.normal(size=(300, 16))
    text, u = RNG.normal(size=24), RNG.normal(size=16)
    for half in ("cosine", "logit"):
        s = MixupIndex.build([f"i{j}" for j in range(300)], titles, e, half).scores(
            mixup_query(text, u, Fusion(1.0, half)))
        assert np.argsort(-s).tolist() == np.argsort(-(unit(titles) @ unit(text))).tolist()


def test_fusion_checks_and_round_trips():
    f = Fusion(0.3, "logit", 2.0, 0.9)
    assert Fusion.from_json(f.to_json()) == f and f.with_lambda(0.7).lam == 0.7
    for bad in (dict(lam=1.5), dict(lam=0.5, id_half="dot"), dict(lam=0.5, sigma=0.0)):
        with pytest.raises(ValueError):
            Fusion(**bad)


def test_rebuy_rule_keeps_only_bought_items_the_text_names():
    bought = [["a", "b"], ["c"], []]
    sims = {(0, "a"): 0.95, (0, "b"): 0.2, (1, "c"): 0.5}
    assert rebuy_exclusions(bought, lambda r, i: sims[(r, i)], None) == [[], [], []]
    assert rebuy_exclusions(bought, lambda r, i: sims[(r, i)], 0.9) == [["b"], ["c"], []]
    assert rebuy_exclusions(bought, lambda r, i: sims[(r, i)], 2.0) == [["a", "b"], ["c"], []]


def test_index_never_returns_unavailable_items():
    x = np.eye(4, dtype=np.float32)
    idx = MixupIndex(["a", "b", "c", "d"], x, available=np.array([True, False, True, True]))
    hits = idx.search(np.array([0.1, 1.0, 0.5, 0.2], np.float32), k=4)
    assert [h.item_id for h in hits] == ["c", "d", "a"]


def test_batch_query_and_missing_half():
    text, user = RNG.normal(size=(3, 8)), RNG.normal(size=(3, 4))
    q = mixup_query(text, user, 0.5)
    assert q.shape == (3, 12)
    only_text = mixup_query(text[0], None, 0.5, id_dim=4)
    assert only_text.shape == (12,) and not only_text[8:].any()
    with pytest.raises(ValueError):
        mixup_query(text[0], user[0], 1.5)


def test_index_top_k_equals_brute_force_and_excludes():
    ids = [f"i{j}" for j in range(300)]
    idx = MixupIndex.build(ids, RNG.normal(size=(300, 16)), RNG.normal(size=(300, 8)))
    queries = mixup_query(RNG.normal(size=(4, 16)), RNG.normal(size=(4, 8)), 0.4)
    results = idx.search(queries, k=10)
    for q, hits in zip(queries, results, strict=True):
        brute = np.argsort(-(idx.vectors @ q), kind="stable")[:10]
        assert [h.item_id for h in hits] == [ids[j] for j in brute]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    first = results[0][0].item_id
    single = idx.search(queries[0], k=10, exclude=[first])
    assert first not in [h.item_id for h in single] and len(single) == 10


def test_imputer_projection_recovers_known_linear_map():
    t = unit(RNG.normal(size=(500, 12)))
    w = RNG.normal(size=(12, 6))
    e = t @ w + 0.5
    imp = IdImputer(alpha=1e-6).fit(t, e)
    new = unit(RNG.normal(size=(20, 12)))
    np.testing.assert_allclose(imp.impute(new), new @ w + 0.5, atol=1e-4)


def test_imputer_category_mean_then_global_mean():
    t = unit(RNG.normal(size=(4, 3)))
    e = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [9.0, 9.0]])
    has_id = np.array([True, True, True, False])
    imp = IdImputer(min_items=20).fit(t, e, has_id, ["shoes", "shoes", "bags", "bags"])
    assert imp.weights is None  # too few items for a projection
    out = imp.impute(t[:3], ["shoes", "hats", None])
    np.testing.assert_allclose(out[0], [2.0, 0.0])  # shoes mean
    np.testing.assert_allclose(out[1], [4 / 3, 2 / 3])  # unknown category: global mean
    np.testing.assert_allclose(out[2], [4 / 3, 2 / 3])
    filled = imp.fill(t, e, has_id, ["shoes", "shoes", "bags", "bags"])
    np.testing.assert_allclose(filled[3], [0.0, 2.0])  # bags mean, row 3's own value unused
    np.testing.assert_allclose(filled[:3], e[:3])


def test_imputer_falls_back_when_title_missing_and_round_trips(tmp_path):
    t = unit(RNG.normal(size=(50, 4)))
    e = RNG.normal(size=(50, 3))
    imp = IdImputer(min_items=10).fit(t, e, categories=["a"] * 25 + ["b"] * 25)
    out = imp.impute(np.zeros((1, 4)), ["b"])  # no title text: category mean
    np.testing.assert_allclose(out[0], e[25:].mean(axis=0))
    back = IdImputer.load(imp.save(tmp_path / "imputer.npz"))
    np.testing.assert_allclose(back.impute(t[:5], ["a"] * 5), imp.impute(t[:5], ["a"] * 5))


def _memory_frame():
    ts = pd.Timestamp("2025-01-01", tz="UTC")
    m = pd.Timedelta("1min")
    rows = [("u1", "a", ts, "click", "Navy  Shirt"), ("u1", "b", ts + m, "click", None),
            ("u1", "c", ts + 2 * m, "click", None), ("u1", "d", ts + 3 * m, "purchase", None),
            ("u1", "e", ts + 90 * m, "purchase", None),  # outside the window
            ("u2", "c", ts, "click", "red dress")]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "kind", "query"])


def test_query_outcomes_take_own_click_next_click_and_purchases_in_window():
    out = query_outcomes(_memory_frame(), "30min")
    navy = out[out["query"] == "navy shirt"]
    assert navy["item_id"].tolist() == ["a", "b", "d"]
    assert navy["weight"].tolist() == [0.3, 0.3, 1.0]


def test_query_memory_lookup_only_when_closer_to_a_query_than_to_titles():
    items = ["a", "b", "c", "d", "e"]
    basis = np.eye(8)
    vocab = {"navy shirt": basis[0], "red dress": basis[1]}
    titles = np.stack([basis[2], basis[3], basis[4], basis[5], basis[6]])
    mem = QueryMemory.build(_memory_frame(), items, lambda qs: np.stack([vocab[q] for q in qs]),
                            titles)
    assert len(mem) == 2 and mem.nearest(basis[0])[0] == "navy shirt"
    scores = mem.lookup(basis[0] + 0.1 * basis[2], threshold=0.8)
    assert scores is not None and int(np.argmax(scores)) == items.index("d")
    assert scores[items.index("e")] == 0.0
    assert mem.lookup(basis[2] + 0.1 * basis[0], threshold=0.0) is None  # reads like a title
    assert mem.lookup(basis[7], threshold=0.5) is None  # nothing close


def test_choose_lambda_picks_best_recall_from_scores_or_numbers():
    targets = np.array([0, 1])
    good, bad = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])
    choice = choose_lambda(lambda lam: good if lam == 0.5 else bad, [0.0, 0.5, 1.0], targets, k=1)
    assert choice.lam == 0.5 and choice.recall == 1.0 and choice.curve[0.0] == 0.0
    assert choose_lambda(lambda lam: 1 - abs(lam - 0.2), [0.0, 0.2, 0.4]).lam == 0.2


def test_repeat_boosts_by_recency_rank_of_distinct_items():
    assert repeat_boosts(["a", "b", "a", "c"], (3.0, 2.0, 1.0)) == {"c": 3.0, "a": 2.0, "b": 1.0}
    assert repeat_boosts(["a", "b", "c", "d"], (3.0, 1.0)) == {"d": 3.0, "c": 1.0, "b": 1.0, "a": 1.0}
    assert repeat_boosts(["a", "b"], ()) == {}


def test_fusion_with_repeat_round_trips():
    f = Fusion(0.3, "logit", 2.0, None, repeat=(1.0, 0.5))
    assert Fusion.from_json(json.loads(json.dumps(f.to_json()))) == f
    assert f.with_lambda(0.7).repeat == (1.0, 0.5)
    assert Fusion.from_json({"lam": 0.5}).repeat == ()


def test_repeat_explore_split_answer_and_scores_agree():
    repeat = np.array([[5.0, 4.0, 3.0, 1.0, 0.0]])  # items a..e; the shopper owns a, c, e
    explore = np.array([[0.1, 0.9, 0.8, 0.7, 0.6]])
    ids = ["a", "b", "c", "d", "e"]
    scores = split_scores(repeat, explore, [np.array([0, 2, 4])], slots=2)
    order = [ids[j] for j in np.argsort(-scores[0], kind="stable")]
    assert order[:2] == ["a", "c"] and order[2:] == ["b", "d", "e"]  # own items first, then explore
    rows = split_answer([[(i, float(x)) for i, x in zip(ids, repeat[0], strict=True)]],
                        [sorted(zip(ids, explore[0].tolist(), strict=True), key=lambda p: -p[1])],
                        [{"a", "c", "e"}], slots=2, k=4)
    assert [i for i, _ in rows[0]] == order[:4]
    assert Fusion(0.3, repeat=(1.0,), repeat_slots=2).with_repeat(()).repeat_slots == 0


def test_anchored_text_mixes_unit_vectors_and_round_trips():
    gen, last = np.array([[3.0, 0.0], [0.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 2.0], [0.0, 5.0], [0.0, 0.0]])
    got = anchored_text(gen, last, 0.5)
    np.testing.assert_allclose(got, [[2 ** -0.5, 2 ** -0.5], [0.0, 1.0], [1.0, 0.0]])  # a missing half adds nothing
    np.testing.assert_array_equal(anchored_text(gen, last, 0.0), gen)
    fusion = Fusion(0.3, anchor=0.4).with_repeat((1.0,), 2, 0.8)
    assert Fusion.from_json(fusion.to_json()) == fusion and fusion.explore().anchor == 0.4
    with pytest.raises(ValueError, match="anchor"):
        Fusion(0.3, anchor=1.5)


def test_validation_text_at_anchor_equals_the_anchored_query():
    """What validation scores for an anchor is the cosine of the served anchored query."""
    from models.train import ValidationHalves

    rng = np.random.default_rng(0)
    titles, gen = unit(rng.normal(size=(30, 8))), rng.normal(size=(5, 8))
    gen[2] = 0.0  # a shopper without generated text
    last_rows = [4, 7, 0, 12, 29]
    h = ValidationHalves(text=(unit(gen) @ titles.T).astype(np.float32), ids={}, id_emb={}, imputers={},
                         bought=[], last=(titles[last_rows] @ titles.T).astype(np.float32),
                         text_last=np.sum(unit(gen) * titles[last_rows], axis=1))
    for a in (0.0, 0.3, 0.8):
        want = unit(anchored_text(gen, titles[last_rows], a)) @ titles.T
        np.testing.assert_allclose(h.text_at(a), want, atol=1e-5)


def test_the_inverted_file_finds_what_the_exact_search_finds():
    """Probing every list is the exact search; probing a few finds the nearest items of
    clustered vectors; exclusions and withdrawn items hold either way."""
    from models.mixup import IvfIndex

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, 16)).astype(np.float32)
    x = centers[rng.integers(0, 40, 2000)] + 0.3 * rng.standard_normal((2000, 16)).astype(np.float32)
    ids = [f"i{i}" for i in range(2000)]
    available = np.ones(2000, bool)
    available[::7] = False
    q = x[:20] + 0.1 * rng.standard_normal((20, 16)).astype(np.float32)
    exclude = [[ids[r + 1], ids[r + 2]] for r in range(20)]
    exact = MixupIndex(ids, x, available).search(q, 10, exclude)
    every = MixupIndex(ids, x, available).approximate(IvfIndex.build(x, lists=30, nprobe=30)).search(q, 10, exclude)
    assert [[h.item_id for h in row] for row in every] == [[h.item_id for h in row] for row in exact]
    some = MixupIndex(ids, x, available).approximate(IvfIndex.build(x, lists=30, nprobe=4)).search(q, 10, exclude)
    overlap = np.mean([len({h.item_id for h in a} & {h.item_id for h in b}) / 10
                       for a, b in zip(exact, some, strict=True)])
    assert overlap >= 0.9
    for row, ex in zip(some, exclude, strict=True):
        assert not {h.item_id for h in row} & set(ex)
        assert all(available[int(h.item_id[1:])] for h in row)
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
