"""The serving side: load a verified artifact and score page views.

Needs numpy and cffi only. The compiled entry points are called through cffi's
API mode, which releases the GIL for the duration of each call, so batches can
be split across threads. Every shape and dtype is validated here, in Python,
before any pointer reaches C; batch values are checked by the compiled loops as
they convert them (finite, within float32), which costs no extra pass.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.machinery
import importlib.util
import io
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reco_fast.artifact import platform_tag, read_artifact
from reco_fast.errors import ArtifactError, InputError, shown
from reco_fast.features import spec as _spec
from reco_fast.features.events import EventBuilder
from reco_fast.features.page import (
    CANDIDATE_FEATURES,
    FEATURE_SETS,
    Catalog,
    FeatureBuilder,
    Vocabulary,
    definition_sha256,
    spec_for,
)
from reco_fast.features.schema import (
    FLOAT32_MAX,
    INT_EXACT,
    RowError,
    RowErrors,
    as_float_array,
    as_number,
    is_scalar,
    nan_ok_for,
    not_a_number,
    series_values,
)
from reco_fast.metadata import ArtifactMetadata
from reco_fast.serve.calibration import Calibration
from reco_fast.serve.calibration import top_k as calibrated_top_k
from reco_fast.serve.cells import CELLS_MIN_PRODUCTS, CellIndex, cell_index
from reco_fast.serve.recommend import EXCLUDABLE, Recommendation, recommend

__all__ = ["ON_INVALID", "BatchResult", "Model", "RowError", "load"]

_log = logging.getLogger(__name__)

ON_INVALID = ("raise", "nan")
"""What a batch does with a row it cannot score: raise an InputError, or score NaN."""

GOLDEN_TOLERANCE = 1e-12
_MAX_LISTED = 5


# Libraries imported in this process, by (sha256 of their bytes, module name). A library is
# never unloaded (CPython does not dlclose extension modules), so loading the same verified
# bytes again reuses the module instead of mapping another copy. The memfd of each stays
# open: its /proc/self/fd path must never name another library (the dynamic loader and
# CPython both recognise an already-loaded library by its path).
_LIBRARIES: dict[tuple[str, str], Any] = {}
_LIBRARY_FDS: list[int] = []
_FAILED: dict[tuple[str, str], str] = {}
_LIBRARIES_LOCK = threading.Lock()


def _import_library(data: bytes, name: str, digest: str) -> Any:
    """Import the extension module ``name`` from exactly these (already checked) bytes.

    The bytes are hashed again here and written to a private copy that nothing else
    can write, which is what gets imported: never the artifact's path, which could
    be replaced between the check and the import. On Linux the copy is a sealed
    memfd (immutable once written); elsewhere, or if that fails, a file in a fresh
    0700 directory from ``tempfile.mkdtemp``, removed right after the import (the
    mapping stays).

    Raises
    ------
    ArtifactError
        The bytes do not match ``digest``, or the module cannot be imported.
    """
    if hashlib.sha256(data).hexdigest() != digest:
        raise ArtifactError(f"the compiled library {name} does not match its checksum")
    key = (digest, name)
    with _LIBRARIES_LOCK:
        module = _LIBRARIES.get(key)
        if module is None:
            failed = _FAILED.get(key)
            if failed is not None:  # do not map the same broken bytes again
                raise ArtifactError(failed)
            try:
                module = _import_private_copy(data, name)
                _check_model_library(module, name)
            except ArtifactError as exc:
                _FAILED[key] = str(exc)
                raise
            _LIBRARIES[key] = module
    return module


def _check_model_library(module: Any, name: str) -> None:
    """ArtifactError unless the module is a cffi model library (``ffi``, ``lib.rf_num_feature``)."""
    missing = [a for a in ("ffi", "lib") if not hasattr(module, a)]
    if not missing and not hasattr(module.lib, "rf_num_feature"):
        missing = ["lib.rf_num_feature"]
    if missing:
        raise ArtifactError(
            f"{name} is not a reco_fast model library (it has no {' or '.join(missing)}); "
            "the artifact is damaged or foreign: rebuild it"
        )


def _exec_extension(name: str, path: str) -> Any:
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:
        raise ArtifactError(f"cannot load the compiled library {name}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except ImportError:
        raise
    except Exception as exc:  # whatever a foreign module's initialisation raises
        raise ArtifactError(f"cannot load the compiled library {name}: {str(exc)[:200]}") from None
    return module


def _sealed_memfd(data: bytes, name: str) -> int | None:
    """A memfd holding data, sealed against any further write; None where unavailable."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or not sys.platform.startswith("linux"):
        return None
    import fcntl

    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:  # MFD_EXEC: executable even where vm.memfd_noexec=1 makes memfds noexec by default
        fd = memfd_create(name, flags | getattr(os, "MFD_EXEC", 0x0010))
    except OSError:
        try:  # kernels before 6.3 refuse the unknown flag
            fd = memfd_create(name, flags)
        except OSError:
            return None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        if os.pread(fd, len(data) + 1, 0) != data:  # what the loader will map
            raise OSError("memfd content differs")
        if not os.path.exists(f"/proc/self/fd/{fd}"):  # /proc not mounted
            raise OSError("no /proc/self/fd")
    except (OSError, AttributeError):
        os.close(fd)
        return None
    return fd


def _import_private_copy(data: bytes, name: str) -> Any:
    fd = _sealed_memfd(data, name)
    if fd is not None:
        _LIBRARY_FDS.append(fd)  # open for the life of the process, imported or not
        try:
            return _exec_extension(name, f"/proc/self/fd/{fd}")
        except ImportError:
            pass  # e.g. memfds are not executable here: try a private file
    try:
        private = tempfile.mkdtemp(prefix="reco_fast-lib-")  # mode 0700, owned by this user
    except OSError as exc:
        raise ArtifactError(
            f"cannot make a private copy of the compiled library {name}: {exc.strerror or exc}"
        ) from None
    try:
        path = os.path.join(private, name + platform_tag()["ext_suffix"])
        with open(path, "xb") as f:
            f.write(data)
        os.chmod(path, 0o500)
        return _exec_extension(name, path)
    except ImportError as exc:
        raise ArtifactError(f"cannot load the compiled library {name}: {str(exc)[:200]}") from None
    except OSError as exc:
        raise ArtifactError(
            f"cannot make a private copy of the compiled library {name}: {exc.strerror or exc}"
        ) from None
    finally:
        shutil.rmtree(private, ignore_errors=True)  # the loaded mapping stays valid


def read_catalog(path: Path | bytes) -> Catalog:
    """Read catalog.csv (a path, or its checked bytes) with the standard library: the
    serving path has no pandas."""
    if isinstance(path, bytes):
        rows = list(csv.DictReader(io.StringIO(path.decode("utf-8"), newline="")))
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    return Catalog(
        np.asarray([r["product_id"] for r in rows], dtype=str),
        np.asarray([r["category"] for r in rows], dtype=str),
        np.asarray([float(r["price"]) for r in rows], dtype=np.float64),
    )


def write_catalog(catalog: Catalog, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "category", "price"])
        for pid, cat, price in catalog.to_rows():
            w.writerow([pid, cat, repr(float(price))])


def _check_on_invalid(on_invalid: Any) -> None:
    if not (isinstance(on_invalid, str) and on_invalid in ON_INVALID):
        raise ValueError(f"on_invalid must be one of {list(ON_INVALID)}, got {shown(on_invalid)}")


@dataclass(frozen=True)
class BatchResult:
    """What :meth:`Model.score_batch` returns: a probability per row, NaN where the row
    could not be scored, and every problem found, by row.

    ``errors`` holds one :class:`RowError` (``row``, ``field``, ``message``) per bad
    field of each invalid row, sorted by row; ``field`` is None when the row is not
    a dict at all. A valid row's probability is exactly what scoring it alone gives.

    Attributes
    ----------
    probabilities : ndarray of float64, shape (n_rows,)
        Click probabilities in row order; NaN for each invalid row.
    errors : list of RowError
        Every problem of every invalid row, sorted by row.
    """

    probabilities: np.ndarray
    errors: list[RowError]

    @property
    def invalid_rows(self) -> list[int]:
        """The rows that were not scored (NaN), ascending."""
        return sorted({e.row for e in self.errors})

    def __len__(self) -> int:
        return len(self.probabilities)


BACKENDS = ("flat", "flat-avx512", "flat-avx2", "flat-portable", "tl2cgen")


