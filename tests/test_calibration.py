"""Calibrated probabilities and thresholds chosen for a target (issue 12, item 6).

A ``--calibration sigmoid`` build fits scikit-learn's ``CalibratedClassifierCV``
(Platt's sigmoid) on the calibration half of the held-out split; every probability entry point must give that calibrator's own
``predict_proba`` to 1e-12 on held-out rows, while ``decision_function`` stays the
estimator's raw margin.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import reco_fast
from reco_fast.artifact import FORMAT_VERSION, METADATA_FILE, metadata_digest
from reco_fast.build import calibrate as calibrate_module
from reco_fast.build import pipeline
from reco_fast.build.calibrate import MIN_SHOWN, check_targets, choose_threshold
from reco_fast.build.data import DEFAULT_LOG_FILE
from reco_fast.serve.calibration import Calibration
from tests.helpers import REPO, session_from_row, subprocess_env

TOL = 1e-12


@pytest.fixture(scope="module")
def cal(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sigmoid-calibrated build (threshold 0.7), with what it was built from."""
    tmp = tmp_path_factory.mktemp("calibrated")
    captured: dict[str, Any] = {}
    real_split, real_fit = pipeline.split, pipeline.fit
    real_cal, real_halves = calibrate_module.fit_calibrator, calibrate_module.holdout_halves

    def spy_split(X, y, *a, **k):
        captured["split"] = real_split(X, y, *a, **k)
        return captured["split"]

    def spy_fit(X, y, *a, **k):
        captured["estimator"], seconds = real_fit(X, y, *a, **k)
        return captured["estimator"], seconds

    def spy_cal(*a, **k):
        captured["calibrator"], captured["map"] = real_cal(*a, **k)
        return captured["calibrator"], captured["map"]

    def spy_halves(*a, **k):
        captured["holdout"] = real_halves(*a, **k)
        return captured["holdout"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "split", spy_split)
        mp.setattr(pipeline, "fit", spy_fit)
        mp.setattr(calibrate_module, "fit_calibrator", spy_cal)
        mp.setattr(calibrate_module, "holdout_halves", spy_halves)
        mp.chdir(tmp)
        captured["result"] = pipeline.build(
            out=tmp / "artifact", data_dir=tmp / "data", calibration="sigmoid"
        )
    captured["path"] = tmp / "artifact"
    captured["model"] = reco_fast.load(tmp / "artifact")
    captured["log"] = pd.read_csv(tmp / "data" / DEFAULT_LOG_FILE)
    captured["data_dir"] = tmp / "data"
    return captured


def _eval_rows(cal: dict[str, Any]) -> tuple[np.ndarray, pd.DataFrame]:
    """Feature rows and log rows of the evaluation half (held out from training and calibration)."""
    split, ev = cal["split"], cal["holdout"].evaluation
    return split.X_test[ev], cal["log"].iloc[split.idx_test[ev]]


def _reference(cal: dict[str, Any], X: np.ndarray) -> np.ndarray:
    return cal["calibrator"].predict_proba(X)[:, 1]


def test_a_sigmoid_build_is_calibrated_and_recorded(cal: dict[str, Any]) -> None:
    meta = json.loads((cal["path"] / METADATA_FILE).read_text())
    assert meta["format_version"] == FORMAT_VERSION == 4
    c = meta["calibration"]
    assert c["method"] == "sigmoid"
    (fitted,) = cal["calibrator"].calibrated_classifiers_
    assert (c["a"], c["b"]) == (fitted.calibrators[0].a_, fitted.calibrators[0].b_)
    assert c["a"] < 0
    assert meta["threshold"] == 0.7 and meta["threshold_choice"]["rule"] == "default"
    model = cal["model"]
    assert model.calibration is not None and model.calibration.to_json() == c
    assert model.threshold == 0.7
    # the calibration and the training rows never overlap, nor the two held-out halves
    split, h = cal["split"], cal["holdout"]
    assert not set(h.calibration) & set(h.evaluation)
    assert len(h.calibration) + len(h.evaluation) == len(split.y_test)
    sessions = cal["log"]["session_id"].to_numpy()[split.idx_test]
    assert not set(sessions[h.calibration]) & set(sessions[h.evaluation])
    assert not set(split.idx_train) & set(split.idx_test)


