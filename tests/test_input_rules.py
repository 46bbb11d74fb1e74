"""One rule per value, whatever the entry point (issue 11, items 1, 2 and 7).

1. Named feature columns are matched by name, never by position.
2. Integers reach the trees rounded to float32 once, as scikit-learn rounds an integer
   array (never int -> float64 -> float32, which rounds twice).
7. A value means the same in a dict, a list of dicts, a dict of columns, a DataFrame,
   ``reco-fast score``, ``recommend`` and the tracker: NUL characters, complex numbers,
   durations, Decimal / Fraction / 0-d arrays, numpy scalars in events, numpy thresholds;
   and a bad argument is a ValueError naming it.
"""

from __future__ import annotations

import contextlib
import io
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.ensemble import GradientBoostingClassifier

import reco_fast
from reco_fast import InputError
from reco_fast.artifact import CATALOG_FILE
from reco_fast.compiler.driver import compile_model
from reco_fast.errors import ArtifactError
from reco_fast.features.schema import LABEL
from reco_fast.serve.model import write_catalog
from reco_fast.tools import cli
from tests.helpers import Built, nearest_float32

TOLERANCE = 1e-12
LOW = 2.0**60  # two neighbouring float32 values ...
HIGH = float(np.nextafter(np.float32(LOW), np.float32(np.inf)))  # ... 2**37 apart
X_INT = 2**60 + 2**36 + 1  # just above their midpoint: float32(X_INT) == HIGH, but
# float64(X_INT) == 2**60 + 2**36 exactly, a tie that float32 rounds to LOW
T = 5  # time_on_page_sec's column in the ranking features


def _fit_neighbours(X: np.ndarray, column: int) -> GradientBoostingClassifier:
    """A classifier whose only split is on ``column``, between LOW (no click) and HIGH."""
    X = np.repeat(X, 20, axis=0)
    X[:10, column], X[10:, column] = LOW, HIGH
    y = np.r_[np.zeros(10), np.ones(10)]
    return GradientBoostingClassifier(n_estimators=3, max_depth=1, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, reco_fast.Model]:
    """A 3-feature model (a, b, c) that splits on ``a`` between LOW and HIGH."""
    est = _fit_neighbours(np.zeros((1, 3)), 0)
    model = compile_model(est, tmp_path_factory.mktemp("neighbours") / "m", ["a", "b", "c"])
    return est, model


@pytest.fixture(scope="module")
def session_neighbours(
    built: Built, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, reco_fast.Model]:
    """A page-view model (the built model's features, vocabulary and catalog) that
    splits on time_on_page_sec between LOW and HIGH."""
    builder = built.model.builder
    est = _fit_neighbours(built.X[:1].copy(), T)

    def write_extra(staging: Path, staged: Any) -> None:
        write_catalog(builder.catalog, staging / CATALOG_FILE)

    model = compile_model(
        est,
        tmp_path_factory.mktemp("session_neighbours") / "m",
        builder.feature_names,
        metadata={
            "feature_set": builder.feature_set,
            "vocabulary": builder.vocabulary.to_json(),
            "catalog": CATALOG_FILE,
        },
        feature_set=builder.feature_set,
        write_extra=write_extra,
        builder=builder,
        sessions=built.log.iloc[built.split.idx_test[:64]].to_dict("records"),
    )
    return est, model


def _sklearn_int(est: Any, n_features: int, column: int, value: int) -> float:
    """scikit-learn's answer for an integer feature given as an int64 array."""
    X = np.zeros((1, n_features), dtype=np.int64)
    X[0, column] = value
    return float(est.predict_proba(X)[0, 1])


def _run_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(["score", *args, "--quiet"])
    return rc, err.getvalue()


def _score_file(artifact: Path, frame: pd.DataFrame, tmp: Path, suffix: str) -> np.ndarray:
    """``reco-fast score`` (in process) on ``frame`` written as CSV or Parquet."""
    tmp.mkdir(parents=True, exist_ok=True)
    src, out = tmp / f"in{suffix}", tmp / "out.csv"
    if suffix == ".parquet":
        frame.to_parquet(src)
    else:
        frame.to_csv(src, index=False)
    rc, err = _run_cli(str(artifact), "--input", str(src), "--output", str(out))
    assert rc == 0, err
    return pd.read_csv(out)["click_probability"].to_numpy()


