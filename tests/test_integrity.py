"""Artifact integrity (issue 11, items 3-5): the feature specification an artifact was
built with, metadata.json inside the checksums, paths that stay inside the artifact,
golden outputs over every entry point, and the checked bytes being the loaded bytes.

Each test edits a copy of the session's build the way the issue found it accepted,
and shows it refused (or, for a harmless edit, loading exactly the same model). The
"resealed" variants recompute ``metadata_sha256`` as a deliberate writer would, so the
check behind the digest is the one exercised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import json
import os
import shlex
import shutil
import stat
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import reco_fast
from reco_fast import ArtifactError, CompileError, artifact
from reco_fast.artifact import METADATA_FILE
from reco_fast.features import page as features
from reco_fast.features.page import FEATURE_SETS, FeatureBuilder
from reco_fast.serve import model as runtime
from reco_fast.tools.cli import main as cli_main
from tests.helpers import Built, write_meta


# ---- helpers ---------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _meta(root: Path) -> dict[str, Any]:
    return json.loads((root / METADATA_FILE).read_text())


@pytest.fixture
def fresh_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the libraries this process imported, so a load really imports one."""
    monkeypatch.setattr(runtime, "_LIBRARIES", {}, raising=False)
    monkeypatch.setattr(runtime, "_FAILED", {}, raising=False)


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(path, sha256 of its bytes at that moment) of every extension module dlopen'ed."""
    seen: list[tuple[str, str]] = []
    real = importlib.machinery.ExtensionFileLoader.create_module

    def spy(self: Any, spec: Any) -> Any:
        try:
            with open(spec.origin, "rb") as f:
                digest = sha256(f.read())
        except OSError:
            digest = "unreadable"
        seen.append((str(spec.origin), digest))
        return real(self, spec)

    monkeypatch.setattr(importlib.machinery.ExtensionFileLoader, "create_module", spy)
    return seen


