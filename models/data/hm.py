"""Importer for H&M Personalized Fashion Recommendations (Kaggle, 2022).

Why an importer: it is the one real fashion data set reachable here (a small sample of it in
``shared/data/hm-sample``), and the full Kaggle files are the obvious next step. It maps
Kaggle's ``articles.csv`` and ``transactions_train.csv`` onto the internal format so nothing
downstream knows about them:

* every transaction row is a purchase; ``ts`` is its day plus one millisecond per earlier row
  of that day, so the file's order within a day survives any later time sort;
* an item's title is readable text built from the article row ("Strap top, black vest top"),
  its category the product type, its colour the colour group, its brand the index group
  (else "H&M"), its price the mean transaction price, its ``first_seen`` its first sale;
* items sold but without an article row are kept with no title and category "unknown": cold,
  text-less items are an honest test for the ID side of mix-up retrieval.

Broken rows (unparsable date, missing ids, non-numeric price, wrong number of fields) are
skipped and counted by reason, never a traceback; a missing file, or a file without the
columns the import needs, is a :class:`DataError` with one readable line.

:class:`ImportResult` and the file helpers here are shared with the other importers.
"""

from __future__ import annotations

import csv
import gzip
import re
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from models.data.dataset import DataError, Dataset

DAY_MS = 86_400_000
CHUNK_ROWS = 100_000

ARTICLE_REQUIRED = ("article_id", "prod_name")
ARTICLE_OPTIONAL = ("product_type_name", "product_group_name", "colour_group_name",
                    "graphical_appearance_name", "index_group_name", "detail_desc")
TRANSACTION_REQUIRED = ("t_dat", "customer_id", "article_id")
TRANSACTION_OPTIONAL = ("price", "sales_channel_id")
# Kaggle placeholders that carry no information in a title.
NO_VALUE = {"", "unknown", "undefined", "other", "solid", "nan", "none"}
SAMPLE_FILES = ("articles_sample_a.csv", "articles_sample_b.csv", "transactions_train_sample.csv")
LEGEND_FILE = "articles_legend.csv.gz"  # the whole catalogue: every purchase gets its text

_ARTICLE_ID = re.compile(r"\d{1,10}(?:\.0*)?")
_SUFFIX = re.compile(r"\s*\(\d+\)\s*$")  # "Strap top (1)": Kaggle's variant counter


@dataclass
class ImportResult:
    """A data set plus what the import had to leave out, so the CLI can report it honestly."""

    dataset: Dataset
    rows_read: int
    rows_skipped: int
    skipped_reasons: dict[str, int] = field(default_factory=dict)


# -- files shared by the importers -------------------------------------------------------------

def require_file(path: Path, what: str) -> Path:
    """The path if it is a readable file, else a DataError naming it: fail before any work."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} not found")
    return path


class FileProgress:
    """A byte progress bar over a file on disk, advanced to the raw file's position: how far
    an import has got, whatever the compression or the parser's read-ahead."""

    def __init__(self, raw: IO[bytes], total: int, desc: str, enabled: bool) -> None:
        self.raw = raw
        self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled,
                        leave=False)

    def advance(self) -> None:
        pos = self.raw.tell()
        if pos > self.bar.n:
            self.bar.update(pos - self.bar.n)


@contextmanager
def open_tracked(path: Path, progress: bool, desc: str) -> Iterator[tuple[IO[bytes], FileProgress]]:
    """Open a file for binary reading (gunzipped if it ends in .gz) with a byte progress bar."""
    with open(path, "rb") as raw:
        tracker = FileProgress(raw, path.stat().st_size, desc, progress)
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        try:
            yield stream, tracker
        finally:
            tracker.advance()
            tracker.bar.close()
            stream.close()


def _csv_header(path: Path, what: str, required: tuple[str, ...]) -> list[str]:
    """The file's column names; DataError if it is unreadable or lacks ``required``."""
    try:
        with open_tracked(path, False, what) as (stream, _):
            cols = pd.read_csv(stream, nrows=0, encoding="utf-8-sig",
                               encoding_errors="replace").columns
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} file {path} is not a readable CSV file: "
                        f"{str(exc).strip().splitlines()[0]}") from None
    names = [str(c).strip() for c in cols]
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{what} file {path} lacks required column(s) {', '.join(missing)} "
                        f"(it has: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})")
    return names