def test_every_entry_point_gives_the_calibrators_probability(cal: dict[str, Any]) -> None:
    model = cal["model"]
    X, rows = _eval_rows(cal)
    X, rows = X[:400], rows.iloc[:400]
    expected = _reference(cal, X)
    raw = cal["estimator"].predict_proba(X)[:, 1]
    assert np.max(np.abs(expected - raw)) > 1e-3  # calibration changes the numbers

    dicts = [session_from_row(r) for _, r in rows.iterrows()]
    singles = np.array([model.predict_proba(d) for d in dicts])
    assert all(type(model.predict_proba(d)) is float for d in dicts[:5])
    batch = model.predict_proba(dicts)
    frame = model.predict_proba(rows)
    columns = model.predict_proba({k: rows[k].to_numpy() for k in rows.columns})
    scored = model.score_batch(dicts).probabilities
    features = model.predict_proba_features(X)
    features32 = model.predict_proba_features(X.astype(np.float32))
    for got in (singles, batch, frame, columns, scored, features):
        assert np.max(np.abs(got - expected)) <= TOL
    # one page view alone and in a batch: the same bits
    assert np.array_equal(singles, batch) and np.array_equal(batch, features)
    assert (
        np.max(np.abs(features32 - _reference(cal, X.astype(np.float32).astype(np.float64)))) <= TOL
    )
    # the raw margin stays scikit-learn's, uncalibrated
    margin = model.decision_function(X)
    assert np.max(np.abs(margin - cal["estimator"].decision_function(X))) <= TOL
    assert np.array_equal(features, model.calibration(margin))


def _brute_force(cal: dict[str, Any], session: dict[str, Any], k: int, t: float) -> list[Any]:
    """recommend by hand: every catalog product not viewed, scored by scikit-learn's
    calibrator on the features the builder computes, at or above t, ties by catalog order."""
    builder = cal["model"].builder
    ids = builder.catalog.product_ids.tolist()
    viewed = set(builder.viewed_ids(session))
    pool = [i for i, p in enumerate(ids) if p not in viewed]
    feats = builder.transform(
        {
            f: np.asarray(
                [{**session, "recommended_product_id": ids[i]}[f] for i in pool], dtype=object
            )
            for f in builder.required_fields
        }
    )
    p = _reference(cal, feats)
    order = sorted((j for j in range(len(pool)) if p[j] >= t), key=lambda j: (-p[j], pool[j]))
    return [(ids[pool[j]], float(p[j])) for j in order[:k]]


def _same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    """The same products in the same order, probabilities equal to 1e-12."""
    return [g[0] for g in got] == [w[0] for w in want] and all(
        abs(g[1] - w[1]) <= TOL for g, w in zip(got, want, strict=True)
    )


def test_recommend_ranks_by_the_calibrated_probability(cal: dict[str, Any]) -> None:
    model = cal["model"]
    _, rows = _eval_rows(cal)
    n_nonempty = 0
    for _, r in rows.iloc[:40].iterrows():
        session = session_from_row(r)
        for k, t in ((5, 0.0), (3, None)):
            got = model.recommend(session, k=k, threshold=t)
            want = _brute_force(cal, session, k, 0.7 if t is None else t)
            assert [g.product_id for g in got] == [w[0] for w in want]
            for g, w in zip(got, want, strict=True):
                assert abs(g.probability - w[1]) <= TOL
            assert all(g.probability >= (0.7 if t is None else t) for g in got)
            n_nonempty += bool(got) and t is None
    assert n_nonempty > 0  # the default threshold shows something for some page views


def test_isotonic_flat_steps_keep_the_catalog_order_for_ties(cal: dict[str, Any]) -> None:
    """A map with flat steps (isotonic) makes different margins tie: recommend then orders
    them by catalog position, and its probabilities are the map's."""
    model = cal["model"]
    _, rows = _eval_rows(cal)
    session = session_from_row(rows.iloc[0])
    flat = Calibration.from_json({"method": "isotonic", "x": [-1.0, 1.0], "y": [0.25, 0.75]})
    assert flat is not None
    tied = model._with_calibration(flat)
    builder = model.builder
    ids = builder.catalog.product_ids.tolist()
    viewed = set(builder.viewed_ids(session))
    pool = [i for i, p in enumerate(ids) if p not in viewed]
    feats = builder.transform(
        {
            f: np.asarray(
                [{**session, "recommended_product_id": ids[i]}[f] for i in pool], dtype=object
            )
            for f in builder.required_fields
        }
    )
    p = np.interp(cal["estimator"].decision_function(feats), [-1.0, 1.0], [0.25, 0.75])
    assert (p == 0.75).sum() >= 2 or (p == 0.25).sum() >= 2  # real ties
    order = sorted(range(len(pool)), key=lambda j: (-p[j], pool[j]))[:20]
    got = tied.recommend(session, k=20, threshold=0.0)
    assert [g.product_id for g in got] == [ids[pool[j]] for j in order]
    assert np.max(np.abs(np.array([g.probability for g in got]) - p[order])) <= TOL


