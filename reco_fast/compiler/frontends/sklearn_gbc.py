"""scikit-learn's ``GradientBoostingClassifier`` (binary) and ``GradientBoostingRegressor``.

scikit-learn's trees compare float32 inputs (``DecisionTreeRegressor`` casts X to
float32) with float64 thresholds and sum float64 leaves; NaN is refused by the estimator
itself, so it is refused here too. Reference: ``decision_function`` / ``predict_proba``
for the classifier, ``predict`` for the regressor (its margin is its value).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np

from reco_fast.errors import CompileError

from . import Imported, as_1d, scalar_params, treelite_error

__all__ = ["check_estimator", "fitted_view", "import_model"]

log = logging.getLogger(__name__)

REGRESSOR_LOSSES = ("squared_error", "absolute_error", "huber", "quantile")
"""Every GradientBoostingRegressor loss: all predict the raw sum (identity link)."""


def _sklearn() -> tuple[Any, Any, Any, Any]:
    try:
        from sklearn.dummy import DummyClassifier, DummyRegressor
        from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    except ImportError as exc:  # pragma: no cover - build extra missing
        raise CompileError(
            "compiling needs the build extra: pip install 'reco_fast[build]'"
        ) from exc
    return DummyClassifier, DummyRegressor, GradientBoostingClassifier, GradientBoostingRegressor


def check_estimator(estimator: Any) -> None:
    """Refuse, before any work, what the compiler cannot reproduce exactly."""
    DummyClassifier, DummyRegressor, GBC, GBR = _sklearn()
    if not isinstance(estimator, (GBC, GBR)):
        from . import SUPPORTED

        raise CompileError(
            f"reco_fast compiles {SUPPORTED}; "
            f"got {type(estimator).__module__}.{type(estimator).__name__}"
        )
    kind = type(estimator).__name__
    if not hasattr(estimator, "estimators_"):
        raise CompileError(f"the {kind} is not fitted; call fit() first")
    if len(estimator.estimators_) == 0:
        raise CompileError(f"the {kind} has no fitted trees")
    init = estimator.init_
    if isinstance(estimator, GBR):
        if estimator.loss not in REGRESSOR_LOSSES:  # pragma: no cover - sklearn's own list
            raise CompileError(f"loss={estimator.loss!r} is not supported")
        if not (init == "zero" or isinstance(init, DummyRegressor)):
            raise CompileError(
                f"custom init estimators are not supported (init={init!r}); "
                "use init=None or init='zero'"
            )
        return
    if len(estimator.classes_) != 2:
        raise CompileError(
            f"only binary classifiers are supported; this one has {len(estimator.classes_)} classes"
        )
    if getattr(estimator, "loss", "log_loss") != "log_loss":
        # treelite imports loss='exponential' with the log-loss link (sigmoid of the raw
        # score instead of expit(2 * raw)); verification catches it, this says why.
        raise CompileError(
            f"loss={estimator.loss!r} is not supported: treelite reproduces only loss='log_loss'"
        )
    if not (init == "zero" or (isinstance(init, DummyClassifier) and init.strategy == "prior")):
        raise CompileError(
            f"custom init estimators are not supported (init={init!r}); "
            "use init=None (the class prior) or init='zero'"
        )


def fitted_view(estimator: Any) -> Any:
    """The estimator as scikit-learn predicts with it: ``n_estimators`` = the fitted trees.

    scikit-learn's ``predict_proba`` sums every tree in ``estimators_``, but treelite
    reads ``n_estimators`` trees from it: after early stopping (``n_iter_no_change``:
    fewer trees than ``n_estimators``) or ``set_params(n_estimators=...)`` on a fitted
    model the two differ, and treelite reads past the array (a segfault) or drops
    trees. A shallow copy with ``n_estimators`` set to ``len(estimators_)`` is
    compiled instead; the caller's estimator is not modified.
    """
    n_trees = len(estimator.estimators_)
    if estimator.n_estimators == n_trees:
        return estimator
    log.info(
        "compiling the %d fitted trees (n_estimators=%r: early stopping or set_params)",
        n_trees,
        estimator.n_estimators,
    )
    view = copy.copy(estimator)
    view.n_estimators = n_trees
    return view


def import_model(estimator: Any) -> Imported:
    """Check and import a fitted GradientBoostingClassifier / GradientBoostingRegressor."""
    from . import sklearn_gbc  # the module attribute, so tests can replace the check

    sklearn_gbc.check_estimator(estimator)
    import treelite

    try:
        tl_model = treelite.sklearn.import_model(fitted_view(estimator))
    except (NotImplementedError, treelite.TreeliteError) as exc:
        raise treelite_error(exc) from exc
    return sklearn_imported(
        estimator,
        tl_model,
        family="sklearn-gb",
        n_trees=len(estimator.estimators_),
        input_precision="float32",
        missing_values="refused",
    )


def sklearn_imported(
    estimator: Any,
    tl_model: Any,
    *,
    family: str,
    n_trees: int,
    input_precision: str,
    missing_values: str,
) -> Imported:
    """What a scikit-learn gradient-boosting estimator's front end returns.

    The reference is scikit-learn's own: ``decision_function`` and
    ``predict_proba`` for a classifier (sigmoid link), ``predict`` for a regressor.
    """
    classifier = hasattr(estimator, "classes_")

    def reference(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if classifier:
            return as_1d(estimator.decision_function(X)), as_1d(estimator.predict_proba(X)[:, 1])
        value = as_1d(estimator.predict(X))
        return value, value

    names = getattr(estimator, "feature_names_in_", None)
    return Imported(
        family=family,
        objective=str(estimator.loss),
        output="probability" if classifier else "value",
        link="sigmoid" if classifier else "identity",
        treelite_model=tl_model,
        reference=reference,
        reference_name="scikit-learn's " + ("predict_proba" if classifier else "predict"),
        n_features=int(estimator.n_features_in_),
        n_trees=n_trees,
        input_precision=input_precision,
        missing_values=missing_values,
        params=scalar_params(estimator.get_params()),
        feature_names=None if names is None else [str(n) for n in names],
    )
