"""The Serve application: Ingress → Generator (LLM text) → Retriever (mix-up search in Milvus).

Composed with ``.bind()`` from one :class:`~stylestream.config.Settings`, so ``stylestream
serve``, ``serve run serving.app:app_builder bundle=DIR`` and ``serve deploy`` with a
config file (:func:`serve_config`, or ``serving/serve_config.yaml``) build the same graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from serving.generator import Generator
from serving.ingress import Ingress
from serving.retriever import Retriever
from stylestream.config import Settings, env_name

APP_NAME = "stylestream"
# Logical CPUs: generation saturates the cores whatever Ray books, and booking whole CPUs
# would leave a 2-core machine unable to place a second Generator replica.
GENERATOR_CPUS = 0.5
RETRIEVER_CPUS = 0.25


def generator_gpus(settings: Settings) -> float:
    """``gen_num_gpus``: "auto" books one GPU per replica when the Ray cluster has one."""
    if settings.gen_num_gpus != "auto":
        return float(settings.gen_num_gpus)
    import ray

    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def batch_size(settings: Settings, gpus: float) -> int:
    """``gen_max_batch_size``; 0 picks by device. On a CPU a batch costs its rows' prefill one
    after another (measured: no throughput gain from 1 to 8), so big batches only add waiting
    and make every request of the batch late; a GPU prefills a batch in parallel."""
    return settings.gen_max_batch_size or (16 if gpus else 2)


def generator_options(settings: Settings) -> dict[str, Any]:
    gpus = generator_gpus(settings)
    size = batch_size(settings, gpus)
    return {
        "ray_actor_options": {"num_cpus": GENERATOR_CPUS, "num_gpus": gpus},
        "autoscaling_config": {"min_replicas": settings.gen_min_replicas,
                               "initial_replicas": settings.gen_min_replicas,
                               "max_replicas": settings.gen_max_replicas,
                               "target_ongoing_requests": settings.gen_target_ongoing_requests,
                               "upscale_delay_s": 3.0, "downscale_delay_s": 30.0},
        "max_ongoing_requests": max(16, 2 * size),
        # beyond this many waiting requests callers get an immediate 503 (their fast path
        # answers) instead of joining a queue that would outlive their deadline
        "max_queued_requests": 4 * size,
        "user_config": {"max_batch_size": size,
                        "batch_wait_ms": settings.gen_batch_wait_ms},
    }


def build_app(settings: Settings, bundle_dir: Path | str, milvus_uri: str) -> Application:
    """The application graph for one bundle, searching the Milvus at ``milvus_uri``."""
    bundle_dir = str(Path(bundle_dir).resolve())
    device = "auto" if generator_gpus(settings) else "cpu"
    generator = Generator.options(**generator_options(settings)).bind(bundle_dir, settings.gen_engine, device,
                                                                      settings.gen_threads)
    retriever = Retriever.options(num_replicas=settings.retriever_replicas,
                                  ray_actor_options={"num_cpus": RETRIEVER_CPUS}).bind(
        bundle_dir, milvus_uri, settings.milvus_collection, settings.milvus_token)
    return Ingress.bind(generator, retriever, bundle_dir, settings.max_request_history)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run`` / ``serve deploy``: ``args`` may hold ``bundle``,
    ``milvus_uri`` and any setting by its field name (e.g. ``gen_max_batch_size``);
    everything else comes from the ``STYLESTREAM_*`` environment of the Ray cluster."""
    args = dict(args or {})
    bundle = args.pop("bundle", None)
    milvus_uri = args.pop("milvus_uri", None)
    settings = Settings.from_env(**args)
    milvus_uri = milvus_uri or settings.milvus_uri
    if not milvus_uri:
        raise ValueError(f"no Milvus to search: pass milvus_uri in the application args or set "
                         f"{env_name('milvus_uri')}")
    return build_app(settings, bundle or settings.bundle_dir, milvus_uri)


def serve_config(settings: Settings, bundle_dir: Path | str, milvus_uri: str) -> dict[str, Any]:
    """A ``serve deploy`` config for this bundle (write it with ``stylestream serve --write-config``)."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.serve_host, "port": settings.serve_port},
        "applications": [{
            "name": APP_NAME, "route_prefix": "/", "import_path": "serving.app:app_builder",
            "args": {"bundle": str(Path(bundle_dir).resolve()), "milvus_uri": milvus_uri,
                     "gen_max_batch_size": settings.gen_max_batch_size,
                     "gen_batch_wait_ms": settings.gen_batch_wait_ms,
                     "gen_min_replicas": settings.gen_min_replicas,
                     "gen_max_replicas": settings.gen_max_replicas,
                     "gen_engine": settings.gen_engine, "gen_num_gpus": settings.gen_num_gpus,
                     "gen_threads": settings.gen_threads},
        }],
    }
