"""Every path reco_fast accepts is relative to the caller's working directory.

The C build used to hand relative include paths to a compiler running in
another directory (issue 9); these tests build, load and score with relative
paths from a working directory whose name has spaces and non-ASCII characters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

import reco_fast
from reco_fast.tools import cli


@pytest.fixture()
def odd_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cwd = tmp_path / "my shop's models ü 模型"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_compile_model_into_a_relative_directory(odd_cwd: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    est = GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(X, y)
    model = reco_fast.compile_model(est, "rel dir/out")
    assert (odd_cwd / "rel dir" / "out" / "metadata.json").is_file()
    again = reco_fast.load("rel dir/out")
    np.testing.assert_allclose(
        again.predict_proba_features(X), est.predict_proba(X)[:, 1], atol=1e-12
    )
    np.testing.assert_array_equal(model.predict_proba_features(X), again.predict_proba_features(X))


def test_cli_build_score_and_recommend_with_relative_paths(odd_cwd: Path, built) -> None:
    # data and catalog given relative to the cwd, output relative too
    data = Path("in put") / "log.csv"
    catalog = Path("in put") / "products.csv"
    data.parent.mkdir()
    data.write_bytes(built.log_path.read_bytes())
    catalog.write_bytes(built.catalog_path.read_bytes())
    assert (
        cli.main(["build", "--data", str(data), "--catalog", str(catalog), "--out", "artifacts/x"])
        == 0
    )
    assert Path("artifacts/x/metadata.json").is_file()
    scored = Path("out put") / "scored.csv"  # a directory that does not exist yet
    assert cli.main(["score", "artifacts/x", "--input", str(data), "--output", str(scored)]) == 0
    assert scored.is_file()
    model = reco_fast.load("artifacts/x")
    assert model.path.is_absolute()


def test_compiling_changes_no_process_wide_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No chdir, no redirected file descriptors, no umask change while a model compiles."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] > 0).astype(int)
    est = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(X, y)

    def forbidden(name: str):
        def call(*args, **kwargs):
            raise AssertionError(f"compile_model called os.{name}{args}")

        return call

    with monkeypatch.context() as mp:  # undone before pytest's own capture uses dup2
        for name in ("chdir", "dup2", "umask"):
            mp.setattr(f"os.{name}", forbidden(name))
        model = reco_fast.compile_model(est, tmp_path / "m")
    np.testing.assert_allclose(
        model.predict_proba_features(X), est.predict_proba(X)[:, 1], atol=1e-12
    )
