"""The recommenders a stream worker uses, without the broker: the fast path (the last-title
mix-up, or SASRec alone) batches concurrent requests without changing any answer and gives
the in-process recommender's answer; the gate's decision rides with it; the
ServingRecommender never asks Serve about an event the gate declined, and falls back to the
fast path when the LLM path is unreachable, late or saturated."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from aiohttp import web

from models.bundle import Bundle
from models.recommender import FAST_PATH, ID_ONLY_PATH, History, MixupRecommender
from streams.fast_path import FastPathRecommender
from streams.serving_recommender import ServingRecommender
from stylestream.recommender import HistoryItem, RecommendRequest

pytestmark = pytest.mark.slow  # the session's tiny bundle takes ~15 s to train


def requests_for(bundle: Bundle, n: int = 12) -> list[RecommendRequest]:
    items = bundle.items()["item_id"].tolist()
    return [RecommendRequest(f"u{r}", [HistoryItem(items[(5 * r + j) % len(items)], kind, float(j))
                                       for j, kind in enumerate(("click", "purchase", "click"))], k=3 + r % 4)
            for r in range(n)]


@pytest.mark.parametrize("kind", [FAST_PATH, ID_ONLY_PATH])
def test_batched_fast_path_answers_as_the_in_process_recommender(tiny_bundle, kind):
    """The worker's fast path is MixupRecommender's answer (the one place a recommendation
    is computed), whether requests come one at a time or batched."""
    bundle = Bundle.load(tiny_bundle.folder)
    fast = FastPathRecommender(bundle, kind, max_batch=5, window_ms=50)
    requests = requests_for(bundle)

    async def all_at_once():
        return await asyncio.gather(*(fast.recommend(r) for r in requests))

    batched = asyncio.run(all_at_once())
    rec = MixupRecommender(bundle)
    for request, answer in zip(requests, batched, strict=True):
        history = [History.of([h.item_id for h in request.history], [h.kind for h in request.history])]
        one = (rec.recommend_fast(history, k=request.k) if kind == FAST_PATH
               else rec.recommend_id_only(history, k=request.k))[0]
        assert [i.item_id for i in answer.items] == [h.item_id for h in one.items]
        assert [i.score for i in answer.items] == pytest.approx([h.score for h in one.items], abs=1e-5)
        assert answer.path == kind and answer.model_version == bundle.version and len(answer.items) == request.k
        assert answer.gate is None, "no LLM path behind it: no gate"


def test_an_item_without_a_stored_vector_does_not_break_the_fast_path(tiny_bundle):
    """A last item new in the catalog (not in the bundle): its category's mean title vector
    stands in; with no category either, the answer rests on the ID half."""
    bundle = Bundle.load(tiny_bundle.folder)
    items = bundle.items()
    category = str(items["category"].dropna().iloc[0])
    request = RecommendRequest("u", [HistoryItem(items["item_id"].iloc[0], "click", 1.0),
                                     HistoryItem("brand-new", "click", 2.0)], k=5)
    known = FastPathRecommender(bundle, category_of=lambda item: category if item == "brand-new" else None)
    unknown = FastPathRecommender(bundle)
    for fast in (known, unknown):
        answer = fast.answer([request])[0]
        assert answer.path == FAST_PATH and len(answer.items) == 5
        assert all(np.isfinite(i.score) for i in answer.items)
    rec = MixupRecommender(bundle, category_of=lambda item: category if item == "brand-new" else None)
    history = [History.of(["x", "brand-new"], ["click", "click"])]
    assert np.allclose(rec.last_titles(history), rec.category_titles[category])
    assert not MixupRecommender(bundle).last_titles(history).any()


def test_the_gate_decision_rides_with_the_fast_answer_and_is_reproducible_from_the_bundle(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    requests = requests_for(bundle)
    for mode, expected in (("open", {"sent"}), ("closed", {"declined"})):
        answers = FastPathRecommender(bundle, gate=mode).answer(requests)
        assert {a.gate for a in answers} == expected and all(0.0 <= a.gate_score <= 1.0 for a in answers)
    gated = FastPathRecommender(bundle, gate="bundle").answer(requests)
    again = Bundle.load(tiny_bundle.folder)  # another process loading the same bundle decides the same
    rec = MixupRecommender(again)
    histories = [History.of([h.item_id for h in r.history], [h.kind for h in r.history], [h.ts for h in r.history])
                 for r in requests]
    decisions = rec.decide(histories, rec.recommend_fast(histories, 10))
    assert [a.gate for a in gated] == ["sent" if d.send else "declined" for d in decisions]
    assert [a.gate_score for a in gated] == [round(d.score, 4) for d in decisions]


async def _serve(handler, port_holder: list[int]) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/recommend", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_holder.append(site._server.sockets[0].getsockname()[1])
    return runner


def test_the_fast_path_leaves_out_what_the_catalog_withdrew(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    requests = requests_for(bundle, 4)
    every = FastPathRecommender(bundle).answer(requests)
    gone = {every[0].items[0].item_id, every[1].items[1].item_id}
    some = FastPathRecommender(bundle, available=lambda item: item not in gone).answer(requests)
    for full, kept, req in zip(every, some, requests, strict=True):
        prefix = [i.item_id for i in full.items if i.item_id not in gone]
        kept_ids = [i.item_id for i in kept.items]
        assert kept_ids[:len(prefix)] == prefix, "the same order, withdrawn items skipped"
        assert len(kept_ids) == req.k and not gone & set(kept_ids), "filled up to k from further down"


def test_serving_recommender_falls_back_by_reason(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    fast = FastPathRecommender(bundle, gate="open")
    request = requests_for(bundle, 1)[0]

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    async def good(req: web.Request) -> web.Response:
        body = await req.json()
        return web.json_response({"items": [{"item_id": "x", "score": 1.0, "title": "t"}],
                                  "generated_text": f"{len(body['history'])} events", "path": "llm",
                                  "model_version": "v"})

    async def scenario() -> dict:
        ports: list[int] = []
        runners = [await _serve(slow, ports), await _serve(good, ports)]
        try:
            late = ServingRecommender(f"http://127.0.0.1:{ports[0]}", fast, timeout_s=0.2)
            down = ServingRecommender("http://127.0.0.1:9", fast, timeout_s=1.0)
            full = ServingRecommender(f"http://127.0.0.1:{ports[0]}", fast, timeout_s=0.5, max_in_flight=1)
            ok = ServingRecommender(f"http://127.0.0.1:{ports[1]}", fast, timeout_s=1.0)
            answers = {"late": await late.recommend(request), "down": await down.recommend(request),
                       "full": await asyncio.gather(full.recommend(request), full.recommend(request)),
                       "ok": await ok.recommend(request)}
            for r in (late, down, full, ok):
                await r.close()
            return {"answers": answers, "stats": {n: r.stats.as_dict() for n, r in
                                                  (("late", late), ("down", down), ("full", full), ("ok", ok))}}
        finally:
            for runner in runners:
                await runner.cleanup()

    out = asyncio.run(scenario())
    answers, stats = out["answers"], out["stats"]
    assert answers["late"].path == answers["down"].path == FAST_PATH and answers["late"].items
    assert stats["late"] == {"llm": 0, "gate_declined": 0, "fallback": {"timeout": 1}, "last_error": ""}
    assert stats["down"]["fallback"] == {"error": 1} and "ClientConnectorError" in stats["down"]["last_error"]
    assert {a.path for a in answers["full"]} == {FAST_PATH} and stats["full"]["fallback"]["overload"] == 1
    assert answers["ok"].path == "llm" and answers["ok"].generated_text == "3 events" and stats["ok"]["llm"] == 1
    assert {a.gate for a in [answers["late"], answers["down"], *answers["full"], answers["ok"]]} == {"sent"}


def test_an_event_the_gate_declines_never_reaches_serve(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    requests = requests_for(bundle, 6)
    asked: list[dict] = []

    async def serve(req: web.Request) -> web.Response:
        asked.append(await req.json())
        return web.json_response({"items": [{"item_id": "x", "score": 1.0, "title": "t"}],
                                  "generated_text": "text", "path": "llm", "model_version": "v"})

    async def scenario(gate: str) -> list:
        ports: list[int] = []
        runner = await _serve(serve, ports)
        try:
            rec = ServingRecommender(f"http://127.0.0.1:{ports[0]}", FastPathRecommender(bundle, gate=gate))
            answers = [await rec.recommend(r) for r in requests]
            await rec.close()
            return [answers, rec.stats.as_dict()]
        finally:
            await runner.cleanup()

    declined, stats = asyncio.run(scenario("closed"))
    assert not asked and stats["gate_declined"] == len(requests) and stats["llm"] == 0
    assert all(a.path == FAST_PATH and a.gate == "declined" and a.items for a in declined)
    sent, stats = asyncio.run(scenario("open"))
    assert len(asked) == len(requests) and stats["llm"] == len(requests) and stats["gate_declined"] == 0
    assert all(a.path == "llm" and a.gate == "sent" for a in sent)


def test_the_open_request_limit_halves_on_a_miss_and_creeps_back():
    rec = ServingRecommender("http://127.0.0.1:9", SimpleNamespace(model_version="v"), max_in_flight=8)
    assert rec.limit == 8
    rec._missed()
    rec._missed()
    assert rec.limit == 2
    for _ in range(5):
        rec._missed()
    assert rec.limit == 1, "never below one open request: the LLM keeps getting a chance"
    assert rec.status()["limit"] == 1 and rec.status()["in_flight"] == 0
