"""The build pipeline: data -> features -> training -> C -> verification -> artifact.

What ``python build_model.py`` and ``reco-fast build`` run. Each stage lives in
its own module; this one only wires them together and reports progress.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reco_fast.artifact import CATALOG_FILE
from reco_fast.build.data import DEFAULT_SEED, generate_default, load
from reco_fast.build.report import build_report, predictions_frame, render_markdown
from reco_fast.build.report_html import curves, render_html
from reco_fast.build.train import fit, split
from reco_fast.errors import InputError
from reco_fast.features.page import FEATURE_SETS, FeatureBuilder, Vocabulary
from reco_fast.features.schema import LABEL
from reco_fast.serve.model import Model, write_catalog

__all__ = ["BuildResult", "build"]

RETRIEVAL_SIZES = (5, 10, 20, 50, 100)
"""Candidates per retrieval source at which the event build measures the first stage's recall."""

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("artifacts") / "reco_model"
PREDICTIONS_FILE = "realtime_recommendation_predictions.csv"


def warn_if_no_plots() -> bool:
    """Log a warning when report.html will have no plots (matplotlib missing); True if so."""
    try:
        import matplotlib  # noqa: F401  (report_html imports it again to draw)
    except ImportError:
        pass
    else:
        return False
    log.warning(
        "matplotlib is not installed: report.html will have its tables but no plots "
        "(pip install 'reco_fast[build]' installs it)"
    )
    return True


@dataclass(frozen=True)
class BuildResult:
    model: Model
    report: dict[str, Any]
    markdown: str
    seconds: float


ENGINES = ("local", "spark")
"""Where the page-view build trains: ``local`` (scikit-learn) or ``spark`` (XGBoost's
PySpark estimator)."""


