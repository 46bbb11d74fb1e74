"""Offline scoring of large logs on Apache Spark (the ``spark`` extra).

::

    import reco_fast.tools.spark

    scored = reco_fast.tools.spark.score(df, "/shared/artifacts/reco_model")
    scored = reco_fast.tools.spark.score(features_df, model, features=True)

:func:`score` returns ``df`` with one more column, the click probability, computed
by ``Model.predict_proba`` on each Arrow batch (``mapInPandas``): the same numbers,
bit for bit, as scoring the same rows in one pandas DataFrame on one machine.

What travels to the executors is the artifact's *path* (and the backend name),
never a loaded library: a loaded ``Model`` holds a dlopen'ed native module, which
cannot be pickled. (A ``Model`` captured in your own closures pickles as "re-open
this artifact", see ``Model.__reduce__``, so that works too, but it re-opens, and
re-verifies, the artifact each time Spark deserializes the closure.) The artifact
directory must therefore be readable at that path on every executor: a shared
filesystem, or ship it with ``--files``/``SparkContext.addFile(dir, recursive=True)``
and pass ``"sparkfiles:<directory name>"``.

Process-level state: each Python worker keeps the artifacts it has loaded in a
small LRU cache (:func:`worker_model`), keyed by the resolved path, the backend and
the modification time and size of the artifact's ``metadata.json``. It is the one
piece of process-level state in reco_fast, and it is there because Spark
deserializes the scoring function once per *task* (and calls it once per
partition) while it reuses each Python worker process for many tasks; loading
per task would re-check every checksum and golden output and re-import the
library every few thousand rows. A rebuilt artifact has a new ``metadata.json``
(artifacts are written atomically), so the key changes and the worker loads the
new one.

The driver never loads the native library: it reads ``metadata.json`` only (for
the feature names and the columns a session needs), so the output schema is
known before any job runs and a driver on another platform can still plan the job.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reco_fast.artifact import METADATA_FILE, load_metadata_file
from reco_fast.errors import ArtifactError, shown
from reco_fast.features.page import FEATURE_SETS, SESSION_NUMERIC, VIEWED_FIELDS
from reco_fast.features.schema import CATEGORICAL_FIELDS
from reco_fast.metadata import ArtifactMetadata
from reco_fast.serve.model import Model, load

try:  # pyspark is an optional dependency; the error says how to get it
    from pyspark.sql.types import (
        BooleanType,
        DoubleType,
        NumericType,
        StructField,
        StructType,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"reco_fast.tools.spark needs pyspark and pyarrow: pip install 'reco_fast[spark]' ({exc})"
    ) from exc

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

__all__ = ["SPARKFILES_PREFIX", "ArtifactRef", "output_schema", "score", "worker_model"]

SPARKFILES_PREFIX = "sparkfiles:"
WORKER_CACHE_SIZE = 4

_cache: OrderedDict[tuple[str, str | None, int, int], Model] = OrderedDict()
_cache_lock = threading.Lock()


def _local_path(path: str) -> Path:
    """The artifact directory on this machine: ``sparkfiles:NAME`` -> SparkFiles.get(NAME)."""
    if path.startswith(SPARKFILES_PREFIX):
        from pyspark import SparkFiles

        return Path(SparkFiles.get(path[len(SPARKFILES_PREFIX) :]))
    return Path(path)


def worker_model(path: str, backend: str | None = None) -> Model:
    """The loaded model for this artifact, loaded at most once per process (LRU of 4).

    Keyed by the resolved path, the backend and the mtime and size of the
    artifact's metadata.json, so a rebuilt artifact at the same path is reloaded.
    """
    root = _local_path(path).resolve()
    try:
        st = (root / METADATA_FILE).stat()
    except OSError as exc:
        raise ArtifactError(
            f"cannot read the artifact {root} on this executor ({exc}); put it on a "
            "filesystem every executor sees or ship it with --files / addFile"
        ) from None
    key = (str(root), backend, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        model = _cache.get(key)
        if model is not None:
            _cache.move_to_end(key)
            return model
        model = load(root, backend)
        _cache[key] = model
        while len(_cache) > WORKER_CACHE_SIZE:
            _cache.popitem(last=False)
        return model


@dataclass(frozen=True)
class ArtifactRef:
    """What the executors receive: an artifact path (or ``sparkfiles:NAME``) and a backend."""

    path: str
    backend: str | None = None

    @classmethod
    def of(cls, artifact: Model | str | os.PathLike[str]) -> ArtifactRef:
        if isinstance(artifact, Model):
            # Model.__reduce__ refuses a model whose catalog was replaced; so do we.
            artifact.__reduce__()
            return cls(str(artifact.path), getattr(artifact, "_requested_backend", None))
        if isinstance(artifact, (str, os.PathLike)):
            return cls(os.fspath(artifact))
        raise TypeError(
            f"artifact must be a path, 'sparkfiles:NAME' or a reco_fast.Model, got "
            f"{type(artifact).__name__}"
        )

    def metadata(self) -> ArtifactMetadata:
        """metadata.json as the driver sees it (no native code is loaded)."""
        return load_metadata_file(_local_path(self.path) / METADATA_FILE)


def _required_columns(meta: ArtifactMetadata, features: bool) -> tuple[str, ...]:
    if features:
        return meta.feature_names
    feature_set = meta.feature_set
    if feature_set not in FEATURE_SETS:
        raise ValueError(
            "this artifact was compiled from a bare feature matrix and knows no session "
            "schema; score a DataFrame of its feature columns with features=True"
        )
    fields: tuple[str, ...] = (*CATEGORICAL_FIELDS, *SESSION_NUMERIC)
    if feature_set == "ranking":
        fields += (*VIEWED_FIELDS, "recommended_product_id")
    return fields


def output_schema(schema: StructType, output_col: str = "click_probability") -> StructType:
    """The input schema plus a non-null double column ``output_col``."""
    if output_col in schema.fieldNames():
        raise ValueError(f"the DataFrame already has a column {shown(output_col)}; pick another")
    return StructType([*schema.fields, StructField(output_col, DoubleType(), nullable=False)])


def _scorer(
    ref: ArtifactRef, columns: tuple[str, ...], output_col: str, features: bool
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function. It closes over strings only (no Model, no library)."""

    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = worker_model(ref.path, ref.backend)
        for pdf in batches:
            if features:
                # by name, each column converted on its own (an integer column is
                # rounded to float32 once, never through float64)
                proba = model.predict_proba_features(pdf[list(columns)])
            elif len(pdf):
                proba = np.asarray(model.predict_proba(pdf), dtype=np.float64)
            else:
                proba = np.empty(0, dtype=np.float64)
            pdf[output_col] = np.asarray(proba, dtype=np.float64)
            yield pdf

    return score_batches