def _session(built: Built, i: int = 0) -> dict[str, Any]:
    row = built.log.drop(columns=LABEL).iloc[i]
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


# ---- 1. named feature columns -----------------------------------------------------------


def test_dataframe_of_features_is_read_by_name(built: Built) -> None:
    model = built.model
    X = built.split.X_test[:200]
    expected = built.estimator.predict_proba(X)[:, 1]
    frame = pd.DataFrame(X, columns=list(model.feature_names))
    shuffled = frame[list(np.random.default_rng(0).permutation(frame.columns))]
    assert list(shuffled.columns) != list(model.feature_names)
    for named in (
        shuffled,
        shuffled.to_dict("list"),  # a dict of columns
        {c: shuffled[c].to_numpy() for c in shuffled.columns},
        pa.Table.from_pandas(shuffled, preserve_index=False),
        shuffled.to_records(index=False),  # a numpy structured array
    ):
        got = model.predict_proba_features(named)
        assert np.max(np.abs(got - expected)) <= TOLERANCE, type(named)
    # unnamed columns (0, 1, 2, ...) are positional, as in scikit-learn
    got = model.predict_proba_features(pd.DataFrame(X))
    assert np.max(np.abs(got - expected)) <= TOLERANCE


def test_reordered_columns_of_a_small_named_model(neighbours) -> None:
    est, model = neighbours
    frame = pd.DataFrame({"a": [HIGH, LOW], "b": [0.0, 0.0], "c": [LOW, HIGH]})
    expected = est.predict_proba(frame[["a", "b", "c"]].to_numpy())[:, 1]
    assert abs(expected[0] - expected[1]) > 0.2  # by position, c would be read as a
    got = model.predict_proba_features(frame[["c", "a", "b"]])
    assert np.max(np.abs(got - expected)) <= TOLERANCE


@pytest.mark.parametrize(
    ("columns", "fragments"),
    [
        (["a", "b"], ["missing ['c']"]),
        (["a", "b", "c", "d"], ["unknown ['d']"]),
        (["a", "b", "x"], ["missing ['c']", "unknown ['x']"]),
        (["a", "b", "c", "a"], ["duplicated ['a']"]),
        (["a", "b", "c", *[f"extra{i}" for i in range(1000)]], ["and 995 more"]),
        (["a", "b", "c" * 10_000], ["missing ['c']", "unknown ['ccccc"]),
    ],
)
def test_unknown_or_missing_feature_names_are_refused(neighbours, columns, fragments) -> None:
    _, model = neighbours
    frame = pd.DataFrame(np.zeros((2, len(columns))), columns=columns)
    with pytest.raises(InputError) as info:
        model.predict_proba_features(frame)
    message = str(info.value)
    assert info.value.field == "X"
    assert all(f in message for f in fragments), message
    assert len(message) < 600, message  # bounded, whatever the input


def test_mixed_column_name_types_are_refused(neighbours) -> None:
    _, model = neighbours
    with pytest.raises(InputError, match="column names must all be strings"):
        model.predict_proba_features(pd.DataFrame([[0.0, 0.0, 0.0]], columns=["a", "b", 2]))


# ---- 2. integers rounded once ------------------------------------------------------------


def _feature_forms(value: int) -> dict[str, Any]:
    row = [value, 0, 0]
    return {
        "int64 array": np.array([row], dtype=np.int64),
        "uint64 array": np.array([row], dtype=np.uint64),
        "Fortran int64": np.asfortranarray(np.array([row, row], dtype=np.int64)),
        "list of ints": [row],
        "list of ints and floats": [[value, 0.5, 0.0]],
        "object array": np.array([row], dtype=object),
        "int DataFrame": pd.DataFrame([row], columns=["a", "b", "c"]),
        "mixed DataFrame": pd.DataFrame({"c": [0.5], "a": [value], "b": [0.0]}),
        "dict of columns": {"a": [value], "b": [0.5], "c": [0]},
        "dict of lists of ints and floats": {"a": [value, HIGH], "b": [0.5, 0], "c": [0, 0.0]},
        "pyarrow table": pa.table({"b": [0.5], "a": [value], "c": [0]}),
    }


