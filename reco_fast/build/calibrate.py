"""Calibration and threshold choice for page-view models, on held-out rows (issue 12, item 6).

Build-time only (scikit-learn). The model trains on the seed's 80% split, unchanged.
Its 20% test split is cut, by session, into two halves:

* the **calibration half** fits scikit-learn's ``CalibratedClassifierCV`` on the
  frozen model (``method="sigmoid"``, Platt's, by default; or ``"isotonic"``) and
  chooses the threshold for a stated target;
* the **evaluation half** measures both, untouched by either choice.

Serving applies the same map to the compiled raw margin
(:mod:`reco_fast.serve.calibration`), so ``predict_proba`` is the calibrator's
probability; thresholds apply to it.

Threshold rules (:func:`choose_threshold`), on the calibration half:

* ``target_precision=P``: the lowest threshold at which the logged recommendations
  the model scores at or above it were clicked at least a share ``P`` of the time
  (at least :data:`MIN_SHOWN` of them), so coverage is as large as the target allows;
* ``target_coverage=C``: the highest threshold at which at least a share ``C`` of
  page views get at least one recommendation (``recommend`` over the catalog for a
  ``ranking`` model; the logged product for a ``seed`` model);
* neither: the given threshold (0.7 by default, the seed's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from reco_fast.build.train import SPLIT_SEED, Split
from reco_fast.serve.calibration import METHODS, Calibration

__all__ = [
    "DEFAULT_THRESHOLD",
    "MIN_SHOWN",
    "Holdout",
    "calibration_section",
    "check_targets",
    "choose_threshold",
    "fit_calibrator",
    "holdout_halves",
]

DEFAULT_THRESHOLD = 0.7
MIN_SHOWN = 30
"""A precision target is met only by a threshold that shows at least this many held-out rows."""
COVERAGE_PAGE_VIEWS = 1000
"""Page views of each half replayed through ``recommend`` to measure coverage."""
RELIABILITY_BINS = 10


@dataclass(frozen=True)
class Holdout:
    """Positions in the test split (``Split.X_test`` rows) of the two session-disjoint halves."""

    calibration: np.ndarray
    evaluation: np.ndarray


def holdout_halves(sessions: np.ndarray, seed: int = SPLIT_SEED) -> Holdout:
    """Cut the test split in two halves by session (no session in both), seeded.

    ``sessions`` holds the session id of each test row, in test-split order.
    """
    from sklearn.model_selection import GroupShuffleSplit

    idx = np.arange(len(sessions))
    cal, ev = next(
        GroupShuffleSplit(n_splits=1, test_size=0.5, random_state=seed).split(idx, groups=sessions)
    )
    return Holdout(np.sort(cal), np.sort(ev))


def check_targets(
    threshold: float | None, target_precision: float | None, target_coverage: float | None
) -> None:
    """ValueError naming the option unless at most one of them is given, each in range."""
    given = [
        name
        for name, v in (
            ("--threshold", threshold),
            ("--target-precision", target_precision),
            ("--target-coverage", target_coverage),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} each set the threshold: give one of them")
    for name, v, low_open in (
        ("threshold", threshold, False),
        ("target_precision", target_precision, True),
        ("target_coverage", target_coverage, True),
    ):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a number, got {str(v)[:40]!r}")
        if not (0.0 < v <= 1.0 if low_open else 0.0 <= v <= 1.0):
            bounds = "(0, 1]" if low_open else "[0, 1]"
            raise ValueError(f"{name} must be in {bounds}, got {v!r}")


def fit_calibrator(
    estimator: Any, X: np.ndarray, y: np.ndarray, method: str
) -> tuple[Any, Calibration]:
    """scikit-learn's calibrator of the frozen ``estimator`` on held-out rows, and its map.

    Returns the fitted ``CalibratedClassifierCV`` (its ``predict_proba`` is the
    reference the compiled artifact is verified against) and the
    :class:`Calibration` that reproduces it from the raw margin.

    Raises
    ------
    ValueError
        ``method`` is unknown, the rows hold one class only, or the fitted map does
        not increase with the margin (the model ranks held-out rows worse than chance).
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    if method not in METHODS:
        raise ValueError(f"calibration must be one of {list(METHODS)} or none, got {method!r}")
    if len(np.unique(y)) < 2:
        raise ValueError(
            "calibration needs clicks and non-clicks among the held-out rows; "
            "use --calibration none"
        )
    clf = CalibratedClassifierCV(FrozenEstimator(estimator), method=method)
    clf.fit(X, y)
    (fitted,) = clf.calibrated_classifiers_  # the frozen model: one calibrator on every row
    (cal,) = fitted.calibrators
    if method == "sigmoid":
        obj: dict[str, Any] = {"method": "sigmoid", "a": float(cal.a_), "b": float(cal.b_)}
    else:
        obj = {
            "method": "isotonic",
            "x": np.asarray(cal.X_thresholds_, dtype=np.float64).tolist(),
            "y": np.asarray(cal.y_thresholds_, dtype=np.float64).tolist(),
        }
    try:
        calibration = Calibration.from_json(obj)
    except ValueError as exc:
        raise ValueError(
            f"the {method} calibration fitted on {len(y):,} held-out rows is not an "
            f"increasing map ({exc}); the model does not rank held-out rows: use "
            "--calibration none"
        ) from None
    assert calibration is not None
    return clf, calibration


