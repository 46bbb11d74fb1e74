"""Scoring dirty batches: ``on_invalid="nan"`` scores the valid rows, gives the invalid
ones NaN, and (``score_batch``) says what was wrong with each, by row and field."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reco_fast import InputError
from reco_fast.serve.model import BatchResult, RowError
from tests.helpers import Built

N_ROWS = 10
# row -> {field: bad value}; every other row is valid
BAD: dict[int, dict[str, Any]] = {
    0: {"scroll_depth": 1.5},
    3: {"current_price": float("nan"), "device_type": "Fax"},
    4: {"recommended_product_id": "PROD9999"},
    7: {"products_in_cart": "2"},
    9: {"current_category": None, "time_on_page_sec": 10**400},
}
FORMS = ["list of dicts", "dict of columns", "DataFrame"]


def _clean(built: Built, n: int = N_ROWS) -> list[dict[str, Any]]:
    frame = built.log.drop(columns="recommendation_clicked").iloc[:n]
    return [dict(s) for s in frame.to_dict("records")]


def _dirty(built: Built) -> list[dict[str, Any]]:
    sessions = _clean(built)
    for row, values in BAD.items():
        sessions[row].update(values)
    return sessions


def _as(form: str, sessions: list[dict[str, Any]]) -> Any:
    if form == "list of dicts":
        return sessions
    columns = {k: [s[k] for s in sessions] for k in sessions[0]}
    if form == "dict of columns":
        # object columns: a list of mixed numbers and strings stays itemwise
        return {k: np.asarray(v, dtype=object) for k, v in columns.items()}
    return pd.DataFrame(sessions)


def _valid_rows() -> list[int]:
    return [i for i in range(N_ROWS) if i not in BAD]


@pytest.mark.parametrize("form", FORMS)
def test_nan_scores_valid_rows_and_names_every_problem(built: Built, form: str) -> None:
    model = built.model
    clean = _clean(built)
    result = model.score_batch(_as(form, _dirty(built)), on_invalid="nan")
    assert isinstance(result, BatchResult)
    proba = result.probabilities
    assert isinstance(proba, np.ndarray) and proba.shape == (N_ROWS,) and proba.dtype == np.float64
    assert np.isnan(proba[list(BAD)]).all()
    valid = _valid_rows()
    # the valid rows score exactly as they do alone (one by one and as a clean batch)
    alone = model.predict_proba([clean[i] for i in valid])
    assert proba[valid].tolist() == alone.tolist()
    assert proba[valid].tolist() == [model.predict_proba(clean[i]) for i in valid]
    # every bad field of every bad row, by row
    found = {(e.row, e.field) for e in result.errors}
    assert found == {(r, f) for r, values in BAD.items() for f in values}
    assert [e.row for e in result.errors] == sorted(e.row for e in result.errors)
    assert result.invalid_rows == sorted(BAD)
    for e in result.errors:
        assert isinstance(e, RowError)
        assert repr(e.field) in e.message and e.message.endswith(f"(row {e.row})"), e.message
        assert str(e) == e.message


@pytest.mark.parametrize("form", FORMS)
def test_predict_proba_nan_returns_the_same_ndarray(built: Built, form: str) -> None:
    model = built.model
    batch = _as(form, _dirty(built))
    got = model.predict_proba(batch, on_invalid="nan")
    assert type(got) is np.ndarray
    expected = model.score_batch(batch).probabilities
    np.testing.assert_array_equal(got, expected)  # NaN where NaN


@pytest.mark.parametrize("form", FORMS)
def test_raise_is_unchanged(built: Built, form: str) -> None:
    model = built.model
    batch = _as(form, _dirty(built))
    with pytest.raises(InputError) as default:
        model.predict_proba(batch)
    with pytest.raises(InputError) as explicit:
        model.predict_proba(batch, on_invalid="raise")
    with pytest.raises(InputError) as scored:
        model.score_batch(batch, on_invalid="raise")
    assert str(default.value) == str(explicit.value) == str(scored.value)
    assert default.value.rows == explicit.value.rows == scored.value.rows
    assert default.value.field in {f for values in BAD.values() for f in values}
    clean = _as(form, _clean(built))
    np.testing.assert_array_equal(
        model.predict_proba(clean, on_invalid="raise"), model.predict_proba(clean)
    )
    result = model.score_batch(clean, on_invalid="raise")
    assert (
        result.errors == [] and result.probabilities.tolist() == model.predict_proba(clean).tolist()
    )


def test_each_reported_problem_is_what_raise_says_for_that_row(built: Built) -> None:
    """The collected errors are the ones the raising path reports, row by row."""
    model = built.model
    dirty = _dirty(built)
    result = model.score_batch(dirty)
    for row in BAD:
        with pytest.raises(InputError) as info:
            model.predict_proba([dirty[row]])
        first = next(e for e in result.errors if e.row == row and e.field == info.value.field)
        expected = re.sub(r"\(row 0\)$", f"(row {row})", str(info.value))
        assert first.message == expected


def test_single_dict(built: Built, sample_session) -> None:
    model = built.model
    p = model.predict_proba(sample_session, on_invalid="nan")
    assert p == model.predict_proba(sample_session)
    for bad in ({"scroll_depth": 2.0}, {"device_type": b"Mobile"}, {"current_category": 3}):
        assert math.isnan(model.predict_proba({**sample_session, **bad}, on_invalid="nan"))
    missing = {k: v for k, v in sample_session.items() if k != "scroll_depth"}
    assert math.isnan(model.predict_proba(missing, on_invalid="nan"))
    # score_batch takes one dict as a batch of one
    result = model.score_batch({**sample_session, "scroll_depth": 2.0})
    assert math.isnan(result.probabilities[0]) and result.errors[0].field == "scroll_depth"
    assert model.score_batch(sample_session).probabilities.tolist() == [p]


def test_rows_that_are_not_dicts_or_lack_fields(built: Built) -> None:
    model = built.model
    sessions: list[Any] = _clean(built, 5)
    sessions[1] = None
    sessions[2] = "a string"
    del sessions[3]["scroll_depth"]
    result = model.score_batch(sessions)
    assert np.isnan(result.probabilities[[1, 2, 3]]).all()
    assert not np.isnan(result.probabilities[[0, 4]]).any()
    assert [(e.row, e.field) for e in result.errors] == [(1, None), (2, None), (3, "scroll_depth")]
    assert result.errors[0].message == "row 1 is a NoneType, not a dict"
    assert result.errors[2].message == "'scroll_depth' is missing (row 3)"


def test_whole_batch_problems_still_raise(built: Built) -> None:
    model = built.model
    frame = pd.DataFrame(_clean(built)).drop(columns="scroll_depth")
    with pytest.raises(InputError, match="missing field 'scroll_depth'"):
        model.predict_proba(frame, on_invalid="nan")
    columns = {k: [s[k] for s in _clean(built)] for k in _clean(built)[0]}
    columns["scroll_depth"] = columns["scroll_depth"][:3]
    with pytest.raises(InputError, match="'scroll_depth' has 3 values"):
        model.score_batch(columns)
    with pytest.raises(TypeError):
        model.predict_proba(42, on_invalid="nan")


def test_all_invalid_and_empty(built: Built) -> None:
    model = built.model
    sessions = [{**s, "scroll_depth": -1.0} for s in _clean(built, 4)]
    result = model.score_batch(sessions)
    assert np.isnan(result.probabilities).all() and len(result.errors) == 4
    assert model.predict_proba([], on_invalid="nan").shape == (0,)
    empty = model.score_batch(built.log.iloc[:0])
    assert empty.probabilities.shape == (0,) and empty.errors == []


def test_many_bad_rows_are_all_listed(built: Built) -> None:
    """Vectorised per column: a large batch with many bad rows is scored in one pass."""
    model = built.model
    frame = built.log.drop(columns="recommendation_clicked").iloc[:20_000].copy()
    rng = np.random.default_rng(0)
    bad = np.sort(rng.choice(len(frame), size=5_000, replace=False))
    scroll = frame["scroll_depth"].to_numpy().copy()
    scroll[bad] = 1.0 + rng.random(bad.size)
    frame["scroll_depth"] = scroll
    result = model.score_batch(frame)
    assert result.invalid_rows == bad.tolist()
    assert all(e.field == "scroll_depth" for e in result.errors)
    keep = np.setdiff1d(np.arange(len(frame)), bad)
    expected = model.predict_proba(frame.iloc[keep])
    assert result.probabilities[keep].tolist() == expected.tolist()


@pytest.mark.parametrize("value", ["ignore", "NaN", None, 0, ("nan",)])
def test_bad_on_invalid_value(built: Built, sample_session, value) -> None:
    model = built.model
    calls = [
        lambda: model.predict_proba(sample_session, on_invalid=value),
        lambda: model.predict_proba([sample_session], on_invalid=value),
        lambda: model.score_batch([sample_session], on_invalid=value),
        lambda: model.predict_proba_features(built.split.X_test[:2], on_invalid=value),
    ]
    for call in calls:
        with pytest.raises(
            ValueError, match=r"^on_invalid must be one of \['raise', 'nan'\]"
        ) as info:
            call()
        assert not isinstance(info.value, InputError)


# ---- predict_proba_features ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_features_nan_rows(built: Built, dtype) -> None:
    model = built.model
    X = built.split.X_test[:8].astype(dtype)
    clean = model.predict_proba_features(X)
    dirty = X.copy()
    dirty[1, 0] = np.nan
    dirty[4, 23] = np.inf
    dirty[6, 5] = -np.inf
    if dtype == np.float64:
        dirty[7, 1] = 1e39
    bad = [1, 4, 6, 7] if dtype == np.float64 else [1, 4, 6]
    with pytest.raises(InputError):
        model.predict_proba_features(dirty)
    got = model.predict_proba_features(dirty, on_invalid="nan")
    assert np.isnan(got[bad]).all()
    keep = [i for i in range(8) if i not in bad]
    assert got[keep].tolist() == clean[keep].tolist()
    assert model.predict_proba_features(X, on_invalid="nan").tolist() == clean.tolist()
    # threads split the valid rows the same way
    assert np.array_equal(
        model.predict_proba_features(dirty, on_invalid="nan", n_threads=2), got, equal_nan=True
    )


def test_features_shape_errors_still_raise(built: Built) -> None:
    model = built.model
    with pytest.raises(InputError, match="X has 3 features"):
        model.predict_proba_features(np.zeros((2, 3)), on_invalid="nan")
    with pytest.raises(InputError, match="X must be numeric"):
        model.predict_proba_features(np.zeros((2, 24)).astype(str), on_invalid="nan")
    assert model.predict_proba_features(np.zeros((0, 24)), on_invalid="nan").shape == (0,)


def test_feature_rows_the_compiled_model_refuses_are_reported_by_feature(built: Built) -> None:
    """Session checks keep every feature finite; the feature-level check behind them
    (what the compiled model refuses) still names the feature and the row."""
    from reco_fast.features.schema import RowErrors

    model = built.model
    X = built.split.X_test[:3].copy()
    X[1, 22] = 1e39
    errors = RowErrors()
    model._feature_errors(X, errors)
    assert [(e.row, e.field, e.message) for e in errors.errors] == [
        (1, "rec_price_ratio", "'rec_price_ratio' is too large for float32 (row 1)")
    ]


def test_catalog_price_that_would_overflow_the_price_ratio(built: Built) -> None:
    """rec_price_ratio divides by as little as 0.01: a price above FLOAT32_MAX / 100
    would make the single and the batch path disagree, so the catalog refuses it."""
    catalog = built.catalog.copy()
    catalog.loc[3, "price"] = 3e38
    with pytest.raises(InputError, match=r"'price' must be at most 3.40282e\+36 \(row \d+\)"):
        built.model.with_catalog(catalog)


EXTENSION_DTYPES = {
    "Int64": ("products_in_cart", "Int64"),
    "Float64": ("scroll_depth", "Float64"),
    "category": ("device_type", "category"),
    "string": ("device_type", "string"),
}


@pytest.mark.parametrize("case", list(EXTENSION_DTYPES))
def test_dataframe_extension_dtypes(built: Built, case: str) -> None:
    """pandas' nullable and categorical columns score as their plain values; a missing
    value (pd.NA) is that row's problem only."""
    model = built.model
    field, dtype = EXTENSION_DTYPES[case]
    frame = built.log.drop(columns="recommendation_clicked").iloc[:5]
    expected = model.predict_proba(frame)
    typed = frame.astype({field: dtype})
    np.testing.assert_array_equal(model.predict_proba(typed), expected)
    np.testing.assert_array_equal(model.predict_proba(typed, on_invalid="nan"), expected)
    if dtype == "category":
        return
    holed = typed.copy()
    holed[field] = holed[field].where(holed.index != 2)  # pd.NA in row 2
    with pytest.raises(InputError) as info:
        model.predict_proba(holed)
    assert info.value.field == field and info.value.rows == (2,)
    result = model.score_batch(holed)
    assert [(e.row, e.field) for e in result.errors] == [(2, field)]
    keep = [0, 1, 3, 4]
    assert result.probabilities[keep].tolist() == expected[keep].tolist()
    assert math.isnan(result.probabilities[2])


