"""Amazon Reviews 2023 importer: reviews become purchases, metadata becomes item text."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from models.data.amazon import import_amazon, parse_price
from models.data.dataset import DataError, Dataset

T0 = 1_588_687_728_923  # 2020-05-05 14:08:48.923 UTC, in ms


def _review(user: str | None, item: str | None, ts: object, **more: object) -> str:
    obj: dict[str, object] = {"rating": 5.0, "title": "Nice", "text": "Fits well", "images": [],
                              "asin": f"{item}-v1", "helpful_vote": 0,
                              "verified_purchase": True, **more}
    if user is not None:
        obj["user_id"] = user
    if item is not None:
        obj["parent_asin"] = item
    if ts is not None:
        obj["timestamp"] = ts
    return json.dumps(obj)


REVIEWS = [
    _review("U1", "P1", T0),
    _review("U1", "P2", T0 + 60_000),
    _review("U2", "P1", str(T0 + 120_000)),  # numeric string: accepted
    _review("U2", "P3", T0 + 180_000),       # no metadata line: kept, text-less
    "{not json",
    "[1, 2, 3]",
    _review(None, "P1", T0),                 # no user
    _review("U3", "P1", "yesterday"),        # bad timestamp
    _review("U3", "P1", None),               # no timestamp
    "",                                      # blank lines are not rows
]
META = [
    {"main_category": "AMAZON FASHION", "title": "Navy linen shirt", "average_rating": 4.5,
     "rating_number": 10, "features": [], "description": [], "price": 19.99, "images": [],
     "videos": [], "store": "Acme", "categories": ["Clothing, Shoes & Jewelry", "Men", "Shirts"],
     "details": {"Color": "Navy", "Date First Available": "March 3, 2019"}, "parent_asin": "P1",
     "bought_together": None},
    {"main_category": "AMAZON FASHION", "title": "Red dress", "price": "—", "store": None,
     "categories": [], "details": {"Colour": "Red", "Date First Available": "June 1, 2021"},
     "parent_asin": "P2"},
    {"main_category": "AMAZON FASHION", "title": "Never reviewed", "price": "$1,299.50",
     "parent_asin": "P9"},
    {"title": "No id"},
]
META_LINES = [json.dumps(m) for m in META] + ['{"broken": ']
EXPECTED_REASONS = {
    "meta: missing parent_asin": 1,
    "meta: not a JSON object": 1,
    "reviews: missing or invalid timestamp": 2,
    "reviews: missing user_id or parent_asin": 1,
    "reviews: not a JSON object": 2,
}


def write_amazon(folder: Path, gz: bool = False) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl.gz" if gz else ".jsonl"
    paths = folder / f"Clothing_Shoes_and_Jewelry{suffix}", folder / f"meta_Clothing{suffix}"
    for path, lines in zip(paths, (REVIEWS, META_LINES), strict=True):
        data = ("\n".join(lines) + "\n").encode()
        path.write_bytes(gzip.compress(data) if gz else data)
    return paths


@pytest.fixture
def amazon_files(tmp_path: Path) -> tuple[Path, Path]:
    return write_amazon(tmp_path / "amazon")


def test_counts_of_imported_and_skipped_lines(amazon_files: tuple[Path, Path]) -> None:
    result = import_amazon(*amazon_files, progress=False)
    assert result.skipped_reasons == EXPECTED_REASONS
    assert result.rows_read == 9 + 5  # non-blank review lines + meta lines
    assert result.rows_skipped == 7
    inter = result.dataset.interactions
    assert list(inter["item_id"]) == ["P1", "P2", "P1", "P3"]
    assert (inter["kind"] == "purchase").all()
    assert inter["ts"].iloc[0] == pd.Timestamp("2020-05-05 14:08:48.923", tz="UTC")
    assert result.dataset.name == "amazon-clothing-shoes-and-jewelry"
    assert result.dataset.extra["meta_unused"] == 1


def test_items_from_metadata(amazon_files: tuple[Path, Path]) -> None:
    items = import_amazon(*amazon_files, progress=False).dataset.items.set_index("item_id")
    assert set(items.index) == {"P1", "P2", "P3"}  # reviewed products only
    shirt = items.loc["P1"]
    assert (shirt.title, shirt.category, shirt.brand, shirt.colour, shirt.price) == (
        "Navy linen shirt", "Shirts", "Acme", "Navy", 19.99)
    assert shirt.first_seen == pd.Timestamp("2019-03-03", tz="UTC")  # available before reviewed
    dress = items.loc["P2"]
    assert dress.category == "AMAZON FASHION" and dress.colour == "Red"
    assert pd.isna(dress.price) and pd.isna(dress.brand)
    assert dress.first_seen == pd.Timestamp(T0 + 60_000, unit="ms", tz="UTC")  # first review
    cold = items.loc["P3"]
    assert pd.isna(cold.title) and cold.category == "unknown"


def test_gzipped_files_give_the_same_data(tmp_path: Path) -> None:
    plain = import_amazon(*write_amazon(tmp_path / "plain"), progress=False)
    zipped = import_amazon(*write_amazon(tmp_path / "gz", gz=True), progress=True)
    assert zipped.dataset.data_hash() == plain.dataset.data_hash()
    assert zipped.skipped_reasons == plain.skipped_reasons
    assert zipped.dataset.name == plain.dataset.name


def test_save_load_round_trip(amazon_files: tuple[Path, Path], tmp_path: Path) -> None:
    data = import_amazon(*amazon_files, progress=False, name="amz").dataset
    loaded = Dataset.load(data.save(tmp_path / "saved"))
    assert loaded.name == "amz" and loaded.data_hash() == data.data_hash()


def test_wrong_or_missing_files_are_readable_data_errors(amazon_files: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    reviews, meta = amazon_files
    with pytest.raises(DataError, match="not found"):
        import_amazon(tmp_path / "nope.jsonl", meta, progress=False)
    with pytest.raises(DataError) as excinfo:  # metadata given as reviews: no user_id, timestamp
        import_amazon(meta, meta, progress=False)
    message = str(excinfo.value)
    assert "\n" not in message and meta.name in message
    assert "user_id" in message and "timestamp" in message
    no_ids = _write(tmp_path / "meta_no_ids.jsonl", [{"title": "t"}])
    with pytest.raises(DataError, match="parent_asin"):
        import_amazon(reviews, no_ids, progress=False)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(reviews.read_bytes())[:-20])
    with pytest.raises(DataError, match="cut.jsonl.gz"):
        import_amazon(truncated, meta, progress=False)


def _write(path: Path, objects: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return path


def test_parse_price() -> None:
    assert parse_price(12) == 12.0
    assert parse_price("$1,299.50") == 1299.5
    assert parse_price("from 9.99") == 9.99
    for nothing in ("—", None, "", True, float("nan"), -3):
        assert math.isnan(parse_price(nothing))
