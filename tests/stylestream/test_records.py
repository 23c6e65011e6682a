import json

import pytest

from stylestream.records import CLICKS, PURCHASES, BadRecord, ClickEvent, DeadLetter, PurchaseEvent, parse_event


def raw(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_valid_events_parse_to_their_type():
    click = parse_event(CLICKS, raw(event_id="e1", user_id="u", item_id="i", ts=1.5, query="red dress"))
    assert isinstance(click, ClickEvent) and click.query == "red dress"
    buy = parse_event(PURCHASES, raw(event_id="e2", user_id="u", item_id="i", ts=2, price=9.5, quantity=2))
    assert isinstance(buy, PurchaseEvent) and buy.quantity == 2


@pytest.mark.parametrize(("topic", "value", "reason"), [
    (CLICKS, b"{oops", "bad JSON"),
    (CLICKS, b"\xff\xfe", "bad JSON"),
    (CLICKS, b'"just a string"', "expected an object"),
    (CLICKS, None, "empty value"),
    (CLICKS, raw(user_id="u", item_id="i", ts=1), "event_id: Field required"),
    (CLICKS, raw(event_id="", user_id="u", item_id="i", ts=1), "event_id"),
    (PURCHASES, raw(event_id="e", user_id="u", item_id="i", ts="noon"), "ts: Input should be a valid number"),
    (PURCHASES, raw(event_id="e", user_id="u", item_id="i", ts=1, quantity=0), "quantity"),
    (CLICKS, raw(event_id="e", user_id="u", item_id="i", ts=1, kind="wishlist"), "unknown event kind"),
    ("events.returns", raw(event_id="e", user_id="u", item_id="i", ts=1), "unknown event kind"),
])
def test_malformed_events_raise_a_one_line_reason(topic, value, reason):
    with pytest.raises(BadRecord) as info:
        parse_event(topic, value)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_dead_letter_keeps_undecodable_bytes_as_base64():
    letter = DeadLetter(topic=CLICKS, partition=0, offset=7, raw=b"\xff\x00", error="bad JSON")
    assert letter.raw == "base64:/wA="
    assert DeadLetter(topic=CLICKS, partition=0, offset=7, raw=b"{x", error="e").raw == "{x"