@pytest.mark.parametrize("form", list(_feature_forms(0)))
def test_integer_features_are_rounded_once(neighbours, form) -> None:
    est, model = neighbours
    expected = _sklearn_int(est, 3, 0, X_INT)
    twice = float(est.predict_proba(np.array([[float(X_INT), 0.0, 0.0]]))[0, 1])
    assert expected > 0.6 and twice < 0.4  # the model tells the two roundings apart
    X = _feature_forms(X_INT)[form]
    got = model.predict_proba_features(X)
    assert np.max(np.abs(got - expected)) <= TOLERANCE
    assert model.predict_proba_features(X, on_invalid="nan")[0] == got[0]


def test_integer_features_rounded_once_with_threads(neighbours) -> None:
    est, model = neighbours
    X = np.zeros((20_000, 3), dtype=np.int64)
    X[:, 0] = X_INT
    X[::2, 0] = 2**60 - 2**36  # below the midpoint
    expected = est.predict_proba(X)[:, 1]
    assert np.max(np.abs(model.predict_proba_features(X, n_threads=2) - expected)) <= TOLERANCE


def test_every_integer_dtype_as_scikit_learn(built: Built, neighbours) -> None:
    """Each integer dtype (and bool) scores as scikit-learn scores the same array; the
    64-bit ones also hold values float64 cannot, where rounding twice would show."""
    rng = np.random.default_rng(1)
    dtypes = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
    for dtype in [*dtypes, np.bool_]:
        high = 1 if dtype is np.bool_ else min(int(np.iinfo(dtype).max), 2**62)
        X = rng.integers(0, high, size=(300, built.model.n_features), endpoint=True)
        X = X.astype(dtype)
        expected = built.estimator.predict_proba(X)[:, 1]
        got = built.model.predict_proba_features(X)
        assert np.max(np.abs(got - expected)) <= TOLERANCE, dtype
    est, model = neighbours
    for dtype in (np.int64, np.uint64):
        X = np.array([[X_INT, 0, 0], [2**60 + 2**36 - 1, 0, 0]], dtype=dtype)
        expected = est.predict_proba(X)[:, 1]
        assert expected[0] - expected[1] > 0.2
        assert np.max(np.abs(model.predict_proba_features(X) - expected)) <= TOLERANCE, dtype


@pytest.mark.parametrize(
    "n",
    [
        X_INT,
        -X_INT,
        2**53 + 1,
        2**63 - 1,
        2**64 - 1,
        2**64 + 2**40 + 1,  # beyond uint64: no numpy integer holds it
        3 * 2**100 + 2**76 + 1,
        int(np.finfo(np.float32).max) + 2**102,  # rounds down to the largest float32
    ],
)
def test_python_ints_of_any_size_are_rounded_once(n: int) -> None:
    from reco_fast.features.schema import as_number, float32_of_int

    assert float32_of_int(n) == nearest_float32(n)
    # as a number: itself when float64 holds it exactly, else its float32, rounded once
    assert as_number(n) == (float(n) if float(n) == n else nearest_float32(n))
    if -(2**63) <= n < 2**64:
        dtype = np.int64 if n < 2**63 else np.uint64
        assert float32_of_int(n) == float(np.array(n, dtype=dtype).astype(np.float32))


def test_a_python_int_beyond_uint64_reaches_the_trees_rounded_once(
    built: Built, sample_session
) -> None:
    n = 2**64 + 2**40 + 1  # float64 holds 2**64 + 2**40, a float32 tie that rounds down
    session = {**sample_session, "time_on_page_sec": n}
    model = built.model
    for X in (model.features(session), model.features([session]), model.features(session | {})):
        assert X[0, T] == nearest_float32(n) == 2**64 + 2**41
    for n in (2**128, -(2**200), 10**400):  # and beyond float32, too large as before
        with pytest.raises(InputError, match="'time_on_page_sec' is too large for float32"):
            model.predict_proba({**sample_session, "time_on_page_sec": n})


def _int_session_forms(session: dict[str, Any], value: int) -> dict[str, Any]:
    s = {**session, "time_on_page_sec": value}
    frame = pd.DataFrame([s])
    return {
        "dict": s,
        "dict np.int64": {**s, "time_on_page_sec": np.int64(value)},
        "dict np.uint64": {**s, "time_on_page_sec": np.uint64(value)},
        "dict 0-d array": {**s, "time_on_page_sec": np.array(value)},
        "list of dicts": [s, s],
        "dict of columns": {k: [v, v] for k, v in s.items()},
        "dict of int64 columns": {k: np.array([v]) for k, v in s.items()},
        "DataFrame, columns reversed": frame[frame.columns[::-1]],
    }


