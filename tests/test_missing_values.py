"""NaN through every entry point: valid for models that route missing values, refused otherwise.

Models that learned where missing values go (HistGradientBoosting, XGBoost, LightGBM;
``metadata.missing_values == "routed"``) take NaN in any numeric session field from a
session dict, a batch, the SessionTracker, the example service and CSV scoring, and
answer exactly what their own library answers for the features the build computes
(numpy's path) from the same page view. scikit-learn's GradientBoosting models refuse
NaN with an InputError naming the field, on every one of those paths.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import reco_fast
from reco_fast import InputError, SessionTracker
from reco_fast.artifact import CATALOG_FILE
from reco_fast.compiler.driver import compile_model
from reco_fast.features.page import FeatureBuilder
from reco_fast.features.schema import LABEL, NUMERIC_FIELDS
from reco_fast.serve.model import write_catalog
from reco_fast.tools.score import OUTPUT_COLUMN, score_file
from tests.helpers import REPO, session_from_row

FAMILIES = ("sklearn-hgb", "xgboost", "lightgbm")
NUMERIC = tuple(NUMERIC_FIELDS)


def _estimator(family: str) -> Any:
    if family == "sklearn-hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=30, max_depth=4, random_state=0)
    if family == "xgboost":
        xgb = pytest.importorskip("xgboost")
        return xgb.XGBClassifier(n_estimators=30, max_depth=4, learning_rate=0.2, n_jobs=1)
    lgb = pytest.importorskip("lightgbm")
    return lgb.LGBMClassifier(
        n_estimators=30, num_leaves=15, learning_rate=0.2, n_jobs=1, verbose=-1
    )


def _with_nan(log: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """The log with ``rate`` of every numeric field's cells missing (NaN), at random."""
    rng = np.random.default_rng(seed)
    out = log.copy()
    for name in NUMERIC:
        col = out[name].astype(np.float64)
        col[rng.random(len(col)) < rate] = np.nan
        out[name] = col
    return out


class Routed:
    """A ranking-set page-view model of one family, trained on a log with missing values."""

    def __init__(self, family: str, built: Any, root: Path):
        voc, catalog = built.model.builder.vocabulary, built.model.builder.catalog
        self.builder = FeatureBuilder("ranking", voc, catalog, nan_ok=True)
        log = _with_nan(built.log, 0.15, seed=1)
        columns = {c: log[c].to_numpy() for c in log.columns if c != LABEL}
        X = self.builder.transform(columns)
        assert np.isnan(X).any(axis=0).sum() >= 10  # missing values reach many features
        self.estimator = _estimator(family).fit(X, log[LABEL].to_numpy())
        clean = [session_from_row(r) for _, r in built.log.head(300).iterrows()]
        self.path = root / family
        compile_model(
            self.estimator,
            self.path,
            list(self.builder.feature_names),
            verify_X=X[:3000],
            feature_set="ranking",
            builder=self.builder,
            sessions=clean,
            metadata={
                "vocabulary": voc.to_json(),
                "catalog": CATALOG_FILE,
            },
            write_extra=lambda staging, _: write_catalog(catalog, staging / CATALOG_FILE),
        )
        self.model = reco_fast.load(self.path)
        assert self.model.missing_values == "routed"
        self.tolerance = float(self.model.metadata["verification"]["tolerance"])
        # page views with NaN in one field each, in several fields, and in all of them
        rng = np.random.default_rng(7)
        rows = [session_from_row(r) for _, r in built.log.iloc[1000:1040].iterrows()]
        self.sessions: list[dict[str, Any]] = []
        for i, s in enumerate(rows):
            s = dict(s)
            if i < len(NUMERIC):
                fields: tuple[str, ...] = (NUMERIC[i],)
            elif i == len(NUMERIC):
                fields = NUMERIC
            else:
                fields = tuple(f for f in NUMERIC if rng.random() < 0.4)
            for f in fields:
                s[f] = math.nan
            self.sessions.append(s)

    def reference(self, sessions: list[dict[str, Any]]) -> np.ndarray:
        """The library's own probabilities for the features numpy's path computes."""
        columns = {f: [s[f] for s in sessions] for f in self.builder.required_fields}
        X = self.builder.transform(columns)
        return self.estimator.predict_proba(X)[:, 1]


