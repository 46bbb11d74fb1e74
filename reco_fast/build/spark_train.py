"""Training on Spark: XGBoost's own PySpark estimator, the booster collected to the driver.

``reco-fast build --engine spark`` trains the page-view model with
``xgboost.spark.SparkXGBClassifier`` on a Spark DataFrame of training rows (one column
per feature, plus the label) instead of scikit-learn on one machine; the fitted booster
comes back to the driver as an ``xgboost.XGBClassifier`` and is compiled, verified and
published like any other XGBoost model (:mod:`reco_fast.compiler.frontends.xgboost`).

On a cluster, build the DataFrame where the rows live and call :func:`fit_xgboost`
with ``num_workers`` up to the executors' task slots; the CLI's engine starts a local
session (``local[2]`` by default, ``--spark-master`` for another master).

With ``num_workers=1`` XGBoost sees every row in one worker and trains exactly the
model ``xgboost.XGBClassifier(**params)`` trains on the same rows in one process (the
test compares them); with more workers each builds histograms over its partition and
they are summed, so split candidates can differ slightly.

Build side only (the ``spark`` and ``xgboost`` extras, and a Java runtime).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["XGB_PARAMS", "fit_on_spark", "fit_xgboost", "local_session"]

log = logging.getLogger(__name__)

XGB_PARAMS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": 4,
    "learning_rate": 0.1,
    "tree_method": "hist",
    "random_state": 42,
}
"""The seed's budget (100 trees of depth 4, learning rate 0.1) for XGBoost's classifier."""

LABEL_COLUMN = "label"


def _require() -> Any:
    try:
        import pyspark  # noqa: F401
        from xgboost.spark import SparkXGBClassifier
    except ImportError as exc:
        raise ImportError(
            f"--engine spark needs pyspark and xgboost ({exc}): "
            "pip install 'reco_fast[spark,xgboost]' (and a Java 17 or 21 runtime)"
        ) from None
    return SparkXGBClassifier


def local_session(master: str = "local[2]", app_name: str = "reco_fast-build") -> Any:
    """A SparkSession for training from this process: ``master`` (``local[2]``: two
    threads on this machine, loopback only, no web UI), Python workers running this
    interpreter. An existing session is reused (``getOrCreate``)."""
    _require()
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(app_name)
    builder = builder.config("spark.ui.enabled", "false")
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def fit_xgboost(
    df: Any,
    feature_cols: Sequence[str],
    label_col: str = LABEL_COLUMN,
    *,
    params: dict[str, Any] | None = None,
    num_workers: int = 1,
) -> Any:
    """Train ``xgboost.spark.SparkXGBClassifier`` on a Spark DataFrame; return the booster
    collected to the driver as a fitted ``xgboost.XGBClassifier``.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Training rows: one numeric column per feature (``feature_cols``, in the model's
        feature order) and a 0/1 label column.
    feature_cols : sequence of str
        The feature columns, in order (the compiled model takes features in this order).
    label_col : str
        The label column.
    params : dict, optional
        XGBoost parameters (default :data:`XGB_PARAMS`).
    num_workers : int
        XGBoost workers (Spark barrier tasks); at most the cluster's task slots.

    Returns
    -------
    xgboost.XGBClassifier
        Holding the trained booster and ``params``; compile it with
        :func:`reco_fast.compile_model`.

    Raises
    ------
    ImportError
        pyspark or xgboost is missing.
    ValueError
        ``num_workers`` is not a positive integer.
    """
    spark_classifier = _require()
    import xgboost

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive integer, got {num_workers!r:.40}")
    params = dict(XGB_PARAMS if params is None else params)
    estimator = spark_classifier(
        features_col=list(feature_cols),
        label_col=label_col,
        num_workers=num_workers,
        verbose=False,  # no evaluation line per tree on stderr
        **params,
    )
    # one partition per worker (a barrier stage cannot follow a coalesce)
    fitted = estimator.fit(df.repartition(num_workers))
    booster = fitted.get_booster()
    model = xgboost.XGBClassifier(**params)
    model.load_model(bytearray(booster.save_raw("json")))
    return model


def fit_on_spark(
    X: np.ndarray,
    y: np.ndarray,
    feature_names: Sequence[str],
    *,
    master: str = "local[2]",
    num_workers: int = 1,
    params: dict[str, Any] | None = None,
) -> tuple[Any, float]:
    """The build pipeline's training step on Spark: the rows become a Spark DataFrame
    (one column per feature and ``label``), :func:`fit_xgboost` trains on it.

    Returns the fitted ``xgboost.XGBClassifier`` and the wall time in seconds (session
    start not included).
    """
    import pandas as pd

    spark = local_session(master)
    frame = pd.DataFrame(np.asarray(X, dtype=np.float64), columns=list(feature_names))
    frame[LABEL_COLUMN] = np.asarray(y, dtype=np.int64)
    df = spark.createDataFrame(frame)
    log.info(
        "training XGBoost on Spark (%s, %d worker%s): %d rows",
        master,
        num_workers,
        "" if num_workers == 1 else "s",
        len(frame),
    )
    start = time.perf_counter()
    model = fit_xgboost(df, list(feature_names), params=params, num_workers=num_workers)
    return model, time.perf_counter() - start
