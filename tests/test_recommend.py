"""Top-k recommendations for a live session: Model.recommend and SessionTracker.recommend."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from reco_fast import Catalog, InputError, Recommendation, SessionTracker
from reco_fast.serve.recommend import CART_FIELD

REASONS = {
    "same category as the viewed product",
    "goes with what is in the cart",
    "matches what this session browsed",
    "an affordable add-on",
    "popular with shoppers like this one",
}


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("built").model


@pytest.fixture(scope="module")
def catalog(model: Any) -> dict[str, tuple[str, float]]:
    """product_id -> (category, price), as the model's catalog says."""
    return {p: (c, float(pr)) for p, c, pr in model.builder.catalog.to_rows()}


def by_category(catalog: dict[str, tuple[str, float]], category: str) -> list[str]:
    """The category's products, cheapest first."""
    return sorted((p for p, (c, _) in catalog.items() if c == category), key=lambda p: catalog[p])


@pytest.fixture(scope="module")
def sessions(model: Any, catalog: dict[str, tuple[str, float]]) -> list[dict[str, Any]]:
    """A few page views built by the tracker, plus edge cases written by hand."""
    ids = sorted(catalog)
    t = SessionTracker(model)
    t.page_view("a", ids[0], device_type="Mobile", traffic_source="Social", ts=0)
    first = t.context("a")
    t.engagement("a", time_on_page_sec=80, scroll_depth=0.75, clicked_product_image=1, ts=80)
    for i, p in enumerate(ids[1:5]):
        t.page_view("a", p, ts=100 + 60 * i)
    t.add_to_cart("a", ids[10], ts=400)
    t.add_to_cart("a", ids[11], ts=401)
    t.engagement("a", time_on_page_sec=25, scroll_depth=0.3, ts=420)
    busy = t.context("a")
    cat0, _ = catalog[ids[20]]
    free = {  # a free product: the price ratio divides by the 0.01 floor
        **busy,
        "current_product_id": ids[20],
        "current_category": cat0,
        "current_price": 0.0,
        "prev_product_1": "NONE",
        "prev_product_2": "NONE",
        "prev_product_3": "NONE",
        CART_FIELD: [],
        "products_in_cart": 0,
    }
    unknown_prev = dict(busy, prev_product_2="NOT-IN-CATALOG")  # viewed elsewhere: fine
    return [first, busy, free, unknown_prev]


def all_recs(model: Any, session: dict[str, Any], **kw: Any) -> list[Recommendation]:
    return model.recommend(session, k=10_000, threshold=0.0, **kw)


def viewed(session: dict[str, Any]) -> set[str]:
    return {session[f] for f in ("current_product_id", *(f"prev_product_{i}" for i in (1, 2, 3)))}


# ---- the answer's shape -------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 3, 10])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.8])
def test_at_most_k_sorted_and_at_or_above_threshold(model, sessions, k, threshold):
    for s in sessions:
        recs = model.recommend(s, k=k, threshold=threshold)
        assert isinstance(recs, list) and len(recs) <= k
        assert all(type(r) is Recommendation for r in recs)
        probs = [r.probability for r in recs]
        assert probs == sorted(probs, reverse=True)
        assert all(type(p) is float and threshold <= p <= 1.0 for p in probs)
        assert len({r.product_id for r in recs}) == len(recs)
        assert all(r.reason in REASONS for r in recs)
        # the top k of everything above the threshold
        everything = [r for r in all_recs(model, s) if r.probability >= threshold]
        assert recs == everything[:k]


def test_everything_is_ranked_when_k_is_large(model, sessions, catalog):
    busy = sessions[1]
    excluded = viewed(busy) | set(busy[CART_FIELD])
    recs = all_recs(model, busy)
    assert {r.product_id for r in recs} == set(catalog) - excluded
    assert len({r.probability for r in recs}) > 10  # the scores really vary by product


def test_default_threshold_is_the_artifacts(model, sessions):
    assert model.threshold == 0.7
    for s in sessions:
        assert model.recommend(s) == model.recommend(s, k=3, threshold=0.7)


def test_threshold_one_gives_an_empty_answer(model, sessions):
    for s in sessions:
        assert max(r.probability for r in all_recs(model, s)) < 1.0
        assert model.recommend(s, k=5, threshold=1.0) == []
        assert model.recommend(s, k=5, threshold=1) == []


