"""LightGBM: ``LGBMClassifier`` (``binary``), ``LGBMRanker`` (``lambdarank``,
``rank_xendcg``), ``LGBMRegressor`` (``regression``, ``regression_l1``, ``huber``,
``fair``, ``quantile``, ``mape``) and a bare ``lightgbm.Booster`` with one of those
objectives.

LightGBM compares float64 inputs with float64 thresholds (``x <= t``), sums float64
leaves (the initial score is folded into the first tree) and routes NaN as each split
learned: NaN is a valid input. A value with ``|x| <= 1e-35`` is read as 0, as
LightGBM's dense rows do (:data:`K_ZERO_THRESHOLD`). A model with ``zero_as_missing`` (missing type "Zero":
every 0 is missing) is refused, and so are categorical splits and linear trees.
Reference: ``predict(raw_score=True)`` for the margin, ``predict_proba`` (classifier) or
``predict``; early stopping's best iteration is what both the reference and the
compiled model use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reco_fast.errors import CompileError

from . import Imported, as_1d, scalar_params, treelite_error

__all__ = ["K_ZERO_THRESHOLD", "OBJECTIVES", "import_model"]

K_ZERO_THRESHOLD = float(np.float32(1e-35))
"""LightGBM's ``kZeroThreshold`` (``1e-35f``): turning a dense row into (index, value)
pairs, LightGBM keeps only values with ``|x| > kZeroThreshold``, so smaller ones are
read as 0. The compiled model does the same (a split at -1e-35, which LightGBM places
for values near zero, tells the two apart)."""

OBJECTIVES = {
    "binary": ("probability", "sigmoid"),
    "lambdarank": ("score", "identity"),
    "rank_xendcg": ("score", "identity"),
    "regression": ("value", "identity"),
    "regression_l1": ("value", "identity"),
    "huber": ("value", "identity"),
    "fair": ("value", "identity"),
    "quantile": ("value", "identity"),
    "mape": ("value", "identity"),
}
"""Objectives compiled (the first word of LightGBM's objective string): (output, link)."""


def _walk(node: dict[str, Any]) -> Any:
    stack = [node]
    while stack:
        n = stack.pop()
        if "split_index" in n:
            yield n
            stack.extend((n["left_child"], n["right_child"]))


def import_model(estimator: Any) -> Imported:
    """Check and import a fitted LightGBM estimator or Booster."""
    import lightgbm

    if isinstance(estimator, lightgbm.Booster):
        booster, wrapper = estimator, None
    elif isinstance(estimator, lightgbm.LGBMModel):
        try:
            booster = estimator.booster_
        except (AttributeError, ValueError, lightgbm.compat.LGBMNotFittedError):
            raise CompileError(
                f"the {type(estimator).__name__} is not fitted; call fit() first"
            ) from None
        wrapper = estimator
    else:
        raise CompileError(
            "the LightGBM front end compiles LGBMClassifier, LGBMRanker, LGBMRegressor or a "
            f"Booster; got {type(estimator).__name__}"
        )
    dump = booster.dump_model()
    objective = str(dump.get("objective", "")).split(" ")[0]
    if objective not in OBJECTIVES:
        raise CompileError(
            f"objective={objective!r} is not supported (multiclass and log-link objectives "
            f"are refused); supported: {sorted(OBJECTIVES)}"
        )
    if int(dump.get("num_class", 1)) != 1 or int(dump.get("num_tree_per_iteration", 1)) != 1:
        raise CompileError("only single-output models are supported (one tree per iteration)")
    trees = dump.get("tree_info", [])
    if not trees:
        raise CompileError("the LightGBM model has no trees")
    for tree in trees:
        for node in _walk(tree["tree_structure"]):
            if node.get("decision_type") != "<=":
                raise CompileError(
                    f"categorical splits are not supported (feature {node.get('split_feature')} "
                    "is split by category): encode it as numbers, or train without "
                    "categorical_feature"
                )
            if node.get("missing_type") == "Zero":
                raise CompileError(
                    "zero_as_missing=True is not supported: the compiled model cannot treat "
                    "every 0 as missing; train with zero_as_missing=False (NaN marks missing)"
                )
    if any(t.get("is_linear") for t in trees) or dump.get("linear_tree"):
        raise CompileError("linear trees (linear_tree=True) are not supported")
    output, link = OBJECTIVES[objective]
    import treelite

    try:
        tl_model = treelite.frontend.from_lightgbm(booster)
    except (NotImplementedError, ValueError, treelite.TreeliteError) as exc:
        raise treelite_error(exc) from exc

    def reference(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if wrapper is None:
            return as_1d(booster.predict(X, raw_score=True)), as_1d(booster.predict(X))
        margin = as_1d(wrapper.predict(X, raw_score=True))
        if output == "probability":
            return margin, as_1d(wrapper.predict_proba(X)[:, 1])
        return margin, as_1d(wrapper.predict(X))

    names = dump.get("feature_names")
    return Imported(
        family="lightgbm",
        objective=objective,
        output=output,
        link=link,
        treelite_model=tl_model,
        reference=reference,
        reference_name="LightGBM's predict",
        n_features=int(booster.num_feature()),
        n_trees=int(tl_model.num_tree),
        input_precision="float64",
        missing_values="routed",
        params=scalar_params(
            wrapper.get_params() if wrapper is not None else {"objective": objective}
        ),
        feature_names=None if names is None else [str(n) for n in names],
        zero_snap=K_ZERO_THRESHOLD,
    )
