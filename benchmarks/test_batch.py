"""Batches of feature rows: ``predict_proba_features(X)`` in ns per row, one thread.

Rows are the generated log's feature matrix (repeated past its 15,000 rows),
given to every implementation as the same C-contiguous float64 array, and each
call returns probabilities: reco_fast's timing includes its validation and
float32 rounding, scikit-learn's its input checks, tl2cgen.Predictor's the float32
DMatrix it needs (a float64 one gives other answers) and its predict call on one
thread. The Predictor's predict() alone, on a DMatrix built beforehand, is
measured too, for reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._perf import (
    BATCH_SIZES,
    GATES,
    IMPLS,
    LARGEST,
    PREDICT_ONLY,
    PREDICTOR,
    RECO,
    SKLEARN,
    THREADED,
)

# per-call cost estimate (ns): overhead + per row; rounds fill about BUDGET_NS
COST = {
    RECO: (15_000, 400),
    SKLEARN: (200_000, 2_500),
    PREDICTOR: (40_000, 2_500),
    PREDICT_ONLY: (20_000, 2_000),
}
COST_DEFAULT = (20_000, 2_000)
BUDGET_NS = 400e6


def rounds_for(impl: str, n: int) -> int:
    overhead, per_row = COST.get(impl, COST_DEFAULT)
    return int(min(5_000, max(5, BUDGET_NS / (overhead + per_row * n))))


@pytest.fixture(scope="module")
def expected(env):
    X = env.batch(LARGEST)
    return X, env.model.predict_proba_features(X)


@pytest.mark.parametrize("impl", (*IMPLS, PREDICT_ONLY))
@pytest.mark.parametrize("n", BATCH_SIZES)
def test_batch(benchmark, env, record, expected, impl, n):
    import tl2cgen

    benchmark.group = f"batch-{n}"
    X = np.ascontiguousarray(expected[0][:n])
    rounds = rounds_for(impl, n)
    if impl == PREDICT_ONLY:
        dmat = tl2cgen.DMatrix(X.astype(np.float32))
        fn, args = env.predictor.predict, (dmat,)
    else:
        fn, args = env.impl(impl).predict_proba_features, (X,)
    out = benchmark.pedantic(fn, args=args, rounds=rounds, warmup_rounds=max(1, rounds // 10))
    record(benchmark, f"batch-{n}", impl, rows=n)
    got = np.asarray(out, dtype=np.float64).reshape(-1)
    assert np.max(np.abs(got - expected[1][:n])) <= 1e-12


@pytest.mark.parametrize("threads", ["1", "cores"])
def test_threads(benchmark, env, record, expected, threads):
    """The largest batch on one thread and on every usable core (the GIL is released)."""
    n_threads = 1 if threads == "1" else env.cores
    if threads == "cores" and n_threads < 2:
        pytest.skip("one usable core: nothing to scale over")
    benchmark.group = "threads"
    X = expected[0]
    rounds = rounds_for(RECO, LARGEST)
    out = benchmark.pedantic(
        env.model.predict_proba_features,
        args=(X,),
        kwargs={"n_threads": n_threads},
        rounds=rounds,
        warmup_rounds=2,
    )
    record(benchmark, "threads", RECO if threads == "1" else THREADED, LARGEST, n_threads)
    assert np.max(np.abs(out - expected[1])) <= 1e-12


@pytest.mark.parametrize(
    "gate", [g.name for g in GATES if g.group == f"batch-{LARGEST}" and g.kind == "ceiling"]
)
def test_ceiling(check_ceiling, gate):
    check_ceiling(gate)


PAIRED_ROUNDS = (10, 10)  # (reco_fast, peer) calls; a pair is about 0.2 s here


def test_ratio_vs_predictor(check_ratio, env, expected):
    """tl2cgen's own predictor on one thread, from the same float64 rows."""
    X = expected[0]
    model, peer = env.model, env.impl(PREDICTOR)
    check_ratio(
        f"batch {LARGEST:,} vs tl2cgen.Predictor",
        lambda: model.predict_proba_features(X),
        lambda: peer.predict_proba_features(X),
        PAIRED_ROUNDS,
    )


def test_thread_scaling(check_ratio, env, expected):
    """n_threads=cores against n_threads=1 on the same rows, alternating."""
    if env.cores < 2:
        pytest.skip("one usable core: nothing to scale over")
    X, model, cores = expected[0], env.model, env.cores
    check_ratio(
        "n_threads scaling",
        lambda: model.predict_proba_features(X, n_threads=cores),
        lambda: model.predict_proba_features(X),
        PAIRED_ROUNDS,
        threads=cores,
    )
