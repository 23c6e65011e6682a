"""The LLM path as the stream sees it: a gate, then Ray Serve's ``POST /recommend`` with a deadline.

The fast path answers first, in process and in about a millisecond; the bundle's gate reads
that answer and decides whether the event is worth a call to the LLM path. An event the gate
declines is answered by the fast path at once, and never reaches Serve. For the others the
stream still never waits on the LLM: a worker keeps a limited number of requests open, and
an answer later than the deadline, an error, or a full set of open requests leaves the fast
path's answer in place. The record on ``recs.out`` says which path answered and what the
gate decided; :class:`ServingStats` counts both.

The limit adapts (additive increase, multiplicative decrease, as TCP does): every missed
deadline or error halves it, every answer in time raises it by 1/limit, up to
``max_in_flight``. Sending more requests than the Generator can answer in time would make
every one of them late (each batch waits for the ones before it); the limit settles
where answers still arrive in time, so the LLM keeps answering what it can.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from stylestream.recommender import Recommender, RecommendRequest, RecommendResult
from stylestream.records import RecItem

log = logging.getLogger(__name__)


@dataclass
class ServingStats:
    llm: int = 0
    gate_declined: int = 0  # answered by the fast path at once: the gate saw nothing to gain
    fallback: Counter[str] = field(default_factory=Counter)  # reason -> count (events the gate sent)
    last_error: str = ""  # what the latest failed request said (status and body, or the exception)

    def as_dict(self) -> dict[str, Any]:
        return {"llm": self.llm, "gate_declined": self.gate_declined, "fallback": dict(self.fallback),
                "last_error": self.last_error}


class ServingRecommender:
    """:class:`~stylestream.recommender.Recommender` over the Serve ingress, behind the gate
    that ``fallback`` (the fast path) decides with its answer; an answer without a gate
    decision (a fast path without a gate) is always sent."""

    def __init__(self, url: str, fallback: Recommender, timeout_s: float = 4.0, max_in_flight: int = 8,
                 max_history: int = 200):
        self.url = url.rstrip("/") + "/recommend"
        self.fallback = fallback
        self.model_version = fallback.model_version
        self.timeout_s, self.max_in_flight, self.max_history = timeout_s, max_in_flight, max_history
        self.limit = float(max_in_flight)  # adapts in [1, max_in_flight]
        self.in_flight = 0
        self.stats = ServingStats()
        self._session: aiohttp.ClientSession | None = None

    async def recommend(self, request: RecommendRequest) -> RecommendResult:
        fast = await self.fallback.recommend(request)
        if fast.gate == "declined":
            self.stats.gate_declined += 1
            return fast
        if self.in_flight >= int(self.limit):
            return self._fall_back(fast, "overload")
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                data = await self._post(request)
        except TimeoutError:
            self._missed()
            return self._fall_back(fast, "timeout")
        except (aiohttp.ClientError, ValueError, KeyError) as exc:
            if not self.stats.fallback["error"]:
                log.warning("LLM path failed, the fast path answers (further failures: see /stats/): %s", exc)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self._missed()
            return self._fall_back(fast, "error")
        finally:
            self.in_flight -= 1
        self.limit = min(float(self.max_in_flight), self.limit + 1.0 / self.limit)
        self.stats.llm += 1
        return RecommendResult(items=[RecItem(**item) for item in data["items"]],
                               generated_text=data["generated_text"], path=data["path"],
                               model_version=data["model_version"], gate="sent", gate_score=fast.gate_score)

    async def _post(self, request: RecommendRequest) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.max_in_flight))
        body = {"user_id": request.user_id, "k": request.k,
                "history": [{"item_id": h.item_id, "kind": h.kind, "ts": h.ts}
                            for h in request.history[-self.max_history:]]}
        async with self._session.post(self.url, json=body) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                  message=(await resp.text())[:200])
            return await resp.json()

    def status(self) -> dict[str, Any]:
        """Answers by path, fallbacks by reason, and the adaptive limit (the worker's /stats/)."""
        return {**self.stats.as_dict(), "limit": round(self.limit, 2), "in_flight": self.in_flight}

    def _missed(self) -> None:
        self.limit = max(1.0, self.limit / 2)

    def _fall_back(self, fast: RecommendResult, reason: str) -> RecommendResult:
        self.stats.fallback[reason] += 1
        return replace(fast, gate="sent")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
