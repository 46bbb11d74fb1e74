"""SessionTracker on the in-memory store: events -> the context the model scores.

Every rejected event must raise InputError (SessionNotFound for a missing or
expired session) and leave the stored session exactly as it was.
"""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reco_fast import InputError, MemoryStore, SessionNotFound, SessionTracker
from reco_fast.serve.recommend import CART_FIELD

DEVICE, TRAFFIC = "Desktop", "Direct"


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("built").model


@pytest.fixture(scope="module")
def catalog(model: Any) -> dict[str, tuple[str, float]]:
    """product_id -> (category, price), as the model's catalog says."""
    return {p: (c, float(pr)) for p, c, pr in model.builder.catalog.to_rows()}


@pytest.fixture(scope="module")
def products(catalog: dict[str, tuple[str, float]]) -> list[str]:
    """Eight products, in catalog order, from at least two categories."""
    ids = sorted(catalog)[:8]
    assert len({catalog[p][0] for p in ids}) >= 2
    return ids


@pytest.fixture
def tracker(model: Any) -> SessionTracker:
    return SessionTracker(model)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def start(tracker: SessionTracker, sid: str, product: str, ts: float = 1000.0, **kw: Any) -> dict:
    return tracker.page_view(sid, product, device_type=DEVICE, traffic_source=TRAFFIC, ts=ts, **kw)


# ---- page views ---------------------------------------------------------------------------
def test_first_page_view_context(tracker, products, catalog):
    p = products[0]
    ctx = start(tracker, "s1", p, customer_id="CUST1")
    assert ctx == {
        "session_id": "s1",
        "customer_id": "CUST1",
        "current_product_id": p,
        "current_category": catalog[p][0],
        "current_price": catalog[p][1],
        "prev_product_1": "NONE",
        "prev_product_2": "NONE",
        "prev_product_3": "NONE",
        "products_in_cart": 0,
        "device_type": DEVICE,
        "traffic_source": TRAFFIC,
        "time_on_page_sec": 0.0,
        "scroll_depth": 0.0,
        "clicked_product_image": 0,
        "session_length_mins": 0.0,
        "products_viewed_count": 1,
        CART_FIELD: [],
    }
    assert tracker.context("s1") == ctx


def test_page_view_shifts_previous_three_and_counts(tracker, products, catalog):
    start(tracker, "s", products[0])
    for i in range(1, 6):
        ctx = tracker.page_view("s", products[i], ts=1000.0 + i)
        assert ctx["current_product_id"] == products[i]
        assert (ctx["current_category"], ctx["current_price"]) == catalog[products[i]]
        expected_prev = [products[j] if j >= 0 else "NONE" for j in (i - 1, i - 2, i - 3)]
        assert [ctx[f"prev_product_{k}"] for k in (1, 2, 3)] == expected_prev
        assert ctx["products_viewed_count"] == i + 1
    # the session's fixed fields are kept by later page views that do not name them
    assert (ctx["device_type"], ctx["traffic_source"]) == (DEVICE, TRAFFIC)
    # naming the same values again is fine
    ctx = tracker.page_view("s", products[6], device_type=DEVICE, traffic_source=TRAFFIC, ts=1010)
    assert ctx["products_viewed_count"] == 7


def test_customer_id_can_arrive_later(tracker, products):
    assert start(tracker, "s", products[0])["customer_id"] == ""
    assert tracker.page_view("s", products[1], customer_id="C9", ts=1001)["customer_id"] == "C9"
    assert tracker.page_view("s", products[2], ts=1002)["customer_id"] == "C9"


