"""The README quick start, run the way a user runs it: a fresh interpreter in another
directory that imports reco_fast, loads the artifact and scores a page view, without
ever importing the build-time stack."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.helpers import Built, run_python

HEAVY = ("sklearn", "treelite", "tl2cgen", "pandas", "scipy")

SCRIPT = """
import json, sys

def heavy():
    return sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))

HEAVY = json.loads(sys.argv[3])
import reco_fast
after_import = heavy()

model = reco_fast.load(sys.argv[1])
session = json.loads(sys.argv[2])
p = model.predict_proba(session)
batch = model.predict_proba([session, session])
columns = model.predict_proba({k: [v] for k, v in session.items()})
features = model.predict_proba_features(model.features(session))

print(json.dumps({
    "p": p,
    "type": type(p).__name__,
    "batch": batch.tolist(),
    "columns": columns.tolist(),
    "features": features.tolist(),
    "after_import": after_import,
    "after_scoring": heavy(),
    "module_file": reco_fast.__file__,
}))
"""


def _run(built: Built, session: dict, cwd: Path) -> dict:
    proc = run_python(
        SCRIPT,
        str(built.path),
        json.dumps(session),
        json.dumps(HEAVY),
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_quickstart_scores_without_build_dependencies(
    built: Built, sample_session, tmp_path: Path
) -> None:
    out = _run(built, sample_session, tmp_path)
    assert out["type"] == "float"
    p = out["p"]
    assert 0.0 <= p <= 1.0
    assert out["batch"] == [p, p]
    assert out["columns"] == [p]
    assert out["features"] == [p]
    assert out["after_import"] == []
    assert out["after_scoring"] == []
    assert Path(out["module_file"]).resolve().parent == (Path(__file__).parents[1] / "reco_fast")
    # the number is scikit-learn's (checked here, in the process that may import it)
    X = built.model.features(sample_session)
    assert abs(p - built.estimator.predict_proba(X)[0, 1]) <= 1e-12
    assert p == built.model.predict_proba(sample_session)
    assert list(tmp_path.iterdir()) == []  # scoring writes nothing to the working directory


def test_quickstart_on_several_sessions(built: Built, tmp_path: Path) -> None:
    """Different page views give the seed model's different answers in the fresh process too."""
    rows = built.log.iloc[[0, 1, 2, 3, 4]]
    expected = built.estimator.predict_proba(built.model.features(rows))[:, 1]
    assert np.ptp(expected) > 0.05
    for (_, row), want in zip(rows.iterrows(), expected, strict=True):
        session = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        out = _run(built, session, tmp_path)
        assert abs(out["p"] - want) <= 1e-12


def test_can_recommend_says_which_models_rank(built, seed_built):
    assert built.model.can_recommend
    assert not seed_built.model.can_recommend


LAZY_SCRIPT = """
import json, sys

HEAVY = json.loads(sys.argv[1])
import reco_fast
before = sorted(m for m in sys.modules if m.startswith("reco_fast.serve."))
resolved = {name: type(getattr(reco_fast, name)).__name__ for name in reco_fast.__all__}
from reco_fast.serve import ab, impressions, policies, rerank
print(json.dumps({
    "before": before,
    "resolved": resolved,
    "same": [
        reco_fast.ImpressionLog is impressions.ImpressionLog,
        reco_fast.LoggedRecommender is impressions.LoggedRecommender,
        reco_fast.ABRouter is ab.ABRouter,
        reco_fast.SoftmaxSampling is policies.SoftmaxSampling,
        reco_fast.Reranker is rerank.Reranker,
    ],
    "in_dir": "ImpressionLog" in dir(reco_fast),
    "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY)),
}))
try:
    reco_fast.NoSuchName
except AttributeError as exc:
    print(exc)
"""


def test_the_loops_public_names_are_exported_lazily(tmp_path: Path) -> None:
    """reco_fast.ImpressionLog, ABRouter, the policies...: in __all__, importable from the package,
    loaded at first use (import reco_fast does not load them) and without build dependencies."""
    proc = run_python(
        LAZY_SCRIPT,
        json.dumps(HEAVY),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[0])
    assert "reco_fast.serve.impressions" not in out["before"]
    assert "reco_fast.serve.ab" not in out["before"]
    for name in ("ImpressionLog", "LoggedRecommender", "ABRouter", "EpsilonGreedy", "Reranker"):
        assert out["resolved"][name] == "type"
    assert all(out["same"]) and out["in_dir"]
    assert out["heavy"] == []
    assert lines[1] == "module 'reco_fast' has no attribute 'NoSuchName'"
