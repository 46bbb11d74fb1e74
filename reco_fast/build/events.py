"""Raw event logs: one row per event, read into one canonical table.

Build-time only: pandas (and pyarrow for Parquet) are imported inside the
functions, so importing this module costs numpy only.

A shop's clickstream (REES46, a tracker's export, ...) names its columns its own
way. :func:`read_events` reads it with a column mapping and returns a DataFrame
with these canonical columns, one row per event, sorted by ``session_id`` then
``ts`` (stable: events with equal times keep their file order):

================ ========== ==========================================================
column           dtype      meaning
================ ========== ==========================================================
``session_id``   str        the log's session id, or ``"<user>#<n>"`` (below)
``ts``           float64    event time, seconds since 1970-01-01 UTC
``type``         str        ``view``, ``cart``, ``purchase`` or ``remove``
``product_id``   str        product id as text
``category``     str        category id as text, missing as NaN (only if mapped)
``price``        float64    price, missing as NaN (only if mapped)
``user_id``      str        visitor id as text (only if mapped)
================ ========== ==========================================================

Rules, each one a refusal rather than a guess where the data is ambiguous:

* **File format**: Parquet by extension (``.parquet``, ``.pq``) or by its magic
  bytes ``PAR1``; otherwise UTF-8 text with a header line. The delimiter (``,``
  ``;`` tab ``|``) is the one that splits the header into the mapped column names;
  if several do, :class:`csv.Sniffer` decides on a sample. ``.tsv``/``.tab`` files
  are read with a tab. Blank lines are not data rows; a row with more fields
  than the header is refused, one with fewer has its missing trailing fields
  empty (as spreadsheets export them).
* **Row numbers** in errors are 0-based data rows (the header is not counted).
* **Ids** (session, user, product, category) are text. Text cells are kept as
  written (whitespace stripped); CSV cells are never parsed as numbers, so a
  19-digit category id stays exact. Parquet integer columns become their decimal
  text (``1004767 -> "1004767"``); floating-point id columns are accepted only if
  every value is an integer below 2**53 (otherwise the ids may already have lost
  digits and are refused). An empty product id is refused; an empty category is
  missing.
* **Time**: a column of numbers is epoch time, unit detected from its largest
  value: below 1e11 it is seconds (1e11 s is the year 5138), from 1e11 to 1e14
  milliseconds (1e11 ms is 1973-03-03); larger values (micro-/nanoseconds) and a
  column mixing the two units are refused, as are negative times. Otherwise every
  cell is ISO-8601 text (``2019-10-01 00:00:00``, ``2019-10-01T00:00:00Z``,
  ``...+02:00``, and the ``" UTC"`` suffix REES46 writes, any case); a time without an
  offset is UTC. Parquet timestamp columns are used as they are (naive = UTC).
* **Sessions**: with ``session``, its ids are used as they are; a row whose
  session id is empty is refused unless ``user`` is mapped too, in which case such
  rows are sessionized by user as below. With only ``user``, each user's events
  (in time order) start a new session after a gap of more than ``session_gap``
  seconds (30 minutes by default; exactly 30 minutes stays in the session); the
  n-th session of user ``u`` (from 1) is ``"u#n"``.
* **Event types**: without ``type`` every event is a view. With it, each raw
  value maps to a canonical type (:func:`parse_event_types`; defaults ``view``,
  ``cart``, ``purchase``, ``remove_from_cart``). Values matching none are refused
  (``unknown_types="error"``, the default) or dropped (``"drop"``), with their
  count logged as a warning and recorded in ``frame.attrs``.
* **Price**: empty, null or ``NaN`` cells are missing (NaN), never an error and
  never filled here; text that is not a number, negative and infinite prices are
  refused.

``frame.attrs`` records how the file was read: ``source``, ``format``,
``delimiter``, ``time_unit`` (``"iso8601"``, ``"s"``, ``"ms"`` or
``"timestamp"``), ``columns`` (the mapping), ``event_types``, ``sessions_from``
(``"session"``, ``"user"`` or ``"session+user"``), ``session_gap``,
``dropped_unknown_types`` (raw value -> count) and ``n_rows_read``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reco_fast.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "COLUMN_KEYS",
    "DEFAULT_EVENT_TYPES",
    "DEFAULT_SESSION_GAP",
    "EVENT_TYPES",
    "parse_columns",
    "parse_event_types",
    "read_events",
]

log = logging.getLogger(__name__)

COLUMN_KEYS = ("time", "session", "user", "type", "product", "category", "price")
"""Keys of the column mapping; ``time`` and ``product`` are required, and ``session`` or ``user``."""

EVENT_TYPES = ("view", "cart", "purchase", "remove")
"""The canonical event types, in the order they are listed."""

DEFAULT_EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "view": ("view",),
    "cart": ("cart",),
    "purchase": ("purchase",),
    "remove": ("remove_from_cart",),
}

DEFAULT_SESSION_GAP = 30 * 60.0
"""Seconds of inactivity after which a user's next event starts a new session."""