def _read_csv_chunks(path: Path, what: str, progress: bool, quoted: bool,
                     tally: Counter[str]) -> Iterator[pd.DataFrame]:
    """Chunks of a CSV file as strings, lines with too many fields skipped and counted.

    All columns are read as text so nothing is coerced silently (an article id keeps its
    leading zero); validation is the caller's. Lines with the wrong number of fields are
    reported by pandas as warnings, which are counted here instead of printed.
    """
    with open_tracked(path, progress, f"{what} {path.name}") as (stream, tracker):
        reader = pd.read_csv(stream, dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS,
                             on_bad_lines="warn", index_col=False, encoding="utf-8-sig",
                             encoding_errors="replace", quoting=csv.QUOTE_MINIMAL if quoted
                             else csv.QUOTE_NONE)
        rows = 0
        while True:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", pd.errors.ParserWarning)
                    chunk = next(reader)
            except StopIteration:
                break
            except (pd.errors.ParserError, ValueError, OSError, EOFError, zlib.error) as exc:
                raise DataError(f"H&M {what} file {path} cannot be parsed after data row {rows}: "
                                f"{str(exc).strip().splitlines()[0]}") from None
            finally:
                bad = sum(str(w.message).count("Skipping line") for w in caught)
                if bad:
                    tally[f"{what}: wrong number of fields"] += bad
                    tally["read"] += bad
            chunk.columns = [str(c).strip() for c in chunk.columns]
            chunk = chunk.fillna("")  # short lines are padded with missing values
            rows += len(chunk)
            tally["read"] += len(chunk)
            tracker.advance()
            yield chunk


def _skip(tally: Counter[str], keep: pd.Series, bad: pd.Series, reason: str) -> pd.Series:
    """Count rows newly failing ``bad`` under ``reason`` (one reason per row); return the rest."""
    newly = keep & bad
    if newly.any():
        tally[reason] += int(newly.sum())
    return keep & ~bad


def finish_tally(tally: Counter[str]) -> tuple[int, int, dict[str, int]]:
    """(rows read, rows skipped, reasons) from a tally with a "read" entry."""
    reasons = {k: int(v) for k, v in sorted(tally.items()) if k != "read" and v}
    return int(tally["read"]), sum(reasons.values()), reasons


# -- H&M -----------------------------------------------------------------------------------

def import_hm(articles: list[Path], transactions: Path, progress: bool = True,
              name: str = "hm") -> ImportResult:
    """Import Kaggle's H&M articles file(s) and transactions file into a :class:`Dataset`.

    Several articles files may be given (first occurrence of an article wins). Rows that
    cannot be used are skipped and counted in the result; a missing file or column raises
    :class:`DataError`.
    """
    articles = [require_file(Path(p), "H&M articles") for p in articles]
    transactions = require_file(Path(transactions), "H&M transactions")
    for p in articles:
        _csv_header(p, "H&M articles", ARTICLE_REQUIRED)
    _csv_header(transactions, "H&M transactions", TRANSACTION_REQUIRED)

    tally: Counter[str] = Counter()
    meta, duplicates = _read_articles(articles, progress, tally)
    inter, per_item = _read_transactions(transactions, progress, tally)
    read, skipped, reasons = finish_tally(tally)
    if inter.empty:
        raise DataError(f"H&M transactions file {transactions} has no usable rows "
                        f"({read} rows read, {skipped} skipped: {reasons})")
    items = _items(per_item, meta)
    with_text = items["title"].notna()
    rows_with_text = int(inter["item_id"].isin(items.loc[with_text, "item_id"]).sum())
    extra = {
        "format": "hm-kaggle",
        "articles_files": [str(p) for p in articles],
        "transactions_file": str(transactions),
        "articles_rows": int(len(meta)),
        "articles_duplicates": duplicates,
        "articles_unused": int((~meta["item_id"].isin(per_item.index)).sum()),
        "items_without_article": int((~with_text).sum()),
        "purchase_rows_with_text": rows_with_text,
        "skipped_reasons": reasons,
    }
    files = ", ".join(p.name for p in [*articles, transactions])
    dataset = Dataset(items, inter, name=name,
                      source=f"H&M Personalized Fashion Recommendations (Kaggle): {files}",
                      extra=extra)
    return ImportResult(dataset, read, skipped, reasons)