def _best_scores(model: Any, rows: list[dict[str, Any]], proba: np.ndarray) -> np.ndarray:
    """The highest served probability each page view can get: its best recommendation over
    the catalog (ranking models, ``recommend(k=1, threshold=0)``, -inf when every product
    is excluded) or its logged product's (models that cannot rank)."""
    if not getattr(model, "can_recommend", False):
        return proba
    best = [model.recommend(r, k=1, threshold=0.0) for r in rows]
    return np.asarray([b[0].probability if b else -math.inf for b in best], dtype=np.float64)


def _measure(
    model: Any, log: pd.DataFrame, split: Split, pos: np.ndarray, proba: np.ndarray, t: float
) -> dict[str, Any]:
    """Precision and coverage at threshold ``t`` on the test rows at positions ``pos``."""
    y = split.y_test[pos]
    p = proba[pos]
    shown = p >= t
    rows_pos = pos[:COVERAGE_PAGE_VIEWS]
    rows = log.iloc[split.idx_test[rows_pos]].to_dict("records")
    best = _best_scores(model, rows, proba[rows_pos])
    return {
        "rows": len(pos),
        "shown": int(shown.sum()),
        "clicks": int((shown & (y == 1)).sum()),
        "precision": float(y[shown].mean()) if shown.any() else None,
        "page_views_checked": len(rows),
        "coverage": float((best >= t).mean()) if len(rows) else 0.0,
    }


