"""The recommenders a stream worker uses, without the broker: the ID-only fast path batches
concurrent requests without changing any answer, and the ServingRecommender falls back to
it when the LLM path is unreachable, late or saturated."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiohttp import web

from models.bundle import Bundle
from models.recommender import History, MixupRecommender
from streams.id_only import IdOnlyRecommender
from streams.serving_recommender import ServingRecommender
from stylestream.recommender import HistoryItem, RecommendRequest

pytestmark = pytest.mark.slow  # the session's tiny bundle takes ~15 s to train


def requests_for(bundle: Bundle, n: int = 12) -> list[RecommendRequest]:
    items = bundle.items()["item_id"].tolist()
    return [RecommendRequest(f"u{r}", [HistoryItem(items[(5 * r + j) % len(items)], kind, float(j))
                                       for j, kind in enumerate(("click", "purchase", "click"))], k=3 + r % 4)
            for r in range(n)]


def test_batched_fast_path_answers_as_one_at_a_time(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    fast = IdOnlyRecommender(bundle, max_batch=5, window_ms=50)
    requests = requests_for(bundle)

    async def all_at_once():
        return await asyncio.gather(*(fast.recommend(r) for r in requests))

    batched = asyncio.run(all_at_once())
    rec = MixupRecommender(bundle)
    for request, answer in zip(requests, batched, strict=True):
        one = rec.recommend_id_only([History.of([h.item_id for h in request.history],
                                                [h.kind for h in request.history])], k=request.k)[0]
        assert [i.item_id for i in answer.items] == [h.item_id for h in one.items]
        assert answer.path == "id-only" and answer.model_version == bundle.version and len(answer.items) == request.k


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
    every = IdOnlyRecommender(bundle).answer(requests)
    gone = {every[0].items[0].item_id, every[1].items[1].item_id}
    some = IdOnlyRecommender(bundle, available=lambda item: item not in gone).answer(requests)
    for full, kept, req in zip(every, some, requests, strict=True):
        prefix = [i.item_id for i in full.items if i.item_id not in gone]
        kept_ids = [i.item_id for i in kept.items]
        assert kept_ids[:len(prefix)] == prefix, "the same order, withdrawn items skipped"
        assert len(kept_ids) == req.k and not gone & set(kept_ids), "filled up to k from further down"


def test_serving_recommender_falls_back_by_reason(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.folder)
    fast = IdOnlyRecommender(bundle)
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
    assert answers["late"].path == answers["down"].path == "id-only" and answers["late"].items
    assert stats["late"] == {"llm": 0, "fallback": {"timeout": 1}, "last_error": ""}
    assert stats["down"]["fallback"] == {"error": 1} and "ClientConnectorError" in stats["down"]["last_error"]
    assert {a.path for a in answers["full"]} == {"id-only"} and stats["full"]["fallback"]["overload"] == 1
    assert answers["ok"].path == "llm" and answers["ok"].generated_text == "3 events" and stats["ok"]["llm"] == 1


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
