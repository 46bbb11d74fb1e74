"""One page view: a raw session dict -> its click probability, end to end.

reco_fast's lean scalar path (``Model.predict_proba(dict)``) against the same
features scored by scikit-learn's ``predict_proba`` and by tl2cgen's own
``Predictor`` (a one-row float32 DMatrix per call, as a service would build).
"""

from __future__ import annotations

import pytest

from benchmarks._perf import GATES, IMPLS, PREDICTOR, RECO, RECO_TL2CGEN, SKLEARN

# (rounds, warmup rounds): a few tenths of a second each on the reference machine
ROUNDS = {
    RECO: (20_000, 2_000),
    RECO_TL2CGEN: (20_000, 2_000),
    SKLEARN: (400, 40),
    PREDICTOR: (3_000, 300),
}


@pytest.mark.benchmark(group="single")
@pytest.mark.parametrize("impl", IMPLS)
def test_single(benchmark, env, record, impl):
    model = env.impl(impl)
    rounds, warmup = ROUNDS[impl]
    p = benchmark.pedantic(
        model.predict_proba, args=(env.session,), rounds=rounds, warmup_rounds=warmup
    )
    record(benchmark, "single", impl)
    assert isinstance(p, float)
    assert abs(p - env.model.predict_proba(env.session)) <= 1e-12


@pytest.mark.parametrize(
    "gate", [g.name for g in GATES if g.group == "single" and g.kind == "ceiling"]
)
def test_ceiling(check_ceiling, gate):
    check_ceiling(gate)


# (reco_fast calls, peer calls), run in alternating blocks so both see the same load
PAIRED_ROUNDS = {SKLEARN: (4_000, 400), PREDICTOR: (6_000, 3_000)}


@pytest.mark.parametrize(
    "gate", [g for g in GATES if g.group == "single" and g.kind == "ratio"], ids=str
)
def test_ratio(check_ratio, env, gate):
    mine, peer, session = env.model, env.impl(gate.peer), env.session
    check_ratio(
        gate.name,
        lambda: mine.predict_proba(session),
        lambda: peer.predict_proba(session),
        PAIRED_ROUNDS[gate.peer],
    )