def import_hm_sample(folder: Path) -> ImportResult:
    """Import the real H&M sample in ``shared/data/hm-sample`` (see its SOURCE.md): its
    purchases with the whole catalogue's text (``articles_legend.csv.gz``) when the folder
    has it, else with the two partial article samples (40% of purchases with text)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"H&M sample folder {folder} not found")
    a, b, t = (folder / f for f in SAMPLE_FILES)
    legend = folder / LEGEND_FILE
    return import_hm([legend] if legend.is_file() else [a, b], t, progress=True, name="hm-sample")


def normalise_article_id(ids: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(10-digit zero-padded ids, validity mask): some files drop the leading zero, some
    spreadsheets turn ids into floats ("108775015.0"); all must join on the same key."""
    ids = ids.astype(str).str.strip()
    ok = ids.str.fullmatch(_ARTICLE_ID).fillna(False).astype(bool)
    norm = ids.str.replace(r"\.0*$", "", regex=True).str.zfill(10)
    return norm, ok


def _read_articles(paths: list[Path], progress: bool,
                   tally: Counter[str]) -> tuple[pd.DataFrame, int]:
    """Article rows from all files, first occurrence of an id winning; (frame, duplicates)."""
    frames = []
    for path in paths:
        for chunk in _read_csv_chunks(path, "articles", progress, quoted=True, tally=tally):
            keep = pd.Series(True, index=chunk.index)
            ids, ok = normalise_article_id(chunk["article_id"])
            keep = _skip(tally, keep, chunk["article_id"].str.strip() == "",
                         "articles: missing article_id")
            keep = _skip(tally, keep, ~ok, "articles: malformed article_id")
            part = pd.DataFrame({"item_id": ids})
            for col in ("prod_name", *ARTICLE_OPTIONAL):
                part[col] = chunk[col].str.strip() if col in chunk else ""
            frames.append(part[keep])
    if not frames:
        return pd.DataFrame(columns=["item_id", "prod_name", *ARTICLE_OPTIONAL]), 0
    meta = pd.concat(frames, ignore_index=True)
    deduped = meta.drop_duplicates("item_id", keep="first").reset_index(drop=True)
    return deduped, int(len(meta) - len(deduped))


