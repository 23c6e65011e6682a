"""Property tests: whatever a producer sends, validation accepts a bounded, well-formed record
or refuses it with a one-line reason that fits a dead letter; nothing else can happen."""

from __future__ import annotations

import json
import math

from fuzz_records import catalog_records, event_records, fuzz
from hypothesis import given
from hypothesis import strategies as st

from streams.sequence_table import UserSequence
from stylestream.records import (
    EVENT_TS_MAX,
    EVENT_TS_MIN,
    ID_MAX_BYTES,
    ITEM_ID_MAX_BYTES,
    TITLE_MAX_BYTES,
    BadRecord,
    DeadLetter,
    parse_catalog_update,
    parse_event,
)


def refused_cleanly(exc: BadRecord, topic: str, value: bytes | None) -> None:
    reason = str(exc)
    assert reason and "\n" not in reason and len(reason) < 2_000
    letter = DeadLetter.of(topic, 0, 0, value, reason)
    assert len(letter.to_bytes()) < 100 * 1024, "a dead letter fits any broker's message limit"


def bounded(text: str | None, limit: int) -> bool:
    return text is None or len(text.encode("utf-8", "surrogatepass")) <= limit


@fuzz(7_000)
@given(event_records())
def test_an_event_record_is_accepted_bounded_or_dead_lettered_with_a_reason(record):
    topic, key, value = record
    try:
        event = parse_event(topic, value, key)
    except BadRecord as exc:
        refused_cleanly(exc, topic, value)
        return
    assert math.isfinite(event.ts) and EVENT_TS_MIN <= event.ts <= EVENT_TS_MAX
    assert bounded(event.event_id, ID_MAX_BYTES) and bounded(event.user_id, ID_MAX_BYTES)
    assert bounded(getattr(event, "session_id", None), ID_MAX_BYTES)
    assert bounded(getattr(event, "query", None), TITLE_MAX_BYTES)
    assert bounded(event.item_id, ITEM_ID_MAX_BYTES) and event.event_id and event.user_id and event.item_id
    assert key is not None and key.decode(errors="replace") == event.user_id
    seq = UserSequence()
    assert seq.add(event, 50, (topic, 0, 0))
    json.dumps(seq.to_dict(), allow_nan=False)  # the table value stays strict JSON


@fuzz(3_000)
@given(catalog_records())
def test_a_catalog_record_is_accepted_bounded_or_refused_with_a_reason(record):
    key, value = record
    try:
        update = parse_catalog_update(value, key)
    except BadRecord as exc:
        refused_cleanly(exc, "catalog.updates", value)
        return
    assert math.isfinite(update.ts) and update.ts >= 0
    assert update.price is None or (math.isfinite(update.price) and update.price >= 0)
    assert bounded(update.item_id, ITEM_ID_MAX_BYTES) and bounded(update.title, TITLE_MAX_BYTES)
    assert key is None or key.decode(errors="replace") == update.item_id


@fuzz(1_000)
@given(st.sampled_from(["events.clicks", "events.purchases"]), st.binary(max_size=512), st.binary(max_size=16))
def test_arbitrary_bytes_never_escape_validation(topic, value, key):
    try:
        parse_event(topic, value, key)
    except BadRecord as exc:
        refused_cleanly(exc, topic, value)
