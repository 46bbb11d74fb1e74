"""Shared fixtures: one default build per test session, reused by every test file.

``built`` runs ``reco_fast.build.pipeline.build`` once (about 10 s) on the generated
default data, entirely inside pytest's temporary directory. The pipeline's own
``split`` and ``fit`` are wrapped (not replaced) so tests can compare the
compiled artifact with the exact scikit-learn estimator it was built from.
``built`` and ``seed_built`` are built uncalibrated (the default): their probabilities
are the estimator's own, which most tests compare with; calibrated builds (probabilities
of scikit-learn's calibrator) are tests/test_calibration.py's.

The suite runs on every core with ``pytest -n auto`` (pytest-xdist; pyproject.toml adds
``--dist loadfile``): each file's tests stay in one worker, so a module fixture is built
once, and :func:`pytest_collection_modifyitems` hands out the longest files first.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

import reco_fast
from reco_fast.build import pipeline
from reco_fast.build.data import DEFAULT_CATALOG_FILE, DEFAULT_LOG_FILE
from tests.helpers import SMALL_ROWS, Built, session_from_row

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

LONGEST_FIRST = (
    "tests/test_readme.py",
    "tests/test_compile.py",
    "tests/test_frontends.py",
    "tests/test_cli.py",
    "tests/test_reliability.py",
    "tests/test_loop.py",
    "tests/test_event_model.py",
    "tests/test_calibration.py",
)
"""Files that take half a minute or more (``pytest --durations=0``), longest first: handed
out first (``--no-loadscope-reorder`` keeps this order), so that no worker is left running
one of them alone at the end."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put :data:`LONGEST_FIRST`'s tests at the front, each file's order unchanged."""

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


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
    cap = _spied_build(tmp, out=out, data_dir=data_dir, calibration=None)
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


@pytest.fixture(name="copy")
def artifact_copy(built: Built, tmp_path: Path) -> Path:
    """A copy of ``built``'s artifact under tmp_path, for a test to damage."""
    target = tmp_path / "artifact"
    shutil.copytree(built.path, target)
    return target


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
    cap = _spied_build(
        tmp,
        data=small_csv,
        catalog=built.catalog_path,
        out=out,
        feature_set="seed",
        calibration=None,
    )
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
