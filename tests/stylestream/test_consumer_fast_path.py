"""The consumer fast path keeps what Faust's ``wait_first`` promises its consumer loop: the
callback's outcome (value or error), and a callback still waiting when another wait ends
is cancelled."""

from __future__ import annotations

import asyncio

import pytest
from faust.transport.consumer import Consumer
from mode import Service

from stylestream import consumer_fast_path
from stylestream.consumer_fast_path import wait_first


class Probe(Service):
    """Faust's Consumer is a mode Service; wait_first needs only that much."""


def run(coro):
    return asyncio.run(coro)


def test_a_callback_done_at_once_wins_without_starting_the_other_waits():
    async def main():
        probe, flow = Probe(), asyncio.Event()

        async def callback():
            return "delivered"

        other = flow.wait()
        tasks_before = len(asyncio.all_tasks())
        result = await wait_first(probe, callback(), other)
        assert len(asyncio.all_tasks()) == tasks_before  # no task was started for it
        assert other.cr_frame is None  # closed, never run
        return result

    result = run(main())
    assert result.results == ["delivered"] and not result.stopped


def test_a_callback_that_waits_is_resumed_and_its_value_returned():
    async def main():
        probe, flow, steps = Probe(), asyncio.Event(), []

        async def callback():
            steps.append("first")
            await asyncio.sleep(0.01)
            steps.append("resumed")
            return 42

        result = await wait_first(probe, callback(), flow.wait())
        return steps, result

    steps, result = run(main())
    assert steps == ["first", "resumed"] and result.results == [42] and not result.stopped


def test_a_callback_still_waiting_when_flow_is_suspended_is_cancelled():
    async def main():
        probe, flow, seen = Probe(), asyncio.Event(), []
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)  # full: the callback waits, as on a full agent queue

        async def callback():
            try:
                await queue.put(1)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.01, flow.set)  # a rebalance suspends the flow
        result = await wait_first(probe, callback(), flow.wait())
        await asyncio.sleep(0)  # let the cancellation reach the callback
        return seen, result, queue.qsize()

    seen, result, size = run(main())
    assert seen == ["cancelled"] and size == 1
    assert result.results == [True]  # the flow event won


@pytest.mark.parametrize("where", ["first step", "after resuming"])
def test_a_callback_error_reaches_the_consumer_loop(where):
    async def main():
        probe, flow = Probe(), asyncio.Event()

        async def callback():
            if where == "after resuming":
                await asyncio.sleep(0)
            raise ValueError(where)

        await wait_first(probe, callback(), flow.wait())

    with pytest.raises(ValueError, match=where):
        run(main())


def test_install_patches_faust_consumer_and_restores_it():
    original = consumer_fast_path._original
    try:
        consumer_fast_path.install(True)
        assert Consumer.wait_first is wait_first
        consumer_fast_path.install(False)
        assert Consumer.wait_first is original
    finally:
        consumer_fast_path.install(False)
