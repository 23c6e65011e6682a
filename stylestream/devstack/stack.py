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
from stylestream.devstack.broker import EmbeddedBroker, remove_static_member
from stylestream.devstack.milvus import EmbeddedMilvus, running_endpoint
from stylestream.devstack.processes import (
    adopt_orphans,
    descendants,
    free_port,
    kill_processes,
    port_open,
    spawn,
    stop,
    wait_until,
)
from stylestream.kafka_security import KafkaSecurity
from stylestream.topics import ensure_topics

log = logging.getLogger(__name__)


class RayStartError(RuntimeError):
    """Local Ray could not be started (the message is one line)."""

    @property
    def summary(self) -> str:
        return str(self)


@dataclass
class Worker:
    """One Faust worker process and the port of its web view (``/stats/``, ``/users/<id>/``)."""

    proc: subprocess.Popen
    web_port: int
    log_path: Path
    worker_id: str
    group: str = "stylestream"  # the Faust app id: consumer group, and prefix of the static instance id

    @property
    def group_instance_id(self) -> str:
        return f"{self.group}-{self.worker_id}"

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
    ray_dashboard_url: str = ""
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

    def restart_broker(self, timeout: float = 60.0) -> str:
        """Start the embedded broker again on its port and data folder (after a crash, or
        ``broker.kill()`` in a test); clients reconnect to the same address."""
        if self.broker is None:
            raise RuntimeError("no embedded broker to restart (KAFKA_BOOTSTRAP_SERVERS is external)")
        self.broker.restart(timeout)
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
        group = "stylestream-indexer" if module == "indexer" else "stylestream"
        worker = Worker(proc, port, log_path, worker_id, group)
        try:
            wait_until(lambda: worker.stats()["ready"], timeout, f"{module} worker", proc, log_path)
        except BaseException:
            stop(proc)
            raise
        log.info("%s worker %s pid %d ready (web 127.0.0.1:%d)", module, worker_id, proc.pid, port)
        return worker

    def stop_worker(self, worker: Worker, kill: bool = False, leave_group: bool = False) -> None:
        """Stop (or SIGKILL) a worker. ``leave_group``: also take its static membership out of
        the consumer group, so the other workers take its partitions now.

        A static member leaves no group on its own (it is expected back under the same id);
        Kafka drops it once its session times out, but noida-db never expires a session (a
        dead member, leader or not, keeps its partitions until it rejoins), so a worker that
        is not coming back must be removed by id (LeaveGroup v3, KIP-345)."""
        import signal

        stop(worker.proc, signal.SIGKILL if kill else signal.SIGTERM, timeout=30)
        self.workers.remove(worker)
        if leave_group:
            remove_static_member(self.bootstrap, worker.group, worker.group_instance_id,
                                 KafkaSecurity.of(self.settings))

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

    def start_ray(self, gcs_wait_s: tuple[int, ...] = (60, 120)) -> None:
        """Local Ray, its dashboard on 127.0.0.1; one attempt per ``gcs_wait_s`` entry (how long
        to wait for the GCS to come up), each failed one cleaned up before the next.

        On a busy 2-core machine Ray's start-up is slow: the GCS may not publish its port in
        time, and the dashboard (a dozen Python processes) may miss Ray's 60 s start-up window
        or die on start. So the dashboard is optional here (Ray and Serve run without it: one
        warning line), the GCS gets a second, longer attempt, and every process a failed
        attempt started, orphans included, is stopped before the retry and after the last:
        nothing is left behind (a failed ``ray.init`` leaves its GCS and dashboard processes
        running, and a retry beside them was seen to hang). A dashboard port already in use
        fails at once with one line: a retry cannot help.
        """
        port = self.settings.ray_dashboard_port
        if port and port_open("127.0.0.1", port):
            raise RayStartError(f"the Ray dashboard port 127.0.0.1:{port} is already in use (another Ray?): "
                                f"set STYLESTREAM_RAY_DASHBOARD_PORT to a free port")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # dashboard bound to 127.0.0.1 only
        # Ray starts its workers at nice 15; here those workers are the Serve replicas, the
        # product itself, and at nice 15 any busy process (a consumer, the stream) starves the
        # Generator: measured 5-14 s per answer instead of 0.7 s on 2 cores.
        os.environ.setdefault("RAY_worker_niceness", "0")
        user_gcs_wait = os.environ.get("RAY_gcs_server_port_wait_time_s")
        import ray

        adopt_orphans()  # a failed attempt's daemons stay in our tree, to be stopped
        self._before_ray = {p.pid for p in descendants()}
        reasons = []
        for attempt, wait_s in enumerate(gcs_wait_s, 1):
            # read by ray.init at each start (a user's setting wins)
            os.environ["RAY_gcs_server_port_wait_time_s"] = user_gcs_wait or str(wait_s)
            try:
                ray.init(include_dashboard=None, dashboard_host="127.0.0.1", dashboard_port=port,
                         configure_logging=False, log_to_driver=False, namespace="stylestream")
                break
            except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception/RuntimeError on start-up
                reasons.append(_one_line(exc))
                ray.shutdown()
                self._stop_ray_leftovers()
                if attempt == len(gcs_wait_s):
                    raise RayStartError(f"local Ray did not start ({'; '.join(reasons)}); "
                                        f"its logs: {_ray_logs()}") from None
                log.warning("local Ray did not start (%s); retrying", reasons[-1])
            finally:
                if user_gcs_wait is None:
                    os.environ.pop("RAY_gcs_server_port_wait_time_s", None)
        self.ray_started = True
        self.ray_dashboard_url = _dashboard_url(port)
        if self.ray_dashboard_url:
            log.info("local Ray up, dashboard %s", self.ray_dashboard_url)
        else:
            log.warning("local Ray is up without its dashboard (it did not start in time; see %s/dashboard.*): "
                        "Ray and Serve work without it", _ray_logs())

    def _stop_ray_leftovers(self) -> None:
        """Stop every Ray process started since ``start_ray`` that is still running (also the
        ones ``ray.shutdown`` does not know of: an untracked dashboard, its module processes)."""
        before = getattr(self, "_before_ray", None)
        if before is None:
            return
        leftovers = [p for p in descendants() if p.pid not in before and _is_ray_process(p)]
        if leftovers:
            log.info("stopping %d leftover Ray processes", len(leftovers))
            kill_processes(leftovers)

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
            self._stop_ray_leftovers()
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


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception as one short line (Ray's start-up errors run to pages of log tail)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ray_logs() -> str:
    import tempfile

    return str(Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs")


def _dashboard_url(port: int) -> str:
    """The dashboard's URL when it answers (``port`` 0: the one Ray chose), else ''."""
    import ray

    try:
        url = ray._private.worker.get_dashboard_url()  # noqa: SLF001 - the only way to read the chosen port
    except Exception:  # noqa: BLE001
        url = f"127.0.0.1:{port}" if port else ""
    if not url:
        return ""
    url = url if url.startswith("http") else f"http://{url}"
    try:
        with urllib.request.urlopen(url, timeout=5):
            return url
    except OSError:
        return ""


def _is_ray_process(p: Any) -> bool:
    import psutil

    try:
        cmd = " ".join(p.cmdline())
        return "/ray/" in cmd or cmd.startswith(("ray::", "ray-dashboard")) or p.name() in ("gcs_server", "raylet")
    except psutil.Error:
        return False
