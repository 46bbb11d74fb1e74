"""Front ends: one module per source library, each turning a fitted model into treelite's.

Every front end accepts or refuses an estimator (a :class:`~reco_fast.errors.CompileError`
that says why) and returns an :class:`Imported`: treelite's model (the one intermediate
form, from which ``_ir`` builds the flat evaluator's arrays and tl2cgen emits C), the
library's own predictions as the reference the build is verified against, and what the
output is (a probability through a sigmoid, or a ranker's score or a regressor's value,
the margin itself). The rest of the compiler (``compiler.ir``, ``compiler.codegen``, ``compiler.driver.verify``)
does not know which library a model came from.

| module | estimators | input precision | NaN |
|---|---|---|---|
| ``sklearn_gbc`` | ``GradientBoostingClassifier`` (binary), ``GradientBoostingRegressor`` | float32 | refused |
| ``sklearn_hgb`` | ``HistGradientBoostingClassifier`` (binary), ``...Regressor`` | float64 | routed |
| ``xgboost`` | ``XGBClassifier``/``XGBRanker``/``XGBRegressor``/``Booster`` | float32 | routed |
| ``lightgbm`` | ``LGBMClassifier``/``LGBMRanker``/``LGBMRegressor``/``Booster`` | float64 | routed |

The input precision is the one the library's own predict compares in: scikit-learn's
``DecisionTreeRegressor`` and XGBoost's DMatrix round every input to float32 first;
``HistGradientBoosting*`` and LightGBM compare float64 values with float64 thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reco_fast.errors import CompileError

__all__ = ["OUTPUTS", "Imported", "import_estimator"]

OUTPUTS = ("probability", "score", "value")
"""What a model's ``predict`` gives: a binary classifier's probability (sigmoid of the
margin), a ranker's score or a regressor's value (both the margin itself)."""


@dataclass(frozen=True)
class Imported:
    """A fitted model as the compiler sees it, whatever library trained it.

    Attributes
    ----------
    family : str
        The front end: ``"sklearn-gb"``, ``"sklearn-hgb"``, ``"xgboost"`` or ``"lightgbm"``.
    objective : str
        The library's own name for the loss (``"log_loss"``, ``"binary:logistic"``,
        ``"lambdarank"``, ``"squared_error"``...).
    output : str
        One of :data:`OUTPUTS`.
    link : str
        ``"sigmoid"`` (output = 1 / (1 + exp(-margin))) or ``"identity"``.
    treelite_model : treelite.Model
        The intermediate form handed to ``_ir`` and tl2cgen.
    reference : callable
        ``reference(X) -> (margin, output)``, both float64 of shape (n,), from the
        library's own predict on X, an (n, n_features) float64 matrix (NaN allowed where
        ``missing_values == "routed"``).
    reference_name : str
        How errors name the reference, e.g. ``"scikit-learn's predict_proba"``.
    n_features, n_trees : int
    input_precision : str
        ``"float32"`` (each input is rounded to float32 before any compare) or ``"float64"``.
    missing_values : str
        ``"routed"`` (NaN is a valid input, sent where the model learned) or ``"refused"``.
    tolerance, output_tolerance : float
        The largest difference from the reference that verification accepts, for the
        margin and for the output (1e-12, or a bound derived from the library's own
        float32 arithmetic: :mod:`reco_fast.compiler.frontends.xgboost`).
    tolerance_note : str
        Why that tolerance.
    params : dict
        JSON-scalar parameters of the estimator, for the artifact's metadata.
    feature_names : list of str or None
        Names the estimator was fitted with, if any.
    zero_snap : float
        Inputs with ``|x| <= zero_snap`` are read as 0 by the library (LightGBM's
        ``kZeroThreshold``); 0.0: none.
    """

    family: str
    objective: str
    output: str
    link: str
    treelite_model: Any
    reference: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    reference_name: str
    n_features: int
    n_trees: int
    input_precision: str
    missing_values: str
    tolerance: float = 1e-12
    output_tolerance: float = 1e-12
    tolerance_note: str = "float64 arithmetic on both sides; only the summation order differs"
    params: dict[str, Any] = field(default_factory=dict)
    feature_names: list[str] | None = None
    zero_snap: float = 0.0


U64 = 2.0**-53
"""float64's unit roundoff."""


