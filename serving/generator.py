"""The Generator deployment: the bundle's LoRA-tuned LLM writing the next item's title.

Requests are gathered by ``@serve.batch`` into one batched generation (dynamic batching:
a batch closes when it is full or its wait is over; both are ``user_config``, so a
``serve deploy`` can retune them without restarting replicas). The engine is ONNX
Runtime (its CUDA provider first where it loads) or torch (CUDA when the replica was
given a GPU). The work itself is :meth:`models.recommender.MixupRecommender.generate`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from ray import serve

from models.bundle import Bundle
from models.recommender import History, MixupRecommender

DEFAULT_BATCH = {"max_batch_size": 8, "batch_wait_ms": 50.0}


@serve.deployment(name="Generator", max_ongoing_requests=64, graceful_shutdown_timeout_s=60)
class Generator:
    def __init__(self, bundle_dir: str, engine: str = "onnx", device: str = "auto", threads: int = 0):
        bundle = Bundle.load(bundle_dir)
        self.version = bundle.version
        started = time.perf_counter()
        self.rec = MixupRecommender(bundle, generator=bundle.generator(engine, device, threads))
        self.engine = type(self.rec.generator).__name__
        self.providers = list(getattr(self.rec.generator, "providers", [str(getattr(self.rec.generator, "device",
                                                                                    "cpu"))]))
        self.load_seconds = round(time.perf_counter() - started, 2)
        self.batch_sizes: deque[int] = deque(maxlen=10_000)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``max_batch_size`` and ``batch_wait_ms`` of dynamic batching."""
        config = {**DEFAULT_BATCH, **(config or {})}
        self.generate.set_max_batch_size(int(config["max_batch_size"]))
        self.generate.set_batch_wait_timeout_s(float(config["batch_wait_ms"]) / 1000)

    @serve.batch(max_batch_size=DEFAULT_BATCH["max_batch_size"],
                 batch_wait_timeout_s=DEFAULT_BATCH["batch_wait_ms"] / 1000)
    async def generate(self, histories: list[History]) -> list[str]:
        self.batch_sizes.append(len(histories))
        # in a thread: the replica keeps taking requests (the next batch fills) while this one runs
        return await asyncio.to_thread(self.rec.generate, histories, len(histories))

    def stats(self) -> dict[str, Any]:
        sizes = list(self.batch_sizes)
        return {"bundle_version": self.version, "engine": self.engine, "providers": self.providers,
                "load_seconds": self.load_seconds, "batches": len(sizes), "requests": sum(sizes),
                "mean_batch_size": round(sum(sizes) / len(sizes), 2) if sizes else 0.0}
