"""Catalog updates applied to a real Milvus (the embedded Milvus Lite server), without
Kafka: new items with imputed ID vectors, deletes with tombstones, stock filtering,
idempotent replays, older updates losing, and a rebuild that carries the live catalog."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.build import build_index
from indexer.collection import ItemCollection, alias_target, connect
from indexer.sync import CatalogSync
from models.bundle import Bundle
from models.item_vectors import ItemVectorizer
from models.recommender import MixupRecommender
from stylestream.devstack.milvus import EmbeddedMilvus
from stylestream.records import CatalogUpdate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory):
    server = EmbeddedMilvus(tmp_path_factory.mktemp("sync-milvus") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def live(milvus, tiny_bundle, request):
    client = connect(milvus.uri)
    alias = f"sync_{request.node.name[5:30]}"
    bundle = Bundle.load(tiny_bundle.folder)
    build_index(client, bundle, alias, progress=False)
    yield client, alias, bundle
    client.close()


def upsert(item: str, ts: float, **fields: object) -> CatalogUpdate:
    return CatalogUpdate(op="upsert", item_id=item, ts=ts, **fields)


def title_query(bundle: Bundle, title: str) -> np.ndarray:
    rec = MixupRecommender(bundle)
    return rec.queries(rec.text_vectors([title]), np.zeros((1, rec.sasrec.cfg.dim), np.float32),
                       rec.fusion.with_lambda(1.0))


def found(client, alias: str, q: np.ndarray, k: int = 5) -> list[str]:
    return [h.item_id for h in ItemCollection(client, alias).search(q, k)[0]]


def test_item_vectors_match_what_the_bundle_stored(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    items = bundle.items()
    made = ItemVectorizer(bundle).vectors(items["item_id"].astype(str).tolist(),
                                          items["title"].fillna("").tolist(), items["category"].tolist())
    assert (made.imputed == items["imputed"].to_numpy(bool)).all()
    np.testing.assert_allclose(made.vectors, bundle.item_vectors(), atol=1e-4)  # the bundle's own rule
    new = ItemVectorizer(bundle).vectors(["never-seen"], [items["title"].iloc[0]], [items["category"].iloc[0]])
    assert new.imputed.all() and np.allclose(new.vectors[0, :8], bundle.item_vectors()[0, :8], atol=1e-5)


def test_a_new_item_is_found_by_its_own_title_with_an_imputed_id_vector(live):
    client, alias, bundle = live
    title = "Zephyrine ultramarine sequin ballgown"
    report = CatalogSync(client, alias).apply([upsert("new-1", 10.0, title=title, category="dress")])
    assert (report.upserted, report.imputed) == (1, 1)
    row = ItemCollection(client, alias).rows(["new-1"])["new-1"]
    assert row["imputed"] and row["in_stock"] and row["title"] == title and row["ts"] == 10.0
    assert found(client, alias, title_query(bundle, title))[0] == "new-1"


def test_delete_stock_and_older_updates(live):
    client, alias, bundle = live
    sync = CatalogSync(client, alias)
    item = bundle.items()["item_id"].astype(str).iloc[3]
    title = bundle.items()["title"].iloc[3]
    q = title_query(bundle, title)
    assert item in found(client, alias, q)
    sync.apply([upsert(item, 5.0, in_stock=False)])
    assert item not in found(client, alias, q), "out of stock: filtered out"
    row = ItemCollection(client, alias).rows([item])[item]
    assert row["title"] == title and not row["imputed"], "a stock change keeps title and trained vector"
    assert sync.apply([upsert(item, 4.0, in_stock=True)]).older == 1, "an older update does not win"
    assert item not in found(client, alias, q)
    sync.apply([upsert(item, 6.0, in_stock=True)])
    assert item in found(client, alias, q), "back in stock"
    gone = sync.apply([CatalogUpdate(op="delete", item_id=item, ts=7.0)])
    assert gone.deleted == 1 and gone.deleted_at == {item: 7.0}
    assert ItemCollection(client, alias).rows([item]) == {}
    late = sync.apply([upsert(item, 6.5, title=title)], tombstones=gone.deleted_at)
    assert late.older == 1 and ItemCollection(client, alias).rows([item]) == {}, "the tombstone holds"


def test_replaying_the_same_updates_leaves_the_same_collection(live):
    client, alias, bundle = live
    ids = bundle.items()["item_id"].astype(str).tolist()
    log = [upsert("r-new", 1.0, title="Orla mint linen shirt", category="shirt"),
           upsert(ids[0], 2.0, title="Renamed sage wool coat"), upsert(ids[1], 2.0, in_stock=False),
           CatalogUpdate(op="delete", item_id=ids[2], ts=3.0), upsert("r-new", 0.5, title="stale title")]
    sync = CatalogSync(client, alias)

    def snapshot() -> dict:
        rows = ItemCollection(client, alias).rows(["r-new", *ids[:3]], vectors=True)
        return {k: {f: (np.round(v, 5).tolist() if f == "vector" else v) for f, v in r.items() if f != "indexed_at"}
                for k, r in rows.items()}

    tomb = sync.apply(log).deleted_at
    first = snapshot()
    assert sync.apply(log, tombstones=tomb).older >= 1
    assert snapshot() == first
    assert first["r-new"]["title"] == "Orla mint linen shirt", "per item, the newest update wins"


def test_a_rebuild_carries_the_live_catalog_and_switches_without_a_gap(live):
    client, alias, bundle = live
    sync = CatalogSync(client, alias)
    ids = bundle.items()["item_id"].astype(str).tolist()
    sync.apply([upsert("carry-1", 1.0, title="Brisby cobalt velvet blazer", category="blazer"),
                upsert(ids[4], 1.0, in_stock=False), CatalogUpdate(op="delete", item_id=ids[5], ts=1.0)])
    before = alias_target(client, alias)
    report = build_index(client, bundle, alias, rebuild=True, progress=False, settle_s=0.1)
    assert report.catalog == "live" and report.collection != before and report.previous == before
    assert alias_target(client, alias) == report.collection
    rows = ItemCollection(client, alias).rows(["carry-1", ids[4], ids[5]])
    assert set(rows) == {"carry-1", ids[4]} and not rows[ids[4]]["in_stock"] and rows["carry-1"]["imputed"]
    assert ItemCollection(client, alias).count() == len(ids)  # one added, one deleted


def test_searches_never_fail_or_come_back_empty_across_an_alias_switch(live, milvus):
    import threading

    client, alias, bundle = live
    q = title_query(bundle, bundle.items()["title"].iloc[0])
    results: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def search() -> None:
        reader = connect(milvus.uri)
        items = ItemCollection(reader, alias)
        while not stop.is_set() or len(results) < 20:
            try:
                results.append(len(items.search(q, 10)[0]))
            except Exception as exc:  # noqa: BLE001 - the test counts them
                errors.append(str(exc))
        reader.close()

    thread = threading.Thread(target=search)
    thread.start()
    try:
        switches = [build_index(client, bundle, alias, rebuild=True, progress=False, settle_s=0.0) for _ in range(3)]
    finally:
        stop.set()
        thread.join(60)
    assert len({s.collection for s in switches}) == 3 and alias_target(client, alias) == switches[-1].collection
    assert not errors, errors[:3]
    assert results and all(n == 10 for n in results), "every search answered in full"


def test_reconcile_finds_each_kind_of_drift_and_repair_removes_it(live):
    from indexer.catalog_file import read_catalog
    from indexer.reconcile import find_drift, index_stats, repair

    client, alias, bundle = live
    sync = CatalogSync(client, alias)
    vectorizer = sync.live()[1]
    catalog = read_catalog(bundle.folder / "items.parquet")
    ids = catalog["item_id"].tolist()
    items = ItemCollection(client, alias)
    assert find_drift(items, catalog, vectorizer, vector_sample=0).total == 0, "a fresh build matches its catalog"
    items.delete([ids[0]])  # missing
    sync.apply([upsert("stray", 1.0, title="Stray olive parka", category="coat"),  # extra
                upsert(ids[1], 1.0, in_stock=False)])  # stale field
    row = items.rows([ids[2]], vectors=True)[ids[2]]
    row["vector"] = (-np.asarray(row["vector"])).tolist()  # stale vector
    items.upsert([row])
    drift = find_drift(items, catalog, vectorizer, vector_sample=0)
    assert (drift.missing, drift.extra, drift.stale_fields, drift.stale_vectors) == \
        ([ids[0]], ["stray"], [ids[1]], [ids[2]])
    stats = index_stats(items)
    assert stats["items"] == len(ids) and stats["out_of_stock"] == 1 and stats["imputed"] >= 1
    assert repair(items, catalog, vectorizer, drift) == 4
    assert find_drift(items, catalog, vectorizer, vector_sample=0).total == 0


def test_catch_up_copies_what_the_indexer_wrote_to_the_old_collection_during_a_build(live):
    import time

    from indexer.build import catch_up

    client, alias, bundle = live
    old_name = alias_target(client, alias)
    snapshot = set(bundle.items()["item_id"].astype(str))
    since = time.time()
    fresh = build_index(client, bundle, alias, rebuild=True, progress=False, settle_s=0.0)  # nothing to catch yet
    assert fresh.caught_up == 0
    old, new = ItemCollection(client, old_name), ItemCollection(client, fresh.collection)
    gone = sorted(snapshot)[7]
    client.create_alias(old_name, "late_writer")  # an indexer batch that resolved the alias before the switch
    try:
        CatalogSync(client, "late_writer").apply([
            upsert("late-1", 5.0, title="Ferncombe rust corduroy trousers", category="trousers"),
            CatalogUpdate(op="delete", item_id=gone, ts=5.0)])
    finally:
        client.drop_alias("late_writer")
    assert catch_up(old, new, bundle, since, snapshot) == 2
    rows = new.rows(["late-1", gone])
    assert set(rows) == {"late-1"} and rows["late-1"]["imputed"] and rows["late-1"]["ts"] == 5.0
