"""The build report: every section of the seed notebook, as Markdown and JSON.

Build-time only (pandas, scikit-learn). The numbers are computed here from the
data, the fitted estimator and the compiled model, never typed in; the same
dict is printed, written as ``report.json`` and rendered as ``report.md``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from reco_fast.build.calibrate import render_markdown as calibration_markdown
from reco_fast.build.train import SEED_PARAMS, Split
from reco_fast.features.schema import LABEL

__all__ = ["THRESHOLDS", "build_report", "predictions_frame", "render_markdown"]

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
BATCH_SIZES = (1, 10, 100, 1000)
DAILY_SESSIONS = 100_000
RECS_PER_SESSION = 3
REVENUE_PER_CLICK = 5.0
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


def _rate_table(frame: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    g = frame.groupby(by)[LABEL].agg(["sum", "count", "mean"]).reset_index()
    return [
        {
            by: str(r[by]),
            "clicks": int(r["sum"]),
            "count": int(r["count"]),
            "rate": float(r["mean"]),
        }
        for _, r in g.iterrows()
    ]


def _time_per_row(fn: Callable[[], Any], n_rows: int, budget_s: float = 0.2) -> float:
    """Median seconds per row over repeated calls (at least 5, about budget_s in total)."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 2000):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / n_rows


