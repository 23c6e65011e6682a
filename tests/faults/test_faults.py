"""Faults with real processes on loopback: a stream worker, the broker, Milvus Lite and Ray Serve
killed or taken away under load, and what the stack owes afterwards (nothing lost, nothing
counted twice, recommendations on the fallback path meanwhile, the LLM path back after)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest
from harness import dumps, event, kill_generator_replicas, wait_for
from kafka import KafkaProducer

from stylestream.records import CLICKS, PURCHASES

pytestmark = pytest.mark.slow


def record(fault: str, **values: object) -> None:
    """Keep a fault's measurements for bench/bench_faults.py, which sets
    ``STYLESTREAM_FAULTS_RESULTS`` to a JSON file (nothing is written otherwise)."""
    path = os.environ.get("STYLESTREAM_FAULTS_RESULTS")
    if path:
        import json
        from pathlib import Path

        out = Path(path)
        data = json.loads(out.read_text()) if out.is_file() else {}
        data[fault] = {k: round(v, 2) if isinstance(v, float) else v for k, v in values.items()}
        out.write_text(json.dumps(data, indent=2) + "\n")


def all_counts(worker, users) -> Counter | None:
    """Every shopper's distinct-event count as ``worker`` answers it (routed to the owner), or
    None while some page fails (its owner is gone and the group has not moved it yet)."""
    try:
        return Counter({u: worker.get(f"/users/{u}/").get("n", 0) for u in users})
    except OSError:
        return None


def leader_of(workers) -> str | None:
    """The worker whose log says it was (last) elected group leader."""
    leader = None
    for w in workers:
        text = w.log_path.read_text(errors="replace")
        if "Elected group leader" in text:
            leader = w.worker_id if leader is None else leader
    return leader


def sent_event(i: int, users: list[str]) -> tuple[str, str, bytes]:
    """Event number ``i`` of a stream: (topic, user, value); every 10th a purchase, ids unique."""
    user = users[i % len(users)]
    topic, kind = (PURCHASES, "purchase") if i % 10 == 0 else (CLICKS, "click")
    return topic, user, dumps(event(kind, i, user, f"i{i % 30}"))


class Sender:
    """Events ``start .. start+total-1`` for ``users`` at ~1,000/s from a thread. ``acked``: event
    number -> when (monotonic) the broker acknowledged it; ``failed``: those the producer gave up on."""

    def __init__(self, bootstrap: str, users: list[str], total: int, start: int = 0, **producer: object):
        self.bootstrap, self.users, self.total, self.start = bootstrap, users, total, start
        self.producer_options = {"linger_ms": 5, **producer}
        self.acked: dict[int, float] = {}
        self.failed: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def sent(self) -> Counter:
        """Acknowledged events per user."""
        return Counter(self.users[i % len(self.users)] for i in self.acked)

    def _run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, **self.producer_options)
        futures = []
        for i in range(self.start, self.start + self.total):
            topic, user, value = sent_event(i, self.users)
            future = producer.send(topic, key=user.encode(), value=value)
            future.add_callback(lambda _meta, i=i: self.acked.__setitem__(i, time.monotonic()))
            futures.append((i, future))
            if i % 50 == 0:
                time.sleep(0.05)
        producer.flush()
        for i, future in futures:
            try:
                future.get(timeout=60)
            except Exception:  # noqa: BLE001 - counted, the test decides
                self.failed.append(i)
        producer.close()

    def __enter__(self) -> Sender:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive(), "the sender finished"


def send_indices(bootstrap: str, users: list[str], indices: list[int]) -> Counter:
    """Send again the events numbered ``indices`` (same ids, topics, keys); per-user counts."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i in indices:
        topic, user, value = sent_event(i, users)
        producer.send(topic, key=user.encode(), value=value).get(30)
    producer.close()
    return Counter(users[i % len(users)] for i in indices)


def event_numbers_on_topics(bootstrap: str) -> set[int]:
    """The numbers of every event now on the two event topics."""
    import json

    from harness import read_topic

    return {int(json.loads(m.value)["event_id"][1:]) for topic in (CLICKS, PURCHASES)
            for m in read_topic(bootstrap, topic, 2000)}


GROUP_LOG = ("Recovery", "Commit", "assigned", "Revoking", "rejoin", "ERROR", "WARNING")