def test_tracker_and_cli_score_and_recommend_agree(cal: dict[str, Any], tmp_path: Path) -> None:
    model = cal["model"]
    _, rows = _eval_rows(cal)
    # tracker
    session = session_from_row(rows.iloc[3])
    tracker = reco_fast.SessionTracker(model)
    tracker.page_view(
        "s1",
        session["current_product_id"],
        device_type=session["device_type"],
        traffic_source=session["traffic_source"],
    )
    tracker.engagement("s1", time_on_page_sec=95, scroll_depth=0.9)
    ctx = tracker.context("s1")
    recs = tracker.recommend("s1", k=5, threshold=0.0)
    assert recs == model.recommend(ctx, k=5, threshold=0.0)
    assert recs and _same(
        [(r.product_id, r.probability) for r in recs], _brute_force(cal, ctx, 5, 0.0)
    )
    # reco-fast score: a CSV of held-out page views
    src, out = tmp_path / "rows.csv", tmp_path / "scored.csv"
    rows.iloc[:300].to_csv(src, index=False)
    env = subprocess_env()
    cli = [sys.executable, "-m", "reco_fast.tools.cli"]
    proc = subprocess.run(
        [*cli, "score", str(cal["path"]), "--input", str(src), "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = pd.read_csv(out)["click_probability"].to_numpy()
    X, _ = _eval_rows(cal)
    assert np.max(np.abs(scored - _reference(cal, X[:300]))) <= TOL
    # reco-fast recommend, at the artifact's threshold
    proc = subprocess.run(
        [*cli, "recommend", str(cal["path"]), "--session", json.dumps(ctx), "-k", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["threshold"] == 0.7
    want = model.recommend(ctx, k=5)
    assert [(r["product_id"], r["probability"]) for r in got["recommendations"]] == [
        (r.product_id, r.probability) for r in want
    ]


def test_service_serves_the_calibrated_probability(cal: dict[str, Any]) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import importlib.util
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    spec = importlib.util.spec_from_file_location(
        "reco_fast_calibrated_service", REPO / "examples" / "service.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        _, rows = _eval_rows(cal)
        product = str(rows.iloc[5]["current_product_id"])
        with TestClient(module.create_app(model_path=cal["path"])) as client:
            r = client.post(
                "/sessions/a/page_view",
                json={"product_id": product, "device_type": "Mobile", "traffic_source": "Email"},
            )
            assert r.status_code == 200, r.text
            ctx = client.get("/sessions/a").json()
            got = client.get("/sessions/a/recommendations", params={"k": 4, "threshold": 0.0})
            assert got.status_code == 200, got.text
        pairs = [(x["product_id"], x["probability"]) for x in got.json()]
        assert pairs and _same(pairs, _brute_force(cal, ctx, 4, 0.0))
    finally:
        sys.modules.pop(spec.name, None)


def _copy(cal: dict[str, Any], tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(cal["path"], dst)
    return dst


def _rewrite(path: Path, edit: Any, resign: bool) -> None:
    meta_path = path / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    edit(meta)
    if resign:
        meta["metadata_sha256"] = metadata_digest(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit, resign, message",
    [
        (lambda m: m["calibration"].update(a=m["calibration"]["a"] * 1.01), False, "sha256"),
        (lambda m: m["calibration"].update(a=m["calibration"]["a"] * 1.01), True, "golden"),
        (lambda m: m["calibration"].update(a=0.5), True, "a < 0"),
        (lambda m: m.update(calibration={"method": "temperature"}), True, "method"),
        (lambda m: m.pop("calibration"), True, "golden"),
    ],
)
def test_the_calibration_is_checked_at_load(
    cal: dict[str, Any], tmp_path: Path, edit: Any, resign: bool, message: str
) -> None:
    """Covered by the metadata's checksum; re-signed, still checked against the golden
    outputs (scikit-learn's calibrated probabilities) or refused as malformed."""
    path = _copy(cal, tmp_path)
    _rewrite(path, edit, resign)
    with pytest.raises(reco_fast.ArtifactError, match=message):
        reco_fast.load(path)


def test_a_precision_target_picks_the_lowest_threshold_that_meets_it(cal: dict[str, Any]) -> None:
    model = cal["model"]._with_builder(cal["model"].builder)
    split, h = cal["split"], cal["holdout"]
    served = model.predict_proba_features(split.X_test)
    target = 0.8
    choice = choose_threshold(model, cal["log"], split, h, served, target_precision=target)
    t = choice["threshold"]
    y, p = split.y_test[h.calibration], served[h.calibration]
    shown = p >= t
    assert y[shown].mean() >= target and shown.sum() >= MIN_SHOWN
    assert choice["calibration_half"]["precision"] == y[shown].mean()
    for lower in np.unique(p[p < t]):  # every lower threshold misses the target
        s = p >= lower
        assert s.sum() < MIN_SHOWN or y[s].mean() < target
    ye, pe = split.y_test[h.evaluation], served[h.evaluation]
    assert choice["evaluation_half"]["precision"] == ye[pe >= t].mean()
    assert choice["evaluation_half"]["shown"] == (pe >= t).sum()
    with pytest.raises(ValueError, match="no threshold reaches it"):
        choose_threshold(model, cal["log"], split, h, served, target_precision=0.999)


def test_a_coverage_target_picks_the_highest_threshold_that_meets_it(
    cal: dict[str, Any],
) -> None:
    model = cal["model"]._with_builder(cal["model"].builder)
    split, h = cal["split"], cal["holdout"]
    served = model.predict_proba_features(split.X_test)
    target = 0.5
    choice = choose_threshold(model, cal["log"], split, h, served, target_coverage=target)
    t = choice["threshold"]
    rows = cal["log"].iloc[split.idx_test[h.calibration[:1000]]].to_dict("records")
    counts = np.array([len(model.recommend(r, k=3, threshold=t)) for r in rows])
    best = np.array([model.recommend(r, k=1, threshold=0.0)[0].probability for r in rows])
    assert (counts > 0).mean() >= target
    assert choice["calibration_half"]["coverage"] == (counts > 0).mean()
    above = best[best > t]
    assert above.size == 0 or (best >= above.min()).mean() < target  # the next one up misses


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 0.5, "target_precision": 0.8}, "give one of them"),
        ({"target_precision": 0.8, "target_coverage": 0.5}, "give one of them"),
        ({"target_precision": 0.0}, r"target_precision must be in \(0, 1\]"),
        ({"target_coverage": 1.5}, r"target_coverage must be in \(0, 1\]"),
        ({"threshold": -0.1}, r"threshold must be in \[0, 1\]"),
        ({"target_precision": math.nan}, "must be a number"),
    ],
)
def test_bad_targets_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args = {"threshold": None, "target_precision": None, "target_coverage": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        check_targets(**args)


def test_report_shows_calibration_and_the_threshold(cal: dict[str, Any]) -> None:
    from sklearn.metrics import brier_score_loss

    report = cal["result"].report
    md = (cal["path"] / "report.md").read_text()
    split, h = cal["split"], cal["holdout"]
    X, y = split.X_test[h.evaluation], split.y_test[h.evaluation]
    c = report["calibration"]
    assert c["method"] == "sigmoid" and c["evaluation_rows"] == len(y)
    raw = cal["estimator"].predict_proba(X)[:, 1]
    assert c["uncalibrated"]["brier"] == pytest.approx(brier_score_loss(y, raw), abs=1e-15)
    assert c["calibrated"]["brier"] == pytest.approx(
        brier_score_loss(y, _reference(cal, X)), abs=1e-12
    )
    assert sum(r["rows"] for r in c["calibrated"]["reliability"]) == len(y)
    ev = report["threshold_choice"]["evaluation_half"]
    served = _reference(cal, X)
    assert ev["shown"] == (served >= 0.7).sum()
    assert ev["precision"] == pytest.approx(y[served >= 0.7].mean(), abs=1e-15)
    for text in (
        "## Calibration",
        "### Reliability before calibration",
        "### Reliability after calibration",
        f"| calibrated | {c['calibrated']['brier']:.4f} |",
        "## Threshold",
        "Threshold 0.7000: the default",
        f"| evaluation half | {ev['rows']:,} | {ev['shown']:,} | {ev['clicks']:,} | "
        f"{ev['precision']:.1%} | {ev['coverage']:.1%} |",
    ):
        assert text in md, text
    # the high-confidence line is the served probability at the served threshold
    hc = report["high_confidence"]
    all_served = _reference(cal, split.X_test)
    assert hc["shown"] == (all_served >= 0.7).sum()
    assert report["compiled_vs_sklearn_max_abs_diff"] <= TOL


def test_cli_isotonic_build_for_a_coverage_target(cal: dict[str, Any], tmp_path: Path) -> None:
    """build_model.py --calibration isotonic --target-coverage C on a 3,000-row log: the
    artifact records and serves the isotonic map and the chosen threshold."""
    from sklearn.isotonic import IsotonicRegression

    log = cal["log"].iloc[:3000]
    src = tmp_path / "log.csv"
    log.to_csv(src, index=False)
    out = tmp_path / "model"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "build_model.py"),
            "--data",
            str(src),
            "--catalog",
            str(cal["data_dir"] / "products.csv"),
            "--out",
            str(out),
            "--calibration",
            "isotonic",
            "--target-coverage",
            "0.4",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / METADATA_FILE).read_text())
    choice = meta["threshold_choice"]
    assert choice["rule"] == "target_coverage" and choice["target"] == 0.4
    assert "threshold" not in choice  # recorded once, as metadata's threshold
    report = json.loads((out / "report.json").read_text())
    assert report["threshold_choice"]["threshold"] == meta["threshold"]
    assert choice["calibration_half"]["coverage"] >= 0.4
    assert "coverage" in proc.stdout and "threshold" in proc.stdout
    model = reco_fast.load(out)
    assert model.threshold == meta["threshold"]
    c = meta["calibration"]
    assert c["method"] == "isotonic"
    # scikit-learn's own isotonic predict through the recorded breakpoints (y is already
    # non-decreasing, so fitting on them gives back the same interpolation)
    iso = IsotonicRegression(out_of_bounds="clip").fit(c["x"], c["y"])
    X = model.features(log.iloc[:500])
    got = model.predict_proba_features(X)
    assert np.max(np.abs(got - iso.predict(model.decision_function(X)))) <= TOL
    md = (out / "report.md").read_text()
    assert "isotonic" in md and "the highest with coverage >= 0.4" in md


