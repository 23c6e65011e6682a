import json

import pytest

from stylestream.records import (
    CLICKS,
    DEAD_LETTER_RAW_MAX_BYTES,
    PURCHASES,
    BadRecord,
    ClickEvent,
    DeadLetter,
    PurchaseEvent,
    parse_event,
)

T = 1_750_000_000.0  # a plausible event time


def raw(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_valid_events_parse_to_their_type():
    click = parse_event(CLICKS, raw(event_id="e1", user_id="u", item_id="i", ts=T + 0.5, query="red dress"))
    assert isinstance(click, ClickEvent) and click.query == "red dress"
    buy = parse_event(PURCHASES, raw(event_id="e2", user_id="u", item_id="i", ts=T + 1, price=9.5, quantity=2))
    assert isinstance(buy, PurchaseEvent) and buy.quantity == 2


@pytest.mark.parametrize(("topic", "value", "reason"), [
    (CLICKS, b"{oops", "bad JSON"),
    (CLICKS, b"\xff\xfe", "bad JSON"),
    (CLICKS, b'"just a string"', "expected an object"),
    (CLICKS, None, "empty value"),
    (CLICKS, raw(user_id="u", item_id="i", ts=T), "event_id: Field required"),
    (CLICKS, raw(event_id="", user_id="u", item_id="i", ts=T), "event_id"),
    (PURCHASES, raw(event_id="e", user_id="u", item_id="i", ts="noon"), "ts: Input should be a valid number"),
    (PURCHASES, raw(event_id="e", user_id="u", item_id="i", ts=T, quantity=0), "quantity"),
    (CLICKS, raw(event_id="e", user_id="u", item_id="i", ts=T, kind="wishlist"), "unknown event kind"),
    ("events.returns", raw(event_id="e", user_id="u", item_id="i", ts=T), "unknown event kind"),
    # what a new user sent to a running `stylestream up` and got accepted before
    (CLICKS, b'{"event_id": "e", "user_id": "u", "item_id": "i", "ts": NaN}', "ts: Input should be a finite number"),
    (CLICKS, b'{"event_id": "e", "user_id": "u", "item_id": "i", "ts": Infinity}', "finite"),
    (CLICKS, raw(event_id="e", user_id="u", item_id="i", ts=1e300), "between 1990 and 2100"),
    (CLICKS, raw(event_id="e", user_id="u", item_id="i", ts=1.0), "between 1990 and 2100"),
    (CLICKS, raw(event_id="e", user_id="u", item_id="i", ts=T * 1000), "milliseconds?"),
    (CLICKS, raw(event_id="e" * 100_000, user_id="u", item_id="i", ts=T), "record of 100"),
    (CLICKS, raw(event_id="e" * 200, user_id="u", item_id="i", ts=T), "event_id: Value error, longer than 128"),
    (CLICKS, raw(event_id="e", user_id="ü" * 70, item_id="i", ts=T), "user_id: Value error, longer than 128 bytes"),
    (CLICKS, raw(event_id="e", user_id="u", item_id="i" * 257, ts=T), "item_id"),
    (CLICKS, raw(event_id="e", user_id="u", item_id="i", ts=T, query="q" * 2000), "query"),
    (PURCHASES, b'{"event_id": "e", "user_id": "u", "item_id": "i", "ts": 1750000000, "price": NaN}', "price"),
    (PURCHASES, raw(event_id="e", user_id="u", item_id="i", ts=T, price=-3), "price"),
    (PURCHASES, raw(event_id="e", user_id="u", item_id="i", ts=T, quantity=10**9), "quantity"),
])
def test_malformed_events_raise_a_one_line_reason(topic, value, reason):
    with pytest.raises(BadRecord) as info:
        parse_event(topic, value)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_an_event_must_be_keyed_by_its_user():
    value = raw(event_id="e", user_id="u1", item_id="i", ts=T)
    assert parse_event(CLICKS, value, b"u1").user_id == "u1"
    with pytest.raises(BadRecord, match="no key: events must be keyed by user_id"):
        parse_event(CLICKS, value, None)
    with pytest.raises(BadRecord, match="does not match user_id"):
        parse_event(CLICKS, value, b"u2")


def test_dead_letter_of_a_huge_record_keeps_its_start_and_length():
    letter = DeadLetter.of(CLICKS, 1, 2, b"x" * (DEAD_LETTER_RAW_MAX_BYTES + 10), "too big")
    assert len(letter.raw) == DEAD_LETTER_RAW_MAX_BYTES and letter.raw_bytes == DEAD_LETTER_RAW_MAX_BYTES + 10
    whole = DeadLetter.of(CLICKS, 1, 2, b"{x", "bad JSON")
    assert whole.raw == "{x" and whole.raw_bytes is None and b"raw_bytes" not in whole.to_bytes()


def test_dead_letter_keeps_undecodable_bytes_as_base64():
    letter = DeadLetter(topic=CLICKS, partition=0, offset=7, raw=b"\xff\x00", error="bad JSON")
    assert letter.raw == "base64:/wA="
    assert DeadLetter(topic=CLICKS, partition=0, offset=7, raw=b"{x", error="e").raw == "{x"
