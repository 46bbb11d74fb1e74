"""Each front end against its own library: scikit-learn's GradientBoosting* and
HistGradientBoosting*, XGBoost and LightGBM (issue 15).

Every test compiles small models (few trees, few features) so the file runs in a couple
of minutes. The hypothesis tests draw shapes, objectives, missing values and inputs,
and compare the compiled model with the library's own predictions on rows it has never
seen: random rows, NaN where the model routes missing values, each threshold and its
neighbours, and values LightGBM reads as zero.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reco_fast
import reco_fast.compiler.codegen
from reco_fast import CompileError, InputError
from reco_fast.compiler.codegen import route_missing
from reco_fast.compiler.driver import adversarial_inputs, import_estimator
from reco_fast.compiler.ir import (
    MAX_FLAT_DEPTH,
    TooDeep,
    from_treelite,
    model_json,
    sparse_from_treelite,
    thresholds_by_feature,
)
from tests.helpers import library_reference, max_tree_depth, run_python

if os.environ.get("CI"):  # the dev extra installs both: CI must not skip these tests
    import lightgbm as lgb
    import xgboost as xgb
else:
    xgb = pytest.importorskip("xgboost")
    lgb = pytest.importorskip("lightgbm")
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FAMILIES = ("sklearn-gb", "sklearn-hgb", "xgboost", "lightgbm")
KINDS = ("classifier", "ranker", "regressor")


def _data(rng: np.random.Generator, n: int, d: int, nan: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows with some exact zeros and repeated values (splits sit between them), NaN at
    rate ``nan``, and a label that depends on the first two features."""
    X = rng.normal(size=(n, d)).round(2)
    X[rng.random(X.shape) < 0.1] = 0.0
    y = (np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, -1]) + rng.normal(size=n) > 0).astype(
        int
    )
    if nan:
        X[rng.random(X.shape) < nan] = np.nan
    return X, y


