"""Importer for Amazon Reviews 2023 (McAuley lab): ``<Category>.jsonl`` + ``meta_<Category>.jsonl``.

Why: the paper's own data is Amazon fashion, so a real Amazon category is the closest
comparison to its numbers. A review is the only trace of a purchase the data set has, so each
review becomes a purchase of its ``parent_asin`` (the product, not the size/colour variant) at
its timestamp (ms since epoch). Items are the reviewed products, with text from the metadata
file: title, category (the last, finest of ``categories``, else ``main_category``), brand
(``store``), colour (``details["Color"]``), price (parsed; "—" and the like give NaN).
``first_seen`` is the first review, or the "Date First Available" in ``details`` when that is
earlier (the product was on sale before anyone reviewed it).

Both files may be gzipped (``.jsonl.gz``). Lines that are not JSON objects or lack a needed
key are skipped and counted; a file with none of the needed keys is a :class:`DataError`.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.data.dataset import DataError, Dataset
from models.data.hm import ImportResult, finish_tally, open_tracked, require_file

# Keys a file must have (any one of each group), checked on its first objects.
REVIEW_KEYS = (("user_id",), ("parent_asin", "asin"), ("timestamp",))
META_KEYS = (("parent_asin",),)
COLOUR_KEYS = ("Color", "Colour", "color", "colour")
# Timestamps outside this range are not milliseconds since epoch of a real review.
MIN_TS_MS, MAX_TS_MS = 631_152_000_000, 4_102_444_800_000  # 1990-01-01 .. 2100-01-01
CHECK_AFTER = 1000  # objects read before deciding that a file has none of the needed keys
PROGRESS_EVERY = 20_000
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?|\.\d+")


def import_amazon(reviews: Path, meta: Path, progress: bool = True,
                  name: str | None = None) -> ImportResult:
    """Import one Amazon Reviews 2023 category (reviews + metadata) into a :class:`Dataset`.

    ``name`` defaults to "amazon-" plus the category from the reviews file name.
    """
    reviews = require_file(Path(reviews), "Amazon reviews")
    meta = require_file(Path(meta), "Amazon metadata")
    tally: Counter[str] = Counter()
    inter = _read_reviews(reviews, progress, tally)
    wanted = set(inter["item_id"].unique())
    meta_rows, meta_unused = _read_meta(meta, wanted, progress, tally)
    read, skipped, reasons = finish_tally(tally)
    items = _items(inter, meta_rows)
    name = name or f"amazon-{_category(reviews)}"
    extra = {
        "format": "amazon-reviews-2023",
        "reviews_file": str(reviews),
        "meta_file": str(meta),
        "items_without_meta": int(items["title"].isna().sum()),
        "meta_unused": meta_unused,
        "skipped_reasons": reasons,
    }
    dataset = Dataset(items, inter, name=name,
                      source=f"Amazon Reviews 2023 (McAuley lab): {reviews.name}, {meta.name}",
                      extra=extra)
    return ImportResult(dataset, read, skipped, reasons)


def _category(path: Path) -> str:
    """"Clothing_Shoes_and_Jewelry.jsonl.gz" -> "clothing-shoes-and-jewelry"."""
    stem = re.sub(r"(\.jsonl|\.json)?(\.gz)?$", "", path.name)
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "reviews"


def _json_objects(path: Path, what: str, keys: tuple[tuple[str, ...], ...], progress: bool,
                  tally: Counter[str]) -> Iterator[dict[str, Any]]:
    """JSON objects of a .jsonl(.gz) file, one per non-blank line, with a byte progress bar.

    Lines that are not JSON objects are counted and skipped. If the first ``CHECK_AFTER``
    objects have none of the wanted ``keys`` the file is the wrong one: DataError.
    """
    seen: set[str] = set()
    objects = 0
    line_no = 0
    with open_tracked(path, progress, f"{what} {path.name}") as (stream, tracker):
        try:
            for line_no, line in enumerate(stream, 1):
                if line_no % PROGRESS_EVERY == 0:
                    tracker.advance()
                if not line.strip():
                    continue
                tally["read"] += 1
                try:
                    obj = json.loads(line)
                except ValueError:
                    obj = None
                if not isinstance(obj, dict):
                    tally[f"{what}: not a JSON object"] += 1
                    continue
                objects += 1
                if objects <= CHECK_AFTER:
                    seen.update(obj)
                    if objects == CHECK_AFTER:
                        _check_keys(path, what, keys, seen)
                yield obj
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DataError(f"{what} file {path} cannot be read after line {line_no}: "
                            f"{exc}") from None
    if 0 < objects < CHECK_AFTER:
        _check_keys(path, what, keys, seen)


def _check_keys(path: Path, what: str, keys: tuple[tuple[str, ...], ...], seen: set[str]) -> None:
    """DataError if some needed key never occurs: a wrong file, not a few broken lines."""
    missing = [" or ".join(group) for group in keys if not seen.intersection(group)]
    if missing:
        has = ", ".join(sorted(seen)[:12]) or "nothing"
        raise DataError(f"{what} file {path} lacks required key(s) {', '.join(missing)} "
                        f"(its objects have: {has})")


def _timestamp_ms(value: Any) -> int | None:
    """Milliseconds since epoch from a number or numeric string; None if not plausible."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    ms = int(value)
    return ms if MIN_TS_MS <= ms < MAX_TS_MS else None


