"""``reco-fast score``: score a page-view file of any size in chunks, in constant memory.

Each chunk is read (CSV with pandas, or Parquet with pyarrow), scored with
``Model.predict_proba`` (the chunk's columns, text as numpy strings) and appended
to the output CSV with a ``click_probability`` column; memory is bounded by the
chunk size, not the input. Unquoted CSV lines are copied to the output byte for
byte with the probability appended. The output is written beside its target and renamed into place at the
end, so a failed run leaves no partial file. Needs pandas (the ``build``
extra); Parquet input needs pyarrow.

Measured on the development machine (2 cores; build one artifact first with
``python build_model.py --out /tmp/reco_model``)::

    python - <<'EOF'   # a 10M-row CSV: the default log (15,000 rows) repeated
    import itertools
    src = open("data/cdp_realtime_recommendations.csv").read().splitlines(True)
    with open("/tmp/big10m.csv", "w") as f:
        f.write(src[0])
        f.writelines(itertools.islice(itertools.cycle(src[1:]), 10_000_000))
    EOF
    /usr/bin/time -v reco-fast score /tmp/reco_model --input /tmp/big10m.csv \\
        --output /tmp/scored10m.csv

(1M rows: the same with 1_000_000.) flat-avx512 backend, 2026-11-27, 2 cores
shared with other jobs (so user CPU time is about 2/3 of the wall time):

==========  ===========  ======  =======  ========
rows        --chunksize  wall    rows/s   peak RSS
==========  ===========  ======  =======  ========
1,000,000   100,000      8.0 s   138,000  357 MB
1,000,000   20,000       7.9 s   140,000  205 MB
10,000,000  100,000      62.7 s  161,000  387 MB
==========  ===========  ======  =======  ========

Peak RSS does not grow with the input: it is set by the chunk size (146 MB
for Python, pandas, numpy and the library, measured on a 100-row file, plus
the chunk's raw lines, frame and feature matrix). Most of the time goes to
parsing the CSV and writing the output; the compiled model itself scores
millions of rows per second.
"""

from __future__ import annotations

import inspect
import io
import itertools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reco_fast.artifact import current_umask
from reco_fast.errors import InputError, shown
from reco_fast.features.schema import INT_EXACT, NUMERIC_FIELDS, series_values, text_array

__all__ = ["DEFAULT_CHUNKSIZE", "ON_INVALID", "OUTPUT_COLUMN", "score_file", "supports_on_invalid"]

DEFAULT_CHUNKSIZE = 100_000
MAX_RECORD_BYTES = 1 << 20
"""Most bytes past its block one CSV record may span (a quoted field with line breaks):
a quote that is never closed would otherwise pull the rest of the file into memory."""
OUTPUT_COLUMN = "click_probability"
ON_INVALID = ("raise", "nan")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _require_pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise InputError(
            "scoring files needs pandas: pip install 'reco_fast[build]' (or pandas)"
        ) from None
    return pd


def supports_on_invalid(model: Any) -> bool:
    """Whether this reco_fast's ``Model.predict_proba`` takes ``on_invalid``."""
    try:
        return "on_invalid" in inspect.signature(model.predict_proba).parameters
    except (TypeError, ValueError):
        return False


def _open_record(lines: list[bytes]) -> int:
    """Index, among the non-blank records of ``lines``, of the record left open by an
    odd number of ``"`` (the row a stray quote is in)."""
    records = quotes = opened = 0
    for line in lines:
        if quotes % 2 == 0:
            opened = records
        quotes += line.count(b'"')
        if quotes % 2 == 0 and line.strip():
            records += 1
    return opened


