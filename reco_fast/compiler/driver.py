"""Compile a fitted GradientBoostingClassifier into a verified artifact.

The stages follow lleaves: import (treelite reads the estimator), intermediate
form (treelite's model, from which tl2cgen emits C), code generation and build
(``_codegen``), then verification against the estimator's own
``predict_proba``. A build that differs from scikit-learn by more than 1e-12 on
any verification row raises :class:`CompileError` and writes nothing: treelite's
importer has mishandled estimator configurations before, and only a check on
real outputs can say it did not this time.
"""

from __future__ import annotations

import copy
import datetime as _dt
import itertools
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reco_fast import __version__
from reco_fast.artifact import (
    FORMAT_VERSION,
    build_lock,
    platform_tag,
    publish,
    recover,
    staging_dir,
    write_error,
    write_metadata,
)
from reco_fast.compiler.codegen import build_library, generate_c, module_name
from reco_fast.compiler.ir import UnsupportedForest, from_treelite
from reco_fast.errors import ArtifactError, CompileError

__all__ = ["TOLERANCE", "adversarial_inputs", "compile_model"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-12
N_GOLDEN = 64
N_GOLDEN_SESSIONS = 16
N_GOLDEN_RECOMMEND = 4
GOLDEN_K = 5
NEAR_TIE = 1e-9
"""Golden recommend cases avoid sessions whose top probabilities differ by less than this
(but are not equal): the compiled order must be scikit-learn's, whatever rounding."""


def check_estimator(estimator: Any) -> None:
    """Refuse, before any work, what the compiler cannot reproduce exactly."""
    try:
        from sklearn.dummy import DummyClassifier
        from sklearn.ensemble import GradientBoostingClassifier
    except ImportError as exc:  # pragma: no cover - build extra missing
        raise CompileError(
            "compiling needs the build extra: pip install 'reco_fast[build]'"
        ) from exc
    if not isinstance(estimator, GradientBoostingClassifier):
        raise CompileError(
            "reco_fast compiles sklearn.ensemble.GradientBoostingClassifier; "
            f"got {type(estimator).__module__}.{type(estimator).__name__}"
        )
    if not hasattr(estimator, "estimators_"):
        raise CompileError("the GradientBoostingClassifier is not fitted; call fit() first")
    if len(estimator.estimators_) == 0:
        raise CompileError("the GradientBoostingClassifier has no fitted trees")
    if len(estimator.classes_) != 2:
        raise CompileError(
            f"only binary classifiers are supported; this one has {len(estimator.classes_)} classes"
        )
    if getattr(estimator, "loss", "log_loss") != "log_loss":
        # treelite imports loss='exponential' with the log-loss link (sigmoid of the raw
        # score instead of expit(2 * raw)); verification catches it, this says why.
        raise CompileError(
            f"loss={estimator.loss!r} is not supported: treelite reproduces only loss='log_loss'"
        )
    init = estimator.init_
    if not (init == "zero" or (isinstance(init, DummyClassifier) and init.strategy == "prior")):
        raise CompileError(
            f"custom init estimators are not supported (init={init!r}); "
            "use init=None (the class prior) or init='zero'"
        )


def tree_thresholds(estimator: Any) -> list[np.ndarray]:
    """Per feature, every threshold the trees compare it with."""
    n = estimator.n_features_in_
    found: list[list[np.ndarray]] = [[] for _ in range(n)]
    for tree in estimator.estimators_[:, 0]:
        t = tree.tree_
        split = t.feature >= 0
        for f, thr in zip(t.feature[split], t.threshold[split], strict=True):
            found[f].append(thr)
    return [np.unique(np.asarray(v, dtype=np.float64)) for v in found]


def adversarial_inputs(estimator: Any, base: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows that sit on, and one ulp either side of, every threshold the trees use.

    Each value is tried as a float64 and as its float32 rounding and neighbours,
    plus a double whose low 32 bits are all ones (tl2cgen's missing marker).
    """
    rng = np.random.default_rng(seed)
    feats, values = [], []
    for f, thr in enumerate(tree_thresholds(estimator)):
        if thr.size == 0:
            continue
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
    if not feats:
        return base[:0]
    feat = np.concatenate(feats)
    val = np.concatenate(values)
    rows = base[rng.integers(0, len(base), size=feat.size)].copy()
    rows[np.arange(feat.size), feat] = val
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


def verify(estimator: Any, model: Any, X: np.ndarray) -> dict[str, float | int]:
    """Compare the compiled library with the estimator on X, both input precisions."""
    if len(X) == 0:  # trees without a single split have no adversarial rows
        return {"rows": 0, "max_abs_diff": 0.0}
    expected = estimator.predict_proba(X)[:, 1]
    X64 = np.ascontiguousarray(X, dtype=np.float64)
    got64 = model._predict_f64(X64)
    got32 = model._predict_f32(np.ascontiguousarray(X, dtype=np.float32))
    ones = np.asarray([model._one(row) for row in X64[:2000].tolist()])
    got32 = np.concatenate([got32, ones])
    expected32 = np.concatenate([expected, expected[:2000]])
    diff = float(
        max(
            np.max(np.abs(got64 - expected), initial=0.0),
            np.max(np.abs(got32 - expected32), initial=0.0),
        )
    )
    if not diff <= TOLERANCE:
        worst = int(np.argmax(np.abs(got64 - expected)))
        raise CompileError(
            f"compiled model differs from scikit-learn's predict_proba by {diff:.3g} "
            f"(> {TOLERANCE:g}); first worst row {worst}: sklearn {expected[worst]!r}, "
            f"compiled {got64[worst]!r} ({model.backend}). treelite/tl2cgen cannot reproduce this estimator "
            "configuration; nothing was written"
        )
    return {"rows": len(X), "max_abs_diff": diff}


def _ns_per_row(model: Any, X: np.ndarray, repeats: int = 5) -> float:
    """Best-of-n batch time per row: picks the default backend, so noise must not decide it."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model._predict_f64(X)
        best = min(best, time.perf_counter() - start)
    return best / max(len(X), 1) * 1e9


def _versions() -> dict[str, str]:
    import cffi
    import sklearn
    import tl2cgen
    import treelite

    return {
        "reco_fast": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "treelite": treelite.__version__,
        "tl2cgen": tl2cgen.__version__,
        "cffi": cffi.__version__,
    }


def fitted_view(estimator: Any) -> Any:
    """The estimator as scikit-learn predicts with it: ``n_estimators`` = the fitted trees.

    scikit-learn's ``predict_proba`` sums every tree in ``estimators_``, but treelite
    reads ``n_estimators`` trees from it: after early stopping (``n_iter_no_change``:
    fewer trees than ``n_estimators``) or ``set_params(n_estimators=...)`` on a fitted
    model the two differ, and treelite reads past the array (a segfault) or drops
    trees. A shallow copy with ``n_estimators`` set to ``len(estimators_)`` is
    compiled instead; the caller's estimator is not modified.
    """
    n_trees = len(estimator.estimators_)
    if estimator.n_estimators == n_trees:
        return estimator
    log.info(
        "compiling the %d fitted trees (n_estimators=%r: early stopping or set_params)",
        n_trees,
        estimator.n_estimators,
    )
    view = copy.copy(estimator)
    view.n_estimators = n_trees
    return view


def _import_treelite(estimator: Any) -> Any:
    import treelite

    try:
        return treelite.sklearn.import_model(fitted_view(estimator))
    except (NotImplementedError, treelite.TreeliteError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise CompileError(f"treelite cannot import this estimator: {message}") from exc


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def golden_sessions(
    estimator: Any, builder: Any, pool: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Golden raw sessions for an artifact: page views as dicts and scikit-learn's answers.

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

    def proba(batch: list[dict[str, Any]]) -> np.ndarray:
        columns = {f: np.asarray([s[f] for s in batch], dtype=object) for f in fields}
        return estimator.predict_proba(builder.transform(columns))[:, 1]

    out: dict[str, Any] = {"sessions": sessions, "proba": proba(sessions).tolist()}
    if not builder.ranks_products:
        return out
    ids = builder.catalog.product_ids.tolist()
    cases = []
    for s in rows:
        viewed = set(builder.viewed_ids(s))
        pool_pos = [i for i, p in enumerate(ids) if p not in viewed]
        if len(pool_pos) < 2:
            continue
        p_all = proba([{**s, "recommended_product_id": ids[i]} for i in pool_pos])
        order = sorted(range(len(pool_pos)), key=lambda j: (-p_all[j], pool_pos[j]))
        cart, top = order[0], order[1 : GOLDEN_K + 1]
        values = [float(p_all[j]) for j in order[: GOLDEN_K + 2]]
        if any(0.0 < a - b <= NEAR_TIE for a, b in itertools.pairwise(values)):
            continue
        values = values[1:]
        cases.append(
            {
                "session": {**s, "cart_product_ids": [ids[pool_pos[cart]]]},
                "k": GOLDEN_K,
                "threshold": 0.0,
                "product_ids": [ids[pool_pos[j]] for j in top[:GOLDEN_K]],
                "proba": values[:GOLDEN_K],
            }
        )
        if len(cases) == N_GOLDEN_RECOMMEND:
            break
    if not cases:
        raise CompileError("no session gives a top-k list free of near ties for golden outputs")
    out["recommend"] = cases
    return out


def compile_model(
    estimator: Any,
    out_dir: str | Path,
    feature_names: Sequence[str] | None = None,
    *,
    verify_X: np.ndarray | None = None,
    threshold: float = 0.7,
    metadata: dict[str, Any] | None = None,
    feature_set: str | None = None,
    write_extra: Callable[[Path, Any], None] | None = None,
    builder: Any = None,
    sessions: Sequence[Mapping[str, Any]] | None = None,
) -> Any:
    """Compile, verify and write an artifact for a fitted binary GradientBoostingClassifier.

    ``verify_X`` (rows in feature order) is checked along with adversarial rows
    built from the model's thresholds; without it, rows are synthesised from the
    thresholds. ``feature_set`` (the build pipeline's) adds a C kernel that
    scores one page view from its raw numbers. ``metadata`` and ``write_extra(staging_dir, staged_model)`` let
    the build pipeline add its feature spec, catalog and report to the same
    atomic write.

    ``feature_set`` needs ``builder`` (the build's :class:`~reco_fast.features.page.FeatureBuilder`)
    and ``sessions`` (raw page views, e.g. the test split's rows): golden raw sessions
    (:func:`golden_sessions`) are recorded and checked at every load, with the feature
    specification (names, order, :func:`~reco_fast.features.page.definition_sha256`).
    The staged artifact is loaded with every load-time check before it is published.
    """
    from reco_fast.features.page import FEATURE_SETS, definition_sha256, spec_for
    from reco_fast.serve.model import Model

    check_estimator(estimator)
    n_features = int(estimator.n_features_in_)
    if feature_names is None:
        names_in = getattr(estimator, "feature_names_in_", None)
        feature_names = (
            list(map(str, names_in))
            if names_in is not None
            else [f"f{i}" for i in range(n_features)]
        )
    feature_names = [str(f) for f in feature_names]
    if len(feature_names) != n_features:
        raise CompileError(
            f"{len(feature_names)} feature names given, but the model has {n_features} features"
        )
    if len(set(feature_names)) != n_features:
        raise CompileError("feature names must be unique")
    if not 0.0 <= threshold <= 1.0:
        raise CompileError(f"threshold must be in [0, 1], got {threshold!r}")
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
    base = (
        synthetic_inputs(estimator)
        if verify_X is None
        else np.asarray(verify_X, dtype=np.float64).reshape(-1, n_features)
    )
    if not np.all(np.isfinite(base)):
        raise CompileError("verify_X must be finite")

    try:
        with build_lock(out_dir):
            stale = recover(out_dir)  # left by killed builds; none can be running
            if stale:
                log.info("removed %d stale staging directories", len(stale))
            staging = staging_dir(out_dir)
            try:
                log.info("importing the estimator into treelite")
                tl_model = _import_treelite(estimator)
                try:
                    forest = from_treelite(tl_model)
                except UnsupportedForest as exc:
                    log.warning(
                        "flat evaluator not generated (%s); serving with tl2cgen's code", exc
                    )
                    forest = None
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
                )
                log.info("compiling the C library with cffi")
                lib_path = build_library(sources, work, staging)
                for name in sources:
                    shutil.copyfile(work / name, staging / name)
                shutil.rmtree(work)

                model = Model._from_library(staging, lib_path, module_name(sources), feature_names)
                log.info("verifying every backend against scikit-learn")
                adversarial = adversarial_inputs(estimator, base)
                checks = {}
                for name in model.available_backends():
                    backend = model.using(name)
                    checks[name] = {
                        "test": verify(estimator, backend, base),
                        "adversarial": verify(estimator, backend, adversarial),
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
                golden_X = np.concatenate([base[: N_GOLDEN // 2], adversarial[: N_GOLDEN // 2]])
                golden_p = estimator.predict_proba(golden_X)[:, 1]
                if feature_set is None:
                    golden_s = None
                elif feature_set in FEATURE_SETS:
                    golden_s = golden_sessions(estimator, builder, sessions or ())
                else:  # an event-trained model builds its own (reco_fast.features.events)
                    golden_s = builder.golden_sessions(
                        lambda X: estimator.predict_proba(X)[:, 1],
                        list(sessions or ()),
                        N_GOLDEN_SESSIONS,
                        N_GOLDEN_RECOMMEND,
                        GOLDEN_K,
                    )

                meta: dict[str, Any] = {
                    "format": "reco_fast",
                    "format_version": FORMAT_VERSION,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "library": lib_path.name,
                    "module": module_name(sources),
                    "feature_names": feature_names,
                    "feature_set": None,
                    "threshold": float(threshold),
                    "estimator": {
                        k: v
                        for k, v in estimator.get_params().items()
                        if isinstance(v, (int, float, str, bool, type(None)))
                    },
                    "n_trees": len(estimator.estimators_),
                    "backend": default,
                    "backends": {name: {"ns_per_row": timings[name]} for name in checks},
                    "versions": _versions(),
                    "platform": platform_tag(),
                    "verification": {
                        "tolerance": TOLERANCE,
                        "backends": sorted(checks),
                        "rows": report_base["rows"],
                        "max_abs_diff": report_base["max_abs_diff"],
                        "adversarial_rows": report_adv["rows"],
                        "adversarial_max_abs_diff": report_adv["max_abs_diff"],
                    },
                    "golden": {"X": golden_X.tolist(), "proba": golden_p.tolist()},
                }
                meta.update(metadata or {})
                # what load checks is set here, after the caller's metadata
                meta.update(
                    feature_names=feature_names,
                    feature_set=feature_set,
                    feature_spec=feature_spec,
                    format_version=FORMAT_VERSION,
                )
                if golden_s is not None:
                    meta["golden_sessions"] = golden_s
                if write_extra is not None:
                    write_extra(staging, model)
                write_metadata(staging, meta)
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