def group_history(logs: list) -> str:
    """What the workers' logs say of the group and the table recovery (for a failure message:
    the logs live in a temporary folder that CI does not keep)."""
    out = []
    for path in logs:
        lines = [ln.rstrip() for ln in path.read_text(errors="replace").splitlines() if any(k in ln for k in GROUP_LOG)
                 or ln.startswith("|")]
        out.append(f"--- {path.name} ---\n" + "\n".join(lines[-80:]))
    return "\n".join(out)


def assert_counts(worker, users, sent, timeout, logs: list | None = None) -> None:
    try:
        wait_for(lambda: all_counts(worker, users) == sent, timeout, "every event exactly once in the table")
    except AssertionError:
        got = all_counts(worker, users)
        if got is None:
            raise AssertionError(f"some shopper's page still fails (owner gone); stats {worker.stats()}") from None
        diff = {u: (got[u], sent[u]) for u in users if got[u] != sent[u]}
        raise AssertionError(f"table counts (got, sent) differ for {len(diff)} users: {diff}; "
                             f"stats {worker.stats()}\n{group_history(logs or [])}") from None


# -- 1. a worker of two killed for good ------------------------------------------------------------------


def test_a_killed_worker_of_two_hands_its_shoppers_to_the_survivor(stack_factory):
    """Two workers share the group; both answer any shopper's page (routed to the owner). SIGKILL
    one mid-stream and never restart it; once it is out of the group (its static membership
    removed: noida-db never expires a session) the survivor owns every partition, rebuilds the
    dead one's table partitions from the changelog, and every shopper's distinct-event count
    equals what was sent."""
    stack = stack_factory(sequence_length=20, trigger_every_clicks=0, trigger_idle_seconds=0, session_timeout=6.0)
    bootstrap = stack.start_broker()
    stack.start_worker()
    stack.start_worker()
    w1, w2 = stack.workers
    wait_for(lambda: w1.stats()["ready"] and w2.stats()["ready"], 60, "both workers in the group")
    users = [f"u{i}" for i in range(40)]
    sent = send_indices(bootstrap, users, list(range(400)))
    wait_for(lambda: w1.stats()["processed"] + w2.stats()["processed"] == 400, 60, "the first 400 events")
    assert w1.stats()["processed"] and w2.stats()["processed"], "both workers own partitions"
    for user in users:
        one, two = w1.get(f"/users/{user}/"), w2.get(f"/users/{user}/")
        assert one == two and one["n"] == sent[user], (user, one, two)
    leader = leader_of([w1, w2])  # worker-1 so far (first to join); killing it instead passes too
    victim, survivor = w2, w1

    with Sender(bootstrap, users, 4000, start=400) as sender:
        base = survivor.stats()["processed"] + victim.stats()["processed"]
        wait_for(lambda: survivor.stats()["processed"] + victim.stats()["processed"] >= base + 1200, 60,
                 "the pair to process a while")
        # leave_group: noida-db never expires a session, so without it the dead member keeps its
        # partitions, leader or not (see DevStack.stop_worker); Kafka drops it after session_timeout.
        stack.stop_worker(victim, kill=True, leave_group=True)
        killed_at = time.monotonic()
        wait_for(lambda: all_counts(survivor, users) is not None, 60, "every shopper's page served by the survivor")
        moved_s = time.monotonic() - killed_at
    assert not sender.failed and len(sender.acked) == 4000
    sent.update(sender.sent)
    assert_counts(survivor, users, sent, 120, logs=[w1.log_path, w2.log_path])
    complete_s = time.monotonic() - killed_at
    stats = survivor.stats()
    print(f"leader {leader}; killed {victim.worker_id}; every page served again {moved_s:.1f} s and the table "
          f"complete {complete_s:.1f} s after the kill; stats {stats}")
    record("worker_killed", victim=victim.worker_id, leader=leader, pages_served_again_s=moved_s,
           table_complete_s=complete_s, events_sent=sum(sent.values()), events_lost=0, double_counted=0,
           redelivered_and_skipped=stats["duplicates"])
    assert survivor.proc.poll() is None


# -- 2. the broker killed and restarted -----------------------------------------------------------------------

BROKER_DOWN_S = 5.0


