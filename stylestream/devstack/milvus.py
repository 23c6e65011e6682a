"""The embedded Milvus: one Milvus Lite server process that every part reaches at one URI.

Milvus Lite opens its data folder in one process only, but the Retriever replicas, the
stream workers and the indexer are separate processes. So the dev stack runs Milvus
Lite's own gRPC server (``milvus-lite server``) as a child bound to 127.0.0.1, and hands
its address out: to children through ``MILVUS_URI``, and to other commands of the same
home folder through ``endpoint.json`` (written while the server runs, removed when it
stops). ``MILVUS_URI`` set by the user means a real Milvus, and nothing is started.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from stylestream.devstack.processes import free_port, pid_alive, port_open, spawn, stop, wait_until

log = logging.getLogger(__name__)

ENDPOINT = "endpoint.json"


class EmbeddedMilvus:
    """``milvus-lite server --data-dir DIR`` on a free loopback port, owned by this process."""

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1"):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / "milvus-lite.log"

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        exe = shutil.which("milvus-lite", path=str(Path(sys.executable).parent)) or shutil.which("milvus-lite")
        if exe is None:
            raise FileNotFoundError("the milvus-lite command is missing: install stylestream with its dependencies")
        return [exe, "server", "--data-dir", str(self.data_dir), "--host", self.host, "--port", str(self.port)]

    def start(self, timeout: float = 60.0) -> EmbeddedMilvus:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self.argv(), self.log_path)
        wait_until(self._answers, timeout, "Milvus Lite server", self.proc, self.log_path)
        (self.data_dir.parent / ENDPOINT).write_text(json.dumps({"uri": self.uri, "pid": self.proc.pid}) + "\n")
        log.info("Milvus Lite server pid %d at %s (data %s)", self.proc.pid, self.uri, self.data_dir)
        return self

    def _answers(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        from indexer.collection import connect

        client = connect(self.uri)
        try:
            client.list_collections()
        finally:
            client.close()
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would: Milvus Lite gets no chance to close its data."""
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)
            (self.data_dir.parent / ENDPOINT).unlink(missing_ok=True)
            log.info("killed the Milvus Lite server")
            self.proc = None

    def stop(self) -> None:
        """SIGINT: Milvus Lite closes its data cleanly on it (SIGTERM would not)."""
        if self.proc is not None:
            started = time.monotonic()
            code = stop(self.proc, signal.SIGINT, timeout=20)
            (self.data_dir.parent / ENDPOINT).unlink(missing_ok=True)
            if code == -signal.SIGKILL:
                log.warning("the Milvus Lite server did not stop within 20 s of SIGINT and was killed "
                            "(its data then reopens as after a crash)")
            else:
                log.info("stopped the Milvus Lite server (%.1f s)", time.monotonic() - started)
            self.proc = None


def running_endpoint(home: Path) -> str | None:
    """The URI of an embedded Milvus another command of this home folder is running, if any."""
    path = Path(home) / "milvus" / ENDPOINT
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not pid_alive(int(data.get("pid", 0))):
        return None
    host, _, port = data["uri"].removeprefix("http://").partition(":")
    return data["uri"] if port.isdigit() and port_open(host, int(port)) else None
