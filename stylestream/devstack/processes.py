"""Child processes that never outlive their parent.

Every service the dev stack starts is spawned with ``PR_SET_PDEATHSIG`` so the
kernel kills it if this process dies without running its clean-up (SIGKILL, OOM).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Children are started with fork + exec (a preexec_fn sets their parent-death signal). gRPC (Ray,
# pymilvus) with fork support on runs its fork handlers in the child before exec, which then
# aborted now and again (SIGABRT, "epoll_wait error: Bad file descriptor"). Nothing here uses
# gRPC across a fork, so it stays off; set before gRPC is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: clean-up then relies on stop()
        pass


def spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``argv`` with its output in ``log_path``, tied to this process's life."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its whole life
    try:
        return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, preexec_fn=_die_with_parent)
    finally:
        log.close()


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
    """Signal ``proc`` and wait; escalate to SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class StartError(RuntimeError):
    """A part of the stack did not start. ``summary``: one line for the user (the message
    itself carries the log's tail as well)."""

    def __init__(self, summary: str, log_path: Path | None = None):
        self.summary = summary + (f" (log: {log_path})" if log_path is not None else "")
        super().__init__(summary + _tail(log_path))


class StartTimeout(StartError, TimeoutError):
    """A part of the stack did not come up in time."""


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    """Poll ``check`` until true; fail early with the log's tail if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartError(f"{what} exited with code {proc.returncode}", log_path)
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise StartTimeout(f"{what} did not come up within {timeout:.0f} s", log_path)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _tail(log_path: Path | None, lines: int = 15) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "; log tail:\n" + "\n".join(text) if text else ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def adopt_orphans() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``):
    a daemon that a child of ours starts, and outlives it, stays in our process tree instead of
    moving to init, so it can still be found and stopped. False where not supported."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


def descendants() -> list:
    """This process's descendants (``psutil.Process``), children first."""
    import psutil

    return psutil.Process().children(recursive=True)


def kill_processes(procs: list, timeout: float = 10.0) -> None:
    """SIGTERM ``procs`` (``psutil.Process``), SIGKILL what is left after ``timeout``, and reap
    those that were our children (adopted orphans included), so no zombie stays either."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    for p in procs:
        try:
            os.waitpid(p.pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass
