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
    """Compile a fitted binary GradientBoostingClassifier into a verified artifact.

    Imported lazily so that serving never loads scikit-learn, treelite or tl2cgen.
    See :func:`reco_fast.compiler.driver.compile_model`.
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
