"""Shared fixtures: one default build per test session, reused by every test file.

``built`` runs ``reco_fast.build.pipeline.build`` once (about 10 s) on the generated
default data, entirely inside pytest's temporary directory. The pipeline's own
``split`` and ``fit`` are wrapped (not replaced) so tests can compare the
compiled artifact with the exact scikit-learn estimator it was built from.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

import reco_fast
from reco_fast.build import pipeline
from reco_fast.build.data import DEFAULT_CATALOG_FILE, DEFAULT_LOG_FILE
from reco_fast.features.schema import FLOAT32_MAX, LABEL

REPO = Path(__file__).resolve().parents[1]

# Nothing written into the repository (hypothesis keeps a cache even without a
# database); compiles are slow, so no deadline.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "reco_fast-tests-hypothesis")
settings.register_profile(
    "reco_fast",
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("reco_fast")


def subprocess_env() -> dict[str, str]:
    """Environment for a child Python that imports reco_fast from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.pop("PYTHONSTARTUP", None)
    return env


def nearest_float32(n: int) -> float:
    """The float32 nearest to the integer n (ties to even) by exact arithmetic, or ±inf:
    written apart from the library's own conversion."""
    sign = -1.0 if n < 0 else 1.0
    m = abs(n)
    top = Fraction(FLOAT32_MAX) + Fraction(2**103)  # halfway from FLOAT32_MAX to 2**128
    if m >= top:
        return sign * math.inf
    near = np.float32(min(float(m), FLOAT32_MAX))  # within an ulp or two of m
    candidates = {near}
    with np.errstate(over="ignore"):  # next to the largest float32 is inf
        for _ in range(2):
            candidates |= {np.nextafter(c, np.float32(d)) for c in candidates for d in (0, np.inf)}
    finite = [c for c in candidates if np.isfinite(c)]
    best = min(finite, key=lambda c: (abs(Fraction(float(c)) - m), int(c.view(np.uint32)) & 1))
    return sign * float(best)


def native(value: Any) -> Any:
    """numpy scalar -> plain Python (str, int, float)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Built:
    """One pipeline build and everything a test needs to check it independently."""

    result: pipeline.BuildResult
    path: Path  # the artifact directory
    model: reco_fast.Model  # reco_fast.load(path), loaded separately from result.model
    data_dir: Path
    log_path: Path
    catalog_path: Path
    log: pd.DataFrame  # the CSV the pipeline trained on, read back with pandas
    catalog: pd.DataFrame
    X: np.ndarray  # the full feature matrix the pipeline trained and split
    y: np.ndarray
    split: Any  # reco_fast.build.train.Split
    estimator: Any  # the fitted sklearn GradientBoostingClassifier

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.model.metadata)


def _spied_build(tmp: Path, **kwargs: Any) -> dict[str, Any]:
    """Run pipeline.build with cwd=tmp, capturing the matrix, split and estimator it used."""
    captured: dict[str, Any] = {}
    real_split, real_fit = pipeline.split, pipeline.fit

    def spy_split(X, y, *args, **kw):
        captured["X"], captured["y"] = X, y
        captured["split"] = real_split(X, y, *args, **kw)
        return captured["split"]

    def spy_fit(X, y, *args, **kw):
        estimator, seconds = real_fit(X, y, *args, **kw)
        captured["estimator"] = estimator
        return estimator, seconds

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "split", spy_split)
        mp.setattr(pipeline, "fit", spy_fit)
        mp.chdir(tmp)  # anything written relative to cwd stays in tmp
        captured["result"] = pipeline.build(**kwargs)
    return captured


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("built")
    out, data_dir = tmp / "artifact", tmp / "data"
    cap = _spied_build(tmp, out=out, data_dir=data_dir)
    log_path, catalog_path = data_dir / DEFAULT_LOG_FILE, data_dir / DEFAULT_CATALOG_FILE
    return Built(
        result=cap["result"],
        path=out,
        model=reco_fast.load(out),
        data_dir=data_dir,
        log_path=log_path,
        catalog_path=catalog_path,
        log=pd.read_csv(log_path),
        catalog=pd.read_csv(catalog_path),
        X=cap["X"],
        y=cap["y"],
        split=cap["split"],
        estimator=cap["estimator"],
    )


SMALL_ROWS = 3000


@pytest.fixture(scope="session")
def small_csv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 3,000 rows of the generated log, byte for byte (same header and cells)."""
    path = tmp_path_factory.mktemp("small") / "small_log.csv"
    lines = built.log_path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: SMALL_ROWS + 1]))
    return path


@pytest.fixture(scope="session")
def seed_built(built: Built, small_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A feature_set="seed" build (the notebook's 19 features) on the 3,000-row log."""
    tmp = tmp_path_factory.mktemp("seed_built")
    out = tmp / "artifact"
    cap = _spied_build(tmp, data=small_csv, catalog=built.catalog_path, out=out, feature_set="seed")
    return Built(
        result=cap["result"],
        path=out,
        model=reco_fast.load(out),
        data_dir=small_csv.parent,
        log_path=small_csv,
        catalog_path=built.catalog_path,
        log=pd.read_csv(small_csv),
        catalog=built.catalog,
        X=cap["X"],
        y=cap["y"],
        split=cap["split"],
        estimator=cap["estimator"],
    )


def session_from_row(row: pd.Series) -> dict[str, Any]:
    """A session dict (every log column but the label) in plain Python types."""
    return {k: native(v) for k, v in row.items() if k != LABEL}


@pytest.fixture
def sample_session(built: Built) -> dict[str, Any]:
    """One valid page view of the generated log, with previous products (no "NONE")."""
    has_prev = built.log["prev_product_3"] != "NONE"
    row = built.log[has_prev].iloc[0]
    session = session_from_row(row)
    assert all(type(v) in (str, int, float) for v in session.values())
    assert not any(isinstance(v, float) and math.isnan(v) for v in session.values())
    return session


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