@pytest.fixture(scope="module")
def marker_library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A shared library whose constructor creates a marker file when it is dlopen'ed:
    (library, marker). If the marker exists, unverified native code ran."""
    tmp = tmp_path_factory.mktemp("marker")
    marker = tmp / "constructor-ran"
    source = tmp / "evil.c"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void mark(void) {\n"
        f'  FILE* f = fopen("{marker}", "w");\n'
        "  if (f) fclose(f);\n"
        "}\n"
    )
    library = tmp / "evil.so"
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    subprocess.run([*cc, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    return library, marker


# ---- 3. the feature specification ---------------------------------------------------------------
def test_metadata_records_the_feature_specification(built: Built) -> None:
    spec = _meta(built.path)["feature_spec"]
    assert spec["feature_set"] == "ranking"
    assert spec["names"] == list(FEATURE_SETS["ranking"])
    assert spec["definition_sha256"] == features.definition_sha256("ranking")


@pytest.mark.parametrize("drift", ["25th feature", "two features swapped"])
def test_a_changed_feature_list_is_refused(
    copy: Path, monkeypatch: pytest.MonkeyPatch, drift: str
) -> None:
    """The issue's case: the code's feature list changed after the artifact was built."""
    names = list(FEATURE_SETS["ranking"])
    if drift == "25th feature":
        names.append("rec_popularity")
    else:
        names[19], names[20] = names[20], names[19]
    monkeypatch.setitem(FEATURE_SETS, "ranking", tuple(names))
    with pytest.raises(ArtifactError, match=r"feature definitions changed.*rebuild the artifact"):
        reco_fast.load(copy)


@pytest.mark.parametrize(
    ("feature", "expr"),
    [("premium_product", "price > 120"), ("rec_price_ratio", "rprice / max(price, 0.02)")],
)
def test_a_changed_feature_definition_is_refused(
    copy: Path, monkeypatch: pytest.MonkeyPatch, feature: str, expr: str
) -> None:
    """One expression of the specification edited: every generated path would change."""
    from reco_fast.features import spec as _spec

    fs = _spec.FEATURE_SETS["ranking"]

    def edit(block: tuple[_spec.Feature, ...]) -> tuple[_spec.Feature, ...]:
        return tuple(_spec.Feature(f.name, expr, f.doc) if f.name == feature else f for f in block)

    changed = dataclasses.replace(fs, session=edit(fs.session), candidate=edit(fs.candidate))
    assert _spec.spec_hash(changed) != _spec.spec_hash(fs)
    monkeypatch.setitem(_spec.FEATURE_SETS, "ranking", changed)
    with pytest.raises(ArtifactError, match=r"other definitions.*rebuild the artifact"):
        reco_fast.load(copy)


def test_the_definition_digest_is_the_specification_hash() -> None:
    from reco_fast.features import spec as _spec

    for name in FEATURE_SETS:
        assert features.definition_sha256(name) == _spec.spec_hash(_spec.FEATURE_SETS[name])
    assert len({features.definition_sha256(n) for n in FEATURE_SETS}) == len(FEATURE_SETS)


def test_feature_set_edited_to_seed_is_refused(copy: Path) -> None:
    """The issue's case: `feature_set` edited to "seed" (C would read 19-wide rows as
    24-wide): refused by the metadata checksum, and when resealed, by the widths."""
    meta = _meta(copy)
    meta["feature_set"] = "seed"
    write_meta(copy, meta)
    with pytest.raises(ArtifactError, match=r"metadata.json does not match its checksum"):
        reco_fast.load(copy)
    meta["feature_spec"]["feature_set"] = "seed"
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=r"built with 24 'seed' features, but this .*19"):
        reco_fast.load(copy)
    names = list(FEATURE_SETS["seed"])
    meta["feature_names"] = meta["feature_spec"]["names"] = names
    meta["feature_spec"]["definition_sha256"] = features.definition_sha256("seed")
    meta["golden"]["X"] = [row[:19] for row in meta["golden"]["X"]]
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=r"library expects 24 features, metadata lists 19"):
        reco_fast.load(copy)


def test_every_pointer_to_c_has_its_width_checked(
    built: Built, sample_session: dict[str, Any]
) -> None:
    model = built.model
    with pytest.raises(ValueError, match=r"shape \(n, 24\)"):
        model._predict_f64(np.zeros((3, 19)))
    with pytest.raises(ValueError, match=r"C-contiguous float"):
        model._predict_f32(np.zeros((3, 24)))  # float64 handed to the float32 kernel
    with pytest.raises(ValueError, match=r"C-contiguous double"):
        model._predict_f64(np.zeros((24, 3)).T)
    row = model.builder.session_row(sample_session)
    with pytest.raises(ValueError, match=r"row must hold 19 session features, got 10"):
        model._top_candidates(row[:10], [], [], None, 0.0, 3)
    module = SimpleNamespace(ffi=model._ffi, lib=model._lib)
    seed_builder = FeatureBuilder("seed", model.builder.vocabulary)
    with pytest.raises(ArtifactError, match=r"makes 19 features, the library takes 24"):
        runtime.Model(model.path, module, model.feature_names, {}, seed_builder)


# ---- golden raw sessions --------------------------------------------------------------------------
def test_golden_sessions_are_recorded_with_sklearns_answers(built: Built) -> None:
    golden = _meta(built.path)["golden_sessions"]
    sessions = golden["sessions"]
    assert len(sessions) >= 16 and all(isinstance(s, dict) for s in sessions)
    builder = built.model.builder
    X = builder.transform(
        {f: np.asarray([s[f] for s in sessions], dtype=object) for f in sessions[0]}
    )
    assert np.array_equal(golden["proba"], built.estimator.predict_proba(X)[:, 1])
    assert any(s["recommended_product_id"] in builder.viewed_ids(s) for s in sessions)
    assert any(s["prev_product_1"] == "NONE" for s in sessions)
    cases = golden["recommend"]
    assert cases and all(c["session"]["cart_product_ids"] for c in cases)
    for case in cases:  # the in-cart product would have been first: the exclusion matters
        full = built.model.recommend(case["session"], k=6, threshold=0.0, exclude=["viewed"])
        assert full[0].product_id == case["session"]["cart_product_ids"][0]
        assert [r.product_id for r in full[1:]] == case["product_ids"]


def _perturb_raw(real: Any) -> Any:
    def raw(self: FeatureBuilder, session: Any) -> tuple[float, ...]:
        out = list(real(self, session))
        out[5] += 40.0  # time on page
        return tuple(out)

    return raw


def _perturb_transform(real: Any) -> Any:
    def transform(self: FeatureBuilder, *args: Any, **kwargs: Any) -> np.ndarray:
        X = real(self, *args, **kwargs)
        X[:, 5] += 40.0
        return X

    return transform


def _perturb_session_row(real: Any) -> Any:
    def session_row(self: FeatureBuilder, session: Any) -> list[float]:
        row = real(self, session)
        row[5] += 40.0
        return row

    return session_row


@pytest.mark.parametrize(
    ("method", "perturb", "where"),
    [
        ("raw", _perturb_raw, "session dicts, one at a time"),
        ("transform", _perturb_transform, "session dicts, as a batch"),
        ("session_row", _perturb_session_row, "recommend, case"),
    ],
)
def test_golden_sessions_catch_drift_in_each_entry_point(
    copy: Path, monkeypatch: pytest.MonkeyPatch, method: str, perturb: Any, where: str
) -> None:
    """A drift the definition digest cannot see (here a patched method; in real life a
    changed helper outside features.py) is caught on the path it affects."""
    monkeypatch.setattr(FeatureBuilder, method, perturb(getattr(FeatureBuilder, method)))
    with pytest.raises(ArtifactError, match=rf"does not reproduce its golden outputs \({where}"):
        reco_fast.load(copy)


def test_golden_sessions_cover_every_backend_and_entry_point(
    copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: set[tuple[str, str]] = set()
    real_predict, real_recommend = runtime.Model.predict_proba, runtime.Model.recommend

    def predict_proba(self: runtime.Model, sessions: Any, *args: Any, **kwargs: Any) -> Any:
        calls.add((self.backend, "one" if isinstance(sessions, dict) else "batch"))
        return real_predict(self, sessions, *args, **kwargs)

    def recommend(self: runtime.Model, *args: Any, **kwargs: Any) -> Any:
        calls.add((self.backend, "recommend"))
        return real_recommend(self, *args, **kwargs)

    monkeypatch.setattr(runtime.Model, "predict_proba", predict_proba)
    monkeypatch.setattr(runtime.Model, "recommend", recommend)
    model = reco_fast.load(copy)
    backends = model.available_backends()
    assert len(backends) >= 2
    assert calls == {(b, kind) for b in backends for kind in ("one", "batch", "recommend")}


@pytest.mark.parametrize(
    "emptied",
    ["golden X", "golden_sessions", "sessions", "recommend"],
)
def test_golden_outputs_are_required(copy: Path, emptied: str) -> None:
    """The issue's case: `golden` may be empty and `verify` still prints ok."""
    meta = _meta(copy)
    if emptied == "golden X":
        meta["golden"] = {"X": [], "proba": []}
    elif emptied == "golden_sessions":
        del meta["golden_sessions"]
    else:
        meta["golden_sessions"][emptied] = []
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=r"malformed metadata"):
        reco_fast.load(copy)
    assert cli_main(["verify", str(copy)]) == 1


