from streams.sequence_table import UserSequence
from streams.trigger import IdleTracker, TriggerPolicy
from stylestream.records import ClickEvent, PurchaseEvent

T0 = 1_750_000_000.0


def click(i: int, ts: float | None = None) -> ClickEvent:
    return ClickEvent(event_id=f"c{i}", user_id="u", item_id=f"i{i}", ts=T0 + (ts if ts is not None else i))


def test_rolling_window_keeps_newest_in_event_time_order():
    seq = UserSequence()
    for i in [3, 1, 2, 5, 4]:
        assert seq.add(click(i), max_len=3)
    assert seq.item_ids == ["i3", "i4", "i5"]
    assert seq.n_events == 5 and seq.clicks_since_rec == 5


def test_redelivered_event_is_dropped():
    seq = UserSequence()
    assert seq.add(click(1), 10)
    assert not seq.add(click(1), 10)
    assert seq.n_events == 1


def test_redelivery_from_before_the_window_is_dropped_by_offset():
    seq = UserSequence()
    for i in range(10):
        assert seq.add(click(i), max_len=2, source=("events.clicks", 3, 100 + i))
    assert not seq.add(click(0), max_len=2, source=("events.clicks", 3, 100)), "replayed after a crash"
    assert seq.add(click(50), max_len=2, source=("events.clicks", 1, 5)), "other partitions are independent"
    assert seq.n_events == 11
    assert UserSequence.from_dict(seq.to_dict()).offsets == {"events.clicks/3": 109, "events.clicks/1": 5}


def test_round_trip_through_the_table_value():
    seq = UserSequence()
    seq.add(click(1), 10)
    seq.add(PurchaseEvent(event_id="p", user_id="u", item_id="i9", ts=T0 + 9), 10)
    back = UserSequence.from_dict(seq.to_dict())
    assert back == seq and back.events[-1].kind == "purchase"
    assert UserSequence.from_dict({}) == UserSequence()


def test_trigger_policy():
    policy = TriggerPolicy(every_clicks=3, idle_seconds=10)
    assert policy.on_event("purchase", 0)
    assert not policy.on_event("click", 2)
    assert policy.on_event("click", 3)
    assert not TriggerPolicy(every_clicks=0).on_event("click", 100)


def test_idle_tracker_fires_once_after_quiet_period():
    idle = IdleTracker(idle_seconds=10)
    idle.touch("u", "c1", answered=False, now=0)
    idle.touch("v", "c2", answered=True, now=0)
    assert idle.due(now=5) == []
    assert idle.due(now=11) == [("u", "c1")]
    assert idle.due(now=30) == []


def test_table_value_is_compact_json_bytes():
    seq = UserSequence()
    seq.add(click(1), 10, ("events.clicks", 0, 4))
    raw = seq.to_bytes()
    assert raw.startswith(b'{"events":[["c1","i1","click",') and b" " not in raw
    assert UserSequence.from_bytes(raw) == seq and UserSequence.from_bytes(b"") == UserSequence()