def _segment_table(test: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    g = (
        test.groupby(by)
        .agg(
            actual_clicks=(LABEL, "sum"),
            total=(LABEL, "count"),
            actual_ctr=(LABEL, "mean"),
            avg_prob=("click_probability", "mean"),
            high_conf_count=("high_confidence", "sum"),
        )
        .reset_index()
    )
    return [
        {
            by: str(r[by]),
            "actual_clicks": int(r["actual_clicks"]),
            "total": int(r["total"]),
            "actual_ctr": float(r["actual_ctr"]),
            "avg_prob": float(r["avg_prob"]),
            "high_conf_count": int(r["high_conf_count"]),
        }
        for _, r in g.iterrows()
    ]


def predictions_frame(
    log: pd.DataFrame, split: Split, proba: np.ndarray, threshold: float
) -> pd.DataFrame:
    """The seed's realtime_recommendation_predictions.csv, most confident first."""
    test = log.iloc[split.idx_test].copy()
    test["click_probability"] = proba
    test["high_confidence"] = (proba >= threshold).astype(int)
    out = test[PREDICTION_COLUMNS].sort_values("click_probability", ascending=False, kind="stable")
    return out.reset_index(drop=True)


COVERAGE_PAGE_VIEWS = 1000
"""Test page views replayed through recommend to measure coverage."""


def _coverage(
    model: Any, log: pd.DataFrame, split: Split, proba: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Share of page views with at least one recommendation at the threshold, and how many.

    A model that ranks products (the ranking set) recommends over the whole catalog
    (``k = RECS_PER_SESSION``) for up to ``COVERAGE_PAGE_VIEWS`` test page views; a
    model without candidate features (the seed set) scores one logged product per
    page view, so its coverage is the share of those at or above the threshold.
    """
    can_rank = getattr(getattr(model, "_builder", None), "ranks_products", False)
    if not can_rank:
        shown = proba >= threshold
        return {
            "coverage_method": "logged product per page view at or above the threshold",
            "page_views_checked": len(proba),
            "coverage": float(shown.mean()) if len(proba) else 0.0,
            "shown_per_page_view": float(shown.mean()) * RECS_PER_SESSION if len(proba) else 0.0,
        }
    rows = log.iloc[split.idx_test[:COVERAGE_PAGE_VIEWS]].to_dict("records")
    counts = np.asarray(
        [len(model.recommend(r, k=RECS_PER_SESSION, threshold=threshold)) for r in rows]
    )
    return {
        "coverage_method": f"recommend(k={RECS_PER_SESSION}) over the catalog per page view",
        "page_views_checked": len(rows),
        "coverage": float((counts > 0).mean()) if len(rows) else 0.0,
        "shown_per_page_view": float(counts.mean()) if len(rows) else 0.0,
    }


XGB_REPORTED = ("n_estimators", "max_depth", "learning_rate", "tree_method", "random_state")


def _model_summary(estimator: Any) -> dict[str, Any]:
    """The trained model's class and settings for the report: the seed's
    GradientBoostingClassifier, or XGBoost's classifier (``--engine spark``)."""
    name = type(estimator).__name__
    params = estimator.get_params()
    if name == "GradientBoostingClassifier":
        return {
            "class": name,
            "params": SEED_PARAMS | {k: v for k, v in params.items() if k in SEED_PARAMS},
        }
    return {
        "class": name,
        "params": {k: params[k] for k in XGB_REPORTED if params.get(k) is not None},
    }


def _library(model_class: str) -> str:
    return "XGBoost" if model_class.startswith("XGB") else "scikit-learn"


def build_report(
    *,
    log: pd.DataFrame,
    feature_names: Sequence[str],
    feature_set: str,
    split: Split,
    estimator: Any,
    train_seconds: float,
    model: Any,
    threshold: float,
    source: str,
    calibrator: Any = None,
) -> dict[str, Any]:
    """Compute every number of the report.

    The seed notebook's sections (metrics, the confidence-threshold table) use the
    estimator's own ``predict_proba``; the high-confidence line, coverage, business
    impact, segments and the compiled-vs-scikit-learn check use the probability the
    artifact serves: ``calibrator.predict_proba`` (scikit-learn's
    ``CalibratedClassifierCV``) when the model is calibrated.
    """
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        roc_auc_score,
    )

    y_test = split.y_test
    proba = estimator.predict_proba(split.X_test)[:, 1]
    served = proba if calibrator is None else calibrator.predict_proba(split.X_test)[:, 1]
    pred = (proba >= 0.5).astype(int)
    sk_pred = estimator.predict(split.X_test)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_test, sk_pred).ravel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    thresholds = []
    for t in THRESHOLDS:
        shown = proba >= t
        n_shown = int(shown.sum())
        clicks = int((shown & (y_test == 1)).sum())
        thresholds.append(
            {
                "threshold": t,
                "shown": n_shown,
                "clicks": clicks,
                "ctr": clicks / n_shown if n_shown else None,
            }
        )
    shown = served >= threshold
    hc_recs = int(shown.sum())
    hc_clicks = int((shown & (y_test == 1)).sum())
    hc_ctr = hc_clicks / hc_recs if hc_recs else 0.0
    baseline = float(y_test.mean())
    coverage = _coverage(model, log, split, served, threshold)
    daily = DAILY_SESSIONS * RECS_PER_SESSION
    model_shown = DAILY_SESSIONS * coverage["shown_per_page_view"]
    base_clicks, model_clicks = daily * baseline, model_shown * hc_ctr
    business = {
        "daily_sessions": DAILY_SESSIONS,
        "recommendations_per_session": RECS_PER_SESSION,
        "revenue_per_click": REVENUE_PER_CLICK,
        "daily_recommendations": daily,
        "coverage": coverage["coverage"],
        "model_recommendations_per_day": model_shown,
        "assumptions": (
            f"{DAILY_SESSIONS:,} page views a day (the seed's figure), {RECS_PER_SESSION} slots "
            f"each, ${REVENUE_PER_CLICK:g} per click; the baseline fills every slot at the "
            "test split's click rate; the model shows only what clears the threshold "
            f"({coverage['shown_per_page_view']:.2f} products per page view, measured), at the "
            "click rate of logged recommendations it scores at or above the threshold"
        ),
        "baseline_ctr": baseline,
        "model_ctr": hc_ctr,
        "improvement": (hc_ctr - baseline) / baseline if baseline else 0.0,
        "baseline_clicks_per_day": base_clicks,
        "baseline_revenue_per_day": base_clicks * REVENUE_PER_CLICK,
        "model_clicks_per_day": model_clicks,
        "model_revenue_per_day": model_clicks * REVENUE_PER_CLICK,
        "incremental_clicks_per_day": model_clicks - base_clicks,
        "incremental_revenue_per_day": (model_clicks - base_clicks) * REVENUE_PER_CLICK,
        "incremental_revenue_per_year": (model_clicks - base_clicks) * REVENUE_PER_CLICK * 365,
        "roi_vs_baseline": model_clicks / base_clicks if base_clicks else None,
    }

    importance = sorted(
        zip(feature_names, estimator.feature_importances_.tolist(), strict=True),
        key=lambda kv: -kv[1],
    )

    compiled = model.predict_proba_features(split.X_test)
    speed = []
    for n in BATCH_SIZES:
        X = np.ascontiguousarray(split.X_test[:n])
        sk = _time_per_row(functools.partial(estimator.predict_proba, X), n)
        cp = _time_per_row(functools.partial(model.predict_proba_features, X), n)
        speed.append(
            {
                "batch": n,
                "sklearn_ms_per_row": sk * 1e3,
                "compiled_ms_per_row": cp * 1e3,
                "compiled_per_second": 1 / cp,
                "speedup": sk / cp,
            }
        )

    test = log.iloc[split.idx_test].copy()
    test["click_probability"] = served
    test["high_confidence"] = (served >= threshold).astype(int)

    return {
        "source": source,
        "dataset": {
            "interactions": len(log),
            "sessions": int(log["session_id"].nunique()),
            "customers": int(log["customer_id"].nunique()),
            "click_rate": float(log[LABEL].mean()),
        },
        "click_rate_by": {
            by: _rate_table(log, by) for by in ("device_type", "traffic_source", "current_category")
        },
        "feature_set": feature_set,
        "features": list(feature_names),
        "split": {
            "train": len(split.y_train),
            "train_clicks": int(split.y_train.sum()),
            "test": len(y_test),
            "test_clicks": int(y_test.sum()),
        },
        "model": _model_summary(estimator),
        "training_seconds": train_seconds,
        "metrics": {
            "accuracy": float(accuracy_score(y_test, sk_pred)),
            "auc": float(roc_auc_score(y_test, proba)),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
            "classification_report": classification_report(
                y_test, pred, target_names=["No Click", "Clicked"], output_dict=True
            ),
        },
        "top_features": [{"feature": f, "importance": v} for f, v in importance[:10]],
        "inference_speed": speed,
        "compiled_vs_sklearn_max_abs_diff": float(np.max(np.abs(compiled - served))),
        "thresholds": thresholds,
        "high_confidence": {
            "threshold": threshold,
            "shown": hc_recs,
            "clicks": hc_clicks,
            "ctr": hc_ctr,
            **coverage,
        },
        "business_impact": business,
        "segments": {by: _segment_table(test, by) for by in ("device_type", "traffic_source")},
    }


