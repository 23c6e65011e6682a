"""The main job: synthetic shoppers replayed through the whole live path, watched as it runs.

1. Generates (or reuses) the synthetic data set.
2. Trains a model bundle with a short LoRA tune of SmolLM2 (or reuses the bundle already
   built for this data set): SASRec, a title encoder, the LLM and its ONNX export.
3. Starts the embedded broker, the Milvus Lite server (filled from the bundle), local
   Ray with the Serve application (Generator, Retriever, ingress), and a stream worker
   whose fast path (the last-title mix-up) answers every event the bundle's gate declines
   and whose LLM path (over Serve) answers the rest.
4. Replays the test period's events in time order and shows events/s, recommendations
   by answering path and gate decision, dead letters and latency live; then, in a quiet
   moment, a few shoppers' fast-path top 5 beside the LLM path's with the gate's decision,
   and stops everything it started.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.live import Live
from rich.table import Table

from models.bundle import Bundle
from models.data import Dataset
from streams.replay import ReplayProgress, replay
from stylestream.config import Settings
from stylestream.devstack import DevStack
from stylestream.records import DLQ, RECS
from stylestream.topic_watch import TopicWatch

# Malformed events injected on purpose, to show the dead-letter path working live.
MALFORMED = [b"{not json", b'{"event_id": "bad-1", "user_id": "u1"}', b'{"event_id": "bad-2", "user_id": 7, '
             b'"item_id": "x", "ts": "noon"}']


class Watch(TopicWatch):
    """What the demo sees on ``recs.out`` and ``events.dlq``."""

    def __init__(self, bootstrap: str):
        super().__init__(bootstrap, RECS, DLQ)

    @property
    def recs(self) -> list[dict]:
        return self.by_topic[RECS]

    @property
    def dead(self) -> list[dict]:
        return self.by_topic[DLQ]


@dataclass
class DemoSummary:
    events_sent: int
    events_per_s: float
    processed: int
    dead_lettered: int
    recs_published: int
    recs_llm: int
    recs_fast_path: int
    recs_gate_declined: int
    latency_p50_ms: float
    latency_p99_ms: float
    llm_latency_p50_ms: float
    hit_rate_at_k: float
    bundle_version: str
    elapsed_s: float


def ensure_dataset(settings: Settings, users: int, items: int, seed: int, console: Console) -> Dataset:
    folder = settings.dataset_dir
    if (folder / "manifest.json").exists():
        data = Dataset.load(folder)
        if data.extra.get("users") == users and data.extra.get("items") == items and data.extra.get("seed") == seed:
            console.log(f"using data set {folder} ({len(data.interactions):,} interactions)")
            return data
    from models.data.synth import synthesize

    with console.status(f"generating synthetic data: {users} shoppers, {items} items, seed {seed}"):
        data = synthesize(users=users, items=items, seed=seed)
    data.save(folder)
    console.log(f"generated {folder}: {len(data.interactions):,} interactions, {len(data.items):,} items")
    return data


def demo_training(settings: Settings) -> Any:
    """A bundle in minutes on a 2-core CPU: a short LoRA tune, one title encoder, brief SASRec."""
    from models.sasrec import SASRecConfig
    from models.train import TrainConfig

    return TrainConfig(home=settings.home, title_encoders=("minilm",), minilm_steps=10, lora_steps=3,
                       lora_batch_size=4, max_history=6, max_val_events=24, max_new_tokens=16, gen_batch_size=12,
                       sasrec=SASRecConfig(epochs=12, patience=3))


def ensure_bundle(settings: Settings, data: Dataset, console: Console) -> Bundle:
    """The bundle already built for this data set, or a new one from :func:`demo_training`."""
    from models.bundle import BundleError
    from models.train import train_bundle

    folder = settings.bundle_dir
    try:
        bundle = Bundle.load(folder)
        if bundle.data_hash == data.data_hash():
            console.log(f"using bundle {bundle.version} from {folder}")
            return bundle
        folder = settings.home / "demo-bundle"  # someone else's bundle: leave it alone
        bundle = Bundle.load(folder)
        if bundle.data_hash == data.data_hash():
            console.log(f"using bundle {bundle.version} from {folder}")
            return bundle
    except BundleError:
        pass
    console.log(f"training a model bundle into {folder}: SASRec, MiniLM title encoder, a short LoRA tune "
                "of SmolLM2-135M and its ONNX export (about 3 minutes on 2 cores)")
    started = time.monotonic()
    bundle = train_bundle(data, demo_training(settings), folder, progress=True)
    console.log(f"bundle {bundle.version} trained in {time.monotonic() - started:.0f} s: {bundle.fusion()}")
    return bundle


def run_demo(settings: Settings, users: int = 600, items: int = 1000, seed: int = 0, rate: float = 200.0,
             examples: int = 3, console: Console | None = None) -> DemoSummary:
    console = console or Console()
    started = time.monotonic()
    data = ensure_dataset(settings, users, items, seed, console)
    bundle = ensure_bundle(settings, data, console)
    _, _, test = data.parts()
    run_home = settings.home / "demo-run"
    shutil.rmtree(run_home, ignore_errors=True)  # a fresh broker each run: counts start at zero
    # On 2 CPU cores one LLM answer costs about a second: one Generator replica and a deadline
    # of a few seconds let the LLM answer what it can while the fast path answers the rest.
    run_settings = Settings.from_env(home=run_home, dataset=settings.dataset_dir, bundle=bundle.folder,
                                     serving_timeout_ms=8000.0, serving_max_in_flight=4, gen_max_replicas=1)
    with DevStack(run_settings) as stack:
        with console.status("starting the broker, Milvus Lite, Ray Serve (Generator, Retriever, ingress) "
                            "and a stream worker"):
            bootstrap = stack.start_broker()
            milvus = stack.start_milvus()
            serving = stack.start_serving()
            worker = stack.start_worker()
        console.log(f"{run_settings.broker} broker on {bootstrap}; Milvus {milvus}; Serve {serving}/recommend; "
                    f"Ray dashboard http://127.0.0.1:{run_settings.ray_dashboard_port}; worker web on "
                    f"127.0.0.1:{worker.web_port}")
        watch = Watch(bootstrap)
        progress = ReplayProgress()
        replayer = threading.Thread(target=replay, kwargs=dict(
            interactions=test, bootstrap=bootstrap, id_prefix=data.data_hash()[:8], rate=rate, progress=progress))
        console.log(f"replaying the test period: {len(test):,} events at up to {rate:,.0f}/s")
        replayer.start()
        _inject_malformed(bootstrap)
        expected = len(test) + len(MALFORMED)
        with Live(_table(progress, worker.stats(), watch), console=console, refresh_per_second=4) as live:
            while True:
                stats = worker.stats()
                live.update(_table(progress, stats, watch))
                if not replayer.is_alive() and stats["received"] >= expected and _settled(watch, stats):
                    break
                time.sleep(0.25)
        _quiet_moment(console, bootstrap, test, data.data_hash()[:8], watch, worker, bundle, serving)
        watch.close()
        summary = _summarise(progress, stats, watch, test, run_settings.recs_k, bundle.version,
                             time.monotonic() - started)
        _show_examples(console, watch.recs, data, test, examples)
    console.log("stopped the worker, Ray Serve, Milvus and the broker")
    return summary


def _quiet_moment(console: Console, bootstrap: str, test: pd.DataFrame, prefix: str, watch: Watch,
                  worker: Any, bundle: Bundle, serving_url: str, n: int = 3, timeout: float = 90.0) -> None:
    """A few more purchases, one at a time; for each shopper, the fast path's top 5 beside
    the LLM path's (asked of Serve directly, whatever the gate said) and the gate's decision
    with its score, so a newcomer sees what each path adds."""
    from kafka import KafkaProducer

    console.log(f"a quiet moment: {n} more purchases, one at a time; each shopper's fast path beside the LLM path")
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    buys = test[test["kind"] == "purchase"].tail(n)
    shown = []
    for idx, user, item in zip(buys.index, buys["user_id"], buys["item_id"], strict=True):
        event_id = f"{prefix}q-{idx}"  # ends in the row index, like replayed ids (see _trigger_time)
        value = {"event_id": event_id, "user_id": user, "item_id": item, "ts": time.time()}
        producer.send("events.purchases", key=str(user).encode(), value=json.dumps(value).encode())
        producer.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(r["trigger_event_id"] == event_id for r in watch.recs):
            time.sleep(0.2)
        rec = next((r for r in watch.recs if r["trigger_event_id"] == event_id), None)
        if rec is not None:
            shown.append((str(user), rec))
    producer.close()
    while worker.stats()["recs_pending"]:
        time.sleep(0.2)
    for user, rec in shown:
        _two_paths(console, user, rec, worker, bundle, serving_url)


def _two_paths(console: Console, user: str, rec: dict, worker: Any, bundle: Bundle, serving_url: str) -> None:
    """One shopper: the fast path's answer and the LLM path's, for the history the worker holds."""
    from models.recommender import History, MixupRecommender

    events = worker.get(f"/users/{urllib.parse.quote(user)}/").get("events", [])
    history = History.of([e[1] for e in events], [e[2] for e in events], [e[3] for e in events])
    fast = MixupRecommender(bundle).recommend_fast([history], k=5)[0]
    titles = dict(zip(bundle.items()["item_id"].astype(str), bundle.items()["title"].fillna(""), strict=True))
    try:
        llm = _post(f"{serving_url}/recommend", {"user_id": user, "k": 5, "history": [
            {"item_id": e[1], "kind": e[2], "ts": e[3]} for e in events[-200:]]})
    except OSError as exc:
        llm = {"items": [], "generated_text": f"(the LLM path did not answer: {exc})"}
    gate = rec.get("gate")
    verdict = ("no gate" if gate is None else f"gate {gate} (its score {rec.get('gate_score', 0):.2f}: the "
               "probability that the LLM path answers better)")
    table = Table(title=f"shopper {user} ({len(events)} events): recs.out got the {rec.get('path')} answer; "
                        f"{verdict}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("fast path")
    table.add_column("LLM path")
    table.add_row("", "[dim]query: the last item's title[/dim]",
                  f"[bold]LLM wrote[/bold] {llm.get('generated_text', '')}")
    for i in range(5):
        f = fast.items[i] if i < len(fast.items) else None
        g = llm["items"][i] if i < len(llm["items"]) else None
        left = f"{titles.get(f.item_id, f.item_id)} [dim]{f.score:.3f}[/dim]" if f else ""
        right = f"{g['title'] or titles.get(g['item_id'], g['item_id'])} [dim]{g['score']:.3f}[/dim]" if g else ""
        table.add_row(str(i + 1), left, right)
    console.print(table)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _inject_malformed(bootstrap: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for raw in MALFORMED:
        producer.send("events.clicks", key=b"u1", value=raw)
    producer.flush()
    producer.close()


def _settled(watch: Watch, stats: dict) -> bool:
    return (stats["recs_pending"] == 0 and len(watch.recs) >= stats["recs_published"]
            and len(watch.dead) >= stats["dead_lettered"])


def _table(progress: ReplayProgress, stats: dict, watch: Watch) -> Table:
    recent = watch.recs[-2000:]
    lat = [r["latency_ms"] for r in recent]
    llm = [r["latency_ms"] for r in recent if r.get("path") == "llm"]
    paths = Counter(r.get("path", "?") for r in watch.recs)
    table = Table(title="stylestream live", show_header=False, min_width=48)
    table.add_row("events replayed", f"{progress.sent:,} / {progress.total:,}  ({progress.rate:,.0f}/s)")
    table.add_row("events processed", f"{stats['processed']:,}  (duplicates dropped {stats['duplicates']})")
    table.add_row("recommendations", f"{len(watch.recs):,} on recs.out, {stats.get('recs_pending', 0)} in flight")
    table.add_row("answered by", ", ".join(f"{p} {n:,}" for p, n in paths.most_common()) or "–")
    gates = Counter(r.get("gate") for r in watch.recs if r.get("gate"))
    if gates:
        table.add_row("gate before the LLM", ", ".join(f"{g} {n:,}" for g, n in gates.most_common()))
    table.add_row("dead letters", f"{len(watch.dead)} on events.dlq")
    if lat:
        p50, p99 = np.percentile(lat, [50, 99])
        table.add_row("latency event→recs", f"p50 {p50:.1f} ms · p99 {p99:.1f} ms")
    if llm:
        table.add_row("latency, LLM path", f"p50 {np.percentile(llm, 50):,.0f} ms")
    return table


def _summarise(progress: ReplayProgress, stats: dict, watch: Watch, test: pd.DataFrame, k: int, version: str,
               elapsed: float) -> DemoSummary:
    lat = [r["latency_ms"] for r in watch.recs] or [float("nan")]
    llm = [r["latency_ms"] for r in watch.recs if r.get("path") == "llm"] or [float("nan")]
    n_llm = sum(r.get("path") == "llm" for r in watch.recs)
    declined = sum(r.get("gate") == "declined" for r in watch.recs)
    return DemoSummary(events_sent=progress.sent, events_per_s=round(progress.rate, 1),
                       processed=stats["processed"], dead_lettered=len(watch.dead),
                       recs_published=len(watch.recs), recs_llm=n_llm, recs_fast_path=len(watch.recs) - n_llm,
                       recs_gate_declined=declined,
                       latency_p50_ms=round(float(np.percentile(lat, 50)), 2),
                       latency_p99_ms=round(float(np.percentile(lat, 99)), 2),
                       llm_latency_p50_ms=round(float(np.percentile(llm, 50)), 2),
                       hit_rate_at_k=round(hit_rate(watch.recs, test), 4), bundle_version=version,
                       elapsed_s=round(elapsed, 1))


def hit_rate(recs: list[dict], test: pd.DataFrame) -> float:
    """Share of recommendations whose list holds the shopper's next purchase after the trigger.

    Replayed event ids end in the interaction's row index, which gives the trigger's time.
    """
    purchases = test[test["kind"] == "purchase"]
    by_user: dict[str, list[tuple[pd.Timestamp, str]]] = {}
    for user, t, item in zip(purchases["user_id"], purchases["ts"], purchases["item_id"], strict=True):
        by_user.setdefault(user, []).append((t, item))
    hits = scored = 0
    for rec in recs:
        at = _trigger_time(rec, test)
        nxt = next((item for t, item in by_user.get(rec["user_id"], []) if at is not None and t > at), None)
        if nxt is None:
            continue
        scored += 1
        hits += nxt in {it["item_id"] for it in rec["items"]}
    return hits / scored if scored else float("nan")


def _trigger_time(rec: dict, test: pd.DataFrame) -> pd.Timestamp | None:
    try:
        return test.at[int(rec["trigger_event_id"].rsplit("-", 1)[1]), "ts"]
    except (ValueError, KeyError, IndexError):
        return None


def _show_examples(console: Console, recs: list[dict], data: Dataset, test: pd.DataFrame, n: int) -> None:
    """The last few LLM answers: what the shopper did, what the LLM wrote, what was retrieved."""
    titles = dict(zip(data.items["item_id"], data.items["title"].fillna(""), strict=True))
    shown = [r for r in recs if r["items"] and r.get("path") == "llm"][-n:] or [r for r in recs if r["items"]][-n:]
    for rec in shown:
        at = _trigger_time(rec, test)
        seen = test[(test["user_id"] == rec["user_id"]) & (test["ts"] <= at)].tail(3) if at is not None else test[:0]
        table = Table(title=f"shopper {rec['user_id']}: {rec.get('path')} answer in {rec['latency_ms']:,.0f} ms "
                            f"({rec['model_version']})", title_justify="left")
        table.add_column("")
        table.add_column("item")
        table.add_column("score", justify="right")
        for kind, item in zip(seen["kind"], seen["item_id"], strict=True):
            verb = "bought" if kind == "purchase" else "clicked"
            table.add_row(f"[dim]{verb}[/dim]", f"[dim]{titles.get(item, item)}[/dim]", "")
        if rec.get("generated_text"):
            table.add_row("[bold]LLM wrote[/bold]", f"[bold]{rec['generated_text']}[/bold]", "")
        for i, item in enumerate(rec["items"][:5], 1):
            title = item["title"] or titles.get(item["item_id"], item["item_id"])
            table.add_row(f"#{i}", title, f"{item['score']:.3f}")
        console.print(table)


def write_summary(summary: DemoSummary, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vars(summary), indent=2) + "\n")