@pytest.fixture(scope="module")
def routed(built: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Routed]:
    root = tmp_path_factory.mktemp("routed")
    out = {}
    for family in FAMILIES:
        try:
            out[family] = Routed(family, built, root)
        except pytest.skip.Exception:
            pass
    return out


def _family(routed: dict[str, Routed], family: str) -> Routed:
    if family not in routed:
        pytest.skip(f"{family} is not installed")
    return routed[family]


def _close(got: Any, expected: Any, tol: float) -> None:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("family", FAMILIES)
def test_session_dicts_and_batches_equal_the_library(routed, family) -> None:
    r = _family(routed, family)
    expected = r.reference(r.sessions)
    for backend in r.model.available_backends():
        m = r.model.using(backend)
        one = [m.predict_proba(s) for s in r.sessions]  # the C session kernel
        _close(one, expected, r.tolerance)
        _close(m.predict_proba(r.sessions), expected, r.tolerance)  # columns, numpy features
        _close(m.predict_proba(pd.DataFrame(r.sessions)), expected, r.tolerance)
        batch = m.score_batch(r.sessions)
        assert batch.errors == []
        _close(batch.probabilities, expected, r.tolerance)
    # the scalar Python features equal numpy's, NaN where numpy has NaN
    for s in r.sessions:
        np.testing.assert_array_equal(
            r.model.features(s)[0], r.builder.transform({k: [v] for k, v in s.items()})[0]
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_recommend_with_missing_values_equals_the_library(routed, family) -> None:
    r = _family(routed, family)
    ids = r.builder.required_catalog.product_ids.tolist()
    for s in r.sessions[:10]:
        seen = {s[f] for f in ("current_product_id", "prev_product_1", "prev_product_2")}
        seen.add(s["prev_product_3"])
        free = [p for p in ids if p not in seen]
        proba = r.reference([dict(s, recommended_product_id=p) for p in free])
        got = r.model.recommend(s, k=5, threshold=0.0)
        assert len(got) == 5
        by_id = dict(zip(free, proba.tolist(), strict=True))
        _close([g.probability for g in got], [by_id[g.product_id] for g in got], r.tolerance)
        best = np.sort(proba)[::-1][:5]
        _close([g.probability for g in got], best, r.tolerance)


@pytest.mark.parametrize("family", FAMILIES)
def test_tracker_takes_missing_engagement_signals(routed, family) -> None:
    r = _family(routed, family)
    tracker = SessionTracker(r.model, clock=lambda: 1000.0)
    product = r.builder.required_catalog.product_ids[3]
    tracker.page_view("s", product, device_type="Desktop", traffic_source="Organic")
    ctx = tracker.engagement("s", time_on_page_sec=math.nan, scroll_depth=0.5)
    assert math.isnan(ctx["time_on_page_sec"]) and ctx["scroll_depth"] == 0.5
    ctx = tracker.engagement("s", scroll_depth=math.nan, clicked_product_image=math.nan)
    assert math.isnan(ctx["scroll_depth"]) and math.isnan(ctx["clicked_product_image"])
    for candidate in r.builder.required_catalog.product_ids[10:20]:
        s = dict(tracker.context("s"), recommended_product_id=candidate)
        _close([r.model.predict_proba(s)], r.reference([s]), r.tolerance)
    got = tracker.recommend("s", k=3, threshold=0.0)
    assert [g.product_id for g in got] == [
        g.product_id for g in r.model.recommend(tracker.context("s"), k=3, threshold=0.0)
    ]
    # a number after NaN replaces it, and then only grows
    ctx = tracker.engagement("s", time_on_page_sec=40, clicked_product_image=True)
    assert (ctx["time_on_page_sec"], ctx["clicked_product_image"]) == (40.0, 1)
    assert tracker.engagement("s", time_on_page_sec=30)["time_on_page_sec"] == 40.0


@pytest.mark.parametrize("family", FAMILIES)
def test_csv_scoring_reads_empty_cells_and_nan_as_missing(routed, family, tmp_path) -> None:
    r = _family(routed, family)
    frame = pd.DataFrame(r.sessions)
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    text = frame.to_csv(index=False, na_rep="")  # missing values as empty cells...
    lines = text.splitlines()
    lines[1] = lines[1].replace(",,", ",nan,", 1)  # ...and once as the text "nan"
    src.write_text("\n".join(lines) + "\n")
    assert score_file(r.model, src, dst, progress=None) == len(frame)
    out = pd.read_csv(dst)
    _close(out[OUTPUT_COLUMN].to_numpy(), r.reference(r.sessions), r.tolerance)


def _service_client(path: Path) -> Any:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    spec = importlib.util.spec_from_file_location(
        "reco_fast_example_service_nan", REPO / "examples" / "service.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return TestClient(module.create_app(model_path=path))


@pytest.mark.parametrize("family", FAMILIES)
def test_service_takes_nan_and_shows_null(routed, family) -> None:
    r = _family(routed, family)
    product = r.builder.required_catalog.product_ids[5]
    with _service_client(r.path) as client:
        base = "/sessions/x"
        resp = client.post(
            f"{base}/page_view",
            json={"product_id": product, "device_type": "Desktop", "traffic_source": "Organic"},
        )
        assert resp.status_code == 200, resp.text
        resp = client.post(
            f"{base}/engagement",
            content=b'{"time_on_page_sec": NaN, "scroll_depth": "NaN"}',
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 200, resp.text
        ctx = resp.json()
        assert ctx["time_on_page_sec"] is None and ctx["scroll_depth"] is None
        resp = client.get(f"{base}/recommendations", params={"k": 4, "threshold": 0.0})
        assert resp.status_code == 200, resp.text
        session = dict(ctx, time_on_page_sec=math.nan, scroll_depth=math.nan)
        expected = r.model.recommend(session, k=4, threshold=0.0)
        assert [x["product_id"] for x in resp.json()] == [e.product_id for e in expected]
        _close(
            [x["probability"] for x in resp.json()],
            r.reference([dict(session, recommended_product_id=e.product_id) for e in expected]),
            r.tolerance,
        )


# ---- scikit-learn's GradientBoosting: NaN stays an InputError naming the field -----------


@pytest.mark.parametrize("field", NUMERIC)
def test_gradient_boosting_refuses_nan_in_every_entry_point(built, field, tmp_path) -> None:
    model = built.model
    assert model.missing_values == "refused"
    session = dict(session_from_row(built.log.iloc[5]), **{field: math.nan})
    for call in (
        lambda: model.predict_proba(session),
        lambda: model.predict_proba([session]),
        lambda: model.predict_proba(pd.DataFrame([session])),
        lambda: model.recommend(session),
    ):
        with pytest.raises(InputError, match="is NaN") as info:
            call()
        assert info.value.field == field
    batch = model.score_batch([session, session_from_row(built.log.iloc[6])])
    assert math.isnan(batch.probabilities[0]) and not math.isnan(batch.probabilities[1])
    assert [e.field for e in batch.errors] == [field]
    src = tmp_path / "in.csv"
    pd.DataFrame([session_from_row(built.log.iloc[6]), session]).to_csv(src, index=False, na_rep="")
    with pytest.raises(InputError, match=f"'{field}' is NaN.*row 1") as info:
        score_file(model, src, tmp_path / "out.csv", progress=None)
    assert info.value.field == field


@pytest.mark.parametrize("field", ["time_on_page_sec", "scroll_depth", "clicked_product_image"])
def test_gradient_boosting_tracker_and_service_refuse_nan(built, field) -> None:
    tracker = SessionTracker(built.model, clock=lambda: 1000.0)
    product = built.model.builder.required_catalog.product_ids[3]
    tracker.page_view("s", product, device_type="Desktop", traffic_source="Organic")
    with pytest.raises(InputError, match="is NaN") as info:
        tracker.engagement("s", **{field: math.nan})
    assert info.value.field == field
    with _service_client(built.path) as client:
        client.post(
            "/sessions/y/page_view",
            json={"product_id": product, "device_type": "Desktop", "traffic_source": "Organic"},
        )
        resp = client.post(
            "/sessions/y/engagement",
            content=f'{{"{field}": NaN}}'.encode(),
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 422 and resp.json()["field"] == field
