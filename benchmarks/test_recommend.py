"""Recommendations: the whole catalog scored for one session, then a tracked session.

Every implementation runs reco_fast's own ``recommend`` (session features
broadcast against the 250 catalog products, threshold, top k, reasons) and
``SessionTracker``: only the call that scores the candidate matrix differs.
"""

from __future__ import annotations

import pytest

import reco_fast
from benchmarks._perf import GATES, IMPLS, PREDICTOR, RECO, RECO_TL2CGEN, SKLEARN
from reco_fast.tools.bench import tracker_workload

K = 3
ROUNDS = {RECO: (3_000, 300), RECO_TL2CGEN: (1_000, 100), SKLEARN: (200, 20), PREDICTOR: (600, 60)}


def _step(env, impl, group):
    """One call of the group's workload for an implementation."""
    model = env.impl(impl)
    if group == "recommend":
        return lambda: model.recommend(env.session, K)
    tracker = reco_fast.SessionTracker(model)
    return tracker_workload(tracker, env.session, model.builder.catalog.product_ids.tolist(), K)


@pytest.mark.benchmark(group="recommend")
@pytest.mark.parametrize("impl", IMPLS)
def test_recommend(benchmark, env, record, impl):
    model = env.impl(impl)
    rounds, warmup = ROUNDS[impl]
    got = benchmark.pedantic(
        model.recommend, args=(env.session, K), rounds=rounds, warmup_rounds=warmup
    )
    record(benchmark, "recommend", impl)
    want = env.model.recommend(env.session, K)
    assert [r.product_id for r in got] == [r.product_id for r in want]
    assert all(abs(a.probability - b.probability) <= 1e-12 for a, b in zip(got, want, strict=True))


@pytest.mark.benchmark(group="event+recommend")
@pytest.mark.parametrize("impl", IMPLS)
def test_event_recommend(benchmark, env, record, impl):
    step = _step(env, impl, "event+recommend")
    rounds, warmup = ROUNDS[impl]
    got = benchmark.pedantic(step, rounds=rounds, warmup_rounds=warmup)
    record(benchmark, "event+recommend", impl)
    assert isinstance(got, list) and len(got) <= K


@pytest.mark.parametrize(
    "gate",
    [g.name for g in GATES if g.group in ("recommend", "event+recommend") and g.kind == "ceiling"],
)
def test_ceiling(check_ceiling, gate):
    check_ceiling(gate)


# (reco_fast calls, peer calls), run in alternating blocks so both see the same load
PAIRED_ROUNDS = {SKLEARN: (1_500, 200), PREDICTOR: (1_500, 600)}


@pytest.mark.parametrize(
    "gate",
    [g for g in GATES if g.group in ("recommend", "event+recommend") and g.kind == "ratio"],
    ids=str,
)
def test_ratio(check_ratio, env, gate):
    check_ratio(
        gate.name,
        _step(env, RECO, gate.group),
        _step(env, gate.peer, gate.group),
        PAIRED_ROUNDS[gate.peer],
    )