@pytest.mark.parametrize("form", list(_int_session_forms({}, 0)))
def test_integer_session_fields_are_rounded_once(built: Built, session_neighbours, form) -> None:
    est, model = session_neighbours
    expected = _sklearn_int(est, model.n_features, T, X_INT)
    sessions = _int_session_forms(_session(built), X_INT)[form]
    got = np.atleast_1d(model.predict_proba(sessions))
    assert np.max(np.abs(got - expected)) <= TOLERANCE
    if form != "dict":
        got = model.score_batch(sessions).probabilities
        assert np.max(np.abs(got - expected)) <= TOLERANCE


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_integer_session_fields_are_rounded_once_in_score(
    built: Built, session_neighbours, tmp_path, suffix
) -> None:
    est, model = session_neighbours
    expected = _sklearn_int(est, model.n_features, T, X_INT)
    s = _session(built)
    frame = pd.DataFrame([{**s, "time_on_page_sec": X_INT}, {**s, "time_on_page_sec": 75}])
    got = _score_file(model.path, frame, tmp_path, suffix)
    assert abs(got[0] - expected) <= TOLERANCE
    if suffix == ".csv":  # an int column with a float in it: pandas reads float64
        frame["time_on_page_sec"] = pd.Series([X_INT, 75.5], dtype=object)
        got = _score_file(model.path, frame, tmp_path, suffix)
        assert abs(got[0] - expected) <= TOLERANCE


def test_nullable_integer_columns_keep_their_ints(
    built: Built, neighbours, session_neighbours, tmp_path
) -> None:
    """A missing value makes pandas' nullable ints (and Parquet's int columns) float64
    by default, rounding the others; the missing row is refused, the others exact."""
    a = pd.array([X_INT, None], dtype="Int64")
    est, model = neighbours
    expected = _sklearn_int(est, 3, 0, X_INT)
    for X in (
        pd.DataFrame({"a": a, "b": 0.0, "c": 0}),
        pa.table({"a": pa.array([X_INT, None], pa.int64()), "b": [0.0, 0.0], "c": [0, 0]}),
    ):
        got = model.predict_proba_features(X, on_invalid="nan")
        assert abs(got[0] - expected) <= TOLERANCE and np.isnan(got[1])

    est, model = session_neighbours
    expected = _sklearn_int(est, model.n_features, T, X_INT)
    frame = pd.DataFrame([_session(built, 0), _session(built, 1)])
    frame["time_on_page_sec"] = a
    result = model.score_batch(frame)
    assert [(e.row, e.field) for e in result.errors] == [(1, "time_on_page_sec")]
    assert abs(result.probabilities[0] - expected) <= TOLERANCE
    src, out = tmp_path / "in.parquet", tmp_path / "out.csv"
    frame.to_parquet(src)
    rc, err = _run_cli(
        str(model.path), "--input", str(src), "--output", str(out), "--on-invalid", "nan"
    )
    assert rc == 0, err
    got = pd.read_csv(out)["click_probability"].to_numpy()
    assert abs(got[0] - expected) <= TOLERANCE and np.isnan(got[1])


def test_integer_session_fields_are_rounded_once_in_recommend_and_tracker(
    built: Built, session_neighbours
) -> None:
    est, model = session_neighbours
    expected = _sklearn_int(est, model.n_features, T, X_INT)
    context = {k: v for k, v in _session(built).items() if k != "recommended_product_id"}
    context["time_on_page_sec"] = X_INT
    recs = model.recommend(context, k=10**6, threshold=0.0, exclude=())
    assert len(recs) == len(built.catalog)
    assert max(abs(r.probability - expected) for r in recs) <= TOLERANCE

    tracker = reco_fast.SessionTracker(model)
    products = model.builder.product_id_list
    voc = model.builder.vocabulary
    tracker.page_view(
        "s", products[0], device_type=voc.devices[0], traffic_source=voc.traffic_sources[0], ts=10
    )
    ctx = tracker.engagement("s", time_on_page_sec=X_INT, ts=11)
    assert ctx["time_on_page_sec"] == HIGH
    assert abs(model.predict_proba({**ctx, "recommended_product_id": products[1]}) - expected) <= (
        TOLERANCE
    )
    assert max(abs(r.probability - expected) for r in tracker.recommend("s", threshold=0.0)) <= (
        TOLERANCE
    )


# ---- 7. one rule per value ---------------------------------------------------------------