# ---- engagement ---------------------------------------------------------------------------
def test_engagement_only_grows_within_a_page_and_resets_on_a_new_one(tracker, products):
    start(tracker, "s", products[0])
    ctx = tracker.engagement(
        "s", time_on_page_sec=40, scroll_depth=0.5, clicked_product_image=1, ts=1040
    )
    assert (ctx["time_on_page_sec"], ctx["scroll_depth"], ctx["clicked_product_image"]) == (
        40.0,
        0.5,
        1,
    )
    # lower values are ignored: a late, stale report cannot undo engagement
    ctx = tracker.engagement(
        "s", time_on_page_sec=10, scroll_depth=0.2, clicked_product_image=False, ts=1041
    )
    assert (ctx["time_on_page_sec"], ctx["scroll_depth"], ctx["clicked_product_image"]) == (
        40.0,
        0.5,
        1,
    )
    # one field at a time leaves the others alone
    ctx = tracker.engagement("s", scroll_depth=0.9, ts=1042)
    assert (ctx["time_on_page_sec"], ctx["scroll_depth"]) == (40.0, 0.9)
    ctx = tracker.engagement("s", time_on_page_sec=75.5, ts=1076)
    assert (ctx["time_on_page_sec"], ctx["scroll_depth"]) == (75.5, 0.9)
    assert type(ctx["clicked_product_image"]) is int
    # a new page starts from nothing
    ctx = tracker.page_view("s", products[1], ts=1100)
    assert (ctx["time_on_page_sec"], ctx["scroll_depth"], ctx["clicked_product_image"]) == (
        0.0,
        0.0,
        0,
    )
    ctx = tracker.engagement("s", time_on_page_sec=5, clicked_product_image=True, ts=1105)
    assert (ctx["time_on_page_sec"], ctx["clicked_product_image"]) == (5.0, 1)


# ---- cart ---------------------------------------------------------------------------------
def test_cart_add_remove_and_count(tracker, products):
    a, b = products[1], products[2]
    start(tracker, "s", products[0])
    tracker.add_to_cart("s", a, ts=1001)
    tracker.add_to_cart("s", b, ts=1002)
    ctx = tracker.add_to_cart("s", a, ts=1003)  # twice: two items
    assert ctx["products_in_cart"] == 3
    assert ctx[CART_FIELD] == [a, b, a]
    ctx = tracker.remove_from_cart("s", a, ts=1004)
    assert ctx["products_in_cart"] == 2
    assert sorted(ctx[CART_FIELD]) == sorted([a, b])
    tracker.remove_from_cart("s", a, ts=1005)
    ctx = tracker.remove_from_cart("s", b, ts=1006)
    assert (ctx["products_in_cart"], ctx[CART_FIELD]) == (0, [])
    # the cart survives page views
    tracker.add_to_cart("s", b, ts=1007)
    assert tracker.page_view("s", products[3], ts=1008)[CART_FIELD] == [b]
    # a returned context is a copy: changing it does not change the session
    ctx = tracker.context("s")
    ctx[CART_FIELD].append(a)
    assert tracker.context("s")[CART_FIELD] == [b]


# ---- what the model scores ----------------------------------------------------------------
def test_context_is_what_predict_proba_and_recommend_score(tracker, model, products):
    start(tracker, "s", products[0])
    tracker.engagement("s", time_on_page_sec=70, scroll_depth=0.7, ts=1070)
    tracker.add_to_cart("s", products[1], ts=1080)
    ctx = tracker.page_view("s", products[2], ts=1200)
    tracker.engagement("s", time_on_page_sec=30, scroll_depth=0.4, ts=1230)
    ctx = tracker.context("s")

    rec = products[5]
    p = model.predict_proba(dict(ctx, recommended_product_id=rec))
    assert isinstance(p, float) and 0.0 <= p <= 1.0
    # the same page view written by hand, without the tracker's extra cart field
    by_hand = {k: v for k, v in ctx.items() if k != CART_FIELD}
    assert model.predict_proba(dict(by_hand, recommended_product_id=rec)) == p
    batch = model.predict_proba([dict(ctx, recommended_product_id=r) for r in products[3:6]])
    assert batch[-1] == pytest.approx(p, abs=1e-15)

    recs = model.recommend(ctx, k=3, threshold=0.0)
    assert 1 <= len(recs) <= 3
    assert tracker.recommend("s", k=3, threshold=0.0) == recs
    # the tracker's cart field is what excludes the cart from recommendations
    cart = products[1]
    assert cart not in {r.product_id for r in model.recommend(ctx, k=1000, threshold=0.0)}


