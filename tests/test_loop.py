"""The closed loop: the simulated shop, retraining with the position fixed at serving, and the
loop's command-line subcommands (reco_fast/build/simulate.py, retrain.py, loop_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reco_fast
from reco_fast import InputError
from reco_fast.build.retrain import fix_feature, retrain
from reco_fast.build.simulate import ShopperModel
from reco_fast.serve.ab import ABRouter
from reco_fast.serve.impressions import ImpressionLog, LoggedImpression, artifact_id, read_log
from reco_fast.tools.loop_cli import main
from tests.helpers import Built, session_from_row


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`reco-fast simulate --days 2 --out DIR` (the defaults: 10,000 requests a day)."""
    out = tmp_path_factory.mktemp("simulation") / "run"
    assert main(["simulate", "--days", "2", "--out", str(out)]) == 0
    return out


def test_simulation_closes_the_loop(simulation: Path):
    """The issue's "done when": on day 1 the retrained model's CTR is above the initial one's,
    and the off-policy interval from day 0's log covers the retrained model's measured CTR."""
    result = json.loads((simulation / "simulation.json").read_text())
    days = result["days"]
    assert [d["day"] for d in days] == [0, 1]
    assert list(days[0]["variants"]) == ["initial"]
    assert sorted(days[1]["variants"]) == ["initial", "retrained"]
    for d in days:
        for v in d["variants"].values():
            assert v["impressions"] == 3 * v["requests"] and v["coverage"] == 1.0
            assert v["ctr"] == v["clicks"] / v["impressions"]
            assert v["ctr_ci"][0] <= v["ctr"] <= v["ctr_ci"][1]
    assert sum(v["requests"] for v in days[1]["variants"].values()) == 10_000
    initial, retrained = days[1]["variants"]["initial"], days[1]["variants"]["retrained"]
    assert retrained["ctr"] > initial["ctr"]
    assert retrained["expected_ctr"] > initial["expected_ctr"]  # not the coin flips' luck
    ope = result["off_policy"]
    assert ope["ci"][0] <= ope["truth"] <= ope["ci"][1] and ope["covers_truth"]
    assert ope["ci"][0] <= ope["truth_on_logged_sessions"] <= ope["ci"][1]
    assert ope["unsupported_slots"] == 0 and ope["matched_slots"] > 500
    assert result["log"]["unmatched"] == 0 and result["log"]["torn"] == 0
    training = result["models"]["retrained_training"]
    assert training["position_feature"] == {
        "name": "position",
        "fixed_at_serving": 0,
        "importance": pytest.approx(training["position_feature"]["importance"]),
    }
    assert training["position_feature"]["importance"] > 0  # position bias was learned


def test_the_readme_table_is_this_simulation(simulation: Path):
    """The README's simulate table is what the documented command (`reco-fast simulate --days 2
    --out DIR`, the fixture's) prints, not typed by hand."""
    from reco_fast.build.simulate import format_simulation
    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "reco-fast simulate --days 2 --out runs/simulation\n" in readme
    result = json.loads((simulation / "simulation.json").read_text())
    assert format_simulation(result).strip() in readme


def test_the_log_of_the_simulation(simulation: Path):
    read = read_log(simulation / "impressions")
    imps = [r for r in read.records if r["type"] == "impression"]
    clicks = [r for r in read.records if r["type"] == "click"]
    assert len(imps) == 20_000 and read.torn == 0
    assert all(c["request_id"] is not None for c in clicks)  # every click joined
    day0 = [r for r in imps if r["session_id"].startswith("d0-")]
    assert {r["policy"]["name"] for r in day0} == {"softmax"}
    assert {r["policy"]["name"] for r in imps if r["session_id"].startswith("d1-")} == {"greedy"}
    ids = {r["variant"]: r["model_id"] for r in imps}
    assert ids["retrained"] == artifact_id(reco_fast.load(simulation / "models" / "retrained"))