def test_viewed_and_cart_are_excluded_by_default(model, sessions, catalog):
    busy = sessions[1]
    seen, cart = viewed(busy), set(busy[CART_FIELD])
    assert len(seen) == 4 and len(cart) == 2
    ids = {r.product_id for r in all_recs(model, busy)}
    assert not ids & (seen | cart)
    assert {r.product_id for r in all_recs(model, busy, exclude=())} == set(catalog)
    assert {r.product_id for r in all_recs(model, busy, exclude=["viewed"])} == set(catalog) - seen
    assert {r.product_id for r in all_recs(model, busy, exclude="in_cart")} == set(catalog) - cart
    # a product viewed outside the catalog is simply not a candidate
    assert {r.product_id for r in all_recs(model, sessions[3])} == set(catalog) - (
        viewed(sessions[3]) | cart
    )


def test_explicit_candidates_restrict_the_ranking(model, sessions, catalog):
    busy = sessions[1]
    cart = busy[CART_FIELD]
    pool = [p for p in sorted(catalog) if p not in viewed(busy) and p not in cart][:6]
    recs = model.recommend(busy, k=10, threshold=0.0, candidates=pool)
    assert {r.product_id for r in recs} == set(pool)
    assert model.recommend(busy, k=2, threshold=0.0, candidates=pool) == recs[:2]
    # excluded products stay excluded when listed; a product listed twice counts once
    listed = [*pool[:2], cart[0], busy["current_product_id"], pool[0]]
    recs = model.recommend(busy, k=10, threshold=0.0, candidates=listed)
    assert sorted(r.product_id for r in recs) == sorted(pool[:2])
    recs = model.recommend(busy, k=10, threshold=0.0, candidates=listed, exclude=())
    assert sorted(r.product_id for r in recs) == sorted(set(listed))
    assert model.recommend(busy, k=3, threshold=0.0, candidates=[]) == []
    assert model.recommend(busy, k=3, threshold=0.0, candidates=tuple(pool)) == model.recommend(
        busy, k=3, threshold=0.0, candidates=pool
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda p: ["NO-SUCH-PRODUCT"],
        lambda p: [p, "NO-SUCH-PRODUCT"],
        lambda p: [p, None],
        lambda p: [7],
        lambda p: p,
        lambda p: {p},
        lambda p: 5,
    ],
    ids=["unknown", "one unknown", "None", "int", "str", "set", "number"],
)
def test_bad_candidates_raise_input_error(model, sessions, catalog, make):
    with pytest.raises(InputError) as info:
        model.recommend(sessions[0], k=3, threshold=0.0, candidates=make(sorted(catalog)[30]))
    assert info.value.field == "candidates"


# ---- the scores are the model's scores ----------------------------------------------------
def test_probabilities_equal_predict_proba_of_each_product(model, sessions):
    """The broadcast candidate matrix is exactly the one-row path, product by product."""
    for s in sessions:
        for exclude in ((), ("viewed", "in_cart")):
            recs = all_recs(model, s, exclude=exclude)
            assert recs
            rows = [dict(s, recommended_product_id=r.product_id) for r in recs]
            one = np.array([model.predict_proba(row) for row in rows])
            batch = model.predict_proba(rows)
            got = np.array([r.probability for r in recs])
            np.testing.assert_allclose(got, one, rtol=0, atol=1e-15)
            np.testing.assert_allclose(got, batch, rtol=0, atol=1e-15)
            if not exclude:  # viewed products were scored, as viewed
                already = model.features(rows)[:, model.feature_names.index("rec_already_viewed")]
                assert already.tolist() == [float(r.product_id in viewed(s)) for r in recs]
                assert already.sum() == len(viewed(s) & {r.product_id for r in recs}) > 0


def test_reasons_follow_the_session(model, sessions, catalog):
    busy = sessions[1]
    current = busy["current_category"]
    cart_cats = {catalog[p][0] for p in busy[CART_FIELD]}
    for r in all_recs(model, busy):
        same = catalog[r.product_id][0] == current
        assert (r.reason == "same category as the viewed product") == same
        if not same and catalog[r.product_id][0] in cart_cats:
            assert r.reason == "goes with what is in the cart"


# ---- bad arguments --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": -1},
        {"k": 1.5},
        {"k": 3.0},
        {"k": "3"},
        {"k": True},
        {"k": None},
        {"threshold": -0.01},
        {"threshold": 1.01},
        {"threshold": math.nan},
        {"threshold": math.inf},
        {"threshold": "0.5"},
        {"threshold": True},
        {"threshold": [0.5]},
        {"threshold": 10**400},
        {"exclude": "everything"},
        {"exclude": ["viewed", "liked"]},
        {"exclude": [1, "x"]},
        {"exclude": None},
        {"exclude": 3},
        {"exclude": [["viewed"]]},
    ],
    ids=repr,
)
def test_bad_arguments_raise_input_error(model, sessions, kwargs):
    field = next(iter(kwargs))
    with pytest.raises(InputError) as info:
        model.recommend(sessions[1], **kwargs)
    assert info.value.field == field


