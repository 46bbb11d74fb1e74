"""Whole-catalog top-10 at catalog sizes 250 / 10k / 100k / 1M (issue 13).

Each size is one pytest-benchmark group with two members measured in the same run:
``cells`` (``Model.recommend``: threshold cells above 2,048 products) and
``per-product`` (the same model with the cell index off: every product scored by the
exact kernel). Both give the same answer (asserted). The gates compare them as ratios
measured side by side, so machine load cancels; absolute ceilings are 3x the issue's
targets (100k <= 200 us, 1M <= 2 ms; with_catalog of 1M <= 2 s), and the bytes per
product held (<= 64) are counted, not timed.

    python -m pytest benchmarks/test_topk.py --benchmark-enable
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from reco_fast.tools.bench import CATALOG_K, sample_session, synthetic_catalog, time_calls

SIZES = (250, 10_000, 100_000, 1_000_000)
CEILING_US = {100_000: 3 * 200.0, 1_000_000: 3 * 2_000.0}
"""3x the issue's targets; 250 products (target 10 us) is not gated: see the README."""
MIN_SPEEDUP = {10_000: 3.0, 100_000: 20.0, 1_000_000: 100.0}
"""Cells over per-product kernel, medians in one run (measured: ~18x, ~250x, ~2,400x)."""
MAX_BYTES_PER_PRODUCT = 64.0
MAX_WITH_CATALOG_S = 3 * 2.0

_sized: dict[int, tuple[Any, float]] = {}


def _model(env: Any, n: int) -> tuple[Any, float]:
    if n not in _sized:
        columns = synthetic_catalog(env.model, n)
        start = time.perf_counter()
        model = env.model.with_catalog(columns)
        _sized[n] = (model, time.perf_counter() - start)
    return _sized[n]


@pytest.mark.parametrize("n", SIZES, ids=[f"{n}" for n in SIZES])
@pytest.mark.parametrize("impl", ["cells", "per-product"])
def test_recommend_at_catalog_size(benchmark: Any, env: Any, impl: str, n: int) -> None:
    model, _ = _model(env, n)
    session = sample_session(model)
    target = model if impl == "cells" else model._scoring_every_product()
    benchmark.group = f"recommend top-{CATALOG_K} @ {n:,} products"
    rounds = 500 if impl == "cells" else max(5, min(500, 2_000_000 // n))
    got = benchmark.pedantic(
        target.recommend,
        args=(session,),
        kwargs={"k": CATALOG_K, "threshold": 0.0},
        rounds=rounds,
        warmup_rounds=max(1, rounds // 10),
    )
    want = model._scoring_every_product().recommend(session, k=CATALOG_K, threshold=0.0)
    assert [(r.product_id, r.probability) for r in got] == [
        (r.product_id, r.probability) for r in want
    ]


@pytest.mark.parametrize("n", sorted(MIN_SPEEDUP))
def test_cells_beat_the_per_product_kernel(env: Any, n: int) -> None:
    model, _ = _model(env, n)
    assert model.uses_cells
    session = sample_session(model)
    every = model._scoring_every_product()
    fast, slow = [], []
    slow_rounds = max(5, min(200, 1_000_000 // n))
    for _ in range(5):  # alternating blocks: both see the same load
        fast.append(
            time_calls(lambda: model.recommend(session, k=CATALOG_K, threshold=0.0), 100, 5)
        )
        slow.append(
            time_calls(lambda: every.recommend(session, k=CATALOG_K, threshold=0.0), slow_rounds, 1)
        )
    speedup = float(np.median(np.concatenate(slow)) / np.median(np.concatenate(fast)))
    assert speedup >= MIN_SPEEDUP[n], f"{n:,} products: cells only {speedup:.1f}x faster"
    if n in CEILING_US:
        p50_us = float(np.median(np.concatenate(fast))) / 1e3
        assert p50_us <= CEILING_US[n], f"{n:,} products: recommend p50 {p50_us:.0f} us"


def test_a_million_products_attach_fast_and_small(env: Any) -> None:
    model, seconds = _model(env, 1_000_000)
    per_product = model.catalog_nbytes / 1_000_000
    assert per_product <= MAX_BYTES_PER_PRODUCT, f"{per_product:.1f} bytes per product"
    assert seconds <= MAX_WITH_CATALOG_S, f"with_catalog took {seconds:.2f} s"