# ---- 4. metadata.json inside the integrity check -------------------------------------------------
def test_a_flipped_threshold_digit_is_refused(copy: Path) -> None:
    """The issue's case: one flipped byte turns the threshold 0.7 into 0.6."""
    path = copy / METADATA_FILE
    text = path.read_bytes()
    assert text.count(b'"threshold": 0.7,') == 1
    path.write_bytes(text.replace(b'"threshold": 0.7,', b'"threshold": 0.6,'))
    with pytest.raises(ArtifactError, match=r"metadata.json does not match its checksum"):
        reco_fast.load(copy)


def test_every_metadata_byte_is_covered(copy: Path, built: Built) -> None:
    """Flip one bit at a time in metadata.json (every byte of the scoring fields, and a
    random sample elsewhere): each edit is refused, or the metadata parses unchanged."""
    path = copy / METADATA_FILE
    text = path.read_bytes()
    original = json.loads(text)
    positions = set(np.random.default_rng(0).choice(len(text), 200, replace=False).tolist())
    for key in (b'"threshold"', b'"feature_set"', b'"library"', b'"catalog"', b'"backend"'):
        start = text.index(key)
        positions |= set(range(start, text.index(b"\n", start)))
    loaded = 0
    for pos in sorted(positions):
        data = bytearray(text)
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
        try:
            model = reco_fast.load(copy)
        except ArtifactError:
            continue
        loaded += 1
        assert dict(model.metadata) == original, pos
    path.write_bytes(text)
    assert reco_fast.load(copy).metadata == built.model.metadata
    assert loaded < len(positions) // 10


def test_an_older_format_is_refused_with_rebuild(copy: Path) -> None:
    meta = _meta(copy)
    meta["format_version"] = 1
    for key in ("metadata_sha256", "feature_spec", "golden_sessions"):
        del meta[key]
    write_meta(copy, meta)
    with pytest.raises(ArtifactError, match=r"format version 1, older .* rebuild the artifact"):
        reco_fast.load(copy)


def test_duplicate_keys_are_refused(copy: Path) -> None:
    path = copy / METADATA_FILE
    text = path.read_text()
    path.write_text(text.replace('"threshold": 0.7,', '"threshold": 0.7, "threshold": 0.6,'))
    with pytest.raises(ArtifactError, match=r"duplicate key 'threshold'"):
        reco_fast.load(copy)