_MS_FROM = 1e11  # epoch values from here on are milliseconds (1973-03-03 in ms, year 5138 in s)
_TOO_LARGE = 1e14  # micro- and nanoseconds are refused
_MAX_ROWS = 5
_MAX_VALUE_CHARS = 40
_MAX_LISTED_COLUMNS = 20
_SAMPLE_BYTES = 64 * 1024
_DELIMITERS = (",", ";", "\t", "|")
_NULL_PRICE_TEXT = frozenset({"", "nan", "null", "none", "na", "n/a"})


# ---- the CLI's two small languages ------------------------------------------------------------


def _pairs(spec: str, what: str, form: str, valid: str) -> list[tuple[str, str]]:
    """The ``key=value`` pairs of a comma-separated ``spec`` (blank parts skipped), as
    written; a part without ``=`` is a ValueError naming ``what``, the ``form`` expected and
    the ``valid`` keys."""
    pairs = []
    for part in spec.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"{what}: {_short(part.strip())} is not {form} ({valid})")
        key, _, value = part.partition("=")
        pairs.append((key, value))
    return pairs


def parse_columns(spec: str | Mapping[str, str]) -> dict[str, str]:
    """Parse a column mapping ``"time=COL,product=COL,session=COL,..."``.

    Parameters
    ----------
    spec : str or mapping
        Comma-separated ``key=column`` pairs (whitespace around keys and names is
        ignored; a column name may contain ``=`` but not ``,``), or a mapping of
        the same. Keys are :data:`COLUMN_KEYS`.

    Returns
    -------
    dict
        Key -> the file's column name.

    Raises
    ------
    ValueError
        Naming the bad key: an unknown or repeated key, a pair without ``=``, an
        empty column name, ``time`` or ``product`` missing, or neither ``session``
        nor ``user``.
    """
    if isinstance(spec, Mapping):
        pairs = [(str(k).strip(), v) for k, v in spec.items()]
    elif isinstance(spec, str):
        pairs = [
            (k.strip(), v)
            for k, v in _pairs(spec, "columns", "key=COLUMN", f"keys: {', '.join(COLUMN_KEYS)}")
        ]
    else:
        raise TypeError(f"columns must be a str or a mapping, got {type(spec).__name__}")
    out: dict[str, str] = {}
    for key, column in pairs:
        if key not in COLUMN_KEYS:
            raise ValueError(f"columns: unknown key {_short(key)} (keys: {', '.join(COLUMN_KEYS)})")
        if key in out:
            raise ValueError(f"columns: key {key!r} is given twice")
        if not isinstance(column, str) or not column.strip():
            raise ValueError(f"columns: key {key!r} has no column name")
        out[key] = column.strip()
    for key in ("time", "product"):
        if key not in out:
            raise ValueError(f"columns: key {key!r} is required (e.g. {key}=COLUMN)")
    if "session" not in out and "user" not in out:
        raise ValueError(
            "columns: key 'session' or 'user' is required "
            "(with only 'user', sessions are split at a 30-minute gap)"
        )
    return out