def score(
    df: DataFrame,
    artifact: Model | str | os.PathLike[str],
    *,
    output_col: str = "click_probability",
    features: bool = False,
) -> DataFrame:
    """``df`` with a ``output_col`` column: the model's click probability for each row.

    ``df`` is in the seed's log schema (the columns a session needs; any others,
    such as the label, are carried through), or with ``features=True`` holds the
    model's feature columns (``model.feature_names``, numeric) under those names.
    ``artifact`` is the artifact directory as every executor sees it, a
    ``"sparkfiles:NAME"`` for a directory shipped with ``--files``/``addFile``, or
    a loaded :class:`reco_fast.Model` (its path and backend are shipped, never the
    library). Lazy, like every Spark transformation: the schema is computed here,
    the scores when an action runs. Invalid rows fail the task with the model's
    ``InputError`` message (a row number there counts within one Arrow batch).
    """
    ref = ArtifactRef.of(artifact)
    columns = _required_columns(ref.metadata(), features)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"the DataFrame has no column {missing[0]!r}"
            + (" (a feature of this model)" if features else " (a field of the seed's schema)")
            + f"; it needs {list(columns)}"
        )
    if features:
        types = {f.name: f.dataType for f in df.schema.fields}
        bad = [c for c in columns if not isinstance(types[c], (NumericType, BooleanType))]
        if bad:
            raise ValueError(
                f"feature column {bad[0]!r} is {types[bad[0]].simpleString()}, not numeric"
            )
    schema = output_schema(df.schema, output_col)
    return df.mapInPandas(_scorer(ref, columns, output_col, features), schema)
