"""reco_fast: live product recommendations from a compiled gradient-boosted model.

Importing this package needs numpy and cffi only. Training and compiling
(``compile_model``) need the ``build`` extra and import it lazily.
"""

from __future__ import annotations

from typing import Any

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


def compile_model(estimator: Any, out_dir: Any, feature_names: Any = None, **kwargs: Any) -> Any:
    """Compile a fitted binary GradientBoostingClassifier into a verified artifact.

    Imported lazily so that serving never loads scikit-learn, treelite or tl2cgen.
    See :func:`reco_fast.compiler.driver.compile_model`.
    """
    from reco_fast.compiler.driver import compile_model as _compile

    return _compile(estimator, out_dir, feature_names, **kwargs)


__all__ = [
    "ArtifactError",
    "BatchResult",
    "Catalog",
    "CompileError",
    "EventTracker",
    "InputError",
    "MemoryStore",
    "Model",
    "ModelHandle",
    "RecoFastError",
    "Recommendation",
    "RedisStore",
    "RowError",
    "SessionNotFound",
    "SessionTracker",
    "StoreUnavailable",
    "__version__",
    "compile_model",
    "load",
]
