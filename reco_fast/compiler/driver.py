"""Compile a fitted tree ensemble into a verified artifact.

The stages follow lleaves: import (a front end per library, :mod:`reco_fast.compiler.frontends`,
reads the estimator into treelite's model), intermediate form (treelite's model, from
which ``_ir`` builds the flat evaluator's arrays and tl2cgen emits C), code generation
and build (``codegen``), then verification against the library's own predictions
(margin and output). A build that differs from them by more than the front end's
tolerance (1e-12 for scikit-learn and LightGBM) on any verification row raises
:class:`CompileError` and writes nothing: treelite's importers have mishandled
estimator configurations before, and only a check on real outputs can say they did not
this time.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reco_fast import __version__
from reco_fast.artifact import (
    FORMAT_VERSION,
    UNCALIBRATED_FORMAT_VERSION,
    build_lock,
    platform_tag,
    publish,
    recover,
    staging_dir,
    write_error,
    write_metadata,
)
from reco_fast.compiler.codegen import build_library, generate_c, module_name
from reco_fast.compiler.frontends import Imported, import_estimator, with_summation_bound
from reco_fast.compiler.frontends.sklearn_gbc import check_estimator, fitted_view
from reco_fast.compiler.ir import (
    Forest,
    SparseForest,
    TooDeep,
    UnsupportedForest,
    from_treelite,
    model_json,
    sparse_from_treelite,
    thresholds_by_feature,
)
from reco_fast.errors import ArtifactError, CompileError
from reco_fast.metadata import FORMAT_NAME, ArtifactMetadata
from reco_fast.serve.calibration import Calibration

__all__ = ["TOLERANCE", "adversarial_inputs", "check_estimator", "compile_model", "fitted_view"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-12
N_GOLDEN = 64
N_GOLDEN_SESSIONS = 16
N_GOLDEN_RECOMMEND = 4
GOLDEN_K = 5
NEAR_TIE = 1e-9
"""Golden recommend cases avoid sessions whose top probabilities differ by less than this
(but are not equal): the compiled order must be scikit-learn's, whatever rounding."""


def tree_thresholds(estimator: Any) -> list[np.ndarray]:
    """Per feature, every threshold the trees compare it with.

    ``estimator`` is a fitted scikit-learn ``GradientBoosting*`` (its ``estimators_``),
    or a list of per-feature threshold arrays, returned as they are.
    """
    if isinstance(estimator, list):
        return estimator
    n = estimator.n_features_in_
    found: list[list[np.ndarray]] = [[] for _ in range(n)]
    for tree in estimator.estimators_[:, 0]:
        t = tree.tree_
        split = t.feature >= 0
        for f, thr in zip(t.feature[split], t.threshold[split], strict=True):
            found[f].append(thr)
    return [np.unique(np.asarray(v, dtype=np.float64)) for v in found]


MAX_ADVERSARIAL_ROWS = 100_000
"""Above this many threshold rows (7 per threshold, one feature changed per row), the
values are packed: every feature of a row takes one of its own candidate values, so each
threshold is still tried on, and one ulp either side of, its value, in fewer rows (a
500-tree, depth-10 model: 130,000 thresholds in about 60,000 rows instead of 910,000).
Only if one feature alone has more candidates than this are they sampled."""


