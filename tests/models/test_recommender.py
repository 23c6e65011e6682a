"""The one place a recommendation is computed, on a real (tiny) bundle: its stages agree
with each other, with the bundle's stored choices and with the whole-catalog scores that
evaluation ranks; the bundle refuses what it cannot serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.bundle import MANIFEST, Bundle, BundleError
from models.mixup import Fusion
from models.recommender import FAST_PATH, ID_ONLY_PATH, LLM_PATH, History, MixupRecommender
from models.train import ALWAYS_EXCLUDE

pytestmark = pytest.mark.slow  # the session's tiny bundle takes ~15 s to train


def histories(bundle: Bundle, n: int = 6) -> list[History]:
    items = bundle.items()["item_id"].tolist()
    return [History.of(items[3 * r:3 * r + 4], ["click", "purchase", "click", "purchase"]) for r in range(n)]


def test_bundle_holds_every_part_and_its_choices(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    assert bundle.version.startswith("bundle-") and bundle.data_hash == tiny_bundle.dataset.data_hash()
    assert bundle.encoders == ["lstm"] and bundle.chosen_encoder == "lstm"
    assert len(bundle.items()) == len(tiny_bundle.dataset.items) and bundle.items()["in_stock"].all()
    vectors = bundle.item_vectors()
    assert vectors.shape == (len(bundle.items()), bundle.manifest["encoders"]["lstm"]["dim"] + 32)
    choice = bundle.manifest["encoders"]["lstm"]
    assert 0.0 <= choice["fusion"]["lam"] <= 1.0 and choice["val_recall@10"] >= 0
    assert (tiny_bundle.folder / "llm" / "onnx" / "model.onnx").is_file()
    assert (tiny_bundle.folder / "llm" / "merged" / "config.json").is_file()
    assert len(bundle.validation()["texts"]) == bundle.manifest["validation"]["n_events"]


def test_recommend_is_the_top_of_the_whole_catalog_scores(tiny_bundle):
    rec = MixupRecommender(Bundle.load(tiny_bundle.folder))
    hist = histories(rec.bundle)
    answers = rec.recommend(hist, k=10)
    texts = [a.generated_text for a in answers]
    scores = rec.answer_scores(hist, rec.text_vectors(texts), rec.user_states(hist))
    for answer, row in zip(answers, scores, strict=True):
        assert answer.path == LLM_PATH and len(answer.items) == 10
        assert [h.item_id for h in answer.items] == [rec.item_ids[j] for j in np.argsort(-row, kind="stable")[:10]]
    again = rec.recommend(hist, k=10, texts=texts)
    assert [[h.item_id for h in a.items] for a in again] == [[h.item_id for h in a.items] for a in answers]


@pytest.mark.parametrize(("slots", "weights"), [(0, (5.0, 2.0, 0.5)), (2, (5.0, 2.0, 0.5)), (4, (5.0, 0.0))])
def test_repeat_term_search_equals_the_whole_catalog_ranking(tiny_bundle, slots, weights):
    """The repeat term over the search's candidates plus the history items (what serving
    runs after Milvus), and the repeat/explore split, give the order of the whole-catalog
    scores that evaluation ranks."""
    bundle = Bundle.load(tiny_bundle.folder)
    fusion = Fusion(0.5, "logit", 1.0, None, repeat=weights, repeat_slots=slots, explore_lam=0.9)
    rec = MixupRecommender(bundle, fusion=fusion)
    hist = histories(bundle)
    texts = ["blue summer dress"] * len(hist)
    scores = rec.answer_scores(hist, rec.text_vectors(texts), rec.user_states(hist))
    answers = rec.recommend(hist, k=10, texts=texts)
    for answer, row, h in zip(answers, scores, hist, strict=True):
        assert [x.item_id for x in answer.items] == [rec.item_ids[j] for j in np.argsort(-row, kind="stable")[:10]]
        assert h.item_ids[-1] == answer.items[0].item_id  # the newest item, boosted by 5
        if slots:  # the first places go to own items; with 4 places, all 4 of each shopper's
            first = {x.item_id for x in answer.items[:slots]}
            assert first == set(h.item_ids) if slots >= len(set(h.item_ids)) else first <= set(h.item_ids)


def test_repeat_term_at_weight_zero_changes_nothing(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    plain = Fusion(0.5, "logit", 1.0, None)
    hist = histories(bundle)
    texts = ["black leather boots"] * len(hist)
    off = MixupRecommender(bundle, fusion=plain).recommend(hist, k=10, texts=texts)
    zero = MixupRecommender(bundle, fusion=plain.with_repeat((0.0, 0.0))).recommend(hist, k=10, texts=texts)
    for a, b in zip(zero, off, strict=True):  # own items are scored exactly (float64) with the term on
        assert [x.item_id for x in a.items] == [x.item_id for x in b.items]
        np.testing.assert_allclose([x.score for x in a.items], [x.score for x in b.items], rtol=1e-6)


@pytest.mark.parametrize("slots", [0, 2])
def test_anchored_text_query_search_equals_the_whole_catalog_ranking(tiny_bundle, slots):
    """With the last item's title mixed into the text query, the search (and the split)
    still gives the order of the whole-catalog scores; anchor 0 changes nothing, and the
    anchor really moves the answer."""
    bundle = Bundle.load(tiny_bundle.folder)
    base = Fusion(0.6, "logit", 1.0, None, repeat=(1.0,) if slots else (), repeat_slots=slots, explore_lam=0.9)
    hist = histories(bundle)
    texts = ["blue summer dress"] * len(hist)
    anchored = MixupRecommender(bundle, fusion=base.with_anchor(0.6))
    scores = anchored.answer_scores(hist, anchored.text_vectors(texts), anchored.user_states(hist))
    answers = anchored.recommend(hist, k=10, texts=texts)
    for answer, row in zip(answers, scores, strict=True):
        assert [x.item_id for x in answer.items] == [anchored.item_ids[j] for j in np.argsort(-row, kind="stable")[:10]]
    plain = MixupRecommender(bundle, fusion=base)
    zero = MixupRecommender(bundle, fusion=base.with_anchor(0.0))
    vecs = plain.text_vectors(texts)
    np.testing.assert_array_equal(zero.answer_scores(hist, vecs, plain.user_states(hist)),
                                  plain.answer_scores(hist, vecs, plain.user_states(hist)))
    unanchored = plain.recommend(hist, k=10, texts=texts)
    assert [[x.item_id for x in a.items] for a in answers] != [[x.item_id for x in a.items] for a in unanchored]


def test_text_query_is_the_last_title_at_anchor_one(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    rec = MixupRecommender(bundle, fusion=bundle.fusion().with_anchor(1.0))
    hist = histories(bundle)
    got = rec.text_query(hist, rec.text_vectors(["anything at all"] * len(hist)))
    stored = rec.stored_vectors([h.item_ids[-1] for h in hist])
    want = np.array([stored[h.item_ids[-1]][:rec.text_dim] for h in hist])
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)


def test_id_only_is_the_same_search_at_lambda_zero(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    rec = MixupRecommender(bundle, fusion=bundle.fusion().with_lambda(0.0).with_repeat(()))
    hist = histories(bundle)
    fast = rec.recommend_id_only(hist, k=5)
    slow = rec.recommend(hist, k=5, texts=["anything at all"] * len(hist))
    assert all(a.path == ID_ONLY_PATH and not a.generated_text for a in fast)
    for a, b in zip(fast, slow, strict=True):
        if rec.fusion.rebuy_threshold is None:  # with a re-buy rule the text can still bring items back
            assert [h.item_id for h in a.items] == [h.item_id for h in b.items]


def test_bought_items_are_left_out_unless_the_text_names_them(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    rec = MixupRecommender(bundle, fusion=bundle.fusion().with_lambda(0.5))
    titles = dict(zip(rec.item_ids, bundle.items()["title"], strict=True))
    hist = histories(bundle)
    f = rec.fusion
    strict = MixupRecommender(bundle, fusion=Fusion(0.5, f.id_half, f.sigma, ALWAYS_EXCLUDE))
    for answer, h in zip(strict.recommend(hist, k=20, texts=["a dress"] * len(hist)), hist, strict=True):
        assert answer.path == LLM_PATH and not set(h.bought()) & {i.item_id for i in answer.items}
    named = MixupRecommender(bundle, fusion=Fusion(0.5, f.id_half, f.sigma, 0.9))
    h = hist[0]
    exclude = named.exclusions([h], named.text_vectors([titles[h.bought()[0]]]), named.stored_vectors)[0]
    assert h.bought()[0] not in exclude, "a text naming the bought item predicts a re-buy"
    assert set(exclude) <= set(h.bought())


def test_generator_stage_alone_loads_no_item_vectors(tiny_bundle):
    rec = MixupRecommender(Bundle.load(tiny_bundle.folder), engine="onnx", device="cpu")
    texts = rec.generate(histories(rec.bundle, 3))
    assert len(texts) == 3 and rec._index is None


def test_bundle_refuses_what_it_cannot_serve(tiny_bundle, tmp_path: Path):
    with pytest.raises(BundleError, match="not a model bundle"):
        Bundle.load(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle.folder, broken, ignore=shutil.ignore_patterns("*.onnx", "merged", "onnx"))
    (broken / "vectors" / "lstm.npy").unlink()
    with pytest.raises(BundleError, match="incomplete bundle"):
        Bundle.load(broken)
    manifest = json.loads((tiny_bundle.folder / MANIFEST).read_text())
    (broken / MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(BundleError, match="format 99"):
        Bundle.load(broken)
    with pytest.raises(BundleError, match="trained on data"):
        Bundle.load(tiny_bundle.folder).require_data("0000")


def test_fast_path_is_the_top_of_its_whole_catalog_scores(tiny_bundle):
    """The last-title mix-up: the bundle's fast fusion (anchor 1: the last title is the whole
    text query) through the same search, equal to the scores evaluation ranks; an empty LLM
    text gets the same answer from recommend, and says so."""
    rec = MixupRecommender(Bundle.load(tiny_bundle.folder))
    assert rec.fast_fusion.anchor == 1.0 and "fast_fusion" in rec.bundle.manifest["encoders"]["lstm"]
    hist = histories(rec.bundle)
    fast = rec.recommend_fast(hist, k=10)
    scores = rec.fast_answer_scores(hist, rec.user_states(hist))
    for answer, row in zip(fast, scores, strict=True):
        assert answer.path == FAST_PATH and not answer.generated_text and len(answer.items) == 10
        assert [h.item_id for h in answer.items] == [rec.item_ids[j] for j in np.argsort(-row, kind="stable")[:10]]
    mixed = rec.recommend(hist, k=10, texts=["", "a dress"] * (len(hist) // 2))
    assert [a.path for a in mixed] == [FAST_PATH, LLM_PATH] * (len(hist) // 2)
    assert [h.item_id for h in mixed[0].items] == [h.item_id for h in fast[0].items]


@pytest.mark.parametrize("mode", ["open", "closed", "bundle"])
def test_serve_is_the_gate_choosing_between_the_two_paths(tiny_bundle, mode):
    rec = MixupRecommender(Bundle.load(tiny_bundle.folder), gate=mode)
    hist = histories(rec.bundle)
    texts = ["a dress"] * len(hist)
    served = rec.serve(hist, k=10, texts=texts)
    fast, llm = rec.recommend_fast(hist, k=10), rec.recommend(hist, k=10, texts=texts)
    for s, f, m in zip(served, fast, llm, strict=True):
        assert s.gate is not None and (s.gate.send if mode == "open" else not s.gate.send if mode == "closed" else True)
        assert [h.item_id for h in s.items] == [h.item_id for h in (m if s.gate.send else f).items]
        assert s.path == (LLM_PATH if s.gate.send else FAST_PATH)