def choose_threshold(
    model: Any,
    log: pd.DataFrame,
    split: Split,
    holdout: Holdout,
    proba: np.ndarray,
    *,
    threshold: float | None = None,
    target_precision: float | None = None,
    target_coverage: float | None = None,
) -> dict[str, Any]:
    """The threshold for the stated target, chosen on the calibration half, and what it gives.

    ``model`` is the staged compiled model (serving its calibrated probabilities),
    ``proba`` its probabilities of ``split.X_test``. Returns ``{"threshold", "rule",
    "target", "calibration_half": {...}, "evaluation_half": {...}}``, each half with
    ``rows``, ``shown``, ``clicks``, ``precision`` (clicks among logged
    recommendations at or above the threshold), ``page_views_checked`` and
    ``coverage`` (share of page views with at least one recommendation).

    Raises
    ------
    ValueError
        No threshold meets the precision target on the calibration half (with at
        least ``MIN_SHOWN`` rows shown), or the arguments are out of range.
    """
    check_targets(threshold, target_precision, target_coverage)
    cal = holdout.calibration
    if target_precision is not None:
        from sklearn.metrics import precision_recall_curve

        y, p = split.y_test[cal], proba[cal]
        precision, _, cuts = precision_recall_curve(y, p)
        shown = len(p) - np.searchsorted(np.sort(p), cuts, side="left")  # rows with p >= cut
        ok = np.flatnonzero((precision[:-1] >= target_precision) & (shown >= MIN_SHOWN))
        if ok.size == 0:
            enough = shown >= MIN_SHOWN
            top = float(np.max(precision[:-1][enough])) if enough.any() else math.nan
            raise ValueError(
                f"target_precision {target_precision:g}: no threshold reaches it on the "
                f"{len(cal):,} held-out calibration rows with at least {MIN_SHOWN} shown "
                f"(the best is {top:.3f}); lower the target"
            )
        t = float(cuts[ok[0]])  # cuts ascend: the lowest threshold that meets the target
        rule, target = "target_precision", target_precision
    elif target_coverage is not None:
        rows_pos = cal[:COVERAGE_PAGE_VIEWS]
        rows = log.iloc[split.idx_test[rows_pos]].to_dict("records")
        best = np.sort(_best_scores(model, rows, proba[rows_pos]))[::-1]
        if not len(best):
            raise ValueError("target_coverage: the calibration half has no page views")
        need = max(1, math.ceil(target_coverage * len(best) - 1e-9))
        t = float(min(max(best[need - 1], 0.0), 1.0))  # the highest that covers `need`
        rule, target = "target_coverage", target_coverage
    else:
        t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        rule, target = ("default" if threshold is None else "given"), None
    return {
        "threshold": t,
        "rule": rule,
        "target": target,
        "min_shown": MIN_SHOWN,
        "calibration_half": _measure(model, log, split, cal, proba, t),
        "evaluation_half": _measure(model, log, split, holdout.evaluation, proba, t),
    }


def _reliability(y: np.ndarray, p: np.ndarray) -> list[dict[str, Any]]:
    """Ten equal-width bins of predicted probability: rows, mean predicted, observed click rate."""
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y, p, n_bins=RELIABILITY_BINS, strategy="uniform")
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    # calibration_curve's own binning (it leaves empty bins out)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=RELIABILITY_BINS)
    nonempty = np.flatnonzero(counts)
    return [
        {
            "bin": f"{edges[i]:.1f}-{edges[i + 1]:.1f}",
            "rows": int(counts[i]),
            "mean_predicted": float(pr),
            "observed": float(ob),
        }
        for i, pr, ob in zip(nonempty.tolist(), predicted, observed, strict=True)
    ]


