"""Every model family side by side with its own library and the peers, one run.

Each family (scikit-learn ``GradientBoostingClassifier`` and
``HistGradientBoostingClassifier``, XGBoost ``binary:logistic``, LightGBM ``binary`` and
``lambdarank``) is trained on the same synthetic feature matrix
(``make_classification``: 24 features, 100 trees) and compiled with
``reco_fast.compile_model`` into pytest's temporary directory. The same fitted model is
then scored by

- its own library (``predict_proba(X)[:, 1]``; the ranker's ``predict(X)``),
- reco_fast (``predict_proba_features``; the ranker's ``decision_function``),
- treelite's GTIL (``treelite.gtil.predict`` on the model from treelite's own importer),
- lleaves (LightGBM only: the model file compiled with LLVM),
- ONNX Runtime (the model converted by skl2onnx or onnxmltools; float32 input),

on the same 10,000 float64 rows (held out from training), one thread each
(``threadpoolctl`` limits OpenMP to one thread; every peer is asked for one). Timed
cases: one row per call (``single``, ns per call) and 10,000 rows per call
(``batch-10000``, ns per row). Each implementation's input conversion is inside its
timing (ONNX Runtime's float32 copy, for one).

Exactness is measured before any timing: the largest |difference| from the library's
own output over the 10,000 rows, recorded in every benchmark's ``extra_info``
(``max_abs_diff``) for ``benchmarks/families_report.py``. The asserts are the test:
reco_fast equals the library to 1e-12 (XGBoost: to the float32 bound its build
recorded, ``metadata.verification["tolerance"]``); a peer must be within
``SAME_MODEL`` (a check that it scores the same model, not an exactness claim). No
speed is asserted.

Peers are optional (``pip install -e '.[peers]'``): a test whose peer, or whose
family's library, is not installed is skipped.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reco_fast
from benchmarks._perf import percentile

pytest.importorskip("sklearn")
pytest.importorskip("treelite")

SUITE = "families"
N_FEATURES = 24
N_TREES = 100
TRAIN_ROWS = 5_000
BATCH = 10_000
GROUP_SIZE = 20  # the ranker's query groups (rows per group)
SAME_MODEL = 1e-3
"""A peer further than this from the library is not scoring the same model."""

LIBRARY = "library"
RECO = "reco_fast"
GTIL = "treelite.gtil"
LLEAVES = "lleaves"
ORT = "onnxruntime"
IMPLS = (LIBRARY, RECO, GTIL, LLEAVES, ORT)
CASES = ("single", f"batch-{BATCH}")


@dataclass(frozen=True)
class Spec:
    name: str
    title: str  # what the README calls the family
    library: str  # distribution to import (importorskip)
    impls: tuple[str, ...]
    reference: str  # the library call reco_fast is compared with


SPECS = (
    Spec(
        "sklearn-gb",
        "scikit-learn GradientBoostingClassifier, depth 4",
        "sklearn",
        (LIBRARY, RECO, GTIL, ORT),
        "predict_proba",
    ),
    Spec(
        "sklearn-hgb",
        "scikit-learn HistGradientBoostingClassifier, depth 6",
        "sklearn",
        (LIBRARY, RECO, GTIL, ORT),
        "predict_proba",
    ),
    Spec(
        "xgboost",
        "XGBoost binary:logistic, depth 6",
        "xgboost",
        (LIBRARY, RECO, GTIL, ORT),
        "predict_proba",
    ),
    Spec(
        "lightgbm",
        "LightGBM binary, 31 leaves",
        "lightgbm",
        (LIBRARY, RECO, GTIL, LLEAVES, ORT),
        "predict_proba",
    ),
    Spec(
        "lightgbm-lambdarank",
        "LightGBM lambdarank, 31 leaves",
        "lightgbm",
        (LIBRARY, RECO, GTIL, LLEAVES, ORT),
        "predict",
    ),
)
SPEC = {s.name: s for s in SPECS}


@dataclass
class Family:
    spec: Spec
    model: reco_fast.Model
    expected: np.ndarray  # the library's output on X, float64 (n,)
    X: np.ndarray  # the BATCH evaluation rows, float64 C-contiguous
    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    diffs: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # impl -> why not measured
    tolerance: float = 1e-12


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=TRAIN_ROWS + BATCH,
        n_features=N_FEATURES,
        n_informative=12,
        random_state=0,
    )
    return X[:TRAIN_ROWS], y[:TRAIN_ROWS], np.ascontiguousarray(X[TRAIN_ROWS:])


def _fit(name: str, X: np.ndarray, y: np.ndarray) -> Any:
    common = {"n_estimators": N_TREES, "random_state": 0}
    if name == "sklearn-gb":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(max_depth=4, **common).fit(X, y)
    if name == "sklearn-hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=N_TREES, max_depth=6, early_stopping=False, random_state=0
        ).fit(X, y)
    if name == "xgboost":
        xgboost = pytest.importorskip("xgboost")
        return xgboost.XGBClassifier(max_depth=6, n_jobs=1, **common).fit(X, y)
    lightgbm = pytest.importorskip("lightgbm")
    kw = {"num_leaves": 31, "n_jobs": 1, "verbose": -1, **common}
    if name == "lightgbm":
        return lightgbm.LGBMClassifier(**kw).fit(X, y)
    return lightgbm.LGBMRanker(**kw).fit(X, y, group=[GROUP_SIZE] * (len(X) // GROUP_SIZE))


def _library(name: str, est: Any) -> Callable[[np.ndarray], np.ndarray]:
    if name == "lightgbm-lambdarank":
        return lambda X: est.predict(X)
    return lambda X: est.predict_proba(X)[:, 1]


def _reco(name: str, model: reco_fast.Model) -> Callable[[np.ndarray], np.ndarray]:
    if name == "lightgbm-lambdarank":
        return model.decision_function
    return model.predict_proba_features


def _gtil(name: str, est: Any) -> Callable[[np.ndarray], np.ndarray]:
    import treelite
    import treelite.gtil

    if name.startswith("sklearn"):
        tl = treelite.sklearn.import_model(est)
    elif name == "xgboost":
        tl = treelite.frontend.from_xgboost(est.get_booster())
    else:
        tl = treelite.frontend.from_lightgbm(est.booster_)
    return lambda X: treelite.gtil.predict(tl, X, nthread=1).reshape(X.shape[0], -1)[:, -1]


def _lleaves(name: str, est: Any, tmp: Path) -> Callable[[np.ndarray], np.ndarray]:
    lleaves = pytest.importorskip("lleaves")
    path = tmp / f"{name}.txt"
    est.booster_.save_model(str(path))
    m = lleaves.Model(model_file=str(path))
    m.compile(cache=str(tmp / f"{name}.lleaves.so"))
    return lambda X: m.predict(X, n_jobs=1)


def _ort(name: str, est: Any) -> Callable[[np.ndarray], np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    if name.startswith("sklearn"):
        skl2onnx = pytest.importorskip("skl2onnx")
        onx = skl2onnx.to_onnx(
            est,
            np.zeros((1, N_FEATURES), dtype=np.float32),
            options={"zipmap": False},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    else:
        onnxmltools = pytest.importorskip("onnxmltools")
        from onnxmltools.convert.common.data_types import FloatTensorType

        types = [("X", FloatTensorType([None, N_FEATURES]))]
        if name == "xgboost":
            onx = onnxmltools.convert_xgboost(est, initial_types=types, target_opset=15)
        else:
            onx = onnxmltools.convert_lightgbm(
                est, initial_types=types, target_opset=15, zipmap=False
            )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the converters' declared label shape ({1}) warns per batch
    sess = ort.InferenceSession(onx.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]
    out = "probabilities" if "probabilities" in outs else outs[0]
    return lambda X: sess.run([out], {inp: X.astype(np.float32)})[0].reshape(X.shape[0], -1)[:, -1]


def _build(spec: Spec, tmp: Path) -> Family:
    pytest.importorskip(spec.library)
    X_train, y_train, X = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tl2cgen's checkpoint-version warning
        est = _fit(spec.name, X_train, y_train)
        model = reco_fast.compile_model(est, tmp / "artifact", verify_X=X[:2_000])
    family = Family(spec, model, np.asarray(_library(spec.name, est)(X), dtype=np.float64), X)
    family.tolerance = float(model.metadata.verification["tolerance"])
    makers: dict[str, Callable[[], Callable[[np.ndarray], np.ndarray]]] = {
        LIBRARY: lambda: _library(spec.name, est),
        RECO: lambda: _reco(spec.name, model),
        GTIL: lambda: _gtil(spec.name, est),
        LLEAVES: lambda: _lleaves(spec.name, est, tmp),
        ORT: lambda: _ort(spec.name, est),
    }
    for impl in spec.impls:
        try:
            fn = makers[impl]()
        except pytest.skip.Exception as exc:
            family.skipped[impl] = str(exc.msg)
            continue
        family.fns[impl] = fn
        got = np.asarray(fn(X), dtype=np.float64).reshape(-1)
        family.diffs[impl] = float(np.max(np.abs(got - family.expected)))
    return family


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Family]:
    """families(name): the family trained, compiled and measured for exactness, once."""
    cache: dict[str, Family] = {}

    def get(name: str) -> Family:
        if name not in cache:
            cache[name] = _build(SPEC[name], tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One OpenMP thread for every library (HistGradientBoosting's predict uses them all)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_reco_fast_equals_its_library(families, name):
    """The test of this file: reco_fast gives the library's output on the 10,000 rows."""
    family = families(name)
    diff = family.diffs[RECO]
    assert diff <= family.tolerance, (
        f"{name}: reco_fast differs from the library by {diff:.3g} (tolerance {family.tolerance:.3g})"
    )
    if name != "xgboost":
        assert family.tolerance == 1e-12


