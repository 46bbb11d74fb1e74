"""The seed's page-view schema and the checks every raw value goes through.

One row is one page view that showed a recommendation. Training (from CSV) and
serving (from dicts) validate through the same functions here, so a value the
trainer would refuse is refused at serving time too, with the same message.
Only numpy is imported: this module is on the serving path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as _field

import numpy as np

from .errors import InputError

__all__ = [
    "CATALOG_COLUMNS",
    "LABEL",
    "LOG_COLUMNS",
    "NONE_PRODUCT",
    "NUMERIC_FIELDS",
    "NumericField",
    "RowError",
    "RowErrors",
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


@dataclass(frozen=True)
class RowError:
    """One thing wrong with one row of a batch: ``message`` names the field and the row."""

    row: int
    field: str | None
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class RowErrors:
    """Where a batch's validation reports bad rows instead of raising (``on_invalid="nan"``).

    The same checks run either way: each finds a column's bad rows at once and
    hands them to :func:`reject`, which raises an InputError for the first ones
    when there is no collector and otherwise records one :class:`RowError` per
    bad row and lets the caller substitute a valid placeholder, so later checks
    do not report the same cell twice.
    """

    errors: list[RowError] = _field(default_factory=list)
    _rows: list[int] = _field(default_factory=list, repr=False)

    def add(self, field: str | None, row: int, problem: str, offset: int = 0) -> None:
        """Record one bad row (``row`` local to the batch; ``offset`` is added when reported)."""
        self._rows.append(int(row))
        r = int(row) + offset
        message = f"row {r} {problem}" if field is None else f"{field!r} {problem} (row {r})"
        self.errors.append(RowError(r, field, message))

    def invalid(self, n_rows: int) -> np.ndarray:
        """Boolean mask of the rows with at least one error."""
        mask = np.zeros(n_rows, dtype=bool)
        if self._rows:
            mask[np.asarray(self._rows, dtype=np.int64)] = True
        return mask

    def sorted_errors(self) -> list[RowError]:
        """The errors by row (then in the order the checks found them)."""
        return sorted(self.errors, key=lambda e: e.row)


def reject(
    field: str,
    rows: Sequence[int] | np.ndarray,
    problem: Callable[[int], str],
    offset: int = 0,
    errors: RowErrors | None = None,
) -> None:
    """Report a column's bad rows (local indices): raise for the first, or collect them all.

    ``problem(row)`` says what is wrong with one row's value.
    """
    rows = np.asarray(rows, dtype=np.int64).ravel()
    if not rows.size:
        return
    if errors is None:
        raise_rows(field, rows, problem(int(rows[0])), offset)
    for r in rows.tolist():
        errors.add(field, r, problem(r), offset)


def _not_a_number(v: object) -> str:
    return f"must be a number, got {type(v).__name__} {v!r:.40}"


def _object_column(values: object) -> np.ndarray:
    """A 1-D object array of the items (nested lists stay items, never a second axis)."""
    if isinstance(values, (str, bytes, bytearray)) or not isinstance(values, Iterable):
        items = [values]
    else:
        items = list(values)
    return np.fromiter(items, dtype=object, count=len(items))


def as_column(field: str, values: object) -> np.ndarray:
    """One column as a 1-D numpy array: a scalar is one row; ragged items stay objects."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):  # inhomogeneous nested lists
        try:
            arr = _object_column(values)
        except TypeError:
            raise InputError(
                f"{field!r} must be a column of values, got {type(values).__name__}", field=field
            ) from None
    if arr.ndim == 0:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InputError(f"{field!r} must be one-dimensional, got shape {arr.shape}", field=field)
    return arr


def _check_length(field: str, arr: np.ndarray, n_rows: int | None) -> None:
    if n_rows is not None and arr.shape[0] != n_rows:
        raise InputError(
            f"{field!r} has {arr.shape[0]} values, but the other fields have {n_rows}", field=field
        )


