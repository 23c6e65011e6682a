"""The indexer worker on the real embedded broker and Milvus Lite server: catalog.updates
in, Milvus rows out; bad records dead-lettered with their reasons and every record
accounted for; a worker killed mid-batch and restarted leaves no drift."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from harness import read_topic, wait_for
from kafka import KafkaProducer

from indexer.build import build_index
from indexer.catalog_file import catalog_updates, publish_catalog, read_catalog
from indexer.collection import ItemCollection, connect
from indexer.reconcile import find_drift
from indexer.sync import CatalogSync
from models.bundle import Bundle
from models.recommender import MixupRecommender
from stylestream.config import Settings
from stylestream.devstack import DevStack
from stylestream.records import CATALOG, DLQ

pytestmark = pytest.mark.slow


@pytest.fixture
def indexed(tmp_path, tiny_bundle):
    settings = Settings.from_env({"STYLESTREAM_HOME": str(tmp_path / "home")}, bundle=tiny_bundle.folder,
                                 dataset=tiny_bundle.data_dir, index_batch_size=64, index_batch_wait_ms=200)
    stack = DevStack(settings)
    try:
        bootstrap = stack.start_broker()
        client = connect(stack.start_milvus())
        bundle = Bundle.load(tiny_bundle.folder)
        build_index(client, bundle, settings.milvus_collection, progress=False)
        stack.start_indexer()
        yield stack, bootstrap, client, bundle
        client.close()
    finally:
        stack.close()


def send(bootstrap: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for key, value in records:
        producer.send(CATALOG, key=key, value=value)
    producer.flush()
    producer.close()


def upsert(item: str, ts: float, **fields: object) -> tuple[bytes, bytes]:
    return item.encode(), json.dumps({"op": "upsert", "item_id": item, "ts": ts, **fields}).encode()


def title_query(bundle: Bundle, title: str) -> np.ndarray:
    rec = MixupRecommender(bundle)
    return rec.queries(rec.text_vectors([title]), np.zeros((1, rec.sasrec.cfg.dim), np.float32),
                       rec.fusion.with_lambda(1.0))


def test_a_new_item_is_searchable_within_the_batch_wait(indexed):
    stack, bootstrap, client, bundle = indexed
    alias = stack.settings.milvus_collection
    title = "Quorra saffron pleated taffeta midi skirt"
    q, items = title_query(bundle, title), ItemCollection(client, alias)
    sent = time.monotonic()
    send(bootstrap, [upsert("brand-new", time.time(), title=title, category="skirt")])
    wait_for(lambda: [h.item_id for h in items.search(q, 1)[0]] == ["brand-new"], 30, "the new item in search")
    visible = time.monotonic() - sent
    row = ItemCollection(client, alias).rows(["brand-new"])["brand-new"]
    assert row["imputed"] and row["in_stock"]
    print(f"update → searchable in {visible:.2f} s (batch wait 0.2 s)")


def test_bad_records_are_dead_lettered_and_every_record_is_counted(indexed):
    stack, bootstrap, client, bundle = indexed
    good = [upsert(f"ok-{i}", 1.0, title=f"Plain grey cotton tee {i}", category="t-shirt") for i in range(5)]
    bad = [(b"x", b"not json"), (None, json.dumps({"op": "upsert", "ts": 1.0, "title": "no id"}).encode()),
           upsert("u1", 1.0, title=12345), (b"u2", json.dumps({"op": "merge", "item_id": "u2", "ts": 1}).encode()),
           upsert("u3", 1.0, title="x" * 5000), (b"other", json.dumps({"op": "delete", "item_id": "u4",
                                                                        "ts": 1}).encode())]
    send(bootstrap, good[:2] + bad + good[2:])
    def settled() -> bool:
        stats = stack.indexer.stats()
        return stats["read"] == len(good) + len(bad) and stats["read"] == stats["applied"] + stats["dead_lettered"]

    wait_for(settled, 60, "every record read and either applied or dead-lettered")
    stats = stack.indexer.stats()
    assert (stats["applied"], stats["dead_lettered"]) == (len(good), len(bad))
    letters = [json.loads(m.value) for m in read_topic(bootstrap, DLQ)]
    reasons = " | ".join(sorted(letter["error"] for letter in letters if letter["topic"] == CATALOG))
    for expected in ("bad JSON", "item_id: Field required", "title: Input should be a valid string",
                     "op: Input should be 'upsert' or 'delete'", "longer than 1024 bytes", "does not match item_id"):
        assert expected in reasons, reasons
    assert set(ItemCollection(client, stack.settings.milvus_collection).rows([f"ok-{i}" for i in range(5)])) == \
        {f"ok-{i}" for i in range(5)}


def test_an_indexer_killed_mid_batch_leaves_no_drift_after_restart(indexed, tmp_path):
    stack, bootstrap, client, bundle = indexed
    alias = stack.settings.milvus_collection
    catalog = read_catalog(stack.settings.dataset_dir)
    catalog["title"] = catalog["title"] + " (new season)"  # every vector must be made again
    catalog.loc[catalog.index[::7], "in_stock"] = False
    publish_catalog(catalog, bootstrap, ts=100.0, progress=False)
    wait_for(lambda: stack.indexer.stats()["applied"] > 0, 60, "the first batch")
    stack.stop_indexer(kill=True)
    stack.start_indexer()
    wait_for(lambda: find_drift(ItemCollection(client, alias), catalog,
                                CatalogSync(client, alias).live()[1], vector_sample=0).total == 0,
             120, "no drift between Milvus and the published catalog")
    assert len(list(catalog_updates(catalog, 1.0))) == len(catalog)
