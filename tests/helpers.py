"""Helpers shared by the tests: importable as ``tests.helpers`` (fixtures live in conftest).

No fixture here; nothing runs at import but definitions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import reco_fast
from reco_fast.build import pipeline
from reco_fast.features.schema import FLOAT32_MAX, LABEL

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
"""``../shared/data/`` beside the checkout: read from there, never copied (CI has it)."""
REES46 = SHARED_DATA / "rees46" / "events-2019-10-01.csv"
REES46_COLUMNS = (
    "time=event_time,session=user_session,user=user_id,type=event_type,"
    "product=product_id,category=category_id,price=price"
)
SMALL_ROWS = 3000


def require(what: str, reason: str, *, module: bool = False) -> None:
    """Skip a test (with ``module``, the whole test file, at import) whose service or data
    is missing, but fail under CI (``CI`` set), where ``.ci/run`` provides everything: a
    missing service must not turn into a green run."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI: {reason}", pytrace=False)
    pytest.skip(f"no {what}: {reason}", allow_module_level=module)


SPARK_MARKS = [
    pytest.mark.spark,
    # PySpark 4.x warns that it "does not yet fully support pandas >= 3.0.0".
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    # ... and calls astype(copy=False), which pandas 3 deprecates
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]
"""The ``pytestmark`` of a test file that runs local Spark."""


def java_runtime() -> str | None:
    """The ``java`` PySpark would start (``JAVA_HOME``'s, else the one on PATH), or None."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def subprocess_env() -> dict[str, str]:
    """Environment for a child Python that imports reco_fast from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.pop("PYTHONSTARTUP", None)
    return env


def run_python(
    code: str, *args: Any, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``python -c code args...`` in a child that imports reco_fast from this checkout
    (:func:`subprocess_env`), its output captured as text; ``kwargs`` go to
    :func:`subprocess.run` (``cwd``, ``preexec_fn``)."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
        **kwargs,
    )


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


def session_from_row(row: pd.Series) -> dict[str, Any]:
    """A session dict (every log column but the label) in plain Python types."""
    return {k: native(v) for k, v in row.items() if k != LABEL}


def write_meta(root: Path, meta: dict[str, Any], *, reseal: bool = False) -> None:
    """Write an artifact's metadata.json; ``reseal`` recomputes its digest, as a deliberate
    writer would, so the check exercised is the one behind the digest."""
    from reco_fast.artifact import METADATA_FILE, metadata_digest

    if reseal:
        meta["metadata_sha256"] = metadata_digest(meta)
    (root / METADATA_FILE).write_text(json.dumps(meta, indent=2))


def library_reference(estimator: Any, X: Any) -> tuple[Any, Any]:
    """(margin, output), float64 of shape (n,), from the training library's own predict on
    ``X``, written out per library here (independently of the compiler's front ends)."""
    name = type(estimator).__module__.split(".")[0]
    proba = hasattr(estimator, "predict_proba")
    if name == "sklearn":
        margin = estimator.decision_function(X) if proba else estimator.predict(X)
    elif name == "xgboost":
        margin = estimator.predict(X, output_margin=True)
    else:
        margin = estimator.predict(X, raw_score=True)
    output = estimator.predict_proba(X)[:, 1] if proba else estimator.predict(X)
    return np.asarray(margin, dtype=np.float64), np.asarray(output, dtype=np.float64)


def max_tree_depth(tl: dict[str, Any]) -> int:
    """The deepest tree's depth (splits on the longest path) in treelite's JSON dump."""

    def depth(nodes: dict[int, Any], i: int) -> int:
        n = nodes[i]
        if "leaf_value" in n:
            return 0
        return 1 + max(depth(nodes, n["left_child"]), depth(nodes, n["right_child"]))

    return max(depth({n["node_id"]: n for n in t["nodes"]}, 0) for t in tl["trees"])


def spark_worker_env(mp: pytest.MonkeyPatch) -> None:
    """Local Spark's Python workers: this interpreter, importing reco_fast from this
    checkout, on loopback."""
    mp.setenv("PYSPARK_PYTHON", sys.executable)
    mp.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
    mp.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    path = os.environ.get("PYTHONPATH")
    mp.setenv("PYTHONPATH", str(REPO) + (os.pathsep + path if path else ""))
