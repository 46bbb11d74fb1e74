"""The seed's page-view schema and the checks every raw value goes through.

One row is one page view that showed a recommendation. Training (from CSV) and
serving (from dicts) validate through the same functions here, so a value the
trainer would refuse is refused at serving time too, with the same message.
Only numpy is imported: this module is on the serving path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as _field
from decimal import Decimal
from numbers import Number, Real
from typing import Any

import numpy as np

from reco_fast.errors import InputError

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

INT_EXACT = 2**53
"""Integers up to this magnitude are exact in float64 (and keep their value in the features)."""
TOO_LARGE = 2.0 * FLOAT32_MAX
"""What :func:`as_number` gives for an integer beyond float32: a finite float64 that every
check (and the compiled loops) reports as "too large for float32"."""
_FLOAT32_MAX_INT = int(FLOAT32_MAX)


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
    """One thing wrong with one row of a batch: ``message`` names the field and the row.

    Attributes
    ----------
    row : int
        The 0-based row in the batch.
    field : str or None
        The field at fault; None when the row is not a dict (a page view) at all.
    message : str
        What is wrong, naming the field and the row; bounded in length.
    """

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
    else:
        for r in rows.tolist():
            errors.add(field, r, problem(r), offset)


# ---- one rule per raw number, whatever the entry point --------------------------------
#
# Every path that turns a caller's value into a number (a session dict, a column, a
# DataFrame, a feature matrix, a tracker event, an argument such as threshold) goes
# through as_number (scalars) or as_float_array / ints_as_float (columns):
#
# - float, numpy floating: the value as float64 (the compiled model then rounds it to
#   float32, as scikit-learn does);
# - int, numpy integer (any width, signed or not), Python ints of any size: exact when
#   float64 holds them exactly (always for |n| <= 2**53), so an int and the float of the
#   same value are one number; an int float64 cannot hold is rounded once to the nearest
#   float32, as numpy casts an int64 array to float32 (which is what scikit-learn does
#   with an integer array). Never int -> float64 -> float32: that rounds twice. Either
#   way the trees see the int rounded to float32 once;
# - bool, numpy bool: 0.0 / 1.0;
# - Decimal, Fraction and other real numbers: float(value), as numpy converts them;
# - a 0-d numpy array of a real dtype: its item, by the rules above;
# - anything else (str, bytes, None, complex, datetime, timedelta, ...) is not a number.


def float32_of_int(n: int) -> float:
    """The float32 nearest to the integer ``n`` (ties to even), as a Python float.

    Exact for any size (numpy's own conversion of a Python int goes through float64
    first and can round twice); ``inf`` (signed) beyond float32's range.
    """
    m = -n if n < 0 else n
    shift = m.bit_length() - 24
    if shift > 0:
        if shift > 105:
            return -math.inf if n < 0 else math.inf
        q, r = m >> shift, m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if r > half or (r == half and q & 1):
            q += 1
        m = q << shift
        if m > _FLOAT32_MAX_INT:
            return -math.inf if n < 0 else math.inf
    f = float(m)
    return -f if n < 0 else f


def _int_value(n: int) -> float:
    if -INT_EXACT <= n <= INT_EXACT:
        return float(n)
    try:
        f = float(n)
        if f == n:  # float64 holds it exactly (Python compares int and float exactly)
            return f
    except OverflowError:
        pass
    f = float32_of_int(n)
    if f - f == 0.0:
        return f
    return -TOO_LARGE if n < 0 else TOO_LARGE


def as_number(value: Any) -> float | None:
    """The float64 a caller's raw number stands for, or None if it is not a real number.

    The rules are in the comment above; an integer too large for float32 gives
    ``±TOO_LARGE``, which every check reports as "too large for float32".
    """
    t = type(value)
    if t is float:
        return value
    if t is int:
        return _int_value(value)
    if isinstance(value, (bool, np.bool_)):
        return 1.0 if value else 0.0
    if isinstance(value, np.timedelta64):  # a numpy integer subclass, but a duration
        return None
    if isinstance(value, (int, np.integer)):
        return _int_value(int(value))
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        if value.ndim == 0 and value.dtype.kind in "biuf":
            return as_number(value[()])
        return None
    if isinstance(value, (Real, Decimal)):
        try:
            f = float(value)
        except OverflowError:  # a Fraction beyond float64
            return -TOO_LARGE if value < 0 else TOO_LARGE
        except ValueError:  # Decimal("sNaN")
            return math.nan
        except Exception:  # a Real whose __float__ fails: not a number we can use
            return None
        if f - f != 0.0 and f == f and isinstance(value, Decimal) and value.is_finite():
            return math.copysign(TOO_LARGE, f)  # Decimal("1e400"): finite, but too large
        return f
    return None


def is_scalar(value: Any) -> bool:
    """One value (a session field), as opposed to a column of values."""
    return (
        value is None
        or isinstance(value, (str, bytes, Number, np.generic))
        or (isinstance(value, np.ndarray) and value.ndim == 0)
    )


def not_a_number(v: object) -> str:
    """What is wrong with a value :func:`as_number` refuses (bounded length)."""
    return f"must be a number, got {type(v).__name__} {v!r:.40}"


def not_a_string(v: object) -> str:
    """What is wrong with a value where text belongs (bounded length)."""
    return f"must be a string, got {type(v).__name__} {v!r:.40}"


# ---- missing values: one rule ----------------------------------------------------------
#
# NaN stands for a missing value. It is a valid raw number exactly when the model routes
# missing values as it learned them (HistGradientBoosting, XGBoost, LightGBM: the
# artifact's ``metadata.missing_values == "routed"``), and an InputError naming the
# field otherwise (scikit-learn's GradientBoosting). Every check below takes the rule
# as ``nan_ok``; :func:`nan_ok_for` derives it from the artifact's policy, and every
# entry point (session dicts, batches, the tracker, the service, CSV scoring) gets it
# from the model it scores with.

MISSING_POLICIES = ("routed", "refused")


def nan_ok_for(missing_values: Any) -> bool:
    """Whether NaN is a valid input for a model with this recorded missing-value policy.

    Parameters
    ----------
    missing_values : str
        The artifact's ``metadata.missing_values``: "routed" (the trees send NaN where
        training learned) or "refused" (the model never saw a missing value).

    Raises
    ------
    ValueError
        Any other value.
    """
    if missing_values not in MISSING_POLICIES:
        raise ValueError(
            f"missing_values must be one of {MISSING_POLICIES}, got {str(missing_values)[:40]!r}"
        )
    return missing_values == "routed"


def check_number(
    name: str, value: Any, field: NumericField | None = None, *, nan_ok: bool = False
) -> float:
    """One raw number of a session field (or of a tracker event, or an argument),
    converted by :func:`as_number` and checked against ``field``'s domain (default: the
    session field ``name``); an InputError naming ``name`` otherwise. With ``nan_ok``
    (:func:`nan_ok_for`), NaN (a missing value) is returned as it is."""
    v = as_number(value)
    if v is None:
        raise InputError(f"{name!r} {not_a_number(value)}", field=name)
    f = NUMERIC_FIELDS[name] if field is None else field
    if not (f.low <= v <= f.high) or (f.integer and v != math.floor(v)):
        if nan_ok and v != v:
            return v
        raise InputError(f"{name!r} {describe_numeric_problem(f, v)}", field=name)
    return v


def series_values(series: Any) -> np.ndarray:
    """A pandas Series as a numpy array that keeps every value: a nullable integer or
    boolean column with missing values becomes objects (ints and NaN), where pandas'
    own ``to_numpy()`` gives float64 and rounds an int float64 cannot hold."""
    dtype = series.dtype
    if not isinstance(dtype, np.dtype) and getattr(dtype, "kind", "O") in "iub" and series.hasnans:
        return series.to_numpy(dtype=object, na_value=math.nan)
    return series.to_numpy()


def ints_as_float(arr: np.ndarray) -> np.ndarray:
    """An integer or bool array as float64 by the integer rule of :func:`as_number`
    (vectorised up to 2**53; the rare larger values one by one)."""
    out = arr.astype(np.float64)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize >= 8 and arr.size:
        big = (arr > INT_EXACT) | (arr < -INT_EXACT) if arr.dtype.kind == "i" else arr > INT_EXACT
        if big.any():
            out[big] = [_int_value(n) for n in arr[big].tolist()]
    return out


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
    if arr.ndim > 1 and not isinstance(values, np.ndarray):
        arr = _object_column(values)  # [[], []] or [[1, 2]]: one list per row, judged by row
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
    """Convert one column to float64 by the rules of :func:`as_number`, refusing strings,
    None, complex numbers, datetimes, durations and other non-numbers by row.

    With ``errors``, a refused value is recorded there and becomes 0.0 (a value
    every numeric field accepts), so the domain check does not report it again.
    """
    arr = as_column(field, values)
    if not isinstance(values, np.ndarray) and (
        arr.dtype.kind not in "biufO"  # [1.5, "abc"] coerces to strings, [0.5, 1j] to
        # complex: judge the items, so the bad row is the one named
        or (arr.dtype.kind == "f" and bool((np.abs(arr) > INT_EXACT).any()))
        # [2**60 + 2**36 + 1, 0.5] is float64 already: an int rounded twice
    ):
        arr = _object_column(values)
    _check_length(field, arr, n_rows)
    if arr.dtype.kind in "biu":
        return ints_as_float(arr)
    if arr.dtype.kind == "f":
        return arr.astype(np.float64, copy=False)
    out = np.empty(arr.shape[0], dtype=np.float64)
    if arr.dtype.kind != "O":
        # datetime64[ns].tolist() gives ints, complex loses nothing but is not a number:
        # refuse the dtype, not the items
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
    items = arr.tolist()
    for i, v in enumerate(items):
        x = as_number(v)
        if x is None:
            bad.append(i)
            x = 0.0
        out[i] = x
    reject(field, bad, lambda r: not_a_number(items[r]), offset, errors)
    return out


def check_numeric(field: NumericField, x: np.ndarray, nan_ok: bool = False) -> np.ndarray:
    """Indices of rows whose value is outside the field's domain (NaN included unless
    ``nan_ok``: see :func:`nan_ok_for`)."""
    bad = ~np.isfinite(x) | (x < field.low) | (x > field.high)
    if nan_ok:
        bad &= ~np.isnan(x)
    if field.integer:
        bad |= np.isfinite(x) & (x != np.floor(x))
    return np.flatnonzero(bad)


NAN_REFUSED = (
    "is NaN (a missing value); this model was trained without missing values and cannot "
    "route them: fill it in, or use a model that routes them (HistGradientBoosting, "
    "XGBoost, LightGBM)"
)


def describe_numeric_problem(field: NumericField, value: float) -> str:
    """Say what is wrong with one value, in the words a user can act on."""
    if value != value:  # a session field: say why; another number (ts, ttl): just NaN
        return NAN_REFUSED if NUMERIC_FIELDS.get(field.name) is field else "is NaN"
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
    field_name: str,
    x: np.ndarray,
    offset: int = 0,
    errors: RowErrors | None = None,
    nan_ok: bool = False,
) -> np.ndarray:
    """Check a numeric column's domain: raise for the first out-of-domain rows, or
    (with ``errors``) record every one and return a copy with 0.0 in their place.
    With ``nan_ok`` (:func:`nan_ok_for`), NaN (a missing value) is in the domain."""
    field = NUMERIC_FIELDS[field_name]
    bad = check_numeric(field, x, nan_ok)
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


def _plain_text(items: list[Any]) -> bool:
    """Every item is a str without a NUL character (so a numpy str array holds them all)."""
    try:
        return "\x00" not in "".join(items)
    except TypeError:  # an item that is not a str
        return False


def text_array(values: np.ndarray) -> np.ndarray:
    """A 1-D object array of text as a numpy str array when that loses nothing, else as is.

    Strings are compared exactly, NUL characters included, on every path. A numpy str
    array is faster to compare but drops trailing NULs (``np.asarray(["Home\\x00"])``
    holds ``"Home"``), so it is used only when every item is a str without a NUL.
    """
    if values.dtype.kind != "O" or not _plain_text(values.tolist()):
        return values
    return values.astype(str) if values.size else np.empty(0, dtype="U1")


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
        # numpy turns [b"Books", 3, "Home\x00"] into "Books", "3", "Home": keep the items
        # unless they are all str without NUL (see text_array)
        items = _object_column(values)
        if not _plain_text(items.tolist()):
            arr = items
    _check_length(field, arr, n_rows)
    if arr.dtype.kind == "U":
        return arr
    if arr.shape[0] == 0:
        return np.empty(0, dtype="U1")
    if arr.dtype.kind == "O" or arr.dtype.kind == "T":
        items = arr.tolist()
        if not objects and set(map(type, items)) == {str} and _plain_text(items):
            return np.asarray(items, dtype=str)  # the common case, checked at C speed
        bad = [i for i, v in enumerate(items) if not isinstance(v, str)]
        reject(
            field,
            bad,
            lambda r: not_a_string(items[r]),
            offset,
            errors,
        )
        for i in bad:
            items[i] = fill
        if objects:
            # str items as they are: a numpy str array would drop trailing NULs and
            # turn "Books\x00" into a known "Books"; comparisons stay exact
            return np.fromiter(items, dtype=object, count=len(items))
        # kept as a numpy str array (a catalog): refuse what it cannot hold
        nul = [i for i, v in enumerate(items) if v.endswith("\x00")]
        reject(field, nul, lambda r: f"ends with a NUL character: {items[r]!r:.40}", offset, errors)
        for i in nul:
            items[i] = fill
        return np.asarray(items, dtype=str)
    reject(
        field,
        np.arange(arr.shape[0]),
        lambda r: f"must be a string, got {arr.dtype} values",
        offset,
        errors,
    )
    return np.full(arr.shape[0], fill, dtype=str)
