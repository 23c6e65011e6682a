"""The stream's continuity check: every source partition's events are applied in an unbroken
run of offsets from its checkpoint, whatever offsets the consumer hands over."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from streams.source_offsets import SourceOffsets, checkpoint_key
from stylestream.records import BadRecord, parse_event

CLICKS = "events.clicks"


def ev(offset: int, partition: int = 0, topic: str = CLICKS) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition, offset=offset))


class Consumer:
    """What SourceOffsets asks of the consumer: seeks (recorded), each partition's log start,
    the group generation."""

    def __init__(self, log_start: int = 0):
        self.seeks: list[tuple[tuple[str, int], int]] = []
        self.start = log_start
        self.gen = 1

    async def seek(self, source, offset):
        self.seeks.append((source, offset))

    async def log_start(self, source):
        return self.start


def make(table=None, log_start=0):
    consumer = Consumer(log_start)
    table = {} if table is None else table
    return SourceOffsets(table, consumer.seek, consumer.log_start, lambda: consumer.gen), consumer, table


def offsets(admitted) -> list[int]:
    return [e.message.offset for e in admitted.events]


def admit(so, events):
    return asyncio.run(so.admit(events))


def test_a_new_partition_is_applied_from_its_log_start_and_checkpointed():
    so, consumer, table = make()
    got = admit(so, [ev(0), ev(1), ev(2)])
    assert offsets(got) == [0, 1, 2] and not consumer.seeks
    so.checkpoint({(CLICKS, 0): got.events[-1]}, lambda event, key, value: table.__setitem__(key, value))
    assert json.loads(table[checkpoint_key((CLICKS, 0))]) == {"applied": 2}


def test_no_shopper_id_can_be_a_checkpoint_key():
    key = checkpoint_key((CLICKS, 0))
    value = json.dumps({"event_id": "e1", "user_id": key, "item_id": "i1", "ts": 1.8e9}).encode()
    with pytest.raises(BadRecord, match="control characters"):
        parse_event(CLICKS, value, key.encode())


def test_redelivered_events_below_the_checkpoint_are_dropped():
    so, consumer, _ = make({checkpoint_key((CLICKS, 0)): b'{"applied": 9}'})
    got = admit(so, [ev(7), ev(8), ev(9), ev(10), ev(11)])
    assert offsets(got) == [10, 11] and got.redelivered == 3 and not consumer.seeks


def test_skipped_offsets_are_read_again_and_later_events_held_back_until_they_come():
    so, consumer, _ = make({checkpoint_key((CLICKS, 0)): b'{"applied": 99}'})
    got = admit(so, [ev(121), ev(122)])  # 100..120 reached no stream
    assert offsets(got) == [] and got.held_back == 2
    assert consumer.seeks == [((CLICKS, 0), 100)] and so.rewinds == 1
    got = admit(so, [ev(123)])  # still buffered past the hole: held back, no second seek
    assert offsets(got) == [] and len(consumer.seeks) == 1
    got = admit(so, [ev(100), ev(101), ev(102)])  # the seek's redelivery
    assert offsets(got) == [100, 101, 102] and got.held_back == 0


def test_a_hole_inside_a_batch_holds_back_only_that_partition():
    so, consumer, _ = make()
    got = admit(so, [ev(0), ev(0, partition=1), ev(2), ev(1, partition=1)])
    assert offsets(got) == [0, 0, 1] and got.held_back == 1
    assert consumer.seeks == [((CLICKS, 0), 1)]


def test_records_deleted_by_retention_are_a_gap_accepted_not_a_seek():
    so, consumer, _ = make({checkpoint_key((CLICKS, 0)): b'{"applied": 5}'}, log_start=50)
    got = admit(so, [ev(50), ev(51)])
    assert offsets(got) == [50, 51] and not consumer.seeks and so.gaps_accepted == 1


def test_a_new_generation_reads_the_checkpoint_again():
    table = {checkpoint_key((CLICKS, 0)): b'{"applied": 9}'}
    so, consumer, _ = make(table)
    assert offsets(admit(so, [ev(10)])) == [10]
    # the partition went to another worker and came back: it applied up to 30 meanwhile
    table[checkpoint_key((CLICKS, 0))] = b'{"applied": 30}'
    consumer.gen = 2
    got = admit(so, [ev(11), ev(31)])
    assert offsets(got) == [31] and got.redelivered == 1 and not consumer.seeks


def test_the_audit_reads_again_a_quiet_partition_whose_position_passed_its_checkpoint(monkeypatch):
    import streams.source_offsets as module

    so, consumer, _ = make({checkpoint_key((CLICKS, 0)): b'{"applied": 9}',
                            checkpoint_key((CLICKS, 1)): b'{"applied": 4}'})
    monkeypatch.setattr(module, "QUIET_S", 0.0)
    asyncio.run(so.audit({(CLICKS, 0): 30, (CLICKS, 1): 5}))  # p0 owes 10 but was read to 30
    assert consumer.seeks == []  # records on their way look the same for a moment
    asyncio.run(so.audit({(CLICKS, 0): 30, (CLICKS, 1): 5}))  # nothing moved since
    assert consumer.seeks == [((CLICKS, 0), 10)]
    assert offsets(admit(so, [ev(10), ev(11)])) == [10, 11]


def test_the_audit_leaves_a_partition_that_is_still_moving(monkeypatch):
    import streams.source_offsets as module

    so, consumer, _ = make()
    monkeypatch.setattr(module, "QUIET_S", 0.0)
    asyncio.run(so.audit({(CLICKS, 0): 40}))
    admit(so, [ev(0), ev(1)])  # a slow agent, but it got further
    asyncio.run(so.audit({(CLICKS, 0): 40}))
    assert not consumer.seeks


def test_the_audit_leaves_a_partition_that_is_handing_over_events(monkeypatch):
    import streams.source_offsets as module

    so, consumer, _ = make()
    admit(so, [ev(0), ev(1)])
    monkeypatch.setattr(module, "QUIET_S", 60.0)
    asyncio.run(so.audit({(CLICKS, 0): 40}))  # 2..39 fetched, on their way to the agent
    asyncio.run(so.audit({(CLICKS, 0): 40}))
    assert not consumer.seeks


def test_without_an_answer_from_the_broker_a_new_partition_starts_where_it_is_read():
    so, consumer, _ = make()

    async def no_answer(source):
        raise TimeoutError("broker away")

    so.log_start = no_answer
    assert offsets(admit(so, [ev(40), ev(41)])) == [40, 41] and not consumer.seeks


def test_a_seek_that_fails_is_tried_again_on_the_next_gap():
    so, consumer, _ = make({checkpoint_key((CLICKS, 0)): b'{"applied": 9}'})
    calls = []

    async def revoked(source, offset):
        calls.append(offset)
        if len(calls) == 1:
            raise RuntimeError("partition not assigned")

    so.seek = revoked
    assert admit(so, [ev(20)]).held_back == 1 and so.rewinds == 0
    assert admit(so, [ev(21)]).held_back == 1 and so.rewinds == 1 and calls == [10, 10]


def test_a_checkpoint_is_written_at_most_every_half_second_per_source():
    so, _, table = make()
    writes = []
    got = admit(so, [ev(0), ev(1)])
    for _ in range(3):
        so.checkpoint({(CLICKS, 0): got.events[-1]}, lambda event, key, value: writes.append(key))
    assert writes == [checkpoint_key((CLICKS, 0))]


def test_a_new_generation_starts_from_the_tables_checkpoint_not_this_workers_memory():
    """The table may have been recovered without its last writes (a broker that lost them), and
    the source then holds new records at the offsets this worker had already passed."""
    table = {checkpoint_key((CLICKS, 0)): b'{"applied": 9}'}
    so, consumer, _ = make(table)
    assert offsets(admit(so, [ev(10), ev(11), ev(12)])) == [10, 11, 12]  # checkpoint not written yet
    consumer.gen = 2  # a rebalance: the consumer resumes at its committed offset, 12
    got = admit(so, [ev(12), ev(13)])
    assert offsets(got) == [] and got.held_back == 2 and consumer.seeks == [((CLICKS, 0), 10)]
    assert offsets(admit(so, [ev(10), ev(11), ev(12), ev(13)])) == [10, 11, 12, 13]  # the sequences drop repeats