@dataclass(frozen=True)
class _Kernels:
    """The compiled entry points of one backend."""

    backend: str
    one: Any  # (const double* row) -> probability
    f64: Any  # (const double* X, n, double* out)
    f32: Any  # (const float* X, n, double* out)
    prefix: Any  # (const double* shared, n_shared, const double* rest, n, double* out)
    session: Any  # (raw numbers of one page view...) -> probability, or None
    recommend: Any  # (session row, catalog arrays, candidates...) -> top-k, or None
    margin_one: Any = None  # (const double* row) -> raw margin; None in format-2 artifacts
    margin64: Any = None  # (const double* X, n, double* out) -> raw margins
    margin32: Any = None  # (const float* X, n, double* out) -> raw margins
    session_margin: Any = None  # (raw numbers of one page view...) -> raw margin, or None


def _flat_kinds(lib: Any) -> list[str]:
    """Flat evaluator variants this CPU can run, best first."""
    kinds = []
    if getattr(lib, "rq_has_avx512", lambda: 0)():
        kinds.append("avx512")
    if lib.rq_has_avx2():
        kinds.append("avx2")
    return [*kinds, "portable"]


def _kernels(lib: Any, backend: str) -> _Kernels:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {shown(backend)}; choose from {list(BACKENDS)}")
    if backend == "tl2cgen":
        return _Kernels(
            backend,
            lib.rf_predict_one,
            lib.rf_predict_f64,
            lib.rf_predict_f32,
            lib.rf_predict_prefix,
            getattr(lib, "rs_predict_tl2cgen", None),
            getattr(lib, "rs_recommend_tl2cgen", None),
            getattr(lib, "rf_margin_one", None),
            getattr(lib, "rf_margin_f64", None),
            getattr(lib, "rf_margin_f32", None),
            getattr(lib, "rs_margin_tl2cgen", None),
        )
    if not hasattr(lib, "rq_predict_one"):
        raise ArtifactError(
            f"backend {backend!r} is not in this artifact (its trees are too deep for the flat "
            "evaluator); use backend='tl2cgen'"
        )
    supported = _flat_kinds(lib)
    kind = supported[0] if backend == "flat" else backend.removeprefix("flat-")
    if kind not in supported:
        raise ArtifactError(
            f"backend {backend!r} is not available here (this CPU and artifact support "
            f"{['flat-' + k for k in supported]}); use 'flat' to pick the best"
        )
    return _Kernels(
        f"flat-{kind}",
        lib.rq_predict_one,
        getattr(lib, f"rq_predict_f64_{kind}"),
        getattr(lib, f"rq_predict_f32_{kind}"),
        getattr(lib, f"rq_predict_prefix_{kind}"),
        getattr(lib, "rs_predict_flat", None),
        getattr(lib, f"rs_recommend_{kind}", None),
        getattr(lib, "rq_margin_one", None),
        getattr(lib, f"rq_margin_f64_{kind}", None),
        getattr(lib, f"rq_margin_f32_{kind}", None),
        getattr(lib, "rs_margin_flat", None),
    )


def _check_feature_spec(root: Path, meta: ArtifactMetadata) -> list[str]:
    """The artifact's feature names, if its feature specification is this code's."""
    names = list(meta.feature_names)
    if not names or len(set(names)) != len(names):
        raise ValueError("feature_names must be a non-empty list of unique strings")
    feature_set, spec = meta.feature_set, meta.feature_spec
    if spec.get("names") != names or spec.get("feature_set") != feature_set:
        raise ValueError("feature_spec does not match feature_names and feature_set")
    if feature_set is None:
        return names
    fs = spec_for(feature_set) if isinstance(feature_set, str) else None
    if fs is None:
        raise ArtifactError(
            f"{root} was built with the feature set {str(feature_set)[:40]!r}, which this "
            f"reco_fast does not define ({list(FEATURE_SETS)}); rebuild the artifact"
        )
    ours = list(FEATURE_SETS[feature_set]) if feature_set in FEATURE_SETS else list(fs.names)
    if ours != names:
        first = next(
            (i for i, (a, b) in enumerate(zip(ours, names, strict=False)) if a != b),
            min(len(ours), len(names)),
        )
        raise ArtifactError(
            f"{root} was built with {len(names)} {feature_set!r} features, but this reco_fast "
            f"defines {len(ours)} (first difference at position {first}): the feature "
            "definitions changed since the artifact was built; rebuild the artifact"
        )
    if spec.get("definition_sha256") != definition_sha256(feature_set):
        raise ArtifactError(
            f"{root} was built with other definitions of the {feature_set!r} features than "
            "this reco_fast's (the feature specification changed since it was built); rebuild "
            "the artifact"
        )
    return names


@dataclass(frozen=True)
class _Golden:
    """The golden outputs recorded at build time, checked against a loaded library.

    ``X``/``proba``: feature rows and scikit-learn's probabilities. ``sessions``/
    ``session_proba``: raw page views (dicts) and scikit-learn's probabilities of the
    features the build computed from them. ``recommend``: sessions with ``k``,
    ``threshold`` and the top products scikit-learn's probabilities give.
    """

    X: np.ndarray
    proba: np.ndarray
    sessions: list[dict[str, Any]]
    session_proba: np.ndarray
    recommend: list[dict[str, Any]]
    margin: np.ndarray | None = None  # the raw margins of X (format 3)
    # the verified bound (1e-12; XGBoost's float32 sums: metadata verification.tolerance)
    tolerance: float = GOLDEN_TOLERANCE
    margin_tolerance: float = GOLDEN_TOLERANCE

    @classmethod
    def parse(cls, meta: ArtifactMetadata, n_features: int, builder: Any) -> _Golden:
        golden = meta.golden
        X = np.asarray(golden["X"], dtype=np.float64)  # null (a missing value) -> NaN
        proba = np.asarray(golden["proba"], dtype=np.float64)
        margin = np.asarray(golden.get("margin", proba), dtype=np.float64)
        routed = meta.missing_values == "routed"
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != n_features:
            raise ValueError(f"golden X must be a non-empty (n, {n_features}) matrix")
        if (
            proba.shape != (X.shape[0],)
            or margin.shape != proba.shape
            or not np.all(np.isfinite(X) | (routed & np.isnan(X)))
        ):
            raise ValueError("golden proba must have one probability per golden row")
        sessions: list[dict[str, Any]] = []
        session_proba = np.empty(0)
        recs: list[dict[str, Any]] = []
        if builder is not None:  # a model built from sessions: they are required
            gs = meta.golden_sessions
            if gs is None:
                raise ValueError("golden_sessions is missing (a model built from sessions)")
            sessions = gs["sessions"]
            session_proba = np.asarray(gs["proba"], dtype=np.float64)
            if (
                not isinstance(sessions, list)
                or not sessions
                or not all(isinstance(x, dict) for x in sessions)
                or session_proba.shape != (len(sessions),)
            ):
                raise ValueError("golden_sessions must hold sessions and one probability each")
            recs = gs.get("recommend") or []
            if builder.ranks_products and not recs:
                raise ValueError("golden_sessions has no recommend cases")
            for case in recs:
                k, ids, p = case["k"], case["product_ids"], case["proba"]
                if (
                    not isinstance(case["session"], dict)
                    or type(k) is not int
                    or not 0 <= len(ids) <= k
                    or len(p) != len(ids)
                ):
                    raise ValueError("a golden recommend case is malformed")
        tolerances = []
        for key in ("tolerance", "margin_tolerance"):
            t = meta.verification.get(key, GOLDEN_TOLERANCE)
            # relative to the margins: 1e-12, XGBoost's float32 bound, or for margins in the
            # billions float64's summation-order bound (compiler/driver.py, compiler/frontends)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < math.inf:
                raise ValueError(f"verification {key} must be a finite number >= 0")
            tolerances.append(max(float(t), GOLDEN_TOLERANCE))
        return cls(
            np.ascontiguousarray(X),
            proba,
            sessions,
            session_proba,
            recs,
            margin if "margin" in golden else None,
            *tolerances,
        )

    def check(self, model: Model, root: Path) -> None:
        """Every backend this CPU runs, every entry point: equal to 1e-12 (or the
        verified bound of a family summed in float32), or ArtifactError."""

        def refuse(backend: str, what: str) -> ArtifactError:
            return ArtifactError(
                f"{root}: the compiled library ({backend}) does not reproduce its golden "
                f"outputs ({what}); the artifact is damaged or foreign, or the feature code "
                "changed since it was built: rebuild it"
            )

        def close(got: Any, expected: np.ndarray, tolerance: float = self.tolerance) -> bool:
            got = np.asarray(got, dtype=np.float64)
            return got.shape == expected.shape and bool(np.all(np.abs(got - expected) <= tolerance))

        for name in model.available_backends():
            other = model.using(name)
            if not close(other._predict_f64(self.X), self.proba):
                raise refuse(name, "feature rows, batch")
            if not close([other._one(row) for row in self.X.tolist()], self.proba):
                raise refuse(name, "feature rows, one at a time")
            tol = self.margin_tolerance
            if self.margin is not None and not (
                close(other._margin_f64(self.X), self.margin, tol)
                and close([other._margin_one(row) for row in self.X.tolist()], self.margin, tol)
            ):
                raise refuse(name, "raw margins of feature rows")
            if not self.sessions:
                continue
            # a classifier's probabilities; a ranker's scores (event-trained rankers)
            score = (
                other.predict_proba if model.output == "probability" else other.decision_function
            )
            try:
                one = [score(s) for s in self.sessions]
                batch = score(self.sessions)
                recs = [
                    other.recommend(c["session"], k=c["k"], threshold=c["threshold"])
                    for c in self.recommend
                ]
            except InputError as exc:
                raise ArtifactError(
                    f"{root}: a golden session is refused ({str(exc)[:160]}): the feature "
                    "code or vocabulary changed since the artifact was built; rebuild it"
                ) from None
            if not close(one, self.session_proba):
                raise refuse(name, "session dicts, one at a time")
            if not close(batch, self.session_proba):
                raise refuse(name, "session dicts, as a batch")
            for i, (case, got) in enumerate(zip(self.recommend, recs, strict=True)):
                if [r.product_id for r in got] != case["product_ids"] or not close(
                    [r.probability for r in got], np.asarray(case["proba"], dtype=np.float64)
                ):
                    raise refuse(name, f"recommend, case {i}")