def leaf_sum_bound(tl_json: dict[str, Any]) -> tuple[int, float]:
    """(T, S) of a treelite JSON dump: its number of trees and
    S = |base| + sum over trees of the tree's largest |leaf|, a bound on every partial
    sum of one row's margin."""
    total = abs(float(tl_json.get("base_scores", [0.0])[0]))
    for tree in tl_json["trees"]:
        leaves = [abs(float(n["leaf_value"])) for n in tree["nodes"] if "leaf_value" in n]
        total += max(leaves, default=0.0)
    return len(tl_json["trees"]), total


def with_summation_bound(imported: Imported, tl_json: dict[str, Any]) -> Imported:
    """The tolerance widened, where it must be, to what float64 summation order allows.

    The library and the compiled code add the same float64 leaves in different orders;
    each sum of T + 1 terms is within T * u * S of the exact one (u = 2**-53, S as in
    :func:`leaf_sum_bound`), so they agree to ``2 * (T + 1) * u * S``. That is far below
    1e-12 for usual models, but not for margins in the billions (trees of pure leaves):
    there the margin (and a ranker's or regressor's output) is checked to that bound.
    A probability is not widened: the sigmoid flattens large margins.
    """
    n_trees, total = leaf_sum_bound(tl_json)
    bound = 2.0 * (n_trees + 1) * U64 * total
    if bound <= imported.tolerance:
        return imported
    from dataclasses import replace

    return replace(
        imported,
        tolerance=bound,
        output_tolerance=(
            imported.output_tolerance
            if imported.link == "sigmoid"
            else max(imported.output_tolerance, bound)
        ),
        tolerance_note=(
            f"{imported.tolerance_note}; float64 summation order: 2 * (trees + 1) * 2**-53 * "
            f"(|base| + sum of each tree's largest |leaf|) = {bound:.3g} on the margin"
        ),
    )


def scalar_params(params: dict[str, Any]) -> dict[str, Any]:
    """The JSON-scalar entries of an estimator's parameters (floats finite)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not np.isfinite(v):
            v = str(v)
        if isinstance(v, (int, float, str, bool, type(None))):
            out[str(k)] = v
    return out


def _qualname(estimator: Any) -> str:
    return f"{type(estimator).__module__}.{type(estimator).__name__}"


SUPPORTED = (
    "sklearn.ensemble.GradientBoostingClassifier (binary), GradientBoostingRegressor, "
    "HistGradientBoostingClassifier (binary), HistGradientBoostingRegressor, "
    "xgboost XGBClassifier/XGBRanker/XGBRegressor/Booster, "
    "lightgbm LGBMClassifier/LGBMRanker/LGBMRegressor/Booster"
)


def import_estimator(estimator: Any) -> Imported:
    """Pick the front end for ``estimator`` by its library and import it.

    Raises
    ------
    CompileError
        The estimator is of no supported kind, or its front end refuses it (not fitted,
        multiclass, categorical splits, an objective whose link is not supported...).
    """
    module = type(estimator).__module__.split(".")[0]
    if module == "sklearn":
        name = type(estimator).__name__
        if name.startswith("HistGradientBoosting"):
            from . import sklearn_hgb

            return sklearn_hgb.import_model(estimator)
        from . import sklearn_gbc

        return sklearn_gbc.import_model(estimator)
    if module == "xgboost":
        from . import xgboost

        return xgboost.import_model(estimator)
    if module == "lightgbm":
        from . import lightgbm

        return lightgbm.import_model(estimator)
    raise CompileError(f"reco_fast compiles {SUPPORTED}; got {_qualname(estimator)}")


def treelite_error(exc: BaseException) -> CompileError:
    message = " ".join(str(exc).split())[:300]
    return CompileError(f"treelite cannot import this estimator: {message}")


def as_1d(values: Any) -> np.ndarray:
    """A library's predictions as float64 of shape (n,)."""
    return np.asarray(values, dtype=np.float64).reshape(-1)