def adversarial_inputs(
    estimator: Any,
    base: np.ndarray,
    seed: int = 0,
    *,
    nan: bool = False,
    max_rows: int = MAX_ADVERSARIAL_ROWS,
) -> np.ndarray:
    """Rows that sit on, and one ulp either side of, every threshold the trees use.

    ``estimator`` is a fitted scikit-learn ``GradientBoosting*`` or per-feature
    thresholds (:func:`tree_thresholds`). Each value is tried as a float64 and as its
    float32 rounding and neighbours, plus a double whose low 32 bits are all ones
    (tl2cgen's old missing marker). With ``nan`` (models that route missing values),
    rows with NaN in each split feature, in every feature, and in a random third of
    the features follow. More than ``max_rows`` threshold rows: packed
    (:data:`MAX_ADVERSARIAL_ROWS`).
    """
    rng = np.random.default_rng(seed)
    thresholds = tree_thresholds(estimator)
    packed = 7 * sum(t.size for t in thresholds) > max_rows
    feats, values = [], []
    for f, thr in enumerate(thresholds):
        if thr.size == 0:
            continue
        if packed and 7 * thr.size > max_rows:
            log.info("adversarial rows: a sample of feature %d's %d thresholds", f, thr.size)
            thr = thr[rng.random(thr.size) < max_rows / (7 * thr.size)]
        t32 = thr.astype(np.float32)
        ones = (thr.view(np.uint64) | np.uint64(0xFFFFFFFF)).view(np.float64)
        cand = np.concatenate(
            [
                thr,
                np.nextafter(thr, -np.inf),
                np.nextafter(thr, np.inf),
                t32.astype(np.float64),
                np.nextafter(t32, np.float32(-np.inf)).astype(np.float64),
                np.nextafter(t32, np.float32(np.inf)).astype(np.float64),
                ones,
            ]
        )
        cand = cand[np.isfinite(cand) & (np.abs(cand) <= np.finfo(np.float32).max)]
        feats.append(np.full(cand.size, f))
        values.append(cand)
    if len(base) == 0:
        return base[:0]
    rows = base[:0]
    if feats and packed:
        n_rows = max(v.size for v in values)
        log.info(
            "adversarial rows: %d threshold values packed into %d rows",
            sum(v.size for v in values),
            n_rows,
        )
        rows = base[rng.integers(0, len(base), size=n_rows)].copy()
        for feat, val in zip(feats, values, strict=True):
            rows[:, feat[0]] = np.resize(rng.permutation(val), n_rows)
    elif feats:
        feat = np.concatenate(feats)
        val = np.concatenate(values)
        rows = base[rng.integers(0, len(base), size=feat.size)].copy()
        rows[np.arange(feat.size), feat] = val
    if nan:
        split = [f for f, t in enumerate(thresholds) if t.size]
        one_nan = base[rng.integers(0, len(base), size=4 * len(split))].copy()
        one_nan[np.arange(one_nan.shape[0]), np.repeat(split, 4)] = np.nan
        some_nan = base[rng.integers(0, len(base), size=min(2000, 4 * len(base)))].copy()
        some_nan[rng.random(some_nan.shape) < 1 / 3] = np.nan
        all_nan = np.full((1, base.shape[1]), np.nan)
        rows = np.concatenate([rows, one_nan, all_nan, some_nan])
    return rows


def synthetic_inputs(estimator: Any, n_rows: int = 2000, seed: int = 0) -> np.ndarray:
    """Rows spread over every feature's split range, for models compiled without data."""
    rng = np.random.default_rng(seed)
    cols = []
    for thr in tree_thresholds(estimator):
        if thr.size == 0:
            cols.append(np.zeros(n_rows))
            continue
        lo, hi = float(thr.min()), float(thr.max())
        pad = max(hi - lo, 1.0) * 0.25
        cols.append(rng.uniform(lo - pad, hi + pad, size=n_rows))
    return np.column_stack(cols).astype(np.float32).astype(np.float64)


