"""The flat evaluator for models that compare float64 inputs (scikit-learn's
HistGradientBoosting*, LightGBM): exact double thresholds, NaN routed per node as learned,
LightGBM's near-zero inputs read as 0. Every backend of a build must give the library's
answer to 1e-12 on rows at, and one ulp either side of, every threshold (as float64 and as
float32), with NaN, and the artifact says which backend serves."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import reco_fast
from reco_fast.compiler.driver import adversarial_inputs, import_estimator
from reco_fast.compiler.ir import (
    MAX_FLAT_DEPTH,
    SparseForest,
    from_treelite,
    model_json,
    sparse_from_treelite,
    thresholds_by_feature,
)
from tests.helpers import library_reference, max_tree_depth

lgb = pytest.importorskip("lightgbm")
from sklearn.ensemble import (  # noqa: E402
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = np.array([0.0, -0.0, 1e-36, -1e-36, 1e-35, -1e-35, 1.0000001e-35, -2e-35, 1e-30])


def _data(seed: int, n: int = 1500, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).round(3)
    X[rng.random(X.shape) < 0.1] = 0.0
    X[:, 1] *= 1e-34  # a feature LightGBM splits near its zero snap
    y = np.nan_to_num(X[:, 0]) + 1e34 * np.nan_to_num(X[:, 1]) + rng.normal(size=n) > 0
    X[rng.random(X.shape) < 0.15] = np.nan
    return X, y.astype(int)


def _rows(est, X: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fresh = rng.normal(size=(300, X.shape[1])).round(3)
    mask = rng.random(fresh.shape) < 0.2
    fresh[mask] = rng.choice(TINY, size=int(mask.sum()))
    tl = model_json(import_estimator(est).treelite_model)
    rows = np.concatenate([fresh, adversarial_inputs(thresholds_by_feature(tl), fresh, nan=True)])
    rows[rng.random(rows.shape) < 0.05] = np.nan
    return rows


def _fit(name: str, X: np.ndarray, y: np.ndarray, depth: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "hgb":
            return HistGradientBoostingClassifier(max_iter=20, max_depth=depth).fit(X, y)
        if name == "hgb-regressor":
            target = y * 2.0 + np.nan_to_num(X[:, 2])
            return HistGradientBoostingRegressor(max_iter=20, max_depth=depth).fit(X, target)
        return lgb.LGBMClassifier(
            n_estimators=20,
            max_depth=depth,
            num_leaves=min(2**depth, 63),
            min_child_samples=5,
            verbose=-1,
        ).fit(X, y)


@pytest.mark.parametrize(
    ("name", "depth"),
    [("hgb", 6), ("lgb", 5), ("hgb-regressor", 8), ("lgb", 8), ("lgb", 12), ("hgb", 10)],
)
def test_float64_models_build_a_flat_backend_equal_to_their_library(
    name: str, depth: int, tmp_path: Path
) -> None:
    X, y = _data(depth)
    est = _fit(name, X, y, depth)
    model = reco_fast.compile_model(est, tmp_path / "m", verify_X=X)
    meta = model.metadata
    assert meta["input_precision"] == "float64" and meta["missing_values"] == "routed"
    assert meta["flat_evaluator"] == "generated"
    backends = model.available_backends()
    assert "flat-portable" in backends
    # AVX2 (4 doubles per register) only for trees of depth <= 6, on a CPU that has it
    imported = import_estimator(est)
    tl = model_json(imported.treelite_model)
    deep = max_tree_depth(tl) > MAX_FLAT_DEPTH  # trees walked as they are (SparseForest)
    forest = (sparse_from_treelite if deep else from_treelite)(
        imported.treelite_model,
        nan_routed=True,
        zero_snap=imported.zero_snap,
        **({} if deep else {"precision": "float64"}),
    )
    assert isinstance(forest, SparseForest) == deep
    assert deep == (depth > MAX_FLAT_DEPTH)  # the drawn model is as deep as asked
    if deep or forest.depth > 6:
        assert "flat-avx2" not in backends
    assert "flat-avx512" not in backends
    # the build verified and timed every backend, and serves the one it names
    assert sorted(meta["verification"]["backends"]) == sorted(backends)
    assert set(meta["backends"]) == set(backends)
    assert meta["backend"] in ("flat", "tl2cgen")
    assert reco_fast.load(tmp_path / "m").backend.startswith(meta["backend"])

    rows = _rows(est, X, depth)
    margin, output = library_reference(est, rows)
    margin32, _ = library_reference(est, rows.astype(np.float32).astype(np.float64))
    assert np.max(np.abs(forest.predict_margin(rows) - margin)) <= 1e-12  # the IR itself
    for backend in backends:
        m = model.using(backend)
        assert np.max(np.abs(m.decision_function(rows) - margin)) <= 1e-12, backend
        got32 = m.decision_function(rows.astype(np.float32))
        assert np.max(np.abs(got32 - margin32)) <= 1e-12, backend
        if model.output == "probability":
            assert np.max(np.abs(m.predict_proba_features(rows) - output)) <= 1e-12, backend
        one = np.array([m.decision_function(r[None, :])[0] for r in rows[:50]])
        assert np.max(np.abs(one - margin[:50])) <= 1e-12, backend
        if model.output == "probability":  # rows sharing a prefix (one session, many items)
            rest = np.ascontiguousarray(rows[:37, 2:].T)
            shared = rows[5, :2].tolist()
            full = np.column_stack([np.tile(rows[5, :2], (37, 1)), rows[:37, 2:]])
            expected = library_reference(est, full)[1]
            assert np.max(np.abs(m._predict_prefix(shared, rest) - expected)) <= 1e-12, backend


def test_short_batches_and_last_rows_match_full_blocks(tmp_path: Path) -> None:
    """A batch's last 1 or 2 rows are scored row by row (a block costs 8 rows): the same
    sums in the same order as a full block, bit for bit, and a bad value there is named."""
    X, y = _data(3)
    est = _fit("hgb", X, y, 5)
    model = reco_fast.compile_model(est, tmp_path / "m", verify_X=X)
    rows = _rows(est, X, 3)[:40]
    for backend in [b for b in model.available_backends() if b.startswith("flat")]:
        m = model.using(backend)
        whole = m.decision_function(rows)
        for n in (1, 2, 3, 8, 9, 10, 11, 17, 18):
            assert np.array_equal(m.decision_function(rows[:n]), whole[:n]), (backend, n)
            assert np.array_equal(m.decision_function(rows[n:]), whole[n:]), (backend, n)
        bad = rows[:10].copy()
        bad[9, 4] = np.inf
        with pytest.raises(reco_fast.InputError, match=r"X\[9, 4\]"):
            m.decision_function(bad)


def test_deep_float32_models_stay_on_tl2cgen(tmp_path: Path) -> None:
    """Trees walked as they are compare doubles: only float64 models get them. A
    GradientBoosting model deeper than MAX_FLAT_DEPTH is served by tl2cgen alone."""
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 4))
    y = X[:, 0] * 3 + np.sin(5 * X[:, 1]) + rng.normal(size=3000)
    est = GradientBoostingRegressor(n_estimators=2, max_depth=MAX_FLAT_DEPTH + 2).fit(X, y)
    model = reco_fast.compile_model(est, tmp_path / "m", verify_X=X[:500])
    assert model.available_backends() == ("tl2cgen",)
    assert "exceed" in model.metadata["flat_evaluator"]
