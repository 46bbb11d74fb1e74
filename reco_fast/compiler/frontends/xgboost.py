"""XGBoost: ``XGBClassifier`` (``binary:logistic``), ``XGBRanker`` (``rank:pairwise``,
``rank:ndcg``, ``rank:map``), ``XGBRegressor`` (``reg:squarederror``,
``reg:absoluteerror``, ``reg:pseudohubererror``) and a bare ``xgboost.Booster`` with one of
those objectives.

XGBoost rounds every input to float32 (its DMatrix stores float32), compares
``x < threshold`` with float32 thresholds, sends NaN down each node's learned default
direction, and sums float32 leaves in float32: ``base + leaf_0 + leaf_1 + ...``, one
rounding per addition. tl2cgen's C sums the same float32 leaves in another order
(``(leaf_0 + leaf_1 + ...) + base``, each leaf a decimal literal added through double),
so the two margins can differ by a few float32 roundings. Each of the two sums of
T + 1 terms has error at most T * u * S, where u = 2**-24 (float32's unit roundoff) and
S = |base| + sum over trees of the tree's largest |leaf| (a bound on every partial sum);
the tolerance is twice the sum of both, ``TOL = 4 * (T + 1) * u * S`` on the margin, and
``TOL / 4 + 8 * u`` on the probability (the sigmoid is 1/4-Lipschitz and is itself
computed in float32 by both). Verification measures the actual largest difference and
records it with the bound.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from reco_fast.compiler.ir import model_json
from reco_fast.errors import CompileError

from . import Imported, as_1d, leaf_sum_bound, scalar_params, treelite_error

__all__ = ["OBJECTIVES", "float32_sum_bound", "import_model"]

OBJECTIVES = {
    "binary:logistic": ("probability", "sigmoid"),
    "rank:pairwise": ("score", "identity"),
    "rank:ndcg": ("score", "identity"),
    "rank:map": ("score", "identity"),
    "reg:squarederror": ("value", "identity"),
    "reg:absoluteerror": ("value", "identity"),
    "reg:pseudohubererror": ("value", "identity"),
}
"""Objectives compiled: (output, link)."""

U32 = 2.0**-24
"""float32's unit roundoff."""


def float32_sum_bound(tl_json: dict[str, Any]) -> tuple[float, float]:
    """(margin tolerance, probability tolerance) for a model summed in float32 (see above)."""
    n_trees, total = leaf_sum_bound(tl_json)
    margin = 4.0 * (n_trees + 1) * U32 * total
    return margin, margin / 4.0 + 8.0 * U32


def import_model(estimator: Any) -> Imported:
    """Check and import a fitted XGBoost estimator or Booster."""
    import xgboost

    if isinstance(estimator, xgboost.Booster):
        booster, wrapper = estimator, None
    elif isinstance(estimator, xgboost.XGBModel):
        try:
            booster = estimator.get_booster()
        except (xgboost.core.XGBoostError, AttributeError, ValueError):
            raise CompileError(
                f"the {type(estimator).__name__} is not fitted; call fit() first"
            ) from None
        wrapper = estimator
        missing = getattr(estimator, "missing", np.nan)
        if missing is not None and not (isinstance(missing, float) and np.isnan(missing)):
            raise CompileError(
                f"missing={missing!r} is not supported: only NaN marks a missing value "
                "(the compiled model routes NaN as learned; a number is always a value)"
            )
    else:
        raise CompileError(
            f"the XGBoost front end compiles XGBClassifier, XGBRanker, XGBRegressor or a "
            f"Booster; got {type(estimator).__name__}"
        )
    config = json.loads(booster.save_config())
    learner = config["learner"]
    objective = learner["learner_train_param"]["objective"]
    gbm = learner["gradient_booster"]["name"]
    if gbm != "gbtree":
        raise CompileError(f"booster={gbm!r} is not supported; train with booster='gbtree'")
    if objective not in OBJECTIVES:
        raise CompileError(
            f"objective={objective!r} is not supported (multiclass, count and survival "
            f"objectives are refused); supported: {sorted(OBJECTIVES)}"
        )
    params = learner["learner_model_param"]
    if int(params.get("num_class", 0)) > 1 or int(params.get("num_target", 1)) > 1:
        raise CompileError("only single-output models are supported (one class or target)")
    types = booster.feature_types or []
    if "c" in types:
        raise CompileError(
            f"categorical features are not supported (feature {types.index('c')} is "
            "categorical): categorical splits are not compiled; encode them as numbers"
        )
    if wrapper is not None and getattr(booster, "best_iteration", None) is not None:
        # the estimator predicts with the trees up to the best iteration: compile those
        booster = booster[: int(booster.best_iteration) + 1]
    output, link = OBJECTIVES[objective]
    import treelite

    try:
        tl_model = treelite.frontend.from_xgboost(booster)
    except (NotImplementedError, ValueError, treelite.TreeliteError) as exc:
        raise treelite_error(exc) from exc
    tl_json = model_json(tl_model)
    if any(
        n.get("node_type") not in (None, "numerical_test_node")
        for t in tl_json["trees"]
        for n in t["nodes"]
    ):
        raise CompileError("categorical splits are not supported; encode them as numbers")
    margin_tol, output_tol = float32_sum_bound(tl_json)

    def reference(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if wrapper is None:
            data = xgboost.DMatrix(X, missing=np.nan)
            return (
                as_1d(booster.predict(data, output_margin=True)),
                as_1d(booster.predict(data)),
            )
        margin = as_1d(wrapper.predict(X, output_margin=True))
        if output == "probability":
            return margin, as_1d(wrapper.predict_proba(X)[:, 1])
        return margin, as_1d(wrapper.predict(X))

    names = booster.feature_names
    n_trees = len(tl_json["trees"])
    return Imported(
        family="xgboost",
        objective=objective,
        output=output,
        link=link,
        treelite_model=tl_model,
        reference=reference,
        reference_name="XGBoost's predict",
        n_features=int(booster.num_features()),
        n_trees=n_trees,
        input_precision="float32",
        missing_values="routed",
        tolerance=margin_tol,
        output_tolerance=output_tol if link == "sigmoid" else margin_tol,
        tolerance_note=(
            f"XGBoost sums float32 leaves in float32: 4 * (trees + 1) * 2**-24 * "
            f"(|base| + sum of each tree's largest |leaf|) = {margin_tol:.3g} on the margin"
            + (f", {output_tol:.3g} on the probability" if link == "sigmoid" else "")
        ),
        params=scalar_params(
            wrapper.get_params() if wrapper is not None else {"objective": objective}
        ),
        feature_names=None if names is None else [str(n) for n in names],
    )