def test_session_length_comes_from_event_timestamps(tracker, products):
    assert start(tracker, "s", products[0], ts=5000.0)["session_length_mins"] == 0.0
    assert tracker.engagement("s", scroll_depth=0.1, ts=5090.0)["session_length_mins"] == 1.5
    assert tracker.add_to_cart("s", products[1], ts=5150.0)["session_length_mins"] == 2.5
    ctx = tracker.page_view("s", products[2], ts=5300.0)
    assert ctx["session_length_mins"] == 5.0
    assert tracker.context("s")["session_length_mins"] == 5.0
    # an event at the same instant is in order
    assert tracker.engagement("s", scroll_depth=0.2, ts=5300)["session_length_mins"] == 5.0


def test_server_time_is_used_without_ts(model, products):
    clock = FakeClock(2_000_000.0)
    tracker = SessionTracker(model, clock=clock)
    start(tracker, "s", products[0], ts=None)
    clock.now += 120
    assert tracker.engagement("s", scroll_depth=0.3)["session_length_mins"] == 2.0
    # a clock that steps back (NTP, another replica) does not reject the next event
    clock.now -= 30
    assert tracker.add_to_cart("s", products[1])["session_length_mins"] == 2.0


# ---- rejected events leave the session unchanged ------------------------------------------
BAD_EVENTS: dict[str, Callable[[SessionTracker, list[str]], Any]] = {
    "unknown product": lambda t, p: t.page_view("s", "NO-SUCH-PRODUCT", ts=2000),
    "product id not a string": lambda t, p: t.page_view("s", 7, ts=2000),
    "empty product id": lambda t, p: t.page_view("s", "", ts=2000),
    "unknown product to cart": lambda t, p: t.add_to_cart("s", "NO-SUCH-PRODUCT", ts=2000),
    "remove what is not in the cart": lambda t, p: t.remove_from_cart("s", p[7], ts=2000),
    "page view out of order": lambda t, p: t.page_view("s", p[3], ts=1009.5),
    "engagement out of order": lambda t, p: t.engagement("s", scroll_depth=0.9, ts=999),
    "cart out of order": lambda t, p: t.add_to_cart("s", p[3], ts=1000),
    "remove out of order": lambda t, p: t.remove_from_cart("s", p[1], ts=1000),
    "scroll 1.5": lambda t, p: t.engagement("s", scroll_depth=1.5, ts=2000),
    "scroll negative": lambda t, p: t.engagement("s", scroll_depth=-0.1, ts=2000),
    "scroll NaN": lambda t, p: t.engagement("s", scroll_depth=float("nan"), ts=2000),
    "scroll string": lambda t, p: t.engagement("s", scroll_depth="0.5", ts=2000),
    "negative time": lambda t, p: t.engagement("s", time_on_page_sec=-1, ts=2000),
    "infinite time": lambda t, p: t.engagement("s", time_on_page_sec=float("inf"), ts=2000),
    "huge int time": lambda t, p: t.engagement("s", time_on_page_sec=10**400, ts=2000),
    "time as list": lambda t, p: t.engagement("s", time_on_page_sec=[5], ts=2000),
    "clicked 2": lambda t, p: t.engagement("s", clicked_product_image=2, ts=2000),
    "clicked 0.5": lambda t, p: t.engagement("s", clicked_product_image=0.5, ts=2000),
    "clicked -1": lambda t, p: t.engagement("s", clicked_product_image=-1, ts=2000),
    "clicked string": lambda t, p: t.engagement("s", clicked_product_image="1", ts=2000),
    "valid values, one bad": lambda t, p: t.engagement(
        "s", time_on_page_sec=500, scroll_depth=1.01, clicked_product_image=1, ts=2000
    ),
    "negative ts": lambda t, p: t.engagement("s", scroll_depth=0.9, ts=-1),
    "ts string": lambda t, p: t.add_to_cart("s", p[3], ts="2000"),
    "ts NaN": lambda t, p: t.page_view("s", p[3], ts=float("nan")),
    "conflicting device_type": lambda t, p: t.page_view("s", p[3], device_type="Mobile", ts=2000),
    "conflicting traffic_source": lambda t, p: t.page_view(
        "s", p[3], traffic_source="Email", ts=2000
    ),
    "unknown device_type": lambda t, p: t.page_view("s", p[3], device_type="Fridge", ts=2000),
    "unknown traffic_source": lambda t, p: t.page_view("s", p[3], traffic_source="TV", ts=2000),
    "conflicting customer_id": lambda t, p: t.page_view("s", p[3], customer_id="OTHER", ts=2000),
    "session id not a string": lambda t, p: t.page_view(5, p[3], ts=2000),
    "empty session id": lambda t, p: t.engagement("", scroll_depth=0.5, ts=2000),
}


