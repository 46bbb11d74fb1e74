"""``reco-fast build --engine spark``: XGBoost's PySpark estimator in ``local[2]``, the booster
collected, compiled and verified; compared with a single-machine XGBoost on the same rows.

Needs pyspark, xgboost and a Java runtime (skipped without them, failed under CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reco_fast
from reco_fast.build import pipeline
from tests.helpers import SPARK_MARKS, java_runtime, require, spark_worker_env

pytestmark = SPARK_MARKS


try:
    import pyspark  # noqa: F401
    import xgboost
    import xgboost.spark
except ImportError as exc:
    require(
        "Spark",
        f"pyspark/xgboost not installed ({exc}); pip install -e '.[spark,xgboost]'",
        module=True,
    )

from reco_fast.build import spark_train  # noqa: E402
from reco_fast.tools import cli  # noqa: E402

if java_runtime() is None:
    require("Spark", "no Java runtime (java on PATH or JAVA_HOME) for pyspark", module=True)


@pytest.fixture(scope="module")
def spark_build(built: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("spark-build") / "model"
    captured: dict[str, Any] = {}
    real_split, real_fit = pipeline.split, spark_train.fit_on_spark

    def spy_split(X: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        captured["split"] = real_split(X, y, *args, **kwargs)
        return captured["split"]

    def spy_fit(*args: Any, **kwargs: Any) -> Any:
        captured["fit_kwargs"] = kwargs
        estimator, seconds = real_fit(*args, **kwargs)
        captured["estimator"] = estimator
        return estimator, seconds

    with pytest.MonkeyPatch.context() as mp:
        spark_worker_env(mp)
        mp.setattr(pipeline, "split", spy_split)
        mp.setattr(spark_train, "fit_on_spark", spy_fit)
        argv = ["build", "--engine", "spark", "--data", str(built.log_path)]
        status = cli.main([*argv, "--catalog", str(built.catalog_path), "--out", str(out), "-q"])
        assert status == 0
        session = spark_train.local_session()  # the build's session (getOrCreate)
        try:
            yield {"path": out, "session": session, **captured}
        finally:
            session.stop()


def test_spark_training_equals_single_machine_xgboost(spark_build) -> None:
    parts, est = spark_build["split"], spark_build["estimator"]
    assert spark_build["fit_kwargs"] == {"master": "local[2]", "num_workers": 1}
    assert type(est).__name__ == "XGBClassifier"
    local = xgboost.XGBClassifier(**spark_train.XGB_PARAMS).fit(parts.X_train, parts.y_train)
    # one worker sees every row: the very model one machine trains
    assert np.array_equal(est.predict_proba(parts.X_test), local.predict_proba(parts.X_test))
    assert np.array_equal(
        est.predict(parts.X_test, output_margin=True),
        local.predict(parts.X_test, output_margin=True),
    )


def test_the_artifact_serves_the_spark_trained_booster(spark_build, built) -> None:
    model = reco_fast.load(spark_build["path"])
    est, parts = spark_build["estimator"], spark_build["split"]
    meta = model.metadata
    assert (meta["family"], meta["objective"], meta["n_trees"]) == (
        "xgboost",
        "binary:logistic",
        100,
    )
    tol = float(meta["verification"]["tolerance"])
    expected = est.predict_proba(parts.X_test)[:, 1]
    for backend in model.available_backends():
        got = model.using(backend).predict_proba_features(parts.X_test)
        np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    sessions = [
        {k: v for k, v in row.items() if k != "recommendation_clicked"}
        for row in built.log.iloc[parts.idx_test[:50]].to_dict("records")
    ]
    np.testing.assert_allclose(
        [model.predict_proba(s) for s in sessions], expected[:50], rtol=0, atol=tol
    )
    report = (Path(spark_build["path"]) / "report.md").read_text()
    assert "XGBClassifier(" in report and "Compiled vs XGBoost" in report


def test_two_workers_train_a_close_model(spark_build) -> None:
    """Two XGBoost workers (one partition each) sum their histograms: a close model."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    parts = spark_build["split"]
    names = [f"f{i}" for i in range(parts.X_train.shape[1])]
    frame = pd.DataFrame(parts.X_train, columns=names).assign(label=parts.y_train)
    df = spark_build["session"].createDataFrame(frame)
    two = spark_train.fit_xgboost(df, names, num_workers=2)
    local = xgboost.XGBClassifier(**spark_train.XGB_PARAMS).fit(parts.X_train, parts.y_train)
    auc_two = roc_auc_score(parts.y_test, two.predict_proba(parts.X_test)[:, 1])
    auc_one = roc_auc_score(parts.y_test, local.predict_proba(parts.X_test)[:, 1])
    diff = np.abs(two.predict_proba(parts.X_test) - local.predict_proba(parts.X_test)).max()
    print(f"two workers: AUC {auc_two:.4f} vs {auc_one:.4f}; max |probability diff| {diff:.3g}")
    assert abs(auc_two - auc_one) < 0.01


def test_engine_spark_is_for_page_view_builds(tmp_path, capsys) -> None:
    argv = ["build", "--engine", "spark", "--events", "x.csv", "--columns", "time=t,product=p"]
    assert cli.main([*argv, "--out", str(tmp_path / "m")]) == cli.BAD_INPUT
    assert "--engine spark" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_workers"):
        spark_train.fit_xgboost(None, ["a"], num_workers=0)
