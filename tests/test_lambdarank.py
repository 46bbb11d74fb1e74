"""``reco-fast build --events ... --objective lambdarank``: LightGBM's LambdaMART on the
event log's training groups (one per page view), compiled, verified, evaluated and served.

Built on the first 9,000 events of the REES46 sample (``../shared/data/rees46/``), through
the CLI, with the fitted ranker captured so the artifact is compared with LightGBM itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reco_fast
from reco_fast import InputError
from reco_fast.build import sessiontrain
from reco_fast.tools import cli
from tests.helpers import REES46, REES46_COLUMNS, require

pytest.importorskip("lightgbm")

N_EVENTS = 9000


def _columns() -> str:
    cols = REES46_COLUMNS
    return cols if isinstance(cols, str) else ",".join(f"{k}={v}" for k, v in dict(cols).items())


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not REES46.is_file():
        require("the REES46 sample", str(REES46))
    tmp = tmp_path_factory.mktemp("lambdarank")
    events = tmp / "events.csv"
    with open(REES46, encoding="utf-8") as f:
        events.write_text("".join(f.readline() for _ in range(N_EVENTS + 1)))
    captured: dict[str, Any] = {}
    real = sessiontrain.fit_lambdarank

    def spy(rows: Any, *args: Any, **kwargs: Any) -> Any:
        captured["rows"] = rows
        estimator, seconds = real(rows, *args, **kwargs)
        captured["estimator"] = estimator
        return estimator, seconds

    out = tmp / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sessiontrain, "fit_lambdarank", spy)
        args = ["build", "--events", str(events), "--columns", _columns()]
        status = cli.main([*args, "--objective", "lambdarank", "--out", str(out), "-q"])
    assert status == 0
    return {"path": out, "model": reco_fast.load(out), **captured}


def test_lightgbm_lambdamart_is_trained_on_one_group_per_page_view(ranker) -> None:
    est, rows = ranker["estimator"], ranker["rows"]
    assert type(est).__name__ == "LGBMRanker" and est.objective == "lambdarank"
    groups = rows.groups
    assert np.all(np.diff(groups) >= 0)  # contiguous groups, one per page view
    # exactly one positive (the next product) per group
    assert np.array_equal(np.bincount(groups, weights=rows.y), np.ones(groups.max() + 1))
    meta = ranker["model"].metadata
    assert (meta["family"], meta["objective"], meta["output"]) == (
        "lightgbm",
        "lambdarank",
        "score",
    )
    assert meta["threshold"] is None


def test_scores_equal_lightgbm(ranker) -> None:
    model, est, rows = ranker["model"], ranker["estimator"], ranker["rows"]
    X = rows.X[::7]
    np.testing.assert_allclose(model.decision_function(X), est.predict(X), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        model.decision_function(X), est.predict(X, raw_score=True), rtol=0, atol=1e-12
    )


def test_recommend_orders_by_score_without_threshold(ranker) -> None:
    model, est = ranker["model"], ranker["estimator"]
    ids = model._builder.tables.product_ids.tolist()
    session = {"products": [str(ids[3]), str(ids[8])], "cart": []}
    recs = model.recommend(session, k=10)
    assert len(recs) == 10
    scores = [r.probability for r in recs]
    assert scores == sorted(scores, reverse=True)
    pairs = [{**session, "recommended_product_id": r.product_id} for r in recs]
    expected = est.predict(model._builder.rows(pairs))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.decision_function(pairs), expected, rtol=0, atol=1e-12)
    assert model.decision_function(pairs[0]) == pytest.approx(expected[0], abs=1e-12)
    # the ranker's top 10 of every candidate the retrieval stage gives, by LightGBM's scores
    everything = model.recommend(session, k=10_000)
    assert [r.product_id for r in everything[:10]] == [r.product_id for r in recs]
    assert all(math.isfinite(r.probability) for r in everything)
    with pytest.raises(InputError, match="no threshold") as info:
        model.recommend(session, k=3, threshold=0.5)
    assert info.value.field == "threshold"
    with pytest.raises(TypeError, match="decision_function"):
        model.predict_proba(pairs[0])


def test_the_replay_evaluates_the_ranker(ranker) -> None:
    ev = json.loads((Path(ranker["path"]) / "evaluation.json").read_text())
    assert ev["training"]["objective"] == "lambdarank"
    model = ev["methods"]["model"]
    assert model["n_predictions"] > 0 and 0 < model["hit_rate"] <= 1 and 0 < model["mrr"] <= 1
    report = (Path(ranker["path"]) / "report.md").read_text()
    assert "LambdaMART" in report and "| model |" in report


def test_lambdarank_needs_an_event_log(tmp_path, capsys) -> None:
    status = cli.main(["build", "--objective", "lambdarank", "--out", str(tmp_path / "m")])
    assert status == cli.BAD_INPUT
    assert "--events" in capsys.readouterr().err