@pytest.fixture
def busy_session(tracker: SessionTracker, products: list[str]) -> dict[str, Any]:
    """Session "s" after some of everything, last event at ts=1010."""
    start(tracker, "s", products[0], customer_id="C1")
    tracker.engagement("s", time_on_page_sec=30, scroll_depth=0.4, clicked_product_image=1, ts=1003)
    tracker.add_to_cart("s", products[1], ts=1005)
    tracker.page_view("s", products[2], ts=1008)
    return tracker.engagement("s", time_on_page_sec=12, scroll_depth=0.3, ts=1010)


@pytest.mark.parametrize("event", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_rejected_event_raises_input_error_and_changes_nothing(
    event, tracker, products, busy_session
):
    before = tracker.context("s")
    stored = tracker.store.get("s")
    with pytest.raises(InputError) as info:
        event(tracker, products)
    assert not isinstance(info.value, SessionNotFound)
    assert str(info.value)
    assert tracker.context("s") == before == busy_session
    assert tracker.store.get("s") == stored
    # and the session still takes valid events
    assert tracker.engagement("s", scroll_depth=0.95, ts=2000)["scroll_depth"] == 0.95


@pytest.mark.parametrize(
    "event",
    [
        lambda t, p: t.engagement("nobody", scroll_depth=0.5, ts=2000),
        lambda t, p: t.add_to_cart("nobody", p[1], ts=2000),
        lambda t, p: t.remove_from_cart("nobody", p[1], ts=2000),
        lambda t, p: t.context("nobody"),
        lambda t, p: t.recommend("nobody", k=3, threshold=0.0),
    ],
    ids=["engagement", "add_to_cart", "remove_from_cart", "context", "recommend"],
)
def test_unknown_session_is_session_not_found(event, tracker, products, busy_session):
    with pytest.raises(SessionNotFound) as info:
        event(tracker, products)
    assert info.value.field == "session_id"
    assert isinstance(info.value, InputError)
    assert tracker.store.get("nobody") is None
    assert tracker.context("s") == busy_session


@pytest.mark.parametrize(
    "missing", [{"traffic_source": TRAFFIC}, {"device_type": DEVICE}, {}], ids=str
)
def test_first_page_view_needs_device_type_and_traffic_source(tracker, products, missing):
    with pytest.raises(InputError) as info:
        tracker.page_view("new", products[0], ts=1000, **missing)
    assert info.value.field in ("device_type", "traffic_source")
    assert len(tracker.store) == 0
    with pytest.raises(SessionNotFound):
        tracker.context("new")


# ---- expiry and the size bound --------------------------------------------------------------
def test_idle_session_expires_with_the_store_clock(model, products):
    clock = FakeClock()
    tracker = SessionTracker(model, ttl=60, clock=clock)
    start(tracker, "s", products[0], ts=None)
    tracker.add_to_cart("s", products[1])
    clock.now += 60  # exactly the TTL: still alive
    assert tracker.context("s")["products_in_cart"] == 1
    tracker.engagement("s", scroll_depth=0.5)  # and touched again
    clock.now += 60.5
    with pytest.raises(SessionNotFound):
        tracker.context("s")
    for event in (
        lambda: tracker.engagement("s", scroll_depth=0.9),
        lambda: tracker.add_to_cart("s", products[2]),
        lambda: tracker.remove_from_cart("s", products[1]),
        lambda: tracker.page_view("s", products[2]),  # a new session needs device and source
    ):
        with pytest.raises(InputError):
            event()
    assert tracker.store.expired == 1
    assert len(tracker.store) == 0
    # a page view starts the session again, from nothing
    ctx = tracker.page_view("s", products[2], device_type="Mobile", traffic_source="Email")
    assert ctx["products_viewed_count"] == 1
    assert (ctx["prev_product_1"], ctx["products_in_cart"], ctx[CART_FIELD]) == ("NONE", 0, [])
    assert (ctx["device_type"], ctx["session_length_mins"]) == ("Mobile", 0.0)


def test_event_time_past_the_ttl_expires_the_session(tracker, products, busy_session):
    late = 1010 + tracker.ttl + 1
    stored = tracker.store.get("s")
    with pytest.raises(SessionNotFound):
        tracker.engagement("s", scroll_depth=0.9, ts=late)
    with pytest.raises(SessionNotFound):
        tracker.add_to_cart("s", products[4], ts=late)
    assert tracker.store.get("s") == stored
    # the first page view after the gap starts a new session (with the new device)
    ctx = tracker.page_view("s", products[3], device_type="Tablet", traffic_source="Paid", ts=late)
    assert ctx["products_viewed_count"] == 1
    assert (ctx["customer_id"], ctx["products_in_cart"], ctx["device_type"]) == ("", 0, "Tablet")


def test_memory_store_sweeps_expired_sessions_and_counts_them(model, products):
    clock = FakeClock()
    tracker = SessionTracker(model, ttl=10, clock=clock)
    for i in range(3):
        start(tracker, f"s{i}", products[i], ts=None)
        clock.now += 1
    assert len(tracker.store) == 3
    clock.now += 8.5  # s0 idle 11.5 s, s1 10.5 s, s2 9.5 s
    assert tracker.store.get("s0") is None  # reads do not mutate the store
    assert (tracker.store.expired, len(tracker.store)) == (0, 3)
    tracker.engagement("s2", scroll_depth=0.1)
    assert (tracker.store.expired, len(tracker.store)) == (2, 1)
    assert tracker.context("s2")["scroll_depth"] == 0.1


def test_memory_store_bound_evicts_the_idlest_session(model, products):
    clock = FakeClock()
    store = MemoryStore(ttl=3600, max_sessions=3, clock=clock)
    tracker = SessionTracker(model, store, clock=clock)
    for i in range(3):
        start(tracker, f"s{i}", products[i], ts=None)
        clock.now += 1
    tracker.add_to_cart("s0", products[5])  # s0 is now the most recently used
    clock.now += 1
    start(tracker, "s3", products[3], ts=None)
    assert (len(store), store.evicted, store.expired) == (3, 1, 0)
    with pytest.raises(SessionNotFound):
        tracker.context("s1")
    assert tracker.context("s0")[CART_FIELD] == [products[5]]
    for i in range(4, 8):
        clock.now += 1
        start(tracker, f"s{i}", products[i], ts=None)
    assert (len(store), store.evicted) == (3, 5)
    assert [s for s in (f"s{i}" for i in range(8)) if store.get(s) is not None] == [
        "s5",
        "s6",
        "s7",
    ]
    # a rejected event neither evicts nor refreshes anything
    with pytest.raises(InputError):
        start(tracker, "s8", "NO-SUCH-PRODUCT", ts=None)
    with pytest.raises(SessionNotFound):
        tracker.engagement("s8", scroll_depth=0.5)
    assert (len(store), store.evicted) == (3, 5)


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"ttl": -1}, {"max_sessions": 0}])
def test_memory_store_rejects_non_positive_bounds(kwargs):
    with pytest.raises(ValueError):
        MemoryStore(**kwargs)


