"""The live pipeline against a real embedded broker and a real Faust worker process."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter

import pytest
from fuzz_records import event_mix
from harness import dumps, event, read_topic, wait_for
from kafka import KafkaProducer

from stylestream.records import CLICKS, DLQ, PURCHASES, RECS

pytestmark = pytest.mark.slow

MALFORMED = [
    # (topic, key, raw value, expected reason fragment)
    (CLICKS, b"u1", b"{not json", "bad JSON"),
    (CLICKS, b"u1", b"\xff\xfe\x00garbage", "bad JSON"),
    (CLICKS, b"u1", b"[1, 2, 3]", "expected an object"),
    (PURCHASES, b"u1", dumps({"event_id": "x1", "user_id": "u1", "ts": 1.8e9}), "item_id"),
    (PURCHASES, b"u1", dumps({"event_id": "x2", "user_id": "u1", "item_id": "i1", "ts": "yesterday"}), "ts"),
    (CLICKS, b"u1", dumps({"event_id": "x3", "user_id": "u1", "item_id": "i1", "ts": 1.8e9, "kind": "like"}),
     "unknown event kind"),
    (CLICKS, b"u9", dumps({"event_id": "x4", "user_id": "u1", "item_id": "i1", "ts": 1.8e9}), "does not match"),
]


def test_events_become_recommendations_and_bad_input_is_dead_lettered(stack_factory):
    stack = stack_factory(trigger_every_clicks=2, trigger_idle_seconds=0)
    bootstrap = stack.start_broker()
    worker = stack.start_worker()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    users = ("u1", "u2", "u3")
    for user in users:
        for i in range(4):  # clicks 2 and 4 trigger
            producer.send(CLICKS, key=user.encode(), value=dumps(event("click", i, user, f"i{i}")))
    producer.flush()
    # Faust keeps order within a partition, not across topics: purchases go once clicks are in.
    wait_for(lambda: worker.stats()["processed"] >= 12, 60, "the clicks to be processed")
    for user in users:
        producer.send(PURCHASES, key=user.encode(), value=dumps(event("purchase", 99, user, "i5")))
    good = 15
    for topic, key, raw, _ in MALFORMED:
        producer.send(topic, key=key, value=raw)
    producer.flush()
    sent = good + len(MALFORMED)

    wait_for(lambda: worker.stats()["received"] >= sent, 60, "the worker to see every record")
    stats = worker.stats()
    assert stats["received"] == stats["processed"] + stats["dead_lettered"] + stats["duplicates"] == sent
    assert stats["dead_lettered"] == len(MALFORMED)
    assert worker.proc.poll() is None, "worker must survive bad input"

    wait_for(lambda: len(read_topic(bootstrap, RECS, 1000)) >= 9, 30, "9 recommendations")
    recs = [json.loads(m.value) for m in read_topic(bootstrap, RECS)]
    assert Counter(r["user_id"] for r in recs) == {"u1": 3, "u2": 3, "u3": 3}
    for m in read_topic(bootstrap, RECS):
        rec = json.loads(m.value)
        assert m.key.decode() == rec["user_id"]
        assert len(rec["items"]) == 10 and all(it["title"] for it in rec["items"])
        if rec["trigger_event_id"] == "p99":
            assert "i5" not in {it["item_id"] for it in rec["items"]}, "bought item not recommended"

    letters = [json.loads(m.value) for m in read_topic(bootstrap, DLQ)]
    assert len(letters) == len(MALFORMED)
    for letter in letters:
        assert letter["topic"] in (CLICKS, PURCHASES) and letter["error"] and letter["raw"]
    reasons = " | ".join(letter["error"] for letter in letters)
    for *_, fragment in MALFORMED:
        assert fragment in reasons
    assert any(letter["raw"].startswith("base64:") for letter in letters), "undecodable bytes kept as base64"


def test_worker_killed_mid_stream_recovers_its_table_exactly(stack_factory):
    """SIGKILL the worker while events stream in, after it has committed offsets; restart it.

    The new worker must rebuild the table from its changelog (committed events are not
    redelivered, so anything missing there is lost) and skip redelivered uncommitted ones:
    every user's distinct-event count must equal what was sent.
    """
    stack = stack_factory(sequence_length=20, trigger_every_clicks=0, trigger_idle_seconds=0)
    bootstrap = stack.start_broker()
    worker = stack.start_worker()
    users = [f"u{i}" for i in range(40)]
    sent: Counter[str] = Counter()
    total = 5000

    def send() -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        for i in range(total):
            user = users[i % len(users)]
            topic, kind = (PURCHASES, "purchase") if i % 10 == 0 else (CLICKS, "click")
            producer.send(topic, key=user.encode(), value=dumps(event(kind, i, user, f"i{i % 30}")))
            sent[user] += 1
            if i % 50 == 0:
                time.sleep(0.05)  # ~1,000 events/s: the kill lands mid-stream
        producer.flush()
        producer.close()

    sender = threading.Thread(target=send)
    sender.start()
    wait_for(lambda: worker.stats()["processed"] >= 1500, 60, "the worker to process (and commit) a while")
    stack.stop_worker(worker, kill=True)
    worker = stack.start_worker()
    assert "did not stop cleanly" in worker.log_path.read_text(), "the killed worker's local store is rebuilt"
    sender.join(60)
    assert sum(sent.values()) == total
    try:
        wait_for(lambda: all_counts(worker, users) == sent, 120, "every event exactly once in the table")
    except AssertionError:
        got = all_counts(worker, users)
        diff = {u: (got[u], sent[u]) for u in users if got[u] != sent[u]}
        raise AssertionError(f"table counts (got, sent) differ for {len(diff)} users: {diff}; "
                             f"stats {worker.stats()}") from None
    for user in users:
        seq = worker.get(f"/users/{user}/")
        ids = [e[0] for e in seq["events"]]
        assert len(ids) == len(set(ids)) == 20, "rolling window of distinct events"
        assert [e[3] for e in seq["events"]] == sorted(e[3] for e in seq["events"])
    assert worker.proc.poll() is None


def all_counts(worker, users) -> Counter:
    return Counter({u: worker.get(f"/users/{u}/").get("n", 0) for u in users})


def commit_at_log_end(bootstrap: str, group: str, topics: tuple[str, ...]) -> int:
    """Commit ``group``'s offsets at the end of every partition of ``topics`` (an empty group:
    its members gone); returns how many events that skips past."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t)]
    ends = consumer.end_offsets(tps)
    before = {tp: consumer.committed(tp) or 0 for tp in tps}
    consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
    consumer.close()
    return sum(ends[tp] - before[tp] for tp in tps)


