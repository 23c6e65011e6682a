"""The internal data format: two parquet tables and a manifest.

``items.parquet``        item_id, title, category, brand, colour, price, first_seen
``interactions.parquet`` user_id, item_id, ts, kind (click|purchase), query
``manifest.json``        name, source, counts, data hash, temporal split boundaries

Every importer and the synthetic generator produce a :class:`Dataset`; every model
and evaluation reads one, so the formats of the outside world stop at the importers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from models.data.split import PROTOCOLS, LeaveOneOutSplit, Split, TemporalSplit, split_from_dict

ITEM_COLUMNS = ["item_id", "title", "category", "brand", "colour", "price", "first_seen"]
INTERACTION_COLUMNS = ["user_id", "item_id", "ts", "kind", "query"]
KINDS = ("click", "purchase")
TS_DTYPE = "datetime64[ms, UTC]"


class DataError(ValueError):
    """A data file or folder that cannot be used; the message is one readable line."""


@dataclass
class Dataset:
    """Items and interactions in the internal format, with their split (temporal by default)."""

    items: pd.DataFrame
    interactions: pd.DataFrame
    name: str = "dataset"
    source: str = ""
    split: Split | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _parts: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.items = normalise_items(self.items)
        self.interactions = normalise_interactions(self.interactions)
        if self.split is None and len(self.interactions):
            self.split = TemporalSplit.from_interactions(self.interactions)

    # -- persistence -------------------------------------------------------------------
    def save(self, folder: Path | str) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.items.to_parquet(folder / "items.parquet", index=False)
        self.interactions.to_parquet(folder / "interactions.parquet", index=False)
        (folder / "manifest.json").write_text(json.dumps(self.manifest(), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> Dataset:
        folder = Path(folder)
        paths = [folder / n for n in ("items.parquet", "interactions.parquet", "manifest.json")]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise DataError(f"{folder} is not a stylestream data set "
                            f"(missing {', '.join(missing)}); create one with "
                            "`stylestream data synth` or `stylestream data import`")
        try:
            manifest = json.loads(paths[2].read_text())
            items = pd.read_parquet(paths[0])
            interactions = pd.read_parquet(paths[1])
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one readable line
            raise DataError(f"cannot read data set {folder}: {exc}") from None
        split = split_from_dict(manifest["split"]) if manifest.get("split") else None
        return cls(items, interactions, name=manifest.get("name", folder.name),
                   source=manifest.get("source", ""), split=split, extra=manifest.get("extra", {}))

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "n_items": int(len(self.items)),
            "n_interactions": int(len(self.interactions)),
            "n_users": int(self.interactions["user_id"].nunique()),
            "n_purchases": int((self.interactions["kind"] == "purchase").sum()),
            "data_hash": self.data_hash(),
            "split": self.split.to_dict() if self.split else None,
            "extra": self.extra,
        }

    def data_hash(self) -> str:
        """A content hash of both tables and the protocol: the data version recorded with
        trained models, so a model trained under one protocol is never evaluated under the
        other (a temporal split's hash is the tables' alone)."""
        h = hashlib.sha256()
        for frame in (self.items, self.interactions):
            h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
        if self.protocol != "temporal":
            h.update(self.protocol.encode())
        return h.hexdigest()[:16]

    @property
    def protocol(self) -> str:
        return self.split.protocol if self.split is not None else "temporal"

    def with_protocol(self, protocol: str) -> Dataset:
        """The same data under ``protocol`` ("temporal" or "leave-one-out")."""
        if protocol not in PROTOCOLS:
            raise DataError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        if protocol == self.protocol:
            return self
        split = LeaveOneOutSplit() if protocol == "leave-one-out" else None
        return Dataset(self.items, self.interactions, name=self.name, source=self.source,
                       split=split, extra=self.extra)

    # -- views -------------------------------------------------------------------------
    def parts(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(train, validation, test) interactions by the data set's split."""
        assert self.split is not None, "a data set with interactions always has a split"
        key = (id(self.interactions), self.split)
        if self._parts is None or self._parts[0] != key:  # leave-one-out costs seconds at 300k rows
            self._parts = (key, self.split.apply(self.interactions))
        return self._parts[1]


def normalise_items(items: pd.DataFrame) -> pd.DataFrame:
    """Coerce an items frame to the internal columns and dtypes; DataError if impossible."""
    _require(items, ["item_id"], "items")
    out = pd.DataFrame({"item_id": items["item_id"].astype(str)})
    for col in ("title", "category", "brand", "colour"):
        out[col] = (items[col].astype("string") if col in items
                    else pd.Series(pd.NA, index=items.index, dtype="string"))
    out["price"] = (pd.to_numeric(items["price"], errors="coerce") if "price" in items
                    else float("nan"))
    out["price"] = out["price"].astype("float64")
    out["first_seen"] = (_to_ts(items["first_seen"]).astype(TS_DTYPE) if "first_seen" in items
                         else pd.Series(pd.NaT, index=items.index, dtype=TS_DTYPE))
    out = out.drop_duplicates("item_id", keep="first").reset_index(drop=True)
    return out[ITEM_COLUMNS]


def normalise_interactions(inter: pd.DataFrame) -> pd.DataFrame:
    """Coerce an interactions frame to the internal columns, sorted by time (stable)."""
    _require(inter, ["user_id", "item_id", "ts", "kind"], "interactions")
    out = pd.DataFrame({
        "user_id": inter["user_id"].astype(str),
        "item_id": inter["item_id"].astype(str),
        "ts": _to_ts(inter["ts"]).astype(TS_DTYPE),
        "kind": inter["kind"].astype(str),
        "query": inter["query"].astype("string") if "query" in inter
        else pd.Series(pd.NA, index=inter.index, dtype="string"),
    })
    bad = ~out["kind"].isin(KINDS)
    if bad.any():
        raise DataError("interactions: kind must be click or purchase; "
                        f"found {out.loc[bad, 'kind'].iloc[0]!r}")
    if out["ts"].isna().any():
        raise DataError(f"interactions: {int(out['ts'].isna().sum())} rows have no valid timestamp")
    return out.sort_values("ts", kind="stable").reset_index(drop=True)[INTERACTION_COLUMNS]


def _to_ts(col: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(col):
        return pd.to_datetime(col, unit="s", utc=True)
    return pd.to_datetime(col, utc=True, errors="coerce")


def _require(frame: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}")