def build(
    data: str | Path | None = None,
    catalog: str | Path | None = None,
    out: str | Path = DEFAULT_OUT,
    *,
    feature_set: str = "ranking",
    data_dir: str | Path = "data",
    seed: int = DEFAULT_SEED,
    threshold: float | None = None,
    engine: str = "local",
    spark_master: str = "local[2]",
    spark_workers: int = 1,
    calibration: str | None = "default",
    target_precision: float | None = None,
    target_coverage: float | None = None,
) -> BuildResult:
    """Run the whole pipeline; raise (and write nothing) if any stage fails.

    ``engine="local"`` trains the seed's GradientBoostingClassifier with scikit-learn;
    ``engine="spark"`` trains XGBoost's classifier with its PySpark estimator on a
    Spark DataFrame of the same training rows (``spark_master``, ``spark_workers``
    XGBoost workers; :mod:`reco_fast.build.spark_train`), then compiles the collected
    booster the same way.

    The model trains on the seed's stratified 80% split. The 20% test split is cut by
    session into a calibration half and an evaluation half
    (:mod:`reco_fast.build.calibrate`): ``calibration`` ("sigmoid", Platt's;
    "isotonic"; None; or "default", which is None: calibration is opt-in, see the
    README; ``engine="spark"`` refuses it, its XGBoost model has no ``decision_function``
    for scikit-learn's calibrator) is fitted on the calibration half with scikit-learn's
    ``CalibratedClassifierCV`` and served as a monotone map of the compiled margin;
    the threshold is ``threshold`` (default 0.7), or chosen on the calibration half for
    ``target_precision`` (precision of clicks among recommendations at the threshold)
    or ``target_coverage`` (share of page views with at least one recommendation). The
    report measures both on the evaluation half.

    Raises
    ------
    ValueError
        An unknown feature set, engine or calibration method, calibration with
        ``engine="spark"``, more than one of ``threshold``, ``target_precision`` and
        ``target_coverage``, a value out of range, or a precision target no threshold
        meets on the calibration half.
    """
    from reco_fast.build.calibrate import (
        calibration_section,
        check_targets,
        choose_threshold,
        fit_calibrator,
        holdout_halves,
    )
    from reco_fast.compiler.driver import compile_model

    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r:.40}")
    if calibration == "default":
        # opt-in: a sigmoid changes this model's scores by ~1e-3 (report.md) but doubles
        # recommend's latency on small catalogs and triples it on large ones (README)
        calibration = None
    if calibration is not None and calibration not in ("sigmoid", "isotonic"):
        raise ValueError(
            f"calibration must be 'sigmoid', 'isotonic' or None, got {str(calibration)[:40]!r}"
        )
    if calibration is not None and engine != "local":
        raise ValueError(
            f"calibration={calibration!r} needs scikit-learn's GradientBoostingClassifier "
            "(its decision_function); --engine spark trains XGBoost: use --calibration none"
        )
    check_targets(threshold, target_precision, target_coverage)
    start = time.perf_counter()
    steps = 5

    def elapsed() -> float:
        return time.perf_counter() - start

    warn_if_no_plots()
    log.info("[1/%d] data", steps)
    if data is None:
        data, catalog = generate_default(data_dir, seed=seed)
    dataset = load(data, catalog)
    frame = dataset.log

    log.info("[2/%d] features (%s set), %.1f s elapsed", steps, feature_set, elapsed())
    vocabulary = Vocabulary.fit(
        frame["current_category"], frame["device_type"], frame["traffic_source"]
    )
    builder = FeatureBuilder(feature_set, vocabulary, dataset.catalog)
    X = builder.transform({c: frame[c].to_numpy() for c in frame.columns})
    y = frame[LABEL].to_numpy()

    parts = split(X, y)
    log.info(
        "[3/%d] training %s on %d rows, %.1f s elapsed",
        steps,
        "XGBoost on Spark" if engine == "spark" else "GradientBoostingClassifier",
        len(parts.y_train),
        elapsed(),
    )
    if engine == "spark":
        from reco_fast.build import spark_train

        estimator, train_seconds = spark_train.fit_on_spark(
            parts.X_train,
            parts.y_train,
            builder.feature_names,
            master=spark_master,
            num_workers=spark_workers,
        )
    else:
        estimator, train_seconds = fit(parts.X_train, parts.y_train)
    log.info("trained in %.1f s", train_seconds)
    holdout = holdout_halves(frame["session_id"].to_numpy()[parts.idx_test])
    calibrator, cal_map = None, None
    if calibration is not None:
        log.info("calibrating (%s) on %d held-out rows", calibration, len(holdout.calibration))
        calibrator, cal_map = fit_calibrator(
            estimator,
            parts.X_test[holdout.calibration],
            parts.y_test[holdout.calibration],
            calibration,
        )

    log.info(
        "[4/%d] compiling to C and verifying against %s, %.1f s elapsed",
        steps,
        "XGBoost" if engine == "spark" else "scikit-learn",
        elapsed(),
    )
    result: dict[str, Any] = {}

    def write_extra(staging: Path, staged: Model) -> dict[str, Any]:
        log.info("[5/%d] report, %.1f s elapsed", steps, elapsed())
        model = staged._with_builder(builder)  # serves the calibrated probabilities
        served = model.predict_proba_features(parts.X_test)
        choice = choose_threshold(
            model,
            frame,
            parts,
            holdout,
            served,
            threshold=threshold,
            target_precision=target_precision,
            target_coverage=target_coverage,
        )
        chosen = choice["threshold"]
        raw = estimator.predict_proba(parts.X_test)[:, 1]
        report = build_report(
            log=frame,
            feature_names=builder.feature_names,
            feature_set=feature_set,
            split=parts,
            estimator=estimator,
            train_seconds=train_seconds,
            model=model,
            threshold=chosen,
            source=dataset.source,
            calibrator=calibrator,
        )
        report["calibration"] = calibration_section(
            calibration, cal_map, holdout, parts.y_test, raw, served
        )
        report["threshold_choice"] = choice
        markdown = render_markdown(report)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "report.md").write_text(markdown)
        (staging / "report.html").write_text(
            render_html(report, curves(parts.y_test, served, chosen)), encoding="utf-8"
        )
        predictions_frame(frame, parts, served, chosen).to_csv(
            staging / PREDICTIONS_FILE, index=False
        )
        write_catalog(dataset.catalog, staging / CATALOG_FILE)
        result.update(report=report, markdown=markdown)
        # "threshold" itself is metadata's own entry, recorded once
        return {
            "threshold": chosen,
            "threshold_choice": {k: v for k, v in choice.items() if k != "threshold"},
        }

    model = compile_model(
        estimator,
        out,
        builder.feature_names,
        verify_X=parts.X_test,
        metadata={
            "feature_set": feature_set,
            "vocabulary": vocabulary.to_json(),
            "catalog": CATALOG_FILE,
            "data": {"source": dataset.source, "rows": len(frame)},
            **({} if cal_map is None else {"calibration": cal_map.to_json()}),
        },
        feature_set=feature_set,
        write_extra=write_extra,
        builder=builder,
        sessions=frame.iloc[parts.idx_test[:256]].to_dict("records"),
        calibrated=None if calibrator is None else (lambda X: calibrator.predict_proba(X)[:, 1]),
    )
    seconds = time.perf_counter() - start
    log.info("built %s in %.1f s", out, seconds)
    return BuildResult(model, result["report"], result["markdown"], seconds)