def _fit(family: str, kind: str, X: np.ndarray, y: np.ndarray, trees: int, depth: int, seed: int):
    """A small fitted model of this family and kind (rankers: groups of 10 rows)."""
    group = [10] * (len(X) // 10)
    X, y = X[: sum(group)], y[: sum(group)]
    target = np.nan_to_num(X[:, 0]) * 2 + y
    if family == "sklearn-gb":
        if kind == "regressor":
            return GradientBoostingRegressor(n_estimators=trees, max_depth=depth).fit(X, target)
        return GradientBoostingClassifier(n_estimators=trees, max_depth=depth).fit(X, y)
    if family == "sklearn-hgb":
        common = {"max_iter": trees, "max_depth": depth + 1, "min_samples_leaf": 5}
        if kind == "regressor":
            return HistGradientBoostingRegressor(**common).fit(X, target)
        return HistGradientBoostingClassifier(**common).fit(X, y)
    if family == "xgboost":
        common = {"n_estimators": trees, "max_depth": depth, "random_state": seed}
        if kind == "ranker":
            objective = ("rank:pairwise", "rank:ndcg")[seed % 2]
            qid = np.repeat(np.arange(len(group)), 10)
            return xgb.XGBRanker(objective=objective, **common).fit(X, y, qid=qid)
        if kind == "regressor":
            return xgb.XGBRegressor(**common).fit(X, target)
        return xgb.XGBClassifier(**common).fit(X, y)
    common = {
        "n_estimators": trees,
        "num_leaves": 2**depth,
        "min_child_samples": 5,
        "verbose": -1,
        "random_state": seed,
    }
    if kind == "ranker":
        return lgb.LGBMRanker(**common).fit(X, y, group=group)
    if kind == "regressor":
        return lgb.LGBMRegressor(**common).fit(X, target)
    return lgb.LGBMClassifier(**common).fit(X, y)


def _probe_rows(model_, X: np.ndarray, rng: np.random.Generator, nan: bool) -> np.ndarray:
    """Rows the build never saw: random, each threshold and its neighbours, tiny values
    (LightGBM reads |x| <= 1e-35 as 0), and NaN where the model routes it."""
    fresh = rng.normal(size=(200, X.shape[1])).round(3)
    tiny = np.array([0.0, -0.0, 1e-36, -1e-36, 1e-35, -1e-35, 1.0000001e-35, -2e-35, 1e-30])
    mask = rng.random(fresh.shape) < 0.2
    fresh[mask] = rng.choice(tiny, size=int(mask.sum()))
    tl = model_json(reco_fast.compiler.driver.import_estimator(model_).treelite_model)
    rows = np.concatenate(
        [fresh, adversarial_inputs(thresholds_by_feature(tl), fresh, seed=1, nan=nan)]
    )
    if nan:
        rows[rng.random(rows.shape) < 0.1] = np.nan
    return rows


def _draw_model(
    family: str, kind: str, data: st.DataObject, max_depth: int = 4
) -> tuple[object, np.ndarray, np.random.Generator]:
    """A drawn model of ``family`` fitted on drawn data: (estimator, X, rng)."""
    seed = data.draw(st.integers(0, 2**16), label="seed")
    d = data.draw(st.integers(1, 5), label="n_features")
    n = data.draw(st.sampled_from([80, 150, 300]), label="n_samples")
    trees = data.draw(st.integers(1, 6), label="trees")
    depth = data.draw(st.integers(1, max_depth), label="depth")
    routed = family != "sklearn-gb"
    nan = data.draw(st.sampled_from([0.0, 0.2]), label="nan") if routed else 0.0
    rng = np.random.default_rng(seed)
    X, y = _data(rng, n, d, nan)
    if len(np.unique(y)) < 2:
        y[:2] = [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = _fit(family, kind, X, y, trees, depth, seed)
    return estimator, X, rng


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=40)
@given(data=st.data())
def test_the_intermediate_form_equals_the_library(family: str, data: st.DataObject) -> None:
    """The compiler's first two stages, no C: the front end imports a drawn model and
    ``ir.from_treelite`` (``sparse_from_treelite`` for deep float64 trees) reads it into
    arrays whose numpy evaluation (``predict_margin``) gives the library's own margin, to
    the front end's tolerance, on thresholds and their neighbours, tiny values and NaN.
    The full builds below then need only a few examples each."""
    kind = data.draw(st.sampled_from(KINDS if family in ("xgboost", "lightgbm") else KINDS[::2]))
    estimator, X, rng = _draw_model(family, kind, data, max_depth=MAX_FLAT_DEPTH + 2)
    imported = import_estimator(estimator)
    routed = imported.missing_values == "routed"
    tl = model_json(imported.treelite_model)
    kwargs = {"nan_routed": routed, "zero_snap": imported.zero_snap}
    try:
        forest = from_treelite(
            imported.treelite_model, tl, precision=imported.input_precision, **kwargs
        )
    except TooDeep:
        assert (
            max_tree_depth(model_json(import_estimator(estimator).treelite_model)) > MAX_FLAT_DEPTH
        )
        if imported.input_precision == "float32":
            return  # served by tl2cgen's code alone (the full builds below check it)
        forest = sparse_from_treelite(imported.treelite_model, tl, **kwargs)
    rows = _probe_rows(estimator, X, rng, routed)
    margin, _ = library_reference(estimator, rows)
    assert np.all(np.abs(forest.predict_margin(rows) - margin) <= imported.tolerance)


FULL_BUILD_EXAMPLES = 4
"""Drawn models per family through the whole compiler (C build, load, every
backend): the front end and intermediate form are drawn 40 times per family above."""


def _check_family(family: str, kind: str, data: st.DataObject, tmp_path: Path) -> float:
    """Compile a drawn model and compare it with its library; returns the max |diff|."""
    estimator, X, rng = _draw_model(family, kind, data)
    routed = family != "sklearn-gb"
    out = tmp_path / f"{family}-{kind}-{sum(1 for _ in tmp_path.iterdir())}"
    model = reco_fast.compile_model(estimator, out, verify_X=X)
    meta = model.metadata
    assert meta["family"] == family
    assert meta["missing_values"] == ("routed" if routed else "refused")
    assert model.output == {"classifier": "probability", "ranker": "score"}.get(kind, "value")
    rows = _probe_rows(estimator, X, rng, routed)
    margin, output = library_reference(estimator, rows)
    m_tol = meta["verification"]["margin_tolerance"]
    o_tol = meta["verification"]["tolerance"]
    if family == "xgboost":  # float32 sums: the bound is stated, and far below 1e-4
        assert 1e-12 < m_tol < 1e-4
    else:
        assert m_tol == 1e-12 or m_tol < 1e-13 * max(1.0, float(np.max(np.abs(margin))))
    loaded = reco_fast.load(out)
    # every family gets the flat evaluator: float32 compares for scikit-learn's
    # GradientBoosting* and XGBoost (NaN routed, x < t splits) when the trees are at most
    # MAX_FLAT_DEPTH deep, float64 compares for HistGradientBoosting* and LightGBM (NaN
    # routed, LightGBM's zero snap) at any depth (deeper trees walked as they are)
    depth = max_tree_depth(model_json(import_estimator(estimator).treelite_model))
    flat = depth <= MAX_FLAT_DEPTH or family in ("sklearn-hgb", "lightgbm")
    assert ("flat-portable" in loaded.available_backends()) == flat, depth
    assert meta["flat_evaluator"] == "generated" if flat else "exceed" in meta["flat_evaluator"]
    assert set(meta["backends"]) == set(loaded.available_backends())
    assert meta["backend"] in ("flat", "tl2cgen")
    assert set(meta["verification"]["backends"]) == set(loaded.available_backends())
    if family in ("sklearn-hgb", "lightgbm"):  # float64: no AVX-512 kernel, AVX2 to depth 6
        assert "flat-avx512" not in loaded.available_backends()
        assert depth <= 6 or "flat-avx2" not in loaded.available_backends()
    worst = 0.0
    for backend in loaded.available_backends():
        m = loaded.using(backend)
        got = m.decision_function(rows)
        assert got.dtype == np.float64 and got.shape == (len(rows),)
        assert np.all(np.abs(got - margin) <= m_tol), backend
        worst = max(worst, float(np.max(np.abs(got - margin))))
        got32 = m.decision_function(rows.astype(np.float32))
        margin32, _ = library_reference(estimator, rows.astype(np.float32).astype(np.float64))
        assert np.all(np.abs(got32 - margin32) <= m_tol), backend
        if kind == "classifier":
            p = m.predict_proba_features(rows)
            assert np.all(np.abs(p - output) <= o_tol), backend
            worst = max(worst, float(np.max(np.abs(p - output))))
        else:
            assert np.array_equal(m.decision_function(rows), got)
            with pytest.raises(TypeError, match="not probabilities: use decision_function"):
                m.predict_proba_features(rows)
    return worst


@settings(max_examples=FULL_BUILD_EXAMPLES)
@given(data=st.data(), kind=st.sampled_from(["classifier", "regressor"]))
def test_sklearn_gradient_boosting_equals_sklearn(data, kind, tmp_path_factory) -> None:
    _check_family("sklearn-gb", kind, data, tmp_path_factory.mktemp("gb"))


@settings(max_examples=FULL_BUILD_EXAMPLES)
@given(data=st.data(), kind=st.sampled_from(["classifier", "regressor"]))
def test_sklearn_hist_gradient_boosting_equals_sklearn(data, kind, tmp_path_factory) -> None:
    _check_family("sklearn-hgb", kind, data, tmp_path_factory.mktemp("hgb"))


@settings(max_examples=FULL_BUILD_EXAMPLES)
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_xgboost_equals_xgboost(data, kind, tmp_path_factory) -> None:
    _check_family("xgboost", kind, data, tmp_path_factory.mktemp("xgb"))


@settings(max_examples=FULL_BUILD_EXAMPLES)
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_lightgbm_equals_lightgbm(data, kind, tmp_path_factory) -> None:
    _check_family("lightgbm", kind, data, tmp_path_factory.mktemp("lgb"))


# ---- NaN: routed where the model learned it, refused where it did not -----------------------


def test_nan_is_routed_only_by_models_that_learned_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X, y = _data(rng, 300, 3, 0.3)
    hgb = HistGradientBoostingClassifier(max_iter=5).fit(X, y)
    routed = reco_fast.compile_model(hgb, tmp_path / "hgb", verify_X=X)
    assert routed.missing_values == "routed"
    # float64 compares: the flat evaluator's float64 kernel, NaN routed per node
    assert routed.metadata["flat_evaluator"] == "generated"
    assert routed.available_backends()[:2] == ("tl2cgen", "flat-portable")
    rows = np.array([[np.nan, 0.1, 0.2], [np.nan] * 3, [0.3, np.nan, -1.0]])
    expected = hgb.predict_proba(rows)[:, 1]
    for backend in routed.available_backends():
        m = routed.using(backend)
        assert np.all(np.abs(m.predict_proba_features(rows) - expected) <= 1e-12), backend
        assert np.all(np.abs(m.decision_function(rows) - hgb.decision_function(rows)) <= 1e-12)
        for bad in (np.inf, -np.inf):  # NaN is a value here, infinity is not
            with pytest.raises(InputError, match=r"X\[0, 1\] \('f1'\) is infinite"):
                m.predict_proba_features([[0.0, bad, 0.0]])
        # on_invalid="nan" keeps NaN inputs as inputs: only the infinite row is refused
        p = m.predict_proba_features(np.vstack([rows, [[0.0, np.inf, 0.0]]]), on_invalid="nan")
        assert np.all(np.abs(p[:3] - expected) <= 1e-12) and math.isnan(p[3])

    Xf = np.nan_to_num(X)
    gbc = GradientBoostingClassifier(n_estimators=5).fit(Xf, y)
    refused = reco_fast.compile_model(gbc, tmp_path / "gbc", verify_X=Xf)
    assert refused.missing_values == "refused"
    for backend in refused.available_backends():
        with pytest.raises(InputError, match=r"X\[0, 0\] \('f0'\) is NaN"):
            refused.using(backend).predict_proba_features(rows[:1])
        with pytest.raises(InputError, match="is NaN"):
            refused.using(backend).decision_function(rows[:1])
    with pytest.raises(CompileError, match="verify_X must be finite"):
        reco_fast.compile_model(gbc, tmp_path / "gbc2", verify_X=X)


def test_a_split_on_missing_values_alone_compiles(tmp_path: Path) -> None:
    """HistGradientBoosting splits "NaN right, every number left" with threshold +inf,
    which treelite's JSON dump writes as nothing; the model must still compile and
    route NaN (and +inf is refused, as everywhere)."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(2000, 2))
    X[rng.random(X.shape) < 0.3] = np.nan
    y = np.isnan(X[:, 0]).astype(int)
    hgb = HistGradientBoostingClassifier(max_iter=3).fit(X, y)
    assert any(np.isinf(p.nodes["num_threshold"]).any() for [p] in hgb._predictors)
    model = reco_fast.compile_model(hgb, tmp_path / "m", verify_X=X)
    rows = np.array([[np.nan, 0.0], [1e300, 0.0], [-1e300, np.nan], [0.0, 0.0]])
    expected = hgb.predict_proba(rows)[:, 1]
    assert "flat-portable" in model.available_backends()
    for backend in model.available_backends():
        got = model.using(backend).predict_proba_features(rows)
        assert np.all(np.abs(got - expected) <= 1e-12), backend


def test_float64_models_take_values_beyond_float32(tmp_path: Path) -> None:
    """HistGradientBoosting and LightGBM compare float64 inputs: 1e300 is a value (it
    was 'too large for float32' for every model), and a double whose low 32 bits are
    all ones (tl2cgen's missing marker) is a value, not a missing one."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 2))
    y = (X[:, 0] > 0.1).astype(int)
    for name, est in (
        ("hgb", HistGradientBoostingClassifier(max_iter=3).fit(X, y)),
        ("lgb", lgb.LGBMClassifier(n_estimators=3, verbose=-1).fit(X, y)),
    ):
        model = reco_fast.compile_model(est, tmp_path / name, verify_X=X)
        assert model.input_precision == "float64"
        t = thresholds_by_feature(
            model_json(reco_fast.compiler.driver.import_estimator(est).treelite_model)
        )
        marked = (t[0].view(np.uint64) | np.uint64(0xFFFFFFFF)).view(np.float64)
        rows = np.column_stack(
            [np.concatenate([[1e300, -1e300], marked]), np.zeros(2 + len(marked))]
        )
        expected = est.predict_proba(rows)[:, 1]
        assert "flat-portable" in model.available_backends()
        for backend in model.available_backends():
            got = model.using(backend).predict_proba_features(rows)
            assert np.all(np.abs(got - expected) <= 1e-12), (name, backend)


def test_early_stopped_models_compile_the_trees_their_library_predicts_with(
    tmp_path: Path,
) -> None:
    """XGBoost's and LightGBM's estimators predict with the trees up to the best
    iteration after early stopping, not every tree trained: so must the compiled model."""
    rng = np.random.default_rng(6)
    X, y = _data(rng, 600, 4, 0.1)
    flipped = y.copy()
    flipped[300:] = 1 - flipped[300:]  # the validation half disagrees: stops early
    fit = {"eval_set": [(X[300:], flipped[300:])]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {
            "xgb": xgb.XGBClassifier(n_estimators=40, early_stopping_rounds=2).fit(
                X[:300], y[:300], verbose=False, **fit
            ),
            "lgb": lgb.LGBMClassifier(n_estimators=40, verbose=-1).fit(
                X[:300], y[:300], callbacks=[lgb.early_stopping(2, verbose=False)], **fit
            ),
        }
    assert models["xgb"].best_iteration < 39 and models["lgb"].best_iteration_ < 39
    for name, est in models.items():
        model = reco_fast.compile_model(est, tmp_path / name, verify_X=X)
        margin, proba = library_reference(est, X)
        v = model.metadata["verification"]
        assert np.all(np.abs(model.decision_function(X) - margin) <= v["margin_tolerance"]), name
        assert np.all(np.abs(model.predict_proba_features(X) - proba) <= v["tolerance"]), name
        assert model.metadata["n_trees"] < 40, name


# ---- refusals -------------------------------------------------------------------------------


@functools.cache
def _refusals():
    rng = np.random.default_rng(3)
    X, y = _data(rng, 200, 3, 0.0)
    y3 = y + (X[:, 1] > 0.5)
    cat = X.copy()
    cat[:, 0] = 2 * y + rng.integers(0, 2, size=len(X))  # categories 0, 1 -> y=0; 2, 3 -> y=1
    pos = np.abs(X[:, 0]) + 0.1
    return {
        "hgb multiclass": (
            HistGradientBoostingClassifier(max_iter=2).fit(X, y3),
            "only binary classifiers",
        ),
        "hgb categorical": (
            HistGradientBoostingClassifier(max_iter=2, categorical_features=[0]).fit(cat, y),
            "categorical",
        ),
        "hgb poisson": (
            HistGradientBoostingRegressor(max_iter=2, loss="poisson").fit(X, pos),
            "log\\s+link",
        ),
        "hgb unfitted": (HistGradientBoostingClassifier(), "not fitted"),
        "xgb multiclass": (
            xgb.XGBClassifier(n_estimators=2).fit(X, y3),
            "objective='multi:softprob' is not supported",
        ),
        "xgb poisson": (
            xgb.XGBRegressor(n_estimators=2, objective="count:poisson").fit(X, pos),
            "count:poisson",
        ),
        "xgb missing=0": (xgb.XGBClassifier(n_estimators=2, missing=0.0).fit(X, y), "missing=0.0"),
        "xgb dart": (xgb.XGBClassifier(n_estimators=2, booster="dart").fit(X, y), "dart"),
        "xgb unfitted": (xgb.XGBClassifier(), "not fitted"),
        "lgb multiclass": (
            lgb.LGBMClassifier(n_estimators=2, verbose=-1).fit(X, y3),
            "'multiclass' is not supported",
        ),
        "lgb categorical": (
            lgb.LGBMClassifier(
                n_estimators=2, verbose=-1, min_child_samples=5, min_data_per_group=5
            ).fit(cat, y, categorical_feature=[0]),
            "categorical splits are not supported",
        ),
        "lgb poisson": (
            lgb.LGBMRegressor(n_estimators=2, objective="poisson", verbose=-1).fit(X, pos),
            "'poisson' is not supported",
        ),
        "lgb zero as missing": (
            lgb.LGBMClassifier(n_estimators=2, zero_as_missing=True, verbose=-1).fit(X, y),
            "zero_as_missing",
        ),
        "lgb unfitted": (lgb.LGBMClassifier(), "not fitted"),
        "other library": (object(), "reco_fast compiles .*; got builtins.object"),
    }


@pytest.mark.parametrize("case", list(_refusals()))
def test_unsupported_models_are_refused_clearly(case: str, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator, message = _refusals()[case]
    out = tmp_path / "out"
    with pytest.raises(CompileError, match=message):
        reco_fast.compile_model(estimator, out)
    assert not out.exists()


# ---- the C the compiler generates -------------------------------------------------------------


def test_missing_test_reads_nan() -> None:
    source = (
        "if ( (data[0].missing != -1) && (data[0].fvalue <= 1.0)) {\n"
        "if (!(data[12].missing != -1) || (data[12].fvalue < (float)2)) {"
    )
    out, n = route_missing(source)
    assert n == 2 and ".missing" not in out
    assert "(!isnan(data[0].fvalue)) && (data[0].fvalue <= 1.0)" in out
    assert "!(!isnan(data[12].fvalue)) ||" in out
    with pytest.raises(RuntimeError, match="does not rewrite"):
        route_missing("if (data[0].missing == -1) {")


def test_many_trees_are_split_over_translation_units(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reco_fast.compiler.codegen, "UNIT_NODES", 150)  # 120 stumps: 360 nodes
    rng = np.random.default_rng(4)
    X, y = _data(rng, 200, 3, 0.0)
    est = GradientBoostingClassifier(n_estimators=120, max_depth=1).fit(X, y)
    model = reco_fast.compile_model(est, tmp_path / "m", verify_X=X)
    units = sorted(p.name for p in (tmp_path / "m").glob("model_tu*.c"))
    assert units == ["model_tu0.c", "model_tu1.c", "model_tu2.c"]
    assert np.all(np.abs(model.predict_proba_features(X) - est.predict_proba(X)[:, 1]) <= 1e-12)
    assert reco_fast.load(tmp_path / "m").metadata["n_trees"] == 120


# ---- serving with numpy and cffi only ---------------------------------------------------------

SERVE = """
import json, sys
import numpy as np
import reco_fast
model = reco_fast.load(sys.argv[1])
X = np.asarray(json.loads(sys.argv[2]), dtype=np.float64)
out = {"margin": model.decision_function(X).tolist(), "output": model.output}
try:
    out["proba"] = model.predict_proba_features(X).tolist()
except TypeError as exc:
    out["proba_error"] = str(exc)
heavy = ("sklearn", "treelite", "tl2cgen", "pandas", "scipy", "xgboost", "lightgbm")
out["heavy"] = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
print(json.dumps(out))
"""


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_models_of_other_libraries_serve_with_numpy_and_cffi_only(
    family: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    X, y = _data(rng, 300, 4, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = _fit(family, "classifier", X, y, 4, 3, 0)
        ranker = _fit(family, "ranker", X, y, 4, 3, 0)
    rows = X[:20]
    for name, est in (("clf", clf), ("ranker", ranker)):
        reco_fast.compile_model(est, tmp_path / name, verify_X=X)
        proc = run_python(
            SERVE,
            str(tmp_path / name),
            json.dumps(rows.tolist()),
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["heavy"] == []
        margin, output = library_reference(est, np.asarray(rows.tolist(), dtype=np.float64))
        tol = 1e-12 if family == "lightgbm" else 1e-4
        assert np.all(np.abs(np.asarray(out["margin"], dtype=np.float64) - margin) <= tol)
        if name == "clf":
            assert out["output"] == "probability"
            assert np.all(np.abs(np.asarray(out["proba"]) - output) <= tol)
        else:
            assert out["output"] == "score"
            assert (
                "a ranker has scores, not probabilities: use decision_function"
                in (out["proba_error"])
            )
