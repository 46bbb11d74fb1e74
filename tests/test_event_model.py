"""Models trained on raw event logs (issue "Real shops' logs"): build, evaluate, serve.

The REES46 sample is read from ``../shared/data/rees46/`` (never copied into the
repository); without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import reco_fast
from reco_fast.build import pipeline
from reco_fast.tools import cli
from tests.helpers import REES46, REES46_COLUMNS, REPO, require, run_python

BASELINES = (
    "popular",
    "same_category_popular",
    "same_category_closest_price",
    "covisitation",
    "session_knn",
)


@pytest.fixture(scope="module")
def rees46(tmp_path_factory: pytest.TempPathFactory) -> pipeline.EventBuildResult:
    if not REES46.is_file():
        require("the REES46 sample", str(REES46))
    out = tmp_path_factory.mktemp("rees46") / "model"
    return pipeline.build_events(REES46, REES46_COLUMNS, out)


def test_the_model_beats_every_baseline_on_the_held_out_replay(rees46):
    methods = rees46.evaluation["methods"]
    assert set(BASELINES) <= set(methods)
    model = methods["model"]
    for name in BASELINES:
        assert model["hit_rate"] > methods[name]["hit_rate"], name
        assert model["mrr"] > methods[name]["mrr"], name


def test_evaluation_json_is_written_with_the_split_and_every_method(rees46):
    ev = json.loads((rees46.model.path / "evaluation.json").read_text())
    assert ev["k"] == 10
    assert ev["split"]["test"]["sessions"] > 0 and ev["split"]["train"]["sessions"] > 0
    for name in ("model", *BASELINES):
        assert set(ev["methods"][name]) >= {"hit_rate", "mrr", "ndcg", "coverage"}
    assert ev["training"]["labels"].startswith("next different product")
    assert "| model |" in (rees46.model.path / "report.md").read_text()


def test_the_schema_follows_the_data(rees46):
    """REES46 has categories and prices but no device, traffic source or scroll depth."""
    names = rees46.model.feature_names
    assert "same_category" in names and "price_ratio" in names
    assert not any(n in names for n in ("device_enc", "traffic_enc", "scroll_depth"))


def test_recommend_and_predict_proba_agree(rees46):
    model = reco_fast.load(rees46.model.path)
    session = {"products": ["1004767", "1004856"], "cart": []}
    recs = model.recommend(session, k=5)
    assert 0 < len(recs) <= 5
    assert "1004856" not in [r.product_id for r in recs]  # the current product
    for rec in recs:
        p = model.predict_proba({**session, "recommended_product_id": rec.product_id})
        assert p == pytest.approx(rec.probability, abs=1e-12)
    batch = model.predict_proba([{**session, "recommended_product_id": r.product_id} for r in recs])
    np.testing.assert_allclose(batch, [r.probability for r in recs], atol=1e-12)


def test_unknown_products_in_a_session_are_accepted(rees46):
    model = reco_fast.load(rees46.model.path)
    recs = model.recommend({"products": ["1004767", "no-such-product-added-today"]}, k=3)
    assert len(recs) == 3  # popular products still rank
    with pytest.raises(reco_fast.InputError, match="recommended_product_id"):
        model.predict_proba({"products": ["1004767"], "recommended_product_id": "nope"})
    with pytest.raises(reco_fast.InputError, match="'products'"):
        model.recommend({"products": []})


@pytest.fixture(scope="module")
def minimal_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of only session, product, time (epoch seconds), semicolon-delimited."""
    rng = np.random.default_rng(0)
    lines = ["sess;item;when"]
    for s in range(300):
        base = int(rng.integers(0, 60))
        for j in range(int(rng.integers(1, 6))):
            lines.append(
                f"s{s};P{(base + int(rng.integers(0, 5))) % 80};{1_700_000_000 + s * 50 + j * 10}"
            )
    path = tmp_path_factory.mktemp("minimal") / "log.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_log_of_only_session_product_time_builds_and_serves(minimal_log, tmp_path, capsys):
    out = tmp_path / "m"
    code = cli.main(
        [
            "build",
            "--events",
            str(minimal_log),
            "--columns",
            "session=sess,product=item,time=when",
            "--out",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    assert "HitRate@10" in capsys.readouterr().out
    model = reco_fast.load(out)
    assert not any("category" in n or "price" in n for n in model.feature_names)
    # served with numpy and cffi only
    code = (
        "import json, sys, reco_fast\n"
        f"m = reco_fast.load({str(out)!r})\n"
        "recs = m.recommend({'products': ['P3', 'P4']}, k=3)\n"
        "assert len(recs) == 3, recs\n"
        "heavy = {'sklearn', 'pandas', 'treelite', 'tl2cgen', 'scipy'} & set(sys.modules)\n"
        "print(json.dumps(sorted(heavy)))\n"
    )
    done = run_python(
        code,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == []


def test_events_options_are_checked(minimal_log, tmp_path, capsys):
    assert cli.main(["build", "--events", str(minimal_log), "--out", str(tmp_path / "x")]) == 2
    assert "--columns" in capsys.readouterr().err
    assert cli.main(["build", "--columns", "time=a,product=b", "--out", str(tmp_path / "x")]) == 2


def test_the_readme_table_is_this_build_s_evaluation(rees46):
    """The README's REES46 table is what the documented command measures, not typed by hand."""
    from reco_fast.build.evaluate import format_table, retrieval_table

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert format_table(rees46.evaluation).strip() in readme
    assert retrieval_table(rees46.evaluation).strip() in readme


def test_retrieval_recall_grows_with_its_size(rees46):
    """recall@N of the first stage, measured at several N on the held-out replay."""
    curve = rees46.evaluation["retrieval"]["by_size"]
    sizes = [c["mean_candidates"] for c in curve]
    recalls = [c["recall"] for c in curve]
    assert sizes == sorted(sizes) and recalls == sorted(recalls)
    assert all(c["predictions"] == curve[0]["predictions"] > 0 for c in curve)
    assert rees46.evaluation["retrieval"]["recall"] in recalls