def _csv_blocks(f: Any, chunksize: int, source: str = "") -> Iterator[list[bytes]]:
    """Lists of at most ``chunksize`` raw records (lines), never splitting a quoted field.

    A record that opens a quote and continues on the next line is completed first:
    a block ends only where the count of ``"`` so far is even (RFC 4180 quoting).
    A record may run at most ``MAX_RECORD_BYTES`` past its block: a quote that is
    not closed by then (a stray ``"``) raises an InputError naming its data row
    (0-based), instead of reading the rest of the file into memory.
    Blank lines are dropped, as pandas does.
    """
    limit = MAX_RECORD_BYTES
    done = 0  # data rows in the blocks already yielded
    while True:
        lines = list(itertools.islice(f, chunksize))
        if not lines:
            return
        data = b"".join(lines)
        quotes = data.count(b'"')
        if quotes % 2:  # a quoted field runs past this block: finish the record
            extra = 0
            while quotes % 2:
                line = f.readline(limit - extra + 1)
                extra += len(line)
                if not line or extra > limit:
                    row = done + _open_record(lines)
                    where = "by the end of the file" if not line else f"within {limit:,} bytes"
                    raise InputError(
                        f"{source}data row {row:,} opens a quoted field that is not closed {where}: "
                        "a stray '\"'? Remove it, or double it inside a quoted field",
                        rows=[row],
                    )
                lines.append(line)
                quotes += line.count(b'"')
            data = b"".join(lines)
        if b'"' in data:  # quoted records may span lines: regroup by quote parity
            records, pending, quotes = [], [], 0
            for line in lines:
                pending.append(line)
                quotes += line.count(b'"')
                if quotes % 2 == 0:
                    records.append(b"".join(pending))
                    pending, quotes = [], 0
            if pending:
                records.append(b"".join(pending))
            lines = records
        if not lines[0].strip() or b"\n\n" in data or b"\n\r\n" in data:
            lines = [x for x in lines if x.strip()]
        if lines:
            done += len(lines)
            yield lines


def _chunks_csv(
    path: Path, chunksize: int, text_fields: Sequence[str]
) -> Iterator[tuple[Any, list[bytes] | None, bytes, float]]:
    """(DataFrame, raw records or None, raw header, fraction of the file read) per chunk.

    The raw records are returned when none is quoted, so the output can copy
    each input line byte for byte and append the probability (much faster than
    ``DataFrame.to_csv``); text fields are read as strings (product ids keep
    leading zeros).
    """
    pd = _require_pandas()
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.readline()
        while header and not header.strip():
            header = f.readline()
        if not header:
            raise InputError(f"{path}: the file is empty")
        for block in _csv_blocks(f, chunksize, f"{path}: "):
            data = b"".join(block)
            try:
                frame = pd.read_csv(
                    io.BytesIO(header + (data if data.endswith(b"\n") else data + b"\n")),
                    keep_default_na=False,
                    na_filter=False,
                    dtype=dict.fromkeys(text_fields, str),
                )
            except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
                msg = " ".join(str(exc).split()) or type(exc).__name__
                raise InputError(f"{path}: not a readable CSV file: {msg}") from None
            rounded = [c for c in NUMERIC_FIELDS if c in frame.columns and _beyond_exact(frame[c])]
            if rounded:
                # pandas parsed a column of ints and floats as float64, rounding an int
                # beyond 2**53: read those columns as text, converted cell by cell
                frame = pd.read_csv(
                    io.BytesIO(header + (data if data.endswith(b"\n") else data + b"\n")),
                    keep_default_na=False,
                    na_filter=False,
                    dtype=dict.fromkeys([*text_fields, *rounded], str),
                )
            raw = block if b'"' not in data and len(frame) == len(block) else None
            yield frame, raw, header, (min(f.tell() / size, 1.0) if size else 1.0)


def _chunks_parquet(
    path: Path, chunksize: int, text_fields: Sequence[str]
) -> Iterator[tuple[Any, None, bytes, float]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert it to CSV"
        ) from None
    _require_pandas()
    try:
        f = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid etc.
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    total = f.metadata.num_rows
    done = 0
    batches = f.iter_batches(batch_size=chunksize)
    while True:
        # pyarrow raises its own errors, and to_pandas() KeyError, AttributeError or
        # ValueError when the file's pandas metadata disagrees with its columns
        try:
            batch = next(batches, None)
            if batch is None:
                return
            # integer columns with nulls as pandas' nullable ints: the default, float64,
            # would round an int beyond 2**53 before the model sees it
            frame = batch.to_pandas(types_mapper=_nullable_int)
        except Exception as exc:
            msg = " ".join(str(exc).split())[:200]
            raise InputError(
                f"{path}: cannot read rows {done:,}+ of this Parquet file ({type(exc).__name__}: "
                f"{msg}); its metadata may disagree with its columns: rewrite it, or convert "
                "it to CSV"
            ) from None
        done += len(frame)
        yield frame, None, b"", (done / total if total else 1.0)


