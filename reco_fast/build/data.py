"""Training data: the seed's page-view log and product catalog, from CSV or generated.

Build-time only (pandas). Every column is read as text first and converted
here, so a bad cell is reported with its column and row instead of silently
becoming NaN or an object column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reco_fast.errors import InputError, shown
from reco_fast.features.page import Catalog
from reco_fast.features.schema import (
    CATALOG_COLUMNS,
    CATEGORICAL_FIELDS,
    LABEL,
    LOG_COLUMNS,
    NONE_PRODUCT,
    NUMERIC_FIELDS,
    PRODUCT_FIELDS,
    raise_rows,
    validate_numeric,
)

__all__ = ["DEFAULT_CATALOG_FILE", "DEFAULT_LOG_FILE", "Dataset", "generate_default", "load"]

log = logging.getLogger(__name__)

DEFAULT_LOG_FILE = "cdp_realtime_recommendations.csv"
DEFAULT_CATALOG_FILE = "products.csv"
DEFAULT_SEED = 42


@dataclass(frozen=True)
class Dataset:
    """A validated log and the catalog its products come from."""

    log: pd.DataFrame
    catalog: Catalog
    source: str


def generate_default(data_dir: str | Path = "data", seed: int = DEFAULT_SEED) -> tuple[Path, Path]:
    """Write the seed-like default data set (see ``_generate``) and return its two paths."""
    from reco_fast.build.generate import generate

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    frame, catalog = generate(seed=seed)
    log_path, cat_path = data_dir / DEFAULT_LOG_FILE, data_dir / DEFAULT_CATALOG_FILE
    frame.to_csv(log_path, index=False)
    catalog.to_csv(cat_path, index=False)
    log.info("generated %d page views and %d products into %s", len(frame), len(catalog), data_dir)
    return log_path, cat_path


def _read_text_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}",
            field=missing[0],
        )
    if frame.empty:
        raise InputError(f"{path}: the file has a header but no rows")
    return frame


def _numeric(path: Path, frame: pd.DataFrame, column: str) -> np.ndarray:
    text = frame[column].str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) & (text.str.lower() != "nan").to_numpy())
    if bad.size:
        raise_rows(column, bad, f"must be a number, got {shown(text.iloc[bad[0]])}")
    return values


def _labels(frame: pd.DataFrame, column: str) -> np.ndarray:
    text = frame[column].str.strip().to_numpy(dtype=str)
    bad = np.flatnonzero(text == "")
    if bad.size:
        raise_rows(column, bad, "is empty")
    return text


def _prefixed(path: Path, exc: InputError) -> InputError:
    return InputError(f"{path}: {exc}", field=exc.field, rows=exc.rows)


def load_catalog(path: str | Path, categories: set[str] | None = None) -> Catalog:
    """Read and validate a product catalog CSV (product_id, category, price).

    With ``categories`` (the log's current_category values), a product in any
    other category is refused: the model could not encode it.
    """
    path = Path(path)
    frame = _read_text_csv(path, CATALOG_COLUMNS)
    try:
        prices = _numeric(path, frame, "price")
        cats = _labels(frame, "category")
        if categories is not None:
            bad = np.flatnonzero([c not in categories for c in cats.tolist()])
            if bad.size:
                raise_rows(
                    "category",
                    bad,
                    f"{shown(str(cats[bad[0]]))} is not a current_category of any page view "
                    "in the log",
                )
        return Catalog(_labels(frame, "product_id"), cats, prices)
    except InputError as exc:
        raise _prefixed(path, exc) from None


def catalog_from_log(frame: pd.DataFrame) -> Catalog:
    """Without a catalog file, learn one from the products viewed in the log."""
    seen = frame.drop_duplicates("current_product_id")
    return Catalog(
        seen["current_product_id"].to_numpy(dtype=str),
        seen["current_category"].to_numpy(dtype=str),
        seen["current_price"].to_numpy(dtype=np.float64),
    )


def load(log_path: str | Path, catalog_path: str | Path | None = None) -> Dataset:
    """Read and validate a page-view log (and its catalog) in the seed's schema."""
    path = Path(log_path)
    text = _read_text_csv(path, LOG_COLUMNS)
    try:
        frame = pd.DataFrame(index=text.index)
        for column in LOG_COLUMNS:
            if column in NUMERIC_FIELDS or column == LABEL:
                frame[column] = _numeric(path, text, column)
            else:
                frame[column] = _labels(text, column)
        for column in NUMERIC_FIELDS:
            validate_numeric(column, frame[column].to_numpy())
        label = frame[LABEL].to_numpy()
        bad = np.flatnonzero((label != 0) & (label != 1))
        if bad.size:
            raise_rows(LABEL, bad, f"must be 0 or 1, got {float(label[bad[0]])!r}")
        frame[LABEL] = label.astype(np.int64)
        if len(np.unique(label)) < 2:
            raise InputError(
                f"{LABEL!r} has a single class; training needs clicks and non-clicks", field=LABEL
            )
        for column in ("current_product_id", "recommended_product_id"):
            bad = np.flatnonzero(frame[column].to_numpy(dtype=str) == NONE_PRODUCT)
            if bad.size:
                raise_rows(column, bad, f"cannot be {NONE_PRODUCT!r}")
        catalog = (
            load_catalog(catalog_path, set(frame["current_category"].tolist()))
            if catalog_path
            else catalog_from_log(frame)
        )
        known = set(catalog.product_ids.tolist())
        for column in PRODUCT_FIELDS:
            ids = frame[column].to_numpy(dtype=str)
            allowed_none = column.startswith("prev_product")
            unknown = np.flatnonzero(
                [(i not in known) and not (allowed_none and i == NONE_PRODUCT) for i in ids]
            )
            if unknown.size:
                hint = (
                    ""
                    if catalog_path
                    else " (no --catalog given: the catalog was learned from current_product_id)"
                )
                raise_rows(
                    column, unknown, f"{shown(str(ids[unknown[0]]))} is not in the catalog{hint}"
                )
        for column in CATEGORICAL_FIELDS:
            frame[column] = frame[column].astype(str)
    except InputError as exc:
        raise _prefixed(path, exc) from None
    log.info("loaded %d page views from %s", len(frame), path)
    return Dataset(frame, catalog, str(path))
