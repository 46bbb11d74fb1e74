"""The compiled C model equals scikit-learn's predict_proba to 1e-12, and anything
the compiler cannot reproduce is refused without writing a directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

import reco_fast
import reco_fast.compiler.driver
from reco_fast import CompileError
from reco_fast.compiler.driver import TOLERANCE, adversarial_inputs, tree_thresholds
from reco_fast.compiler.frontends import sklearn_gbc
from tests.helpers import Built


def max_diff(model: reco_fast.Model, estimator, X: np.ndarray) -> float:
    """Largest |compiled - sklearn| over X fed as float64 and as float32."""
    worst = 0.0
    if len(X) == 0:
        return worst
    for Xc in (np.asarray(X, dtype=np.float64), np.asarray(X, dtype=np.float32)):
        got = model.predict_proba_features(Xc)
        expected = estimator.predict_proba(Xc)[:, 1]
        assert got.shape == expected.shape == (len(X),)
        worst = max(worst, float(np.max(np.abs(got - expected), initial=0.0)))
    return worst


def nothing_written(parent: Path, out: Path) -> None:
    """No artifact, no staging directory left behind (the build lock file may stay)."""
    assert not out.exists()
    if parent.exists():
        left = [p for p in parent.iterdir() if p.is_dir() or not p.name.endswith(".lock")]
        assert left == [], left


# ---- the default build ------------------------------------------------------------------------


def test_compiled_equals_sklearn_on_test_split(built: Built) -> None:
    X_test = built.split.X_test
    assert X_test.shape == (3000, 24)
    assert max_diff(built.model, built.estimator, X_test) <= TOLERANCE
    # and the probabilities are not trivial
    p = built.model.predict_proba_features(X_test)
    assert 0.0 < p.min() < 0.2 and 0.8 < p.max() < 1.0


def test_compiled_equals_sklearn_on_adversarial_inputs(built: Built) -> None:
    X = adversarial_inputs(built.estimator, built.split.X_test)
    thresholds = tree_thresholds(built.estimator)
    n_thresholds = sum(t.size for t in thresholds)
    assert n_thresholds > 100
    assert len(X) >= 4 * n_thresholds
    # every threshold is hit exactly, and from both sides
    for f, thr in enumerate(thresholds):
        col = X[:, f]
        assert np.isin(thr, col).all(), f
        assert np.isin(np.nextafter(thr, -np.inf), col).all(), f
        assert np.isin(np.nextafter(thr, np.inf), col).all(), f
    assert max_diff(built.model, built.estimator, X) <= TOLERANCE


def test_build_metadata_records_verification(built: Built) -> None:
    v = built.metadata["verification"]
    assert v["tolerance"] == TOLERANCE == 1e-12
    assert v["rows"] == 3000
    assert v["adversarial_rows"] == len(adversarial_inputs(built.estimator, built.split.X_test))
    assert 0.0 <= v["max_abs_diff"] <= 1e-12
    assert 0.0 <= v["adversarial_max_abs_diff"] <= 1e-12


# ---- random GradientBoostingClassifier shapes --------------------------------------------------

COLUMN_KINDS = ("normal", "integer", "duplicates", "wide", "binary", "decimal", "constant")


def make_column(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.0, 1.0, n)
    if kind == "integer":
        return rng.integers(-3, 12, n).astype(np.float64)
    if kind == "duplicates":
        return rng.choice([-1.5, 0.0, 2.25], size=n, p=[0.7, 0.2, 0.1])
    if kind == "wide":
        return rng.normal(0.0, 1e6, n)
    if kind == "binary":
        return rng.integers(0, 2, n).astype(np.float64)
    if kind == "decimal":  # values like 0.123 that float32 cannot represent exactly
        return rng.integers(0, 1000, n) * 0.001
    return np.full(n, 3.0)


@st.composite
def gbc_problems(draw: st.DrawFn) -> dict:
    n_features = draw(st.integers(1, 12))
    return {
        "kinds": draw(
            st.lists(st.sampled_from(COLUMN_KINDS), min_size=n_features, max_size=n_features)
        ),
        "n_samples": draw(st.integers(40, 300)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "labels": draw(st.sampled_from([(0, 1), (-1, 1), (3, 7)])),
        "params": {
            "n_estimators": draw(st.integers(1, 30)),
            "max_depth": draw(st.integers(1, 5)),
            "learning_rate": draw(
                st.one_of(st.sampled_from([0.01, 0.1, 0.5, 1.0]), st.floats(0.001, 2.0))
            ),
            "subsample": draw(st.sampled_from([1.0, 0.8, 0.5])),
            "min_samples_leaf": draw(st.integers(1, 10)),
            "max_features": draw(st.sampled_from([None, 0.5, "sqrt"])),
            "init": draw(st.sampled_from([None, "zero"])),
            "random_state": draw(st.integers(0, 1000)),
        },
    }


def make_data(problem: dict, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack([make_column(k, rng, n) for k in problem["kinds"]])
    scaled = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    logit = scaled @ rng.normal(0.0, 1.0, X.shape[1]) + rng.logistic(size=n)
    y = (logit > 0).astype(int)
    y[:2] = [0, 1]  # both classes, always
    return X, np.asarray(problem["labels"])[y]


@settings(max_examples=8, deadline=None)
@given(problem=gbc_problems())
def test_random_gbc_compiles_equal_to_sklearn(problem, tmp_path_factory) -> None:
    X, y = make_data(problem, problem["seed"], problem["n_samples"])
    estimator = GradientBoostingClassifier(**problem["params"]).fit(X, y)
    out = tmp_path_factory.mktemp("gbc") / "model"
    model = reco_fast.compile_model(estimator, out)

    assert model.n_features == X.shape[1]
    assert model.feature_names == tuple(f"f{i}" for i in range(X.shape[1]))
    assert model.metadata["n_trees"] == problem["params"]["n_estimators"]
    assert (out / "metadata.json").is_file()

    fresh, _ = make_data(problem, problem["seed"] + 1, 500)
    assert max_diff(model, estimator, X) <= TOLERANCE
    assert max_diff(model, estimator, fresh) <= TOLERANCE
    assert max_diff(model, estimator, adversarial_inputs(estimator, fresh, seed=3)) <= TOLERANCE
    # the reloaded artifact is the same model
    again = reco_fast.load(out)
    assert np.array_equal(again.predict_proba_features(fresh), model.predict_proba_features(fresh))


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_feature_names_from_dataframe_and_given(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["alpha", "beta", "gamma"])
    y = (frame["alpha"] + rng.normal(size=200) > 0).astype(int)
    estimator = GradientBoostingClassifier(n_estimators=5, max_depth=2).fit(frame, y)
    model = reco_fast.compile_model(estimator, tmp_path / "a")
    assert model.feature_names == ("alpha", "beta", "gamma")
    named = reco_fast.compile_model(estimator, tmp_path / "b", ["x", "y", "z"], threshold=0.4)
    assert named.feature_names == ("x", "y", "z")
    assert named.threshold == 0.4
    assert named.metadata["verification"]["rows"] == 2000  # synthesised from thresholds
    assert max_diff(named, estimator, frame.to_numpy()) <= TOLERANCE


@pytest.mark.parametrize(
    ("max_depth", "n_features"),
    [(3, 2), (5, 3)],
    ids=["depth 3, 2 features", "depth 5, 3 features"],
)
def test_odd_depths_and_few_features_compile(max_depth: int, n_features: int, tmp_path: Path):
    """Regressions: odd depths broke the flat evaluator's code generation, and with 2 or 3
    features GCC 12 -O2 dropped the harness's float32 rounding (adversarial rows caught it)."""
    rng = np.random.default_rng(max_depth)
    X = rng.normal(size=(400, n_features))
    y = (X[:, 0] * X[:, 1] + X[:, -1] + rng.logistic(size=400) * 0.3 > 0).astype(int)
    estimator = GradientBoostingClassifier(n_estimators=4, max_depth=max_depth).fit(X, y)
    assert max(t.tree_.max_depth for t in estimator.estimators_[:, 0]) == max_depth
    model = reco_fast.compile_model(estimator, tmp_path / "m", verify_X=X)
    assert model.metadata["verification"]["adversarial_rows"] > 0
    fresh = rng.normal(size=(300, n_features))
    assert max_diff(model, estimator, fresh) <= TOLERANCE
    assert max_diff(model, estimator, adversarial_inputs(estimator, fresh)) <= TOLERANCE


