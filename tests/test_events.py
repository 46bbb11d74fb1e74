"""Raw event logs: any delimiter, TSV or Parquet, three time encodings, sessions from
users, ids kept exactly as text, and errors that name the column and the rows."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reco_fast.build.events import (
    DEFAULT_EVENT_TYPES,
    parse_columns,
    parse_event_types,
    read_events,
)
from reco_fast.errors import InputError
from tests.helpers import REES46, REES46_COLUMNS, require

FULL = "time=t,session=s,type=e,product=p,category=c,price=x"

# one small log: (time, session, event type, product, category, price)
BIG_CATEGORY = "2053013552326770905"  # 19 digits: not representable as a float64
ROWS = [
    ("2019-10-01 00:00:05 UTC", "s2", "view", "1004767", BIG_CATEGORY, "35.79"),
    ("2019-10-01 00:00:00 UTC", "s1", "view", "44600062", "2103807459595387724", "12.5"),
    ("2019-10-01 00:00:10 UTC", "s1", "cart", "44600062", "2103807459595387724", ""),
    ("2019-10-01 00:01:00 UTC", "s2", "purchase", "1004767", BIG_CATEGORY, "35.79"),
    ("2019-10-01 00:00:10 UTC", "s1", "remove_from_cart", "3900821", "", "33.20"),
]


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc).timestamp()


def _write(path: Path, rows, delimiter: str = ",", header=("t", "s", "e", "p", "c", "x")) -> Path:
    lines = [delimiter.join(header)] + [delimiter.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _expected() -> dict[str, list]:
    """What ROWS must read as, built without the reader: sorted by session then time, stable."""
    order = sorted(range(len(ROWS)), key=lambda i: (ROWS[i][1], _epoch(ROWS[i][0])))
    kind = {"remove_from_cart": "remove"}
    return {
        "session_id": [ROWS[i][1] for i in order],
        "ts": [_epoch(ROWS[i][0]) for i in order],
        "type": [kind.get(ROWS[i][2], ROWS[i][2]) for i in order],
        "product_id": [ROWS[i][3] for i in order],
        "category": [ROWS[i][4] or None for i in order],
        "price": [float(ROWS[i][5]) if ROWS[i][5] else math.nan for i in order],
    }


def _same(frame: pd.DataFrame, expected: dict[str, list]) -> None:
    assert list(frame.columns) == list(expected)
    for col, want in expected.items():
        got = frame[col].tolist()
        if col in ("ts", "price"):
            np.testing.assert_array_equal(np.asarray(got, float), np.asarray(want, float))
        else:
            assert [None if pd.isna(v) else v for v in got] == want, col
            assert all(v is None or pd.isna(v) or type(v) is str for v in got), col


# ---- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "delimiter"),
    [("log.csv", ","), ("log.csv", ";"), ("log.csv", "|"), ("log.tsv", "\t"), ("log.txt", "\t")],
)
def test_text_logs_with_any_delimiter_read_the_same(tmp_path, name, delimiter) -> None:
    path = _write(tmp_path / name, ROWS, delimiter)
    frame = read_events(path, FULL)
    _same(frame, _expected())
    assert frame.attrs["delimiter"] == delimiter
    assert frame.attrs["time_unit"] == "iso8601"


def test_delimiter_inside_values_does_not_fool_detection(tmp_path) -> None:
    # prices with a decimal comma would make ',' look like a delimiter to a naive count
    rows = [(t, s, e, p, c, x.replace(".", ",")) for t, s, e, p, c, x in ROWS]
    path = _write(tmp_path / "log.csv", rows, ";")
    with pytest.raises(
        InputError, match=r"'x' \(price\) is not a number.*decimal separator"
    ) as exc:
        read_events(path, FULL)
    assert exc.value.field == "x"
    assert exc.value.rows == (0, 1, 3, 4)  # row 2 is empty: a missing price, not an error


@pytest.mark.parametrize("name", ["log.parquet", "log.bin"])  # by extension, by magic bytes
def test_parquet_log_reads_the_same(tmp_path, name) -> None:
    frame = pd.DataFrame(ROWS, columns=["t", "s", "e", "p", "c", "x"])
    frame["x"] = pd.to_numeric(frame["x"].replace("", None))
    frame["p"] = frame["p"].astype("int64")  # integer product ids become their decimal text
    frame["c"] = frame["c"].replace("", None)
    frame.to_parquet(tmp_path / name)
    got = read_events(tmp_path / name, FULL)
    _same(got, _expected())
    assert got.attrs["format"] == "parquet"


def test_parquet_integer_ids_and_timestamps(tmp_path) -> None:
    cat = int(BIG_CATEGORY)
    frame = pd.DataFrame(
        {
            "t": pd.to_datetime(["2019-10-01 00:00:00", "2019-10-01 00:00:01"]),
            "u": np.array([541312140, 541312140], dtype="int64"),
            "p": np.array([1004767, 3900821], dtype="int64"),
            "c": pd.array([cat, None], dtype="UInt64"),
        }
    )
    frame.to_parquet(tmp_path / "log.parquet")
    got = read_events(tmp_path / "log.parquet", "time=t,user=u,product=p,category=c")
    assert got["product_id"].tolist() == ["1004767", "3900821"]
    assert got["category"].iloc[0] == BIG_CATEGORY and pd.isna(got["category"].iloc[1])
    assert got["session_id"].tolist() == ["541312140#1"] * 2
    assert got["ts"].tolist() == [
        _epoch("2019-10-01 00:00:00 UTC"),
        _epoch("2019-10-01 00:00:01 UTC"),
    ]
    assert got.attrs["time_unit"] == "timestamp"


def test_parquet_float_ids_that_may_have_lost_digits_are_refused(tmp_path) -> None:
    frame = pd.DataFrame(
        {"t": [1.0, 2.0, 3.0], "s": ["a", "a", "a"], "p": [1004767.0, float(2**53), 12.5]}
    )
    frame.to_parquet(tmp_path / "log.parquet")
    with pytest.raises(InputError, match=r"'p' \(product\).*2\*\*53.*rows 1, 2") as exc:
        read_events(tmp_path / "log.parquet", "time=t,session=s,product=p")
    assert exc.value.rows == (1, 2)
    frame["p"] = [1004767.0, 7.0, 8.0]  # integral floats below 2**53 are exact
    frame.to_parquet(tmp_path / "log.parquet")
    got = read_events(tmp_path / "log.parquet", "time=t,session=s,product=p")
    assert got["product_id"].tolist() == ["1004767", "7", "8"]


def test_huge_integer_ids_in_csv_stay_exact_text(tmp_path) -> None:
    huge = "123456789012345678901234567890"
    path = _write(
        tmp_path / "log.csv",
        [("1569888000", huge, "view", "00123", BIG_CATEGORY, "1")],
    )
    got = read_events(path, FULL)
    assert got["session_id"].iloc[0] == huge
    assert got["product_id"].iloc[0] == "00123"  # text as written, leading zeros kept
    assert got["category"].iloc[0] == BIG_CATEGORY
    assert float(BIG_CATEGORY) != int(BIG_CATEGORY)  # the reason it must not go through float


def test_not_a_table_is_refused(tmp_path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_events(tmp_path / "empty.csv", FULL)
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match="neither Parquet nor UTF-8"):
        read_events(tmp_path / "bin.csv", FULL)
    with pytest.raises(InputError, match="no such file"):
        read_events(tmp_path / "absent.csv", FULL)
    _write(tmp_path / "header.csv", [])
    with pytest.raises(InputError, match="header but no rows"):
        read_events(tmp_path / "header.csv", FULL)


# ---- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cells", "unit"),
    [
        (["1569888000", "1569888000.5", "1569888060"], "s"),
        (["1569888000000", "1569888000500", "1569888060000"], "ms"),
        (
            ["2019-10-01 00:00:00 utc", "2019-10-01T00:00:00.5Z", "2019-10-01T02:01:00+02:00"],
            "iso8601",
        ),
    ],
)
def test_time_encodings(tmp_path, cells, unit) -> None:
    path = _write(tmp_path / "log.csv", [(t, "s", "p") for t in cells], header=("t", "s", "p"))
    got = read_events(path, "time=t,session=s,product=p")
    assert got["ts"].tolist() == [1569888000.0, 1569888000.5, 1569888060.0]
    assert got.attrs["time_unit"] == unit


@pytest.mark.parametrize(
    ("cells", "rows", "problem"),
    [
        (
            ["2019-10-01 00:00:00", "2019-10-01 00:00:01", "yesterday", "2019-13-01"],
            (2, 3),
            "ISO-8601",
        ),
        (["2019-10-01 00:00:00", "1569888000", "2019-10-01 00:00:01", "x"], (1, 3), "ISO-8601"),
        (["1569888000", "1569888000000", "1569888001", "1569888002000"], (0, 2), "mixes"),
        (["1569888000", "-1", "1569888001", "1"], (1,), "negative"),
        (["1569888000", "1569888000000000", "1569888001", "1"], (1,), "micro"),
        (["1569888000", "", "1569888001", "1"], (1,), "empty"),
    ],
)
def test_bad_time_names_the_column_and_rows(tmp_path, cells, rows, problem) -> None:
    path = _write(tmp_path / "log.csv", [(t, "s", "p") for t in cells], header=("when", "s", "p"))
    with pytest.raises(InputError, match=problem) as exc:
        read_events(path, "time=when,session=s,product=p")
    assert exc.value.field == "when"
    assert exc.value.rows == rows
    message = str(exc.value)
    assert "'when' (time)" in message
    assert ("row " if len(rows) == 1 else "rows ") + ", ".join(map(str, rows)) in message


def test_error_messages_are_bounded(tmp_path) -> None:
    long = "x" * 10_000
    path = _write(
        tmp_path / "log.csv", [(long, "s", "p")] * 500 + [("1", "s", "p")], header=("t", "s", "p")
    )
    with pytest.raises(InputError) as exc:
        read_events(path, "time=t,session=s,product=p")
    assert len(str(exc.value)) < 600
    assert exc.value.rows == (0, 1, 2, 3, 4)
    assert "and 496 more" in str(exc.value)  # the epoch number is not ISO text either


# ---- sessions -----------------------------------------------------------------------------------


def test_user_events_split_into_sessions_at_a_30_minute_gap(tmp_path) -> None:
    t0 = 1569888000
    rows = [
        (str(t0 + 1800 + 1800 + 1), "u1", "c"),  # 30 min + 1 s after the previous: new session
        (str(t0), "u1", "a"),
        (str(t0 + 5), "u2", "x"),
        (str(t0 + 1800), "u1", "b"),  # exactly 30 minutes after the first: same session
        (str(t0 + 10_000), "u2", "y"),
    ]
    path = _write(tmp_path / "log.csv", rows, header=("t", "u", "p"))
    got = read_events(path, "time=t,user=u,product=p")
    assert got[["session_id", "product_id"]].values.tolist() == [
        ["u1#1", "a"],
        ["u1#1", "b"],
        ["u1#2", "c"],
        ["u2#1", "x"],
        ["u2#2", "y"],
    ]
    assert got["user_id"].tolist() == ["u1", "u1", "u1", "u2", "u2"]
    assert got.attrs["sessions_from"] == "user"
    # a longer gap keeps u1 in one session
    longer = read_events(path, "time=t,user=u,product=p", session_gap=3601)
    assert longer["session_id"].tolist()[:3] == ["u1#1"] * 3


def test_empty_session_ids_fall_back_to_the_user_or_are_refused(tmp_path) -> None:
    rows = [
        ("1", "s1", "u1", "a"),
        ("2", "", "u2", "b"),
        ("3", "", "u2", "c"),
        ("4", "s1", "u1", "d"),
    ]
    path = _write(tmp_path / "log.csv", rows, header=("t", "s", "u", "p"))
    got = read_events(path, "time=t,session=s,user=u,product=p")
    assert got[["session_id", "product_id"]].values.tolist() == [
        ["s1", "a"],
        ["s1", "d"],
        ["u2#1", "b"],
        ["u2#1", "c"],
    ]
    assert got.attrs["sessions_from"] == "session+user"
    with pytest.raises(InputError, match=r"'s' \(session\) is empty \(rows 1, 2") as exc:
        read_events(path, "time=t,session=s,product=p")
    assert exc.value.rows == (1, 2)


def test_equal_times_keep_file_order(tmp_path) -> None:
    rows = [("5", "s", p) for p in "dcab"] + [("1", "s", "z")]
    path = _write(tmp_path / "log.csv", rows, header=("t", "s", "p"))
    got = read_events(path, "time=t,session=s,product=p")
    assert got["product_id"].tolist() == ["z", "d", "c", "a", "b"]


# ---- optional columns, event types, price -------------------------------------------------------


def test_only_session_product_time(tmp_path) -> None:
    path = _write(
        tmp_path / "log.csv",
        [("2019-10-01T00:00:00", "s", "p1"), ("2019-10-01T00:00:02", "s", "p2")],
        header=("time", "session", "product"),
    )
    got = read_events(path, "time=time,session=session,product=product")
    assert list(got.columns) == ["session_id", "ts", "type", "product_id"]
    assert got["type"].tolist() == ["view", "view"]


def test_missing_column_lists_the_files_columns(tmp_path) -> None:
    path = _write(tmp_path / "log.csv", ROWS)
    with pytest.raises(
        InputError, match=r"no column 'price'.*columns are 't', 's', 'e', 'p', 'c', 'x'"
    ) as exc:
        read_events(path, "time=t,session=s,product=p,price=price")
    assert exc.value.field == "price"
    wide = _write(tmp_path / "wide.csv", [tuple("1" * 60)], header=[f"col{i}" for i in range(60)])
    with pytest.raises(InputError, match="and 40 more") as exc:
        read_events(wide, "time=t,session=s,product=p")
    assert len(str(exc.value)) < 600


def test_unknown_event_types_refused_or_dropped(tmp_path, caplog) -> None:
    rows = [
        ("1", "s", "view", "a"),
        ("2", "s", "click", "b"),
        ("3", "s", "", "c"),
        ("4", "s", "click", "d"),
    ]
    path = _write(tmp_path / "log.csv", rows, header=("t", "s", "e", "p"))
    columns = "time=t,session=s,type=e,product=p"
    with pytest.raises(InputError, match=r"'click' \(2 rows\), '' \(1 row\)") as exc:
        read_events(path, columns)
    assert exc.value.field == "e" and exc.value.rows == (1, 2, 3)
    with caplog.at_level(logging.WARNING, logger="reco_fast.build.events"):
        got = read_events(path, columns, unknown_types="drop")
    assert got["product_id"].tolist() == ["a"]
    assert got.attrs["dropped_unknown_types"] == {"click": 2, "": 1}
    assert "dropped 3 events" in caplog.text
    mapped = read_events(path, columns, "view=view|click", unknown_types="drop")
    assert mapped["product_id"].tolist() == ["a", "b", "d"]
    assert mapped["type"].tolist() == ["view"] * 3


def test_missing_price_is_nan_and_bad_price_is_refused(tmp_path) -> None:
    rows = [
        ("1", "s", "a", "1.5"),
        ("2", "s", "b", ""),
        ("3", "s", "c", "NaN"),
        ("4", "s", "d", "0"),
    ]
    path = _write(tmp_path / "log.csv", rows, header=("t", "s", "p", "x"))
    got = read_events(path, "time=t,session=s,product=p,price=x")
    np.testing.assert_array_equal(got["price"].to_numpy(), [1.5, np.nan, np.nan, 0.0])
    for bad, problem in (("$3", "not a number"), ("-1", "negative"), ("inf", "infinite")):
        path = _write(
            tmp_path / "bad.csv", [*rows, ("5", "s", "e", bad)], header=("t", "s", "p", "x")
        )
        with pytest.raises(InputError, match=problem) as exc:
            read_events(path, "time=t,session=s,product=p,price=x")
        assert exc.value.field == "x" and exc.value.rows == (4,)


def test_empty_product_is_refused(tmp_path) -> None:
    path = _write(tmp_path / "log.csv", [("1", "s", "a"), ("2", "s", " ")], header=("t", "s", "p"))
    with pytest.raises(InputError, match=r"'p' \(product\) is empty \(row 1;") as exc:
        read_events(path, "time=t,session=s,product=p")
    assert exc.value.rows == (1,)


# ---- the CLI's mini-languages -------------------------------------------------------------------


def test_parse_columns() -> None:
    assert parse_columns(" time = a , product=b,user=c d ") == {
        "time": "a",
        "product": "b",
        "user": "c d",
    }
    for spec, key in (
        ("time=a,product=b,color=c,session=s", "'color'"),
        ("time=a,time=b,product=c,session=s", "'time'"),
        ("time=a,product=,session=s", "'product'"),
        ("product=b,session=s", "'time'"),
        ("time=a,session=s", "'product'"),
        ("time=a,product=b", "'session' or 'user'"),
        ("time=a,product", "'product'"),
    ):
        with pytest.raises(ValueError, match=key):
            parse_columns(spec)


def test_parse_event_types() -> None:
    assert parse_event_types(None) == DEFAULT_EVENT_TYPES
    got = parse_event_types("view=detail|view, cart=add_to_cart,remove=")
    assert got == {
        "view": ("detail", "view"),
        "cart": ("add_to_cart",),
        "purchase": ("purchase",),
        "remove": (),
    }
    for spec, key in (
        ("click=x", "'click'"),
        ("view=a,view=b", "'view'"),
        ("view=a,cart=a", "'a'"),
        ("cart=view", "'view'"),  # clashes with the default of view
        ("view", "'view'"),
    ):
        with pytest.raises(ValueError, match=key):
            parse_event_types(spec)


# ---- REES46 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rees46() -> pd.DataFrame:
    if not REES46.is_file():
        require("the REES46 sample", str(REES46))
    return read_events(REES46, REES46_COLUMNS)


def test_rees46_counts(rees46) -> None:
    assert len(rees46) == 17_433
    assert rees46["session_id"].nunique() == 5_066
    assert rees46["product_id"].nunique() == 6_492
    assert rees46["category"].nunique() == 434
    assert rees46["type"].value_counts().to_dict() == {"view": 17_054, "purchase": 214, "cart": 165}
    assert rees46["price"].notna().all() and (rees46["price"] == 0).sum() > 0
    # ids are exact text: every 19-digit category id of the file is in the frame as written
    raw = pd.read_csv(REES46, dtype=str, usecols=["category_id", "product_id"])
    assert set(rees46["category"]) == set(raw["category_id"])
    assert set(rees46["product_id"]) == set(raw["product_id"])
    first = rees46.loc[rees46["product_id"] == "44600062"].iloc[0]
    assert first["ts"] == _epoch("2019-10-01 00:00:00 UTC")
    assert rees46.attrs["time_unit"] == "iso8601"


def test_rees46_sessions_from_users_only(rees46) -> None:
    got = read_events(REES46, "time=event_time,user=user_id,product=product_id")
    assert len(got) == 17_433
    assert (got["type"] == "view").all()
    # every user's consecutive events in one session are at most 30 minutes apart
    gaps = got.groupby("session_id")["ts"].diff().dropna()
    assert gaps.max() <= 1800
    assert got["session_id"].nunique() >= got["user_id"].nunique()


# ---- malformed files ----------------------------------------------------------------------------


def test_rows_with_extra_fields_are_refused(tmp_path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("t,s,p\n1,a,b\n2,a,b,c\n", encoding="utf-8")
    with pytest.raises(InputError, match="Expected 3 fields in line 3, saw 4"):
        read_events(path, "time=t,session=s,product=p")
    # one field too many on every row: pandas would shift the columns onto an index
    path.write_text("t,s,p\n1,a,b,\n2,a,c,\n", encoding="utf-8")
    with pytest.raises(InputError, match="every data row has more fields than the header"):
        read_events(path, "time=t,session=s,product=p")


@settings(max_examples=300)
@given(
    text=st.text(alphabet=st.sampled_from(list('ts,p;\t|"\n 1-:.eUTCZxé')), max_size=120),
    parquet=st.booleans(),
)
def test_any_file_reads_or_is_refused_with_an_input_error(tmp_path_factory, text, parquet) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "log.csv"
    path.write_bytes((b"PAR1" if parquet else b"") + ("t,s,p\n" + text).encode("utf-8"))
    try:
        got = read_events(path, "time=t,session=s,product=p")
    except InputError as exc:
        assert len(str(exc)) < 1000
    else:
        assert list(got.columns) == ["session_id", "ts", "type", "product_id"]
        assert np.isfinite(got["ts"]).all() and got["product_id"].map(len).min() > 0
