"""A record handed over without four tasks: a fast path in Faust's consumer loop.

Faust passes every fetched record to its topic conductor with
``await self.wait_first(callback(message), self.suspend_flow.wait())``, so that a rebalance
(``suspend_flow``) can abandon a callback stuck on a full agent queue. mode's ``wait_first``
starts four tasks for it (the callback, that event, the service's stopped and crashed events),
waits for the first and cancels three: 44 µs per record on asyncio and 31 on uvloop here
(``bench/bench_consumer_fast_path.py``; 2.0 and 1.9 with this), a tenth of a worker's time at
2,600 records/s, and more through the loop work those tasks cost beside it. One worker drains
1.36× the events/s with it on asyncio, 1.27× on uvloop (``bench/results/stream_fast_path.json``).

Almost always the callback finishes without waiting: the record fits in the agent's queue.
So its first step runs at once, and only a callback that does wait (a full queue, flow
control, producer back-pressure) is raced against the other waits by the original
``wait_first``, which is then unchanged. The callback ran its first step at once in the
original too (a task's first step runs on the next loop iteration, before any event could
be waited on), so what can happen is the same, minus the tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport.consumer import Consumer
from mode.services import WaitResults

_original = Consumer.wait_first


class _Resumed:
    """Awaitable that drives, to its end, a coroutine whose first step already ran and
    yielded ``yielded`` (what it waits on). Cancellation is thrown into the coroutine."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any):
        self.coro, self.yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - CancelledError included: the coroutine decides
                step = coro.throw
                arg: Any = exc
            else:
                step, arg = coro.send, sent
            try:
                yielded = step(arg)
            except StopIteration as stop:
                return stop.value


async def wait_first(self: Consumer, *coros: Any, timeout: float | None = None) -> WaitResults:
    """``Service.wait_first`` that first steps a leading coroutine in place: done at once, it
    wins without any task; otherwise the race runs as before with the coroutine resumed."""
    first = coros[0] if coros else None
    if timeout is not None or not asyncio.iscoroutine(first) or self._stopped.is_set() or self._crashed.is_set():
        return await _original(self, *coros, timeout=timeout)
    try:
        yielded = first.send(None)
    except StopIteration as stop:
        _close(coros[1:])
        return WaitResults([first], [stop.value], False)
    except BaseException:
        _close(coros[1:])
        raise
    return await _original(self, _Resumed(first, yielded), *coros[1:], timeout=timeout)


def _close(coros: tuple[Any, ...]) -> None:
    """Close the waits that were never started (closing one neither runs it nor warns)."""
    for coro in coros:
        if asyncio.iscoroutine(coro):
            coro.close()


def install(enabled: bool = True) -> None:
    """Patch Faust's consumer (idempotent); ``enabled=False`` restores the original."""
    Consumer.wait_first = wait_first if enabled else _original  # type: ignore[method-assign]