def test_the_broker_killed_and_restarted_under_load_the_worker_applies_what_the_topics_hold(stack_factory):
    """SIGKILL noida-db mid-stream, leave it down 5 s, start it on the same port and data folder.

    What the producer could not deliver meanwhile it keeps and retries (delivery timeout
    60 s); a send that still failed is re-sent after the restart (same event id: the worker
    counts an event once). The worker reconnects by itself and goes on: every event on the
    topics after the restart is in the table exactly once, also those the broker wrote at
    offsets it had lost and handed out again. Then the durability half: every event the
    broker acknowledged must still be on its topic; noida-db loses some, and the test then
    ends as an xfail that counts them. The table is in memory here: with RocksDB (the
    default) the worker stops at once when the changelog comes back shorter than its table
    (Faust ConsistencyError, see the report), which would hide the reconnect this test checks.
    """
    stack = stack_factory(sequence_length=20, trigger_every_clicks=0, trigger_idle_seconds=0, table_store="memory")
    bootstrap = stack.start_broker()
    worker = stack.start_worker()
    users = [f"u{i}" for i in range(40)]
    with Sender(bootstrap, users, 4000, delivery_timeout_ms=60_000) as sender:
        wait_for(lambda: worker.stats()["processed"] >= 1200, 60, "the worker to process (and commit) a while")
        down_at = time.monotonic()
        stack.broker.kill()
        time.sleep(BROKER_DOWN_S)
        stack.restart_broker()
        up_at = time.monotonic()
    if sender.failed:  # given up by the producer: sent again, now that the broker is back
        send_indices(bootstrap, users, sender.failed)
    sent = set(sender.acked) | set(sender.failed)
    assert len(sent) == 4000
    on_topics = event_numbers_on_topics(bootstrap)
    lost = sorted(sent - on_topics)
    # the reconnect: each shopper's count covers every event on the topics, and at most what was sent
    low = Counter(users[i % len(users)] for i in on_topics)
    high = Counter(users[i % len(users)] for i in sent)
    try:
        wait_for(lambda: (got := all_counts(worker, users)) is not None
                 and all(low[u] <= got[u] <= high[u] for u in users) and worker.stats()["received"] >= len(on_topics)
                 and worker.stats()["recs_pending"] == 0, 120, "the worker to catch up after the restart")
    except AssertionError:
        got = all_counts(worker, users)
        raise AssertionError(f"worker alive: {worker.proc.poll() is None}; (low, got, high) per user: "
                             f"{ {u: (low[u], got and got[u], high[u]) for u in users} }") from None
    assert worker.proc.poll() is None, "the worker rides out the broker's restart"
    caught_up = time.monotonic() - up_at
    retried = sum(1 for t in sender.acked.values() if t > down_at)
    print(f"broker killed for {BROKER_DOWN_S:.0f} s: {retried} events acknowledged after the kill (retried by the "
          f"producer), {len(sender.failed)} re-sent; worker caught up {caught_up:.1f} s after the restart; "
          f"{len(lost)} acknowledged events lost by the broker")
    got = all_counts(worker, users)
    record("broker_killed", down_s=BROKER_DOWN_S, worker_caught_up_after_restart_s=caught_up,
           retried_by_producer=retried, re_sent_after_restart=len(sender.failed), events_sent=len(sent),
           acknowledged_lost_by_broker=len(lost), events_missing_from_table=sum((high - got).values()),
           double_counted=sum((got - high).values()))
    if lost:  # the broker's defect, not the pipeline's: what the topics hold was applied exactly once
        acked_before = sum(1 for i in lost if sender.acked.get(i, down_at) < down_at)
        pytest.xfail(f"noida-db 0.2.3 lost {len(lost)} acknowledged events ({acked_before} acknowledged before the "
                     "kill): it saves its Kafka state (kafka.json) once a second, so SIGKILL loses up to ~1 s of "
                     "acknowledged records; a Kafka broker with acks=all and replicas does not")
    assert all_counts(worker, users) == high


# -- 3. Milvus reopened after an unclean stop ------------------------------------------------------------------


