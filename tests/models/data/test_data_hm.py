"""H&M (Kaggle) importer: Kaggle's formats in, internal format out, broken rows counted."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import pandas as pd
import pytest

from models.data import hm
from models.data.dataset import DataError, Dataset
from models.data.hm import hm_title, import_hm, import_hm_sample

ARTICLE_COLUMNS = [
    "article_id", "product_code", "prod_name", "product_type_no", "product_type_name",
    "product_group_name", "graphical_appearance_no", "graphical_appearance_name",
    "colour_group_code", "colour_group_name", "perceived_colour_value_id",
    "perceived_colour_value_name", "perceived_colour_master_id", "perceived_colour_master_name",
    "department_no", "department_name", "index_code", "index_name", "index_group_no",
    "index_group_name", "section_no", "section_name", "garment_group_no", "garment_group_name",
    "detail_desc",
]
# article_id, prod_name, product_type_name, product_group_name, appearance, colour, index group
ARTICLES_A = [
    ("0108775015", "Strap top", "Vest top", "Garment Upper body", "Solid", "Black", "Ladieswear"),
    ("0108775044", "Strap top (1)", "Vest top", "Garment Upper body", "Stripe", "White",
     "Ladieswear"),
    ("0200000001", "Mystery", "Unknown", "Unknown", "Solid", "Unknown", ""),
]
ARTICLES_B = [  # Kaggle ids without the leading zero, as in one of the real files
    ("108775015", "Other strap top", "Vest top", "Garment Upper body", "Solid", "Red", "Divided"),
    ("300000001", "Denim jacket", "Jacket", "Garment Upper body", "Solid", "Blue", "Menswear"),
    ("abc", "Broken id", "Jacket", "Garment Upper body", "Solid", "Blue", "Menswear"),
]
TRANSACTIONS = """t_dat,customer_id,article_id,price,sales_channel_id
2019-01-01,c1,0108775015,0.01,2
2019-01-01,c2,108775044,0.02,1
2019-01-01,c1,0300000001,0.05,2
2019-01-02,c2,0400000001,0.03,2
2019-01-02,c1,0108775015,0.03,2
2019-13-45,c3,0108775015,0.01,2
2019-01-03,,0108775015,0.01,2
2019-01-03,c3,,0.01,2
2019-01-03,c3,0108775015,abc,2
2019-01-03,c3,0108775015,0.01,2,7
2019-01-03,c3,XYZ,0.01,2
2019-01-03,c3,0200000001,,2
"""
REPO = Path(__file__).resolve().parents[3]
EXPECTED_REASONS = {
    "articles: malformed article_id": 1,
    "transactions: malformed article_id": 1,
    "transactions: missing customer_id or article_id": 2,
    "transactions: non-numeric price": 1,
    "transactions: unparsable t_dat": 1,
    "transactions: wrong number of fields": 1,
}


def _article_rows(rows: list[tuple[str, ...]]) -> list[dict[str, str]]:
    out = []
    for aid, name, ptype, group, look, colour, index_group in rows:
        row = dict.fromkeys(ARTICLE_COLUMNS, "1")
        row.update(article_id=aid, prod_name=name, product_type_name=ptype,
                   product_group_name=group, graphical_appearance_name=look,
                   colour_group_name=colour, index_group_name=index_group,
                   detail_desc="A top, with a comma, and \"quotes\".")
        out.append(row)
    return out


def write_hm(folder: Path, transactions: str = TRANSACTIONS) -> tuple[list[Path], Path]:
    """Kaggle-format files: articles A as Kaggle ships it, articles B with a leading unnamed
    index column and ids without the leading zero, and a transactions file with broken rows."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b, t = folder / "articles.csv", folder / "articles_b.csv", folder / "transactions.csv"
    pd.DataFrame(_article_rows(ARTICLES_A), columns=ARTICLE_COLUMNS).to_csv(
        a, index=False, quoting=csv.QUOTE_MINIMAL)
    pd.DataFrame(_article_rows(ARTICLES_B), columns=ARTICLE_COLUMNS).to_csv(b, index=True)
    t.write_text(transactions)
    return [a, b], t


@pytest.fixture(scope="module")
def hm_sample_dir() -> Path:
    """The real H&M sample (``shared/data/hm-sample`` next to the repo, or under
    ``$STYLESTREAM_SHARED_DATA``); tests using it are skipped where it is not present."""
    candidates = []
    if os.environ.get("STYLESTREAM_SHARED_DATA"):
        env = Path(os.environ["STYLESTREAM_SHARED_DATA"])
        candidates += [env / "hm-sample", env / "data" / "hm-sample"]
    candidates.append(REPO / ".." / "shared" / "data" / "hm-sample")
    for folder in candidates:
        if (folder / "transactions_train_sample.csv").is_file():
            return folder.resolve()
    pytest.skip("the shared H&M sample is not present here")


@pytest.fixture
def hm_files(tmp_path: Path) -> tuple[list[Path], Path]:
    return write_hm(tmp_path / "hm")


def test_counts_of_imported_and_skipped_rows(hm_files: tuple[list[Path], Path]) -> None:
    articles, transactions = hm_files
    result = import_hm(articles, transactions, progress=False)
    assert result.skipped_reasons == EXPECTED_REASONS
    assert result.rows_read == 6 + 12  # article rows + transaction rows
    assert result.rows_skipped == sum(EXPECTED_REASONS.values()) == 7
    data = result.dataset
    assert len(data.interactions) == 6
    assert (data.interactions["kind"] == "purchase").all()
    assert data.interactions["query"].isna().all()
    assert data.name == "hm" and "H&M" in data.source