def _max_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest |got - expected|; a NaN on either side (and not both) is infinite."""
    diff = np.abs(got - expected)
    diff[np.isnan(got) != np.isnan(expected)] = np.inf
    return float(np.max(np.nan_to_num(diff, nan=0.0), initial=0.0))


def verify(imported: Imported, model: Any, X: np.ndarray) -> dict[str, float | int]:
    """Compare the compiled library with the library's own predictions on X.

    Every entry point: batch float64 and float32 rows, single rows, for the output
    (probability, score or value) and the margin. float32 rows are what the model sees
    after rounding X; for float64-precision models the reference is asked about those
    rounded rows too.
    """
    if len(X) == 0:  # trees without a single split have no adversarial rows
        return {"rows": 0, "max_abs_diff": 0.0, "margin_max_abs_diff": 0.0}
    X64 = np.ascontiguousarray(X, dtype=np.float64)
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    margin, expected = imported.reference(X64)
    if imported.input_precision == "float64":
        margin32, expected32 = imported.reference(X32.astype(np.float64))
    else:
        margin32, expected32 = margin, expected
    head = X64[:2000].tolist()
    got = {
        "output": [
            (model._predict_f64(X64), expected),
            (model._predict_f32(X32), expected32),
            (np.asarray([model._one(row) for row in head]), expected[:2000]),
        ],
        "margin": [
            (model._margin_f64(X64), margin),
            (model._margin_f32(X32), margin32),
            (np.asarray([model._margin_one(row) for row in head]), margin[:2000]),
        ],
    }
    diffs = {k: max(_max_diff(g, e) for g, e in pairs) for k, pairs in got.items()}
    limits = {"output": imported.output_tolerance, "margin": imported.tolerance}
    for kind in ("output", "margin"):
        if not diffs[kind] <= limits[kind]:
            g, e = got[kind][0]
            worst = int(np.argmax(np.nan_to_num(np.abs(g - e), nan=np.inf)))
            what = "" if kind == "output" else " (the raw margin)"
            raise CompileError(
                f"compiled model differs from {imported.reference_name}{what} by "
                f"{diffs[kind]:.3g} (> {limits[kind]:g}); first worst row {worst}: "
                f"{imported.family} {e[worst]!r}, compiled {g[worst]!r} ({model.backend}). "
                "treelite/tl2cgen cannot reproduce this estimator configuration; nothing "
                "was written"
            )
    return {
        "rows": len(X),
        "max_abs_diff": diffs["output"],
        "margin_max_abs_diff": diffs["margin"],
    }


def _ns_per_row(model: Any, X: np.ndarray, repeats: int = 5) -> float:
    """Best-of-n batch time per row: picks the default backend, so noise must not decide it."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model._predict_f64(X)
        best = min(best, time.perf_counter() - start)
    return best / max(len(X), 1) * 1e9


