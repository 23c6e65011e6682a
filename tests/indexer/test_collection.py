"""The bundle's vectors in a real Milvus (the embedded Milvus Lite server): built into a
collection per bundle version behind an alias, searched with the same top K as the
in-process index, shared by several clients at once."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from indexer.build import build_index
from indexer.collection import ItemCollection, alias_target, collection_name, connect
from models.bundle import MANIFEST, Bundle, bundle_version
from models.mixup import Fusion
from models.recommender import History, MixupRecommender
from serving.retriever import repeat_hits, split_hits
from stylestream.devstack.milvus import EmbeddedMilvus, running_endpoint

pytestmark = pytest.mark.slow

ALIAS = "test_items"


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("milvus-home")
    server = EmbeddedMilvus(home / "milvus" / "data").start()
    yield server, home
    server.stop()


def queries_for(rec: MixupRecommender, n: int = 8) -> tuple[list[History], np.ndarray, list[list[str]]]:
    items = rec.item_ids
    hist = [History.of(items[5 * r:5 * r + 3], ["click", "purchase", "purchase"]) for r in range(n)]
    texts = rec.generate(hist)
    vecs = rec.text_vectors(texts)
    q = rec.queries(vecs, rec.user_states(hist))
    return hist, q, rec.exclusions(hist, vecs, rec.stored_vectors)


def test_milvus_search_equals_the_in_process_index(milvus, tiny_bundle):
    server, home = milvus
    assert running_endpoint(home) == server.uri, "other processes of this home find the server"
    client = connect(server.uri)
    bundle = Bundle.load(tiny_bundle.folder)
    report = build_index(client, bundle, ALIAS, progress=False)
    assert report.collection == collection_name(ALIAS, bundle.version) and report.index == "FLAT"
    assert alias_target(client, ALIAS) == report.collection
    items = ItemCollection(client, ALIAS)
    assert items.count() == len(bundle.items())
    rec = MixupRecommender(bundle, engine="onnx", device="cpu")
    hist, q, exclude = queries_for(rec)
    served = items.search(q, k=10, exclude=exclude)
    local = rec.search(q, exclude, 10)
    for a, b in zip(served, local, strict=True):
        assert [h.item_id for h in a] == [h.item_id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
        assert all(h.title for h in a)
    stored = items.vectors([hist[0].bought()[0], "no-such-item"])
    np.testing.assert_allclose(stored[hist[0].bought()[0]], rec.stored_vectors(hist[0].bought())[hist[0].bought()[0]],
                               atol=1e-6)
    assert "no-such-item" not in stored
    # the repeat term after the Milvus search (serving) = the in-process search with it
    repeat = MixupRecommender(bundle, engine="onnx", device="cpu",
                              fusion=Fusion(0.5, "logit", 1.0, None, repeat=(3.0, 1.0, 0.2)))
    q = repeat.queries(repeat.text_vectors(["red dress"] * len(hist)), repeat.user_states(hist))
    boosts = repeat.boosts(hist)
    no_exclusions = [[] for _ in hist]
    extra = max(len(b) for b in boosts)
    served = repeat_hits(items, items.search(q, k=10 + extra, exclude=no_exclusions), q, boosts, no_exclusions, 10)
    for a, b in zip(served, repeat.search(q, no_exclusions, 10, boosts), strict=True):
        assert [h.item_id for h in a] == [h.item_id for h in b] and all(h.title for h in a)
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
    # and the repeat/explore split: a second Milvus search at the explore λ, merged
    split = MixupRecommender(bundle, engine="onnx", device="cpu",
                             fusion=repeat.fusion.with_repeat(repeat.fusion.repeat, 2, 0.9))
    texts = ["red dress"] * len(hist)
    explore_q = split.queries(split.text_vectors(texts), split.user_states(hist), split.fusion.explore())
    own = repeat_hits(items, items.search(q, k=10 + extra, exclude=no_exclusions), q, boosts, no_exclusions, None)
    merged = split_hits(own, items.search(explore_q, k=12, exclude=no_exclusions), hist, 2, 10)
    local = split.recommend(hist, k=10, texts=texts)
    for a, b in zip(merged, local, strict=True):
        assert [h.item_id for h in a] == [h.item_id for h in b.items] and all(h.title for h in a)
    # the anchored text query with the last items' titles from Milvus (serving) = in process
    anchored = MixupRecommender(bundle, engine="onnx", device="cpu", fusion=repeat.fusion.with_anchor(0.5))
    vecs = anchored.text_vectors(texts)
    np.testing.assert_allclose(anchored.text_query(hist, vecs, items.vectors), anchored.text_query(hist, vecs),
                               atol=1e-6)
    again = build_index(client, bundle, ALIAS, progress=False)
    assert again.reused and again.collection == report.collection
    client.close()


def test_a_new_bundle_gets_its_own_collection_and_the_alias(milvus, tiny_bundle, tmp_path: Path):
    server, _ = milvus
    client = connect(server.uri)
    first = Bundle.load(tiny_bundle.folder)
    build_index(client, first, ALIAS, progress=False)
    versions = []
    for lam in (0.25, 0.75):  # a re-chosen λ is a new bundle version; its vectors are unchanged
        folder = tmp_path / f"lam{lam}"
        shutil.copytree(tiny_bundle.folder, folder, ignore=shutil.ignore_patterns("llm"))
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["encoders"]["lstm"]["fusion"]["lam"] = lam
        manifest["version"] = bundle_version({"from": manifest["version"], "lam": lam})
        (folder / MANIFEST).write_text(json.dumps(manifest))
        (folder / "llm" / "merged").mkdir(parents=True)
        (folder / "llm" / "merged" / "config.json").write_text("{}")
        report = build_index(client, Bundle.load(folder), ALIAS, progress=False)
        versions.append(report)
    assert alias_target(client, ALIAS) == versions[1].collection
    assert versions[1].previous == versions[0].collection
    assert collection_name(ALIAS, first.version) in versions[1].dropped, "older than the previous: dropped"
    assert set(client.list_collections()) >= {versions[0].collection, versions[1].collection}
    client.close()


def test_several_clients_share_the_server_while_one_writes(milvus, tiny_bundle):
    server, _ = milvus
    setup = connect(server.uri)
    bundle = Bundle.load(tiny_bundle.folder)
    build_index(setup, bundle, ALIAS, progress=False)
    scratch = ItemCollection(setup, "test_scratch_writes").create(bundle.item_vectors().shape[1])
    q = bundle.item_vectors()[:4]
    errors: list[BaseException] = []
    found: list[int] = []

    def read() -> None:
        client = connect(server.uri)
        try:
            items = ItemCollection(client, collection_name(ALIAS, bundle.version))
            for _ in range(15):
                found.append(sum(len(row) for row in items.search(q, k=5)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    def write() -> None:
        client = connect(server.uri)
        try:
            target = ItemCollection(client, "test_scratch_writes")
            for r in range(15):
                target.upsert([{"item_id": f"w{r}-{j}", "vector": q[j % 4].tolist(), "title": "t", "category": "c",
                                "in_stock": True, "imputed": False, "bundle_version": "x", "ts": float(r),
                                "indexed_at": 0.0}
                               for j in range(20)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=read), threading.Thread(target=read), threading.Thread(target=write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert found == [20] * 30, "every search of both readers answered in full"
    scratch.finish()
    assert scratch.count() == 300
    setup.close()
