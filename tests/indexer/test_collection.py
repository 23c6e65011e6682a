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
from models.train import ALWAYS_EXCLUDE
from serving.retriever import TitledSearch
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
    # the Retriever's answer: the one recommend() with Milvus as its search = in process, for
    # the repeat term, the repeat/explore split and the anchored text query (titles carried)
    texts = ["red dress"] * len(hist)
    repeat = Fusion(0.5, "logit", 1.0, None, repeat=(3.0, 1.0, 0.2))
    for fusion in (repeat, repeat.with_repeat(repeat.repeat, 2, 0.9), repeat.with_anchor(0.5),
                   Fusion(0.7, "logit", 1.0, ALWAYS_EXCLUDE, anchor=0.3)):
        rec = MixupRecommender(bundle, engine="onnx", device="cpu", fusion=fusion)
        titled = TitledSearch(items)
        served = rec.recommend(hist, k=10, texts=texts, backend=titled)
        titles = titled.titles_of([h.item_id for a in served for h in a.items])
        for a, b in zip(served, rec.recommend(hist, k=10, texts=texts), strict=True):
            assert [h.item_id for h in a.items] == [h.item_id for h in b.items], fusion
            np.testing.assert_allclose([h.score for h in a.items], [h.score for h in b.items], atol=1e-4)
            assert all(titles.get(h.item_id) for h in a.items)
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