@pytest.mark.parametrize(
    ("max_depth", "flat"),
    [(5, True), (7, True), (9, False)],
    ids=["depth 5: QuickScorer", "depth 7: blend evaluator", "depth 9: tl2cgen only"],
)
def test_every_backend_equals_sklearn_at_each_evaluator_depth(
    max_depth: int, flat: bool, tmp_path: Path
) -> None:
    """Depth <= 5 uses the QuickScorer kernels (AVX2 and AVX-512), 6-8 the AVX2 blend
    kernel, deeper trees tl2cgen's code alone; each backend the CPU has must equal sklearn,
    and all flat variants must agree bit for bit."""
    rng = np.random.default_rng(max_depth)
    X = rng.normal(size=(3000, 6))
    y = np.sin(3 * X[:, 0]) * X[:, 1] + X[:, 2] * X[:, 3] + rng.logistic(size=3000) * 0.2 > 0
    estimator = GradientBoostingClassifier(
        n_estimators=6, max_depth=max_depth, min_samples_leaf=1, random_state=0
    ).fit(X, y.astype(int))
    model = reco_fast.compile_model(estimator, tmp_path / "m", verify_X=X)
    backends = model.available_backends()
    assert ("flat-portable" in backends) == flat
    if not flat:
        assert model.backend == "tl2cgen"
    fresh = np.concatenate([rng.normal(size=(500, 6)), adversarial_inputs(estimator, X[:200])])
    outputs = {}
    for name in backends:
        other = model.using(name)
        assert max_diff(other, estimator, fresh) <= TOLERANCE, name
        outputs[name] = other.predict_proba_features(fresh)
    flats = [v for k, v in outputs.items() if k.startswith("flat")]
    assert all(np.array_equal(flats[0], v) for v in flats[1:])