def test_cli_ab_report_and_evaluate(simulation: Path, capsys):
    assert main(["ab-report", str(simulation / "impressions"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["variants"]) == ["initial", "retrained"]
    assert (
        report["variants"]["retrained"]["requests"] + report["variants"]["initial"]["requests"]
        == 20_000
    )
    assert main(["ab-report", str(simulation / "impressions")]) == 0
    assert "| retrained |" in capsys.readouterr().out
    models = simulation / "models"
    args = ["evaluate", str(models / "retrained"), "--impressions", str(simulation / "impressions")]
    # on its own (greedy) A/B traffic, the re-ranker's estimate is its logged CTR, exactly
    rerank = ["--variant", "retrained", "--rerank-with", str(models / "initial")]
    assert main([*args, *rerank, "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["ips"] == own["snips"] == own["logged_ctr"] == report["variants"]["retrained"]["ctr"]
    assert own["unsupported_slots"] == 0
    # on the whole catalog it shows products that traffic never showed: flagged
    assert main([*args, "--variant", "retrained"]) == 0
    out, err = capsys.readouterr()
    assert "IPS" in out and "SNIPS" in out
    assert "could not have shown there; the estimates are biased low" in err
    assert main([*args, "--variant", "nobody"]) == 2
    assert "no impressions to evaluate on for variant 'nobody'" in capsys.readouterr().err
    assert main(["evaluate", str(models / "retrained"), "--impressions", "/nonexistent"]) == 2


def test_swap_one_variant_to_the_retrained_artifact(built: Built, simulation: Path, tmp_path):
    log = ImpressionLog(tmp_path)
    router = ABRouter({"a": built.path, "b": built.path}, log=log)
    rows = [session_from_row(r) for _, r in built.log.head(40).iterrows()]
    for i, s in enumerate(rows):
        s["session_id"] = f"x{i}"
        router.recommend(s, 3, 0.0)
    router.swap("a", simulation / "models" / "retrained")
    for s in rows:
        router.recommend(s, 3, 0.0)
    log.close()
    imps = [r for r in read_log(tmp_path).records if r["type"] == "impression"]
    new = artifact_id(reco_fast.load(simulation / "models" / "retrained"))
    old = artifact_id(built.model)
    assert {r["model_id"] for r in imps[:40]} == {old}
    assert {(r["variant"], r["model_id"]) for r in imps[40:]} <= {("a", new), ("b", old)}
    assert any(r["variant"] == "a" for r in imps[40:])


def test_shopper_model_is_the_generators_click_model():
    """On the generator's own page views and recommendations, the simulated shoppers' click
    probabilities reproduce the generated clicks: the same overall and per-device rates, and
    they rank the clicked rows far above chance."""
    from sklearn.metrics import roc_auc_score

    shop = ShopperModel.generate(15_000)
    p = shop.own_click_probability()
    clicked = shop.frame["recommendation_clicked"].to_numpy()
    assert abs(p.mean() - clicked.mean()) < 0.01
    for device in ("Desktop", "Mobile", "Tablet"):
        m = (shop.frame["device_type"] == device).to_numpy()
        assert abs(p[m].mean() - clicked[m].mean()) < 0.02
    assert roc_auc_score(clicked, p) > 0.8
    assert shop.examine([0, 1, 2]) == pytest.approx([1.0, 2**-0.7, 3**-0.7])


@given(
    seed=st.integers(0, 10_000),
    depth=st.integers(1, 5),
    feature=st.integers(0, 3),
    value=st.sampled_from([0.0, 1.0, 2.0, 0.37, -5.0]),
)
def test_fix_feature_is_exact(seed, depth, feature, value):
    """Partial evaluation: the pruned forest equals the full one with the feature at the value,
    row for row and bit for bit, and no longer reads the feature."""
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(seed)
    X = rng.random((400, 4))
    X[:, 3] = rng.integers(0, 3, 400)
    y = (X[:, 0] + 0.5 * X[:, 1] - 0.3 * X[:, 3] + rng.normal(0, 0.3, 400) > 0.5).astype(int)
    full = GradientBoostingClassifier(
        n_estimators=15, max_depth=depth, subsample=0.8, random_state=seed
    ).fit(X, y)
    pruned = fix_feature(full, feature, value)
    fixed = X.copy()
    fixed[:, feature] = value
    assert np.array_equal(
        pruned.predict_proba(np.delete(X, feature, axis=1)), full.predict_proba(fixed)
    )
    assert pruned.n_features_in_ == 3
    for tree in pruned.estimators_[:, 0]:
        assert tree.tree_.n_features == 3 and tree.tree_.feature.max() < 3


def test_retrain_refuses_what_it_cannot_learn(built: Built, seed_built: Built, tmp_path):
    session = session_from_row(built.log.iloc[0])
    session.pop("recommended_product_id")
    ids = built.model.builder.catalog.product_ids.tolist()[:2]
    record = {
        "request_id": "r",
        "session_id": "s",
        "ts": 0.0,
        "k": 2,
        "session": session,
        "shown": [{"product_id": p, "position": i, "propensity": 1.0} for i, p in enumerate(ids)],
    }
    with pytest.raises(InputError, match="all not clicked"):
        retrain([LoggedImpression(record)], built.model, tmp_path / "a")
    with pytest.raises(InputError, match="no shown products"):
        retrain([LoggedImpression(dict(record, shown=[]))], built.model, tmp_path / "b")
    with pytest.raises(ValueError, match="ranking model"):
        retrain([LoggedImpression(record, {ids[0]})], seed_built.model, tmp_path / "c")
    bad = dict(record, session=dict(session, scroll_depth=3.0))
    with pytest.raises(InputError, match=r"scroll_depth.*impression 'r'"):
        retrain([LoggedImpression(bad, {ids[0]})], built.model, tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "abcd")