# ---- values the batch path used to accept or crash on (found while fuzzing) ----------


def test_bytes_label_in_a_list_column(built: Built) -> None:
    """numpy turns [b"Mobile", "Desktop"] into two strings; the bytes row is refused."""
    sessions = _clean(built, 3)
    columns = {k: [s[k] for s in sessions] for k in sessions[0]}
    columns["device_type"][1] = columns["device_type"][1].encode()
    with pytest.raises(InputError, match=r"'device_type' must be a string, got bytes") as info:
        built.model.predict_proba(columns)
    assert info.value.rows == (1,)


def test_label_with_a_trailing_nul(built: Built) -> None:
    """A numpy str array drops trailing NULs: "Books\\x00" must not score as "Books"."""
    model = built.model
    sessions = _clean(built, 3)
    category = sessions[1]["current_category"]
    sessions[1]["current_category"] = category + "\x00"
    sessions[2]["recommended_product_id"] += "\x00"
    for batch in (sessions, pd.DataFrame(sessions)):
        result = model.score_batch(batch)
        assert [(e.row, e.field) for e in result.errors] == [
            (1, "current_category"),
            (2, "recommended_product_id"),
        ]
    # a previous product with a NUL is not the recommended one (as for one page view)
    one = {**_clean(built, 1)[0]}
    one["prev_product_1"] = one["recommended_product_id"] + "\x00"
    assert model.predict_proba([one])[0] == model.predict_proba(one)


