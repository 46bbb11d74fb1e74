"""``reco-fast build --impressions DIR`` (and ``build_model.py --impressions``): a model trained
on an impression log, with the shown position as a feature fixed at serving. One real build
per module, on a small log of the simulated shop's shoppers served by the session's model."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reco_fast
from reco_fast.build import retrain as retrain_module
from reco_fast.build.simulate import ShopperModel
from reco_fast.serve.impressions import (
    ImpressionLog,
    JsonlSink,
    LoggedRecommender,
    artifact_id,
    load_joined,
)
from reco_fast.serve.policies import SoftmaxSampling
from reco_fast.tools import cli, loop_cli
from tests.helpers import Built

REQUESTS = 600
K = 3
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def shop_log(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """REQUESTS page views served by the default model with softmax exploration; the
    simulated shoppers click (position bias included), every click joined to its impression."""
    shop = ShopperModel.generate(REQUESTS)
    shop.check_catalog(built.model)
    directory = tmp_path_factory.mktemp("shop") / "impressions"
    rng = np.random.default_rng(0)
    with ImpressionLog(JsonlSink(directory)) as log:
        rec = LoggedRecommender(built.model, log, SoftmaxSampling(1.0, 10, seed=0))
        for row in range(REQUESTS):
            sid = f"s{row:04d}"
            shown = rec.recommend(shop.session(row, sid), K, 0.0, ts=T0 + row)
            ids = [r.product_id for r in shown]
            for pid, clicked in zip(
                ids, rng.random(K) < shop.click_probability(row, ids), strict=True
            ):
                if clicked:
                    log.click(sid, pid, ts=T0 + row + 1)
    assert log.stats()["unmatched_clicks"] == 0 and log.stats()["dropped"] == 0
    return directory


def _run(fn: Any, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fn(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(built: Built, shop_log: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("from_impressions") / "artifact"
    argv = ["build", "--impressions", str(shop_log), "--base", str(built.path), "--out", str(out)]
    code, stdout, stderr = _run(cli.main, argv)
    assert code == 0, stderr
    return out, stdout


def test_build_trains_on_shown_and_clicked_against_shown_and_not_clicked(
    built: Built, shop_log: Path, trained
):
    out, stdout = trained
    model = reco_fast.load(out)
    imps, counts = load_joined(shop_log)
    shown = sum(len(i.shown) for i in imps)
    clicked = sum(len(i.clicked & {s["product_id"] for s in i.shown}) for i in imps)
    assert len(imps) == REQUESTS and shown == K * REQUESTS and 0 < clicked < shown
    training = model.metadata["training"]
    assert training["source"] == "impressions"
    assert training["impressions"] == str(shop_log)
    assert training["rows"] == shown and training["positives"] == clicked
    assert training["requests"] == REQUESTS and training["base_rows"] == 0
    assert training["position_feature"]["name"] == "position"
    assert training["position_feature"]["fixed_at_serving"] == 0
    assert training["position_feature"]["importance"] > 0  # the shoppers' position bias
    base_id = artifact_id(built.model)
    assert training["base_model_id"] == base_id
    assert training["served_by_base"] == REQUESTS
    assert training["log_model_ids"] == {base_id: REQUESTS}
    assert model.metadata["data"]["source"] == "impressions"
    # served with the base model's features, vocabulary and catalog
    assert list(model.feature_names) == list(built.model.feature_names)
    assert model.builder.catalog.product_ids.tolist() == (
        built.model.builder.catalog.product_ids.tolist()
    )
    assert model.threshold == built.model.threshold
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["log"]["clicks"] == counts["clicks"]
    md = (out / "report.md").read_text()
    assert md.startswith("# Model trained from impressions")
    assert f"{shown:,} shown products from {REQUESTS:,} logged requests" in md
    assert "fixed at 0" in md
    assert md in stdout and f"artifact: {out}" in stdout
    assert "position fixed at 0" in stdout


def test_the_position_is_fixed_at_the_first_slot(trained, shop_log: Path):
    """The served model scores every logged row as if shown first: about the click rate of the
    first slot where it was shown there, well above the clicks seen lower down elsewhere."""
    from reco_fast.build.retrain import training_rows

    model = reco_fast.load(trained[0])
    imps, _ = load_joined(shop_log)
    rows = training_rows(imps, model.builder)
    p = model.predict_proba_features(rows.X)
    top, lower = rows.position == 0, rows.position > 0
    assert abs(p[top].mean() - rows.y[top].mean()) < 0.05
    assert p[lower].mean() > rows.y[lower].mean() + 0.05


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch, built: Built) -> list[dict[str, Any]]:
    """Replace the training (not the wiring) with a recorder returning the base model."""
    calls: list[dict[str, Any]] = []

    def fake(impressions, base, out, **kwargs):
        calls.append({"impressions": impressions, "base": base, "out": out, **kwargs})
        return built.model

    monkeypatch.setattr(retrain_module, "retrain", fake)
    return calls


def test_build_model_py_build_and_retrain_run_one_implementation(
    spy, built: Built, shop_log: Path, small_csv: Path, tmp_path
):
    log_dir, base, out = str(shop_log), str(built.path), str(tmp_path / "new")
    assert (
        _run(cli.build_main, ["--impressions", log_dir, "--base", base, "--out", out, "-q"])[0] == 0
    )
    assert _run(loop_cli.main, ["retrain", base, "--impressions", log_dir, "--out", out])[0] == 0
    assert (
        _run(
            cli.main,
            [
                "build",
                "--impressions",
                log_dir,
                "--base",
                base,
                "--out",
                out,
                "--threshold",
                "0.5",
                "-q",
            ],
        )[0]
        == 0
    )
    assert [(c["impressions"], str(c["base"].path), c["out"]) for c in spy] == [
        (log_dir, base, out)
    ] * 3
    assert [c["threshold"] for c in spy] == [None, None, 0.5]  # default: the base model's
    assert all(c["base_log"] is None for c in spy)
    # --data adds the base model's page views (position 0), as retrain's --base-data
    spy.clear()
    data = ["--data", str(small_csv), "--catalog", str(built.catalog_path)]
    argv = ["build", "--impressions", log_dir, "--base", base, "--out", out, "-q", *data]
    assert _run(cli.main, argv)[0] == 0
    assert len(spy[0]["base_log"]) == small_csv.read_text().count("\n") - 1


def test_base_defaults_to_the_artifact_at_out(spy, built: Built, shop_log: Path, tmp_path):
    """Without --base, the model at --out (the one that served the log) is rebuilt in place."""
    out = tmp_path / "serving"
    shutil.copytree(built.path, out)
    assert _run(cli.main, ["build", "--impressions", str(shop_log), "--out", str(out)])[0] == 0
    assert Path(spy[0]["base"].path) == out and spy[0]["out"] == str(out)


@pytest.mark.parametrize(
    "extra, mentions",
    [
        (["--out", "{tmp}/none"], "--base ARTIFACT"),
        (["--base", "{base}", "--events", "x.csv"], "--events and --impressions"),
        (["--base", "{base}", "--features", "seed"], "--features does not go with --impressions"),
        (["--base", "{base}", "--catalog", "{catalog}"], "give the page-view CSV too"),
        (["--base", "{base}", "--engine", "spark"], "--engine spark does not go with"),
        (["--base", "{base}", "--objective", "lambdarank"], "--objective lambdarank does not"),
    ],
)
def test_refusals(spy, built: Built, shop_log: Path, tmp_path, extra, mentions):
    fill = {"tmp": tmp_path, "base": built.path, "catalog": built.catalog_path}
    argv = ["build", "--impressions", str(shop_log), "--out", str(tmp_path / "o")]
    code, _, err = _run(cli.main, argv + [a.format(**fill) for a in extra])
    assert code == 2 and mentions in err
    assert spy == [] and not (tmp_path / "o").exists()


def test_base_without_impressions_and_a_missing_log_are_refused(built: Built, tmp_path):
    argv = ["build", "--base", str(built.path), "--out", str(tmp_path / "o")]
    code, _, err = _run(cli.main, argv)
    assert code == 2 and "--base goes with --impressions" in err
    argv = ["build", "--impressions", str(tmp_path / "nolog"), "--base", str(built.path)]
    code, _, err = _run(cli.main, [*argv, "--out", str(tmp_path / "o")])
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "o").exists()
