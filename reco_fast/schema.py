"""The seed's page-view schema and the checks every raw value goes through.

One row is one page view that showed a recommendation. Training (from CSV) and
serving (from dicts) validate through the same functions here, so a value the
trainer would refuse is refused at serving time too, with the same message.
Only numpy is imported: this module is on the serving path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = [
    "CATALOG_COLUMNS",
    "LABEL",
    "LOG_COLUMNS",
    "NONE_PRODUCT",
    "NUMERIC_FIELDS",
    "NumericField",
]

NONE_PRODUCT = "NONE"
"""What the seed writes in prev_product_k when the session has fewer views."""

FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_REPORTED_ROWS = 5


@dataclass(frozen=True)
class NumericField:
    """A numeric session field and its valid domain."""

    name: str
    low: float = 0.0
    high: float = FLOAT32_MAX
    integer: bool = False


NUMERIC_FIELDS: dict[str, NumericField] = {
    f.name: f
    for f in (
        NumericField("current_price"),
        NumericField("products_in_cart", integer=True),
        NumericField("time_on_page_sec"),
        NumericField("scroll_depth", high=1.0),
        NumericField("clicked_product_image", high=1.0, integer=True),
        NumericField("session_length_mins"),
        NumericField("products_viewed_count", integer=True),
    )
}

CATEGORICAL_FIELDS = ("current_category", "device_type", "traffic_source")
PRODUCT_FIELDS = (
    "current_product_id",
    "prev_product_1",
    "prev_product_2",
    "prev_product_3",
    "recommended_product_id",
)
LABEL = "recommendation_clicked"

LOG_COLUMNS = (
    "session_id",
    "customer_id",
    "current_product_id",
    "current_category",
    "current_price",
    "prev_product_1",
    "prev_product_2",
    "prev_product_3",
    "products_in_cart",
    "device_type",
    "traffic_source",
    "time_on_page_sec",
    "scroll_depth",
    "clicked_product_image",
    "session_length_mins",
    "products_viewed_count",
    "recommended_product_id",
    LABEL,
)
CATALOG_COLUMNS = ("product_id", "category", "price")


def _rows_text(rows: Sequence[int]) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_MAX_REPORTED_ROWS])
    more = f" and {len(rows) - _MAX_REPORTED_ROWS} more" if len(rows) > _MAX_REPORTED_ROWS else ""
    return f"row {shown}" if len(rows) == 1 else f"rows {shown}{more}"


def raise_rows(field: str, rows: Sequence[int] | np.ndarray, problem: str, offset: int = 0) -> None:
    """Raise an InputError naming the field and the first offending rows."""
    rows = [int(r) + offset for r in np.asarray(rows).ravel()]
    raise InputError(
        f"{field!r} {problem} ({_rows_text(rows)})", field=field, rows=rows[:_MAX_REPORTED_ROWS]
    )


def as_float_array(field: str, values: object, n_rows: int | None = None) -> np.ndarray:
    """Convert one column to float64, refusing strings, None and other non-numbers by row."""
    arr = np.asarray(values)
    if arr.dtype.kind in "US" and not isinstance(values, np.ndarray):
        # [1.5, "abc"] coerces to strings; keep the items so the bad row is the one named
        arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.ndim == 0 else arr
        if arr.ndim != 1:
            raise InputError(
                f"{field!r} must be one-dimensional, got shape {arr.shape}", field=field
            )
    if n_rows is not None and arr.shape[0] != n_rows:
        raise InputError(
            f"{field!r} has {arr.shape[0]} values, but the other fields have {n_rows}", field=field
        )
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64, copy=False)
    out = np.empty(arr.shape[0], dtype=np.float64)
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, (bool, int, float, np.integer, np.floating)):
            try:
                out[i] = float(v)
            except OverflowError:
                raise_rows(field, [i], "is too large for float32")
        else:
            raise_rows(field, [i], f"must be a number, got {type(v).__name__} {v!r:.40}")
    return out


def check_numeric(field: NumericField, x: np.ndarray) -> np.ndarray:
    """Indices of rows whose value is outside the field's domain (NaN included)."""
    bad = ~np.isfinite(x) | (x < field.low) | (x > field.high)
    if field.integer:
        bad |= np.isfinite(x) & (x != np.floor(x))
    return np.flatnonzero(bad)


def describe_numeric_problem(field: NumericField, value: float) -> str:
    """Say what is wrong with one value, in the words a user can act on."""
    if value != value:
        return "is NaN"
    if value in (float("inf"), float("-inf")):
        return "is infinite"
    if abs(value) > FLOAT32_MAX:
        return "is too large for float32"
    if value < field.low:
        return f"must be >= {field.low:g}, got {value!r}"
    if value > field.high:
        return f"must be <= {field.high:g}, got {value!r}"
    return f"must be an integer, got {value!r}"


def validate_numeric(field_name: str, x: np.ndarray, offset: int = 0) -> None:
    """Raise an InputError for the first out-of-domain rows of a numeric column."""
    field = NUMERIC_FIELDS[field_name]
    bad = check_numeric(field, x)
    if bad.size:
        problem = describe_numeric_problem(field, float(x[bad[0]]))
        raise_rows(field_name, bad, problem, offset)


def as_str_array(field: str, values: object, n_rows: int | None = None) -> np.ndarray:
    """Convert one column of labels to a numpy unicode array, refusing non-strings by row."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.ndim == 0 else arr
        if arr.ndim != 1:
            raise InputError(
                f"{field!r} must be one-dimensional, got shape {arr.shape}", field=field
            )
    if n_rows is not None and arr.shape[0] != n_rows:
        raise InputError(
            f"{field!r} has {arr.shape[0]} values, but the other fields have {n_rows}", field=field
        )
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "O" or arr.dtype.kind == "T":
        items = arr.tolist()
        for i, v in enumerate(items):
            if not isinstance(v, str):
                raise_rows(field, [i], f"must be a string, got {type(v).__name__} {v!r:.40}")
        return np.asarray(items, dtype=str) if items else np.empty(0, dtype="U1")
    if arr.shape[0] == 0:
        return np.empty(0, dtype="U1")
    raise_rows(field, [0], f"must be a string, got {arr.dtype} values")
    raise AssertionError  # unreachable