@pytest.mark.parametrize("where", ["relative", "absolute"])
@pytest.mark.parametrize("reseal", [False, True])
def test_a_library_outside_the_artifact_is_never_loaded(
    copy: Path,
    marker_library: tuple[Path, Path],
    imports: list[tuple[str, str]],
    fresh_import: None,
    where: str,
    reseal: bool,
) -> None:
    """The issue's case: `library` pointing at `../elsewhere/x.so` or an absolute path was
    loaded without a checksum. Refused before anything is dlopen'ed."""
    library, marker = marker_library
    meta = _meta(copy)
    ext = artifact.platform_tag()["ext_suffix"]
    elsewhere = copy.parent / "elsewhere"
    elsewhere.mkdir()
    outside = elsewhere / (meta["module"] + ext)
    shutil.copyfile(library, outside)
    meta["library"] = str(outside) if where == "absolute" else f"../elsewhere/{outside.name}"
    write_meta(copy, meta, reseal=reseal)
    with pytest.raises(ArtifactError, match=r"checksum|outside the artifact"):
        reco_fast.load(copy)
    assert not marker.exists() and imports == []


def test_the_library_must_be_listed(copy: Path) -> None:
    meta = _meta(copy)
    del meta["files"][meta["library"]]
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=r"does not list '_reco_model_.*' in files"):
        reco_fast.load(copy)


def test_an_unlisted_edited_catalog_is_refused(copy: Path) -> None:
    """The issue's case: catalog.csv dropped from `files`, then edited (a price of
    99999.0 was served)."""
    meta = _meta(copy)
    del meta["files"]["catalog.csv"]
    catalog = copy / "catalog.csv"
    lines = catalog.read_text().splitlines()
    lines[1] = ",".join([*lines[1].split(",")[:2], "99999.0"])
    catalog.write_text("\n".join(lines) + "\n")
    write_meta(copy, meta)
    with pytest.raises(ArtifactError, match=r"metadata.json does not match its checksum"):
        reco_fast.load(copy)
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=r"does not list 'catalog.csv' in files"):
        reco_fast.load(copy)


@pytest.mark.parametrize("name", ["../catalog.csv", "/tmp/catalog.csv", "sub/catalog.csv"])
def test_the_catalog_stays_inside_the_artifact(copy: Path, name: str) -> None:
    meta = _meta(copy)
    meta["catalog"] = name
    write_meta(copy, meta, reseal=True)
    with pytest.raises(ArtifactError, match=r"names a file outside the artifact \(catalog"):
        reco_fast.load(copy)


def test_a_symlinked_file_is_refused(copy: Path, tmp_path: Path) -> None:
    """Same bytes, but reached through a link out of the artifact: refused."""
    outside = tmp_path / "outside.csv"
    shutil.copyfile(copy / "catalog.csv", outside)
    (copy / "catalog.csv").unlink()
    (copy / "catalog.csv").symlink_to(outside)
    with pytest.raises(ArtifactError, match=r"catalog.csv is a symbolic link"):
        reco_fast.load(copy)


def test_a_fifo_is_refused_without_blocking(copy: Path) -> None:
    (copy / "report.md").unlink()
    os.mkfifo(copy / "report.md")
    with pytest.raises(ArtifactError, match=r"report.md is not a regular file"):
        reco_fast.load(copy)


# ---- 5. the checked bytes are the loaded bytes -----------------------------------------------------
def test_the_checked_bytes_are_the_loaded_bytes(
    copy: Path,
    built: Built,
    marker_library: tuple[Path, Path],
    imports: list[tuple[str, str]],
    fresh_import: None,
    monkeypatch: pytest.MonkeyPatch,
    sample_session: dict[str, Any],
) -> None:
    """The issue's case: the library was hashed by path, then imported by path again;
    swapping the file in between ran an unverified library's constructor. Here the file
    is swapped right after it is read for its checksum: the swapped library is never
    dlopen'ed, and what is imported has the checked digest."""
    meta = _meta(copy)
    lib = copy / meta["library"]
    digest = meta["files"][lib.name]
    evil, marker = marker_library
    swapped: list[bool] = []

    def swap_after(real: Any) -> Any:
        def read(path: Any, *args: Any, **kwargs: Any) -> Any:
            out = real(path, *args, **kwargs)
            if Path(path).name == lib.name and not swapped:
                staged = lib.with_name("swap.tmp")
                shutil.copyfile(evil, staged)
                os.replace(staged, lib)
                swapped.append(True)
            return out

        return read

    monkeypatch.setattr(artifact, "sha256_file", swap_after(artifact.sha256_file))
    if hasattr(artifact, "_read_regular"):
        monkeypatch.setattr(artifact, "_read_regular", swap_after(artifact._read_regular))
    try:
        model = reco_fast.load(copy)
    except ArtifactError:
        model = None
    assert swapped
    assert not marker.exists(), "the swapped library's constructor ran"
    assert imports and all(d == digest for _, d in imports), imports
    assert all(not p.startswith(str(copy)) for p, _ in imports)  # a private copy, not the path
    assert model is not None
    assert model.predict_proba(sample_session) == built.model.predict_proba(sample_session)