def _read_transactions(path: Path, progress: bool,
                       tally: Counter[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Purchases in file order with per-day order kept in milliseconds; and per-item stats."""
    day_counts: dict[int, int] = {}
    users, items, stamps, prices = [], [], [], []
    for chunk in _read_csv_chunks(path, "transactions", progress, quoted=False, tally=tally):
        keep = pd.Series(True, index=chunk.index)
        user = chunk["customer_id"].str.strip()
        art = chunk["article_id"].str.strip()
        keep = _skip(tally, keep, (user == "") | (art == ""),
                     "transactions: missing customer_id or article_id")
        ids, ok = normalise_article_id(art)
        keep = _skip(tally, keep, ~ok, "transactions: malformed article_id")
        day = pd.to_datetime(chunk["t_dat"].str.strip(), format="%Y-%m-%d", errors="coerce",
                             utc=True)
        keep = _skip(tally, keep, day.isna(), "transactions: unparsable t_dat")
        if "price" in chunk:
            text = chunk["price"].str.strip()
            price = pd.to_numeric(text, errors="coerce")
            keep = _skip(tally, keep, price.isna() & (text != ""),
                         "transactions: non-numeric price")
        else:
            price = pd.Series(np.nan, index=chunk.index)
        if not keep.any():
            continue
        day_ms = day[keep].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
        stamps.append(day_ms + _order_within_day(day_ms, day_counts))
        users.append(user[keep].to_numpy(dtype=object))
        items.append(ids[keep].to_numpy(dtype=object))
        prices.append(price[keep].to_numpy(dtype="float64"))
    if not users:
        empty = pd.DataFrame(columns=["user_id", "item_id", "ts", "kind"])
        return empty, pd.DataFrame(columns=["price", "first_seen"])
    ts = np.concatenate(stamps)
    inter = pd.DataFrame({
        "user_id": np.concatenate(users),
        "item_id": np.concatenate(items),
        "ts": pd.to_datetime(ts, unit="ms", utc=True),
        "kind": "purchase",
    })
    by_item = pd.DataFrame({"item_id": inter["item_id"], "price": np.concatenate(prices),
                            "day": ts - ts % DAY_MS}).groupby("item_id", sort=False)
    per_item = pd.DataFrame({"price": by_item["price"].mean(), "first_seen": by_item["day"].min()})
    per_item["first_seen"] = pd.to_datetime(per_item["first_seen"], unit="ms", utc=True)
    return inter, per_item


def _order_within_day(day_ms: np.ndarray, counts: dict[int, int]) -> np.ndarray:
    """Milliseconds to add to each row so rows of one day keep their file order.

    ``counts`` carries how many rows each day already had in earlier chunks; it is updated.
    """
    frame = pd.DataFrame({"day": day_ms})
    order = frame.groupby("day", sort=False).cumcount().to_numpy()
    before = frame["day"].map(counts).fillna(0).to_numpy(dtype=np.int64)
    for d, n in frame["day"].value_counts().items():
        counts[int(d)] = counts.get(int(d), 0) + int(n)
    return np.minimum(order + before, DAY_MS - 1)


def _clean(col: pd.Series) -> pd.Series:
    """Text with Kaggle's placeholders ("Unknown", "Solid", empty) turned into missing."""
    col = col.fillna("").astype(str).str.strip()
    return col.where(~col.str.lower().isin(NO_VALUE))


def hm_title(name: str | None, colour: str | None, pattern: str | None,
             ptype: str | None) -> str | None:
    """A readable title from an article row: "Strap top, off white stripe vest top".

    Attributes already in the product name are not repeated; Kaggle's variant counter
    ("Strap top (1)") is dropped because it means nothing to a reader or a text encoder.
    """
    name = _SUFFIX.sub("", name or "").strip()
    low = name.lower()
    extra = [w.lower() for w in (colour, pattern, ptype)
             if isinstance(w, str) and w and w.lower() not in low]
    if not name:
        return " ".join(extra) or None
    return f"{name}, {' '.join(extra)}" if extra else name


def _items(per_item: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Items sold, with text from their article row where there is one."""
    items = per_item.reset_index().rename(columns={"index": "item_id"})
    merged = items.merge(meta, on="item_id", how="left", validate="one_to_one")
    return article_fields(merged).assign(price=merged["price"], first_seen=merged["first_seen"])


def article_fields(rows: pd.DataFrame) -> pd.DataFrame:
    """item_id, title, category, brand, colour of article rows, by the rules of the import."""
    colour = _clean(rows["colour_group_name"])
    pattern = _clean(rows["graphical_appearance_name"])
    ptype = _clean(rows["product_type_name"])
    group = _clean(rows["product_group_name"])
    titles = [hm_title(n, c, p, t) if isinstance(n, str) else None
              for n, c, p, t in zip(rows["prod_name"], colour, pattern, ptype, strict=True)]
    return pd.DataFrame({
        "item_id": rows["item_id"],
        "title": pd.Series(titles, dtype="string", index=rows.index),
        "category": ptype.fillna(group).fillna("unknown"),
        "brand": _clean(rows["index_group_name"]).fillna("H&M"),
        "colour": colour,
    })


def hm_catalog(articles: list[Path], progress: bool = False) -> pd.DataFrame:
    """Every article of H&M articles file(s), sold or not, as catalog rows (the whole
    catalogue a shop would index), with titles made as the import makes them."""
    articles = [require_file(Path(p), "H&M articles") for p in articles]
    for p in articles:
        _csv_header(p, "H&M articles", ARTICLE_REQUIRED)
    meta, _ = _read_articles(articles, progress, Counter())
    return article_fields(meta).reset_index(drop=True)