def _rounds(fn: Callable[[], object], budget_s: float, lo: int, hi: int) -> int:
    fn()
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
    per_call = (time.perf_counter() - t0) / 3
    return int(min(hi, max(lo, budget_s / max(per_call, 1e-9))))


CASE_PARAMS = [
    pytest.param(s.name, case, impl, id=f"{s.name}-{case}-{impl}")
    for s in SPECS
    for case in CASES
    for impl in s.impls
]


@pytest.mark.parametrize(("name", "case", "impl"), CASE_PARAMS)
def test_family(benchmark, families, name, case, impl):
    family = families(name)
    if impl in family.skipped:
        pytest.skip(f"{impl}: {family.skipped[impl]}")
    fn = family.fns[impl]
    rows = 1 if case == "single" else BATCH
    X = np.ascontiguousarray(family.X[:rows])
    benchmark.group = f"{name}/{case}"
    benchmark.extra_info.update(
        suite=SUITE,
        family=name,
        title=family.spec.title,
        reference=family.spec.reference,
        case=case,
        impl=impl,
        rows=rows,
        threads=1,
        trees=N_TREES,
        features=N_FEATURES,
        eval_rows=BATCH,
        impls=list(family.spec.impls),
        max_abs_diff=family.diffs[impl],
    )
    if impl == RECO:
        benchmark.extra_info.update(
            reco_fast_backend=family.model.backend, tolerance=family.tolerance
        )
    if benchmark.disabled:
        out = benchmark(fn, X)
    else:
        budget, lo, hi = (0.3, 100, 3_000) if rows == 1 else (0.6, 5, 200)
        rounds = _rounds(lambda: fn(X), budget, lo, hi)
        out = benchmark.pedantic(
            fn, args=(X,), rounds=rounds, warmup_rounds=max(1, rounds // 10), iterations=1
        )
        data = [d * 1e9 / rows for d in benchmark.stats.stats.data]
        benchmark.extra_info.update(
            median_ns=percentile(data, 50), p99_ns=percentile(data, 99), rounds=len(data)
        )
    got = np.asarray(out, dtype=np.float64).reshape(-1)
    diff = float(np.max(np.abs(got - family.expected[:rows])))
    if impl == RECO:
        assert diff <= family.tolerance, f"{name}: reco_fast differs by {diff:.3g}"
    else:
        assert diff <= SAME_MODEL, f"{name}: {impl} differs from the library by {diff:.3g}"
