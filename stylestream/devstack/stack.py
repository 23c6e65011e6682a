"""Start and stop everything one machine needs: broker, topics, stream workers, Milvus Lite, Ray.

External services named by ``KAFKA_BOOTSTRAP_SERVERS`` / ``MILVUS_URI`` are used as
they are and nothing is started for them. Everything started here is a child of
this process and is stopped on exit (and killed by the kernel if we die first).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stylestream.config import Settings
from stylestream.devstack.broker import EmbeddedBroker
from stylestream.devstack.processes import free_port, spawn, stop, wait_until
from stylestream.topics import ensure_topics

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """One Faust worker process and the port of its web view (``/stats/``, ``/users/<id>/``)."""

    proc: subprocess.Popen
    web_port: int
    log_path: Path
    worker_id: str

    def get(self, path: str, timeout: float = 5.0) -> Any:
        import json

        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=timeout) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, int]:
        """Counters of this worker's life, and ``ready``: partitions assigned and tables recovered."""
        return self.get("/stats/")


@dataclass
class DevStack:
    settings: Settings
    broker: EmbeddedBroker | None = None
    workers: list[Worker] = field(default_factory=list)
    milvus: Any = None
    ray_started: bool = False
    workers_started: int = 0

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers or (self.broker.bootstrap if self.broker else "")

    # -- broker and topics ---------------------------------------------------------------
    def start_broker(self) -> str:
        if not self.settings.kafka_bootstrap_servers:
            self.broker = EmbeddedBroker(self.settings.broker, self.settings.home / "broker").start()
        ensure_topics(self.bootstrap, self.settings.topic_partitions)
        return self.bootstrap

    # -- stream workers ------------------------------------------------------------------
    def worker_env(self, web_port: int, worker_id: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.settings.as_env())
        env.update({"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "STYLESTREAM_WORKER_WEB_PORT": str(web_port),
                    "STYLESTREAM_DATASET": str(self.settings.dataset_dir), "STYLESTREAM_WORKER_ID": worker_id})
        return env

    def start_worker(self, timeout: float = 120.0) -> Worker:
        """Start a Faust worker and wait until it has joined the group and recovered its table.

        Workers take the lowest free id (worker-1, worker-2, ...), so a replacement for a
        crashed worker reclaims its static group membership and its partitions.
        """
        taken = {w.worker_id for w in self.workers}
        worker_id = next(f"worker-{i}" for i in range(1, len(taken) + 2) if f"worker-{i}" not in taken)
        port = free_port()
        self.workers_started += 1
        log_path = self.settings.home / "logs" / f"{worker_id}.{self.workers_started}.log"
        level = {"WARNING": "warn", "CRITICAL": "crit"}.get(self.settings.log_level.upper(),
                                                            self.settings.log_level.lower())
        argv = [sys.executable, "-m", "streams", "worker", "-l", level]
        proc = spawn(argv, log_path, env=self.worker_env(port, worker_id), cwd=Path.cwd())
        worker = Worker(proc, port, log_path, worker_id)
        self.workers.append(worker)
        wait_until(lambda: worker.stats()["ready"], timeout, "stream worker", proc, log_path)
        log.info("stream worker pid %d ready (web 127.0.0.1:%d)", proc.pid, port)
        return worker

    def stop_worker(self, worker: Worker, kill: bool = False) -> None:
        import signal

        stop(worker.proc, signal.SIGKILL if kill else signal.SIGTERM, timeout=30)
        self.workers.remove(worker)

    # -- Milvus and Ray ------------------------------------------------------------------
    def start_milvus(self) -> Any:
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # silence gRPC's fork notices on every child
        from pymilvus import MilvusClient

        uri = self.settings.milvus_uri or str(self.settings.home / "milvus.db")
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.milvus = MilvusClient(uri)
        log.info("Milvus at %s", uri)
        return self.milvus

    def start_ray(self) -> None:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # dashboard bound to 127.0.0.1 only
        # On a busy 2-core machine the GCS can take longer than Ray's default 30 s to bind.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=self.settings.ray_dashboard_port, configure_logging=False,
                 log_to_driver=False, namespace="stylestream")
        self.ray_started = True
        log.info("local Ray up, dashboard http://127.0.0.1:%d", self.settings.ray_dashboard_port)

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        for worker in list(self.workers):
            self.stop_worker(worker)
        if self.ray_started:
            import ray

            ray.shutdown()
            self.ray_started = False
        if self.milvus is not None:
            self.milvus.close()
            self.milvus = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> DevStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