def test_trees_without_splits_compile(tmp_path: Path) -> None:
    """Constant features: every tree is a single leaf and there is no adversarial row."""
    X = np.full((60, 2), 3.0)
    y = np.r_[np.zeros(20), np.ones(40)].astype(int)
    estimator = GradientBoostingClassifier(n_estimators=3).fit(X, y)
    assert estimator.estimators_[0, 0].tree_.node_count == 1
    model = reco_fast.compile_model(estimator, tmp_path / "m")
    p = model.predict_proba_features(np.array([[3.0, 3.0], [-1e6, 7.5]]))
    assert np.max(np.abs(p - 2 / 3)) <= TOLERANCE


# ---- refusals: CompileError and no directory ---------------------------------------------------


def _data(n_features: int = 3, n: int = 200, classes: int = 2):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, n_features))
    y = (X[:, 0] > 0).astype(int) + (classes == 3) * (X[:, 1] > 0.5).astype(int)
    return X, y


def _unsupported():
    X, y = _data()
    X3, y3 = _data(classes=3)
    assert len(np.unique(y3)) == 3
    return {
        "multiclass": (
            GradientBoostingClassifier(n_estimators=3).fit(X3, y3),
            "only binary classifiers",
        ),
        "random forest": (
            RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y),
            "RandomForestClassifier",
        ),
        "unfitted": (GradientBoostingClassifier(), "not fitted"),
        "custom init": (
            GradientBoostingClassifier(n_estimators=3, init=LogisticRegression()).fit(X, y),
            "custom init",
        ),
        "exponential loss": (
            GradientBoostingClassifier(n_estimators=3, loss="exponential").fit(X, y),
            "exponential",
        ),
    }