def _forms(rows: list[dict[str, Any]]) -> dict[str, Any]:
    frame = pd.DataFrame(rows)
    return {
        "list of dicts": rows,
        "dict of columns": {k: [r[k] for r in rows] for k in rows[0]},
        "DataFrame": frame[frame.columns[::-1]],
    }


def _refusals(model: reco_fast.Model, rows: list[dict[str, Any]], tmp: Path) -> dict[str, str]:
    """The field each entry point names when it refuses these rows (the last one is bad)."""
    fields = {}
    with pytest.raises(InputError) as info:
        model.predict_proba(rows[-1])
    fields["dict"] = info.value.field
    for form, batch in _forms(rows).items():
        with pytest.raises(InputError) as info:
            model.predict_proba(batch)
        fields[form] = info.value.field
        errors = model.score_batch(batch).errors
        fields[form + ", score_batch"] = errors[0].field if errors else None
    for suffix in (".csv", ".parquet"):
        src, out = tmp / f"in{suffix}", tmp / "out.csv"
        frame = pd.DataFrame(rows)
        if suffix == ".csv":
            frame.to_csv(src, index=False)
        else:
            try:
                frame.to_parquet(src)
            except pa.ArrowException:  # Parquet has no complex numbers
                continue
        rc, err = _run_cli(str(model.path), "--input", str(src), "--output", str(out))
        named = [f for f in model.builder.required_fields if f"'{f}'" in err]
        fields["score " + suffix] = named[0] if rc == 2 and len(named) == 1 else err
    return fields


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("current_category", "Electronics\x00"),
        ("device_type", "Mobile\x00"),
        ("recommended_product_id", "PROD0004\x00"),
    ],
)
def test_nul_terminated_text_is_the_same_unknown_value_everywhere(
    built: Built, tmp_path, field, value
) -> None:
    known = value.rstrip("\x00")
    assert known in built.log[field].tolist()
    rows = [_session(built, 0), {**_session(built, 1), field: value}]
    assert set(_refusals(built.model, rows, tmp_path).values()) == {field}


def test_nul_terminated_viewed_product_is_another_product_everywhere(
    built: Built, tmp_path
) -> None:
    model = built.model
    s = _session(built)
    rec = s["recommended_product_id"]
    nul = {**s, "prev_product_1": rec + "\x00"}
    other = {**s, "prev_product_1": "SOMETHING-ELSE"}
    assert model.predict_proba({**s, "prev_product_1": rec}) != model.predict_proba(other)
    expected = model.predict_proba(other)
    rows = [nul, other]
    assert model.predict_proba(nul) == expected
    for form, batch in _forms(rows).items():
        assert model.predict_proba(batch).tolist() == [expected, expected], form
    for suffix in (".csv", ".parquet"):
        got = _score_file(model.path, pd.DataFrame(rows), tmp_path, suffix)
        assert got.tolist() == [expected, expected], suffix


@pytest.mark.parametrize(
    "value", [np.complex128(0.5), np.complex128(0.5 + 0.25j), np.complex64(0.5), np.array(0.5j)]
)
def test_complex_numbers_are_refused_everywhere(built: Built, tmp_path, value) -> None:
    rows = [_session(built, 0), {**_session(built, 1), "scroll_depth": value}]
    assert set(_refusals(built.model, rows, tmp_path).values()) == {"scroll_depth"}
    context = {k: v for k, v in rows[1].items() if k != "recommended_product_id"}
    with pytest.raises(InputError) as info:
        built.model.recommend(context)
    assert info.value.field == "scroll_depth"
    tracker = reco_fast.SessionTracker(built.model)
    with pytest.raises(InputError) as info:
        tracker.engagement("s", scroll_depth=value)
    assert info.value.field == "scroll_depth"


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("time_on_page_sec", pd.to_timedelta([22, 30], unit="s")),
        ("session_length_mins", pd.to_datetime(["2024-01-01", "2024-01-02"])),
    ],
)
def test_durations_and_datetimes_are_refused_by_score_as_by_the_api(
    built: Built, tmp_path, field, values
) -> None:
    frame = pd.DataFrame([_session(built, 0), _session(built, 1)])
    frame[field] = values
    with pytest.raises(InputError) as info:
        built.model.predict_proba(frame)
    assert info.value.field == field
    src, out = tmp_path / "in.parquet", tmp_path / "out.csv"
    frame.to_parquet(src)
    rc, err = _run_cli(str(built.path), "--input", str(src), "--output", str(out))
    assert rc == 2 and f"'{field}' must be a number" in err, err
    assert not out.exists()


