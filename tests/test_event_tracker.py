"""EventTracker: live sessions of event-trained models, in memory and in Redis."""

from __future__ import annotations

import numpy as np
import pytest

import reco_fast
from reco_fast.serve.eventsession import MAX_PRODUCTS, EventTracker
from reco_fast.tools import cli


@pytest.fixture(scope="module")
def event_model(tmp_path_factory: pytest.TempPathFactory) -> reco_fast.Model:
    rng = np.random.default_rng(1)
    lines = ["session,product,time,type"]
    for s in range(300):
        base = int(rng.integers(0, 50))
        for j in range(int(rng.integers(1, 6))):
            kind = "cart" if rng.random() < 0.1 else "view"
            lines.append(
                f"s{s},{100 + (base + int(rng.integers(0, 4))) % 60},{1_700_000_000 + s * 40 + j * 5},{kind}"
            )
    tmp = tmp_path_factory.mktemp("evtracker")
    (tmp / "log.csv").write_text("\n".join(lines) + "\n")
    out = tmp / "model"
    cols = "session=session,product=product,time=time,type=type"
    assert (
        cli.main(
            ["build", "--events", str(tmp / "log.csv"), "--columns", cols, "--out", str(out), "-q"]
        )
        == 0
    )
    return reco_fast.load(out)


def test_a_session_may_start_with_any_event_and_integer_ids_are_string_ids(event_model):
    clock = [1000.0]
    t = EventTracker(event_model, clock=lambda: clock[0])
    t.add_to_cart("a", 105)
    t.view("a", "106")
    t.purchase("a", 107)
    assert t.context("a") == {"products": ["105", "106", "107"], "cart": ["105"]}
    t.remove_from_cart("a", "105")
    assert t.context("a")["cart"] == []
    recs = t.recommend("a", k=3)
    assert len(recs) == 3 and "107" not in [r.product_id for r in recs]
    assert recs == event_model.recommend(t.context("a"), k=3)


def test_unknown_products_are_accepted(event_model):
    t = EventTracker(event_model)
    t.view("b", "a-product-added-this-morning")
    t.view("b", 110)
    assert len(t.recommend("b", k=5)) == 5


def test_rejected_events_change_nothing_and_ttl_expires(event_model):
    clock = [5000.0]
    t = EventTracker(event_model, ttl=60, clock=lambda: clock[0])
    t.view("c", 101, ts=5000.0)
    for bad in ({"product_id": None}, {"product_id": 1.5}, {"product_id": True}, {"ts": -1}):
        kwargs = {"product_id": 102, "ts": None, **bad}
        with pytest.raises(reco_fast.InputError):
            t.view("c", kwargs["product_id"], ts=kwargs["ts"])
    with pytest.raises(reco_fast.InputError, match="in order"):
        t.view("c", 103, ts=4000.0)
    assert t.context("c")["products"] == ["101"]
    clock[0] = 5061.0
    with pytest.raises(reco_fast.SessionNotFound):
        t.context("c")


def test_the_product_history_is_bounded(event_model):
    t = EventTracker(event_model)
    for i in range(MAX_PRODUCTS + 20):
        t.view("d", 100 + i % 60)
    assert len(t.context("d")["products"]) == MAX_PRODUCTS


def test_a_page_view_model_is_refused(built):
    with pytest.raises(ValueError, match="SessionTracker"):
        EventTracker(built.model)


def test_a_log_attached_to_an_event_tracker_joins_clicks_and_purchases(event_model, tmp_path):
    """EventTracker(model, log=...): recommend logs the session it scored; click records a click,
    purchase a purchase (and still touches the product), both joined to that impression."""
    from reco_fast.serve.impressions import ImpressionLog, artifact_id, read_log

    log = ImpressionLog(tmp_path)
    t = EventTracker(event_model, log=log)
    t.view("e", 105)
    t.add_to_cart("e", "106")
    shown = t.recommend("e", k=3)
    context = t.context("e")
    assert shown == event_model.recommend(context, k=3) and len(shown) == 3
    assert shown.model_id == artifact_id(event_model)
    t.click("e", shown[2].product_id)
    assert t.purchase("e", int(shown[1].product_id))["products"][-1] == shown[1].product_id
    log.close()
    imp, click, purchase = read_log(tmp_path).records
    assert imp["request_id"] == shown.request_id and imp["session"] == context
    assert (click["type"], click["request_id"], click["position"]) == (
        "click",
        imp["request_id"],
        2,
    )
    assert (purchase["type"], purchase["request_id"], purchase["position"]) == (
        "purchase",
        imp["request_id"],
        1,
    )
    with pytest.raises(RuntimeError, match="no impression log to record a click"):
        EventTracker(event_model).click("e", "105")
