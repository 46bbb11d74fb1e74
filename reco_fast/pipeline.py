"""The build pipeline: data -> features -> training -> C -> verification -> artifact.

What ``python build_model.py`` and ``reco-fast build`` run. Each stage lives in
its own module; this one only wires them together and reports progress.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifact import CATALOG_FILE
from .data import DEFAULT_SEED, generate_default, load
from .features import FEATURE_SETS, FeatureBuilder, Vocabulary
from .report import build_report, predictions_frame, render_markdown
from .report_html import curves, render_html
from .runtime import Model, write_catalog
from .schema import LABEL
from .train import fit, split

__all__ = ["BuildResult", "build"]

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


def build(
    data: str | Path | None = None,
    catalog: str | Path | None = None,
    out: str | Path = DEFAULT_OUT,
    *,
    feature_set: str = "ranking",
    data_dir: str | Path = "data",
    seed: int = DEFAULT_SEED,
    threshold: float = 0.7,
) -> BuildResult:
    """Run the whole pipeline; raise (and write nothing) if any stage fails."""
    from .compile import compile_model

    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}")
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
        "[3/%d] training GradientBoostingClassifier on %d rows, %.1f s elapsed",
        steps,
        len(parts.y_train),
        elapsed(),
    )
    estimator, train_seconds = fit(parts.X_train, parts.y_train)
    log.info("trained in %.1f s", train_seconds)

    log.info(
        "[4/%d] compiling to C and verifying against scikit-learn, %.1f s elapsed",
        steps,
        elapsed(),
    )
    result: dict[str, Any] = {}

    def write_extra(staging: Path, staged: Model) -> None:
        log.info("[5/%d] report, %.1f s elapsed", steps, elapsed())
        report = build_report(
            log=frame,
            feature_names=builder.feature_names,
            feature_set=feature_set,
            split=parts,
            estimator=estimator,
            train_seconds=train_seconds,
            model=staged,
            threshold=threshold,
            source=dataset.source,
        )
        markdown = render_markdown(report)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "report.md").write_text(markdown)
        proba = estimator.predict_proba(parts.X_test)[:, 1]
        (staging / "report.html").write_text(
            render_html(report, curves(parts.y_test, proba, threshold)), encoding="utf-8"
        )
        predictions_frame(frame, parts, proba, threshold).to_csv(
            staging / PREDICTIONS_FILE, index=False
        )
        write_catalog(dataset.catalog, staging / CATALOG_FILE)
        result.update(report=report, markdown=markdown)

    model = compile_model(
        estimator,
        out,
        builder.feature_names,
        verify_X=parts.X_test,
        threshold=threshold,
        metadata={
            "feature_set": feature_set,
            "vocabulary": vocabulary.to_json(),
            "catalog": CATALOG_FILE,
            "data": {"source": dataset.source, "rows": len(frame)},
        },
        feature_set=feature_set,
        write_extra=write_extra,
    )
    seconds = time.perf_counter() - start
    log.info("built %s in %.1f s", out, seconds)
    return BuildResult(model, result["report"], result["markdown"], seconds)