def _text(value: Any) -> str | None:
    """A non-empty stripped string, or None."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _read_reviews(path: Path, progress: bool, tally: Counter[str]) -> pd.DataFrame:
    """Reviews as purchases: user_id, item_id (parent_asin, else asin), ts."""
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    for obj in _json_objects(path, "reviews", REVIEW_KEYS, progress, tally):
        user = _text(obj.get("user_id"))
        item = _text(obj.get("parent_asin")) or _text(obj.get("asin"))
        if user is None or item is None:
            tally["reviews: missing user_id or parent_asin"] += 1
            continue
        ts = _timestamp_ms(obj.get("timestamp"))
        if ts is None:
            tally["reviews: missing or invalid timestamp"] += 1
            continue
        users.append(user)
        items.append(item)
        stamps.append(ts)
    if not users:
        read, skipped, reasons = finish_tally(tally)
        raise DataError(f"Amazon reviews file {path} has no usable lines "
                        f"({read} read, {skipped} skipped: {reasons})")
    return pd.DataFrame({
        "user_id": users,
        "item_id": items,
        "ts": pd.to_datetime(np.asarray(stamps, dtype=np.int64), unit="ms", utc=True),
        "kind": "purchase",
    })


def parse_price(value: Any) -> float:
    """A price from a number or text ("$12.99", "1,299.00", "—"); NaN when there is none."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and value >= 0 else math.nan
    if isinstance(value, str):
        m = _NUMBER.search(value)
        if m:
            try:
                return float(m.group().replace(",", ""))
            except ValueError:
                return math.nan
    return math.nan


def _category_of(obj: dict[str, Any]) -> str | None:
    """The finest category: last non-empty entry of ``categories``, else ``main_category``."""
    cats = obj.get("categories")
    if isinstance(cats, list):
        for c in reversed(cats):
            if _text(c):
                return _text(c)
    return _text(obj.get("main_category"))


def _read_meta(path: Path, wanted: set[str], progress: bool,
               tally: Counter[str]) -> tuple[pd.DataFrame, int]:
    """Metadata rows of the reviewed products (first line per product wins); (rows, unused)."""
    rows: dict[str, tuple[Any, ...]] = {}
    unused = 0
    for obj in _json_objects(path, "meta", META_KEYS, progress, tally):
        item = _text(obj.get("parent_asin"))
        if item is None:
            tally["meta: missing parent_asin"] += 1
            continue
        if item not in wanted:
            unused += 1
            continue
        if item in rows:
            continue
        details = obj.get("details") if isinstance(obj.get("details"), dict) else {}
        colour = next((_text(details.get(k)) for k in COLOUR_KEYS if _text(details.get(k))), None)
        rows[item] = (item, _text(obj.get("title")), _category_of(obj), _text(obj.get("store")),
                      colour, parse_price(obj.get("price")),
                      _text(details.get("Date First Available")))
    frame = pd.DataFrame(list(rows.values()),
                         columns=["item_id", "title", "category", "brand", "colour", "price",
                                  "available"])
    return frame, unused


def _items(inter: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Reviewed products with their metadata; first_seen = first review or availability date."""
    first = inter.groupby("item_id", sort=False)["ts"].min().rename("first_review").reset_index()
    items = first.merge(meta, on="item_id", how="left", validate="one_to_one")
    available = pd.to_datetime(items["available"], format="%B %d, %Y", errors="coerce", utc=True)
    items["first_seen"] = available.where(available < items["first_review"],
                                          items["first_review"])
    items["category"] = items["category"].fillna("unknown")
    return items.drop(columns=["first_review", "available"])