def _spellings(value: float) -> list[Any]:
    """The same real number as Decimal, Fraction, a 0-d array and numpy scalars."""
    out: list[Any] = [Decimal(value), Fraction(value), np.array(value), np.float64(value)]
    if float(np.float32(value)) == value:
        out += [np.float32(value), np.array(value, dtype=np.float32)]
    if value == int(value):
        out += [int(value), np.int64(value), np.uint8(value), Decimal(int(value))]
    return out


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scroll_depth", 0.625),
        ("scroll_depth", 0.1),
        ("time_on_page_sec", 60.0),
        ("time_on_page_sec", 75.3),
        ("current_price", 29.99),
        ("products_in_cart", 2.0),
        ("clicked_product_image", 1.0),
    ],
)
def test_decimal_fraction_and_0d_arrays_are_numbers_everywhere(built: Built, field, value) -> None:
    model = built.model
    s = _session(built)
    plain = {**s, field: value}
    expected = model.predict_proba(plain)
    context = {k: v for k, v in plain.items() if k != "recommended_product_id"}
    expected_recs = model.recommend(context, k=5, threshold=0.0)
    for spelled in _spellings(value):
        row = {**s, field: spelled}
        assert model.predict_proba(row) == expected, repr(spelled)
        for form, batch in _forms([row, plain]).items():
            if form == "DataFrame":
                batch = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in batch.items()})
            assert model.predict_proba(batch).tolist() == [expected, expected], (form, spelled)
        assert model.recommend({**context, field: spelled}, k=5, threshold=0.0) == expected_recs
        # the engagement path of recommend computes in float64, as the C kernel does
        assert model.builder.session_row(row) == model.features(plain)[0, :19].tolist()


def test_tracker_takes_numpy_scalars_like_python_numbers(built: Built) -> None:
    model = built.model
    voc = model.builder.vocabulary
    products = model.builder.product_id_list
    contexts = []
    for t, sc, img, ts in [
        (75.5, 0.5, True, 11),
        (np.float32(75.5), np.float32(0.5), np.bool_(True), np.int64(11)),
        (np.float64(75.5), Fraction(1, 2), np.int64(1), np.float32(11)),
        (Decimal("75.5"), np.array(0.5), np.uint8(1), Decimal(11)),
    ]:
        tracker = reco_fast.SessionTracker(model)
        tracker.page_view(
            "s",
            products[0],
            device_type=voc.devices[0],
            traffic_source=voc.traffic_sources[0],
            ts=5,
        )
        tracker.page_view("s", products[1], ts=10)
        contexts.append(
            tracker.engagement(
                "s", time_on_page_sec=t, scroll_depth=sc, clicked_product_image=img, ts=ts
            )
        )
    assert all(c == contexts[0] for c in contexts)
    assert all(type(v) in (str, int, float, list) for v in contexts[1].values())


@pytest.mark.parametrize(
    ("threshold", "same_as"),
    [
        (np.int64(0), 0.0),
        (np.uint8(1), 1.0),
        (Fraction(1, 2), 0.5),
        (Decimal("0.5"), 0.5),
        (np.array(0.5), 0.5),
    ],
)
def test_threshold_takes_any_real_number(built: Built, sample_session, threshold, same_as) -> None:
    model = built.model
    context = {k: v for k, v in sample_session.items() if k != "recommended_product_id"}
    expected = model.recommend(context, k=20, threshold=same_as)
    assert model.recommend(context, k=20, threshold=threshold) == expected
    # and still nothing that is not a probability
    for bad in (True, np.bool_(False), np.int64(2), "0.5", [0.5], np.array([0.5]), 1 + 0j):
        with pytest.raises(ValueError, match="threshold must be a number in"):
            model.recommend(context, threshold=bad)


@pytest.mark.parametrize("backend", ["gpu", "", "FLAT", 3, ["flat"]])
def test_load_with_an_unknown_backend_is_a_value_error_naming_it(built: Built, backend) -> None:
    with pytest.raises(ValueError) as info:
        reco_fast.load(built.path, backend=backend)
    assert not isinstance(info.value, ArtifactError)
    message = str(info.value)
    assert message.startswith("backend must be None or one of ['flat'"), message
    assert repr(backend)[:20] in message
