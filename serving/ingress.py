"""The ingress: ``POST /recommend``, ``GET /healthz``, ``GET /version``, and a handle for
in-cluster callers (``serve.get_app_handle("stylestream").answer.remote(body)``).

A request's history goes to the Generator (text) and then, with that text, to the
Retriever (items). Bodies are validated by pydantic (422 naming the field and the
reason); a body larger than the limit is refused with 413 before it is parsed.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from models.bundle import Bundle
from models.recommender import History, answer_path
from serving.schemas import RecommendAnswer, RecommendBody, RecommendedItem, Version

api = FastAPI(title="stylestream", summary="Next-item fashion recommendations: LoRA-tuned LLM + mix-up retrieval")
limits = {"max_body_bytes": 256 * 1024}  # this replica's, set by Ingress.__init__


class BodyLimit:
    """413 for a body over the limit, before it is parsed: at once when its declared length
    is over, and as soon as a chunked body without a length passes it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = limits["max_body_bytes"]
        size = dict(scope["headers"]).get(b"content-length", b"")
        if size.isdigit() and int(size) > limit:
            return await too_large(int(size), limit)(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"body of more than {limit} bytes; at most {limit} are accepted")
            return message

        await self.app(scope, counted, send)


def too_large(size: int, limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"body of {size} bytes; at most {limit} are accepted"}, status_code=413)


api.add_middleware(BodyLimit)


@api.exception_handler(RequestValidationError)
async def name_what_is_wrong(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field and the reason, without echoing the input back: FastAPI's default
    answer repeats it, which fails (a 500) on a NaN and would send back a 200 kB id."""
    detail = [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    def __init__(self, generator: DeploymentHandle, retriever: DeploymentHandle, bundle_dir: str,
                 max_history: int = 200, max_body_bytes: int = 256 * 1024):
        bundle = Bundle.load(bundle_dir)
        self.generator, self.retriever = generator, retriever
        self.max_history = max_history
        limits["max_body_bytes"] = max_body_bytes
        self.about = Version(bundle_version=bundle.version, encoder=bundle.chosen_encoder,
                             fusion=bundle.fusion().to_json(), data_hash=bundle.data_hash)

    @api.post("/recommend", response_model=RecommendAnswer)
    async def recommend(self, body: RecommendBody) -> RecommendAnswer:
        return await self.answer(body)

    async def answer(self, body: RecommendBody | dict[str, Any]) -> RecommendAnswer:
        """The whole LLM path for one shopper (also what DeploymentHandle callers use)."""
        body = body if isinstance(body, RecommendBody) else RecommendBody.model_validate(body)
        if len(body.history) > self.max_history:
            raise HTTPException(422, f"history has {len(body.history)} events; at most {self.max_history} "
                                     "are accepted (send the newest)")
        history = History.of([e.item_id for e in body.history], [e.kind for e in body.history])
        started = time.perf_counter()
        text = await self.generator.generate.remote(history)
        generated = time.perf_counter()
        hits = await self.retriever.retrieve.remote((history, text, body.k))
        done = time.perf_counter()
        return RecommendAnswer(
            user_id=body.user_id, generated_text=text, path=answer_path(text),
            model_version=self.about.bundle_version,
            items=[RecommendedItem(item_id=h.item_id, score=round(h.score, 6), title=h.title) for h in hits],
            timings_ms={"generate": round(1000 * (generated - started), 2),
                        "retrieve": round(1000 * (done - generated), 2),
                        "total": round(1000 * (done - started), 2)})

    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok", "bundle_version": self.about.bundle_version}

    @api.get("/version", response_model=Version)
    def version(self) -> Version:
        return self.about