def _versions(family: str = "sklearn-gb") -> dict[str, str]:
    import cffi
    import sklearn
    import tl2cgen
    import treelite

    out = {
        "reco_fast": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "treelite": treelite.__version__,
        "tl2cgen": tl2cgen.__version__,
        "cffi": cffi.__version__,
    }
    if family in ("xgboost", "lightgbm"):
        import importlib

        out[family] = importlib.import_module(family).__version__
    return out


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def golden_sessions(
    estimator: Any, builder: Any, pool: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Golden raw sessions for an artifact: page views as dicts and scikit-learn's answers.

    ``estimator`` is a fitted classifier, or a function of a feature matrix giving the
    probabilities (a front end's reference output).

    ``pool`` holds candidate sessions (e.g. the test split's rows as dicts; fields
    beyond the builder's required ones are dropped). The first
    ``N_GOLDEN_SESSIONS``, plus one whose recommended product was already viewed and
    one without previous products when the pool has them, are recorded with
    ``estimator.predict_proba`` of the features this build computes from them. For
    the ranking set, up to ``N_GOLDEN_RECOMMEND`` recommend cases: the session with
    its best product put in the cart (so the in-cart exclusion changes the answer),
    ``k=GOLDEN_K``, ``threshold=0`` and scikit-learn's top k over the rest of the
    catalog, viewed products excluded, ties by catalog order.

    Returns
    -------
    dict
        ``{"sessions": [dict], "proba": [float], "recommend": [case]}`` (JSON-native).

    Raises
    ------
    CompileError
        The pool is empty, or (ranking) no session has a top k free of near ties.
    """
    from reco_fast.features.page import NONE_PRODUCT

    fields = builder.required_fields
    rows = [{f: _native(s[f]) for f in fields} for s in pool]
    if not rows:
        raise CompileError("golden sessions need at least one session")
    picked = list(range(min(N_GOLDEN_SESSIONS, len(rows))))
    extra = []
    if builder.ranks_products:
        extra.append(
            next(
                (
                    i
                    for i, s in enumerate(rows)
                    if s["recommended_product_id"] in builder.viewed_ids(s)
                ),
                None,
            )
        )
        extra.append(
            next((i for i, s in enumerate(rows) if s["prev_product_1"] == NONE_PRODUCT), None)
        )
    picked += [i for i in extra if i is not None and i not in picked]
    sessions = [rows[i] for i in picked]

    predict = (
        estimator
        if callable(estimator) and not hasattr(estimator, "predict_proba")
        else (lambda X: estimator.predict_proba(X)[:, 1])
    )

    def proba(batch: list[dict[str, Any]]) -> np.ndarray:
        columns = {f: np.asarray([s[f] for s in batch], dtype=object) for f in fields}
        return predict(builder.transform(columns))

    out: dict[str, Any] = {"sessions": sessions, "proba": proba(sessions).tolist()}
    if not builder.ranks_products:
        return out
    ids = builder.catalog.product_ids.tolist()

    def candidates() -> Iterator[tuple[dict[str, Any], list[float]]]:
        for s in rows:
            viewed = set(builder.viewed_ids(s))
            pool_pos = [i for i, p in enumerate(ids) if p not in viewed]
            if len(pool_pos) < 2:
                continue
            p_all = proba([{**s, "recommended_product_id": ids[i]} for i in pool_pos])
            order = sorted(range(len(pool_pos)), key=lambda j: (-p_all[j], pool_pos[j]))
            cart, top = order[0], order[1 : GOLDEN_K + 1]
            values = [float(p_all[j]) for j in order[: GOLDEN_K + 2]]
            case = {
                "session": {**s, "cart_product_ids": [ids[pool_pos[cart]]]},
                "k": GOLDEN_K,
                "threshold": 0.0,
                "product_ids": [ids[pool_pos[j]] for j in top],
                "proba": values[1 : GOLDEN_K + 1],
            }
            yield case, values  # the carted best and one beyond the k must not tie either

    out["recommend"] = golden_recommend_cases(candidates())
    return out


def golden_recommend_cases(
    candidates: Iterable[tuple[dict[str, Any], list[float]]],
) -> list[dict[str, Any]]:
    """The first ``N_GOLDEN_RECOMMEND`` recommend cases whose ordered probabilities
    (the second item, best first) hold no near tie (:data:`NEAR_TIE`).

    Parameters
    ----------
    candidates : iterable of (dict, list of float)
        Each a recommend case (JSON-native: ``session``, ``k``, ``threshold``,
        ``product_ids``, ``proba``) and the reference probabilities that must be told
        apart for the compiled order to be the reference's.

    Returns
    -------
    list of dict
        1 to ``N_GOLDEN_RECOMMEND`` cases.

    Raises
    ------
    CompileError
        Every candidate has a near tie, or there is none.
    """
    cases = []
    for case, values in candidates:
        if any(0.0 < a - b <= NEAR_TIE for a, b in itertools.pairwise(values)):
            continue
        cases.append(case)
        if len(cases) == N_GOLDEN_RECOMMEND:
            return cases
    if not cases:
        raise CompileError("no session gives a top-k list free of near ties for golden outputs")
    return cases


def compile_model(
    estimator: Any,
    out_dir: str | Path,
    feature_names: Sequence[str] | None = None,
    *,
    verify_X: np.ndarray | None = None,
    threshold: float = 0.7,
    metadata: dict[str, Any] | None = None,
    feature_set: str | None = None,
    write_extra: Callable[[Path, Any], Mapping[str, Any] | None] | None = None,
    builder: Any = None,
    sessions: Sequence[Mapping[str, Any]] | None = None,
    calibrated: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Any:
    """Compile, verify and write an artifact for a fitted tree ensemble.

    ``estimator``: scikit-learn's ``GradientBoostingClassifier`` (binary) /
    ``GradientBoostingRegressor`` / ``HistGradientBoostingClassifier`` (binary) /
    ``HistGradientBoostingRegressor``, XGBoost's ``XGBClassifier`` / ``XGBRanker`` /
    ``XGBRegressor`` / ``Booster``, or LightGBM's ``LGBMClassifier`` / ``LGBMRanker`` /
    ``LGBMRegressor`` / ``Booster`` (:mod:`reco_fast.compiler.frontends` says what each accepts).
    Every backend is verified against the library's own margin and output on
    ``verify_X`` and adversarial rows; the artifact's metadata records the family,
    objective, ``output`` ("probability", "score" or "value"), ``missing_values``
    ("routed": NaN is a valid input; "refused") and which backend serves.
    ``threshold`` applies to probabilities only (rankers and regressors record none).

    ``verify_X`` (rows in feature order) is checked along with adversarial rows
    built from the model's thresholds; without it, rows are synthesised from the
    thresholds. ``feature_set`` (the build pipeline's) adds a C kernel that
    scores one page view from its raw numbers. ``metadata`` and ``write_extra(staging_dir, staged_model)`` let
    the build pipeline add its feature spec, catalog and report to the same
    atomic write: ``metadata``'s keys are :class:`~reco_fast.metadata.ArtifactMetadata`
    fields (checked like the compiler's own; a missing or ill-typed one is a
    :class:`CompileError` naming it) or other keys, kept as they are.

    ``feature_set`` needs ``builder`` (the build's :class:`~reco_fast.features.page.FeatureBuilder`)
    and ``sessions`` (raw page views, e.g. the test split's rows): golden raw sessions
    (:func:`golden_sessions`) are recorded and checked at every load, with the feature
    specification (names, order, :func:`~reco_fast.features.page.definition_sha256`).
    The staged artifact is loaded with every load-time check before it is published.

    ``calibrated`` goes with a ``metadata["calibration"]`` entry
    (:class:`reco_fast.serve.calibration.Calibration`): scikit-learn's calibrated
    probabilities of a feature matrix (``CalibratedClassifierCV.predict_proba(X)[:, 1]``).
    The compiled library is verified against the estimator itself, margin and output;
    the golden probabilities (rows, sessions, recommend) are then the calibrated ones,
    so every load checks the served probabilities against scikit-learn's calibrator.
    ``write_extra`` gets the staged model with its calibration and may return metadata
    updates (the pipeline's threshold, chosen on the calibrated model).
    """
    from reco_fast.features.page import FEATURE_SETS, definition_sha256, spec_for
    from reco_fast.serve.model import Model

    imported = import_estimator(estimator)
    n_features = imported.n_features
    if feature_names is None:
        feature_names = imported.feature_names or [f"f{i}" for i in range(n_features)]
    feature_names = [str(f) for f in feature_names]
    if len(feature_names) != n_features:
        raise CompileError(
            f"{len(feature_names)} feature names given, but the model has {n_features} features"
        )
    if len(set(feature_names)) != n_features:
        raise CompileError("feature names must be unique")
    probability = imported.output == "probability"
    calibration = Calibration.from_json((metadata or {}).get("calibration"))
    if (calibration is None) != (calibrated is None) or (calibrated and not probability):
        raise CompileError(
            "calibrated= (scikit-learn's calibrated predict_proba) and metadata['calibration'] "
            "go together, for a binary classifier"
        )
    if probability and not 0.0 <= threshold <= 1.0:
        raise CompileError(f"threshold must be in [0, 1], got {threshold!r}")
    # a page-view feature set's compiled recommend shows products by probability; an
    # event-log feature set ranks with a classifier's probability or a ranker's score
    ranker_ok = imported.output == "score" and feature_set not in FEATURE_SETS
    if feature_set is not None and not probability and not ranker_ok:
        raise CompileError(
            f"feature_set={feature_set!r} needs a binary classifier (recommend shows "
            f"products by probability); this {imported.family} model gives a "
            f"{imported.output}: compile it without a feature set and use decision_function"
        )
    if feature_set is not None:
        fs = spec_for(feature_set)
        if fs is None or list(fs.names) != feature_names:
            raise CompileError(
                f"feature_set={feature_set!r} needs exactly its features in order: "
                f"{list(fs.names if fs else ())[:3]}..."
            )
        if builder is None or builder.feature_set != feature_set or not sessions:
            raise CompileError(
                "feature_set needs its FeatureBuilder (builder=) and raw sessions (sessions=) "
                "for the golden sessions checked at every load"
            )
    feature_spec = {
        "feature_set": feature_set,
        "names": feature_names,
        "definition_sha256": None if feature_set is None else definition_sha256(feature_set),
    }

    out_dir = Path(os.path.abspath(out_dir))  # the build never depends on the cwd
    tl_model = imported.treelite_model
    tl_json = model_json(tl_model)
    imported = with_summation_bound(imported, tl_json)
    thresholds = thresholds_by_feature(tl_json)
    routed = imported.missing_values == "routed"
    base = (
        synthetic_inputs(thresholds)
        if verify_X is None
        else np.asarray(verify_X, dtype=np.float64).reshape(-1, n_features)
    )
    if not np.all(np.isfinite(base) | (routed & np.isnan(base))):
        raise CompileError(
            "verify_X must be finite"
            + (" (NaN allowed: this model routes missing values)" if routed else "")
        )

    try:
        with build_lock(out_dir):
            stale = recover(out_dir)  # left by killed builds; none can be running
            if stale:
                log.info("removed %d stale staging directories", len(stale))
            staging = staging_dir(out_dir)
            try:
                forest: Forest | SparseForest | None = None
                flat_note = "generated"
                try:
                    try:
                        forest = from_treelite(
                            tl_model,
                            tl_json,
                            nan_routed=routed,
                            precision=imported.input_precision,
                            zero_snap=imported.zero_snap,
                        )
                    except TooDeep:
                        if imported.input_precision != "float64":
                            raise
                        # deeper float64 trees: walked as they are, not padded
                        forest = sparse_from_treelite(
                            tl_model, tl_json, nan_routed=routed, zero_snap=imported.zero_snap
                        )
                except UnsupportedForest as exc:
                    flat_note = f"not generated: {exc}"
                    log.info("flat evaluator not generated (%s); serving with tl2cgen's code", exc)
                work = Path(tempfile.mkdtemp(prefix="build-", dir=staging))
                log.info(
                    "generating C: tl2cgen's reference code%s",
                    " and the flat evaluator" if forest is not None else "",
                )
                sources = generate_c(
                    tl_model,
                    n_features,
                    work,
                    forest,
                    feature_set if feature_set in FEATURE_SETS else None,  # C session kernel
                    input_precision=imported.input_precision,
                    missing_values=imported.missing_values,
                    n_nodes=sum(len(t["nodes"]) for t in tl_json["trees"]),
                    zero_snap=imported.zero_snap,
                )
                log.info("compiling the C library with cffi")
                lib_path = build_library(sources, work, staging)
                for name in sources:
                    shutil.copyfile(work / name, staging / name)
                shutil.rmtree(work)

                model = Model._from_library(staging, lib_path, module_name(sources), feature_names)
                log.info("verifying every backend against %s", imported.reference_name)
                adversarial = adversarial_inputs(thresholds, base, nan=routed)
                checks = {}
                for name in model.available_backends():
                    log.info(
                        "verifying %s: %d test rows, %d adversarial rows",
                        name,
                        len(base),
                        len(adversarial),
                    )
                    backend = model.using(name)
                    checks[name] = {
                        "test": verify(imported, backend, base),
                        "adversarial": verify(imported, backend, adversarial),
                    }
                report_base = max(
                    (c["test"] for c in checks.values()), key=lambda r: r["max_abs_diff"]
                )
                report_adv = max(
                    (c["adversarial"] for c in checks.values()), key=lambda r: r["max_abs_diff"]
                )
                timings = {name: _ns_per_row(model.using(name), base) for name in checks}
                default = (
                    "flat"
                    if forest is not None and min(timings, key=timings.__getitem__) != "tl2cgen"
                    else "tl2cgen"
                )
                model = model.using(default)
                parts = [base[: N_GOLDEN // 2], adversarial[: N_GOLDEN // 2 - 4 * routed]]
                if routed:  # rows with NaN, routed as learned, among the golden rows
                    parts.append(adversarial[np.isnan(adversarial).any(axis=1)][-4:])
                golden_X = np.concatenate(parts)
                golden_m, golden_p = imported.reference(golden_X)
                if calibrated is not None:  # the served probability: the calibrator's
                    golden_p = np.asarray(calibrated(golden_X), dtype=np.float64)

                def reference_output(X: np.ndarray) -> np.ndarray:
                    if calibrated is not None:
                        return np.asarray(calibrated(X), dtype=np.float64)
                    return imported.reference(X)[1]

                if feature_set is None:
                    golden_s = None
                elif feature_set in FEATURE_SETS:
                    golden_s = golden_sessions(reference_output, builder, sessions or ())
                else:  # an event-trained model builds its own (reco_fast.features.events)
                    pool = list(sessions or ())
                    golden_s = builder.golden_sessions(reference_output, pool, N_GOLDEN_SESSIONS)
                    golden_s["recommend"] = golden_recommend_cases(
                        builder.recommend_cases(
                            reference_output,
                            pool,
                            GOLDEN_K,
                            threshold=0.0 if probability else None,  # a ranker's: none
                        )
                    )

                meta: dict[str, Any] = {
                    "format": FORMAT_NAME,
                    "format_version": UNCALIBRATED_FORMAT_VERSION,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "library": lib_path.name,
                    "module": module_name(sources),
                    "feature_names": feature_names,
                    "feature_set": None,
                    "threshold": float(threshold) if probability else None,
                    "family": imported.family,
                    "objective": imported.objective,
                    "output": imported.output,
                    "link": imported.link,
                    "input_precision": imported.input_precision,
                    "missing_values": imported.missing_values,
                    "estimator": imported.params,
                    "n_trees": imported.n_trees,
                    "backend": default,
                    "flat_evaluator": flat_note,
                    "backends": {name: {"ns_per_row": timings[name]} for name in checks},
                    "versions": _versions(imported.family),
                    "platform": platform_tag(),
                    "verification": {
                        "reference": imported.reference_name,
                        "tolerance": imported.output_tolerance,
                        "margin_tolerance": imported.tolerance,
                        "tolerance_note": imported.tolerance_note,
                        "backends": sorted(checks),
                        "rows": report_base["rows"],
                        "max_abs_diff": report_base["max_abs_diff"],
                        "margin_max_abs_diff": max(
                            c["test"]["margin_max_abs_diff"] for c in checks.values()
                        ),
                        "adversarial_rows": report_adv["rows"],
                        "adversarial_max_abs_diff": report_adv["max_abs_diff"],
                        "adversarial_margin_max_abs_diff": max(
                            c["adversarial"]["margin_max_abs_diff"] for c in checks.values()
                        ),
                    },
                    "golden": {
                        # JSON has no NaN: a missing value is null
                        "X": [[None if v != v else v for v in row] for row in golden_X.tolist()],
                        "proba": golden_p.tolist(),
                        "margin": golden_m.tolist(),
                    },
                }
                meta.update(metadata or {})
                # what load checks is set here, after the caller's metadata
                meta.update(
                    feature_names=feature_names,
                    feature_set=feature_set,
                    feature_spec=feature_spec,
                    format_version=UNCALIBRATED_FORMAT_VERSION,
                )
                if golden_s is not None:
                    meta["golden_sessions"] = golden_s
                if calibration is not None:
                    # readers of format 3 would serve the uncalibrated probabilities
                    meta["format_version"] = FORMAT_VERSION
                    model = model._with_calibration(calibration)

                def typed_metadata() -> ArtifactMetadata:
                    try:  # the one definition of the fields: a bad caller's field is named
                        return ArtifactMetadata.from_json(
                            meta, "compile_model's metadata", sealed=False
                        )
                    except ArtifactError as exc:
                        raise CompileError(
                            str(exc).removesuffix("; rebuild the artifact")
                        ) from None

                typed = typed_metadata()
                if write_extra is not None:
                    updates = write_extra(staging, model)
                    if updates:  # the pipeline's threshold, chosen on the staged model
                        meta.update(updates)
                        t = meta.get("threshold")
                        if probability and not (isinstance(t, float) and 0.0 <= t <= 1.0):
                            raise CompileError(f"threshold must be in [0, 1], got {t!r:.40}")
                        typed = typed_metadata()
                write_metadata(staging, typed)
                try:  # every load-time check, before anything is published
                    Model.load(staging)
                except ArtifactError as exc:
                    raise CompileError(
                        f"the new artifact fails its own load checks; nothing was written: {exc}"
                    ) from exc
                publish(staging, out_dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            log.info("wrote %s", out_dir)
            return Model.load(out_dir)  # under the lock: this build's artifact
    except OSError as exc:  # disk full, read-only or vanished output directory
        raise write_error(out_dir, exc) from exc