class MilvusServerProcess:
    """The optional Milvus standalone server (``pip install milvus==2.3.5``: ``milvus-server``);
    its wrapper starts the ``milvus`` binary, so a crash is SIGKILL of the whole tree."""

    def __init__(self, data_dir):
        from stylestream.devstack.processes import free_port

        self.data_dir, self.port, self.proc = data_dir, free_port(), None

    @staticmethod
    def exe() -> str | None:
        import shutil
        import sys
        from pathlib import Path

        return shutil.which("milvus-server", path=str(Path(sys.executable).parent))

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from stylestream.devstack.processes import spawn, wait_until

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn([self.exe(), "--data", str(self.data_dir), "--proxy-port", str(self.port)],
                          self.data_dir.parent / "milvus-server.log")
        wait_until(self._answers, 240, "milvus-server", self.proc)

    def _answers(self) -> bool:
        """The wrapper takes ``--proxy-port`` as a first choice: when the port cannot be bound
        (TIME_WAIT connections of a killed server: it binds without SO_REUSEADDR) it moves to
        the next free one, written in its milvus.yaml; so the address is read back from there."""
        import yaml

        from indexer.collection import connect

        config = self.data_dir / "configs" / "milvus.yaml"
        if not config.is_file():
            return False
        self.port = int(yaml.safe_load(config.read_text())["proxy"]["port"])
        client = connect(self.uri)
        try:
            return client.list_collections() is not None
        finally:
            client.close()

    def kill(self) -> None:
        import psutil

        tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        for p in reversed(tree):
            p.kill()
        psutil.wait_procs(tree, timeout=10)
        self.proc.wait(5)

    def stop(self) -> None:
        import signal

        from stylestream.devstack.processes import stop

        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc, signal.SIGINT, timeout=30)


def milvus_snapshot(uri: str, name: str, queries) -> tuple[int, dict, list]:
    """(row count, id -> (title, in_stock), top-10 ids per query), read with strong consistency
    (a Milvus server answers a bounded-staleness read before it has applied the latest writes)."""
    from indexer.collection import connect

    client = connect(uri)
    try:
        client.load_collection(name)
        strong = {"consistency_level": "Strong"}
        count = client.query(name, filter="", output_fields=["count(*)"], **strong)[0]["count(*)"]
        rows = client.query(name, filter='item_id != ""', output_fields=["item_id", "title", "in_stock"],
                            limit=1000, **strong)
        hits = client.search(name, data=[q.tolist() for q in queries], limit=10, output_fields=["item_id"],
                             filter="in_stock == true", **strong)
        return int(count), {r["item_id"]: (r["title"], r["in_stock"]) for r in rows}, \
            [[h["entity"]["item_id"] for h in row] for row in hits]
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["lite", "server"])
def test_milvus_reopened_after_a_kill_keeps_its_rows_and_answers(stack_factory, tmp_path, kind):
    """A collection built and flushed (as ``index build`` does), then upserts and deletes
    without a flush (as the indexer does: its Kafka offset is committed once the upsert
    returns); SIGKILL the server and start it on the same data: every row, upsert and delete
    is there, and searches answer as before."""
    import numpy as np

    from indexer.collection import ItemCollection, connect

    if kind == "server":
        if MilvusServerProcess.exe() is None:
            pytest.skip("the Milvus server is not installed (optional extra: pip install 'stylestream[milvus-server]')")
        server = MilvusServerProcess(tmp_path / "milvus-server" / "data")
        server.start()
        kill, start = server.kill, server.start
    else:
        stack = stack_factory()
        stack.start_milvus()
        server = stack.milvus
        kill, start = server.kill, server.start
    try:
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(300, 8)).astype(np.float32)
        client = connect(server.uri)
        items = ItemCollection(client, "faults").create(8, "FLAT")
        items.insert([{"item_id": f"m{i}", "vector": vectors[i].tolist(), "title": f"item {i}", "category": "tops",
                       "in_stock": True, "imputed": False, "bundle_version": "v1", "ts": 1.0, "indexed_at": 1.0}
                      for i in range(250)])
        items.finish()
        items.upsert([{"item_id": f"m{i}", "vector": vectors[i].tolist(), "title": f"item {i} v2", "category": "tops",
                       "in_stock": i % 7 != 0, "imputed": False, "bundle_version": "v1", "ts": 2.0, "indexed_at": 2.0}
                      for i in range(200, 300)])  # 50 changed, 50 new
        items.delete([f"m{i}" for i in range(10)])
        client.close()
        queries = rng.normal(size=(5, 8)).astype(np.float32)
        before, port = milvus_snapshot(server.uri, "faults", queries), server.port
        assert before[0] == 290 and before[1]["m299"] == ("item 299 v2", True)
        kill()
        started = time.monotonic()
        start()
        after = milvus_snapshot(server.uri, "faults", queries)
        reopened_s = time.monotonic() - started
        assert after[0] == before[0], "row count after the reopen"
        assert after[1] == before[1], "rows (upserted titles, stock, deletes) after the reopen"
        assert after[2] == before[2], "the same search answers after the reopen"
        record(f"milvus_{kind}_killed", reopened_and_answering_s=reopened_s, rows=after[0],
               rows_lost=before[0] - after[0], port_changed=server.port != port)
        print(f"Milvus {kind}: reopened and answering {reopened_s:.1f} s after the kill"
              + (f" (on port {server.port}, not {port})" if server.port != port else ""))
    finally:
        server.stop()


