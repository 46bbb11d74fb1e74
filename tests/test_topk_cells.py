"""The whole-catalog top-k by threshold cells equals brute force, bit for bit.

Brute force is the same model with the cell index removed: every product is scored by
the exact recommend kernel and sorted (probability, then catalog position). The fast
path must return the same products, in the same order, with the same probabilities, on
random catalogs up to 100,000 products whose prices sit on, and one cent either side
of, the model's price thresholds (so ties and boundary cells are common), and random
sessions; and it must actually prune (a test that passes because the cells gave up
would prove nothing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import reco_fast
from reco_fast.features import spec as _spec
from reco_fast.serve.cells import CELLS_MIN_PRODUCTS
from reco_fast.tools.bench import sample_session
from tests.helpers import Built


def _catalog(model: Any, n: int, rng: np.random.Generator) -> dict[str, Any]:
    """Random products whose prices crowd the model's price thresholds."""
    cats = list(model.builder.vocabulary.values("current_category"))
    present = rng.choice(cats, size=int(rng.integers(2, len(cats) + 1)), replace=False)
    cells = model._cells
    if cells is None:  # the default catalog is too small for an index: make one to read
        cells = model.with_catalog(
            {
                "product_id": [f"x{i}" for i in range(CELLS_MIN_PRODUCTS)],
                "category": [cats[0]] * CELLS_MIN_PRODUCTS,
                "price": np.linspace(1, 500, CELLS_MIN_PRODUCTS),
            }
        )._cells
    thresholds = np.unique(cells._arrays["p_thr"].astype(np.float64))
    thresholds = thresholds[(thresholds > 0) & (thresholds < 5000)]
    kind = rng.integers(3)
    if kind == 0:  # smooth, few ties
        prices = np.round(np.exp(rng.normal(4, 1.2, n)), 2)
    elif kind == 1:  # a handful of price points: huge ties
        prices = rng.choice([4.99, 9.99, 19.99, 49.99, 99.0, 100.0, 250.0], n)
    else:  # on and around the model's thresholds (and ratio cuts at 50.0)
        base = np.concatenate([thresholds, thresholds * 50.0])
        prices = rng.choice(base, n) + rng.choice([-0.01, 0.0, 0.01], n)
    prices = np.clip(prices, 0.0, 1e6)
    order = rng.permutation(n)  # catalog order is the id order: shuffle the ids
    return {
        "product_id": [f"P{i:07d}" for i in order],
        "category": rng.choice(present, n).tolist(),
        "price": prices,
    }


def _session(model: Any, rng: np.random.Generator) -> dict[str, Any]:
    s = sample_session(model)
    cats = model.builder.vocabulary.values("current_category")
    ids = model.builder.catalog.product_ids
    s["current_category"] = str(rng.choice(cats))
    s["current_price"] = float(
        rng.choice([50.0, 0.0, 0.01, float(np.round(rng.uniform(1, 400), 2))])
    )
    s["time_on_page_sec"] = float(rng.integers(0, 400))
    s["scroll_depth"] = float(rng.random())
    s["products_in_cart"] = int(rng.integers(0, 4))
    s["session_length_mins"] = float(rng.uniform(0, 40))
    s["products_viewed_count"] = int(rng.integers(1, 12))
    picks = rng.choice(len(ids), 4, replace=False)
    s["current_product_id"] = str(ids[picks[0]])
    for j in range(3):
        s[f"prev_product_{j + 1}"] = str(ids[picks[j + 1]]) if rng.random() < 0.7 else "NONE"
    s["cart_product_ids"] = [str(ids[p]) for p in rng.choice(len(ids), 2, replace=False)]
    return s


def _answer(recs: list[Any]) -> list[tuple[str, float]]:
    return [(r.product_id, r.probability) for r in recs]


@pytest.mark.parametrize("n", [CELLS_MIN_PRODUCTS, 10_000, 100_000])
def test_cells_equal_brute_force(built: Built, n: int) -> None:
    rng = np.random.default_rng(n)
    pruned = 0
    for _ in range(3):
        fast = built.model.with_catalog(_catalog(built.model, n, rng))
        assert fast._cells is not None
        slow = fast._scoring_every_product()
        for _ in range(25 if n < 100_000 else 10):
            session = _session(fast, rng)
            k = int(rng.choice([1, 3, 10, 50]))
            threshold = float(rng.choice([0.0, 0.3, 0.7, 0.95]))
            options: list[tuple[str, ...]] = [(), ("viewed",), ("in_cart",), ("viewed", "in_cart")]
            exclude = options[int(rng.integers(len(options)))]
            want = _answer(slow.recommend(session, k=k, threshold=threshold, exclude=exclude))
            got = _answer(fast.recommend(session, k=k, threshold=threshold, exclude=exclude))
            assert got == want, (n, k, threshold, exclude)
            row = fast.builder.session_row(session)
            cand = fast._cells.top(row, [], threshold, k, *fast.builder.catalog_arrays())
            assert cand is not None, "the cells gave up on a valid session"
            pruned += len(cand) < n / 4
    assert pruned > 0, "the cells never pruned: the comparison proved nothing"


def test_cells_apply_to_large_catalogs_only(built: Built) -> None:
    assert built.model._cells is None  # 250 products: every product is scored
    big = built.model.with_catalog(
        _catalog(built.model, CELLS_MIN_PRODUCTS, np.random.default_rng(1))
    )
    assert big._cells is not None


def _axes(expr: str) -> Any:
    fs = _spec.FeatureSet("t", (), (_spec.Feature("f", expr, ""),))
    return _spec.candidate_axes(fs)


