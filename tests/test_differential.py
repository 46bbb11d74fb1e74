"""Differential test over every entry point (issue 11).

For generated valid page views, a dict, a list of dicts, a dict of columns, a
DataFrame in any column order, a feature matrix (as an array and as named
columns), ``score_batch``, ``reco-fast score`` on CSV and Parquet, ``recommend`` and
the session tracker all give scikit-learn's ``predict_proba`` for the same logical
rows to 1e-12. The reference is computed without the library: the seed notebook's
pandas feature code (tests/test_features.py) and the fitted estimator.

For generated invalid page views (one bad field in one row), every entry point
refuses, naming that field.

Numbers are spelled many ways (Python and numpy scalars, Decimal, Fraction, 0-d
arrays) and may be integers beyond float64's exact range; text may carry NUL
characters. The one rule: a number is its float64 value, except an integer float64
cannot hold, which is its float32 value rounded once (how scikit-learn rounds an integer
array); text is compared exactly. ``reco_fast.tools.spark`` is left to tests/test_spark.py
(a Spark session is slow to start).
"""

from __future__ import annotations

import contextlib
import io
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import reco_fast
from reco_fast import InputError
from reco_fast.features.schema import FLOAT32_MAX, NONE_PRODUCT, NUMERIC_FIELDS
from reco_fast.tools import cli
from tests.helpers import Built, nearest_float32
from tests.test_features import (
    NOTEBOOK_CANDIDATE_FEATURES,
    NOTEBOOK_SEED_FEATURES,
    notebook_features,
)

DIFF = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TOLERANCE = 1e-12
EXACT = 2**53
LABEL_FIELDS = ("current_category", "device_type", "traffic_source")
VIEWED = ("current_product_id", "prev_product_1", "prev_product_2", "prev_product_3")
NAMES = NOTEBOOK_SEED_FEATURES + NOTEBOOK_CANDIDATE_FEATURES
FIELDS = (*LABEL_FIELDS, *NUMERIC_FIELDS, *VIEWED, "recommended_product_id")


class Rows(list):  # type: ignore[type-arg]
    """Generated page views, shown briefly in hypothesis' reports."""

    def __repr__(self) -> str:
        return "[" + ", ".join(repr(dict(r)) for r in self) + "]"


# ---- the reference ------------------------------------------------------------------------


