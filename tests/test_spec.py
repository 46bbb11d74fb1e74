"""The feature specification's generators: one expression, three identical implementations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reco_fast.features import spec as _spec

FS = _spec.FEATURE_SETS["ranking"]
EXPAND = _spec.python_expander(FS)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
edges = st.sampled_from([0.0, 0.01, 0.3, 0.6, 1.0, 3.0, 10.0, 29.99, 30.0, 60.0, 100.0, 100.5])


@given(st.lists(st.one_of(finite, edges), min_size=len(FS.inputs), max_size=len(FS.inputs)))
def test_python_and_numpy_paths_are_bit_identical(values):
    cols = {name: np.array([v, v]) for name, v in zip(FS.input_names, values, strict=True)}
    out = _spec.numpy_columns(FS, cols, np.empty((2, len(FS.features))))
    row = EXPAND(*values)
    assert out[0].tobytes() == np.asarray(row, dtype=np.float64).tobytes()


@given(
    st.lists(
        st.one_of(finite, edges, st.just(float("nan"))),
        min_size=len(FS.inputs),
        max_size=len(FS.inputs),
    )
)
def test_missing_values_propagate_identically_in_python_and_numpy(values):
    """NaN (a missing value, valid for models that route them) propagates through
    arithmetic, clip and max, and makes comparisons 0, on both paths alike."""
    cols = {name: np.array([v, v]) for name, v in zip(FS.input_names, values, strict=True)}
    out = _spec.numpy_columns(FS, cols, np.empty((2, len(FS.features))))[0]
    row = np.asarray(EXPAND(*values), dtype=np.float64)
    assert np.array_equal(np.isnan(out), np.isnan(row))
    assert np.array_equal(out[~np.isnan(out)], row[~np.isnan(row)])


def test_max_of_a_missing_value_is_missing():
    values = dict.fromkeys(FS.input_names, 1.0) | {"price": float("nan")}
    row = EXPAND(*values.values())
    assert np.isnan(row[FS.names.index("rec_price_ratio")])


def test_comparisons_are_exactly_zero_or_one():
    row = EXPAND(*([1.0] * len(FS.inputs)))
    flags = [row[FS.names.index(n)] for n in ("has_items_in_cart", "rec_same_category")]
    assert flags == [1.0, 1.0]


@pytest.mark.parametrize(
    "expr",
    ["__import__('os')", "x.y", "a if b else c", "price ** 2", "price < t < 3", "cart or t", "'a'"],
)
def test_the_expression_language_refuses_everything_else(expr):
    with pytest.raises(ValueError):
        _spec._parse(expr, FS.input_names)


def test_unknown_input_is_refused():
    with pytest.raises(ValueError, match="unknown input 'nope'"):
        _spec._parse("nope + 1", FS.input_names)


def test_the_hash_changes_with_any_definition():
    changed = _spec.FeatureSet(
        "ranking",
        (*FS.session[:-1], _spec.Feature("session_intensity", "viewed / (mins + 2)", "")),
        FS.candidate,
    )
    assert _spec.spec_hash(changed) != _spec.spec_hash(FS)
    assert _spec.spec_hash(FS) == _spec.spec_hash(_spec.FEATURE_SETS["ranking"])
