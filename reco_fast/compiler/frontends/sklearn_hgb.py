"""scikit-learn's ``HistGradientBoostingClassifier`` (binary) and ``...Regressor``.

Unlike ``GradientBoosting*``, the histogram models predict on float64 inputs (no
float32 rounding) against float64 thresholds, and route NaN where each split learned
(``missing_go_to_left``; a feature without NaN in training sends NaN to the child that
saw more samples): NaN is a valid input. Reference: ``decision_function`` /
``predict_proba`` for the classifier, ``predict`` for the regressor (identity link).
Categorical splits are refused; losses with a log link (poisson, gamma) are refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reco_fast.errors import CompileError

from . import Imported, treelite_error
from .sklearn_gbc import sklearn_imported

__all__ = ["REGRESSOR_LOSSES", "import_model"]

REGRESSOR_LOSSES = ("squared_error", "absolute_error", "quantile")
"""The regressor losses whose prediction is the raw sum (identity link)."""


def import_model(estimator: Any) -> Imported:
    """Check and import a fitted HistGradientBoostingClassifier / ...Regressor."""
    kind = type(estimator).__name__
    if not hasattr(estimator, "_predictors"):
        raise CompileError(f"the {kind} is not fitted; call fit() first")
    classifier = hasattr(estimator, "classes_")
    if classifier:
        if len(estimator.classes_) != 2:
            raise CompileError(
                f"only binary classifiers are supported; this one has "
                f"{len(estimator.classes_)} classes"
            )
    elif estimator.loss not in REGRESSOR_LOSSES:
        raise CompileError(
            f"loss={estimator.loss!r} is not supported: its prediction is exp(raw sum) (a log "
            f"link); use one of {list(REGRESSOR_LOSSES)}"
        )
    categorical = getattr(estimator, "is_categorical_", None)
    if categorical is not None and bool(np.any(categorical)):
        raise CompileError(
            f"{kind} with categorical features is not supported (features "
            f"{np.flatnonzero(categorical)[:8].tolist()} are categorical): categorical splits "
            "are not compiled; encode them as numbers (e.g. OrdinalEncoder) and set "
            "categorical_features=None"
        )
    if len(estimator._predictors) == 0:
        raise CompileError(f"the {kind} has no fitted trees")
    import treelite

    try:
        tl_model = treelite.sklearn.import_model(estimator)
    except (NotImplementedError, treelite.TreeliteError) as exc:
        raise treelite_error(exc) from exc

    return sklearn_imported(
        estimator,
        tl_model,
        family="sklearn-hgb",
        n_trees=len(estimator._predictors),
        input_precision="float64",
        missing_values="routed",
    )
