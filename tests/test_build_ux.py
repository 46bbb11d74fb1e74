"""What a user sees while and after building: one-line compile errors, progress with
elapsed time, artifacts that follow the umask, and extras that install what the
documented commands need."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reco_fast
from reco_fast import CompileError
from reco_fast.build import pipeline, train
from reco_fast.compiler import codegen as _codegen
from reco_fast.compiler import driver as compile_mod
from tests.helpers import REPO, run_python


@pytest.fixture(scope="module")
def tiny() -> Any:
    """A tiny fitted GradientBoostingClassifier: a compile takes a few seconds."""
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    return GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(
        X, (X[:, 0] > 0).astype(int)
    )


def break_model_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next build's generated model.c fail to compile (a syntax error)."""
    real = compile_mod.generate_c

    def generate_c(*args: Any, **kwargs: Any) -> dict[str, str]:
        sources = real(*args, **kwargs)
        work = Path(args[2])
        broken = sources["model.c"] + "\nthis is not C at all\n"
        (work / "model.c").write_text(broken)
        return {**sources, "model.c": broken}

    monkeypatch.setattr(compile_mod, "generate_c", generate_c)


# ---- 1. a failed C compile is one line --------------------------------------------------------


def test_a_failed_compile_is_a_one_line_compile_error(tiny, tmp_path, monkeypatch):
    break_model_c(monkeypatch)
    out = tmp_path / "art"
    with pytest.raises(CompileError) as info:
        reco_fast.compile_model(tiny, out)
    message = str(info.value)
    assert "\n" not in message and len(message) <= 400, message
    assert message.startswith("the C compiler failed on model.c: ")
    assert "error" in message and "model.c" in message.split(": ", 1)[1]  # the compiler's line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


# ---- 7. progress and elapsed time --------------------------------------------------------------


def test_training_logs_progress_and_trains_the_same_model(caplog):
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 4))
    y = (X[:, 1] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    params = {"n_estimators": 6}
    with caplog.at_level(logging.INFO, logger="reco_fast.build.train"):
        model, seconds = train.fit(X, y, params, progress_every_s=0.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "reco_fast.build.train"]
    assert [line.split(",")[0] for line in lines] == [
        f"training: {i} of 6 trees" for i in range(1, 6)
    ]
    assert all("s elapsed" in line for line in lines)
    plain = GradientBoostingClassifier(**{**train.SEED_PARAMS, **params}).fit(X, y)
    assert np.array_equal(model.predict_proba(X), plain.predict_proba(X))  # monitor is passive
    assert seconds > 0


# Runs the real compiler, then waits until 1.6 s (harness), 3.2 s (model.c) or 4.8 s
# (flat.c) after it started: each compile ends 1.6 s after the one before it.
STAGGERED_CC = """
import subprocess, sys, time
start = time.monotonic()
status = subprocess.call(sys.argv[1:])
args = " ".join(sys.argv)
delay = 0 if "-shared" in args else 4.8 if "flat.c" in args else 3.2 if "model.c" in args else 1.6
time.sleep(max(0.0, start + delay - time.monotonic()))
sys.exit(status)
"""


def test_the_c_compile_logs_its_start_progress_and_end(tiny, tmp_path, monkeypatch, caplog):
    # Progress every 2 s over a compile of > 4.8 s: at least two progress lines, although
    # no single compiler finishes more than 2 s after the one before it.
    real_cc = _codegen._compiler()
    staggered = [sys.executable, "-c", STAGGERED_CC, *real_cc]
    monkeypatch.setattr(_codegen, "_compiler", lambda: staggered)
    monkeypatch.setattr(_codegen, "COMPILE_PROGRESS_EVERY_S", 2.0)
    with caplog.at_level(logging.INFO, logger="reco_fast.compiler.codegen"):
        reco_fast.compile_model(tiny, tmp_path / "art")
    lines = [r.getMessage() for r in caplog.records if r.name == "reco_fast.compiler.codegen"]
    assert lines[0].startswith("compiling 3 C files ("), lines
    progress = [ln for ln in lines if ln.startswith("compiling: ")]
    assert len(progress) >= 2 and all("s elapsed" in ln for ln in progress), lines
    assert lines[-1].startswith("compiled 3 C files in "), lines


# ---- 8. artifacts follow the umask -------------------------------------------------------------


def _compile_in_child(tiny_dir: Path, umask: int) -> subprocess.CompletedProcess[str]:
    code = (
        "import os, sys\n"
        "import numpy as np\n"
        "from sklearn.ensemble import GradientBoostingClassifier\n"
        "import reco_fast\n"
        "X = np.random.default_rng(1).normal(size=(300, 3))\n"
        "est = GradientBoostingClassifier(n_estimators=3, max_depth=2).fit(X, X[:, 0] > 0)\n"
        "reco_fast.compile_model(est, sys.argv[1])\n"
        "print(oct(os.umask(0o777)))\n"  # the child's umask is unchanged by the build
    )
    return run_python(
        code,
        str(tiny_dir),
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
    )


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_artifact_modes_follow_the_umask(tmp_path, umask):
    out = tmp_path / "art"
    proc = _compile_in_child(out, umask)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == oct(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for path in out.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.name.endswith(".so"):
            assert mode == 0o755 & ~umask, (path.name, oct(mode))
        else:
            assert mode == 0o666 & ~umask, (path.name, oct(mode))


def test_current_umask_reads_without_changing_it():
    code = (
        "import os\nfrom reco_fast.artifact import current_umask\n"
        "a = current_umask(); b = os.umask(0); print(oct(a), oct(b))"
    )
    proc = run_python(
        code,
        timeout=60,
        preexec_fn=lambda: os.umask(0o027),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0o27", "0o27"]


# ---- 5. the report's plots come with the build extra --------------------------------------------


def _extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_build_extra_installs_matplotlib_for_the_reports_plots():
    extras = _extras()
    assert "matplotlib" in _names(extras["build"])
    assert "matplotlib" in _names(extras["report"])  # the old extra still works


def test_a_build_without_matplotlib_warns(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with caplog.at_level(logging.WARNING, logger="reco_fast.build.pipeline"):
        assert pipeline.warn_if_no_plots() is True
    assert "report.html will have its tables but no plots" in caplog.text
    monkeypatch.delitem(sys.modules, "matplotlib")
    pytest.importorskip("matplotlib")
    caplog.clear()
    assert pipeline.warn_if_no_plots() is False
    assert caplog.text == ""