def calibration_section(
    method: str | None,
    calibration: Calibration | None,
    holdout: Holdout,
    y_test: np.ndarray,
    raw: np.ndarray,
    served: np.ndarray,
) -> dict[str, Any]:
    """The report's calibration numbers, measured on the evaluation half.

    ``raw``: the estimator's own ``predict_proba`` of the test split; ``served``: the
    artifact's (calibrated) probabilities. Brier score and log loss by
    ``sklearn.metrics``; reliability by ``sklearn.calibration.calibration_curve``.
    """
    from sklearn.metrics import brier_score_loss, log_loss

    ev = holdout.evaluation
    y = y_test[ev]

    def scores(p: np.ndarray) -> dict[str, Any]:
        return {
            "brier": float(brier_score_loss(y, p)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
            "mean_predicted": float(p.mean()),
            "reliability": _reliability(y, p),
        }

    return {
        "method": method,
        "params": None if calibration is None else calibration.to_json(),
        "fitted_on": "calibration half of the test split (sessions disjoint from the evaluation half)",
        "calibration_rows": len(holdout.calibration),
        "evaluation_rows": len(ev),
        "observed_click_rate": float(y.mean()) if len(y) else None,
        "uncalibrated": scores(raw[ev]),
        "calibrated": scores(served[ev]) if calibration is not None else None,
    }


def render_markdown(c: dict[str, Any], choice: dict[str, Any]) -> str:
    """The report's "Calibration" and "Threshold" sections as Markdown."""

    def table(rows: Sequence[dict[str, Any]]) -> str:
        lines = ["| bin | rows | mean predicted | observed |", "|---|---|---|---|"]
        lines += [
            f"| {r['bin']} | {r['rows']:,} | {r['mean_predicted']:.3f} | {r['observed']:.3f} |"
            for r in rows
        ]
        return "\n".join(lines) + "\n"

    out = ["## Calibration\n"]
    u, k = c["uncalibrated"], c["calibrated"]
    if k is None:
        out.append(
            "Not calibrated (`--calibration none`): probabilities are the estimator's own "
            f"`predict_proba`. On the evaluation half ({c['evaluation_rows']:,} rows): Brier "
            f"score {u['brier']:.4f}, log loss {u['log_loss']:.4f}, mean predicted "
            f"{u['mean_predicted']:.3f} against an observed click rate of "
            f"{c['observed_click_rate']:.3f}.\n"
        )
        out += ["### Reliability\n", table(u["reliability"])]
    else:
        params = c["params"]
        what = (
            f"Platt's sigmoid, p = 1 / (1 + exp({params['a']:.6g} * margin + {params['b']:.6g}))"
            if c["method"] == "sigmoid"
            else f"isotonic, {len(params['x'])} breakpoints on the margin"
        )
        out.append(
            f"Method: {what}, fitted by scikit-learn's `CalibratedClassifierCV` on the frozen "
            f"model over the calibration half of the test split ({c['calibration_rows']:,} "
            "rows the model did not train on). `predict_proba` and `recommend` serve the "
            "calibrated probability; `decision_function` the raw margin.\n\n"
            f"Measured on the evaluation half ({c['evaluation_rows']:,} rows, sessions "
            f"disjoint from the calibration half; observed click rate "
            f"{c['observed_click_rate']:.3f}):\n\n"
            "| | Brier score | log loss | mean predicted |\n|---|---|---|---|\n"
            f"| uncalibrated | {u['brier']:.4f} | {u['log_loss']:.4f} | "
            f"{u['mean_predicted']:.3f} |\n"
            f"| calibrated | {k['brier']:.4f} | {k['log_loss']:.4f} | "
            f"{k['mean_predicted']:.3f} |\n"
        )
        out += [
            "### Reliability before calibration\n",
            table(u["reliability"]),
            "### Reliability after calibration\n",
            table(k["reliability"]),
        ]
    target = choice["target"]
    rule = {
        "default": "the default (the seed's 0.7)",
        "given": "given (--threshold)",
        "target_precision": f"the lowest with precision >= {target} on the calibration half "
        f"(at least {choice['min_shown']} rows shown)",
        "target_coverage": f"the highest with coverage >= {target} on the calibration half",
    }[choice["rule"]]
    out.append(f"## Threshold\n\nThreshold {choice['threshold']:.4f}: {rule}.\n")
    lines = [
        "| half | rows | shown | clicks | precision | coverage | page views checked |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("calibration_half", "evaluation_half"):
        m = choice[name]
        prec = "n/a" if m["precision"] is None else f"{m['precision']:.1%}"
        lines.append(
            f"| {name.replace('_', ' ')} | {m['rows']:,} | {m['shown']:,} | {m['clicks']:,} | "
            f"{prec} | {m['coverage']:.1%} | {m['page_views_checked']:,} |"
        )
    out.append(
        "\n".join(lines)
        + "\n\nPrecision: clicks among the logged recommendations scored at or above the "
        "threshold. Coverage: share of page views with at least one recommendation "
        "(`recommend` over the catalog for a ranking model; the logged product otherwise).\n"
    )
    return "\n".join(out)
