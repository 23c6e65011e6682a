"""Start and stop everything one machine needs: broker, topics, stream workers, Milvus Lite,
Ray and the Serve application.

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
from stylestream.devstack.milvus import EmbeddedMilvus, running_endpoint
from stylestream.devstack.processes import free_port, spawn, stop, wait_until
from stylestream.kafka_security import KafkaSecurity
from stylestream.topics import ensure_topics

log = logging.getLogger(__name__)


class RayStartError(RuntimeError):
    """Local Ray could not be started."""


@dataclass
class Worker:
    """One Faust worker process and the port of its web view (``/stats/``, ``/users/<id>/``)."""

    proc: subprocess.Popen
    web_port: int
    log_path: Path
    worker_id: str

    def get(self, path: str, timeout: float = 5.0) -> Any:
        return _get(f"http://127.0.0.1:{self.web_port}{path}", timeout)

    def stats(self) -> dict[str, int]:
        """Counters of this worker's life, and ``ready``: partitions assigned and tables recovered."""
        return self.get("/stats/")


@dataclass
class DevStack:
    settings: Settings
    broker: EmbeddedBroker | None = None
    workers: list[Worker] = field(default_factory=list)
    indexer: Worker | None = None
    milvus: EmbeddedMilvus | None = None
    milvus_uri: str = ""
    ray_started: bool = False
    serving_url: str = ""
    workers_started: int = 0

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers or (self.broker.bootstrap if self.broker else "")

    # -- broker and topics ---------------------------------------------------------------
    def start_broker(self) -> str:
        if not self.settings.kafka_bootstrap_servers:
            self.broker = EmbeddedBroker(self.settings.broker, self.settings.home / "broker").start()
        ensure_topics(self.bootstrap, self.settings.topic_partitions, security=KafkaSecurity.of(self.settings))
        return self.bootstrap

    # -- stream workers ------------------------------------------------------------------
    def worker_env(self, web_port: int, worker_id: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.settings.as_env())
        env.update({"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "STYLESTREAM_WORKER_WEB_PORT": str(web_port),
                    "STYLESTREAM_DATASET": str(self.settings.dataset_dir), "STYLESTREAM_WORKER_ID": worker_id,
                    "STYLESTREAM_BUNDLE": str(self.settings.bundle_dir)})
        if self.milvus_uri:
            env["MILVUS_URI"] = self.milvus_uri
        if self.serving_url:
            env["STYLESTREAM_SERVING_URL"] = self.serving_url
        return env

    def start_worker(self, timeout: float = 120.0) -> Worker:
        """Start a Faust worker and wait until it has joined the group and recovered its table.

        Workers take the lowest free id (worker-1, worker-2, ...), so a replacement for a
        crashed worker reclaims its static group membership and its partitions.
        """
        taken = {w.worker_id for w in self.workers}
        worker_id = next(f"worker-{i}" for i in range(1, len(taken) + 2) if f"worker-{i}" not in taken)
        worker = self._start_faust("streams", worker_id, "STYLESTREAM_WORKER_WEB_PORT", timeout)
        self.workers.append(worker)
        return worker

    def start_indexer(self, timeout: float = 120.0) -> Worker:
        """Start the indexer's Faust worker (catalog.updates → Milvus); needs Milvus started."""
        if not self.milvus_uri:
            self.start_milvus()
        self.indexer = self._start_faust("indexer", "indexer-1", "STYLESTREAM_INDEXER_WEB_PORT", timeout)
        return self.indexer

    def stop_indexer(self, kill: bool = False) -> None:
        import signal

        if self.indexer is not None:
            stop(self.indexer.proc, signal.SIGKILL if kill else signal.SIGTERM, timeout=30)
            self.indexer = None

    def _start_faust(self, module: str, worker_id: str, port_variable: str, timeout: float) -> Worker:
        port = free_port()
        self.workers_started += 1
        log_path = self.settings.home / "logs" / f"{worker_id}.{self.workers_started}.log"
        level = {"WARNING": "warn", "CRITICAL": "crit"}.get(self.settings.log_level.upper(),
                                                            self.settings.log_level.lower())
        env = self.worker_env(port, worker_id)
        env[port_variable] = str(port)
        proc = spawn([sys.executable, "-m", module, "worker", "-l", level], log_path, env=env, cwd=Path.cwd())
        worker = Worker(proc, port, log_path, worker_id)
        try:
            wait_until(lambda: worker.stats()["ready"], timeout, f"{module} worker", proc, log_path)
        except BaseException:
            stop(proc)
            raise
        log.info("%s worker %s pid %d ready (web 127.0.0.1:%d)", module, worker_id, proc.pid, port)
        return worker

    def stop_worker(self, worker: Worker, kill: bool = False) -> None:
        import signal

        stop(worker.proc, signal.SIGKILL if kill else signal.SIGTERM, timeout=30)
        self.workers.remove(worker)

    # -- Milvus, Ray and the Serve application --------------------------------------------
    def start_milvus(self) -> str:
        """The Milvus every process shares: ``MILVUS_URI``, an embedded server this home
        folder already runs, or a new embedded Milvus Lite server. Returns its URI."""
        home = self.settings.home
        self.milvus_uri = self.settings.milvus_uri or running_endpoint(home) or ""
        if not self.milvus_uri:
            self.milvus = EmbeddedMilvus(home / "milvus" / "data").start()
            self.milvus_uri = self.milvus.uri
        log.info("Milvus at %s", self.milvus_uri)
        return self.milvus_uri

    def start_ray(self, attempts: int = 2) -> None:
        """Local Ray with its dashboard on 127.0.0.1; a start that hangs is retried once.

        On a busy 2-core machine Ray's head sometimes never comes up (its GCS never writes
        its port file); a second, fresh attempt has come up every time it was tried.
        """
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # dashboard bound to 127.0.0.1 only
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "60")
        # Ray starts its workers at nice 15; here those workers are the Serve replicas, the
        # product itself, and at nice 15 any busy process (a consumer, the stream) starves the
        # Generator: measured 5-14 s per answer instead of 0.7 s on 2 cores.
        os.environ.setdefault("RAY_worker_niceness", "0")
        for attempt in range(1, attempts + 1):
            try:
                ray.init(include_dashboard=True, dashboard_host="127.0.0.1",
                         dashboard_port=self.settings.ray_dashboard_port, configure_logging=False,
                         log_to_driver=False, namespace="stylestream")
                break
            except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception/RuntimeError on start-up
                ray.shutdown()
                if attempt == attempts:
                    raise RayStartError(f"local Ray did not start ({attempts} attempts): {str(exc)[:200]}") from None
                log.warning("local Ray did not start (%s); retrying once", str(exc)[:120])
        self.ray_started = True
        log.info("local Ray up, dashboard http://127.0.0.1:%d", self.settings.ray_dashboard_port)

    def start_serving(self, bundle_dir: Path | None = None, timeout: float = 600.0) -> str:
        """Index the bundle in Milvus if needed, then run the Serve application on local Ray;
        returns the ingress URL (``POST /recommend``)."""
        from ray import serve

        from indexer.build import build_index
        from indexer.collection import connect
        from models.bundle import Bundle
        from serving.app import APP_NAME, build_app

        bundle = Bundle.load(bundle_dir or self.settings.bundle_dir)
        uri = self.milvus_uri or self.start_milvus()
        client = connect(uri, self.settings.milvus_token)
        try:
            build_index(client, bundle, self.settings.milvus_collection, progress=False)
        finally:
            client.close()
        if not self.ray_started:
            self.start_ray()
        host, port = self.settings.serve_host, self.settings.serve_port
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(self.settings, bundle.folder, uri), name=APP_NAME, route_prefix="/",
                  blocking=False)
        self.serving_url = f"http://{host}:{port}"
        wait_until(lambda: _get(self.serving_url + "/healthz")["status"] == "ok", timeout, "the Serve application")
        log.info("Serve application %s (bundle %s) at %s", APP_NAME, bundle.version, self.serving_url)
        return self.serving_url

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        for worker in list(self.workers):
            self.stop_worker(worker)
        self.stop_indexer()
        if self.ray_started:
            import ray
            from ray import serve

            if self.serving_url:
                serve.shutdown()
                self.serving_url = ""
            ray.shutdown()
            self.ray_started = False
        if self.milvus is not None:
            self.milvus.stop()
            self.milvus = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> DevStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get(url: str, timeout: float = 5.0) -> Any:
    import json

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())