def test_cli_refuses_conflicting_threshold_options(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "build_model.py"),
            "--threshold",
            "0.6",
            "--target-precision",
            "0.8",
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "give one of them" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


def test_info_names_the_calibration_and_the_threshold_rule(cal: dict[str, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "reco_fast.tools.cli", "info", str(cal["path"])],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(proc.stdout.split())
    ev = cal["result"].report["threshold_choice"]["evaluation_half"]
    assert "(format 4)" in flat
    assert "calibrated: sigmoid on held-out rows" in flat
    assert (
        f"threshold rule default; evaluation half: precision {ev['precision']:.1%}, "
        f"coverage {ev['coverage']:.1%}" in flat
    )


@pytest.mark.parametrize("prices", ["random", "five"])
def test_a_large_catalog_is_ranked_by_the_calibrated_probability(
    cal: dict[str, Any], prices: str
) -> None:
    """Over a catalog large enough for the threshold cells (which bound uncalibrated
    probabilities), a calibrated model's recommend still equals brute force by scikit-learn's
    calibrator, and the numpy path that scores every product."""
    from reco_fast.serve.cells import CELLS_MIN_PRODUCTS

    model = cal["model"]
    base = model.builder.catalog
    rows = list(base.to_rows())
    n = CELLS_MIN_PRODUCTS + 52
    rng = np.random.default_rng(0)
    if prices == "random":
        values = rng.uniform(5, 400, size=n).round(2).tolist()
    else:  # five prices: hundreds of products tie on every score
        values = rng.choice([9.99, 24.5, 60.0, 150.0, 320.0], size=n).tolist()
    big = [
        {"product_id": f"X{i:05d}", "category": rows[i % len(rows)][1], "price": p}
        for i, p in enumerate(values)
    ]
    large = model.with_catalog(
        [{"product_id": p, "category": c, "price": pr} for p, c, pr in rows] + big
    )
    assert large.uses_cells
    _, log_rows = _eval_rows(cal)
    big_cal = {**cal, "model": large}
    for _, r in log_rows.iloc[:3].iterrows():
        session = session_from_row(r)
        for k, t in ((10, 0.0), (3, 0.7), (25, 0.5)):
            got = [
                (g.product_id, g.probability) for g in large.recommend(session, k=k, threshold=t)
            ]
            assert _same(got, _brute_force(big_cal, session, k, t))
            ref = _numpy_path(large).recommend(session, k=k, threshold=t)
            assert got == [(r.product_id, r.probability) for r in ref]


def _numpy_path(model: Any) -> Any:
    """The same calibrated model with no compiled top-k: recommend scores every candidate
    in numpy (the reference the compiled path must equal)."""
    ref = object.__new__(type(model))
    ref.__dict__.update(model.__dict__)
    ref._raw_recommend_kernel = None
    return ref


@pytest.mark.parametrize("duplicates", [False, True])
def test_the_compiled_top_k_path_equals_scoring_every_product(
    cal: dict[str, Any], duplicates: bool
) -> None:
    """recommend on a calibrated sigmoid model goes through the compiled top-k
    (calibration.top_k) and gives exactly the numpy path's answer: products, order,
    probabilities' bits, ties by catalog (or candidate) order. With ``duplicates``, every
    product appears three times in the catalog, so every score is tied three ways."""
    from reco_fast.serve import calibration as calibration_module

    model = cal["model"]
    if duplicates:
        rows = list(model.builder.catalog.to_rows())
        dup = [
            {"product_id": f"{p}-{j}", "category": c, "price": pr}
            for j in range(3)
            for p, c, pr in rows
        ]
        model = model.with_catalog(dup)
    reference = _numpy_path(model)
    ids = model.builder.catalog.product_ids.tolist()
    _, log_rows = _eval_rows(cal)
    rng = np.random.default_rng(1)
    taken = calls = 0
    real = calibration_module.top_k

    def counting(*a: Any, **kw: Any) -> Any:
        nonlocal taken, calls
        out = real(*a, **kw)
        if a[0] is model:  # not the reference's calls (it has no compiled top-k)
            calls += 1
            taken += out is not None
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("reco_fast.serve.model.calibrated_top_k", counting)
        for i, (_, r) in enumerate(log_rows.iloc[:60].iterrows()):
            session = session_from_row(r)
            if i % 3 == 0:
                session["cart_product_ids"] = [ids[int(rng.integers(len(ids)))]]
            k = [1, 3, 10, 50][i % 4]
            t = [0.0, 0.3, 0.7, 0.9][(i // 4) % 4]
            cands = None
            if i % 5 == 0:
                cands = [ids[j] for j in rng.permutation(len(ids))[:40]]
            got = model.recommend(session, k=k, threshold=t, candidates=cands)
            want = reference.recommend(session, k=k, threshold=t, candidates=cands)
            assert [(g.product_id, g.probability, g.reason) for g in got] == [
                (w.product_id, w.probability, w.reason) for w in want
            ], (i, k, t)
    assert calls == 60 and taken >= 50  # the compiled path answers almost every call


def test_the_raw_threshold_lets_every_calibrated_product_through(cal: dict[str, Any]) -> None:
    """_raw_threshold(t) is a lower bound: a margin whose calibrated probability is t or
    more has an uncalibrated probability at or above it (hypothesis-free sweep)."""
    from reco_fast.serve.calibration import _raw_threshold

    c = cal["model"].calibration
    margins = np.linspace(-40, 40, 200_001)
    probs = c(margins)
    raw = 1.0 / (1.0 + np.exp(-margins))
    for t in [0.0, 1e-13, 1e-6, 0.01, 0.3, 0.5, 0.7, 0.9, 0.99, 1 - 1e-9, 1.0, *probs[::997]]:
        bound = _raw_threshold(c, float(t))
        assert np.all(raw[probs >= t] >= bound), t


def test_calibration_is_refused_for_the_spark_engine(tmp_path: Path) -> None:
    """XGBoost (--engine spark) has no decision_function for scikit-learn's calibrator: asked
    for, calibration is refused before any work; by default that engine is uncalibrated."""
    with pytest.raises(ValueError, match="use --calibration none"):
        pipeline.build(
            out=tmp_path / "m", data_dir=tmp_path / "d", engine="spark", calibration="sigmoid"
        )
    assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()
    with pytest.raises(ValueError, match="calibration must be"):
        pipeline.build(out=tmp_path / "m", data_dir=tmp_path / "d", calibration="platt")