def _nullable_int(arrow_type: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_integer(arrow_type):
        pd = _require_pandas()
        return pd.Int64Dtype() if pa.types.is_signed_integer(arrow_type) else pd.UInt64Dtype()
    return None


def _beyond_exact(col: Any) -> bool:
    """A float column holding a value beyond 2**53 (where an int parsed as float64 was rounded)."""
    values = col.to_numpy()
    return values.dtype.kind == "f" and bool((np.abs(values) > INT_EXACT).any())


def _text_numbers(col: Any) -> np.ndarray:
    """A CSV column of text cells as numbers: float64, or objects where a cell is not a
    number (kept as it is, so the error lands on its row; an empty cell is NaN, a
    missing value, as is the text "nan") or is an integer
    beyond 2**53 (kept as a Python int, which the model rounds to float32 once)."""
    pd = _require_pandas()
    values = col.to_numpy()
    num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    stripped = col.astype(str).str.strip()
    text = stripped.to_numpy()
    # an empty cell is a missing value (NaN), which the model's policy accepts or refuses
    bad = np.isnan(num) & (stripped.str.lower().to_numpy() != "nan") & (text != "")
    huge = np.flatnonzero(np.abs(num) > INT_EXACT)
    if not bad.any() and not huge.size:
        return num
    mixed = num.astype(object)
    mixed[bad] = values[bad]
    for i in huge.tolist():
        if _INT_TEXT.fullmatch(text[i]):
            mixed[i] = int(text[i])
    return mixed


def _columns(builder: Any, frame: Any, csv: bool) -> dict[str, Any]:
    """The fields the model reads, as numpy columns (text as numpy strings when that loses
    nothing: fast to encode).

    Values go to ``predict_proba`` as they are, so the file is judged by the rules of
    every other entry point: a duration or datetime column is not a number. The one
    conversion is a CSV's text: a numeric column pandas could not parse (a cell that
    is not a number) is converted cell by cell, keeping each bad cell on its row.
    """
    cols = {}
    for name in builder.required_fields:
        if name not in frame.columns:
            raise InputError(f"missing column {name!r}", field=name)
        col = frame[name]
        values = series_values(col)
        if name in NUMERIC_FIELDS:
            if csv and values.dtype.kind == "O":
                values = _text_numbers(col)
        else:
            values = text_array(values)
        cols[name] = values
    return cols


def _rows_in_file(exc: InputError, builder: Any, cols: dict[str, Any], start: int) -> InputError:
    """Re-validate a failed chunk with row numbers counted from the start of the file."""
    if exc.rows:
        try:
            builder.transform(cols, start)
        except InputError as again:
            return again
    if exc.rows:
        return InputError(
            f"{exc} (rows counted from data row {start:,}, where this chunk starts)",
            field=exc.field,
            rows=[start + r for r in exc.rows],
        )
    return exc


class _Progress:
    """``scored 1,200,000 rows (12%)`` on stderr: rewritten in place on a terminal,
    otherwise one line at most every few seconds and a final one."""

    def __init__(self, stream: Any, every_s: float = 5.0):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every_s = 0.0 if self.tty else every_s
        self.last = -1e9
        self.shown = -1

    def __call__(
        self, rows: int, fraction: float | None, final: bool = False, invalid: int = 0
    ) -> None:
        now = time.monotonic()
        if (not final and now - self.last < self.every_s) or (
            final and rows == self.shown and not self.tty
        ):
            return
        self.last, self.shown = now, rows
        pct = f" ({fraction:.0%})" if fraction is not None else ""
        if invalid:
            pct += f", {invalid:,} invalid (empty {OUTPUT_COLUMN})"
        start = "\r" if self.tty else ""
        end = "\n" if final or not self.tty else ""
        self.stream.write(f"{start}scored {rows:,} rows{pct}{end}")
        self.stream.flush()


def score_file(
    model: Any,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    chunksize: int = DEFAULT_CHUNKSIZE,
    on_invalid: str = "raise",
    progress: Any = sys.stderr,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Score every row of ``input_path`` into ``output_path`` (CSV); return the row count.

    ``on_invalid="nan"`` (when the model's ``predict_proba`` supports it) writes NaN
    for rows that cannot be scored instead of stopping at the first one.
    """
    _require_pandas()
    src, dst = Path(input_path), Path(output_path)
    if chunksize < 1:
        raise InputError(f"chunksize must be a positive integer, got {chunksize}")
    if on_invalid not in ON_INVALID:
        raise InputError(f"on_invalid must be one of {list(ON_INVALID)}, got {shown(on_invalid)}")
    kwargs: dict[str, Any] = {}
    if on_invalid != "raise":
        if not supports_on_invalid(model):
            raise InputError(
                f"--on-invalid {on_invalid} needs Model.predict_proba(on_invalid=...), which "
                "this reco_fast version does not have; use --on-invalid raise"
            )
        kwargs["on_invalid"] = on_invalid
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    if dst.suffix.lower() == ".parquet":
        raise InputError(f"{dst}: the output is written as CSV; give a .csv path")
    if dst.exists() and dst.resolve() == src.resolve():
        raise InputError(f"{dst}: the output would overwrite the input")
    builder = model.builder
    text_fields = [f for f in builder.required_fields if f not in NUMERIC_FIELDS]
    reader = _chunks_parquet if src.suffix.lower() in (".parquet", ".pq") else _chunks_csv
    report = _Progress(progress) if progress is not None else None
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())  # as open() would create it, not mkstemp's 0600
    rows = invalid = 0
    fraction = 0.0
    try:
        with os.fdopen(fd, "wb") as out:
            wrote_header = False
            for frame, raw, header, fraction in reader(src, chunksize, text_fields):
                if OUTPUT_COLUMN in frame.columns:
                    raise InputError(f"{src}: already has a {OUTPUT_COLUMN!r} column")
                try:
                    cols = _columns(builder, frame, reader is _chunks_csv)
                    try:
                        proba = model.predict_proba(cols, **kwargs)
                    except InputError as exc:
                        raise _rows_in_file(exc, builder, cols, rows) from None
                except InputError as exc:
                    raise InputError(f"{src}: {exc}", field=exc.field, rows=exc.rows) from None
                proba = np.asarray(proba, dtype=np.float64).reshape(-1)
                invalid += int(np.count_nonzero(np.isnan(proba)))
                if not wrote_header:
                    if raw is not None:
                        out.write(header.rstrip(b"\r\n") + b"," + OUTPUT_COLUMN.encode() + b"\n")
                    else:
                        out.write(
                            (",".join(map(str, frame.columns)) + f",{OUTPUT_COLUMN}\n").encode()
                        )
                    wrote_header = True
                if raw is not None:
                    text = [repr(p) if p == p else "" for p in proba.tolist()]
                    out.write(
                        b"".join(
                            line.rstrip(b"\r\n") + b"," + p.encode() + b"\n"
                            for line, p in zip(raw, text, strict=True)
                        )
                    )
                else:
                    frame[OUTPUT_COLUMN] = proba
                    out.write(frame.to_csv(header=False, index=False).encode())
                rows += len(frame)
                if report:
                    report(rows, fraction, invalid=invalid)
                if on_chunk:
                    on_chunk(rows)
            if not wrote_header:
                raise InputError(f"{src}: the file has no rows")
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if report:
        report(rows, 1.0, final=True, invalid=invalid)
    return rows