# ---- threads --------------------------------------------------------------------------------
@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Switch threads as often as possible, so unprotected read-modify-writes collide."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _event_plan(products: list[str], sessions: list[str], n_threads: int, n_events: int):
    rng = random.Random(20240601)
    plans = []
    for _ in range(n_threads):
        plan = []
        for _ in range(n_events):
            sid = rng.choice(sessions)
            kind = rng.choice(("page_view", "add", "add", "remove", "engagement"))
            plan.append((kind, sid, rng.choice(products)))
        plans.append(plan)
    return plans


def _apply(tracker: SessionTracker, kind: str, sid: str, product: str, stock: str) -> None:
    if kind == "page_view":
        tracker.page_view(sid, product)
    elif kind == "add":
        tracker.add_to_cart(sid, product)
    elif kind == "remove":
        tracker.remove_from_cart(sid, stock)  # always there: pre-stocked below
    else:
        tracker.engagement(sid, scroll_depth=0.5, time_on_page_sec=20)


def _run(tracker, plans, sessions, products, threaded: bool) -> dict[str, Any]:
    stock = products[-1]
    n_removes = Counter(sid for plan in plans for kind, sid, _ in plan if kind == "remove")
    for sid in sessions:
        tracker.page_view(sid, products[0], device_type=DEVICE, traffic_source=TRAFFIC)
        for _ in range(n_removes[sid]):
            tracker.add_to_cart(sid, stock)

    errors: list[BaseException] = []
    barrier = threading.Barrier(len(plans))

    def worker(plan):
        if threaded:
            barrier.wait()
        try:
            for kind, sid, product in plan:
                _apply(tracker, kind, sid, product, stock)
        except BaseException as exc:
            errors.append(exc)

    if threaded:
        threads = [threading.Thread(target=worker, args=(plan,)) for plan in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    else:
        for plan in plans:
            worker(plan)
    assert not errors, errors[:3]
    return {
        sid: (
            ctx["products_viewed_count"],
            ctx["products_in_cart"],
            sorted(ctx[CART_FIELD]),
        )
        for sid, ctx in ((sid, tracker.context(sid)) for sid in sessions)
    }


def test_threads_on_same_and_different_sessions_equal_serial(
    model, products, fast_thread_switching
):
    sessions = ["hot", "hot", "hot", "warm", "cold"]  # "hot" gets most of the traffic
    plans = _event_plan(products, sessions, n_threads=8, n_events=250)
    unique = sorted(set(sessions))
    serial = _run(SessionTracker(model), plans, unique, products, threaded=False)
    threaded = _run(SessionTracker(model), plans, unique, products, threaded=True)
    assert threaded == serial
    # the plan really exercised every kind of event on the shared session
    hot = Counter(kind for plan in plans for kind, sid, _ in plan if sid == "hot")
    assert min(hot.values()) > 100
    assert serial["hot"][0] == 1 + hot["page_view"]
    assert serial["hot"][1] == hot["add"]


# ---- arguments, ids and message sizes -------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_sessions": 0.5}, "max_sessions"),  # int(0.5) == 0: every session evicted
        ({"max_sessions": 2.0}, "max_sessions"),
        ({"max_sessions": True}, "max_sessions"),
        ({"ttl": float("nan")}, "ttl"),  # every session expired at once
        ({"ttl": float("inf")}, "ttl"),
        ({"ttl": "60"}, "ttl"),  # a TypeError from a comparison before
    ],
)
def test_bad_ttl_and_max_sessions_are_value_errors_naming_them(model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        SessionTracker(model, **kwargs)
    with pytest.raises(ValueError, match=name):
        MemoryStore(**kwargs)


def test_ttl_or_max_sessions_with_a_store_is_refused_not_ignored(model, products):
    store = MemoryStore(ttl=60, max_sessions=10)
    with pytest.raises(ValueError, match=r"ttl=120\.0 would be ignored"):
        SessionTracker(model, store, ttl=120)
    with pytest.raises(ValueError, match="max_sessions=5 would be ignored"):
        SessionTracker(model, store, max_sessions=5)
    tracker = SessionTracker(model, store, ttl=60, max_sessions=10)  # the same: fine
    assert tracker.ttl == 60.0
    tracker = SessionTracker(model, ttl=30)  # without a store it configures the memory store
    assert (tracker.ttl, tracker.store.ttl) == (30.0, 30.0)


@pytest.mark.parametrize("field", ["session_id", "product_id", "customer_id"])
def test_lone_surrogate_in_an_id_is_an_input_error(tracker, products, field):
    """No store can key a lone surrogate (Redis raised UnicodeEncodeError): refused in
    every store, so a session that works in memory works in Redis too."""
    args = {"session_id": "s", "product_id": products[0], "customer_id": "c"}
    args[field] = "s\ud800x"
    with pytest.raises(InputError, match="lone surrogate") as info:
        tracker.page_view(
            args["session_id"],
            args["product_id"],
            customer_id=args["customer_id"],
            device_type=DEVICE,
            traffic_source=TRAFFIC,
        )
    assert info.value.field == field
    assert len(tracker.store) == 0


def test_error_messages_echo_bounded_inputs(tracker, products):
    huge = "x" * 1_000_000
    start(tracker, "s", products[0], customer_id="a")
    cases = [
        lambda: tracker.context(huge),
        lambda: tracker.engagement(huge, scroll_depth=0.5),
        lambda: start(tracker, "t", huge),
        lambda: tracker.add_to_cart("s", huge),
        lambda: tracker.remove_from_cart("s", huge),
        lambda: tracker.page_view("s", products[1], device_type=huge),
        lambda: tracker.page_view("s", products[1], customer_id=huge),
        lambda: tracker.engagement("s", scroll_depth=[0.5] * 100_000),
    ]
    for case in cases:
        with pytest.raises(InputError) as info:
            case()
        assert len(str(info.value)) < 300, str(info.value)[:300]


# ---- a catalog update while sessions are live ---------------------------------------------
def test_delisted_products_are_skipped_in_live_sessions(model, products, catalog):
    """with_catalog drops products a live session viewed, carted and is viewing: its
    context keeps the page as shown, and recommend skips the delisted products (it used
    to raise a bare KeyError, and a delisted cart item failed every later recommend)."""
    store = MemoryStore()
    before = SessionTracker(model, store)
    current, viewed, carted, kept = products[3], products[1], products[2], products[0]
    start(before, "s", kept)
    before.page_view("s", viewed, ts=1010.0)
    before.add_to_cart("s", carted, ts=1020.0)
    before.add_to_cart("s", kept, ts=1025.0)
    before.page_view("s", current, ts=1030.0)
    shown = before.context("s")

    gone = {current, viewed, carted}
    smaller = model.with_catalog(
        [
            {"product_id": p, "category": c, "price": pr}
            for p, (c, pr) in catalog.items()
            if p not in gone
        ]
    )
    after = SessionTracker(smaller, store)  # e.g. a replica restarted on the new catalog
    ctx = after.context("s")
    assert ctx == shown  # the page as it was shown: category and price of the current product
    listed = dict(ctx, **{CART_FIELD: [kept]})
    expected = smaller.recommend(listed, k=5, threshold=0.0)
    assert len(expected) == 5
    assert after.recommend("s", k=5, threshold=0.0) == expected
    assert smaller.recommend(shown, k=5, threshold=0.0) == expected  # the old tracker's context
    assert not gone & {r.product_id for r in expected}
    ctx = after.engagement("s", scroll_depth=0.5, ts=1040.0)
    assert (ctx["scroll_depth"], ctx["products_in_cart"]) == (0.5, 2)
    assert after.recommend("s", k=5, threshold=0.0)  # still serving
    ctx = after.page_view("s", kept, ts=1050.0)  # the session moves on
    assert ctx["prev_product_1"] == current
    assert after.recommend("s", k=5, threshold=0.0)
    with pytest.raises(InputError, match="not in the catalog"):
        after.add_to_cart("s", carted, ts=1060.0)  # new events still need listed products


def test_event_sessions_are_stored_with_the_one_definition_of_their_keys() -> None:
    """EventTracker starts its sessions with session.new_event_state, and every store reads
    a stored event session by that same definition: missing any key, it is corrupt."""
    import json

    from reco_fast import EventTracker
    from reco_fast.serve.session import EVENT_STATE_KIND, _loads, new_event_state

    class EventModel:
        ranks_from_events = True

    tracker = EventTracker(EventModel(), clock=lambda: 1_700_000_000.0)  # type: ignore[arg-type]
    tracker.view("s1", 42, ts=1_700_000_000.0)
    stored = tracker.store.get("s1")
    assert stored is not None and stored["kind"] == EVENT_STATE_KIND
    assert stored.keys() == new_event_state("s1", 0.0).keys()
    assert _loads(json.dumps(stored).encode()) == stored
    for key in stored:
        partial = {k: v for k, v in stored.items() if k != key}
        assert _loads(json.dumps(partial).encode()) is None, key
