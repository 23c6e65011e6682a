"""What producers and clients may send, valid or broken: hypothesis strategies for event,
catalog and ``/recommend`` records, and a seeded mix of good and malformed events for a live
worker. Shared by the property tests and ``bench/bench_fuzz.py`` (imported as ``fuzz_records``).
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from stylestream.records import CLICKS, EVENT_TS_MAX, EVENT_TS_MIN, PURCHASES


def fuzz(n: int) -> settings:
    """Hypothesis settings for ``n`` cases: derandomised in CI (a red run reproduces);
    ``STYLESTREAM_FUZZ_SCALE`` times more, freshly random, in a bench run."""
    scale = int(os.environ.get("STYLESTREAM_FUZZ_SCALE", "1"))
    return settings(max_examples=n * scale, derandomize=scale == 1, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def dumps(value: object) -> bytes:
    """JSON as a careless producer writes it: NaN and Infinity allowed, any Unicode."""
    return json.dumps(value, allow_nan=True).encode("utf-8", errors="surrogatepass")


junk = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
ids = st.one_of(st.text(min_size=1, max_size=12), st.text(max_size=12),
                st.sampled_from(["x" * 128, "ü" * 64, "ü" * 65, "x" * 256, "x" * 257, "x" * 100_000]))


def long_text(limit: int) -> st.SearchStrategy:
    """Short text, or text just within and just over ``limit`` (long random text is slow to draw)."""
    return st.one_of(st.text(max_size=20), st.sampled_from(["q" * limit, "q" * (limit + 1), "ü" * limit]))
good_ts = st.floats(EVENT_TS_MIN, EVENT_TS_MAX)
bad_ts = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 1e300, 0.0, -1.0, 1.7e12]), st.floats())


def maybe(good: st.SearchStrategy, bad: st.SearchStrategy = junk) -> st.SearchStrategy:
    """Mostly ``good`` so records get past their first field, sometimes ``bad``."""
    return st.one_of(good, good, good, bad)


short_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
# Half the cases are well-formed records (so the bounds of what is accepted are tested too),
# half are the same records with any field, the value or the key broken.
good_events = st.fixed_dictionaries(
    {"event_id": short_ids, "user_id": short_ids, "item_id": short_ids, "ts": good_ts},
    optional={"price": st.floats(0, 1e4), "quantity": st.integers(1, 20), "query": st.text(max_size=20),
              "session_id": st.text(max_size=20)})
any_events = st.fixed_dictionaries(
    {"event_id": maybe(ids), "user_id": maybe(ids), "item_id": maybe(ids), "ts": maybe(good_ts, bad_ts)},
    optional={"kind": st.sampled_from(["click", "purchase", "like"]), "price": maybe(st.floats(0, 1e4)),
              "quantity": maybe(st.integers(1, 20)), "query": maybe(long_text(1024)),
              "session_id": maybe(long_text(128)), "extra": junk})


def _key(record: dict, field: str) -> bytes:
    value = record.get(field)
    return value.encode("utf-8", errors="surrogatepass") if isinstance(value, str) else b"?"


@st.composite
def event_records(draw: st.DrawFn) -> tuple[str, bytes | None, bytes | None]:
    """(topic, key, value) as a producer may send them."""
    if draw(st.booleans()):
        record = draw(good_events)
        return draw(st.sampled_from([CLICKS, PURCHASES])), _key(record, "user_id"), dumps(record)
    topic = draw(st.sampled_from([CLICKS, PURCHASES, CLICKS, PURCHASES, "events.returns"]))
    record = draw(any_events)
    for name in draw(st.sets(st.sampled_from(["event_id", "user_id", "item_id", "ts"]), max_size=1)):
        if draw(st.integers(0, 9)) == 0:
            record.pop(name)
    value = draw(st.one_of(st.just(dumps(record)), st.just(dumps(record)), st.just(dumps(record)), st.none(),
                           st.binary(max_size=64), st.just(dumps([record])), st.just(dumps(record)[:-3])))
    right_key = _key(record, "user_id")
    key = draw(st.one_of(st.just(right_key), st.just(right_key), st.none(), st.binary(max_size=8)))
    return topic, key, value


good_updates = st.fixed_dictionaries(
    {"op": st.sampled_from(["upsert", "delete"]), "item_id": short_ids, "ts": st.floats(0, 1e10)},
    optional={"title": st.text(max_size=20), "category": st.text(max_size=20), "price": st.floats(0, 1e4),
              "in_stock": st.booleans()})
any_updates = st.fixed_dictionaries(
    {"op": maybe(st.sampled_from(["upsert", "delete"])), "item_id": maybe(ids),
     "ts": maybe(st.floats(0, 1e10), bad_ts)},
    optional={"title": maybe(long_text(1024)), "category": maybe(long_text(256)),
              "brand": maybe(st.text(max_size=30)), "colour": maybe(st.text(max_size=30)),
              "price": maybe(st.floats(0, 1e4), bad_ts), "in_stock": maybe(st.booleans())})


@st.composite
def catalog_records(draw: st.DrawFn) -> tuple[bytes | None, bytes | None]:
    """(key, value) of a ``catalog.updates`` record."""
    if draw(st.booleans()):
        record = draw(good_updates)
        return draw(st.sampled_from([None, _key(record, "item_id")])), dumps(record)
    record = draw(any_updates)
    value = draw(st.one_of(st.just(dumps(record)), st.just(dumps(record)), st.none(), st.binary(max_size=64)))
    key = draw(st.one_of(st.none(), st.just(_key(record, "item_id")), st.binary(max_size=8)))
    return key, value


good_history = st.lists(st.fixed_dictionaries({"item_id": short_ids},
                                              optional={"kind": st.sampled_from(["click", "purchase"]),
                                                        "ts": good_ts}), min_size=1, max_size=5)
history_events = st.fixed_dictionaries(
    {"item_id": maybe(ids)},
    optional={"kind": maybe(st.sampled_from(["click", "purchase"])), "ts": maybe(good_ts, bad_ts), "x": junk})
recommend_bodies = st.one_of(
    st.fixed_dictionaries({"user_id": short_ids, "history": good_history}, optional={"k": st.integers(1, 100)}),
    st.fixed_dictionaries({"user_id": maybe(ids), "history": maybe(st.lists(history_events, max_size=5))},
                          optional={"k": maybe(st.integers(1, 100)), "tenant": junk}),
    junk)


# ---- a seeded mix for a live worker ---------------------------------------------------------

@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    malformed: str  # "" for a good event, else which of the MALFORMATIONS
    duplicate: bool = False  # a good event sent a second time


def _good(rng: random.Random, i: int, users: int, prefix: str) -> dict:
    return {"event_id": f"{prefix}{i}", "user_id": f"f{rng.randrange(users)}", "item_id": f"i{rng.randrange(30)}",
            "ts": 1_800_000_000.0 + i}


MALFORMATIONS: dict[str, object] = {
    "bad JSON": lambda r: (r["user_id"].encode(), dumps(r)[:-2]),
    "not an object": lambda r: (r["user_id"].encode(), dumps([r])),
    "not UTF-8": lambda r: (r["user_id"].encode(), b"\xff\xfe" + dumps(r)),
    "missing item_id": lambda r: (r["user_id"].encode(), dumps({k: v for k, v in r.items() if k != "item_id"})),
    "ts NaN": lambda r: (r["user_id"].encode(), dumps({**r, "ts": math.nan})),
    "ts 1e300": lambda r: (r["user_id"].encode(), dumps({**r, "ts": 1e300})),
    "ts in ms": lambda r: (r["user_id"].encode(), dumps({**r, "ts": r["ts"] * 1000})),
    "100 kB event_id": lambda r: (r["user_id"].encode(), dumps({**r, "event_id": "e" * 100_000})),
    "no key": lambda r: (None, dumps(r)),
    "key of another user": lambda r: (b"someone-else", dumps(r)),
    "user_id a number": lambda r: (r["user_id"].encode(), dumps({**r, "user_id": 7})),
    "tombstone": lambda r: (r["user_id"].encode(), None),
}


def event_mix(total: int, malformed: int, users: int = 50, seed: int = 0, prefix: str = "z") -> list[Sent]:
    """``total`` events of which ``malformed`` are broken, round-robin over the twelve
    :data:`MALFORMATIONS`, in a seeded random order; good events carry a few redeliveries by
    ``event_id`` (the same event sent twice), which the worker counts as duplicates."""
    rng = random.Random(seed)
    kinds = list(MALFORMATIONS)
    out: list[Sent] = []
    for i in range(total):
        record = _good(rng, i, users, prefix)
        topic = PURCHASES if rng.random() < 0.2 else CLICKS
        if i < malformed:
            name = kinds[i % len(kinds)]
            key, value = MALFORMATIONS[name](record)  # type: ignore[operator]
            out.append(Sent(topic, key, value, name))
        elif i % 40 == 39:
            again = out[-1]
            out.append(Sent(again.topic, again.key, again.value, "", duplicate=True))
        else:
            out.append(Sent(topic, record["user_id"].encode(), dumps(record), ""))
    # shuffled, but each duplicate stays after its original (the same partition keeps their order)
    order = sorted(range(total), key=lambda j: (rng.random() if not out[j].duplicate else -1, j))
    firsts = [out[j] for j in order if not out[j].duplicate]
    for j in range(total):
        if out[j].duplicate:
            firsts.insert(firsts.index(out[j - 1]) + 1, out[j])
    return firsts
