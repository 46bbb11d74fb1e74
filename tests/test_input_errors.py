"""Every invalid input is an InputError (a ValueError) naming the field and, in a
batch, the row; the model keeps serving afterwards."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reco_fast import InputError
from tests.helpers import Built

BAD_ROW = 2
N_ROWS = 4

# (case id, field, bad value, what the message must say)
CASES: list[tuple[str, str, Any, str]] = [
    ("nan price", "current_price", float("nan"), "is NaN"),
    ("nan scroll", "scroll_depth", float("nan"), "is NaN"),
    ("inf time", "time_on_page_sec", float("inf"), "is infinite"),
    ("-inf minutes", "session_length_mins", float("-inf"), "is infinite"),
    ("1e39 price", "current_price", 1e39, "is too large for float32"),
    ("1e39 time", "time_on_page_sec", 1e39, "is too large for float32"),
    ("huge int count", "products_viewed_count", 10**400, "is too large for float32"),
    ("negative price", "current_price", -0.01, "must be >= 0"),
    ("negative cart", "products_in_cart", -1, "must be >= 0"),
    ("negative viewed", "products_viewed_count", -2, "must be >= 0"),
    ("negative time", "time_on_page_sec", -5.0, "must be >= 0"),
    ("negative minutes", "session_length_mins", -0.5, "must be >= 0"),
    ("scroll above 1", "scroll_depth", 1.5, "must be <= 1"),
    ("scroll below 0", "scroll_depth", -0.1, "must be >= 0"),
    ("image 2", "clicked_product_image", 2, "must be <= 1"),
    ("fractional cart", "products_in_cart", 1.5, "must be an integer"),
    ("fractional viewed", "products_viewed_count", 2.25, "must be an integer"),
    ("fractional image", "clicked_product_image", 0.5, "must be an integer"),
    ("unknown category", "current_category", "Toys", "has unknown value 'Toys'"),
    ("unknown device", "device_type", "Fax", "has unknown value 'Fax'"),
    ("unknown traffic", "traffic_source", "Carrier pigeon", "has unknown value 'Carrier pigeon'"),
    ("wrong case device", "device_type", "mobile", "has unknown value 'mobile'"),
    ("unknown product", "recommended_product_id", "PROD9999", "'PROD9999' is not in the catalog"),
    ("NONE recommended", "recommended_product_id", "NONE", "'NONE' is not in the catalog"),
    ("string price", "current_price", "12.50", "must be a number, got str"),
    ("string count", "products_in_cart", "2", "must be a number, got str"),
    ("None scroll", "scroll_depth", None, "must be a number, got NoneType"),
    ("number category", "current_category", 3, "must be a string, got int"),
    ("number device", "device_type", 1.0, "must be a string, got float"),
    ("number product", "recommended_product_id", 17, "must be a string, got int"),
    ("number prev product", "prev_product_1", 5, "must be a string, got int"),
    ("None traffic", "traffic_source", None, "must be a string, got NoneType"),
]
CASE_IDS = [c[0] for c in CASES]

# Where a batch form legitimately words the problem differently. (A number in a list
# of labels is named as such in every form: numpy's ["Books", "3"] is not used.)
BATCH_FRAGMENT: dict[tuple[str, str], str] = {
    # pandas stores a missing value as NaN
    ("DataFrame", "None scroll"): "is NaN",
    ("DataFrame", "None traffic"): "must be a string, got float nan",
}


def _sessions(built: Built) -> list[dict[str, Any]]:
    return [
        dict(s)
        for s in built.log.drop(columns="recommendation_clicked").iloc[:N_ROWS].to_dict("records")
    ]


def _check(exc: InputError, field: str, fragment: str, row: int | None) -> None:
    message = str(exc)
    assert isinstance(exc, ValueError)
    assert exc.field == field
    assert repr(field) in message
    assert fragment in message, message
    assert "np.str_" not in message and "np.float64" not in message, message
    if row is None:
        assert exc.rows == ()
        assert "row" not in message
    else:
        assert exc.rows == (row,)
        assert re.search(rf"\(row {row}\)$", message), message


@pytest.mark.parametrize(("case", "field", "value", "fragment"), CASES, ids=CASE_IDS)
def test_single_session(built: Built, sample_session, case, field, value, fragment) -> None:
    model = built.model
    with pytest.raises(InputError) as info:
        model.predict_proba({**sample_session, field: value})
    _check(info.value, field, fragment, row=None)
    # still serving, and the same answer as before
    assert model.predict_proba(sample_session) == model.predict_proba([sample_session])[0]


@pytest.mark.parametrize(("case", "field", "value", "fragment"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("form", ["list of dicts", "dict of columns", "DataFrame"])
def test_batch(built: Built, form, case, field, value, fragment) -> None:
    sessions = _sessions(built)
    sessions[BAD_ROW][field] = value
    if form == "list of dicts":
        batch: Any = sessions
    elif form == "dict of columns":
        batch = {k: [s[k] for s in sessions] for k in sessions[0]}
    else:
        batch = pd.DataFrame(sessions)
    fragment = BATCH_FRAGMENT.get((form, case), fragment)
    with pytest.raises(InputError) as info:
        built.model.predict_proba(batch)
    _check(info.value, field, fragment, row=BAD_ROW)


def test_batch_with_bad_value_in_first_row_and_many_rows(built: Built) -> None:
    sessions = [dict(s) for s in _sessions(built) * 3]  # 12 independent rows
    for i in (0, 3, 4, 6, 7, 9, 11):
        sessions[i]["scroll_depth"] = 1.01
    with pytest.raises(InputError) as info:
        built.model.predict_proba(sessions)
    assert info.value.rows == (0, 3, 4, 6, 7)
    assert str(info.value).endswith("(rows 0, 3, 4, 6, 7 and 2 more)")


@pytest.mark.parametrize("field", ["scroll_depth", "recommended_product_id", "device_type"])
def test_missing_field(built: Built, sample_session, field) -> None:
    model = built.model
    single = {k: v for k, v in sample_session.items() if k != field}
    with pytest.raises(InputError, match=rf"^missing field '{field}'$") as info:
        model.predict_proba(single)
    assert info.value.field == field

    sessions = _sessions(built)
    del sessions[BAD_ROW][field]
    with pytest.raises(InputError, match=rf"^missing field '{field}' \(row {BAD_ROW}\)$") as info:
        model.predict_proba(sessions)
    assert info.value.field == field and info.value.rows == (BAD_ROW,)

    frame = pd.DataFrame(_sessions(built)).drop(columns=field)
    for batch in (frame, {k: frame[k].tolist() for k in frame.columns}):
        with pytest.raises(InputError, match=rf"^missing field '{field}'$") as info:
            model.predict_proba(batch)
        assert info.value.field == field


def test_numpy_scalars_accepted_in_every_form(built: Built, sample_session) -> None:
    """np.int64 / np.float32 values score the same one at a time and in a list."""
    typed = {
        **sample_session,
        "products_in_cart": np.int64(sample_session["products_in_cart"]),
        "products_viewed_count": np.int32(sample_session["products_viewed_count"]),
        "time_on_page_sec": np.float32(sample_session["time_on_page_sec"]),
    }
    model = built.model
    single = model.predict_proba(typed)
    assert model.predict_proba([typed, sample_session])[0] == single
    assert model.predict_proba([typed])[0] == single


def test_not_a_dict_in_list(built: Built, sample_session) -> None:
    with pytest.raises(InputError, match=r"row 1 is a int, not a dict") as info:
        built.model.predict_proba([sample_session, 5])
    assert info.value.rows == (1,)


def test_column_length_mismatch(built: Built) -> None:
    sessions = _sessions(built)
    columns = {k: [s[k] for s in sessions] for k in sessions[0]}
    columns["scroll_depth"] = columns["scroll_depth"][:3]
    with pytest.raises(
        InputError, match=r"'scroll_depth' has 3 values, but the other fields have 4"
    ):
        built.model.predict_proba(columns)


def test_empty_batches(built: Built) -> None:
    assert built.model.predict_proba([]).shape == (0,)
    assert built.model.predict_proba(built.log.iloc[:0]).shape == (0,)


# ---- predict_proba_features --------------------------------------------------------------------


def _X(built: Built, n: int = 5) -> np.ndarray:
    return built.split.X_test[:n].copy()


def test_features_wrong_count(built: Built) -> None:
    with pytest.raises(InputError, match=r"^X has 18 features, but the model expects 24$"):
        built.model.predict_proba_features(_X(built)[:, :18])
    with pytest.raises(InputError, match=r"^X has 25 features, but the model expects 24$"):
        built.model.predict_proba_features(np.hstack([_X(built), _X(built)[:, :1]]))


@pytest.mark.parametrize("shape", [(24,), (1, 1, 24), ()])
def test_features_wrong_dimensions(built: Built, shape) -> None:
    X = np.zeros(shape)
    with pytest.raises(InputError, match=r"Expected a 2D array of shape \(n_samples, 24\)"):
        built.model.predict_proba_features(X)


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (np.nan, "is NaN"),
        (np.inf, "is infinite"),
        (-np.inf, "is infinite"),
        (1e39, "is too large for float32"),
    ],
)
def test_features_bad_values_name_row_and_feature(built: Built, value, what) -> None:
    X = _X(built)
    X[3, 15] = value
    with pytest.raises(InputError) as info:
        built.model.predict_proba_features(X)
    assert str(info.value) == f"X[3, 15] ('engagement_score') {what}"
    assert info.value.field == "engagement_score" and info.value.rows == (3,)


def test_features_object_array_of_strings(built: Built) -> None:
    X = _X(built).astype(object)
    X[1, 2] = "two"
    with pytest.raises(InputError, match=r"^X must be numeric"):
        built.model.predict_proba_features(X)
    with pytest.raises(InputError, match=r"^X must be numeric, got dtype <U"):
        built.model.predict_proba_features(_X(built).astype(str))


def test_features_accepts_lists_ints_and_float32(built: Built) -> None:
    X = _X(built)
    expected = built.estimator.predict_proba(X)[:, 1]
    model = built.model
    assert np.max(np.abs(model.predict_proba_features(X.tolist()) - expected)) <= 1e-12
    assert np.max(np.abs(model.predict_proba_features(np.asfortranarray(X)) - expected)) <= 1e-12
    X32 = X.astype(np.float32)
    expected32 = built.estimator.predict_proba(X32)[:, 1]
    assert np.max(np.abs(model.predict_proba_features(X32) - expected32)) <= 1e-12
    Xi = np.rint(X).astype(np.int64)
    assert (
        np.max(np.abs(model.predict_proba_features(Xi) - built.estimator.predict_proba(Xi)[:, 1]))
        <= 1e-12
    )