@pytest.mark.parametrize(
    "case", ["multiclass", "random forest", "unfitted", "custom init", "exponential loss"]
)
def test_unsupported_estimators_refused(case: str, tmp_path: Path) -> None:
    estimator, message = _unsupported()[case]
    out = tmp_path / "out"
    with pytest.raises(CompileError, match=message):
        reco_fast.compile_model(estimator, out)
    nothing_written(tmp_path, out)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature_names": ["a", "b"]}, "2 feature names given, but the model has 3 features"),
        ({"feature_names": ["a", "b", "c", "d"]}, "4 feature names given"),
        ({"feature_names": ["a", "a", "b"]}, "unique"),
        ({"threshold": 1.5}, "threshold must be in"),
        ({"verify_X": np.full((4, 3), np.nan)}, "verify_X must be finite"),
    ],
)
def test_bad_arguments_refused(kwargs, message, tmp_path: Path) -> None:
    X, y = _data()
    estimator = GradientBoostingClassifier(n_estimators=3).fit(X, y)
    out = tmp_path / "out"
    with pytest.raises(CompileError, match=message):
        reco_fast.compile_model(estimator, out, **kwargs)
    nothing_written(tmp_path, out)


def test_verification_catches_what_check_estimator_would_refuse(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the up-front check, loss='exponential' compiles to the wrong link function:
    the comparison with scikit-learn is what refuses it, and nothing is written."""
    monkeypatch.setattr(sklearn_gbc, "check_estimator", lambda estimator: None)
    X, y = _data()
    estimator = GradientBoostingClassifier(n_estimators=10, loss="exponential").fit(X, y)
    out = tmp_path / "out"
    with pytest.raises(CompileError, match=r"differs from scikit-learn's predict_proba by") as exc:
        reco_fast.compile_model(estimator, out, verify_X=X)
    assert "nothing was written" in str(exc.value)
    nothing_written(tmp_path, out)


# ---- estimators and widths that used to crash the process ---------------------------------------
# Each case runs in a child process, so a segfault fails the test instead of killing pytest.

_CHILD_PRELUDE = """
import json, sys, threading
import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
import reco_fast
from reco_fast import CompileError

def max_diff(model, estimator, X):
    expected = estimator.predict_proba(X)[:, 1]
    worst = 0.0
    for name in model.available_backends():
        m = model.using(name)
        for got in (
            m.predict_proba_features(X),
            m.predict_proba_features(X.astype(np.float32)),
            np.asarray([m._one(row) for row in X[:5].tolist()]),
        ):
            worst = max(worst, float(np.max(np.abs(got - expected[: len(got)]))))
    return worst
"""


def _run_child(body: str, tmp_path: Path, timeout: float = 240) -> dict:
    import json
    import subprocess
    import sys

    from tests.helpers import subprocess_env

    script = tmp_path / "child.py"
    script.write_text(_CHILD_PRELUDE + body)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "artifact")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_early_stopped_estimator_compiles_its_fitted_trees(seed: int, tmp_path: Path) -> None:
    """n_iter_no_change stops after 15-30 of 500 trees: treelite read n_estimators trees
    from the shorter estimators_ (segfault, or a raw TreeliteError)."""
    result = _run_child(
        f"""
rng = np.random.default_rng({seed})
X = rng.normal(size=(600, 5))
y = (X[:, 0] + rng.normal(size=600) > 0).astype(int)
est = GradientBoostingClassifier(
    n_estimators=500, n_iter_no_change=3, max_depth=3, random_state={seed}
).fit(X, y)
model = reco_fast.compile_model(est, sys.argv[1], verify_X=X)
print(json.dumps({{"fitted": len(est.estimators_), "n_estimators": est.n_estimators,
                  "n_trees": model.metadata["n_trees"], "diff": max_diff(model, est, X)}}))
""",
        tmp_path,
    )
    assert result["fitted"] < result["n_estimators"] == 500  # early stopping happened
    assert result["n_trees"] == result["fitted"]
    assert result["diff"] <= TOLERANCE


@pytest.mark.parametrize("n_estimators", [51, 10])
def test_set_params_after_fit_compiles_what_sklearn_predicts(
    n_estimators: int, tmp_path: Path
) -> None:
    """set_params(n_estimators=...) on a fitted 50-tree model: scikit-learn still predicts
    with the 50 fitted trees; 51 used to segfault, 10 used to be refused."""
    result = _run_child(
        f"""
rng = np.random.default_rng(0)
X = rng.normal(size=(300, 4))
y = (X[:, 0] - X[:, 1] + rng.normal(size=300) > 0).astype(int)
est = GradientBoostingClassifier(n_estimators=50, max_depth=2, random_state=0).fit(X, y)
est.set_params(n_estimators={n_estimators})
model = reco_fast.compile_model(est, sys.argv[1], verify_X=X)
print(json.dumps({{"n_trees": model.metadata["n_trees"], "diff": max_diff(model, est, X),
                  "n_estimators": est.n_estimators}}))
""",
        tmp_path,
    )
    assert result["n_trees"] == 50
    assert result["n_estimators"] == n_estimators  # the caller's estimator is untouched
    assert result["diff"] <= TOLERANCE


def test_treelite_errors_are_compile_errors(monkeypatch, tmp_path: Path) -> None:
    import treelite

    def broken(estimator):
        raise treelite.TreeliteError("Check failed: something inside treelite\n" + "x" * 5000)

    monkeypatch.setattr(treelite.sklearn, "import_model", broken)
    X, y = _data()
    estimator = GradientBoostingClassifier(n_estimators=3).fit(X, y)
    out = tmp_path / "out"
    with pytest.raises(CompileError, match="treelite cannot import this estimator") as exc:
        reco_fast.compile_model(estimator, out)
    assert len(str(exc.value)) < 400
    nothing_written(tmp_path, out)


def test_wide_model_scores_in_a_thread_with_a_small_stack(tmp_path: Path) -> None:
    """20,000 features: the AVX-512 kernel kept 64 bytes per feature on the C stack (1.3 MB),
    which overflows a 1 MiB thread stack. Row buffers now come from the heap beyond a few KB."""
    result = _run_child(
        """
rng = np.random.default_rng(0)
n = 20_000
X = rng.normal(size=(40, n)).astype(np.float32).astype(np.float64)
y = (X[:, 0] + X[:, -1] > 0).astype(int)
est = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(X, y)
compiled = reco_fast.compile_model(est, sys.argv[1], verify_X=X)
out = {}
def score():
    model = reco_fast.load(sys.argv[1])  # the golden checks run every backend too
    out["diff"] = max_diff(model, est, X)
    out["backends"] = list(model.available_backends())
threading.stack_size(1 << 20)
t = threading.Thread(target=score)
t.start()
t.join()
print(json.dumps(out))
""",
        tmp_path,
    )
    assert "tl2cgen" in result["backends"] and len(result["backends"]) >= 2
    assert result["diff"] <= TOLERANCE


def test_kernel_out_of_memory_is_a_memory_error(built: Built) -> None:
    """A kernel that cannot allocate its row buffer returns -2: never unscored output."""
    model = built.model
    X = np.ascontiguousarray(built.split.X_test[:4], dtype=np.float64)
    with pytest.raises(MemoryError):
        model._run(lambda *args: -2, "double[]", X)
