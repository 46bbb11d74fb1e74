"""The wheel: built with pip, installed into a fresh venv with only numpy and cffi, it
loads an artifact built elsewhere and scores exactly like the in-process model.

Slow (a wheel build, a venv, a pip install): marked ``wheel``; deselect with
``-m "not wheel"``. pip fetches numpy and cffi from the configured index (or its
cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, native

pytestmark = pytest.mark.wheel

BUILD_ONLY = ("sklearn", "treelite", "tl2cgen", "pandas", "matplotlib")

CHILD = r"""
import importlib.util, json, sys
from pathlib import Path

artifact, sessions_file, build_only = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
present = [m for m in build_only if importlib.util.find_spec(m) is not None]
import reco_fast

model = reco_fast.load(artifact)
sessions = json.loads(Path(sessions_file).read_text())
batch = model.predict_proba(sessions).tolist()
single = [model.predict_proba(s) for s in sessions]
recs = [
    [[r.product_id, r.probability, r.reason] for r in model.recommend(s, k=3, threshold=0.3)]
    for s in sessions[:10]
]
print(json.dumps({
    "file": reco_fast.__file__,
    "present": present,
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in set(build_only)),
    "backend": model.backend,
    "batch": batch,
    "single": single,
    "recs": recs,
}))
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _source_tree(dest: Path) -> Path:
    """The files the wheel is built from, copied so that the build writes nothing in REPO."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(
        REPO / "reco_fast",
        dest / "reco_fast",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"),
    )
    return dest


def test_wheel_installs_with_numpy_and_cffi_only_and_scores_identically(built, tmp_path):
    wheels = tmp_path / "wheels"
    src = _source_tree(tmp_path / "src")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "-w",
            str(wheels),
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
        ],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("reco_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "reco_fast/serve/model.py" in names and "reco_fast/compiler/flat_template.c" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "data/"))]
    requires = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("METADATA")))
        .decode()
        .splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(r.split(">")[0].split("<")[0].split("=")[0] for r in requires) == [
        "cffi",
        "numpy",
    ]

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env=_clean_env())
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "--quiet", str(wheel)], env=_clean_env())
    freeze = _run([str(py), "-m", "pip", "freeze"], env=_clean_env()).stdout.lower()
    for name in ("scikit-learn", "treelite", "tl2cgen", "pandas"):
        assert name not in freeze, freeze

    rows = built.log.drop(columns="recommendation_clicked").iloc[:200]
    sessions = [{k: native(v) for k, v in row.items()} for _, row in rows.iterrows()]
    sessions_file = tmp_path / "sessions.json"
    sessions_file.write_text(json.dumps(sessions))
    # -I: isolated (no PYTHONPATH, no user site, no cwd on sys.path); cwd outside the repo
    proc = _run(
        [str(py), "-I", "-c", CHILD, str(built.path), str(sessions_file), ",".join(BUILD_ONLY)],
        cwd=tmp_path,
        env=_clean_env(),
    )
    got = json.loads(proc.stdout)
    assert Path(got["file"]).resolve().is_relative_to(venv.resolve()), got["file"]
    assert got["present"] == [], f"importable in the serving venv: {got['present']}"
    assert got["modules"] == []
    assert got["backend"] == built.model.backend

    expected = built.model.predict_proba(sessions)
    assert np.array_equal(np.asarray(got["batch"]), expected)  # bit for bit (JSON floats: repr)
    assert got["single"] == [built.model.predict_proba(s) for s in sessions]
    assert got["recs"] == [
        [
            [r.product_id, r.probability, r.reason]
            for r in built.model.recommend(s, k=3, threshold=0.3)
        ]
        for s in sessions[:10]
    ]
    assert any(got["recs"])