# -- 4. Ray Serve: a replica killed, the application gone for 30 s ---------------------------------------------

APP_DOWN_S = 30.0


class Shoppers:
    """Clicks for ``users`` in rounds (one click each, every ``every`` s) from a thread, each
    2nd click of a shopper triggering a recommendation; ``sent`` counts the events."""

    def __init__(self, bootstrap: str, items: list[str], users: list[str], every: float = 0.5):
        self.bootstrap, self.items, self.users, self.every = bootstrap, items, users, every
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        i = 0
        while not self.stop.is_set():
            for n, user in enumerate(self.users):
                item = self.items[(7 * n + 5 * i) % len(self.items)]
                value = {"event_id": f"{user}-{i}", "user_id": user, "item_id": item, "ts": 1_900_000_000 + i}
                producer.send(CLICKS, key=user.encode(), value=dumps(value))
            producer.flush()
            self.sent += len(self.users)
            i += 1
            time.sleep(self.every)
        producer.close()

    def __enter__(self) -> Shoppers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def llm_back_after(records: list[dict], fault_at: float) -> float | None:
    """Seconds from ``fault_at`` (wall clock) to the first ``llm`` answer produced after the
    first fallback answer that followed the fault (answers in flight at the fault don't count)."""
    fresh = sorted((r for r in list(records) if r["produced_at"] > fault_at), key=lambda r: r["produced_at"])
    fallback_at = next((r["produced_at"] for r in fresh if r["path"] != "llm"), None)
    if fallback_at is None:
        return None
    return next((r["produced_at"] - fault_at for r in fresh if r["path"] == "llm" and r["produced_at"] > fallback_at),
                None)


@pytest.fixture
def served_stream(tmp_path, tiny_bundle):
    """Broker, Milvus Lite, Ray Serve (one Generator replica) and a worker on the LLM path."""
    from harness import served_stack

    from models.bundle import Bundle

    with served_stack(tmp_path / "home", tiny_bundle, recommender="serving", serving_max_in_flight=8) as stack:
        yield (*stack, sorted(Bundle.load(tiny_bundle.folder).items()["item_id"]))


def test_serve_faults_cost_llm_answers_not_events(served_stream, tiny_bundle):
    """While shoppers click: (a) kill the Generator replica (Serve starts a new one), then (b)
    delete the whole Serve application for 30 s and deploy it again. Meanwhile every trigger
    is answered on the ID-only fast path; after each fault the LLM path answers again;
    no event is lost or counted twice."""
    from ray import serve

    from serving.app import APP_NAME, build_app

    stack, bootstrap, worker, watch, items = served_stream
    recovery: dict[str, float] = {}
    with Shoppers(bootstrap, items, [f"k{u}" for u in range(4)]) as shoppers:  # 4 recommendations/s
        wait_for(lambda: any(r["path"] == "llm" for r in watch.records), 120, "the first LLM answer")

        killed_at = kill_generator_replicas()
        wait_for(lambda: llm_back_after(watch.records, killed_at) is not None, 180,
                 "LLM answers again once Serve has replaced the replica")
        recovery["replica_killed"] = llm_back_after(watch.records, killed_at)

        deleted_at = time.time()
        serve.delete(APP_NAME)
        time.sleep(APP_DOWN_S)
        during = [r for r in list(watch.records) if deleted_at + 1 < r["produced_at"] < time.time()]
        redeployed_at = time.time()
        serve.run(build_app(stack.settings, tiny_bundle.folder, stack.milvus_uri), name=APP_NAME, route_prefix="/",
                  blocking=False)
        wait_for(lambda: llm_back_after(watch.records, redeployed_at) is not None
                 or any(r["path"] == "llm" and r["produced_at"] > redeployed_at for r in watch.records), 240,
                 "LLM answers again once the application is back")
        first_llm = min(r["produced_at"] for r in list(watch.records)
                        if r["path"] == "llm" and r["produced_at"] > redeployed_at)
        recovery["app_redeployed"] = first_llm - redeployed_at
        recovery["app_outage_total"] = first_llm - deleted_at
    assert during, "recommendations went on while the application was gone"
    assert all(r["path"] == "last-title" and r["items"] for r in during), {r["path"] for r in during}
    wait_for(lambda: worker.stats()["received"] >= shoppers.sent and worker.stats()["recs_pending"] == 0, 60,
             "every event processed")
    stats = worker.stats()
    assert stats["received"] == stats["processed"] == shoppers.sent and stats["duplicates"] == 0, stats
    print(f"recovery (s): {recovery}; {shoppers.sent} events; serving {stats['serving']}")
    record("serve_generator_replica_killed", llm_again_after_s=recovery["replica_killed"])
    record("serve_application_down_30s", llm_again_after_redeploy_s=recovery["app_redeployed"],
           llm_again_after_fault_s=recovery["app_outage_total"], fallback_answers_while_down=len(during))
    record("serve_stream", events_sent=shoppers.sent, events_lost=shoppers.sent - stats["processed"],
           duplicates=stats["duplicates"], llm_answers=stats["serving"]["llm"],
           fallback_answers=stats["serving"]["fallback"])