def test_datetime_column_is_not_a_number(built: Built) -> None:
    frame = pd.DataFrame(_clean(built, 3))
    frame["time_on_page_sec"] = pd.to_datetime(frame["time_on_page_sec"], unit="s")
    with pytest.raises(InputError, match=r"'time_on_page_sec' must be a number, got datetime64"):
        built.model.predict_proba(frame)
    assert len(built.model.score_batch(frame).errors) == 3


def test_ragged_and_list_values(built: Built) -> None:
    """A list where a number belongs is that row's problem, whatever the other rows hold."""
    model = built.model
    sessions = _clean(built, 3)
    for s in sessions:
        s["scroll_depth"] = [0.5, 0.5]  # every row: numpy would build a second axis
    with pytest.raises(InputError, match=r"'scroll_depth' must be a number, got list") as info:
        model.predict_proba(sessions)
    assert info.value.rows == (0, 1, 2)
    columns = {k: [s[k] for s in _clean(built, 3)] for k in sessions[0]}
    columns["scroll_depth"] = [0.5, [0.5], 0.5]  # ragged: numpy cannot make an array
    with pytest.raises(InputError, match=r"'scroll_depth' must be a number, got list") as info:
        model.predict_proba(columns)
    assert info.value.rows == (1,)
    with pytest.raises(InputError, match=r"^X must be"):
        model.predict_proba_features([[0.0] * 24, [0.0] * 23])
    # an int too large for float32 is a bad value like 1e39, named by row and feature
    with pytest.raises(InputError, match=r"^X\[0, 0\] \('category_enc'\) is too large"):
        model.predict_proba_features(np.full((1, 24), 10**400, dtype=object))


def test_huge_k(built: Built, sample_session) -> None:
    for k in (10**6, 2**64, 10**400):
        recs = built.model.recommend(sample_session, k=k, threshold=0.0)
        assert len(recs) == len(built.catalog) - len(built.model.builder.viewed_ids(sample_session))