def _md_table(rows: Sequence[dict[str, Any]], formats: dict[str, str] | None = None) -> str:
    if not rows:
        return "_(none)_\n"
    formats = formats or {}
    cols = list(rows[0])

    def cell(k: str, v: Any) -> str:
        if v is None:
            return "n/a"
        fmt = formats.get(k)
        return format(v, fmt) if fmt else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(k, r[k]) for k in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(r: dict[str, Any]) -> str:
    """The report as Markdown, in the seed notebook's section order."""
    d, m, b, hc = r["dataset"], r["metrics"], r["business_impact"], r["high_confidence"]
    cm = m["confusion_matrix"]
    rate = {"rate": ".1%"}
    out = [
        "# Real-time product recommendations: build report\n",
        f"Data: `{r['source']}`\n",
        "## Dataset overview\n",
        f"- Total interactions: {d['interactions']:,}\n- Unique sessions: {d['sessions']:,}\n"
        f"- Unique customers: {d['customers']:,}\n- Overall click rate: {d['click_rate']:.2%}\n",
        "## Click rate by device\n",
        _md_table(r["click_rate_by"]["device_type"], rate),
        "## Click rate by traffic source\n",
        _md_table(r["click_rate_by"]["traffic_source"], rate),
        "## Click rate by category\n",
        _md_table(r["click_rate_by"]["current_category"], rate),
        f"## Features ({r['feature_set']} set, {len(r['features'])})\n",
        "\n".join(f"{i}. `{f}`" for i, f in enumerate(r["features"], 1)) + "\n",
        "## Train-test split (stratified 80/20)\n",
        f"- Training: {r['split']['train']:,} samples, {r['split']['train_clicks']:,} clicks\n"
        f"- Test: {r['split']['test']:,} samples, {r['split']['test_clicks']:,} clicks\n",
        "## Training\n",
        f"{r['model']['class']}({', '.join(f'{k}={v}' for k, v in r['model']['params'].items())})"
        f"\n\nTraining time: {r['training_seconds']:.2f} s\n",
        "## Model performance\n",
        f"- Accuracy: {m['accuracy']:.4f}\n- AUC-ROC: {m['auc']:.4f}\n"
        f"- Precision: {m['precision']:.3f}\n- Recall: {m['recall']:.3f}\n- F1: {m['f1']:.3f}\n",
        "### Classification report\n",
        _md_table(
            [
                {
                    "class": k,
                    "precision": v["precision"],
                    "recall": v["recall"],
                    "f1-score": v["f1-score"],
                    "support": int(v["support"]),
                }
                for k, v in m["classification_report"].items()
                if isinstance(v, dict)
            ],
            {"precision": ".3f", "recall": ".3f", "f1-score": ".3f"},
        ),
        "### Confusion matrix\n",
        f"- True negatives: {cm['tn']:,}\n- False positives: {cm['fp']:,}\n"
        f"- False negatives: {cm['fn']:,}\n- True positives: {cm['tp']:,}\n",
        "## Top 10 features\n",
        _md_table(r["top_features"], {"importance": ".3f"}),
        "## Inference speed (median per row, this machine)\n",
        _md_table(
            r["inference_speed"],
            {
                "sklearn_ms_per_row": ".5f",
                "compiled_ms_per_row": ".5f",
                "compiled_per_second": ",.0f",
                "speedup": ".0f",
            },
        ),
        f"Compiled vs {_library(r['model']['class'])} on the test split: max |difference| = "
        f"{r['compiled_vs_sklearn_max_abs_diff']:.3g}\n",
        "## Confidence thresholds\n",
        (
            "The estimator's own (uncalibrated) `predict_proba` on the test split, as in the "
            "seed notebook; the line below it uses the served, calibrated probability.\n"
            if (r.get("calibration") or {}).get("calibrated")
            else ""
        ),
        _md_table(r["thresholds"], {"ctr": ".1%"}),
        f"At >= {hc['threshold']}: {hc['shown']:,} recommendations shown, {hc['clicks']:,} clicked, "
        f"CTR {hc['ctr']:.1%}\n",
        calibration_markdown(r["calibration"], r["threshold_choice"]) if "calibration" in r else "",
        "## Business impact (100K daily sessions x 3 recommendations x $5 per click)\n",
        f"Coverage at >= {hc['threshold']}: {hc['coverage']:.1%} of page views get at least one "
        f"recommendation, {hc['shown_per_page_view']:.2f} per page view on average "
        f"({hc['coverage_method']}; {hc['page_views_checked']:,} test page views). "
        f"Inputs: {b['assumptions']}.\n\n",
        f"- Baseline CTR: {b['baseline_ctr']:.1%}; with ML (high confidence): {b['model_ctr']:.1%}"
        f" ({b['improvement']:+.1%})\n"
        f"- Baseline: {b['baseline_clicks_per_day']:,.0f} clicks/day, "
        f"${b['baseline_revenue_per_day']:,.0f}/day, ${b['baseline_revenue_per_day'] * 365:,.0f}/year\n"
        f"- With real-time ML: {b['model_clicks_per_day']:,.0f} clicks/day, "
        f"${b['model_revenue_per_day']:,.0f}/day, ${b['model_revenue_per_day'] * 365:,.0f}/year\n"
        f"- Incremental: {b['incremental_clicks_per_day']:,.0f} clicks/day, "
        f"${b['incremental_revenue_per_day']:,.0f}/day, ${b['incremental_revenue_per_year']:,.0f}/year"
        f"\n- ROI vs baseline: {b['roi_vs_baseline']:.2f}x\n",
        "## Performance by device\n",
        _md_table(r["segments"]["device_type"], {"actual_ctr": ".3f", "avg_prob": ".3f"}),
        "## Performance by traffic source\n",
        _md_table(r["segments"]["traffic_source"], {"actual_ctr": ".3f", "avg_prob": ".3f"}),
        "## Export\n",
        f"`realtime_recommendation_predictions.csv`: {r['split']['test']:,} test-set predictions "
        "with confidence scores, most confident first.\n",
    ]
    return "\n".join(out)