# -- 5. a part that does not start (`stylestream up`) -----------------------------------------------------------


def ray_descendants() -> list:
    """Live Ray processes in this process's tree (the dev stack adopts orphans: see start_ray)."""
    import psutil

    from stylestream.devstack.processes import descendants
    from stylestream.devstack.stack import _is_ray_process

    out = []
    for p in descendants():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and _is_ray_process(p):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_up_with_a_part_that_cannot_start_says_one_line_and_leaves_nothing_running(tmp_path, tiny_data_dir):
    """`stylestream up` whose Ray dashboard port is taken: the broker and Milvus Lite are
    already up when Ray refuses; the user gets one line naming the port and the setting, exit
    code 2, and the started parts are stopped (no process of this home is left)."""
    import os
    import socket
    import subprocess
    import sys

    import psutil

    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "STYLESTREAM_HOME": str(home), "STYLESTREAM_DATASET": str(tiny_data_dir),
               "STYLESTREAM_RAY_DASHBOARD_PORT": str(port), "STYLESTREAM_LOG_LEVEL": "WARNING"}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        env.pop("MILVUS_URI", None)
        run = subprocess.run([sys.executable, "-m", "stylestream.cli", "up", "--no-serve"], env=env,
                             capture_output=True, text=True, timeout=300)
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == 2, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    assert len(lines) == 1 and "error:" in lines[0] and str(port) in lines[0] \
        and "STYLESTREAM_RAY_DASHBOARD_PORT" in lines[0], lines
    assert (home / "broker" / "noida.log").is_file() and (home / "milvus" / "data").is_dir(), "parts had started"
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])]
    assert not left, f"processes of this home still running: {left}"
    assert not (home / "milvus" / "endpoint.json").exists()


def test_a_failed_ray_start_is_cleaned_up_and_retried(stack_factory, monkeypatch):
    """Ray's GCS given no time to come up (as on a starved machine): the attempt fails with one
    line and none of its processes stays; with a second, longer attempt Ray comes up, and only
    that attempt's GCS and raylet run (the first one's are gone)."""
    import ray

    from stylestream.devstack.processes import free_port
    from stylestream.devstack.stack import RayStartError

    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    stack = stack_factory(ray_dashboard_port=free_port())
    with pytest.raises(RayStartError) as failed:
        stack.start_ray(gcs_wait_s=(0,))
    assert "\n" not in str(failed.value) and "did not start" in str(failed.value), str(failed.value)
    assert not ray.is_initialized() and not stack.ray_started
    assert not ray_descendants(), [p.cmdline()[:2] for p in ray_descendants()]

    stack.start_ray(gcs_wait_s=(0, 60))
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    names = [p.name() for p in ray_descendants()]
    assert names.count("gcs_server") == 1 and names.count("raylet") == 1, names
    stack.close()
    assert not ray.is_initialized() and not ray_descendants(), [p.cmdline()[:2] for p in ray_descendants()]
