"""Dataset adapters: the generic format, REES46 and Taobao UserBehavior, into one event table.

Every adapter returns a `Dataset`: `events` (one row per event, sorted by time, stable) with the
columns of the event contract plus item text, and `items` (one row per item). The generic format
(see README) is a folder with `events.csv[.gz]` (`user_id,item_id,event_type,timestamp` and
optional `price,session_id`) and optional `items.csv[.gz]` (`item_id` and optional
`title,category,brand,price`); timestamps are unix seconds (values above 1e11 are read as
milliseconds) or ISO-8601; event types `pv`→view, `buy`/`pay`→purchase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from offline.errors import DatasetError

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "type", "ts", "price", "session_id", "category", "brand"]
TYPE_ALIASES = {
    "pv": "view", "view": "view", "click": "click", "cart": "cart", "add_to_cart": "cart",
    "fav": "fav", "favorite": "fav", "buy": "purchase", "pay": "purchase", "purchase": "purchase",
}
FORMATS = ("generic", "rees46", "taobao")
KNOWN_NAMES = {"rees46": "rees46-ecommerce-2019oct-head", "taobao": "taobao-userbehavior-samples",
               "beauty": "amazon-beauty-5core"}
_CATEGORY_SPLIT = re.compile(r"\s*[./>|]\s*")


@dataclass
class Dataset:
    name: str
    events: pd.DataFrame
    items: pd.DataFrame

    def head(self, n: int) -> "Dataset":
        events = self.events.iloc[:n]
        return Dataset(self.name, events, self.items[self.items.item_id.isin(events.item_id)])


def normalise_category(path: object) -> str | None:
    """A category path with `.` between levels.

    >>> normalise_category("Electronics > Audio | Headphones")
    'electronics.audio.headphones'
    >>> normalise_category(float("nan")) is None
    True
    """
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return None
    text = str(path).strip().lower()
    if not text:
        return None
    return ".".join(p for p in _CATEGORY_SPLIT.split(text) if p)


def _types(raw: pd.Series) -> pd.Series:
    mapped = raw.astype(str).str.strip().str.lower().map(TYPE_ALIASES)
    bad = raw[mapped.isna()].unique()[:5]
    if len(bad):
        raise DatasetError(f"unknown event types {list(bad)}; known: {sorted(TYPE_ALIASES)}")
    return mapped


def _timestamps_ms(raw: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().all():
        return np.where(numeric > 1e11, numeric, numeric * 1000).astype("int64")
    parsed = pd.to_datetime(raw.astype(str).str.replace(" UTC", "+00:00", regex=False), utc=True,
                            errors="coerce", format="mixed")
    if parsed.isna().any():
        bad = raw[parsed.isna()].iloc[0]
        raise DatasetError(f"timestamp {bad!r} is neither unix seconds nor ISO-8601")
    return (parsed.astype("int64") // 1_000_000).astype("int64")


def _finish(name: str, events: pd.DataFrame, items: pd.DataFrame) -> Dataset:
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    events.insert(0, "event_id", [f"{name}:{i}" for i in range(len(events))])
    for column in EVENT_COLUMNS:
        if column not in events:
            events[column] = None
    events = events[EVENT_COLUMNS]
    events = events.astype({"user_id": str, "item_id": str})
    items = items.astype({"item_id": str}).drop_duplicates("item_id", keep="last").reset_index(drop=True)
    return Dataset(name, events, items)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.csv", folder / f"{stem}.csv.gz"):
        if candidate.exists():
            return candidate
    return None


def load_generic(folder: Path) -> Dataset:
    path = _find(folder, "events")
    if path is None:
        raise DatasetError(f"{folder} has no events.csv or events.csv.gz")
    raw = pd.read_csv(path, dtype={"user_id": str, "item_id": str, "session_id": str})
    missing = {"user_id", "item_id", "event_type", "timestamp"} - set(raw.columns)
    if missing:
        raise DatasetError(f"{path} lacks columns {sorted(missing)}")
    events = pd.DataFrame({
        "user_id": raw.user_id, "item_id": raw.item_id, "type": _types(raw.event_type),
        "ts": _timestamps_ms(raw.timestamp),
        "price": raw.get("price"), "session_id": raw.get("session_id"),
    })
    items_path = _find(folder, "items")
    if items_path is not None:
        items = pd.read_csv(items_path, dtype={"item_id": str})
        if "item_id" not in items:
            raise DatasetError(f"{items_path} lacks the item_id column")
        if "category" in items:
            items["category"] = items.category.map(normalise_category)
        lookup = items.set_index("item_id")
        for column in ("category", "brand"):
            if column in lookup:
                events[column] = events.item_id.map(lookup[column])
    else:
        items = pd.DataFrame({"item_id": events.item_id.unique()})
    return _finish(folder.name, events, items)


def load_rees46(folder: Path) -> Dataset:
    path = folder / "events.csv"
    if not path.exists():
        raise DatasetError(f"{folder} has no events.csv (REES46 format)")
    raw = pd.read_csv(path, dtype={"product_id": str, "category_id": str, "user_id": str,
                                   "category_code": str, "brand": str, "user_session": str})
    events = pd.DataFrame({
        "user_id": raw.user_id, "item_id": raw.product_id, "type": _types(raw.event_type),
        "ts": _timestamps_ms(raw.event_time), "price": raw.price, "session_id": raw.user_session,
        "category": raw.category_code.map(normalise_category),
        "brand": raw.brand.where(raw.brand.notna(), None),
    })
    last = raw.drop_duplicates("product_id", keep="last")
    items = pd.DataFrame({
        "item_id": last.product_id, "category": last.category_code.map(normalise_category),
        "brand": last.brand, "price": last.price, "category_id": last.category_id,
    })
    return _finish("rees46", events, items)


def load_taobao(folder: Path, file: str | None = None) -> Dataset:
    path = folder / (file or "active_users_top1200.csv.gz") if folder.is_dir() else folder
    if not path.exists():
        raise DatasetError(f"{path} does not exist (Taobao UserBehavior format)")
    names = ["user_id", "item_id", "category_id", "event_type", "timestamp"]
    with pd.io.common.get_handle(path, "r", compression="infer") as handle:
        first = handle.handle.readline()
    has_header = first.startswith("user_id")
    raw = pd.read_csv(path, header=0 if has_header else None, names=None if has_header else names, dtype=str)
    events = pd.DataFrame({
        "user_id": raw.user_id, "item_id": raw.item_id, "type": _types(raw.event_type),
        "ts": _timestamps_ms(raw.timestamp), "category": raw.category_id,
    })
    items = raw.drop_duplicates("item_id", keep="last")[["item_id", "category_id"]].rename(
        columns={"category_id": "category"})
    return _finish("taobao", events, items)


def resolve(dataset: str, data_dir: Path) -> Path:
    """A dataset folder from a path or a known name (rees46, taobao) under `data_dir`."""
    path = Path(dataset).expanduser()
    if path.exists():
        return path
    if dataset in KNOWN_NAMES and (data_dir / KNOWN_NAMES[dataset]).exists():
        return data_dir / KNOWN_NAMES[dataset]
    raise DatasetError(f"no dataset at {dataset!r} (known names: {sorted(KNOWN_NAMES)} under {data_dir})")


def detect_format(folder: Path) -> str:
    if folder.is_file() or (folder / "active_users_top1200.csv.gz").exists():
        return "taobao"
    events = _find(folder, "events")
    if events is None:
        raise DatasetError(f"cannot tell the format of {folder}: no events.csv[.gz]")
    header = pd.read_csv(events, nrows=0).columns
    if "event_time" in header and "product_id" in header:
        return "rees46"
    return "generic"


def load(dataset: str, data_dir: Path, fmt: str = "auto") -> Dataset:
    folder = resolve(dataset, data_dir)
    fmt = detect_format(folder) if fmt == "auto" else fmt
    loaders = {"generic": load_generic, "rees46": load_rees46, "taobao": load_taobao}
    if fmt not in loaders:
        raise DatasetError(f"unknown format {fmt!r}; choose one of {FORMATS} or auto")
    return loaders[fmt](folder)
