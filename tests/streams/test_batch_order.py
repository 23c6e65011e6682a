"""A batch's events for one shopper are merged across topic partitions in event-time order,
each partition's own (offset) order kept."""

from __future__ import annotations

from types import SimpleNamespace

from streams.agents import in_event_time
from stylestream.records import ClickEvent, PurchaseEvent

T = 1_800_000_000.0


def item(kind: str, ts: float, partition: int, offset: int):
    cls = PurchaseEvent if kind == "purchase" else ClickEvent
    ev = cls(event_id=f"{kind}{offset}", user_id="u", item_id="i", ts=T + ts)
    return ev, SimpleNamespace(topic=f"events.{kind}s", partition=partition, offset=offset), None


def test_a_late_arriving_earlier_click_comes_before_the_purchase():
    buy, click = item("purchase", 5, 1, 10), item("click", 3, 1, 7)
    assert in_event_time([buy, click]) == [click, buy]


def test_one_partition_keeps_its_offset_order_even_when_times_disagree():
    first, second = item("click", 9, 0, 1), item("click", 2, 0, 2)
    assert in_event_time([first, second]) == [first, second]
    buy = item("purchase", 5, 0, 3)
    merged = in_event_time([first, second, buy])
    assert merged.index(first) < merged.index(second)
