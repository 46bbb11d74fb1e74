"""``build --events FILE --columns ... --impressions DIR``: an event-log model trained on the
impression log of an event model served through ``EventTracker(model, log=...)``.

End to end on a slice of the REES46 sample (read from ``../shared/data/rees46/``; without it
these tests skip, except under CI, where they fail): build an event model, serve it over
held-out sessions with a simulated click rule (a shopper clicks a shown product when it is
the product the session actually touched next), build from the events and that log, check
the rows, the labels, the exactness of the served model and the position handling.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reco_fast
from reco_fast.build import pipeline, retrain
from reco_fast.build.evaluate import split_by_time
from reco_fast.build.events import parse_columns, read_events
from reco_fast.features.events import EventBuilder, ItemTables
from reco_fast.serve.eventsession import EventTracker
from reco_fast.serve.impressions import ImpressionLog, JsonlSink, Shown, read_log
from reco_fast.tools import cli
from tests.helpers import REES46, REES46_COLUMNS, require

SLICE_LINES = 5000  # events of the REES46 sample (header excluded)
SESSIONS = 120  # held-out sessions served
K = 10


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An event model built on the slice, served over held-out sessions with a log and clicks."""
    if not REES46.is_file():
        require("the REES46 sample", str(REES46))
    root = tmp_path_factory.mktemp("evimp")
    events = root / "events.csv"
    with open(REES46, encoding="utf-8") as src:
        events.write_text("".join(next(src) for _ in range(SLICE_LINES + 1)), encoding="utf-8")
    base = pipeline.build_events(events, REES46_COLUMNS, root / "base")
    frame = read_events(events, parse_columns(REES46_COLUMNS))
    _, test_events, _ = split_by_time(frame, 0.2)  # the build's own split (its default)

    now = [0.0]
    directory = root / "impressions"
    log = ImpressionLog(JsonlSink(directory))
    tracker = EventTracker(base.model, clock=lambda: now[0], log=log)
    shown: list[tuple[str, str, int]] = []  # (request id, product, position), in log order
    clicks: set[tuple[str, str]] = set()  # (request id, product)
    sessions: set[str] = set()
    act = {"view": tracker.view, "cart": tracker.add_to_cart, "purchase": tracker.purchase}
    for sid, group in test_events.groupby("session_id", sort=True):
        rows: list[Any] = [r for r in group.itertuples() if r.type in act]
        touched = [str(r.product_id) for r in rows]
        if len(set(touched)) < 2:
            continue
        for i, r in enumerate(rows):
            now[0] = float(r.ts)
            act[r.type](sid, r.product_id, ts=now[0])
            later = [p for p in touched[i + 1 :] if p != touched[i]]
            if not later:
                break
            got = tracker.recommend(sid, K, ts=now[0])
            assert isinstance(got, Shown)
            shown += [(got.request_id, x.product_id, p) for p, x in enumerate(got)]
            if later[0] in [x.product_id for x in got]:  # the simulated shopper's click
                tracker.click(sid, later[0], ts=now[0] + 1.0)
                clicks.add((got.request_id, later[0]))
        sessions.add(str(sid))
        if len(sessions) == SESSIONS:
            break
    log.close()
    assert log.stats()["unmatched_clicks"] == 0 and log.stats()["dropped"] == 0
    assert clicks and len(clicks) < len(shown)
    return {
        "root": root,
        "events": events,
        "base": base,
        "log": directory,
        "shown": shown,
        "clicks": clicks,
        "sessions": sessions,
    }


@pytest.fixture(scope="module")
def retrained(served: dict[str, Any]) -> dict[str, Any]:
    """``python build_model.py --events ... --impressions DIR``, spying on the position fit."""
    calls: list[dict[str, Any]] = []
    real = retrain.fit_with_position

    def spy(X: Any, position: Any, y: Any, params: Any = None) -> Any:
        fitted = real(X, position, y, params)
        calls.append({"X": X, "position": position, "y": y, "fit": fitted})
        return fitted

    out = served["root"] / "from_impressions"
    argv = [
        *("--events", str(served["events"]), "--columns", REES46_COLUMNS),
        *("--impressions", str(served["log"]), "--out", str(out), "-q"),
    ]
    mp = pytest.MonkeyPatch()
    mp.setattr(retrain, "fit_with_position", spy)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.build_main(argv)
    finally:
        mp.undo()
    assert code == 0, stderr.getvalue()[-2000:]
    assert len(calls) == 1
    return {"out": out, "stdout": stdout.getvalue(), **calls[0]}


def _rows(served: dict[str, Any]) -> list[dict[str, Any]]:
    """The logged shown products as sessions to score (read back from the log)."""
    out = []
    for rec in read_log(served["log"]).records:
        if rec["type"] == "impression":
            for s in rec["shown"]:
                out.append(
                    {
                        **rec["session"],
                        "recommended_product_id": s["product_id"],
                        "_rid": rec["request_id"],
                        "_position": s["position"],
                    }
                )
    return out