def test_numpy_arguments_are_accepted(model, sessions):
    s = sessions[1]
    assert model.recommend(s, k=np.int64(4), threshold=np.float64(0.2)) == model.recommend(
        s, k=4, threshold=0.2
    )


@pytest.mark.parametrize(
    "change",
    [
        {CART_FIELD: [5]},
        {CART_FIELD: "PROD0001"},
        {"current_category": "Groceries"},
        {"scroll_depth": 1.5},
        {"current_product_id": 5},
    ],
    ids=repr,
)
def test_bad_session_raises_input_error(model, sessions, change):
    with pytest.raises(InputError):
        model.recommend(dict(sessions[1], **change), k=3, threshold=0.0)


# ---- a new catalog ----------------------------------------------------------------------------
def test_with_catalog_rescores_with_new_prices(model, sessions, catalog):
    busy = sessions[1]
    before = {r.product_id: r.probability for r in all_recs(model, busy)}
    target = next(iter(before))  # the best product, made ten times dearer
    rows = [
        {"product_id": p, "category": c, "price": pr * (10 if p == target else 1)}
        for p, (c, pr) in catalog.items()
    ]
    repriced = model.with_catalog(rows)
    after = {r.product_id: r.probability for r in all_recs(repriced, busy)}
    assert after.keys() == before.keys()
    assert after[target] != before[target]
    assert {p: v for p, v in after.items() if p != target} == {
        p: v for p, v in before.items() if p != target
    }
    assert after[target] == pytest.approx(
        repriced.predict_proba(dict(busy, recommended_product_id=target)), abs=1e-15
    )
    # the original model is untouched, and a Catalog object works the same way
    assert {r.product_id: r.probability for r in all_recs(model, busy)} == before
    again = model.with_catalog(Catalog.from_records(rows))
    assert {r.product_id: r.probability for r in all_recs(again, busy)} == after
    # a tracker on the new model reads the new price for the page it shows
    t = SessionTracker(repriced)
    ctx = t.page_view("s", target, device_type="Desktop", traffic_source="Direct")
    assert ctx["current_price"] == pytest.approx(catalog[target][1] * 10)


def test_with_catalog_forgets_dropped_products(model, sessions, catalog):
    busy = sessions[1]
    ranked = [r.product_id for r in all_recs(model, busy)]
    dropped = ranked[:3]
    smaller = model.with_catalog(
        {
            "product_id": [p for p in catalog if p not in dropped],
            "category": [c for p, (c, _) in catalog.items() if p not in dropped],
            "price": [pr for p, (_, pr) in catalog.items() if p not in dropped],
        }
    )
    assert [r.product_id for r in all_recs(smaller, busy)] == ranked[3:]
    with pytest.raises(InputError):
        smaller.recommend(busy, k=3, threshold=0.0, candidates=[dropped[0]])
    with pytest.raises(InputError):
        smaller.predict_proba(dict(busy, recommended_product_id=dropped[0]))
    # a product in the cart that the catalog no longer has is skipped, like a viewed one
    assert smaller.recommend(
        dict(busy, **{CART_FIELD: [dropped[1], *busy[CART_FIELD]]}), k=3, threshold=0.0
    ) == smaller.recommend(busy, k=3, threshold=0.0)
    assert model.predict_proba(dict(busy, recommended_product_id=dropped[0])) > 0.0


def test_with_catalog_rejects_unknown_categories(model, catalog):
    rows = [{"product_id": p, "category": c, "price": pr} for p, (c, pr) in catalog.items()]
    rows[0] = dict(rows[0], category="Groceries")
    with pytest.raises(InputError):
        model.with_catalog(rows)


# ---- a model that cannot rank -----------------------------------------------------------------
@pytest.fixture(scope="module")
def seed_model(request: pytest.FixtureRequest) -> Any:
    """A feature_set="seed" build: the notebook's 19 features, no candidate product."""
    return request.getfixturevalue("seed_built").model


def test_seed_feature_model_cannot_recommend(seed_model, sessions, catalog):
    assert seed_model.feature_set == "seed"
    with pytest.raises(ValueError, match="cannot rank products"):
        seed_model.recommend(sessions[1])
    # it still scores the page view the tracker builds, with no product to recommend
    t = SessionTracker(seed_model)
    ctx = t.page_view("s", sorted(catalog)[0], device_type="Mobile", traffic_source="Email")
    assert 0.0 <= seed_model.predict_proba(ctx) <= 1.0
    with pytest.raises(ValueError, match="cannot rank products"):
        t.recommend("s", k=3, threshold=0.0)