def test_events_committed_but_never_applied_are_read_again(stack_factory):
    """The group's committed offsets moved past events no worker applied (what Faust once did
    around a rebalance: see streams/source_offsets.py). A worker starting from them finds the
    stretch missing against its table's checkpoint (its audit does, as no event follows),
    reads it again, and every event is applied exactly once."""
    stack = stack_factory(sequence_length=20, trigger_every_clicks=0, trigger_idle_seconds=0)
    bootstrap = stack.start_broker()
    worker = stack.start_worker()
    users = [f"u{i}" for i in range(8)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    sent: Counter[str] = Counter()

    def send(numbers: range) -> None:
        for i in numbers:
            user = users[i % len(users)]
            topic, kind = (PURCHASES, "purchase") if i % 10 == 0 else (CLICKS, "click")
            producer.send(topic, key=user.encode(), value=dumps(event(kind, i, user, f"i{i % 30}")))
            sent[user] += 1
        producer.flush()

    send(range(200))
    wait_for(lambda: worker.stats()["processed"] == 200, 60, "the first 200 events")
    stack.stop_worker(worker, leave_group=True)
    send(range(200, 400))
    assert commit_at_log_end(bootstrap, "stylestream", (CLICKS, PURCHASES)) == 200
    worker = stack.start_worker()  # nothing new arrives: the audit finds the gaps
    wait_for(lambda: all_counts(worker, users) == sent, 60, "the skipped 200 events applied")
    stats = worker.stats()
    assert stats["rewinds"] >= 1 and stats["processed"] == 200, stats
    send(range(400, 480))  # and the stream goes on from there
    wait_for(lambda: all_counts(worker, users) == sent, 60, "80 more events")
    producer.close()


def test_a_worker_on_uvloop_processes_and_dead_letters_like_any_other(stack_factory):
    """STYLESTREAM_EVENT_LOOP=uvloop (what k8s runs): the worker really runs on uvloop and
    the stream behaves the same."""
    stack = stack_factory(event_loop="uvloop", trigger_every_clicks=2, trigger_idle_seconds=0)
    bootstrap = stack.start_broker()
    worker = stack.start_worker()
    assert worker.stats()["event_loop"] == "uvloop"
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i in range(30):
        producer.send(CLICKS, key=b"u1", value=dumps(event("click", i, "u1", item=f"i{i % 7}")))
    producer.send(CLICKS, key=b"u1", value=b"{not json")
    producer.flush()
    producer.close()
    wait_for(lambda: [worker.stats()[k] for k in ("processed", "dead_lettered", "recs_published")] == [30, 1, 15],
             60, "30 events processed, 1 dead-lettered, 15 recommendations")
    assert worker.get("/users/u1/")["n"] == 30


def test_worker_stops_cleanly_on_sigterm_and_its_successor_keeps_its_local_tables(stack_factory):
    """A clean stop marks the local store as what the changelog holds (stylestream.table_store):
    the next worker keeps it, where after a kill it rebuilds it."""
    stack = stack_factory(trigger_every_clicks=0, trigger_idle_seconds=0)
    bootstrap = stack.start_broker()
    worker = stack.start_worker()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(20):
        producer.send(CLICKS, key=b"u1", value=dumps(event("click", i, "u1", f"i{i}")))
    producer.flush()
    producer.close()
    wait_for(lambda: worker.stats()["processed"] == 20, 60, "20 events")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    stack.stop_worker(worker)  # gone already: the successor takes its id, worker-1, and its folder
    worker = stack.start_worker()
    assert "did not stop cleanly" not in worker.log_path.read_text()
    assert worker.get("/users/u1/")["n"] == 20


def test_a_fuzzed_mix_of_events_is_conserved_and_nothing_malformed_enters_a_sequence(stack_factory):
    """3,000 events, 1,000 of them broken in twelve ways (what a new user's first try sent):
    every one is processed, a duplicate or a dead letter, and each malformed one is the latter."""
    stack = stack_factory(trigger_every_clicks=0, trigger_idle_seconds=0)
    bootstrap = stack.start_broker()
    worker = stack.start_worker()
    mix = event_mix(3_000, 1_000, users=50)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 * 1024 * 1024)
    for sent in mix:
        producer.send(sent.topic, key=sent.key, value=sent.value)
    producer.flush()
    producer.close()

    wait_for(lambda: worker.stats()["received"] >= len(mix), 120, "the worker to see every record")
    stats = worker.stats()
    duplicates = sum(s.duplicate for s in mix)
    assert stats["received"] == stats["processed"] + stats["duplicates"] + stats["dead_lettered"] == 3_000
    assert (stats["dead_lettered"], stats["duplicates"]) == (1_000, duplicates)
    reasons = Counter(json.loads(m.value)["error"].split(":")[0] for m in read_topic(bootstrap, DLQ))
    assert sum(reasons.values()) == 1_000
    assert {"no key", "bad JSON", "invalid record", "empty value (tombstone)"} <= set(reasons)
    applied = 0
    for user in {s.key.decode() for s in mix if not s.malformed}:
        seq = worker.get(f"/users/{user}/")
        applied += seq["n"]
        assert all(len(e[0]) < 32 and 1.8e9 <= e[3] < 1.9e9 for e in seq["events"]), "only good events"
    assert applied == 2_000 - duplicates
    assert worker.proc.poll() is None


def listeners(port: int) -> set[str]:
    """The addresses a TCP port on this machine listens on."""
    import psutil

    return {c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_broker_and_worker_listen_on_loopback_only(stack_factory):
    stack = stack_factory()
    stack.start_broker()
    worker = stack.start_worker()
    assert listeners(int(stack.bootstrap.rsplit(":", 1)[1])) == {"127.0.0.1"}
    assert listeners(worker.web_port) == {"127.0.0.1"}