def test_the_private_copy_is_private_and_removed(
    copy: Path,
    built: Built,
    fresh_import: None,
    monkeypatch: pytest.MonkeyPatch,
    sample_session: dict[str, Any],
) -> None:
    """Where no sealed memfd is available, the copy lives in a fresh 0700 directory, is
    read-only, and is gone once the library is loaded."""
    monkeypatch.setattr(runtime, "_sealed_memfd", lambda data, name: None, raising=False)
    made: list[str] = []
    modes: list[tuple[int, int]] = []
    real_mkdtemp = tempfile.mkdtemp
    real_create = importlib.machinery.ExtensionFileLoader.create_module

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    def create_module(self: Any, spec: Any) -> Any:
        origin = Path(spec.origin)
        modes.append(
            (stat.S_IMODE(origin.parent.stat().st_mode), stat.S_IMODE(origin.stat().st_mode))
        )
        return real_create(self, spec)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(importlib.machinery.ExtensionFileLoader, "create_module", create_module)
    model = reco_fast.load(copy)
    assert made and modes == [(0o700, 0o500)]
    assert not any(Path(d).exists() for d in made)
    assert model.predict_proba(sample_session) == built.model.predict_proba(sample_session)


def test_the_same_bytes_are_imported_once(built: Built, fresh_import: None, tmp_path: Path) -> None:
    """Two copies of one artifact at different paths share one import of the verified
    bytes (no new mapping, no new descriptor per load)."""
    paths = [tmp_path / "a", tmp_path / "b"]
    for path in paths:
        shutil.copytree(built.path, path)
    first = reco_fast.load(paths[0])
    fds = len(os.listdir("/proc/self/fd"))
    models = [reco_fast.load(p) for p in paths * 3]
    assert all(m._lib is first._lib for m in models)
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("case", ["threshold edited", "library outside", "golden emptied"])
def test_verify_refuses_before_running_anything(
    copy: Path,
    marker_library: tuple[Path, Path],
    imports: list[tuple[str, str]],
    fresh_import: None,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    """`reco-fast verify` checks everything that needs no native code first: an artifact
    failing any of it exits 1 and nothing of it is dlopen'ed."""
    meta = _meta(copy)
    if case == "threshold edited":
        meta["threshold"] = 0.6
        write_meta(copy, meta)
    elif case == "library outside":
        shutil.copyfile(marker_library[0], copy.parent / "x.so")
        meta["library"] = "../x.so"
        write_meta(copy, meta, reseal=True)
    else:
        meta["golden"] = {"X": [], "proba": []}
        write_meta(copy, meta, reseal=True)
    assert cli_main(["verify", str(copy)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reco-fast verify: error: ") and err.count("\n") == 1
    assert imports == []
    assert not marker_library[1].exists()


def test_the_platform_tag_is_computed_once(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sysconfig's first use is not thread-safe: load never calls it."""

    def boom(*args: Any) -> Any:
        raise AssertionError("sysconfig.get_config_var called at load")

    monkeypatch.setattr(sysconfig, "get_config_var", boom)
    tag = artifact.platform_tag()
    tag["system"] = "changed"  # a copy: the module's tag is not shared
    assert artifact.platform_tag()["system"] != "changed"
    assert reco_fast.load(copy).n_features == 24


def test_compile_with_a_feature_set_needs_golden_sessions(built: Built, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=r"needs its FeatureBuilder"):
        reco_fast.compile_model(
            built.estimator,
            tmp_path / "m",
            list(FEATURE_SETS["ranking"]),
            feature_set="ranking",
        )
    assert not (tmp_path / "m").exists()


def test_an_unknown_backend_argument_is_a_value_error(copy: Path) -> None:
    """A bad argument names the argument; it is not reported as a damaged artifact."""
    with pytest.raises(ValueError, match=r"backend must be .*one of .*got 'gpu'") as info:
        reco_fast.load(copy, backend="gpu")
    assert not isinstance(info.value, ArtifactError)