def parse_event_types(
    spec: str | Mapping[str, str | tuple[str, ...] | list[str]] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Parse an event-type mapping ``"view=VALUE,cart=VALUE,purchase=VALUE,remove=VALUE"``.

    Parameters
    ----------
    spec : str, mapping or None
        Comma-separated ``type=raw`` pairs; several raw values for one type are
        separated by ``|`` (``cart=cart|add_to_cart``); an empty value
        (``remove=``) maps nothing to that type. Types not given keep their
        defaults (:data:`DEFAULT_EVENT_TYPES`); ``None`` or ``""`` means all
        defaults. A mapping may give a string or a sequence of raw values.

    Returns
    -------
    dict
        Canonical type (each of :data:`EVENT_TYPES`) -> tuple of raw values.

    Raises
    ------
    ValueError
        Naming the bad key: an unknown or repeated type, a pair without ``=``, or
        one raw value mapped to two types.
    """
    out = dict(DEFAULT_EVENT_TYPES)
    if spec is None:
        return out
    if isinstance(spec, Mapping):
        items: list[tuple[Any, Any]] = list(spec.items())
    elif isinstance(spec, str):
        items = _pairs(spec, "event types", "type=VALUE", f"types: {', '.join(EVENT_TYPES)}")
    else:
        raise TypeError(f"event_types must be a str or a mapping, got {type(spec).__name__}")
    seen: set[str] = set()
    for raw_key, value in items:
        key = str(raw_key).strip()
        if key not in EVENT_TYPES:
            raise ValueError(
                f"event types: unknown type {_short(key)} (types: {', '.join(EVENT_TYPES)})"
            )
        if key in seen:
            raise ValueError(f"event types: type {key!r} is given twice")
        seen.add(key)
        raw = value.split("|") if isinstance(value, str) else list(value)
        out[key] = tuple(v.strip() for v in raw if str(v).strip())
    owner: dict[str, str] = {}
    for key in EVENT_TYPES:
        for value in out[key]:
            if value in owner:
                raise ValueError(
                    f"event types: value {_short(value)} is mapped to both "
                    f"{owner[value]!r} and {key!r}"
                )
            owner[value] = key
    return out


# ---- reading ------------------------------------------------------------------------------------


def read_events(
    path: str | Path,
    columns: str | Mapping[str, str],
    event_types: str | Mapping[str, Any] | None = None,
    *,
    session_gap: float = DEFAULT_SESSION_GAP,
    unknown_types: str = "error",
) -> pd.DataFrame:
    """Read a raw event log (CSV with any delimiter, TSV or Parquet) into canonical events.

    Parameters
    ----------
    path : str or Path
        The log, one row per event, with a header (text files).
    columns : str or mapping
        Which file column holds what (:func:`parse_columns`), e.g.
        ``"time=event_time,session=user_session,product=product_id"``.
    event_types : str, mapping or None
        Raw event-type values of each canonical type (:func:`parse_event_types`).
        Ignored without a ``type`` column.
    session_gap : float
        Seconds; with sessions built from ``user``, a gap longer than this starts
        a new session. Default 1800 (30 minutes).
    unknown_types : {"error", "drop"}
        What to do with events whose type maps to no canonical type.

    Returns
    -------
    pandas.DataFrame
        The canonical columns of the module docstring, sorted by ``session_id``
        then ``ts`` (stable), index 0..n-1; ``attrs`` records how it was read.

    Raises
    ------
    InputError
        The file is missing, empty, unreadable, lacks a mapped column (the message
        lists the file's columns), or a cell is invalid (the message names the
        column and the first offending 0-based data rows).
    ValueError, TypeError
        A bad ``columns``, ``event_types``, ``session_gap`` or ``unknown_types``.
    """
    import pandas as pd

    mapping = parse_columns(columns)
    types = parse_event_types(event_types)
    if unknown_types not in ("error", "drop"):
        raise ValueError(f"unknown_types must be 'error' or 'drop', got {unknown_types!r}")
    if (
        isinstance(session_gap, bool)
        or not isinstance(session_gap, (int, float))
        or not math.isfinite(session_gap)
        or session_gap <= 0
    ):
        raise ValueError(f"session_gap must be a positive number of seconds, got {session_gap!r}")
    path = Path(path)
    frame, fmt, delimiter = _read_table(path, mapping)
    n_read = len(frame)
    if n_read == 0:
        raise InputError(f"{path}: the file has a header but no rows")

    def col(key: str) -> pd.Series:
        return frame[mapping[key]]

    def where(key: str) -> str:
        return f"{path}: column {mapping[key]!r} ({key})"

    # event types first: dropped rows are not validated further
    dropped: dict[str, int] = {}
    if "type" in mapping:
        raw_type = _as_text(col("type"), where("type"), mapping["type"])
        lookup = {value: key for key in EVENT_TYPES for value in types[key]}
        canon = raw_type.map(lookup)
        unknown = canon.isna().to_numpy()
        if unknown.any():
            values = raw_type[unknown].fillna("")
            counts = values.value_counts(sort=True)
            dropped = {str(v): int(c) for v, c in counts.items()}
            shown = ", ".join(
                f"{_short(v)} ({c} row{'s' if c != 1 else ''})"
                for v, c in list(dropped.items())[:_MAX_ROWS]
            )
            more = f" and {len(dropped) - _MAX_ROWS} more" if len(dropped) > _MAX_ROWS else ""
            if unknown_types == "error":
                _raise_rows(
                    where("type"),
                    mapping["type"],
                    frame.index[unknown],
                    f"has event types that map to none of {', '.join(EVENT_TYPES)}: {shown}{more}",
                    "map them with event types (e.g. view=VALUE) or drop them "
                    "(unknown_types='drop')",
                )
            log.warning(
                "%s: dropped %d events of unknown types: %s%s",
                path,
                int(unknown.sum()),
                shown,
                more,
            )
            keep = ~unknown
            frame, canon = frame[keep], canon[keep]
            if frame.empty:
                raise InputError(f"{where('type')}: no event has a known type; {shown}{more}")
        type_values = canon.to_numpy(dtype=object)
    else:
        type_values = np.full(len(frame), "view", dtype=object)

    product = _as_id(col("product"), where("product"), mapping["product"])
    _refuse_missing(product, where("product"), mapping["product"], "fill it in or drop those rows")
    ts, time_unit = _as_time(col("time"), where("time"), mapping["time"])

    out = pd.DataFrame(index=frame.index)
    user = None
    if "user" in mapping:
        user = _as_id(col("user"), where("user"), mapping["user"])
    if "session" in mapping:
        session = _as_id(col("session"), where("session"), mapping["session"])
        empty = session.isna().to_numpy()
        if empty.any():
            if user is None:
                _refuse_missing(
                    session,
                    where("session"),
                    mapping["session"],
                    "fill it in, or map user=COLUMN too to sessionize those rows by user",
                )
            assert user is not None
            _refuse_missing(
                user[empty],
                where("user"),
                mapping["user"],
                "rows without a session id need a user id",
            )
            derived = _sessionize(user[empty], ts[empty], session_gap)
            clash = set(derived.unique()) & set(session.dropna().unique())
            if clash:
                raise InputError(
                    f"{where('session')}: a session built from the user for empty session ids "
                    f"({_short(min(clash))}) is also a session id in the file; fill the empty "
                    "session ids in"
                )
            session = session.copy()
            session[empty] = derived
        sessions_from = "session" if not empty.any() else "session+user"
    else:
        assert user is not None
        _refuse_missing(user, where("user"), mapping["user"], "fill it in or drop those rows")
        session = _sessionize(user, ts, session_gap)
        sessions_from = "user"

    out["session_id"] = session
    out["ts"] = ts
    out["type"] = pd.Series(type_values, index=frame.index, dtype=object)
    out["product_id"] = product
    if "category" in mapping:
        out["category"] = _as_id(col("category"), where("category"), mapping["category"])
    if "price" in mapping:
        out["price"] = _as_price(col("price"), where("price"), mapping["price"])
    if user is not None:
        out["user_id"] = user

    out = out.sort_values(["session_id", "ts"], kind="stable").reset_index(drop=True)
    out.attrs.update(
        source=str(path),
        format=fmt,
        delimiter=delimiter,
        time_unit=time_unit,
        columns=dict(mapping),
        event_types={k: list(v) for k, v in types.items()},
        sessions_from=sessions_from,
        session_gap=float(session_gap),
        dropped_unknown_types=dropped,
        n_rows_read=n_read,
    )
    log.info(
        "%s: %d events (%s, time %s), %d sessions from %s, %d products",
        path,
        len(out),
        fmt if delimiter is None else f"{fmt} {delimiter!r}",
        time_unit,
        out["session_id"].nunique(),
        sessions_from,
        out["product_id"].nunique(),
    )
    return out


# ---- file formats -------------------------------------------------------------------------------


def _read_table(path: Path, mapping: dict[str, str]) -> tuple[pd.DataFrame, str, str | None]:
    """The mapped columns of the file (text as str, Parquet as stored), its format and delimiter."""
    import pandas as pd

    try:
        with open(path, "rb") as fh:
            head = fh.read(_SAMPLE_BYTES)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not an event log") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not head:
        raise InputError(f"{path}: the file is empty")
    wanted = list(dict.fromkeys(mapping.values()))
    if path.suffix.lower() in (".parquet", ".pq") or head[:4] == b"PAR1":
        return _read_parquet(path, wanted), "parquet", None

    try:
        sample = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut by the sample's end
            raise InputError(
                f"{path}: neither Parquet nor UTF-8 text (undecodable byte at offset {exc.start}); "
                "give a CSV/TSV file in UTF-8 or a Parquet file"
            ) from None
        sample = head[: exc.start].decode("utf-8-sig")
    header_line = sample.splitlines()[0] if sample.splitlines() else ""
    if path.suffix.lower() in (".tsv", ".tab"):
        delimiter = "\t"
    else:
        delimiter = _detect_delimiter(path, sample, header_line, wanted)
    header = [c.strip() for c in next(csv.reader([header_line], delimiter=delimiter), [])]
    _check_columns(path, header, wanted)
    try:
        frame = pd.read_csv(
            path,
            sep=delimiter,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8-sig",
        )  # every column: with usecols pandas would silently accept rows with extra fields
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"{path}: not a readable {_fmt_name(delimiter)} file: {_short_exc(exc)}"
        ) from None
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas makes the first column the index when every row has one field too many
        raise InputError(
            f"{path}: every data row has more fields than the header "
            f"({len(frame.columns)} columns); remove trailing delimiters or fix the header"
        )
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame[wanted], "tsv" if delimiter == "\t" else "csv", delimiter


def _fmt_name(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else f"CSV ({delimiter!r}-delimited)"


def _detect_delimiter(path: Path, sample: str, header_line: str, wanted: list[str]) -> str:
    """The delimiter that splits the header into the mapped columns (Sniffer breaks ties)."""
    fits = []
    for delimiter in _DELIMITERS:
        header = {c.strip() for c in next(csv.reader([header_line], delimiter=delimiter), [])}
        if all(c in header for c in wanted):
            fits.append(delimiter)
    if len(fits) == 1:
        return fits[0]
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters="".join(fits or _DELIMITERS)).delimiter
    except csv.Error:
        sniffed = None
    if fits:
        return sniffed if sniffed in fits else fits[0]
    # no delimiter yields every mapped column: report the columns of the likeliest one
    if sniffed is None:
        sniffed = max(_DELIMITERS, key=header_line.count)
    return sniffed


def _check_columns(path: Path, header: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in header]
    if missing:
        shown = ", ".join(_short(c) for c in header[:_MAX_LISTED_COLUMNS])
        more = (
            f" and {len(header) - _MAX_LISTED_COLUMNS} more"
            if len(header) > _MAX_LISTED_COLUMNS
            else ""
        )
        raise InputError(
            f"{path}: no column {', '.join(_short(c) for c in missing[:_MAX_ROWS])}; "
            f"the file's columns are {shown}{more}; fix the column mapping",
            field=missing[0],
        )
    dupes = sorted({c for c in wanted if header.count(c) > 1})
    if dupes:
        raise InputError(
            f"{path}: column {_short(dupes[0])} appears more than once in the header",
            field=dupes[0],
        )


def _read_parquet(path: Path, wanted: list[str]) -> pd.DataFrame:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a build dependency in practice
        raise InputError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        names = [str(n) for n in pq.read_schema(path).names]
        _check_columns(path, [n.strip() for n in names], wanted)
        by_stripped = {n.strip(): n for n in names}
        table = pq.read_table(path, columns=[by_stripped[c] for c in wanted])
    except InputError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"{path}: not a readable Parquet file: {_short_exc(exc)}") from None
    frame = table.to_pandas()
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.reset_index(drop=True)


# ---- columns ------------------------------------------------------------------------------------


def _as_text(series: pd.Series, where: str, field: str) -> pd.Series:
    """Cells as stripped text, missing (empty or null) as NaN; numbers as their decimal text."""
    return _as_id(series, where, field)


def _as_id(series: pd.Series, where: str, field: str) -> pd.Series:
    """Ids as text with missing as NaN (None in object columns); refuses float ids that may be inexact."""
    import pandas as pd

    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        values = series.astype(object).map(lambda v: None if pd.isna(v) else str(v))
    elif pd.api.types.is_integer_dtype(dtype):
        values = series.astype(object).map(lambda v: None if pd.isna(v) else str(int(v)))
    elif pd.api.types.is_float_dtype(dtype):
        arr = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(arr)
        bad = ~np.isnan(arr) & (
            ~finite
            | (np.abs(np.where(finite, arr, 0.0)) >= 2.0**53)
            | (np.mod(np.where(finite, arr, 0.0), 1.0) != 0)
        )
        if bad.any():
            _raise_rows(
                where,
                field,
                series.index[bad],
                "holds floating-point ids that are not exact integers below 2**53 "
                "(digits may already be lost)",
                "store ids as integers or text",
            )
        values = pd.Series(
            [None if np.isnan(v) else str(int(v)) for v in arr], index=series.index, dtype=object
        )
    else:
        values = _text_cells(series)
    values = values.astype(object)
    values = values.where(values.notna() & (values != ""), None)
    return values


def _text_cells(series: pd.Series) -> pd.Series:
    """Stripped text of each cell (vectorised for text columns), missing as NaN/None."""
    import pandas as pd

    if isinstance(series.dtype, pd.StringDtype):
        return series.str.strip()
    kind = pd.api.types.infer_dtype(series, skipna=True)
    if kind == "empty":
        return series.astype(object)
    if kind == "string":
        return series.str.strip()
    return series.map(_cell_text, na_action="ignore")


def _cell_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if math.isfinite(value) and float(value).is_integer() and abs(value) < 2.0**53:
            return str(int(value))
        return repr(float(value))
    return str(value).strip()


def _refuse_missing(values: pd.Series, where: str, field: str, fix: str) -> None:
    missing = values.isna().to_numpy()
    if missing.any():
        _raise_rows(where, field, values.index[missing], "is empty", fix)


def _as_time(series: pd.Series, where: str, field: str) -> tuple[np.ndarray, str]:
    """Event times as float epoch seconds and the unit detected (see the module docstring)."""
    import pandas as pd

    dtype = series.dtype
    index = series.index
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        stamps = series if isinstance(dtype, pd.DatetimeTZDtype) else series.dt.tz_localize("UTC")
        _refuse_nat(stamps, where, field, "is empty")
        seconds = (stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        return seconds.to_numpy(dtype=np.float64), "timestamp"
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return _epoch(series.to_numpy(dtype=np.float64, na_value=np.nan), index, where, field)
    text = _text_cells(series).astype(object)
    empty = text.isna().to_numpy() | (text == "").to_numpy()
    if empty.any():
        _raise_rows(where, field, index[empty], "is empty", "give every event a time")
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all():
        return _epoch(numbers.to_numpy(dtype=np.float64), index, where, field)
    iso = text.str.replace(r"(?i)\s*UTC$", "", regex=True)
    stamps = pd.to_datetime(iso, format="ISO8601", utc=True, errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        first = text[bad].iloc[0]
        _raise_rows(
            where,
            field,
            index[bad],
            f"is not an ISO-8601 time or epoch number (e.g. {_short(first)})",
            "use ISO-8601 text (2019-10-01 00:00:00, optional ' UTC' or offset) in every row, "
            "or epoch seconds/milliseconds in every row",
        )
    seconds = (stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.float64), "iso8601"


def _refuse_nat(stamps: pd.Series, where: str, field: str, problem: str) -> None:
    bad = stamps.isna().to_numpy()
    if bad.any():
        _raise_rows(where, field, stamps.index[bad], problem, "give every event a time")


def _epoch(values: np.ndarray, index: Any, where: str, field: str) -> tuple[np.ndarray, str]:
    bad = ~np.isfinite(values)
    if bad.any():
        _raise_rows(where, field, index[bad], "is empty or not finite", "give every event a time")
    bad = values < 0
    if bad.any():
        _raise_rows(where, field, index[bad], "is a negative epoch time", "give times after 1970")
    bad = values >= _TOO_LARGE
    if bad.any():
        _raise_rows(
            where,
            field,
            index[bad],
            "is epoch time beyond milliseconds (>= 1e14: micro- or nanoseconds?)",
            "give epoch seconds or milliseconds",
        )
    if values.max() >= _MS_FROM:
        bad = values < _MS_FROM
        if bad.any():
            _raise_rows(
                where,
                field,
                index[bad],
                "mixes epoch seconds (< 1e11) with milliseconds (>= 1e11)",
                "give one unit in every row",
            )
        return values / 1000.0, "ms"
    return values.astype(np.float64, copy=True), "s"


def _as_price(series: pd.Series, where: str, field: str) -> np.ndarray:
    """Prices as float64; missing -> NaN; non-numeric text, negative or infinite -> InputError."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = _text_cells(series).astype(object)
        missing = text.isna().to_numpy().copy()
        present = ~missing
        if present.any():
            lowered = text[present].astype(str).str.lower()
            missing[present] = lowered.isin(_NULL_PRICE_TEXT).to_numpy(dtype=bool)
        values = pd.to_numeric(text.where(~missing, None), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        bad = np.isnan(values) & ~missing
        if bad.any():
            _raise_rows(
                where,
                field,
                series.index[bad],
                f"is not a number (e.g. {_short(text[bad].iloc[0])})",
                "use '.' as the decimal separator and no currency sign; leave unknown prices empty",
            )
    bad = np.isinf(values) | (values < 0)
    if bad.any():
        _raise_rows(
            where,
            field,
            series.index[bad],
            "is negative or infinite",
            "give prices >= 0; leave unknown prices empty",
        )
    return values


def _sessionize(user: pd.Series, ts: np.ndarray, gap: float) -> pd.Series:
    """Session ids ``"<user>#<n>"``: a user's events split where the gap exceeds ``gap`` seconds."""
    import pandas as pd

    order = np.lexsort((np.arange(len(user)), ts, user.to_numpy(dtype=object).astype(str)))
    u = user.to_numpy(dtype=object)[order]
    t = np.asarray(ts, dtype=np.float64)[order]
    new_user = np.ones(len(u), dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    new_session = new_user.copy()
    new_session[1:] |= (t[1:] - t[:-1]) > gap
    counter = np.cumsum(new_session)
    first_of_user = np.maximum.accumulate(np.where(new_user, counter, 0))
    number = counter - first_of_user + 1
    ids = np.empty(len(u), dtype=object)
    ids[order] = [f"{a}#{n}" for a, n in zip(u, number, strict=True)]
    return pd.Series(ids, index=user.index, dtype=object)


# ---- messages -----------------------------------------------------------------------------------


def _raise_rows(where: str, field: str, rows: Any, problem: str, fix: str) -> None:
    rows = [int(r) for r in np.asarray(rows).ravel()]
    shown = ", ".join(str(r) for r in rows[:_MAX_ROWS])
    more = f" and {len(rows) - _MAX_ROWS} more" if len(rows) > _MAX_ROWS else ""
    label = "row" if len(rows) == 1 else "rows"
    raise InputError(
        f"{where} {problem} ({label} {shown}{more}; 0-based data rows); {fix}",
        field=field,
        rows=rows[:_MAX_ROWS],
    )


def _short(value: Any) -> str:
    text = repr(str(value))
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 4] + "...'"


def _short_exc(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