def test_rows_are_the_shown_products_and_labels_the_joined_clicks(served, retrained):
    y = retrained["y"]
    assert len(y) == len(served["shown"]) == len(_rows(served))
    expected = [int((rid, pid) in served["clicks"]) for rid, pid, _ in served["shown"]]
    assert y.tolist() == expected
    assert retrained["position"].tolist() == [p for _, _, p in served["shown"]]
    ev = json.loads((retrained["out"] / pipeline.EVALUATION_FILE).read_text())
    training = ev["training"]
    assert training["source"] == "impressions" and "impression log" in training["labels"]
    assert training["rows"] == len(served["shown"])
    assert training["positives"] == len(served["clicks"])
    assert training["skipped_unknown_products"] == 0
    assert training["held_out_sessions_logged"] == len(served["sessions"])
    assert training["position_feature"]["fixed_at_serving"] == 0
    # the held-out replay still runs, for the model and the baselines
    assert {"model", "popular", "covisitation"} <= set(ev["methods"])
    assert "shown products of the impression log" in retrained["stdout"]
    meta = reco_fast.load(retrained["out"]).metadata
    assert meta["training"]["rows"] == len(served["shown"])


def test_the_served_model_scores_the_logged_rows_as_scikit_learn_at_position_0(served, retrained):
    model = reco_fast.load(retrained["out"])
    rows = _rows(served)
    full = retrained["fit"].full
    X = retrained["X"]
    sessions = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    # the features are those the serving path computes from the logged raw session
    builder = EventBuilder(ItemTables.load(Path(retrained["out"])))
    np.testing.assert_array_equal(builder.rows(sessions), X)
    got = np.asarray(model.predict_proba(sessions), dtype=np.float64)
    at_zero = full.predict_proba(np.column_stack([X, np.zeros(len(X))]))[:, 1]
    np.testing.assert_allclose(got, at_zero, rtol=0, atol=1e-12)
    # a row shown at position 0 scores as the compiled model; the position mattered
    position = retrained["position"]
    as_shown = full.predict_proba(np.column_stack([X, position]))[:, 1]
    first = position == 0
    assert first.any() and (~first).any()
    np.testing.assert_allclose(got[first], as_shown[first], rtol=0, atol=1e-12)
    assert retrained["fit"].importance > 0
    assert np.any(np.abs(got[~first] - as_shown[~first]) > 1e-9)
    # recommend ranks with the same probabilities
    s = sessions[0]
    top = model.recommend({"products": s["products"], "cart": s["cart"]}, K)
    assert top
    batch = [{**s, "recommended_product_id": r.product_id} for r in top]
    Xr = builder.rows(batch)
    ref = full.predict_proba(np.column_stack([Xr, np.zeros(len(Xr))]))[:, 1]
    np.testing.assert_allclose([r.probability for r in top], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "extra, mentions",
    [
        (["--base", "{tmp}"], "--base does not go with --events"),
        (["--objective", "lambdarank"], "--objective lambdarank does not go with --impressions"),
        (["--impressions", "{tmp}/nolog"], "does not exist"),
    ],
)
def test_refusals(tmp_path: Path, extra: list[str], mentions: str) -> None:
    events = tmp_path / "events.csv"
    events.write_text("session,product,time\ns1,a,1\ns1,b,2\n")
    argv = ["build", "--events", str(events), "--columns", "session=session,product=product,"]
    argv[-1] += "time=time"
    argv += ["--impressions", str(tmp_path), "--out", str(tmp_path / "o")]
    argv += [a.format(tmp=tmp_path) for a in extra]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    assert code == 2 and mentions in err.getvalue(), err.getvalue()
    assert not (tmp_path / "o").exists()


def test_unknown_shown_products_are_skipped_and_page_view_sessions_refused(served, retrained):
    """A log served with other item tables: its unknown shown products are skipped and
    counted; a page-view model's log (no 'products') is refused, naming the request."""
    from reco_fast.serve.impressions import LoggedImpression

    tables = ItemTables.load(Path(retrained["out"]))
    known = str(tables.product_ids[0])
    shown = [
        {"product_id": "no-such-product", "position": 0, "probability": 0.5, "propensity": 1.0},
        {"product_id": known, "position": 1, "probability": 0.4, "propensity": 1.0},
    ]
    session = {"products": [str(tables.product_ids[1]), "unknown-viewed"], "cart": []}
    imp = LoggedImpression(
        {"request_id": "r1", "session": session, "shown": shown}, clicked={known}
    )
    rows, skipped = retrain.event_training_rows([imp], tables)
    assert skipped == 1 and rows.y.tolist() == [1] and rows.position.tolist() == [1.0]
    builder = EventBuilder(tables)
    np.testing.assert_array_equal(
        rows.X, builder.rows([{**session, "recommended_product_id": known}])
    )
    page_view = {"current_category": "A", "current_price": 1.0}
    bad = LoggedImpression({"request_id": "r-page", "session": page_view, "shown": shown})
    with pytest.raises(reco_fast.InputError, match="r-page"):
        retrain.event_training_rows([bad], tables)
    only_unknown = LoggedImpression({"request_id": "r2", "session": session, "shown": shown[:1]})
    with pytest.raises(reco_fast.InputError, match="1 shown products skipped"):
        retrain.event_training_rows([only_unknown], tables)