def as_float_array(
    field: str,
    values: object,
    n_rows: int | None = None,
    errors: RowErrors | None = None,
    offset: int = 0,
) -> np.ndarray:
    """Convert one column to float64, refusing strings, None and other non-numbers by row.

    With ``errors``, a refused value is recorded there and becomes 0.0 (a value
    every numeric field accepts), so the domain check does not report it again.
    """
    arr = as_column(field, values)
    if arr.dtype.kind in "US" and not isinstance(values, np.ndarray):
        # [1.5, "abc"] coerces to strings; keep the items so the bad row is the one named
        arr = _object_column(values)
    _check_length(field, arr, n_rows)
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64, copy=False)
    out = np.empty(arr.shape[0], dtype=np.float64)
    if arr.dtype.kind in "mMV":
        # datetime64[ns].tolist() gives ints: refuse the dtype, not the items
        out[:] = 0.0
        reject(
            field,
            np.arange(arr.shape[0]),
            lambda r: f"must be a number, got {arr.dtype} values",
            offset,
            errors,
        )
        return out
    bad: list[int] = []
    too_large: list[int] = []
    items = arr.tolist()
    for i, v in enumerate(items):
        if isinstance(v, (bool, int, float, np.integer, np.floating)):
            try:
                out[i] = float(v)
            except OverflowError:
                too_large.append(i)
                out[i] = 0.0
        else:
            bad.append(i)
            out[i] = 0.0
    problems = {i: "is too large for float32" for i in too_large}
    problems.update((i, _not_a_number(items[i])) for i in bad)
    reject(field, sorted(problems), problems.__getitem__, offset, errors)
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


def validate_numeric(
    field_name: str, x: np.ndarray, offset: int = 0, errors: RowErrors | None = None
) -> np.ndarray:
    """Check a numeric column's domain: raise for the first out-of-domain rows, or
    (with ``errors``) record every one and return a copy with 0.0 in their place."""
    field = NUMERIC_FIELDS[field_name]
    bad = check_numeric(field, x)
    if bad.size:
        reject(
            field_name,
            bad,
            lambda r: describe_numeric_problem(field, float(x[r])),
            offset,
            errors,
        )
        x = x.copy()
        x[bad] = 0.0
    return x


def as_str_array(
    field: str,
    values: object,
    n_rows: int | None = None,
    errors: RowErrors | None = None,
    offset: int = 0,
    fill: str = "",
    objects: bool = False,
) -> np.ndarray:
    """Convert one column of labels to a numpy unicode array, refusing non-strings by row.

    With ``errors``, a refused value is recorded there and replaced by ``fill``
    (the caller passes a value its next check accepts). With ``objects``, a
    column of Python objects comes back as an object array of its strings, which
    compares exactly with a unicode array (used for lookups and equality only).
    """
    arr = as_column(field, values)
    if arr.dtype.kind in "US" and not isinstance(values, np.ndarray):
        # numpy turns [b"Books", "Home"] into strings: keep the bytes so they are named
        items = _object_column(values)
        if arr.dtype.kind == "S" or any(isinstance(v, (bytes, bytearray)) for v in items):
            arr = items
    _check_length(field, arr, n_rows)
    if arr.dtype.kind == "U":
        return arr
    if arr.shape[0] == 0:
        return np.empty(0, dtype="U1")
    if arr.dtype.kind == "O" or arr.dtype.kind == "T":
        items = arr.tolist()
        bad = [i for i, v in enumerate(items) if not isinstance(v, str)]
        reject(
            field,
            bad,
            lambda r: f"must be a string, got {type(items[r]).__name__} {items[r]!r:.40}",
            offset,
            errors,
        )
        for i in bad:
            items[i] = fill
        if objects:
            # str items as they are: a numpy str array would drop trailing NULs and
            # turn "Books\x00" into a known "Books"; comparisons stay exact
            return np.fromiter(items, dtype=object, count=len(items))
        return np.asarray(items, dtype=str)
    reject(
        field,
        np.arange(arr.shape[0]),
        lambda r: f"must be a string, got {arr.dtype} values",
        offset,
        errors,
    )
    return np.full(arr.shape[0], fill, dtype=str)
