"""The artifact directory: what it records, that it loads back to the same model,
and that anything damaged, foreign or unsafe is refused with ArtifactError."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sys
from pathlib import Path

import cffi
import numpy as np
import pytest
import sklearn
import tl2cgen
import treelite
from sklearn.ensemble import GradientBoostingClassifier

import reco_fast
import reco_fast.compiler.driver
from reco_fast import ArtifactError, CompileError
from reco_fast.artifact import (
    FORMAT_VERSION,
    METADATA_FILE,
    UNCALIBRATED_FORMAT_VERSION,
    metadata_digest,
    platform_tag,
)
from reco_fast.compiler.frontends import sklearn_gbc
from reco_fast.features.page import FEATURE_SETS, definition_sha256
from tests.helpers import Built, write_meta


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(root.iterdir())}


def _meta(root: Path) -> dict:
    return json.loads((root / METADATA_FILE).read_text())


def _library(root: Path) -> Path:
    return root / _meta(root)["library"]


# ---- round trip and metadata -------------------------------------------------------------------


def test_round_trip(built: Built) -> None:
    loaded = reco_fast.load(built.path)
    assert loaded.path == built.path.resolve()
    X = built.split.X_test
    expected = built.estimator.predict_proba(X)[:, 1]
    assert np.array_equal(
        loaded.predict_proba_features(X), built.result.model.predict_proba_features(X)
    )
    assert np.max(np.abs(loaded.predict_proba_features(X) - expected)) <= 1e-12
    sessions = built.log.iloc[built.split.idx_test]
    assert np.array_equal(
        loaded.predict_proba(sessions), built.result.model.predict_proba(sessions)
    )
    assert np.max(np.abs(loaded.predict_proba(sessions) - expected)) <= 1e-12


def test_metadata_contents(built: Built) -> None:
    meta = _meta(built.path)
    assert meta["format"] == "reco_fast"
    # an uncalibrated artifact keeps version 3, so readers of 3 still read it; a
    # calibrated one is version 4 (tests/test_calibration.py)
    assert meta["format_version"] == UNCALIBRATED_FORMAT_VERSION == FORMAT_VERSION - 1 == 3
    assert meta["feature_set"] == "ranking"
    assert meta["feature_names"] == list(FEATURE_SETS["ranking"])
    assert meta["feature_spec"] == {
        "feature_set": "ranking",
        "names": list(FEATURE_SETS["ranking"]),
        "definition_sha256": definition_sha256("ranking"),
    }
    assert meta["metadata_sha256"] == metadata_digest(meta)
    assert meta["catalog"] == "catalog.csv"
    assert meta["threshold"] == 0.7
    assert meta["vocabulary"] == {
        "current_category": sorted(built.log["current_category"].unique()),
        "device_type": ["Desktop", "Mobile", "Tablet"],
        "traffic_source": ["Direct", "Email", "Organic", "Paid", "Social"],
    }
    assert meta["n_trees"] == 100
    assert meta["estimator"]["max_depth"] == 4 and meta["estimator"]["n_estimators"] == 100
    versions = meta["versions"]
    assert versions["reco_fast"] == reco_fast.__version__
    assert versions["numpy"] == np.__version__
    assert versions["scikit-learn"] == sklearn.__version__
    assert versions["treelite"] == treelite.__version__
    assert versions["tl2cgen"] == tl2cgen.__version__
    assert versions["cffi"] == cffi.__version__
    assert versions["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert meta["platform"] == platform_tag()
    assert meta["data"]["rows"] == 15_000
    assert meta["library"].endswith(platform_tag()["ext_suffix"])


def test_metadata_checksums_cover_every_file(built: Built) -> None:
    meta = _meta(built.path)
    on_disk = {p.name for p in built.path.iterdir() if p.name != METADATA_FILE}
    assert set(meta["files"]) == on_disk
    assert {
        meta["library"],
        "catalog.csv",
        "report.json",
        "report.md",
        "realtime_recommendation_predictions.csv",
    } <= on_disk
    for name, digest in meta["files"].items():
        assert sha256(built.path / name) == digest, name
    assert all(p.is_file() for p in built.path.iterdir())  # no leftover build directories


def test_golden_outputs_are_sklearns(built: Built) -> None:
    golden = _meta(built.path)["golden"]
    X = np.asarray(golden["X"])
    assert X.shape == (64, 24)
    assert np.array_equal(np.asarray(golden["proba"]), built.estimator.predict_proba(X)[:, 1])
    # half test rows, half adversarial rows
    assert np.array_equal(X[:32], built.split.X_test[:32])


# ---- tampering ---------------------------------------------------------------------------------


def test_flipped_byte_in_library(copy: Path) -> None:
    lib = _library(copy)
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0x01
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"does not match its checksum"):
        reco_fast.load(copy)


@pytest.mark.parametrize("name", ["library", "catalog.csv", "report.md"])
def test_truncated_file(copy: Path, name: str) -> None:
    path = _library(copy) if name == "library" else copy / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=rf"{path.name} does not match its checksum"):
        reco_fast.load(copy)


@pytest.mark.parametrize("name", ["library", "catalog.csv", "report.json"])
def test_missing_file(copy: Path, name: str) -> None:
    path = _library(copy) if name == "library" else copy / name
    path.unlink()
    with pytest.raises(ArtifactError, match=rf"is missing {path.name}"):
        reco_fast.load(copy)


def test_missing_metadata(copy: Path) -> None:
    (copy / METADATA_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"has no metadata.json: not a reco_fast artifact"):
        reco_fast.load(copy)


def test_foreign_directories(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"is not a directory"):
        reco_fast.load(tmp_path / "does-not-exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match=r"not a reco_fast artifact"):
        reco_fast.load(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / METADATA_FILE).write_text(json.dumps({"format": "something-else", "files": {}}))
    with pytest.raises(ArtifactError, match=r"is not reco_fast metadata"):
        reco_fast.load(other)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / METADATA_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"unreadable or damaged"):
        reco_fast.load(broken)


def test_newer_format_version(copy: Path) -> None:
    meta = _meta(copy)
    meta["format_version"] = FORMAT_VERSION + 1
    write_meta(copy, meta)
    with pytest.raises(
        ArtifactError,
        match=rf"format version {FORMAT_VERSION + 1}, newer than this reco_fast reads",
    ):
        reco_fast.load(copy)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ext_suffix", ".cpython-399-sparc-linux-gnu.so"),
        ("machine", "sparc64"),
        ("system", "win32"),
    ],
)
def test_other_platform(copy: Path, key: str, value: str) -> None:
    meta = _meta(copy)
    meta["platform"][key] = value
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=rf"built for {key}='{value}'"):
        reco_fast.load(copy)


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/hostname", "sub/x.txt", "..", "."])
def test_file_outside_the_artifact(copy: Path, name: str) -> None:
    meta = _meta(copy)
    meta["files"][name] = "0" * 64
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=r"names a file outside the artifact"):
        reco_fast.load(copy)


@pytest.mark.parametrize("what", ["proba", "X"])
def test_edited_golden_outputs(copy: Path, what: str) -> None:
    """Edited and resealed, checksums pass; only the golden check can tell."""
    from reco_fast.artifact import read_metadata

    meta = _meta(copy)
    if what == "proba":
        meta["golden"]["proba"][5] += 1e-9
    else:  # move one golden row far across the engagement_score splits
        row = meta["golden"]["X"][40]
        row[15] = 1.0 if row[15] < 0.5 else 0.0
    write_meta(copy, meta, reseal=True)
    read_metadata(copy)  # the checksums and platform are fine
    with pytest.raises(ArtifactError, match=r"does not reproduce its golden outputs"):
        reco_fast.load(copy)


def test_library_swapped_with_adjusted_checksum(copy: Path, tmp_path: Path) -> None:
    """Another model's library under this name, checksum updated: refused at load."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 24))
    y = (X[:, 15] > 0).astype(int)
    other = reco_fast.compile_model(
        GradientBoostingClassifier(n_estimators=5, max_depth=2).fit(X, y), tmp_path / "other"
    )
    meta = _meta(copy)
    lib = copy / meta["library"]
    shutil.copyfile(other.path / _meta(other.path)["library"], lib)
    meta["files"][lib.name] = sha256(lib)
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match="cannot load the compiled library"):
        reco_fast.load(copy)


