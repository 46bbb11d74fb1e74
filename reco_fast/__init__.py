"""reco_fast: live product recommendations from a compiled gradient-boosted model.

Importing this package needs numpy and cffi only. Training and compiling
(``compile_model``) need the ``build`` extra and import it lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from reco_fast.errors import (
    ArtifactError,
    CompileError,
    InputError,
    RecoFastError,
    SessionNotFound,
    StoreUnavailable,
)
from reco_fast.features.page import Catalog
from reco_fast.serve.eventsession import EventTracker
from reco_fast.serve.handle import ModelHandle
from reco_fast.serve.model import BatchResult, Model, RowError, load
from reco_fast.serve.recommend import Recommendation
from reco_fast.serve.session import MemoryStore, RedisStore, SessionTracker

if TYPE_CHECKING:
    from reco_fast.serve.ab import ABRouter
    from reco_fast.serve.impressions import (
        ImpressionLog,
        JsonlSink,
        LoggedRecommender,
        RedisStreamSink,
    )
    from reco_fast.serve.policies import EpsilonGreedy, Greedy, SoftmaxSampling
    from reco_fast.serve.rerank import Reranker

_LAZY = {
    "ABRouter": "reco_fast.serve.ab",
    "EpsilonGreedy": "reco_fast.serve.policies",
    "Greedy": "reco_fast.serve.policies",
    "ImpressionLog": "reco_fast.serve.impressions",
    "JsonlSink": "reco_fast.serve.impressions",
    "LoggedRecommender": "reco_fast.serve.impressions",
    "RedisStreamSink": "reco_fast.serve.impressions",
    "Reranker": "reco_fast.serve.rerank",
    "SoftmaxSampling": "reco_fast.serve.policies",
}
"""The feedback loop's serving names (impression log, exploration policies, A/B router,
re-ranker): imported at first use, so ``import reco_fast`` stays as lean as it was."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reco_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def compile_model(estimator: Any, out_dir: Any, feature_names: Any = None, **kwargs: Any) -> Any:
    """Compile a fitted tree ensemble into a verified artifact, and load it.

    Imported lazily so that serving never loads scikit-learn, treelite or tl2cgen
    (they come with the ``build`` extra). The details, and the keyword arguments the
    build pipeline uses (``feature_set``, ``builder``, ``sessions``, ``write_extra``),
    are in :func:`reco_fast.compiler.driver.compile_model`.

    Parameters
    ----------
    estimator : fitted estimator
        scikit-learn's ``GradientBoostingClassifier`` (binary),
        ``GradientBoostingRegressor``, ``HistGradientBoostingClassifier`` (binary) or
        ``HistGradientBoostingRegressor``; XGBoost's ``XGBClassifier``, ``XGBRanker``,
        ``XGBRegressor`` or ``Booster``; LightGBM's ``LGBMClassifier``, ``LGBMRanker``,
        ``LGBMRegressor`` or ``Booster``.
    out_dir : str or path-like
        The artifact directory; replaced atomically (a previous artifact stays whole
        until the new one is complete). Must be an artifact or absent (or empty).
    feature_names : sequence of str, optional
        One unique name per feature, in column order; default the estimator's own
        names, else ``f0``, ``f1``...
    verify_X : ndarray of shape (n_samples, n_features), optional (keyword)
        Rows on which every backend must equal the library's own predictions (with
        adversarial rows built from the trees' thresholds); default: rows synthesised
        from the thresholds.
    threshold : float, default 0.7 (keyword)
        The probability in [0, 1] at or above which ``recommend`` shows a product;
        ignored for rankers and regressors.
    metadata : dict, optional (keyword)
        Extra ``metadata.json`` keys (:class:`reco_fast.metadata.ArtifactMetadata`).

    Returns
    -------
    Model
        The artifact just written, loaded with every load-time check.

    Raises
    ------
    CompileError
        The estimator or one of its settings is not supported, ``feature_names`` are
        not one unique name per feature, ``threshold`` is outside [0, 1], the compiled model
        differs from the library's predictions beyond the tolerance (1e-12 for
        scikit-learn and LightGBM) on any verification row, or the C compiler failed.
        Nothing was written.
    ArtifactError
        The artifact cannot be written (disk full, read-only, ``out_dir`` is not an
        artifact); the previous artifact, if any, is unchanged.
    """
    from reco_fast.compiler.driver import compile_model as _compile

    return _compile(estimator, out_dir, feature_names, **kwargs)


__all__ = [
    "ABRouter",
    "ArtifactError",
    "BatchResult",
    "Catalog",
    "CompileError",
    "EpsilonGreedy",
    "EventTracker",
    "Greedy",
    "ImpressionLog",
    "InputError",
    "JsonlSink",
    "LoggedRecommender",
    "MemoryStore",
    "Model",
    "ModelHandle",
    "RecoFastError",
    "Recommendation",
    "RedisStore",
    "RedisStreamSink",
    "Reranker",
    "RowError",
    "SessionNotFound",
    "SessionTracker",
    "SoftmaxSampling",
    "StoreUnavailable",
    "__version__",
    "compile_model",
    "load",
]