class Model:
    """A compiled tree ensemble, loaded from a verified artifact (:func:`load`; not
    constructed directly).

    Immutable after load and safe to share between threads. Pickles as "re-open
    this artifact", so it can be shipped to worker processes without shipping
    a loaded native library.

    Attributes
    ----------
    path : Path
        The artifact directory (absolute).
    feature_names : tuple of str
        The model's input columns, in order; ``n_features`` is their number.
    feature_set : str or None
        The feature set the model was built on (``"seed"``, ``"ranking"``, an event-log
        set), or None for a model compiled from a bare feature matrix.
    output : str
        ``"probability"`` (a binary classifier), ``"score"`` (a ranker) or ``"value"``
        (a regressor).
    threshold : float
        Probability in [0, 1] at or above which ``recommend`` shows a product by
        default; ``-inf`` for a model whose output is not a probability.
    missing_values : str
        ``"routed"``: NaN is a valid input, sent where the model learned; ``"refused"``.
    input_precision : str
        ``"float32"`` (inputs are rounded to float32 first, as scikit-learn's
        GradientBoosting and XGBoost do) or ``"float64"``.
    backend : str
        The evaluator in use (:data:`BACKENDS`; "flat" resolves to one of
        ``"flat-avx512"``, ``"flat-avx2"``, ``"flat-portable"``).
    metadata : ArtifactMetadata
        The artifact's ``metadata.json``, typed.
    """

    def __init__(
        self,
        path: Path,
        module: Any,
        feature_names: Sequence[str],
        metadata: ArtifactMetadata | None = None,
        builder: FeatureBuilder | EventBuilder | None = None,
        backend: str | None = None,
    ):
        self.path = Path(path)
        self._ffi = module.ffi
        self._lib = module.lib
        self.feature_names: tuple[str, ...] = tuple(feature_names)
        self.n_features = len(self.feature_names)
        if int(self._lib.rf_num_feature()) != self.n_features:
            raise ArtifactError(
                f"library expects {self._lib.rf_num_feature()} features, metadata lists "
                f"{self.n_features}"
            )
        if builder is not None and builder.feature_names != self.feature_names:
            raise ArtifactError(
                f"the {builder.feature_set!r} feature builder makes {builder.n_features} "
                f"features, the library takes {self.n_features} ({self.feature_names[:3]}...); "
                "rebuild the artifact"
            )
        self._metadata = metadata
        # what the model gives and takes; a library staged by the build, not yet given its
        # metadata, is a classifier that refuses NaN, evaluated by tl2cgen's code
        self.output: str = metadata.output if metadata else "probability"
        self.missing_values: str = metadata.missing_values if metadata else "refused"
        self.input_precision: str = metadata.input_precision if metadata else "float32"
        threshold = metadata.threshold if metadata else 0.7
        self.threshold = -math.inf if threshold is None else float(threshold)
        self.feature_set: str | None = metadata.feature_set if metadata else None
        # calibrated probabilities: a monotone map of the raw margin (serve/calibration.py)
        self.calibration: Calibration | None = Calibration.from_json(
            metadata.calibration if metadata else None
        )
        self._builder = builder
        self._loaded_catalog = builder.catalog if builder is not None else None
        self._requested_backend = backend
        self._use(_kernels(self._lib, backend or (metadata.backend if metadata else "tl2cgen")))
        self._cells = self._cell_index(builder)

    @property
    def metadata(self) -> ArtifactMetadata:
        """The artifact's ``metadata.json``, typed (:class:`~reco_fast.metadata.ArtifactMetadata`;
        also a read-only mapping of the JSON, ``model.metadata["n_trees"]``).

        Raises
        ------
        ArtifactError
            The model is a library staged by the build, before its metadata was written.
        """
        if self._metadata is None:
            raise ArtifactError(
                f"{self.path}: this model was staged by the build and has no metadata yet; "
                "load the built artifact with reco_fast.load"
            )
        return self._metadata

    @property
    def uses_cells(self) -> bool:
        """True if whole-catalog :meth:`recommend` ranks by threshold cells
        (:mod:`reco_fast.serve.cells`): a ``ranking`` model that refuses NaN, with a flat
        forest of depth <= 6, a catalog of at least 2,048 products, and the attach-time
        check passed (one golden session answered alike both ways). Otherwise every
        product is scored. Either way the answer is the same."""
        return self._cells is not None

    @property
    def catalog_nbytes(self) -> int:
        """Bytes the model holds for its catalog: ids, prices, categories, category codes
        and the cell index (a catalog of at most 65,536 products also keeps Python dicts
        and lists for speed, not counted). 0 without a catalog."""
        builder = self._builder
        catalog = getattr(builder, "catalog", None)
        if not isinstance(builder, FeatureBuilder) or catalog is None:
            return 0
        cells = self._cells.nbytes if self._cells is not None else 0
        return catalog.nbytes + builder.catalog_arrays()[0].nbytes + cells

    def _replace(self, **attrs: Any) -> Model:
        """A copy of this model sharing its library, with ``attrs`` set (the builder, the
        cell index, the backend...): how every derived model is made."""
        clone = object.__new__(Model)
        clone.__dict__.update(self.__dict__, **attrs)
        return clone

    def _scoring_every_product(self) -> Model:
        """This model with the cell index off: recommend scores every product (the
        reference the cells are compared and benchmarked against)."""
        return self._replace(_cells=None)

    def _cell_index(self, builder: Any) -> CellIndex | None:
        """The whole-catalog top-k's index (:mod:`reco_fast.serve.cells`) for this builder's
        catalog, or None (no catalog, a small one, or a model it does not apply to)."""
        catalog = getattr(builder, "catalog", None)
        if (
            not isinstance(builder, FeatureBuilder)
            or catalog is None
            or len(catalog) < CELLS_MIN_PRODUCTS
            or self.feature_set not in _spec.FEATURE_SETS
            or self.missing_values != "refused"  # the cells do not follow NaN's routes
        ):
            return None
        cat_codes, prices = builder.catalog_arrays()
        index = cell_index(
            self._ffi, self._lib, _spec.FEATURE_SETS[self.feature_set], cat_codes, prices
        )
        if index is not None and not self._cells_agree(builder, index):
            _log.warning(
                "%s: the whole-catalog top-k disagreed with scoring every product on a golden "
                "session; recommend scores every product for this catalog (exact, slower)",
                self.path,
            )
            return None
        return index

    def _cells_agree(self, builder: FeatureBuilder, index: CellIndex) -> bool:
        """Checked when a catalog is attached: one golden session's top-10 by the cells
        equals the per-product kernel's (products, order and probabilities)."""
        golden = self._metadata.golden_sessions if self._metadata is not None else None
        sessions = [c["session"] for c in (golden or {}).get("recommend") or []][:1]
        fast = self._replace(_builder=builder, _cells=index)
        every = self._replace(_builder=builder, _cells=None)
        for session in sessions:
            try:
                want = every.recommend(session, k=10, threshold=0.0)
            except InputError:  # a golden session this catalog cannot serve
                continue
            got = fast.recommend(session, k=10, threshold=0.0)
            if [(r.product_id, r.probability) for r in got] != [
                (r.product_id, r.probability) for r in want
            ]:
                return False
        return True

    def _use(self, k: _Kernels) -> None:
        self.backend = k.backend
        self._one, self._batch64, self._batch32 = k.one, k.f64, k.f32
        self._prefix, self._session_one = k.prefix, k.session
        self._recommend_kernel = self._raw_recommend_kernel = k.recommend
        self._margin_kernels = (k.margin_one, k.margin64, k.margin32)
        cal = self.calibration
        if cal is not None:  # every probability comes from the margin: no probability kernel
            margin_one, session = self._margin_kernel(0), k.session_margin
            self._one = lambda row: cal.one(margin_one(row))
            self._session_one = None if session is None else lambda *raw: cal.one(session(*raw))
            self._recommend_kernel = None  # _top_candidates: calibration.top_k

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def _from_library(
        cls, root: Path, lib_path: Path, name: str, feature_names: Sequence[str]
    ) -> Model:
        """A bare model (no builder, no golden checks) from a freshly built library file,
        imported from a private copy of the bytes read here."""
        data = Path(lib_path).read_bytes()
        module = _import_library(data, name, hashlib.sha256(data).hexdigest())
        return cls(root, module, feature_names)

    def available_backends(self) -> tuple[str, ...]:
        """The evaluators this artifact's library provides on this CPU.

        Returns
        -------
        tuple of str
            ``"tl2cgen"`` first, then the flat evaluator's kinds this CPU runs
            (``"flat-portable"``, ``"flat-avx2"``, ``"flat-avx512"``), when the artifact
            has the flat evaluator.
        """
        lib = self._lib
        if not hasattr(lib, "rq_predict_one"):
            return ("tl2cgen",)
        return ("tl2cgen", *("flat-" + k for k in reversed(_flat_kinds(lib))))

    def using(self, backend: str) -> Model:
        """The same model evaluated by another backend (for comparisons and benchmarks).

        Parameters
        ----------
        backend : str
            ``"tl2cgen"``, ``"flat"`` (the best flat kind this CPU runs) or one of
            :meth:`available_backends`.

        Returns
        -------
        Model
            A copy sharing the loaded library; this model is unchanged.

        Raises
        ------
        ArtifactError
            The artifact or this CPU does not provide ``backend``.
        """
        clone = self._replace(_requested_backend=backend)
        clone._use(_kernels(self._lib, backend))
        return clone

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: str | None = None) -> Model:
        """Load an artifact after checking it; refuse it with ArtifactError otherwise.

        Before any of its code runs: ``metadata.json`` against its own checksum, the
        format version, platform and Python ABI, every file's sha256 (the library
        and catalog bytes are read once and those bytes are used), that every file
        stays inside the artifact, and that the recorded feature specification
        (names, order, a digest of their definitions) is this reco_fast's. Then the
        library, imported from a private copy of the checked bytes, must report the
        recorded width and reproduce the golden outputs: feature rows (batch and
        one at a time) and, for models built from sessions, raw session dicts one
        at a time, as a batch and through ``recommend``, on every backend this CPU
        supports.

        Parameters
        ----------
        path : str or path-like
            The artifact directory.
        backend : str, optional
            Overrides the artifact's default evaluator: "flat" (the branch-free
            evaluator, AVX-512 or AVX2 when the CPU has it), "flat-portable",
            "flat-avx512", "flat-avx2" or "tl2cgen" (tl2cgen's reference code).

        Returns
        -------
        Model

        Raises
        ------
        ArtifactError
            Any check fails; nothing of a refused artifact's library was executed
            unless it passed every check that does not need to run it.
        ValueError
            ``backend`` is not one of :data:`BACKENDS`.
        """
        if backend is not None and not (isinstance(backend, str) and backend in BACKENDS):
            raise ValueError(
                f"backend must be None or one of {list(BACKENDS)}, got {backend!r:.60}"
            )
        checked = read_artifact(path)  # everything that can be checked without running it
        root, meta = checked.root, checked.metadata  # every field present and well typed
        try:
            feature_names = _check_feature_spec(root, meta)
            threshold = meta.threshold
            if threshold is None and meta.output != "probability":
                pass  # a ranker's scores or a regressor's values have no threshold
            elif threshold is None:
                raise TypeError("threshold is null, but the model gives probabilities")
            elif not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold {threshold!r} is outside [0, 1]")
            if meta.backend not in BACKENDS:
                raise ValueError(f"unknown backend {meta.backend[:40]!r}")
            if Calibration.from_json(meta.calibration) is not None and meta.output != "probability":
                raise ValueError("calibration is for probabilities, this model gives none")
            builder: FeatureBuilder | EventBuilder | None = None
            if meta.feature_set is not None and meta.feature_set not in FEATURE_SETS:
                from reco_fast.features.events import ItemTables

                builder = EventBuilder(ItemTables.load(root))  # files checked by read_artifact
            elif meta.feature_set is not None:
                if meta.vocabulary is None:
                    raise ValueError(f"a {meta.feature_set!r} model needs its vocabulary")
                catalog = read_catalog(checked.catalog) if checked.catalog is not None else None
                builder = FeatureBuilder(
                    meta.feature_set,
                    Vocabulary.from_json(meta.vocabulary),
                    catalog,
                    nan_ok=nan_ok_for(meta.missing_values),
                )
            golden = _Golden.parse(meta, len(feature_names), builder)
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{root} has malformed metadata: {str(exc)[:200]}") from None
        module = _import_library(checked.library, meta.module, checked.library_sha256)
        model = cls(root.resolve(), module, feature_names, meta, builder, backend)
        golden.check(model, root)
        return model

    def __reduce__(self) -> tuple[Any, tuple[str, str | None]]:
        if self._builder is not None and self._builder.catalog is not self._loaded_catalog:
            raise TypeError(
                "a Model with a replaced catalog cannot be pickled; pickle the "
                "artifact path and call with_catalog() after loading"
            )
        return (load, (str(self.path), self._requested_backend))

    def __repr__(self) -> str:
        return (
            f"Model({str(self.path)!r}, feature_set={self.feature_set!r}, "
            f"n_features={self.n_features})"
        )

    # ---- raw compiled calls (validated inputs only) ----------------------------------------
    def _run(self, kernel: Any, ctype: str, X: np.ndarray, row_offset: int = 0) -> np.ndarray:
        """Call a batch kernel on a C-contiguous (n, n_features) array of its type.

        The kernel checks each value while converting it and reports the first
        that is not finite or does not fit float32; that becomes an InputError.
        """
        if (
            X.ndim != 2
            or X.shape[1] != self.n_features
            or X.dtype != (np.float64 if ctype == "double[]" else np.float32)
            or not X.flags.c_contiguous
        ):  # the kernel reads n * n_features values of its type: never hand it less
            raise ValueError(
                f"X must be C-contiguous {ctype[:-2]} of shape (n, {self.n_features}), got "
                f"{X.dtype} {X.shape}"
            )
        out = np.empty(X.shape[0], dtype=np.float64)
        if X.shape[0]:
            ffi = self._ffi
            bad = kernel(
                ffi.from_buffer(ctype, X),
                X.shape[0],
                ffi.from_buffer("double[]", out, require_writable=True),
            )
            if bad >= 0:
                self._raise_bad_value(X, int(bad), row_offset)
            if bad != -1:  # the kernel could not allocate its row buffer
                raise MemoryError(f"out of memory scoring {X.shape[0]} rows")
        return out

    def _raise_bad_value(self, X: np.ndarray, flat: int, row_offset: int) -> None:
        r, c = divmod(flat, self.n_features)
        v = float(X[r, c])
        what = (
            "is NaN"
            if v != v
            else "is infinite"
            if abs(v) == np.inf
            else ("is too large for float32")
        )
        name = self.feature_names[c]
        row = r + row_offset
        raise InputError(f"X[{row}, {c}] ({name!r}) {what}", field=name, rows=[row])

    def _predict_f64(self, X: np.ndarray, row_offset: int = 0) -> np.ndarray:
        if self.calibration is not None:
            return self.calibration(self._margin_f64(X, row_offset))
        return self._run(self._batch64, "double[]", X, row_offset)

    def _predict_f32(self, X: np.ndarray, row_offset: int = 0) -> np.ndarray:
        if self.calibration is not None:
            return self.calibration(self._margin_f32(X, row_offset))
        return self._run(self._batch32, "float[]", X, row_offset)

    def _margin_kernel(self, i: int) -> Any:
        kernel = self._margin_kernels[i]
        if kernel is None:
            raise ArtifactError(
                f"{self.path} was built before raw margins were compiled in "
                "(decision_function); rebuild the artifact"
            )
        return kernel

    def _margin_one(self, row: Sequence[float]) -> float:
        return float(self._margin_kernel(0)(row))

    def _margin_f64(self, X: np.ndarray, row_offset: int = 0) -> np.ndarray:
        return self._run(self._margin_kernel(1), "double[]", X, row_offset)

    def _margin_f32(self, X: np.ndarray, row_offset: int = 0) -> np.ndarray:
        return self._run(self._margin_kernel(2), "float[]", X, row_offset)

    def _require_probability(self) -> None:
        """TypeError for a model whose output is not a probability (a ranker, a regressor)."""
        if self.output != "probability":
            kind, what = ("ranker", "scores") if self.output == "score" else ("regressor", "values")
            raise TypeError(
                f"a {kind} has {what}, not probabilities: use decision_function(X) "
                f"(this model's {self.metadata.family} objective "
                f"{self.metadata.objective[:40]!r})"
            )

    def decision_function(self, X: Any) -> np.ndarray:
        """The raw margin of each row of X: the sum of the trees' leaves plus the base score.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or session dicts
            Feature rows in ``feature_names`` order, float64 or float32 (float32 rows
            are taken as they are). NaN is a valid value when the model routes missing
            values (``model.missing_values == "routed"``). An event-trained model also
            takes a session dict with its ``recommended_product_id`` (-> float) or a
            list of them, as ``predict_proba`` does: a ranker's scores.

        Returns
        -------
        ndarray of float64, shape (n_samples,)
            The log-odds of a binary classifier before any calibration (scikit-learn's
            ``decision_function``, LightGBM's ``predict(raw_score=True)``, XGBoost's
            ``predict(output_margin=True)``), a ranker's score, a regressor's value.

        Raises
        ------
        InputError
            Wrong shape or dtype, or a value the model cannot take (NaN where missing
            values are not routed, an infinity, or beyond float32 for float32 models).
        """
        builder = self._builder
        if isinstance(builder, EventBuilder) and (
            isinstance(X, Mapping)
            or (isinstance(X, Sequence) and len(X) > 0 and isinstance(X[0], Mapping))
        ):
            if isinstance(X, Mapping):
                return float(self._margin_f64(builder.rows([X]))[0])  # type: ignore[return-value]
            return self._margin_f64(builder.rows(X))
        arr = self._check_features(X)
        if arr.dtype == np.float32:
            return self._margin_f32(arr)
        return self._margin_f64(arr)

    def _top_candidates(
        self,
        row: Sequence[float],
        viewed_pos: list[int],
        drop_pos: list[int],
        cand: np.ndarray | None,
        threshold: float,
        k: int,
    ) -> tuple[list[int], list[float]] | None:
        """Score candidates for one session and pick the top k in one compiled call.

        ``viewed_pos`` and ``drop_pos`` are catalog positions (viewed; excluded),
        ``cand`` the caller's deduplicated int64 candidate positions or None for
        the whole catalog. Returns (catalog positions, probabilities), best first,
        or None when the artifact has no recommend kernel (the caller uses numpy).
        """
        if self.calibration is not None:  # the calibrated map (serve/calibration.py)
            return calibrated_top_k(self, row, viewed_pos, drop_pos, cand, threshold, k)
        kernel = self._recommend_kernel
        builder = self._builder
        if kernel is None or builder is None or builder.catalog is None:
            return None
        if len(row) != self.n_features - len(CANDIDATE_FEATURES):  # C reads that many
            raise ValueError(
                f"row must hold {self.n_features - len(CANDIDATE_FEATURES)} session "
                f"features, got {len(row)}"
            )
        n_catalog = len(builder.catalog)
        k = min(k, n_catalog if cand is None else len(cand))  # a huge k must not size a buffer
        if k <= 0:
            return [], []
        cells = self._cells
        if cand is None and cells is not None:
            # the cells name the few products that can make the top k; the exact kernel
            # scores them (and the viewed ones, whose features the cells do not cover)
            found = cells.top(row, viewed_pos + drop_pos, threshold, k, *builder.catalog_arrays())
            if found is not None:
                dropped = set(drop_pos)
                extra = [p for p in viewed_pos if p not in dropped]
                cand = np.union1d(found, np.asarray(extra, dtype=np.int64)) if extra else found
                if cand.size == 0:
                    return [], []
        ffi = self._ffi
        cat_codes, prices = builder.catalog_buffers(ffi)
        top_pos = ffi.new("int64_t[]", k)
        top_p = ffi.new("double[]", k)
        count = kernel(
            row,
            cat_codes,
            prices,
            n_catalog,
            viewed_pos,
            len(viewed_pos),
            drop_pos,
            len(drop_pos),
            ffi.NULL if cand is None else ffi.from_buffer("int64_t[]", cand),
            0 if cand is None else len(cand),
            threshold,
            k,
            top_pos,
            top_p,
        )
        if count < 0:
            raise MemoryError("recommend: out of memory")
        return ffi.unpack(top_pos, count), ffi.unpack(top_p, count)

    def _predict_prefix(self, prefix: Sequence[float], rest: np.ndarray) -> np.ndarray:
        """Row i = prefix + rest[:, i]: one session's features in front of each candidate's.

        ``rest`` is feature-major, C-contiguous float64 of shape
        (n_features - len(prefix), n_rows), built and validated by the caller.
        """
        n_prefix = len(prefix)
        if (
            rest.ndim != 2
            or rest.shape[0] + n_prefix != self.n_features
            or (not rest.flags.c_contiguous or rest.dtype != np.float64)
        ):
            raise ValueError(
                f"rest must be C-contiguous float64 ({self.n_features - n_prefix}, n_rows)"
            )
        if self.calibration is not None:  # the calibrated map of the margins of the full rows
            X = np.empty((rest.shape[1], self.n_features), dtype=np.float64)
            X[:, :n_prefix] = prefix
            X[:, n_prefix:] = rest.T
            return self._predict_f64(X)
        out = np.empty(rest.shape[1], dtype=np.float64)
        if rest.shape[1]:
            ffi = self._ffi
            self._prefix(
                prefix,
                n_prefix,
                ffi.from_buffer("double[]", rest),
                rest.shape[1],
                ffi.from_buffer("double[]", out, require_writable=True),
            )
        return out

    # ---- feature matrices ------------------------------------------------------------------
    def _check_features(self, X: Any) -> np.ndarray:
        """scikit-learn-style validation of an (n, n_features) matrix.

        Returns a C-contiguous float64 or float32 array for the compiled loops.
        Integers are rounded to float32 once, as scikit-learn does with an integer
        array (never int -> float64 -> float32); see :func:`reco_fast.features.schema.as_number`.
        Named columns are matched to ``feature_names`` by name (:meth:`_named_features`).
        """
        named = self._named_features(X)
        if named is not None:
            return named
        try:
            arr = np.asarray(X)
        except (TypeError, ValueError) as exc:  # ragged nested lists
            raise InputError(f"X must be a 2D numeric array: {exc}"[:200], field="X") from None
        if not isinstance(X, np.ndarray) and (
            arr.dtype.kind in "US"
            or (arr.dtype.kind == "f" and bool((np.abs(arr) > INT_EXACT).any()))
        ):
            # a list: numpy turned [2**60 + 2**36 + 1, 0.5] into float64 (an int
            # rounded twice) or [1, "a"] into strings; convert the items one by one
            try:
                arr = np.asarray(X, dtype=object)
            except (TypeError, ValueError) as exc:
                raise InputError(f"X must be a 2D numeric array: {exc}"[:200], field="X") from None
        if arr.dtype.kind not in "biufO":
            raise InputError(f"X must be numeric, got dtype {arr.dtype}", field="X")
        if arr.ndim != 2:
            raise InputError(
                f"Expected a 2D array of shape (n_samples, {self.n_features}), got "
                f"{arr.ndim}D shape {arr.shape}; reshape a single row with X.reshape(1, -1)",
                field="X",
            )
        if arr.shape[1] != self.n_features:
            raise InputError(
                f"X has {arr.shape[1]} features, but the model expects {self.n_features}",
                field="X",
            )
        if arr.dtype.kind == "O":
            out = np.empty(arr.shape, dtype=np.float64)
            for j in range(arr.shape[1]):
                out[:, j] = self._object_feature(arr[:, j], f"X[:, {j}]")
            return out
        if arr.dtype.kind in "biu" or arr.dtype.itemsize > 8 or arr.dtype == np.float16:
            # integers, bools, float16 and longdouble: straight to float32, as scikit-learn
            return np.ascontiguousarray(arr, dtype=np.float32)
        return np.ascontiguousarray(arr)  # float32 or float64

    @staticmethod
    def _object_feature(items: np.ndarray, where: str) -> np.ndarray:
        """One feature column of Python objects as float64, by :func:`as_number`'s rules."""
        out = np.empty(items.shape[0], dtype=np.float64)
        for i, v in enumerate(items.tolist()):
            x = as_number(v)
            if x is None:
                raise InputError(f"X must be numeric: {where} row {i} {not_a_number(v)}", field="X")
            out[i] = x
        return out

    def _named_features(self, X: Any) -> np.ndarray | None:
        """A DataFrame (pandas, pyarrow, or anything with named columns), a dict of columns
        or a numpy structured array as the (n, n_features) float64 matrix, or None when X
        has no column names.

        Columns named with strings are matched to ``feature_names`` by name, in any
        order; a missing or unknown name is refused (scikit-learn refuses a DataFrame
        whose names differ from the ones it was fitted with). Columns not named with
        strings (a DataFrame's default 0, 1, 2, ...) are taken in order, as
        scikit-learn does. Each column is converted on its own, so an integer column
        is rounded to float32 once whatever the other columns hold.
        """
        if isinstance(X, np.ndarray):
            if X.dtype.names is None:
                return None
            if X.ndim != 1:
                raise InputError(
                    "a structured X must be one-dimensional (one record per row), got shape "
                    f"{X.shape}",
                    field="X",
                )
            names: list[Any] = list(X.dtype.names)
            arrays = X

            def column(i: int) -> Any:
                return arrays[names[i]]
        elif isinstance(X, Mapping):
            names = list(X.keys())
            mapping = X

            def column(i: int) -> Any:
                return mapping[names[i]]
        elif hasattr(X, "columns") and hasattr(X, "iloc"):  # pandas
            names = list(X.columns)
            frame = X

            def column(i: int) -> Any:
                return series_values(frame.iloc[:, i])
        elif hasattr(X, "column_names") and hasattr(X, "column"):  # pyarrow Table, RecordBatch
            names = list(X.column_names)
            table = X

            def column(i: int) -> Any:
                c = table.column(i)
                if not c.null_count:
                    return c.to_numpy()
                # with nulls, to_numpy() gives float64 (rounding an int beyond 2**53)
                items = [math.nan if v is None else v for v in c.to_pylist()]
                return np.fromiter(items, dtype=object, count=len(items))
        elif hasattr(X, "columns") and hasattr(X, "to_series"):  # polars
            names = list(X.columns)
            column = X.to_series
        else:
            return None
        text = [isinstance(n, str) for n in names]
        if names and not any(text) and not isinstance(X, Mapping):
            # unnamed columns (a DataFrame's 0, 1, 2, ...): by position, as scikit-learn
            if len(names) != self.n_features:
                raise InputError(
                    f"X has {len(names)} features, but the model expects {self.n_features}",
                    field="X",
                )
            order = list(range(len(names)))
        else:
            if not all(text):
                raise InputError(
                    "X's column names must all be strings (the model's feature names), got "
                    f"{_listed(sorted({type(n).__name__ for n in names}))}",
                    field="X",
                )
            seen: set[str] = set()
            duplicated = []
            for n in names:
                if n in seen:
                    duplicated.append(n)
                seen.add(n)
            known = set(self.feature_names)
            unknown = [n for n in names if n not in known]
            missing = [f for f in self.feature_names if f not in seen]
            if duplicated or unknown or missing:
                problems = [
                    f"{what} {_listed(which)}"
                    for what, which in (
                        ("missing", missing),
                        ("unknown", unknown),
                        ("duplicated", duplicated),
                    )
                    if which
                ]
                raise InputError(
                    f"X's columns must be the model's {self.n_features} features, by name: "
                    + "; ".join(problems)
                    + " (see model.feature_names)",
                    field="X",
                )
            position = {n: i for i, n in enumerate(names)}
            order = [position[f] for f in self.feature_names]
        out = np.empty((0, self.n_features), dtype=np.float64)
        for j, i in enumerate(order):
            values = column(i)
            if (
                isinstance(values, np.ndarray)
                and values.dtype.kind == "f"
                and values.dtype.itemsize > 8
            ):
                values = values.astype(np.float32)  # longdouble: straight to float32
            name = names[i] if isinstance(names[i], str) else f"X[:, {j}]"
            # the rule of every numeric column (schema.as_float_array): an int rounded
            # to float32 once, a bad value named by feature and row
            col = as_float_array(name, values, None if j == 0 else out.shape[0])
            if j == 0:
                out = np.empty((col.shape[0], self.n_features), dtype=np.float64)
            out[:, j] = col
        return out

    def predict_proba_features(
        self, X: Any, *, n_threads: int = 1, on_invalid: str = "raise"
    ) -> np.ndarray:
        """Click probability for each row of X, a feature matrix.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or named columns
            See below.
        n_threads : int
            Threads to split the rows over (1: the calling thread only).
        on_invalid : {"raise", "nan"}
            What an invalid row does (see below).

        Returns
        -------
        ndarray of float64, shape (n_samples,)
            The probabilities, equal to scikit-learn's ``predict_proba(X)[:, 1]``
            (to 1e-12); NaN for rows refused under ``on_invalid="nan"``.

        ``X`` is an (n, n_features) array-like in ``feature_names`` order (any
        numeric dtype, lists, object arrays of numbers), or named columns matched to
        ``feature_names`` by name in any order: a pandas or pyarrow DataFrame, a dict
        of columns, a numpy structured array (a missing, unknown or duplicated name is
        an InputError). Inputs are rounded to float32 before they reach the trees,
        exactly as scikit-learn does; an integer is rounded once, as scikit-learn
        rounds an integer array (see :func:`reco_fast.features.schema.as_number`).
        ``n_threads`` > 1 splits the rows over threads; the compiled loop runs
        without the GIL.

        ``on_invalid="raise"`` (the default) raises an InputError for the first row
        with a NaN, an infinity or a value too large for float32; ``"nan"`` gives
        those rows NaN and scores the others. A wrong shape or a non-numeric
        dtype concerns the whole matrix and raises either way. NaN is a valid value
        for models that route missing values (``missing_values == "routed"``).

        Raises
        ------
        InputError
            A row with a value the model cannot take (``on_invalid="raise"``), a wrong
            shape or a non-numeric dtype, or a missing, unknown or duplicated column
            name; the message names the row and the feature.
        TypeError
            The model is a ranker or a regressor: use :meth:`decision_function`.
        ValueError
            ``on_invalid`` is not one of :data:`ON_INVALID`.
        """
        self._require_probability()
        _check_on_invalid(on_invalid)
        if on_invalid == "nan":
            arr = self._check_features(X)
            errors = RowErrors()
            self._feature_errors(arr, errors)
            if errors.errors:
                return self._score_valid(arr, errors.invalid(arr.shape[0]), n_threads)
            X = arr
        arr = self._check_features(X)
        run = self._predict_f32 if arr.dtype == np.float32 else self._predict_f64
        n = arr.shape[0]
        if n_threads <= 1 or n < 2 * 4096:
            return run(arr)
        bounds = np.linspace(0, n, n_threads + 1).astype(int)
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            outs = list(
                pool.map(
                    lambda i: run(arr[bounds[i] : bounds[i + 1]], int(bounds[i])), range(n_threads)
                )
            )
        return np.concatenate(outs)

    # ---- raw sessions ----------------------------------------------------------------------
    @property
    def builder(self) -> FeatureBuilder:
        """The model's feature builder: vocabularies, catalog and the feature code of a
        page-view model (read-only; the recommend path and the tools use it).

        Raises
        ------
        InputError
            A model compiled from a bare feature matrix has no session schema.
        TypeError
            An event-trained model's sessions are product lists (see :class:`EventTracker`).
        """
        if self._builder is None:
            raise InputError(
                "this model was compiled from a bare feature matrix and knows no session "
                "schema; use predict_proba_features(X)"
            )
        if not isinstance(self._builder, FeatureBuilder):
            raise TypeError(
                "this model was trained on an event log: its sessions are "
                '{"products": [...], "cart": [...]}; track them with reco_fast.EventTracker'
            )
        return self._builder

    @property
    def can_recommend(self) -> bool:
        """True if :meth:`recommend` can rank products: the model has candidate-product
        features (the ``ranking`` set, or an event-trained model). A ``seed``-set model
        or one compiled from a bare feature matrix scores page views only."""
        return bool(getattr(self._builder, "ranks_products", False))

    @property
    def ranks_from_events(self) -> bool:
        """True for a model trained on a raw event log (``reco-fast build --events``).

        Its sessions are ``{"products": [ids, most recent last], "cart": [ids]}``
        (track them with :class:`reco_fast.EventTracker`); other models read the
        seed's page-view schema (:class:`reco_fast.SessionTracker`).
        """
        return getattr(self._builder, "tables", None) is not None

    def predict_proba(self, sessions: Any, on_invalid: str = "raise") -> float | np.ndarray:
        """Click probability of one page view (a dict -> float) or of many (-> ndarray).

        For a calibrated artifact (``model.calibration`` is not None) this is the
        calibrated probability: scikit-learn's ``CalibratedClassifierCV`` fitted on
        held-out rows, a monotone map of :meth:`decision_function`'s raw margin
        (:mod:`reco_fast.serve.calibration`); otherwise the estimator's own
        ``predict_proba``. Every probability entry point (``predict_proba_features``,
        ``score_batch``, ``recommend``) gives the same number.

        Many may be a list of dicts, a dict of columns or a pandas DataFrame.

        Parameters
        ----------
        sessions : dict, list of dicts, dict of columns or DataFrame
            Page views in the seed's schema: ``current_category``, ``current_price``
            (in the catalog's currency), ``products_in_cart`` (count), ``device_type``,
            ``traffic_source``, ``time_on_page_sec`` (seconds), ``scroll_depth``
            (fraction in [0, 1]), ``clicked_product_image`` (0 or 1),
            ``session_length_mins`` (minutes), ``products_viewed_count``; a ``ranking``
            model also reads ``current_product_id``, ``prev_product_1``..``3`` and the
            candidate ``recommended_product_id``. An event-trained model takes
            ``{"products": [...], "cart": [...]}`` instead. Extra keys are ignored.
        on_invalid : {"raise", "nan"}
            What an invalid page view does (see below).

        Returns
        -------
        float or ndarray of float64, shape (n_sessions,)
            Equal to scikit-learn's ``predict_proba`` of the features the build
            computes (to 1e-12).

        Raises
        ------
        InputError
            A missing field, a value outside its domain or unknown to the model's
            vocabulary or catalog (``on_invalid="raise"``); names the field and rows.
        TypeError
            The model is a ranker or a regressor.
        ValueError
            ``on_invalid`` is not one of :data:`ON_INVALID`.

        ``on_invalid="raise"`` (the default) raises an InputError naming the field
        and the first bad rows. ``on_invalid="nan"`` is for offline scoring of
        dirty logs: the valid rows are scored and the invalid ones get NaN (a
        single page view returns ``nan``); use :meth:`score_batch` to also get
        what was wrong with each. Problems of the batch as a whole (not a batch, a
        missing column, columns of different lengths) raise either way.
        """
        if self.output != "probability":
            self._require_probability()
        builder = self._builder
        kernel = self._session_one  # page-view models only: event models have no session kernel
        if kernel is None and getattr(builder, "tables", None) is not None:
            return self._predict_events(sessions, on_invalid)  # an event-trained model
        if kernel is not None and type(sessions) is dict and on_invalid == "raise":
            # the hot path: one page view as a plain dict (a category is a str)
            if type(sessions.get("current_category")) is str:
                try:
                    # a session kernel exists only for page-view models (FeatureBuilder)
                    return kernel(*builder.raw(sessions))  # type: ignore[union-attr]
                except TypeError:  # a value C cannot take: the checked path names it
                    return kernel(*builder.checked_raw(sessions))  # type: ignore[union-attr]
        _check_on_invalid(on_invalid)
        builder = self.builder
        if on_invalid == "nan":
            if self._is_single(sessions):
                try:
                    return self.predict_proba(sessions)
                except InputError:
                    return math.nan
            return self.score_batch(sessions, on_invalid="nan").probabilities
        if isinstance(sessions, Mapping):
            if self._is_single(sessions):
                if self._session_one is not None:
                    try:
                        return self._session_one(*builder.raw(sessions))
                    except TypeError:  # a value C cannot take: the checked path names it
                        return self._session_one(*builder.checked_raw(sessions))
                return self._one(builder.row(sessions))
            return self._predict_f64(builder.transform(sessions))
        return self._predict_f64(builder.transform(self._columns(sessions)))

    def score_batch(self, sessions: Any, on_invalid: str = "nan") -> BatchResult:
        """Score a batch of page views, keeping going past invalid rows.

        Parameters
        ----------
        sessions : list of dicts, dict of columns or DataFrame
            Page views as for :meth:`predict_proba`.
        on_invalid : {"nan", "raise"}
            ``"nan"`` (the default) scores the valid rows and reports the others.

        Returns
        -------
        BatchResult
            See below.

        Raises
        ------
        InputError
            A problem of the batch as a whole (a missing column, columns of different
            lengths), or any invalid row with ``on_invalid="raise"``.
        ValueError
            ``on_invalid`` is not one of :data:`ON_INVALID`.

        ``sessions`` is a list of dicts, a dict of columns or a DataFrame (one dict
        is a batch of one). Returns a :class:`BatchResult`: ``probabilities`` (an
        ndarray, NaN for each invalid row; the others equal ``predict_proba``) and
        ``errors``, a list of :class:`RowError` ``(row, field, message)`` naming
        every problem of every invalid row. Validation is vectorised per column:
        each check finds all of a column's bad rows at once, and only valid rows
        reach the compiled model. With ``on_invalid="raise"`` the first invalid rows
        raise an InputError instead (and ``errors`` is empty).
        """
        _check_on_invalid(on_invalid)
        builder = self.builder
        errors = RowErrors() if on_invalid == "nan" else None
        if isinstance(sessions, Mapping) and not self._is_single(sessions):
            columns: Mapping[str, Any] = sessions
        else:
            if isinstance(sessions, Mapping):
                sessions = [sessions]
            columns = self._columns(sessions, errors)
        X = builder.transform(columns, errors=errors)
        if errors is None:
            return BatchResult(self._predict_f64(X), [])
        self._feature_errors(X, errors)
        proba = self._score_valid(X, errors.invalid(X.shape[0]))
        return BatchResult(proba, errors.sorted_errors())

    def _is_single(self, sessions: Any) -> bool:
        """A mapping is one page view unless every field it has is a column (not a scalar).

        So ``{"current_category": [], "current_price": 5.0, ...}`` is one page view whose
        category is not a string, as in a list of dicts, not a batch of no rows.
        """
        if not isinstance(sessions, Mapping):
            return False
        present = [sessions[f] for f in self.builder.required_fields if f in sessions]
        return not present or any(is_scalar(v) for v in present)

    def _feature_errors(self, X: np.ndarray, errors: RowErrors) -> None:
        """Record rows of a feature matrix the compiled model refuses (NaN, inf, > float32)."""
        ok = np.abs(X) <= (np.float32(FLOAT32_MAX) if X.dtype == np.float32 else FLOAT32_MAX)
        # --- model families (issue 15): float64 inputs, NaN routed as the model learned
        if self.input_precision == "float64":
            ok = np.isfinite(X)
        if nan_ok_for(self.missing_values):
            ok |= np.isnan(X)
        # ---
        bad_rows = np.flatnonzero(~ok.all(axis=1))
        for r in bad_rows.tolist():
            c = int(np.flatnonzero(~ok[r])[0])
            v = float(X[r, c])
            what = "is NaN" if v != v else "is infinite" if abs(v) == math.inf else None
            errors.add(self.feature_names[c], r, what or "is too large for float32")

    def _score_valid(self, X: np.ndarray, invalid: np.ndarray, n_threads: int = 1) -> np.ndarray:
        """Probabilities of the rows not marked invalid; NaN for the others."""
        if not invalid.any():
            return self.predict_proba_features(X, n_threads=n_threads)
        out = np.full(X.shape[0], np.nan)
        keep = ~invalid
        if keep.any():
            out[keep] = self.predict_proba_features(X[keep], n_threads=n_threads)
        return out

    def features(self, sessions: Any) -> np.ndarray:
        """The feature matrix the model scores for these sessions (for inspection).

        Parameters
        ----------
        sessions : dict, list of dicts, dict of columns or DataFrame
            Page views as for :meth:`predict_proba`.

        Returns
        -------
        ndarray of float64, shape (n_sessions, n_features)
            Columns in ``feature_names`` order (one row for a single dict).

        Raises
        ------
        InputError
            As :meth:`predict_proba` with ``on_invalid="raise"``, or the model knows no
            page-view schema (compiled from a bare feature matrix).
        TypeError
            The model was trained on an event log (its sessions are not page views).
        """
        if isinstance(sessions, Mapping):
            if self._is_single(sessions):
                return np.asarray([self.builder.row(sessions)], dtype=np.float64)
            return self.builder.transform(sessions)
        return self.builder.transform(self._columns(sessions))

    # ---- recommendations -------------------------------------------------------------------
    def recommend(
        self,
        session: Mapping[str, Any],
        k: int = 3,
        threshold: float | None = None,
        candidates: Sequence[str] | None = None,
        exclude: Iterable[str] = EXCLUDABLE,
    ) -> list[Recommendation]:
        """The top ``k`` products for this session at or above ``threshold``, most likely first.

        Parameters
        ----------
        session
            One page view in the model's schema (a dict; ``cart_product_ids`` optional),
            or for an event-trained model ``{"products": [...], "cart": [...]}``.
        k
            How many products at most (int >= 0).
        threshold
            Minimum probability in [0, 1]; default the artifact's (0.7 for the quick start,
            0 for rankers). Fewer than ``k`` (or none) is a valid answer.
        candidates
            Product ids to rank instead of the whole catalog (deduplicated; each must be
            listed); an event model's default is its first stage's candidates.
        exclude
            Drawn from ``("viewed", "in_cart")`` (the default: both are left out).

        Returns
        -------
        list of Recommendation
            Best first; ties by catalog order. Exactly the answer of scoring every
            candidate with :meth:`predict_proba` and sorting, whichever path computes it
            (threshold cells for large catalogs, :attr:`uses_cells`).

        Raises
        ------
        InputError
            A bad session field, ``k``, ``threshold``, ``candidates`` or ``exclude``,
            naming it.
        ValueError
            The model has no candidate-product features (it scores page views only).
        """
        if getattr(self._builder, "tables", None) is not None:  # an event-trained model
            return self._recommend_events(session, k, threshold, candidates, exclude)
        return recommend(self, session, k, threshold, candidates, exclude)

    # ---- event-trained models (reco_fast.features.events) -------------------------------------
    def _predict_events(self, sessions: Any, on_invalid: str) -> float | np.ndarray:
        _check_on_invalid(on_invalid)
        builder = self._builder
        assert isinstance(builder, EventBuilder)
        if isinstance(sessions, Mapping):
            try:
                return float(self._predict_f64(builder.rows([sessions]))[0])
            except InputError:
                if on_invalid == "raise":
                    raise
                return math.nan
        if isinstance(sessions, (str, bytes)) or not isinstance(sessions, Sequence):
            raise TypeError(
                "an event-trained model scores a session dict or a list of them, got "
                f"{type(sessions).__name__}"
            )
        if on_invalid == "raise":
            return self._predict_f64(builder.rows(sessions))
        out = np.full(len(sessions), np.nan)
        for i, s in enumerate(sessions):
            try:
                out[i] = self._predict_f64(builder.rows([s], offset=i))[0]
            except InputError:
                pass
        return out

    def _recommend_events(
        self,
        session: Mapping[str, Any],
        k: int,
        threshold: float | None,
        candidates: Sequence[str] | None,
        exclude: Iterable[str],
    ) -> list[Recommendation]:
        from reco_fast.serve.recommend import _check_args

        if self.output == "probability":
            k, t, excluded = _check_args(
                k, self.threshold if threshold is None else threshold, exclude
            )
        else:  # a ranker: every candidate by score, no threshold
            if threshold is not None:
                raise InputError(
                    "a ranker's scores have no threshold: recommend(session, k) ranks every "
                    "candidate by score",
                    field="threshold",
                )
            k, _, excluded = _check_args(k, 0.0, exclude)
            t = -math.inf
        builder = self._builder
        assert isinstance(builder, EventBuilder)
        ranked = builder.rank(self._predict_f64, session, k, t, candidates, tuple(excluded))
        ids = builder.tables.product_ids
        return [Recommendation(str(ids[r.position]), r.probability, r.reason) for r in ranked]

    def with_catalog(self, catalog: Any) -> Model:
        """A model that recommends from a new catalog (prices or products changed).

        The ``catalog`` is a :class:`Catalog`, a list of dicts, a dict of columns or a
        DataFrame with product_id, category and price; categories must be ones
        the model was trained on. The compiled library is shared, not reloaded.

        For 2,048 products or more the whole-catalog top-k's cell index is built here
        (about 0.5 s per million products) and checked against the per-product kernel on
        one golden session (:attr:`uses_cells`). This model is unchanged: requests in
        flight keep their catalog.

        Raises
        ------
        InputError
            A bad catalog (see :class:`Catalog`) or a category the model does not know.
        """
        builder = self.builder
        if not isinstance(catalog, Catalog):
            catalog = Catalog.from_records(catalog)
        clone = self._replace(_builder=builder.with_catalog(catalog))
        clone._cells = clone._cell_index(clone._builder)
        return clone

    def _with_calibration(self, calibration: Calibration | None) -> Model:
        """This model's library serving ``calibration``'s probabilities: the build
        pipeline's view of a staged calibrated artifact (before its metadata is written)."""
        clone = self._replace(calibration=calibration)
        clone._use(_kernels(self._lib, self.backend))
        clone._cells = clone._cell_index(clone._builder)
        return clone

    def with_catalog_update(
        self,
        prices: Mapping[str, Any] | None = None,
        add: Any = None,
        remove: Iterable[str] | None = None,
    ) -> Model:
        """A model whose catalog has some products repriced, added or delisted
        (:meth:`Catalog.updated`, which documents ``prices``, ``add`` and ``remove``);
        this model is unchanged.

        The swap is atomic for whoever holds the model: keep the returned model (or
        ``handle.swap`` it into a :class:`~reco_fast.ModelHandle`) and new requests see the
        whole update, while requests in flight finish on the catalog they started with;
        nothing is locked. The cost is the catalog copy plus rebuilding the cell index:
        ``reco-fast bench --catalog-sizes`` reports it as ``update@N`` (one price).

        Raises
        ------
        InputError
            As :meth:`Catalog.updated`, or a new product's category is not one the model
            was trained on.
        """
        return self.with_catalog(self.builder.required_catalog.updated(prices, add, remove))

    def _with_builder(self, builder: Any) -> Model:
        """This model's library with ``builder``: the build pipeline's view of a staged
        artifact (its report replays recommend before the artifact is published)."""
        if builder.feature_names != self.feature_names:
            raise ValueError("the builder's features are not this model's")
        clone = self._replace(_builder=builder, _loaded_catalog=getattr(builder, "catalog", None))
        clone._cells = clone._cell_index(builder)
        return clone

    def _columns(self, sessions: Any, errors: RowErrors | None = None) -> Mapping[str, Any]:
        """A list of dicts or a DataFrame as columns of the required fields.

        With ``errors``, a row that is not a dict or lacks a field is recorded
        there and gets valid placeholders, so the other rows are still scored.
        """
        builder = self.builder
        fields = builder.required_fields
        if hasattr(sessions, "columns") and hasattr(sessions, "iloc"):  # a pandas DataFrame
            missing = [f for f in fields if f not in sessions.columns]
            if missing:
                raise InputError(f"missing field {missing[0]!r}", field=missing[0])
            return {f: series_values(sessions[f]) for f in fields}
        if isinstance(sessions, (str, bytes)) or not isinstance(sessions, Sequence):
            raise TypeError(
                "sessions must be a dict, a list of dicts, a dict of columns or a DataFrame; "
                f"got {type(sessions).__name__}"
            )
        rows = list(sessions)
        for i, s in enumerate(rows):
            if not isinstance(s, Mapping):
                if errors is None:
                    raise InputError(f"row {i} is a {type(s).__name__}, not a dict", rows=[i])
                errors.add(None, i, f"is a {type(s).__name__}, not a dict")
                rows[i] = {f: builder.placeholder(f) for f in fields}
        cols = {}
        for f in fields:
            col = []
            for i, s in enumerate(rows):
                try:
                    col.append(s[f])
                except KeyError:
                    if errors is None:
                        raise InputError(
                            f"missing field {f!r} (row {i})", field=f, rows=[i]
                        ) from None
                    errors.add(f, i, "is missing")
                    col.append(builder.placeholder(f))
            # one item per row, even when every item is a list of the same length
            cols[f] = np.fromiter(col, dtype=object, count=len(col)) if col else np.empty(0)
        return cols


def _listed(items: Sequence[Any]) -> str:
    """At most a few items, each shortened: error messages stay bounded."""
    shown = ", ".join(f"{v!r:.40}" for v in items[:_MAX_LISTED])
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"[{shown}]{more}"


load = Model.load
"""``reco_fast.load(path, backend=None)``: :meth:`Model.load`, the one way to load an artifact."""
