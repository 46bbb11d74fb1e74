"""The build report has every section of the seed notebook, each number recomputed
here from the log, the split and the estimator."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from tests.helpers import Built

PREDICTION_COLUMNS = [
    "session_id",
    "customer_id",
    "current_product_id",
    "device_type",
    "traffic_source",
    "click_probability",
    "high_confidence",
    "recommendation_clicked",
]
MARKDOWN_SECTIONS = [
    "## Dataset overview",
    "## Click rate by device",
    "## Click rate by traffic source",
    "## Click rate by category",
    "## Features (ranking set, 24)",
    "## Train-test split (stratified 80/20)",
    "## Training",
    "## Model performance",
    "### Classification report",
    "### Confusion matrix",
    "## Top 10 features",
    "## Inference speed",
    "## Confidence thresholds",
    "## Business impact",
    "## Performance by device",
    "## Performance by traffic source",
    "## Export",
]


@pytest.fixture(scope="module")
def report(built: Built) -> dict:
    on_disk = json.loads((built.path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(built.result.report))
    return on_disk


@pytest.fixture(scope="module")
def proba(built: Built) -> np.ndarray:
    return built.estimator.predict_proba(built.split.X_test)[:, 1]


def test_report_files_exist(built: Built) -> None:
    for name in ("report.json", "report.md", "realtime_recommendation_predictions.csv"):
        assert (built.path / name).is_file(), name
    assert (built.path / "report.md").read_text() == built.result.markdown


def test_dataset_overview(report: dict, built: Built) -> None:
    d, log = report["dataset"], built.log
    assert d["interactions"] == len(log) == 15_000
    assert d["sessions"] == log["session_id"].nunique() == 15_000
    assert d["customers"] == log["customer_id"].nunique()
    assert d["click_rate"] == pytest.approx(log["recommendation_clicked"].mean(), abs=1e-15)
    assert report["source"] == str(built.log_path)


@pytest.mark.parametrize("by", ["device_type", "traffic_source", "current_category"])
def test_click_rate_tables(report: dict, built: Built, by: str) -> None:
    g = built.log.groupby(by)["recommendation_clicked"].agg(["sum", "count", "mean"])
    table = report["click_rate_by"][by]
    assert [r[by] for r in table] == sorted(g.index)
    for r in table:
        assert r["clicks"] == g.loc[r[by], "sum"]
        assert r["count"] == g.loc[r[by], "count"]
        assert r["rate"] == pytest.approx(g.loc[r[by], "mean"], abs=1e-15)
    assert sum(r["count"] for r in table) == 15_000


def test_features_split_and_training(report: dict, built: Built) -> None:
    assert report["feature_set"] == "ranking"
    assert report["features"] == list(built.model.feature_names)
    s = report["split"]
    assert (s["train"], s["test"]) == (12_000, 3_000)
    assert s["train_clicks"] == int(built.split.y_train.sum())
    assert s["test_clicks"] == int(built.split.y_test.sum())
    # stratified: both halves have the overall click rate to within a row
    rate = built.y.mean()
    assert abs(s["test_clicks"] - rate * 3000) <= 1
    assert report["model"]["class"] == "GradientBoostingClassifier"
    assert report["model"]["params"] == {
        "n_estimators": 100,
        "max_depth": 4,
        "learning_rate": 0.1,
        "subsample": 0.8,
        "min_samples_split": 50,
        "min_samples_leaf": 20,
        "random_state": 42,
    }
    assert 0.0 < report["training_seconds"] < 120


def test_metrics(report: dict, built: Built, proba: np.ndarray) -> None:
    y = built.split.y_test
    pred = (proba >= 0.5).astype(int)
    m = report["metrics"]
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-15)
    assert m["auc"] == pytest.approx(roc_auc_score(y, proba), abs=1e-15)
    assert 0.6 < m["auc"] < 0.95  # a useful, not a separable, problem
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert tn + fp + fn + tp == 3000
    assert m["precision"] == pytest.approx(tp / (tp + fp), abs=1e-15)
    assert m["recall"] == pytest.approx(tp / (tp + fn), abs=1e-15)
    f1 = 2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"])
    assert m["f1"] == pytest.approx(f1, abs=1e-15)
    cr = m["classification_report"]
    assert {"No Click", "Clicked", "accuracy", "macro avg", "weighted avg"} <= set(cr)
    assert cr["Clicked"]["precision"] == pytest.approx(m["precision"], abs=1e-15)
    assert cr["Clicked"]["recall"] == pytest.approx(m["recall"], abs=1e-15)
    assert cr["Clicked"]["support"] == tp + fn
    assert cr["No Click"]["support"] == tn + fp
    assert cr["accuracy"] == pytest.approx(m["accuracy"], abs=1e-15)


def test_top_features(report: dict, built: Built) -> None:
    top = report["top_features"]
    importances = dict(
        zip(built.model.feature_names, built.estimator.feature_importances_, strict=True)
    )
    assert len(top) == 10
    values = [t["importance"] for t in top]
    assert values == sorted(values, reverse=True)
    for t in top:
        assert t["importance"] == pytest.approx(importances[t["feature"]], abs=1e-15)
    assert values[0] == pytest.approx(max(importances.values()), abs=1e-15)
    assert top[0]["feature"] == "engagement_score"  # the seed's strongest signal


def test_inference_speed(report: dict) -> None:
    speed = report["inference_speed"]
    assert [s["batch"] for s in speed] == [1, 10, 100, 1000]
    for s in speed:
        assert s["sklearn_ms_per_row"] > 0 and s["compiled_ms_per_row"] > 0
        assert s["speedup"] == pytest.approx(s["sklearn_ms_per_row"] / s["compiled_ms_per_row"])
        assert s["compiled_per_second"] == pytest.approx(1e3 / s["compiled_ms_per_row"])
    # one row through sklearn costs far more than through the compiled library
    assert speed[0]["speedup"] > 5
    assert 0.0 <= report["compiled_vs_sklearn_max_abs_diff"] <= 1e-12


def test_thresholds_and_business_impact(report: dict, built: Built, proba: np.ndarray) -> None:
    y = built.split.y_test
    rows = report["thresholds"]
    assert [r["threshold"] for r in rows] == [0.5, 0.6, 0.7, 0.8, 0.9]
    for r in rows:
        shown = proba >= r["threshold"]
        assert r["shown"] == shown.sum()
        assert r["clicks"] == (shown & (y == 1)).sum()
        if r["shown"]:
            assert r["ctr"] == pytest.approx(r["clicks"] / r["shown"], abs=1e-15)
    assert [r["shown"] for r in rows] == sorted((r["shown"] for r in rows), reverse=True)
    hc = report["high_confidence"]
    at07 = rows[2]
    assert {k: hc[k] for k in ("threshold", "shown", "clicks", "ctr")} == {
        "threshold": 0.7,
        "shown": at07["shown"],
        "clicks": at07["clicks"],
        "ctr": at07["ctr"],
    }
    assert hc["ctr"] > y.mean() + 0.1  # confident recommendations click much more

    b = report["business_impact"]
    assert (b["daily_sessions"], b["recommendations_per_session"], b["revenue_per_click"]) == (
        100_000,
        3,
        5.0,
    )
    assert b["daily_recommendations"] == 300_000
    assert b["baseline_ctr"] == pytest.approx(y.mean(), abs=1e-15)
    assert b["model_ctr"] == hc["ctr"]
    assert b["baseline_clicks_per_day"] == pytest.approx(300_000 * y.mean())
    # the model fills only the slots that clear the threshold: coverage, measured by recommend
    assert 0.0 < hc["coverage"] <= 1.0 and 0.0 < hc["shown_per_page_view"] <= 3.0
    assert hc["coverage_method"].startswith("recommend(k=3)")
    assert b["model_recommendations_per_day"] == pytest.approx(100_000 * hc["shown_per_page_view"])
    assert b["model_clicks_per_day"] == pytest.approx(
        100_000 * hc["shown_per_page_view"] * hc["ctr"]
    )
    assert "slots" in b["assumptions"] and b["coverage"] == hc["coverage"]
    assert b["baseline_revenue_per_day"] == pytest.approx(5 * b["baseline_clicks_per_day"])
    assert b["model_revenue_per_day"] == pytest.approx(5 * b["model_clicks_per_day"])
    inc = b["model_clicks_per_day"] - b["baseline_clicks_per_day"]
    assert b["incremental_clicks_per_day"] == pytest.approx(inc)
    assert b["incremental_revenue_per_day"] == pytest.approx(5 * inc)
    assert b["incremental_revenue_per_year"] == pytest.approx(5 * inc * 365)
    assert b["improvement"] == pytest.approx((hc["ctr"] - y.mean()) / y.mean())
    assert b["roi_vs_baseline"] == pytest.approx(
        b["model_clicks_per_day"] / b["baseline_clicks_per_day"]
    )


@pytest.mark.parametrize("by", ["device_type", "traffic_source"])
def test_segments(report: dict, built: Built, proba: np.ndarray, by: str) -> None:
    test = built.log.iloc[built.split.idx_test].assign(click_probability=proba)
    g = test.groupby(by)
    table = report["segments"][by]
    assert [r[by] for r in table] == sorted(test[by].unique())
    for r in table:
        part = test[test[by] == r[by]]
        assert r["total"] == len(part)
        assert r["actual_clicks"] == part["recommendation_clicked"].sum()
        assert r["actual_ctr"] == pytest.approx(part["recommendation_clicked"].mean(), abs=1e-15)
        assert r["avg_prob"] == pytest.approx(part["click_probability"].mean(), abs=1e-12)
        assert r["high_conf_count"] == (part["click_probability"] >= 0.7).sum()
    assert sum(r["total"] for r in table) == 3000
    assert len(g) == len(table)


def test_predictions_csv(built: Built, proba: np.ndarray) -> None:
    pred = pd.read_csv(built.path / "realtime_recommendation_predictions.csv")
    assert list(pred.columns) == PREDICTION_COLUMNS
    assert len(pred) == 3000
    assert pred["session_id"].is_unique
    p = pred["click_probability"].to_numpy()
    assert np.all(np.diff(p) <= 0)  # most confident first
    assert np.array_equal(pred["high_confidence"].to_numpy(), (p >= 0.7).astype(int))
    # joined back to the log and the estimator, row by row
    test = built.log.iloc[built.split.idx_test].assign(expected=proba).set_index("session_id")
    joined = test.loc[pred["session_id"]]
    assert np.max(np.abs(joined["expected"].to_numpy() - p)) <= 1e-15
    for col in (
        "customer_id",
        "current_product_id",
        "device_type",
        "traffic_source",
        "recommendation_clicked",
    ):
        assert (joined[col].to_numpy() == pred[col].to_numpy()).all(), col


def test_markdown_has_every_section_in_order(built: Built, report: dict) -> None:
    md = (built.path / "report.md").read_text()
    positions = [md.find(h) for h in MARKDOWN_SECTIONS]
    assert all(p >= 0 for p in positions), [
        h for h, p in zip(MARKDOWN_SECTIONS, positions, strict=True) if p < 0
    ]
    assert positions == sorted(positions)
    d, m = report["dataset"], report["metrics"]
    assert f"- Total interactions: {d['interactions']:,}" in md
    assert f"- Unique customers: {d['customers']:,}" in md
    assert f"- Overall click rate: {d['click_rate']:.2%}" in md
    assert f"- AUC-ROC: {m['auc']:.4f}" in md
    assert f"- Accuracy: {m['accuracy']:.4f}" in md
    assert f"- True positives: {m['confusion_matrix']['tp']:,}" in md
    for r in report["click_rate_by"]["device_type"]:
        assert f"| {r['device_type']} | {r['clicks']} | {r['count']} | {r['rate']:.1%} |" in md
    for t in report["thresholds"]:
        assert f"| {t['threshold']} | {t['shown']} | {t['clicks']} |" in md
    for name in report["features"]:
        assert f"`{name}`" in md
    assert "realtime_recommendation_predictions.csv" in md
