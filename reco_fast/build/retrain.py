"""Retrain a model from its impression log, with the position as a feature fixed at serving.

Build side (scikit-learn, through :mod:`reco_fast.build.train` and :mod:`reco_fast.compiler.driver`).

Training rows are the logged shown products: shown-and-clicked (label 1)
against shown-and-not-clicked (label 0), each with the features the serving
model computes from the logged session (``model.builder.transform`` of the
exact logged fields, so the rows are those the model scored, bit for bit) and
one more: the **position** it was shown at (0 = first). Position bias (a
product shown lower is clicked less, whatever it is) is thus explained by the
position feature instead of leaking into the product features. Optionally the
base model's own training log (one recommendation per page view, taken as
position 0) is added: the logged impressions only cover the products the
logging policy showed, and a model trained on them alone extrapolates to the
rest of the catalog (measured in the simulated shop: worse than the model that
served the log when that model was already good).

At serving the position is fixed at 0 (the standard treatment: rank every
candidate as if it were shown first). The trees are *partially evaluated* at
``position = 0``: every split on the position is replaced by the branch that
value takes, and the feature is removed. The resulting forest has exactly the
serving model's features and gives, for every row, bit for bit the
probability of the trained model at position 0 (checked here on every
training row), so the compile path (:func:`reco_fast.compiler.driver.compile_model`)
takes it unchanged, with the base model's feature builder, vocabulary and
catalog.

Hook for later: a feature set with a "position" input would let the compiled
model take the position at serving (e.g. to score slots differently); the
partial evaluation makes that unnecessary for position-as-debiasing.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reco_fast.artifact import CATALOG_FILE
from reco_fast.errors import CompileError, InputError
from reco_fast.features.page import FEATURE_SETS
from reco_fast.features.schema import LABEL
from reco_fast.serve.impressions import DEFAULT_CLICK_WINDOW, LoggedImpression, LogRead, load_joined

__all__ = [
    "POSITION_FEATURE",
    "SERVING_POSITION",
    "TrainingRows",
    "fix_feature",
    "retrain",
    "training_rows",
]

log = logging.getLogger(__name__)

POSITION_FEATURE = "position"
SERVING_POSITION = 0


@dataclass(frozen=True)
class TrainingRows:
    """One row per logged shown product."""

    X: np.ndarray  # (n, n_features) the serving model's features, float64
    position: np.ndarray  # (n,) 0-based shown position
    y: np.ndarray  # (n,) 1 clicked, 0 not
    sessions: list[dict[str, Any]]  # logged session + recommended_product_id
    request_ids: list[str]


def training_rows(impressions: Sequence[LoggedImpression], builder: Any) -> TrainingRows:
    """The shown products of joined impressions as training rows for ``builder``'s features.

    Raises
    ------
    InputError
        No impression showed anything, or a logged session fails the builder's
        validation (the message names the request id of the row's impression).
    """
    sessions: list[dict[str, Any]] = []
    position: list[int] = []
    y: list[int] = []
    rids: list[str] = []
    for imp in impressions:
        rec = imp.record
        for s in rec["shown"]:
            sessions.append({**rec["session"], "recommended_product_id": s["product_id"]})
            position.append(int(s["position"]))
            y.append(int(s["product_id"] in imp.clicked))
            rids.append(rec["request_id"])
    if not sessions:
        raise InputError("the impression log has no shown products to train on")
    missing = [f for f in builder.required_fields if f not in sessions[0]]
    if missing:
        raise InputError(
            f"logged sessions lack the field {missing[0]!r} the model needs", field=missing[0]
        )
    columns = {
        f: np.asarray([s.get(f) for s in sessions], dtype=object) for f in builder.required_fields
    }
    try:
        X = builder.transform(columns)
    except InputError as exc:
        where = f" (impression {rids[exc.rows[0]]!r})" if exc.rows else ""
        raise InputError(f"{exc}{where}", field=exc.field, rows=exc.rows) from exc
    return TrainingRows(
        X, np.asarray(position, dtype=np.float64), np.asarray(y, dtype=np.int64), sessions, rids
    )


def _prune_tree(tree: Any, feature: int, value: float) -> Any:
    """A copy of a fitted sklearn ``Tree`` without ``feature``, its splits resolved at ``value``."""
    from sklearn.tree._tree import Tree

    state = tree.__getstate__()
    nodes, values = state["nodes"], state["values"]
    v32 = float(np.float32(value))  # sklearn compares float32 inputs with float64 thresholds
    out_nodes: list[Any] = []
    out_values: list[Any] = []

    def emit(i: int, depth: int) -> tuple[int, int]:
        while nodes[i]["left_child"] != -1 and nodes[i]["feature"] == feature:
            i = int(
                nodes[i]["left_child"] if v32 <= nodes[i]["threshold"] else nodes[i]["right_child"]
            )
        idx = len(out_nodes)
        node = nodes[i].copy()
        out_nodes.append(node)
        out_values.append(values[i])
        if node["left_child"] == -1:
            return idx, depth
        if node["feature"] > feature:
            node["feature"] -= 1
        left, dl = emit(int(nodes[i]["left_child"]), depth + 1)
        right, dr = emit(int(nodes[i]["right_child"]), depth + 1)
        out_nodes[idx]["left_child"] = left
        out_nodes[idx]["right_child"] = right
        return idx, max(dl, dr)

    _, max_depth = emit(0, 0)
    new = Tree(int(tree.n_features) - 1, np.asarray(tree.n_classes, dtype=np.intp), tree.n_outputs)
    new.__setstate__(
        {
            "max_depth": max_depth,
            "node_count": len(out_nodes),
            "nodes": np.array(out_nodes, dtype=nodes.dtype),
            "values": np.ascontiguousarray(np.array(out_values, dtype=values.dtype)),
        }
    )
    return new


def fix_feature(estimator: Any, feature: int, value: float) -> Any:
    """A GradientBoostingClassifier without ``feature``, equal to ``estimator`` at ``X[:, feature] = value``.

    Every split on the feature is replaced by the branch ``value`` takes (partial
    evaluation); the other features keep their order. Exact: the trees reach the
    same leaves.
    """
    n = int(estimator.n_features_in_)
    if not 0 <= feature < n:
        raise ValueError(f"feature must be in [0, {n}), got {feature!r}")
    if hasattr(estimator, "feature_names_in_"):
        raise ValueError("fix_feature needs an estimator fitted on an array (no feature names)")
    new = copy.copy(estimator)
    trees = np.empty_like(estimator.estimators_)
    for idx, reg in np.ndenumerate(estimator.estimators_):
        r = copy.copy(reg)
        r.tree_ = _prune_tree(reg.tree_, feature, value)
        r.n_features_in_ = n - 1
        r.max_features_ = min(int(reg.max_features_), n - 1)
        trees[idx] = r
    new.estimators_ = trees
    new.n_features_in_ = n - 1
    new.max_features_ = min(int(estimator.max_features_), n - 1)
    return new


MAX_LISTED_MODELS = 10


def report_markdown(training: Mapping[str, Any], base: Any) -> str:
    """``report.md`` of a model trained from impressions (``training``: its metadata entry)."""
    where = f" in `{training['impressions']}`" if training.get("impressions") else ""
    base_rows = training.get("base_rows", 0)
    position = training["position_feature"]
    served = training.get("served_by_base", 0)
    lines = [
        "# Model trained from impressions",
        "",
        f"Training rows: {training['rows']:,} shown products from {training['requests']:,} "
        f"logged requests{where}: {training['positives']:,} shown and clicked (label 1) against "
        f"{training['rows'] - training['positives']:,} shown and not clicked (label 0)"
        + (
            f", plus {base_rows:,} page views of the base model's log at position 0"
            if base_rows
            else ""
        )
        + ".",
        "",
        f"Features: the base model's {len(base.builder.feature_names)} "
        f"(`{getattr(base, 'path', '?')}`: its catalog and vocabulary; it served {served:,} of "
        f"the logged requests) plus the position shown. Position was a training feature "
        f"(importance {position['importance']:.3f}) and is fixed at {position['fixed_at_serving']} "
        "(the first slot) at serving.",
        "",
    ]
    return "\n".join(lines)


def _served_by(impressions: Sequence[LoggedImpression], base: Any) -> dict[str, Any]:
    """Which models served the logged impressions, and whether ``base`` is one of them.

    Features are computed from the logged sessions with ``base``'s builder, so any
    ranking model of the schema can be the base; a base that served none of the
    log is legitimate (a model trained on another model's traffic) but worth a warning.
    """
    from reco_fast.errors import ArtifactError
    from reco_fast.serve.impressions import artifact_id

    ids = Counter(str(i.record.get("model_id")) for i in impressions)
    try:
        base_id: str | None = artifact_id(base)
    except ArtifactError:
        base_id = None
    if base_id is not None and base_id not in ids:
        log.warning(
            "the base model %s (%s) served none of the %d logged impressions; their features "
            "are computed with its catalog and vocabulary all the same",
            getattr(base, "path", "?"),
            base_id[:12],
            len(impressions),
        )
    return {
        "base_model_id": base_id,
        "served_by_base": ids.get(base_id, 0) if base_id is not None else 0,
        "log_model_ids": dict(ids.most_common(MAX_LISTED_MODELS)),
    }


def retrain(
    impressions: str | os.PathLike[str] | LogRead | Sequence[LoggedImpression],
    base: Any,
    out: str | os.PathLike[str],
    *,
    params: Mapping[str, Any] | None = None,
    window: float = DEFAULT_CLICK_WINDOW,
    threshold: float | None = None,
    base_log: Any = None,
) -> Any:
    """Train on logged impressions with the position as a feature, fix it at 0, compile to ``out``.

    Parameters
    ----------
    impressions : directory, LogRead or joined impressions
        The log (:func:`~reco_fast.serve.impressions.load_joined` is applied to a directory).
    base : Model
        The model whose features, vocabulary and catalog the new model uses
        (typically the one that served the logged traffic); a ranking model.
    out : path
        Artifact directory (written atomically by the compile path).
    params : mapping, optional
        GradientBoostingClassifier settings over the seed's (:data:`reco_fast.build.train.SEED_PARAMS`).
    threshold : float, optional
        The new artifact's threshold (default: the base model's).
    base_log : DataFrame or dict of columns, optional
        Page views in the seed's schema with ``recommendation_clicked`` (e.g. the
        base model's own training log), added as training rows at position 0.
        Without them the new model knows only the products the logging policy
        showed (its top candidates) and extrapolates to the rest of the catalog,
        which can rank products nobody ever showed above good ones.

    Returns
    -------
    Model
        The new artifact, loaded and verified.

    Raises
    ------
    InputError
        Nothing to train on, or only one class (no click, or only clicks).
    CompileError
        The partially evaluated forest differs from the trained one at position 0,
        or the compiled model differs from scikit-learn.
    """
    from reco_fast.build.train import fit
    from reco_fast.compiler.driver import compile_model
    from reco_fast.serve.model import write_catalog

    builder = base.builder
    if builder.feature_set not in FEATURE_SETS or not builder.ranks_products:
        raise ValueError(
            f"retraining from impressions needs a ranking model of the seed's schema, got "
            f"feature set {builder.feature_set!r}"
        )
    counts = None
    log_dir = str(impressions) if isinstance(impressions, (str, os.PathLike)) else None
    if isinstance(impressions, (str, os.PathLike, LogRead)):
        impressions, counts = load_joined(impressions, window)
    impressions = list(impressions)
    start = time.perf_counter()
    rows = training_rows(impressions, builder)
    served_by = _served_by(impressions, base)
    positives = int(rows.y.sum())
    if positives == 0 or positives == len(rows.y):
        raise InputError(
            f"the log's {len(rows.y)} shown products are all "
            f"{'not clicked' if positives == 0 else 'clicked'}; training needs both"
        )
    X_full = np.column_stack([rows.X, rows.position])
    y = rows.y
    n_base = 0
    if base_log is not None:
        columns = {c: np.asarray(base_log[c]) for c in (*builder.required_fields, LABEL)}
        X_base = builder.transform(columns)
        y_base = np.asarray(columns[LABEL], dtype=np.int64)
        n_base = len(y_base)
        X_full = np.vstack([X_full, np.column_stack([X_base, np.zeros(n_base)])])
        y = np.concatenate([y, y_base])
    log.info(
        "training on %d shown products (%d clicked)%s with the position as a feature",
        len(rows.y),
        positives,
        f" and {n_base} base page views" if n_base else "",
    )
    full, seconds = fit(X_full, y, dict(params or {}))
    served = fix_feature(full, X_full.shape[1] - 1, SERVING_POSITION)
    at_top = X_full.copy()
    at_top[:, -1] = SERVING_POSITION
    if not np.array_equal(served.predict_proba(X_full[:, :-1]), full.predict_proba(at_top)):
        raise CompileError("fixing the position feature changed the model's probabilities")
    importances = full.feature_importances_
    training = {
        "source": "impressions",
        "impressions": log_dir,
        "rows": len(rows.y),
        "positives": positives,
        "requests": len(set(rows.request_ids)),
        "base_rows": n_base,
        "labels": "shown and clicked (1) against shown and not clicked (0)",
        "position_feature": {
            "name": POSITION_FEATURE,
            "fixed_at_serving": SERVING_POSITION,
            "importance": float(importances[-1]),
        },
        "train_seconds": round(seconds, 2),
        **served_by,
        "log": counts,
    }

    def write_extra(staging: Path, staged: Any) -> None:
        write_catalog(builder.catalog, staging / CATALOG_FILE)
        (staging / "report.json").write_text(json.dumps({"training": training}, indent=2) + "\n")
        (staging / "report.md").write_text(report_markdown(training, base))

    verify_X = rows.X[:: max(1, len(rows.X) // 4000)]
    model = compile_model(
        served,
        Path(out),
        list(builder.feature_names),
        verify_X=verify_X,
        threshold=base.threshold if threshold is None else threshold,
        metadata={
            "feature_set": builder.feature_set,
            "vocabulary": builder.vocabulary.to_json(),
            "catalog": CATALOG_FILE,
            "data": {
                "source": "impressions" + (" + base log" if n_base else ""),
                "rows": len(rows.y) + n_base,
            },
            "training": {k: v for k, v in training.items() if k != "log"},
        },
        feature_set=builder.feature_set,
        write_extra=write_extra,
        builder=builder,
        sessions=rows.sessions[:256],
    )
    log.info("retrained and compiled %s in %.1f s", out, time.perf_counter() - start)
    return model