def test_items_take_text_from_the_first_article_row(hm_files: tuple[list[Path], Path]) -> None:
    items = import_hm(*hm_files, progress=False).dataset.items.set_index("item_id")
    assert set(items.index) == {"0108775015", "0108775044", "0300000001", "0400000001",
                                "0200000001"}
    top = items.loc["0108775015"]  # in both files: the first one wins
    assert (top.title, top.category, top.colour, top.brand) == (
        "Strap top, black vest top", "Vest top", "Black", "Ladieswear")
    assert top.price == pytest.approx(0.02)
    assert top.first_seen == pd.Timestamp("2019-01-01", tz="UTC")
    assert items.loc["0108775044", "title"] == "Strap top, white stripe vest top"
    assert items.loc["0300000001", "brand"] == "Menswear"  # from file B, id zero-padded
    mystery = items.loc["0200000001"]
    assert mystery.title == "Mystery" and mystery.category == "unknown"
    assert mystery.brand == "H&M" and pd.isna(mystery.colour) and pd.isna(mystery.price)
    cold = items.loc["0400000001"]  # sold, but no article row: kept, text-less
    assert pd.isna(cold.title) and cold.category == "unknown"


def test_order_within_a_day_is_kept(hm_files: tuple[list[Path], Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hm, "CHUNK_ROWS", 2)  # days and bad lines straddle chunk boundaries
    result = import_hm(*hm_files, progress=False)
    assert result.skipped_reasons == EXPECTED_REASONS and result.rows_read == 18
    inter = result.dataset.interactions
    day1 = inter[inter["ts"] < pd.Timestamp("2019-01-02", tz="UTC")]
    assert list(day1["item_id"]) == ["0108775015", "0108775044", "0300000001"]
    assert list(day1["ts"].diff().dropna().dt.total_seconds()) == [0.001, 0.001]
    assert inter["ts"].is_monotonic_increasing


def test_save_load_round_trip(hm_files: tuple[list[Path], Path], tmp_path: Path) -> None:
    data = import_hm(*hm_files, progress=True).dataset
    loaded = Dataset.load(data.save(tmp_path / "saved"))
    assert loaded.data_hash() == data.data_hash()
    pd.testing.assert_frame_equal(loaded.items, data.items)
    assert loaded.extra == data.extra


def test_gzipped_transactions(hm_files: tuple[list[Path], Path], tmp_path: Path) -> None:
    articles, transactions = hm_files
    gz = tmp_path / "transactions.csv.gz"
    gz.write_bytes(gzip.compress(transactions.read_bytes()))
    plain = import_hm(articles, transactions, progress=False)
    zipped = import_hm(articles, gz, progress=False)
    assert zipped.dataset.data_hash() == plain.dataset.data_hash()
    assert zipped.skipped_reasons == plain.skipped_reasons


def _one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_column_is_a_readable_data_error(tmp_path: Path) -> None:
    articles, transactions = write_hm(tmp_path, TRANSACTIONS.replace("t_dat,", "day,", 1))
    with pytest.raises(DataError) as excinfo:
        import_hm(articles, transactions, progress=False)
    message = _one_line_error(excinfo)
    assert str(transactions) in message and "t_dat" in message
    bad_articles = tmp_path / "bad_articles.csv"
    bad_articles.write_text("article_id,name\n0108775015,Strap top\n")
    with pytest.raises(DataError) as excinfo:
        import_hm([bad_articles], transactions, progress=False)
    message = _one_line_error(excinfo)
    assert "bad_articles.csv" in message and "prod_name" in message


def test_missing_or_empty_files_are_data_errors(hm_files: tuple[list[Path], Path],
                                                tmp_path: Path) -> None:
    articles, transactions = hm_files
    with pytest.raises(DataError, match="not found"):
        import_hm(articles, tmp_path / "nope.csv", progress=False)
    with pytest.raises(DataError, match="not found"):
        import_hm([tmp_path / "nope.csv"], transactions, progress=False)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv"):
        import_hm(articles, empty, progress=False)
    header_only = tmp_path / "header.csv"
    header_only.write_text("t_dat,customer_id,article_id,price,sales_channel_id\n"
                           "not-a-date,c1,0108775015,0.1,1\n")
    with pytest.raises(DataError, match="no usable rows"):
        import_hm(articles, header_only, progress=False)
    with pytest.raises(DataError, match="sample folder"):
        import_hm_sample(tmp_path / "nowhere")


def test_title_does_not_repeat_what_the_name_says() -> None:
    assert hm_title("Black strap top", "Black", None, "Vest top") == "Black strap top, vest top"
    assert hm_title("Jeans", None, None, "Trousers") == "Jeans, trousers"
    assert hm_title("", "Blue", None, "Shirt") == "blue shirt"
    assert hm_title("Skirt (2)", None, None, "Skirt") == "Skirt"


def test_real_hm_sample(hm_sample_dir: Path) -> None:
    """The shared sample with the whole catalogue's text, whose SOURCE.md gives the numbers
    checked here: every purchase has a title."""
    result = import_hm_sample(hm_sample_dir)
    data = result.dataset
    assert result.rows_skipped == 0
    assert len(data.interactions) == 31_662
    assert data.interactions["user_id"].nunique() == 1_364
    assert len(data.items) == 17_033
    assert data.interactions["ts"].min() >= pd.Timestamp("2018-09-20", tz="UTC")
    assert data.interactions["ts"].max() < pd.Timestamp("2020-09-23", tz="UTC")
    assert data.extra["purchase_rows_with_text"] == 31_662  # the legend covers every purchase
    items = data.items.set_index("item_id")
    assert items.index.str.fullmatch(r"\d{10}").all()
    assert items["title"].notna().all() and items["category"].notna().all()
