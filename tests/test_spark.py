"""reco_fast.tools.spark against a real local Spark (``local[2]``, loopback only).

Needs pyspark, pyarrow and a Java runtime (``java`` on PATH or ``JAVA_HOME``).
Without them the module is skipped, except under CI (``CI`` set), where it fails.
Scores must equal the single-machine path (``Model.predict_proba`` on the same
pandas rows) exactly, in float64.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import reco_fast
from reco_fast.features.schema import LABEL
from tests.helpers import SPARK_MARKS, java_runtime, require, spark_worker_env

pytestmark = SPARK_MARKS


try:
    import pyarrow  # noqa: F401
    import pyspark
    from pyspark.sql import SparkSession
except ImportError as exc:
    require(
        "Spark", f"pyspark/pyarrow not installed ({exc}); pip install -e '.[spark]'", module=True
    )

import reco_fast.tools.spark as rspark  # noqa: E402

if java_runtime() is None:  # checked before any fixture: no build just to skip
    require("Spark", "no Java runtime (java on PATH or JAVA_HOME) for pyspark", module=True)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        spark_worker_env(mp)
        session = (
            SparkSession.builder.master("local[2]")
            .appName("reco_fast-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.driver.memory", "1g")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            # several Arrow batches per partition: the worker cache is exercised
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "2000")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        print(
            f"SparkSession (pyspark {pyspark.__version__}) in {time.perf_counter() - start:.1f} s"
        )
        try:
            yield session
        finally:
            session.stop()


def _with_row_id(log: pd.DataFrame) -> pd.DataFrame:
    return log.assign(row_id=np.arange(len(log), dtype=np.int64))


def _collect(df) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    return df.toPandas().sort_values("row_id").reset_index(drop=True)


def test_scores_seed_schema_exactly(spark: SparkSession, built) -> None:  # type: ignore[no-untyped-def]
    log = _with_row_id(built.log)
    df = spark.createDataFrame(log).repartition(3)
    scored = rspark.score(df, str(built.path))
    # schema up front: the input columns plus a non-null double
    assert scored.columns == [*log.columns, "click_probability"]
    field = scored.schema["click_probability"]
    assert field.dataType.simpleString() == "double" and not field.nullable
    got = _collect(scored)
    assert len(got) == len(log)
    expected = built.model.predict_proba(log)
    assert got["click_probability"].dtype == np.float64
    np.testing.assert_array_equal(got["click_probability"].to_numpy(), expected)
    # the other columns come back unchanged
    pd.testing.assert_series_equal(got[LABEL], log[LABEL], check_dtype=False)
    assert got["recommended_product_id"].tolist() == log["recommended_product_id"].tolist()


def test_scores_feature_dataframe_exactly(spark: SparkSession, built) -> None:  # type: ignore[no-untyped-def]
    names = list(built.model.feature_names)
    X = built.X[:4000]
    pdf = pd.DataFrame(X, columns=names).assign(row_id=np.arange(len(X), dtype=np.int64))
    scored = rspark.score(spark.createDataFrame(pdf), built.path, features=True, output_col="p")
    got = _collect(scored)
    np.testing.assert_array_equal(got["p"].to_numpy(), built.model.predict_proba_features(X))
    np.testing.assert_array_equal(got["p"].to_numpy(), built.model.predict_proba(built.log[:4000]))


def test_score_accepts_a_model(spark: SparkSession, built) -> None:  # type: ignore[no-untyped-def]
    log = _with_row_id(built.log.iloc[:3000])
    tl2cgen = built.model.using("tl2cgen")
    got = _collect(rspark.score(spark.createDataFrame(log), tl2cgen))
    # the model's backend travels with its path (tl2cgen and flat differ in the last bits)
    np.testing.assert_array_equal(got["click_probability"].to_numpy(), tl2cgen.predict_proba(log))


def test_model_captured_in_a_closure_reopens_in_the_worker(spark: SparkSession, built) -> None:  # type: ignore[no-untyped-def]
    """A Model pickles as its path: Spark's cloudpickle ships it and the worker re-opens it."""
    model = built.model
    driver_pid = os.getpid()

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            yield pd.DataFrame(
                {
                    "row_id": pdf["row_id"],
                    "p": model.predict_proba(pdf),
                    "pid": os.getpid(),
                    "path": str(model.path),
                }
            )

    log = _with_row_id(built.log.iloc[:3000])
    out = spark.createDataFrame(log).mapInPandas(
        run, "row_id long, p double, pid long, path string"
    )
    got = _collect(out)
    np.testing.assert_array_equal(got["p"].to_numpy(), model.predict_proba(log))
    assert driver_pid not in set(got["pid"])  # scored in Python workers, not here
    assert set(got["path"]) == {str(model.path)}


def test_worker_loads_the_artifact_once(spark: SparkSession, built) -> None:  # type: ignore[no-untyped-def]
    path = str(built.path)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            model = rspark.worker_model(path)
            yield pd.DataFrame({"pid": [os.getpid()], "model": [id(model)], "n": [len(pdf)]})

    # 15,000 rows in 2 partitions at 2,000 rows per Arrow batch: several batches per worker
    got = (
        spark.createDataFrame(built.log)
        .coalesce(2)
        .mapInPandas(run, "pid long, model long, n long")
    )
    got = got.toPandas()
    assert got["n"].sum() == len(built.log) and len(got) > 2
    assert (got.groupby("pid")["model"].nunique() == 1).all()


def test_sparkfiles_artifact(spark: SparkSession, built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shipped = tmp_path / "shipped_model"
    shutil.copytree(built.path, shipped)
    spark.sparkContext.addFile(str(shipped), recursive=True)
    log = _with_row_id(built.log.iloc[:2000])
    got = _collect(rspark.score(spark.createDataFrame(log), "sparkfiles:shipped_model"))
    np.testing.assert_array_equal(
        got["click_probability"].to_numpy(), built.model.predict_proba(log)
    )


def test_errors_up_front(spark: SparkSession, built) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame(built.log.iloc[:10])
    with pytest.raises(ValueError, match="'scroll_depth'"):
        rspark.score(df.drop("scroll_depth"), built.path)
    with pytest.raises(ValueError, match="already has a column 'device_type'"):
        rspark.score(df, built.path, output_col="device_type")
    with pytest.raises(ValueError, match="a feature of this model"):
        rspark.score(df, built.path, features=True)
    with pytest.raises(reco_fast.ArtifactError):
        rspark.score(df, built.path.parent / "no_such_artifact")
    with pytest.raises(TypeError, match="cannot be pickled"):
        rspark.score(df, built.model.with_catalog(built.catalog))


def test_invalid_rows_fail_with_the_models_message(spark: SparkSession, built) -> None:  # type: ignore[no-untyped-def]
    bad = built.log.iloc[:50].copy()
    bad.loc[bad.index[7], "scroll_depth"] = 1.5
    scored = rspark.score(spark.createDataFrame(bad), built.path)
    with pytest.raises(Exception, match=r"'scroll_depth' must be <= 1, got 1.5 \(row 7\)"):
        scored.collect()


def test_worker_cache_reloads_a_rebuilt_artifact(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "copy"
    shutil.copytree(built.path, copy)
    first = rspark.worker_model(str(copy))
    assert rspark.worker_model(str(copy)) is first
    meta = copy / "metadata.json"
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = rspark.worker_model(str(copy))
    assert second is not first
    assert rspark.worker_model(str(copy), "tl2cgen").backend == "tl2cgen"
