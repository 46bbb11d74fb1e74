"""Training: the seed notebook's split and model, unchanged.

Build-time only (scikit-learn). The hyper-parameters are the seed's: 100
trees of depth 4 were chosen there for inference speed, which is the point of
this project.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SEED_PARAMS", "Split", "fit", "split"]

log = logging.getLogger(__name__)

SEED_PARAMS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": 4,
    "learning_rate": 0.1,
    "subsample": 0.8,
    "min_samples_split": 50,
    "min_samples_leaf": 20,
    "random_state": 42,
}
TEST_SIZE = 0.2
SPLIT_SEED = 42


@dataclass(frozen=True)
class Split:
    """The stratified 80/20 split, with row positions so reports can join back to the log."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    idx_train: np.ndarray
    idx_test: np.ndarray


def split(X: np.ndarray, y: np.ndarray, seed: int = SPLIT_SEED) -> Split:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    i_train, i_test = train_test_split(idx, test_size=TEST_SIZE, random_state=seed, stratify=y)
    return Split(X[i_train], X[i_test], y[i_train], y[i_test], i_train, i_test)


PROGRESS_EVERY_S = 5.0
"""Training logs its progress (trees done, elapsed time) at most this often."""


class _Progress:
    """A ``fit(monitor=...)`` callback that logs "tree i/n, elapsed s" every few seconds.

    It never stops training (returns False), so the fitted model is the same as
    without it.
    """

    def __init__(self, n_trees: int, every_s: float):
        self.n_trees, self.every_s = n_trees, every_s
        self.start = self.last = time.perf_counter()

    def __call__(self, i: int, estimator: Any, local_vars: dict[str, Any]) -> bool:
        now = time.perf_counter()
        if now - self.last >= self.every_s and i + 1 < self.n_trees:
            self.last = now
            log.info(
                "training: %d of %d trees, %.1f s elapsed", i + 1, self.n_trees, now - self.start
            )
        return False


def fit(
    X: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any] | None = None,
    *,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> tuple[Any, float]:
    """Fit the seed's GradientBoostingClassifier; return it and the wall time in seconds.

    Progress (trees done and elapsed seconds) is logged at INFO at most every
    ``progress_every_s`` seconds.
    """
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(**{**SEED_PARAMS, **(params or {})})
    monitor = _Progress(int(model.n_estimators), progress_every_s)
    start = time.perf_counter()
    model.fit(X, y, monitor=monitor)
    return model, time.perf_counter() - start