def as_feature(v: Any) -> float:
    """A valid raw number as the features take it (the documented rule, written apart)."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int) and float(v) != v:
        return nearest_float32(v)
    return float(v)


class Reference:
    """scikit-learn's answer for logical rows: the notebook's features and the estimator."""

    def __init__(self, built: Built) -> None:
        self.built = built
        self.estimator = built.estimator
        builder = built.model.builder
        self.required = builder.required_fields
        self.vocabulary = builder.vocabulary
        self.products = builder.catalog.product_ids.tolist()

    def matrix(self, rows: list[dict[str, Any]]) -> np.ndarray:
        plain = [
            {
                **{f: r[f] for f in self.required},
                **{f: as_feature(r[f]) for f in NUMERIC_FIELDS},
            }
            for r in rows
        ]
        frame = pd.DataFrame(plain)
        features = notebook_features(frame, self.built.catalog, fit_on=self.built.log)
        return features[NAMES].to_numpy(dtype=np.float64)

    def proba(self, rows: list[dict[str, Any]]) -> np.ndarray:
        return self.estimator.predict_proba(self.matrix(rows))[:, 1]

    def every_product(self, context: dict[str, Any]) -> dict[str, float]:
        """The probability of each catalog product recommended in this context."""
        rows = [{**context, "recommended_product_id": p} for p in self.products]
        return dict(zip(self.products, self.proba(rows).tolist(), strict=True))


@pytest.fixture(scope="module")
def ref(built: Built) -> Reference:
    return Reference(built)


@pytest.fixture(scope="module")
def model(built: Built) -> reco_fast.Model:
    return built.model


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("differential")


def close(got: Any, expected: np.ndarray) -> bool:
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    return got.shape == expected.shape and bool(np.all(np.abs(got - expected) <= TOLERANCE))


# ---- valid page views -----------------------------------------------------------------------

# per field: (values when the batch's column holds ints, values when it holds floats)
BOUNDARIES = {
    "current_price": [0.0, 0.005, 0.01, 29.99, 30.0, 100.0, 100.01],
    "time_on_page_sec": [0.0, 29.999, 30.0, 59.5, 60.0, 300.0, 301.0],
    "scroll_depth": [0.0, 0.29, 0.3, 0.59, 0.6, 1.0],
    "session_length_mins": [0.0, 9.99, 10.0],
}
HUGE_INTS = st.one_of(
    st.integers(EXACT - 2, 2**63 - 1),
    st.sampled_from([2**60 + 2**36 + 1, 2**60 + 2**36, 2**60 - 2**35 - 1, EXACT + 1]),
)


def number(field: str, kind: str) -> st.SearchStrategy[Any]:
    spec = NUMERIC_FIELDS[field]
    high = min(spec.high, 1e6)
    if kind == "int":
        small = st.integers(int(spec.low), int(min(high, 20 if spec.integer else 5000)))
        return small if spec.high <= 1 else st.one_of(small, small, HUGE_INTS)
    if spec.integer:
        return st.integers(int(spec.low), int(min(high, 20))).map(float)
    return st.one_of(
        st.sampled_from(BOUNDARIES.get(field, [0.0])),
        st.floats(spec.low, high),
        st.floats(spec.low, spec.high) if spec.high <= 1 else st.floats(1e6, FLOAT32_MAX / 100),
    )


@st.composite
def valid_rows(draw: Any, ref: Reference) -> Rows:
    voc = ref.vocabulary
    product = st.sampled_from(ref.products)
    other_id = st.one_of(
        st.just(NONE_PRODUCT),
        product,
        product.map(lambda p: p + "\x00"),  # not a catalog product: it ends with a NUL
        st.sampled_from(["ZZZ-UNKNOWN", ""]),
    )
    kinds = {f: draw(st.sampled_from(["int", "float"])) for f in NUMERIC_FIELDS}
    rows = Rows()
    for _ in range(draw(st.integers(1, 4))):
        row: dict[str, Any] = {
            "current_category": draw(st.sampled_from(voc.categories)),
            "device_type": draw(st.sampled_from(voc.devices)),
            "traffic_source": draw(st.sampled_from(voc.traffic_sources)),
            "current_product_id": draw(product),
            "prev_product_1": draw(other_id),
            "prev_product_2": draw(other_id),
            "prev_product_3": draw(other_id),
            **{f: draw(number(f, kind)) for f, kind in kinds.items()},
        }
        viewed = [row[f] for f in VIEWED if row[f] in ref.products]
        row["recommended_product_id"] = draw(st.one_of(product, st.sampled_from(viewed)))
        rows.append(row)
    return rows


def spellings(v: Any) -> list[Any]:
    """The same number as the rule reads it, spelled as other types."""
    if isinstance(v, float):
        out = [np.float64(v), np.array(v), Decimal(v), Fraction(v)]
        return out + ([np.float32(v)] if float(np.float32(v)) == v else [])
    out = [np.int64(v), np.array(v), np.uint64(v)]
    if abs(v) <= EXACT:
        out += [Decimal(v), Fraction(v), float(v)]
    if v in (0, 1):
        out += [bool(v), np.bool_(v)]
    return out


@st.composite
def spelled(draw: Any, rows: Rows) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        r = dict(r)
        for f in NUMERIC_FIELDS:
            if draw(st.booleans()):
                r[f] = draw(st.sampled_from(spellings(r[f])))
        out.append(r)
    return out


def write(frame: pd.DataFrame, work: Path, suffix: str) -> Path:
    src = work / f"in{suffix}"
    if suffix == ".csv":
        frame.to_csv(src, index=False)
    else:
        frame.to_parquet(src)
    return src


def run_score(artifact: Path, src: Path, work: Path, *extra: str):
    out = work / "out.csv"
    out.unlink(missing_ok=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(["score", str(artifact), "--input", str(src), "--output", str(out), *extra])
    proba = pd.read_csv(out)["click_probability"].to_numpy() if rc == 0 else None
    return rc, err.getvalue(), proba


def shuffled(frame: pd.DataFrame, order: list[int]) -> pd.DataFrame:
    return frame[[frame.columns[i] for i in order]]


@DIFF
@given(data=st.data())
def test_every_entry_point_gives_scikit_learns_answer(
    data: Any, model: reco_fast.Model, ref: Reference, work: Path
) -> None:
    rows = data.draw(valid_rows(ref))
    expected = ref.proba(rows)
    n = len(rows)
    event(f"{n} rows")
    spelt = data.draw(spelled(rows))
    extra = {"session_id": "s", "customer_id": "c", "recommendation_clicked": 1}

    # one page view at a time, a list of dicts, a dict of columns, score_batch
    assert close([model.predict_proba(r) for r in spelt], expected), "dict"
    assert close(model.predict_proba(spelt), expected), "list of dicts"
    columns = {k: [r[k] for r in spelt] for k in spelt[0]}
    assert close(model.predict_proba(columns), expected), "dict of columns"
    result = model.score_batch(spelt)
    assert not result.errors and close(result.probabilities, expected), "score_batch"

    # a DataFrame (typed columns, as pandas builds them) in any column order
    frame = pd.DataFrame([{**extra, **r} for r in rows])
    order = data.draw(st.permutations(range(len(frame.columns))))
    frame = shuffled(frame, order)
    assert close(model.predict_proba(frame), expected), "DataFrame"

    # the feature matrix: the reference's own, as an array and as shuffled named columns,
    # and the library's, which must be the same numbers
    X = ref.matrix(rows)
    assert close(model.predict_proba_features(X), expected), "features"
    named = pd.DataFrame(X, columns=NAMES)
    named = shuffled(named, data.draw(st.permutations(range(len(NAMES)))))
    assert close(model.predict_proba_features(named), expected), "named features"
    np.testing.assert_array_equal(model.features(spelt), X)

    # reco-fast score, CSV and Parquet
    for suffix in (".csv", ".parquet"):
        rc, err, proba = run_score(model.path, write(frame, work, suffix), work, "--quiet")
        assert rc == 0, err
        assert close(proba, expected), suffix

    # recommend: every product, as scored one by one by scikit-learn
    context = {k: v for k, v in spelt[0].items() if k != "recommended_product_id"}
    every = ref.every_product(rows[0])
    recs = model.recommend(context, k=len(every), threshold=0.0, exclude=())
    assert {r.product_id for r in recs} == set(every)
    assert max(abs(r.probability - every[r.product_id]) for r in recs) <= TOLERANCE


@DIFF
@given(data=st.data())
def test_the_tracker_gives_scikit_learns_answer(
    data: Any, model: reco_fast.Model, ref: Reference
) -> None:
    """Events with values spelled any way -> a context scored as scikit-learn scores it."""
    row = data.draw(valid_rows(ref))[0]
    spelt = data.draw(spelled(Rows([row])))[0]
    tracker = reco_fast.SessionTracker(
        model, ttl=1e9
    )  # the longest TTL a store takes (about 31 years)
    ts = 1_000_000.0
    history = [p for p in (row["prev_product_3"], row["prev_product_2"], row["prev_product_1"])]
    history = [p for p in history if p in ref.products] + [row["current_product_id"]]
    cart = data.draw(st.lists(st.sampled_from(ref.products), max_size=3))
    first = {"device_type": row["device_type"], "traffic_source": row["traffic_source"]}
    for i, product in enumerate(history):
        tracker.page_view("s", product, ts=ts + i, **(first if i == 0 else {}))
    for i, product in enumerate(cart):
        tracker.add_to_cart("s", product, ts=ts + len(history) + i)
    minutes = as_feature(row["session_length_mins"])
    last = ts + max(len(history) + len(cart), min(minutes, 1e6) * 60.0)
    context = tracker.engagement(
        "s",
        time_on_page_sec=spelt["time_on_page_sec"],
        scroll_depth=spelt["scroll_depth"],
        clicked_product_image=spelt["clicked_product_image"],
        ts=data.draw(st.sampled_from(spellings(last) if last == int(last) else [last])),
    )
    for f in ("time_on_page_sec", "scroll_depth", "clicked_product_image"):
        assert context[f] == as_feature(row[f]), f  # the rule, whatever the spelling
    logical = {**context, "recommended_product_id": row["recommended_product_id"]}
    expected = ref.proba([logical])
    assert close(model.predict_proba(logical), expected), "tracker context"
    every = ref.every_product(context)
    recs = tracker.recommend("s", k=len(every), threshold=0.0, exclude=())
    assert {r.product_id for r in recs} == set(every)
    assert max(abs(r.probability - every[r.product_id]) for r in recs) <= TOLERANCE


# ---- invalid page views ---------------------------------------------------------------------

# (value, its text in a CSV is invalid too)
BAD_NUMBERS: list[tuple[Any, bool]] = [
    (math.nan, True),
    (math.inf, True),
    (-math.inf, True),
    (-1, True),
    (-0.5, True),
    (1e39, True),
    (10**40, True),
    (2**128, True),
    ("12,5", True),
    ("abc", True),
    ("", True),
    (None, True),
    (b"1", True),
    ([1.0], True),
    (np.complex128(0.5), True),
    (0.5 + 0.5j, True),
    (np.datetime64("2024-01-01"), True),
    (np.timedelta64(22, "s"), True),
    (Decimal("NaN"), True),
    (Decimal("1e400"), True),
    ("12.5", False),  # a CSV's text is a number
]
OUT_OF_DOMAIN = {
    "scroll_depth": [(1.5, True), (2, True)],
    "clicked_product_image": [(2, True), (0.5, True), (-1, True)],
    "products_in_cart": [(1.5, True)],
    "products_viewed_count": [(2.25, True)],
}
BAD_LABELS: list[tuple[Any, bool]] = [
    ("Toys", True),
    ("", True),
    (3, True),
    (None, True),
    (b"x", True),
    (1.5, True),
    ([], True),
]
BAD_IDS: list[tuple[Any, bool]] = [(5, False), (None, False), (b"PROD0001", False), (1.0, False)]


@st.composite
def invalid_rows(draw: Any, ref: Reference, field: str) -> tuple[Rows, int, Any, bool]:
    rows = draw(valid_rows(ref))
    bad_row = draw(st.integers(0, len(rows) - 1))
    if field in NUMERIC_FIELDS:
        value, csv_invalid = draw(st.sampled_from(BAD_NUMBERS + OUT_OF_DOMAIN.get(field, [])))
    elif field in LABEL_FIELDS:
        known = list(ref.vocabulary.values(field))
        value, csv_invalid = draw(
            st.one_of(
                st.sampled_from(BAD_LABELS),
                st.sampled_from(known).map(lambda v: (v + "\x00", True)),
                st.sampled_from(known).map(lambda v: (v.lower() + "x", True)),
            )
        )
    elif field == "recommended_product_id":
        value, csv_invalid = draw(
            st.one_of(
                st.sampled_from([("PROD9999", True), (NONE_PRODUCT, True), (17, True)]),
                st.sampled_from(ref.products).map(lambda p: (p + "\x00", True)),
                st.sampled_from(BAD_IDS),
            )
        )
    else:  # current and previous products: any str is an id
        value, csv_invalid = draw(st.sampled_from(BAD_IDS))
    rows[bad_row] = {**rows[bad_row], field: value}
    return rows, bad_row, value, csv_invalid


def named_fields(message: str, required: tuple[str, ...]) -> set[str]:
    return {f for f in required if f"'{f}'" in message}


@pytest.mark.parametrize("field", FIELDS)
@settings(DIFF, max_examples=12)
@given(data=st.data())
def test_every_entry_point_refuses_naming_the_same_field(
    data: Any, field: str, model: reco_fast.Model, ref: Reference, work: Path
) -> None:
    rows, bad_row, value, csv_invalid = data.draw(invalid_rows(ref, field))
    event(f"{type(value).__name__}")
    good = [i for i in range(len(rows)) if i != bad_row]
    expected = ref.proba([rows[i] for i in good]) if good else np.empty(0)
    refused: dict[str, Any] = {}

    def refuses(name: str, call: Any) -> None:
        try:
            call()
        except InputError as exc:
            refused[name] = exc.field
        else:
            refused[name] = "accepted"

    refuses("dict", lambda: model.predict_proba(rows[bad_row]))
    refuses("list of dicts", lambda: model.predict_proba(list(rows)))
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    refuses("dict of columns", lambda: model.predict_proba(columns))
    frame = pd.DataFrame(list(rows))
    frame = shuffled(frame, data.draw(st.permutations(range(len(frame.columns)))))
    refuses("DataFrame", lambda: model.predict_proba(frame))
    if field != "recommended_product_id":
        context = {k: v for k, v in rows[bad_row].items() if k != "recommended_product_id"}
        refuses("recommend", lambda: model.recommend(context, threshold=0.0))
    # an engagement event's None means "not given" (unchanged), not a bad value
    if field in ("time_on_page_sec", "scroll_depth", "clicked_product_image") and value is not None:
        tracker = reco_fast.SessionTracker(model)
        refuses("tracker", lambda: tracker.engagement("s", **{field: value}))
    assert set(refused.values()) == {field}, refused

    # on_invalid="nan": the bad row is NaN with exactly this field named, the others exact
    for batch in (list(rows), columns, frame):
        result = model.score_batch(batch)
        bad = {bad_row}
        if batch is frame and frame[field].dtype.kind in "cmM":
            # pandas gave the whole column the bad value's type (0 became 0j): every
            # row holds a complex number or a datetime now
            bad = set(range(len(rows)))
        assert {(e.row, e.field) for e in result.errors} == {(r, field) for r in bad}
        assert np.isnan(result.probabilities[sorted(bad)]).all()
        if bad == {bad_row}:
            assert close(result.probabilities[good], expected)

    # reco-fast score: CSV always (but a CSV cell is text: "12.5" is a number there),
    # Parquet when pyarrow can store the column
    # (the file is written cell by cell: pandas would have made the column complex)
    cells = pd.DataFrame(list(rows), dtype=object)[list(frame.columns)]
    for suffix in (".csv", ".parquet"):
        if suffix == ".csv" and not csv_invalid:
            continue
        try:
            src = write(cells, work, suffix)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            event("a column Parquet cannot hold")
            continue
        if suffix == ".parquet":
            back = pd.read_parquet(src)
            bad_cell, was = back[field].iloc[bad_row], cells[field].iloc[bad_row]
            if not stored(back, cells, good) or type(bad_cell) is not type(was):
                # e.g. str and bytes: all bytes; a complex 0.5+0j stored as the double 0.5
                event("a column Parquet converts")
                continue
        rc, err, _ = run_score(model.path, src, work, "--quiet")
        assert rc == 2 and named_fields(err, ref.required) == {field}, (suffix, err)
        rc, err, proba = run_score(model.path, src, work, "--quiet", "--on-invalid", "nan")
        assert rc == 0, err
        assert math.isnan(proba[bad_row]) and close(proba[good], expected), suffix


def stored(read: pd.DataFrame, frame: pd.DataFrame, good: list[int]) -> bool:
    """Whether a file holds the valid rows' values as the frame does."""
    a = read.iloc[good][list(frame.columns)].astype(object).to_numpy()
    b = frame.iloc[good].astype(object).to_numpy()
    return bool(np.all(a == b))