# ---- pickling and failed rebuilds ---------------------------------------------------------------


def test_model_pickles(built: Built, sample_session) -> None:
    model = built.model
    clone = pickle.loads(pickle.dumps(model))
    assert clone is not model
    assert clone.path == model.path and clone.feature_names == model.feature_names
    X = built.split.X_test[:200]
    assert np.array_equal(clone.predict_proba_features(X), model.predict_proba_features(X))
    assert clone.predict_proba(sample_session) == model.predict_proba(sample_session)
    sessions = built.log.iloc[:100]
    assert np.array_equal(clone.predict_proba(sessions), model.predict_proba(sessions))


def _exponential() -> GradientBoostingClassifier:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 24))
    return GradientBoostingClassifier(n_estimators=5, loss="exponential").fit(X, X[:, 0] > 0)


def _no_staging_left(parent: Path, keep: set[str]) -> None:
    left = {p.name for p in parent.iterdir() if not p.name.endswith(".lock")}
    assert left == keep, left


def test_failed_compile_keeps_previous_artifact(
    copy: Path, monkeypatch: pytest.MonkeyPatch, sample_session
) -> None:
    before = snapshot(copy)
    expected = reco_fast.load(copy).predict_proba(sample_session)
    estimator = _exponential()
    with pytest.raises(CompileError, match="exponential"):
        reco_fast.compile_model(estimator, copy)
    assert snapshot(copy) == before
    # refused later, by verification, after staging was written
    monkeypatch.setattr(sklearn_gbc, "check_estimator", lambda e: None)
    with pytest.raises(CompileError, match="differs from scikit-learn"):
        reco_fast.compile_model(estimator, copy)
    assert snapshot(copy) == before
    _no_staging_left(copy.parent, {"artifact"})
    assert reco_fast.load(copy).predict_proba(sample_session) == expected


def test_successful_compile_replaces_artifact(copy: Path) -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3))
    estimator = GradientBoostingClassifier(n_estimators=3, max_depth=2).fit(X, X[:, 1] > 0)
    model = reco_fast.compile_model(estimator, copy, ["a", "b", "c"])
    assert model.feature_names == ("a", "b", "c")
    assert not (copy / "report.md").exists()  # the old artifact's files are gone
    assert reco_fast.load(copy).n_features == 3
    _no_staging_left(copy.parent, {"artifact"})


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("not a model")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(100, 2))
    estimator = GradientBoostingClassifier(n_estimators=2, max_depth=1).fit(X, X[:, 0] > 0)
    with pytest.raises(ArtifactError, match="is not a reco_fast artifact; refusing to replace it"):
        reco_fast.compile_model(estimator, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    _no_staging_left(tmp_path, {"precious"})