EVALUATION_FILE = "evaluation.json"
EVENT_MODEL_PARAMS: dict[str, Any] = {"subsample": 0.5}
"""The seed's GradientBoostingClassifier settings, with stochastic boosting (half the rows
per tree): event logs give many more training rows than the seed's page views."""


@dataclass(frozen=True)
class EventBuildResult:
    model: Model
    evaluation: dict[str, Any]
    markdown: str
    seconds: float


def _event_session(events: Sequence[Any]) -> dict[str, Any] | None:
    """An event-model session dict from a replayed session's events (or None: nothing touched)."""
    from reco_fast.build.sessiontrain import TOUCH_TYPES

    products = [e.product_id for e in events if e.type in TOUCH_TYPES]
    cart: list[str] = []
    for e in events:
        if e.type == "cart" and e.product_id not in cart:
            cart.append(e.product_id)
        elif e.type == "remove" and e.product_id in cart:
            cart.remove(e.product_id)
    return {"products": products, "cart": cart} if products else None


def build_events(
    events: str | Path,
    columns: str | Mapping[str, str],
    out: str | Path = DEFAULT_OUT,
    *,
    event_types: str | Mapping[str, Any] | None = None,
    test_fraction: float = 0.2,
    n_random: int = 5,
    seed: int = DEFAULT_SEED,
    k: int = 10,
    objective: str = "binary",
    impressions: str | Path | None = None,
    window: float | None = None,
) -> EventBuildResult:
    """Train, evaluate, compile and verify a model from a raw event log (issue "Real shops' logs").

    Steps: read the log (:func:`reco_fast.build.events.read_events`); split by time and
    session (:func:`reco_fast.build.evaluate.split_by_time`, the last ``test_fraction``
    of sessions held out); learn the item tables and training rows from the
    training side only (:mod:`reco_fast.build.sessiontrain`); fit the
    GradientBoostingClassifier; compile and verify it; replay the held-out
    sessions through the compiled model's ``recommend`` and through the
    baselines, and write ``evaluation.json`` (HitRate@k, MRR@k, NDCG@k, coverage
    per method) and ``report.md`` into the artifact.

    The model ranks; its probabilities are those of the sampled training
    problem, not click rates, so its threshold is 0 (every ranked product is shown).

    ``objective="lambdarank"`` trains LightGBM's LambdaMART ranker on the same rows
    instead, one group per page view (:func:`reco_fast.build.sessiontrain.fit_lambdarank`);
    it is compiled, verified (against LightGBM's own scores) and evaluated the same
    way. A ranker's ``recommend`` orders by score and has no threshold; its
    ``predict_proba`` raises TypeError (``decision_function`` gives the scores).

    ``impressions`` (an impression log directory, :mod:`reco_fast.serve.impressions`,
    e.g. written by ``EventTracker(model, log=...)``) replaces the sampled training
    rows: every shown product of every logged request is a row, its features
    computed from the logged session with the item tables learned here by the
    serving path's :func:`reco_fast.features.events.feature_matrix`, plus its shown
    position; the label is whether it was clicked (clicks joined within ``window``
    seconds, default :data:`~reco_fast.serve.impressions.DEFAULT_CLICK_WINDOW`). The
    position is fixed at 0 for serving by partial evaluation of the trees
    (:func:`reco_fast.build.retrain.fit_with_position`). Shown products the tables do
    not know are skipped and counted. The item tables and the held-out replay are
    as without impressions; ``evaluation.json["training"]`` says which rows were used
    and how many logged sessions are also held-out sessions (their replay is then
    not independent of training).

    Raises
    ------
    InputError
        The log is unreadable, lacks a required column, or has no session with
        two different products; with ``impressions``: the log is missing or
        damaged, its sessions are not event-model sessions, or its shown products
        are all clicked or all not clicked.
    CompileError
        The compiled model is not equal to scikit-learn's.
    """
    from reco_fast.build.evaluate import (
        baselines,
        evaluate,
        format_table,
        retrieval_table,
        split_by_time,
    )
    from reco_fast.build.events import parse_columns, parse_event_types, read_events
    from reco_fast.build.sessiontrain import (
        OBJECTIVES,
        fit_lambdarank,
        fit_tables,
        next_targets,
        session_sequences,
        training_rows,
    )
    from reco_fast.compiler.driver import compile_model
    from reco_fast.features.events import RETRIEVE_PER_SOURCE, EventBuilder, retrieve

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r:.40}")
    ranker = objective == "lambdarank"
    if impressions is not None and ranker:
        raise ValueError(
            "objective: training from impressions fits a GradientBoostingClassifier "
            "(objective='binary'), not lambdarank"
        )
    if impressions is not None and not Path(impressions).is_dir():
        raise InputError(
            f"impression log directory {str(impressions)[:200]!r} does not exist",
            field="impressions",
        )
    learner = "LightGBM LambdaMART (lambdarank)" if ranker else "GradientBoostingClassifier"
    start = time.perf_counter()
    steps = 6
    log.info("[1/%d] reading events from %s", steps, events)
    frame = read_events(
        events,
        parse_columns(columns) if isinstance(columns, str) else dict(columns),
        parse_event_types(event_types) if isinstance(event_types, str) else event_types,
    )
    train_events, test_events, split_info = split_by_time(frame, test_fraction)
    log.info(
        "[2/%d] item tables from %d training events (%d sessions)",
        steps,
        len(train_events),
        split_info["train"]["sessions"],
    )
    tables = fit_tables(train_events)
    builder = EventBuilder(tables)
    shown: dict[str, Any] | None = None
    if impressions is not None:
        shown = _impression_training(impressions, window, tables, test_events)
        y_train: np.ndarray = shown["rows"].y
        X_train: np.ndarray = shown["rows"].X
        log.info(
            "[3/%d] training %s on %d shown products of %d logged requests (%d clicked; "
            "features: %s + position, fixed at 0)",
            steps,
            learner,
            len(y_train),
            shown["training"]["requests"],
            shown["training"]["positives"],
            ", ".join(builder.feature_names),
        )
        estimator, train_seconds = shown["fit"].served, shown["fit"].seconds
    else:
        rows = training_rows(train_events, tables, n_random=n_random, seed=seed)
        X_train, y_train = rows.X, rows.y
        log.info(
            "[3/%d] training %s on %d rows (%d page views, features: %s)",
            steps,
            learner,
            len(rows.y),
            int(rows.groups.max()) + 1,
            ", ".join(builder.feature_names),
        )
        if ranker:
            estimator, train_seconds = fit_lambdarank(rows, seed=seed)
        else:
            estimator, train_seconds = fit(rows.X, rows.y, EVENT_MODEL_PARAMS)

    pool: list[dict[str, Any]] = []
    for seq in session_sequences(test_events, tables):
        if np.any(seq.touched < 0):
            continue  # golden sessions use known products only
        for i, target in next_targets(seq.touched):
            if target >= 0 and len(pool) < 256:
                pool.append(
                    {
                        "products": [str(tables.product_ids[p]) for p in seq.touched[: i + 1]],
                        "cart": [str(tables.product_ids[p]) for p in seq.carts[i] if p >= 0],
                        "recommended_product_id": str(tables.product_ids[target]),
                    }
                )
    if not pool:
        pool = [
            {"products": [str(tables.product_ids[0])], "cart": [], "recommended_product_id": str(p)}
            for p in tables.product_ids[1:65].tolist()
        ]
    verify_X = X_train[:: max(1, len(X_train) // 4000)]
    result: dict[str, Any] = {}

    def write_extra(staging: Path, staged: Model) -> None:
        log.info("[5/%d] replaying %d held-out sessions", steps, split_info["test"]["sessions"])
        tables.save(staging)
        ids = tables.product_ids

        def model_ranker(session: Sequence[Any], kk: int) -> list[str]:
            s = _event_session(session)
            if s is None:
                return []
            # a classifier shows every product at its threshold of 0; a ranker every product
            ranked = builder.rank(
                staged._predict_f64, s, kk, -math.inf if ranker else 0.0, None, ()
            )
            return [str(ids[r.position]) for r in ranked]

        rankers: dict[str, Any] = {"model": model_ranker}
        rankers.update(baselines(train_events))
        evaluation = evaluate(train_events, test_events, rankers, k, split=split_info)
        # recall@N of the first stage: the share of held-out next products among its N
        # candidates, for several sizes per source (the default is RETRIEVE_PER_SOURCE)
        curve = []
        for per_source in RETRIEVAL_SIZES:
            hits, sizes = [], []
            for seq in session_sequences(test_events, tables):
                for i, target in next_targets(seq.touched):
                    got = retrieve(tables, seq.touched[: i + 1], seq.carts[i], per_source)
                    hits.append(target >= 0 and target in set(got.tolist()))
                    sizes.append(len(got))
            curve.append(
                {
                    "per_source": per_source,
                    "recall": float(np.mean(hits)) if hits else 0.0,
                    "mean_candidates": float(np.mean(sizes)) if sizes else 0.0,
                    "max_candidates": int(max(sizes, default=0)),
                    "predictions": len(hits),
                }
            )
        default = next(c for c in curve if c["per_source"] == RETRIEVE_PER_SOURCE)
        evaluation["retrieval"] = {
            "what": "first stage: co-visitation neighbours, session, category and global popularity",
            **default,
            "by_size": curve,
        }
        if shown is not None:
            evaluation["training"] = {
                "objective": objective,
                "model": learner,
                **shown["training"],
                "seconds": round(train_seconds, 1),
                "features": list(builder.feature_names),
            }
            rows_text = (
                f"Training rows: {len(y_train):,} shown products of "
                f"{shown['training']['requests']:,} logged requests in `{impressions}` "
                f"({int(y_train.sum()):,} clicked = label 1, the rest 0); features from the "
                "logged sessions with these item tables, plus the shown position (importance "
                f"{shown['training']['position_feature']['importance']:.3f}), fixed at 0 at "
                "serving."
                + (
                    f" {shown['training']['skipped_unknown_products']:,} shown products "
                    "unknown to the item tables were skipped."
                    if shown["training"]["skipped_unknown_products"]
                    else ""
                )
                + (
                    f" Warning: {shown['training']['held_out_sessions_logged']:,} of the "
                    "held-out sessions are in the impression log: their replay below is not "
                    "independent of training."
                    if shown["training"]["held_out_sessions_logged"]
                    else ""
                )
            )
        else:
            evaluation["training"] = {
                "objective": objective,
                "model": learner,
                "rows": len(rows.y),
                "positives": int(rows.y.sum()),
                "page_views": int(rows.groups.max()) + 1,
                "labels": "next different product viewed or carted (no impressions in the log)",
                "negatives": rows.negatives,
                "seconds": round(train_seconds, 1),
                "features": list(builder.feature_names),
            }
            rows_text = (
                f"Training rows: {len(rows.y):,} ({int(rows.y.sum()):,} positives = the next "
                "different product; negatives from the retrieval stage plus "
                f"{n_random} random products per page view)."
            )
        (staging / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")
        markdown = (
            "# Event-log model: held-out replay\n\n"
            f"Model: {learner}"
            + (" (orders by score; no probability, no threshold)" if ranker else "")
            + ".\n\n"
            f"Log: `{events}`; {len(frame):,} events, {frame['session_id'].nunique():,} sessions, "
            f"{len(tables):,} products in the training catalog.\n\n"
            f"Split: the last {test_fraction:.0%} of sessions by start time held out "
            f"(cut {split_info.get('cut_time_iso', '?')}); "
            f"{split_info['train']['sessions']:,} training and "
            f"{split_info['test']['sessions']:,} held-out sessions.\n\n"
            + rows_text
            + "\n\n"
            + format_table(evaluation)
            + "\n\nFirst stage (retrieval) recall@N: the share of held-out next products "
            "among its candidates, by candidates per source (the model ranks "
            f"{RETRIEVE_PER_SOURCE} per source).\n\n" + retrieval_table(evaluation) + "\n"
        )
        (staging / "report.md").write_text(markdown)
        (staging / "report.json").write_text(
            json.dumps({"evaluation": evaluation}, indent=2) + "\n"
        )
        result.update(evaluation=evaluation, markdown=markdown)

    log.info(
        "[4/%d] compiling to C and verifying against %s",
        steps,
        "LightGBM" if ranker else "scikit-learn",
    )
    model = compile_model(
        estimator,
        out,
        builder.feature_names,
        verify_X=verify_X,
        threshold=0.0,
        metadata={
            "data": {"source": str(events), "events": len(frame), "kind": "events"},
            "item_tables": list(("items.json", "covis.npz")),
            **(
                {"training": {k: v for k, v in shown["training"].items() if k != "log"}}
                if shown is not None
                else {}
            ),
        },
        feature_set=builder.feature_set,
        write_extra=write_extra,
        builder=builder,
        sessions=pool,
    )
    seconds = time.perf_counter() - start
    log.info("[6/%d] built %s in %.1f s", steps, out, seconds)
    return EventBuildResult(model, result["evaluation"], result["markdown"], seconds)


def _impression_training(
    impressions: str | Path, window: float | None, tables: Any, test_events: Any
) -> dict[str, Any]:
    """Rows from an impression log for an event model, fitted with the position fixed at 0.

    Returns ``{"rows": TrainingRows, "fit": PositionFit, "training": {...}}`` (the
    JSON-native description that goes to ``evaluation.json["training"]``).
    """
    from reco_fast.build.retrain import (
        POSITION_FEATURE,
        SERVING_POSITION,
        event_training_rows,
        fit_with_position,
    )
    from reco_fast.serve.impressions import DEFAULT_CLICK_WINDOW, load_joined

    window = DEFAULT_CLICK_WINDOW if window is None else window
    joined, counts = load_joined(impressions, window)
    rows, skipped = event_training_rows(joined, tables)
    positives = int(rows.y.sum())
    if positives == 0 or positives == len(rows.y):
        raise InputError(
            f"the log's {len(rows.y)} shown products are all "
            f"{'not clicked' if positives == 0 else 'clicked'}; training needs both",
            field="impressions",
        )
    if skipped:
        log.warning(
            "%d shown products of the impression log are not in the event log's training "
            "side (a log served with other item tables): skipped",
            skipped,
        )
    held_out = set(test_events["session_id"].astype(str).tolist())
    logged_sessions = {str(i.record.get("session_id")) for i in joined}
    overlap = len(held_out & logged_sessions)
    if overlap:
        log.warning(
            "%d held-out sessions are also in the impression log: the held-out replay is not "
            "independent of the training rows",
            overlap,
        )
    fitted = fit_with_position(rows.X, rows.position, rows.y, EVENT_MODEL_PARAMS)
    training = {
        "source": "impressions",
        "impressions": str(impressions),
        "labels": "shown and clicked (1) against shown and not clicked (0), from the "
        "impression log (clicks joined to the impression that showed the product)",
        "rows": len(rows.y),
        "positives": positives,
        "requests": len(set(rows.request_ids)),
        "skipped_unknown_products": skipped,
        "held_out_sessions_logged": overlap,
        "position_feature": {
            "name": POSITION_FEATURE,
            "fixed_at_serving": SERVING_POSITION,
            "importance": fitted.importance,
        },
        "click_window": window,
        "log": counts,
    }
    return {"rows": rows, "fit": fitted, "training": training}