# ---- the seed's story -------------------------------------------------------------------------
def test_the_seeds_story(model, catalog):
    """Hiking boots, a tent in the cart, sleeping bags: the recommendations follow the session.

    The catalog has no product names, so the story's products are Sports products
    picked by price: boots mid-range, the tent and the sleeping bag the dearest.
    """
    sports = by_category(catalog, "Sports")
    boots, tent, bag = sports[len(sports) // 2], sports[-1], sports[-2]
    t = SessionTracker(model)

    def top5() -> list[Recommendation]:
        recs = t.recommend("shopper", k=5, threshold=0.0)
        assert len(recs) == 5
        return recs

    def categories(recs: list[Recommendation]) -> list[str]:
        return [catalog[r.product_id][0] for r in recs]

    # lands on the boots from a search
    t.page_view("shopper", boots, device_type="Desktop", traffic_source="Organic", ts=0)
    landed = top5()
    assert categories(landed) == ["Sports"] * 5
    assert boots not in {r.product_id for r in landed}
    assert t.recommend("shopper") == []  # nothing clears the seed's 0.7 bar yet

    # reads the page, scrolls, opens the photos
    t.engagement("shopper", time_on_page_sec=95, scroll_depth=0.85, clicked_product_image=1, ts=95)
    engaged = top5()
    assert categories(engaged) == ["Sports"] * 5
    assert engaged[0].probability > landed[0].probability + 0.2
    assert all(e.probability > x.probability for e, x in zip(engaged, landed, strict=True))
    confident = t.recommend("shopper")  # now the high-confidence filter lets some through
    assert confident and all(r.probability >= 0.7 for r in confident)

    # the tent goes in the cart
    t.page_view("shopper", tent, ts=120)
    t.engagement("shopper", time_on_page_sec=60, scroll_depth=0.7, ts=180)
    ctx = t.add_to_cart("shopper", tent, ts=185)
    assert (ctx["products_in_cart"], ctx["prev_product_1"]) == (1, boots)
    with_tent = top5()
    assert categories(with_tent) == ["Sports"] * 5
    assert not {boots, tent} & {r.product_id for r in with_tent}

    # browses sleeping bags
    t.page_view("shopper", bag, ts=240)
    ctx = t.engagement("shopper", time_on_page_sec=80, scroll_depth=0.9, ts=320)
    assert [ctx[f"prev_product_{i}"] for i in (1, 2, 3)] == [tent, boots, "NONE"]
    assert ctx["products_viewed_count"] == 3
    browsing = top5()
    assert categories(browsing) == ["Sports"] * 5
    assert not {boots, tent, bag} & {r.product_id for r in browsing}
    assert browsing[0].probability > with_tent[0].probability  # a longer, engaged session
    assert all(r.reason == "same category as the viewed product" for r in browsing)

    # moves on to electronics: the recommendations follow the new category
    electronics = by_category(catalog, "Electronics")
    t.page_view("shopper", electronics[len(electronics) // 2], ts=400)
    moved = top5()
    assert categories(moved)[0] == "Electronics"
    assert categories(moved).count("Electronics") >= 3
    t.engagement("shopper", time_on_page_sec=80, scroll_depth=0.9, ts=480)
    settled = top5()
    assert categories(settled) == ["Electronics"] * 5
    assert not {r.product_id for r in settled} & {r.product_id for r in browsing}
    # the tent is still in the cart and still never recommended
    assert tent not in {r.product_id for r in t.recommend("shopper", k=1000, threshold=0.0)}
    # every score is the model's score for that product in this session
    ctx = t.context("shopper")
    for r in settled:
        assert r.probability == pytest.approx(
            model.predict_proba(dict(ctx, recommended_product_id=r.product_id)), abs=1e-15
        )


@pytest.mark.parametrize("backend", ["tl2cgen", "flat"])
def test_compiled_top_k_equals_the_numpy_path(model, sessions, backend):
    """The one-call C kernel (candidate features, scores, top k) against the same steps in
    numpy, used for artifacts without that kernel: identical answers, ties included."""
    compiled = model.using(backend)
    assert compiled._recommend_kernel is not None
    fallback = model.using(backend)
    fallback._recommend_kernel = None
    for session in sessions:
        for k, threshold in ((3, 0.7), (10, 0.0), (250, 0.5), (1, 0.9)):
            kwargs = {"k": k, "threshold": threshold}
            assert compiled.recommend(session, **kwargs) == fallback.recommend(session, **kwargs)
        for exclude in ((), ("viewed",), ("in_cart",)):
            got = compiled.recommend(session, k=20, threshold=0.0, exclude=exclude)
            assert got == fallback.recommend(session, k=20, threshold=0.0, exclude=exclude)
