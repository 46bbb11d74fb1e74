"""Fixtures for the performance suite: one build per session, and its honest peers.

``env`` builds the default artifact into pytest's temporary directory
(``reco_fast.build.pipeline.build``), refits the same scikit-learn estimator on the
same split (``random_state=42`` makes it identical) and exports tl2cgen's own
predictor library from it. Before any timing, both peers are checked to give
the artifact's probabilities to 1e-12, so every comparison is between
implementations of one model.

The peers score with reco_fast's own feature code (``FeatureBuilder.row`` and
the candidate matrix of ``recommend``): only the tree evaluation differs, so
every ratio measures the evaluator and its calling overhead, nothing else.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reco_fast
from benchmarks._perf import (
    GATE,
    KNOWN_FAILING,
    PREDICTOR,
    RECO,
    RECO_TL2CGEN,
    SKLEARN,
    Outcome,
    Ratio,
    Stat,
    paired,
    percentile,
)
from reco_fast.build import pipeline, train
from reco_fast.build.data import DEFAULT_CATALOG_FILE, DEFAULT_LOG_FILE
from reco_fast.build.data import load as load_data
from reco_fast.features.schema import LABEL
from reco_fast.serve.recommend import recommend
from reco_fast.tools import bench

TOLERANCE = 1e-12


class Peer:
    """A model-shaped scorer: reco_fast's features and recommend(), another evaluator.

    ``recommend`` and ``SessionTracker`` only need ``builder``, ``threshold`` and a
    scoring hook (``_predict_prefix``: the session's features in front of each
    candidate's; ``_predict_f64``: whole rows), so the peer runs exactly
    reco_fast's code around its own scoring call. The peer assembles the full
    rows itself, as a caller of its predict function would have to.
    """

    def __init__(self, name: str, model: reco_fast.Model, score: Callable[[np.ndarray], Any]):
        self.name = name
        self.builder = model.builder
        self.threshold = model.threshold
        self._score = score

    def _predict_f64(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._score(X), dtype=np.float64).reshape(-1)

    def _top_candidates(self, *args: Any) -> None:
        return None  # no compiled top-k: recommend() scores through _predict_prefix

    def _predict_prefix(self, prefix: Any, rest: np.ndarray) -> np.ndarray:
        n_prefix = len(prefix)  # rest is feature-major: (n_rest_features, n_rows)
        X = np.empty((rest.shape[1], n_prefix + rest.shape[0]), dtype=np.float64)
        X[:, :n_prefix] = prefix
        X[:, n_prefix:] = rest.T
        return self._predict_f64(X)

    def predict_proba(self, session: dict[str, Any]) -> float:
        return float(self._predict_f64(np.asarray([self.builder.row(session)]))[0])

    def predict_proba_features(self, X: np.ndarray) -> np.ndarray:
        return self._predict_f64(X)

    def recommend(self, session: Any, k: int = 3, threshold: float | None = None, **kw: Any):
        return recommend(self, session, k, threshold, **kw)


def make_impl(name: str, model: reco_fast.Model, estimator: Any, predictor: Any) -> Any:
    if name == RECO:
        return model
    if name == RECO_TL2CGEN:
        return model.using("tl2cgen")
    if name == SKLEARN:
        return Peer(name, model, lambda X: estimator.predict_proba(X)[:, 1])
    if name == PREDICTOR:
        import tl2cgen

        # float32 rows, as scikit-learn rounds them: a float64 DMatrix gives other answers
        return Peer(
            name,
            model,
            lambda X: predictor.predict(tl2cgen.DMatrix(np.asarray(X, dtype=np.float32))),
        )
    raise KeyError(name)


@dataclass(frozen=True)
class Env:
    path: Path
    model: reco_fast.Model  # the artifact's default backend
    estimator: Any  # the refitted GradientBoostingClassifier
    predictor: Any  # tl2cgen.Predictor(nthread=1)
    X: np.ndarray  # the log's feature matrix, every row
    session: dict[str, Any]  # reco_fast.tools.bench.sample_session(model): what the CLI measures
    cores: int

    def impl(self, name: str) -> Any:
        """The model-shaped object of an implementation."""
        return make_impl(name, self.model, self.estimator, self.predictor)

    def batch(self, n: int) -> np.ndarray:
        """n feature rows of the real log (repeated past its length), C-contiguous."""
        return np.ascontiguousarray(np.resize(self.X, (n, self.X.shape[1])))


def _export_predictor(estimator: Any, tmp: Path) -> Any:
    import tl2cgen
    import treelite

    tl_model = treelite.sklearn.import_model(estimator)
    libpath = tmp / ("tl2cgen_predictor" + (".so" if os.name != "nt" else ".dll"))
    tl2cgen.export_lib(tl_model, toolchain="gcc", libpath=str(libpath), params={})
    return tl2cgen.Predictor(str(libpath), nthread=1)


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    tmp = tmp_path_factory.mktemp("bench")
    out, data_dir = tmp / "artifact", tmp / "data"
    # uncalibrated: the peers (scikit-learn, tl2cgen.Predictor) give the estimator's own
    # probabilities; a calibrated build serves CalibratedClassifierCV's, and its recommend
    # ranks every product in numpy (README, "Calibration and thresholds")
    pipeline.build(out=out, data_dir=data_dir, calibration=None)
    model = reco_fast.load(out)

    # the estimator the pipeline trained, refitted on the same rows and split
    dataset = load_data(data_dir / DEFAULT_LOG_FILE, data_dir / DEFAULT_CATALOG_FILE)
    frame = dataset.log
    X = model.builder.transform({c: frame[c].to_numpy() for c in frame.columns})
    y = frame[LABEL].to_numpy()
    parts = train.split(X, y)
    estimator, _ = train.fit(parts.X_train, parts.y_train)
    predictor = _export_predictor(estimator, tmp)

    expected = model.predict_proba_features(parts.X_test)
    for name in (SKLEARN, PREDICTOR):
        got = make_impl(name, model, estimator, predictor)._predict_f64(parts.X_test)
        diff = float(np.max(np.abs(got - expected)))
        assert diff <= TOLERANCE, f"{name} differs from the artifact by {diff:.3g}"
    return Env(
        out, model, estimator, predictor, X, bench.sample_session(model), bench.usable_cores()
    )


RESULTS: dict[str, dict[str, Stat]] = {}
"""results[group][impl] of this run, filled by ``record``; read by the gate tests."""


def _record(
    benchmark: Any, group: str, impl: str, rows: int = 1, threads: int = 1, backend: str = ""
) -> None:
    """Keep this benchmark's median and p99 (ns per call or per row) for the gates and JSON."""
    benchmark.extra_info.update(impl=impl, rows=rows, threads=threads)
    if impl.startswith(RECO) and impl != RECO_TL2CGEN:
        benchmark.extra_info["backend"] = backend
    if benchmark.disabled or not benchmark.stats:
        return
    data = [d * 1e9 / rows for d in benchmark.stats.stats.data]
    stat = Stat(percentile(data, 50), percentile(data, 99), len(data), rows, threads)
    benchmark.extra_info.update(median_ns=stat.median, p99_ns=stat.p99)
    RESULTS.setdefault(group, {})[impl] = stat


@pytest.fixture
def record(env: Env) -> Callable[..., None]:
    """record(benchmark, group, impl, rows=1, threads=1), after benchmark.pedantic."""
    return functools.partial(_record, backend=env.model.backend)


PAIRED: dict[str, dict[str, float]] = {}
"""The paired measurement behind each ratio gate, written into the JSON for report.py."""


def _skip_if_disabled(config: pytest.Config) -> None:
    if config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"):
        pytest.skip("benchmarks disabled: run with --benchmark-enable to check the gates")


def _assert(name: str, outcome: Outcome) -> None:
    if not outcome.passed and name in KNOWN_FAILING:
        unit = "" if outcome.unit == "x" else " "
        pytest.xfail(
            reason=f"{name}: measured {outcome.measured:.3g}{unit}{outcome.unit}, target "
            f"{outcome.required:g}{unit}{outcome.unit} [{outcome.detail}]"
        )
    assert outcome.passed, f"{name}: {outcome.detail}"


@pytest.fixture
def check_ceiling(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Assert a Ceiling gate on this run's pytest-benchmark stats; skip when not measured."""

    def check(name: str) -> None:
        _skip_if_disabled(request.config)
        outcome = GATE[name].evaluate(RESULTS)
        if outcome.measured is None:
            pytest.skip(f"{name}: not measured in this run (deselected or skipped)")
        _assert(name, outcome)

    return check


@pytest.fixture
def check_ratio(request: pytest.FixtureRequest) -> Callable[..., None]:
    """check(name, mine, peer, (n_mine, n_peer), threads=1): a Ratio gate, measured now.

    reco_fast and the peer run in alternating blocks (``_perf.paired``), so both
    see the same machine load; the gate compares the two medians.
    """

    def check(
        name: str,
        mine: Callable[[], object],
        peer: Callable[[], object],
        rounds: tuple[int, int],
        threads: int = 1,
    ) -> None:
        _skip_if_disabled(request.config)
        gate = GATE[name]
        assert isinstance(gate, Ratio)
        t_mine, t_peer = paired(mine, peer, rounds)
        outcome = gate.judge(
            t_mine, t_peer, threads, f" (alternating blocks, {rounds[0]} + {rounds[1]} calls)"
        )
        PAIRED[name] = {
            "mine_ns": t_mine,
            "peer_ns": t_peer,
            "ratio": outcome.measured,
            "required": outcome.required,
            "rounds_mine": rounds[0],
            "rounds_peer": rounds[1],
            "threads": threads,
        }
        _assert(name, outcome)

    return check


PEERS_LAST = "benchmarks/test_families.py"
"""Loads the peers' runtimes (LLVM through lleaves, ONNX Runtime, XGBoost, LightGBM) into
the process. Run before test_impressions.py (two runs of both files), recommend measured
50-55 µs there instead of 35 µs alone, and its 2 µs logging gate failed; they run last."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run :data:`PEERS_LAST`'s benchmarks after every other benchmark."""
    items.sort(key=lambda item: item.nodeid.startswith(PEERS_LAST))


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    """Put what report.py prints about the machine into the run's JSON."""
    import cffi
    import sklearn
    import tl2cgen
    import treelite

    info = bench.machine_info()
    info.update(
        reco_fast=reco_fast.__version__,
        scikit_learn=sklearn.__version__,
        treelite=treelite.__version__,
        tl2cgen=tl2cgen.__version__,
        cffi=cffi.__version__,
    )
    info["peers"] = _installed(PEER_DISTRIBUTIONS)
    machine_info["reco_fast_bench"] = info


PEER_DISTRIBUTIONS = (
    "xgboost",
    "xgboost-cpu",
    "lightgbm",
    "lleaves",
    "llvmlite",
    "onnxruntime",
    "onnx",
    "skl2onnx",
    "onnxmltools",
)
"""The optional libraries benchmarks/test_families.py compares with (the ``peers`` extra)."""


def _installed(names: tuple[str, ...]) -> dict[str, str]:
    """name -> version of each distribution installed (read from metadata, not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict) -> None:
    """The paired ratio measurements of the gates, for report.py."""
    output_json["reco_fast_paired"] = dict(PAIRED)
