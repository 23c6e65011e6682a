"""Where each source partition's applied events end, kept in the sequence table itself.

Faust commits the consumer offsets its streams acknowledged, and around a rebalance it can
hand a partition's records to no stream (records fetched for the old generation are skipped)
and still commit past them. Seen here: of two workers one was killed, and the survivor never
applied the 11-21 purchases each of three partitions received while the group rebalanced,
in 1 of ~40 runs (tests/faults, under load). Those events were committed and lost for good.

So the committed offset is not trusted for what was applied. The worker keeps, per source
partition, the offset of the last event it handled (applied or dead-lettered), in the sequence
table under a key no shopper can have (ids refuse control characters). The checkpoint goes to
the same changelog partition as the sequences it covers, after them (every half second at
most): a recovery brings back both, or loses a suffix, never a checkpoint ahead of its
events; one behind them only costs redeliveries, which the sequences drop. Each
batch is checked against it before anything is applied:

- an event at or below the checkpoint is a redelivery, and is dropped;
- an event beyond checkpoint + 1 means records were skipped: the partition is read again from
  checkpoint + 1 (a seek), and its later events are held back until that one comes; unless
  retention has deleted the missing records (the log starts beyond them): that is logged
  and the gap accepted.

A partition that gets no later event would show no gap, so an audit (``audit``, on a timer)
also compares each quiet partition's consumer position with what it owes, twice in a row
before it acts. A needless seek costs only redeliveries, which are dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Source = tuple[str, int]  # (topic, partition)
# A seek that brought nothing back by then is issued again: records the consumer had already
# fetched past the gap still arrive after a seek, and Faust drops any record below the last
# offset it handed over, so a seek can be undone by them (seen: once in 30 rewinds).
REWIND_RETRY_S = 2.0
QUIET_S = 3.0  # a partition the audit checks has handed over nothing for this long
CHECKPOINT_EVERY_S = 0.5  # how often each source's checkpoint is written (see checkpoint())


def checkpoint_key(source: Source) -> str:
    return f"\x00applied/{source[0]}/{source[1]}"


@dataclass
class Admitted:
    """What a batch may apply: ``events`` in arrival order; ``redelivered``: dropped as already
    handled; ``held_back``: dropped until a skipped stretch has been read again."""

    events: list[Any] = field(default_factory=list)
    redelivered: int = 0
    held_back: int = 0


class SourceOffsets:
    """The continuity check of the stream's input (see the module's docstring).

    ``table``: the sequence table (bytes values); ``seek(source, offset)``: move the consumer;
    ``log_start(source)``: the partition's first offset still kept; ``generation()``: a value
    that changes at every rebalance (Faust's rebalance count), whose change drops what this
    worker remembers in memory."""

    def __init__(self, table: MutableMapping[str, bytes],
                 seek: Callable[[Source, int], Awaitable[None]],
                 log_start: Callable[[Source], Awaitable[int]],
                 generation: Callable[[], int]):
        self.table, self.seek, self.log_start, self.generation = table, seek, log_start, generation
        self._next: dict[Source, int] = {}  # this generation: the next offset each source owes
        self._rewinding: dict[Source, float] = {}  # source -> when its seek was issued
        self._generation: int | None = None
        self._last_seen: dict[Source, float] = {}  # source -> when it last handed over an event
        self._written_at: dict[Source, float] = {}  # source -> when its checkpoint was last written
        self._audited: dict[Source, tuple[int, int]] = {}  # the last audit's (read, owed) where read > owed
        self._generation_since = time.monotonic()
        self.rewinds = 0  # seeks issued
        self.gaps_accepted = 0  # records retention deleted before they were read

    async def admit(self, events: list[Any]) -> Admitted:
        """The events of a batch that continue each source partition exactly."""
        self._check_generation()
        out = Admitted()
        now = time.monotonic()
        for event in events:
            msg = event.message
            source: Source = (msg.topic, msg.partition)
            self._last_seen[source] = now
            expected = self._next.get(source)
            if expected is None:
                expected = await self._first_expected(source)
                self._next[source] = expected if expected is not None else msg.offset
                expected = self._next[source]
            if msg.offset < expected:
                out.redelivered += 1
            elif msg.offset == expected:
                out.events.append(event)
                self._next[source] = expected + 1
                if self._rewinding.pop(source, None) is not None:
                    log.warning("%s[%d] read again from offset %d: caught up", *source, expected)
            elif await self._gap_accepted(source, expected, msg.offset):
                out.events.append(event)
                self._next[source] = msg.offset + 1
            else:
                out.held_back += 1
        return out

    async def audit(self, positions: dict[Source, int]) -> None:
        """``positions``: each assigned source's next offset the consumer will hand over. A
        source quiet for QUIET_S whose consumer is past what it owes had records skipped with
        nothing after them to show it: read it again from there."""
        self._check_generation()
        now = time.monotonic()
        seen, self._audited = self._audited, {}
        for source, offset in positions.items():
            if now - self._last_seen.get(source, self._generation_since) < QUIET_S:
                continue
            expected = self._next.get(source)
            if expected is None:
                expected = await self._first_expected(source)
                if expected is None:
                    continue
                self._next[source] = expected
            if offset > expected:
                # Only when nothing moved since the last audit either: records on their way to a
                # slow agent look the same for a moment (a soak on a busy machine re-read 55).
                if seen.get(source) == (offset, expected):
                    await self._gap_accepted(source, expected, offset)
                self._audited[source] = (offset, expected)

    def _check_generation(self) -> None:
        """A new generation: partitions may have moved, or the table been recovered, so each
        source's next offset is read again from the table's checkpoint.

        Not from what this worker itself owed before, though that is later (the checkpoint is
        written every half second) and would spare re-reading that half second: a broker that
        lost acknowledged writes (noida-db on SIGKILL; Kafka after an unclean leader election)
        gives the recovered table and the source partitions back without their last records,
        and then writes new records at the lost offsets. Starting from this worker's memory
        dropped those new records as redeliveries (840 of 4,000 in tests/faults). The table's
        checkpoint comes back with the table, so what it says was applied, was."""
        if self.generation() != self._generation:
            self._generation = self.generation()
            self._generation_since = time.monotonic()
            self._next.clear()
            self._rewinding.clear()

    def checkpoint(self, applied: dict[Source, Any], write: Callable[[Any, str, bytes], None]) -> None:
        """Record, per source, the offset of the last event handled in this batch, at most once
        per CHECKPOINT_EVERY_S; ``applied``: source -> that event; ``write(event, key, value)``
        writes on the event's partition.

        A checkpoint behind the sequences is safe: within a generation the run of offsets is
        unbroken (``admit``), so a shopper's sequence remembers the last offset it applied and
        everything before it; what a later worker reads again from an old checkpoint, the
        sequences drop as redeliveries. Written every batch, the checkpoint doubled the
        changelog records of a worker taking an event at a time (832 -> 496 events/s)."""
        now = time.monotonic()
        for source, event in applied.items():
            if now - self._written_at.get(source, -CHECKPOINT_EVERY_S) >= CHECKPOINT_EVERY_S:
                write(event, checkpoint_key(source), json.dumps({"applied": event.message.offset}).encode())
                self._written_at[source] = now

    async def _first_expected(self, source: Source) -> int | None:
        """The checkpoint + 1; for a partition never handled, its log start (None, accepting
        whatever comes first, when the broker does not answer)."""
        raw = self.table.get(checkpoint_key(source))
        if raw:
            return int(json.loads(raw)["applied"]) + 1
        return await self._log_start(source)

    async def _log_start(self, source: Source) -> int | None:
        try:
            return await self.log_start(source)
        except Exception as exc:  # noqa: BLE001 - a broker that does not answer: decide without it
            log.warning("%s[%d]: log start unknown (%r)", *source, exc)
            return None

    async def _gap_accepted(self, source: Source, expected: int, offset: int) -> bool:
        """``offset`` came while ``expected`` was owed: accept the gap if retention deleted the
        records in between; else seek back to ``expected`` (once per REWIND_RETRY_S)."""
        issued = self._rewinding.get(source)
        if issued is not None and time.monotonic() - issued < REWIND_RETRY_S:
            return False
        start = await self._log_start(source)
        if start is not None and start > expected:
            log.warning("%s[%d]: offsets %d..%d were deleted (retention) before this group read them",
                        *source, expected, start - 1)
            self.gaps_accepted += 1
            self._next[source] = expected = start
            if offset == start:
                return True
        log.warning("%s[%d]: offset %d came while %d was owed (a stretch the consumer passed over, or a "
                    "checkpoint behind the committed offset): reading from %d again", *source, offset, expected,
                    expected)
        try:
            await self.seek(source, expected)
        except Exception as exc:  # noqa: BLE001 - e.g. the partition was revoked meanwhile: the next check retries
            log.warning("%s[%d]: seek to %d failed (%r)", *source, expected, exc)
            return False
        self._rewinding[source] = time.monotonic()
        self.rewinds += 1
        return False