@pytest.mark.parametrize(
    ("expr", "direction"),
    [
        ("rprice", 1),
        ("rprice / max(price, 0.01)", 1),
        ("rprice * 2.0 - 3.0", 1),
        ("0.0 - rprice", -1),
        ("rprice < 30", -1),
        ("rprice >= price", 1),
        ("clip(rprice / 300.0, 0.0, 1.0)", 1),
        ("rprice / price", None),  # the sign of price is not proved
        ("price / max(rprice, 1.0)", None),  # decreasing, but not proved by these rules
        ("rprice * rprice", None),
        ("rprice == 5", None),
    ],
)
def test_price_monotonicity_is_proved_or_refused(expr: str, direction: int | None) -> None:
    axes = _axes(expr)
    if direction is None:
        assert axes is None
    else:
        assert axes is not None and axes[0].axis == "price" and axes[0].direction == direction


def test_a_feature_reading_two_kinds_of_product_input_disables_the_cells() -> None:
    assert _axes("rprice + rcat") is None
    axes = _axes("rcat == cat")
    assert axes is not None and axes[0].axis == "category" and axes[0].reads_session


# ---- catalog updates while serving --------------------------------------------------------
def test_catalog_update_equals_a_catalog_built_from_scratch(built: Built) -> None:
    rng = np.random.default_rng(7)
    model = built.model.with_catalog(_catalog(built.model, 5_000, rng))
    catalog = model.builder.catalog
    ids = catalog.product_ids.tolist()
    cats = model.builder.vocabulary.values("current_category")
    reprice = {ids[10]: 1.5, ids[20]: 999.99}
    gone = [ids[30], ids[40]]
    new = [{"product_id": "NEW-1", "category": cats[0], "price": 42.0}]
    before = catalog.to_rows()
    updated = model.with_catalog_update(prices=reprice, add=new, remove=gone)

    rows = {p: (c, pr) for p, c, pr in catalog.to_rows() if p not in gone}
    rows.update({p: (rows[p][0], price) for p, price in reprice.items()})
    rows["NEW-1"] = (cats[0], 42.0)
    scratch = built.model.with_catalog(
        [{"product_id": p, "category": c, "price": pr} for p, (c, pr) in rows.items()]
    )
    assert updated.builder.catalog.to_rows() == scratch.builder.catalog.to_rows()
    assert updated.uses_cells
    for _ in range(10):
        session = _session(updated, rng)
        want = _answer(scratch._scoring_every_product().recommend(session, k=10, threshold=0.0))
        assert _answer(updated.recommend(session, k=10, threshold=0.0)) == want
    # the old model is untouched: requests in flight keep their catalog
    assert model.builder.catalog is catalog and catalog.to_rows() == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prices": {"no such product": 1.0}}, "prices"),
        ({"remove": ["no such product"]}, "remove"),
        ({"prices": {"P0000001": float("nan")}}, "price"),
        ({"prices": {"P0000001": -1.0}}, "price"),
        ({"add": [{"product_id": "P0000001", "category": "Books", "price": 1.0}]}, "product_id"),
        (
            {"add": [{"product_id": "N1", "category": "Spaceships", "price": 1.0}]},
            "current_category",
        ),
    ],
)
def test_a_bad_catalog_update_is_refused_naming_the_field(
    built: Built, change: dict[str, Any], field: str
) -> None:
    model = built.model.with_catalog(
        {
            "product_id": [f"P{i:07d}" for i in range(100)],
            "category": ["Books"] * 100,
            "price": np.linspace(1, 100, 100),
        }
    )
    with pytest.raises(reco_fast.InputError) as info:
        model.with_catalog_update(**change)
    assert info.value.field == field
    assert len(str(info.value)) < 400


def test_bench_reports_the_catalog_sizes(built: Built) -> None:
    from reco_fast.tools import bench

    report = bench.run(built.model, rounds=5, batch_sizes=(), catalog_sizes=(300, 3_000))
    table = bench.catalog_table(report)
    assert "| 300 |" in table and "| 3,000 |" in table
    assert report.case("recommend@3000").note == "threshold cells"
    assert report.case("recommend@300").note == "every product scored"
    assert report.case("with_catalog@3000").p50 > 0


def test_cells_that_disagree_at_attach_time_are_not_used(
    built: Built, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Attaching a catalog replays a golden session both ways; a disagreement (here a
    broken pruning that keeps only three products) turns the cells off, with a warning."""
    from reco_fast.serve import cells as cells_module

    columns = _catalog(built.model, CELLS_MIN_PRODUCTS, np.random.default_rng(3))
    assert built.model.with_catalog(columns).uses_cells
    monkeypatch.setattr(
        cells_module.CellIndex, "top", lambda self, *a, **kw: np.arange(3, dtype=np.int64)
    )
    with caplog.at_level("WARNING", logger="reco_fast.serve.model"):
        model = built.model.with_catalog(columns)
    assert not model.uses_cells
    assert "disagreed" in caplog.text


@pytest.mark.parametrize("n", [100, 70_000])  # a dict index, a binary-searched one
def test_catalog_lookups_take_str_subclasses_and_refuse_near_misses(n: int) -> None:
    from reco_fast.features.page import Catalog

    catalog = Catalog([f"P{i:07d}" for i in range(n)], ["Books"] * n, np.ones(n))
    assert catalog.position(np.str_("P0000007")) == 7
    assert catalog.position("P0000007") == 7
    for miss in ("P0000007\x00", "P000000", "", 7, None, b"P0000007"):
        assert catalog.position(miss) is None
