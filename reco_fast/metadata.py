"""The typed form of an artifact's ``metadata.json``: :class:`ArtifactMetadata`.

The one definition of what the file holds. The compiler builds one
(:func:`reco_fast.compiler.driver.compile_model`), :func:`reco_fast.artifact.write_metadata`
seals it (file checksums and its own digest) and writes :meth:`ArtifactMetadata.to_json`;
every reader (:func:`reco_fast.artifact.read_artifact`, ``Model.load``, ``reco-fast
info``/``verify``, the Spark driver) gets it from :meth:`ArtifactMetadata.from_json`, which
refuses a missing or ill-typed field by name with :class:`~reco_fast.errors.ArtifactError`.

The on-disk keys are the dataclass's field names (``absent_keys`` and ``extra`` excepted).
Only the standard library is used: serving imports this module.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from reco_fast.errors import ArtifactError

__all__ = ["FORMAT_NAME", "OUTPUT_KINDS", "ArtifactMetadata"]

FORMAT_NAME = "reco_fast"
"""The ``format`` key's value: what marks a metadata.json as reco_fast's."""

OUTPUT_KINDS: dict[str, tuple[str, ...]] = {
    "output": ("probability", "score", "value"),
    "link": ("sigmoid", "identity"),
    "missing_values": ("routed", "refused"),
    "input_precision": ("float32", "float64"),
}
"""The values the format-3 output-kind fields may take."""

_MAX_SHOWN = 40  # characters of a bad value an error shows


def _kind(value: Any) -> str:
    """A JSON type name for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# field name -> (what the value must be, in words; the check). The checks are of JSON types
# only: what a value means (a plain file name, this platform, a known feature set, golden
# outputs of the right shapes) is checked where it is used (reco_fast.artifact, serve/model.py).
_CHECKS: dict[str, tuple[str, Any]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "string?": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number?": ("a number or null", lambda v: v is None or _is_number(v)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "object?": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    "strings": (
        "an array of strings",
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    ),
    "strings?": (
        "an array of strings or null",
        lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
    ),
    "string map": (
        "an object of strings",
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
    ),
}


@dataclass(frozen=True, eq=False)
class ArtifactMetadata(Mapping[str, Any]):
    """An artifact's ``metadata.json``, typed: one field per key.

    Also a read-only mapping of its JSON form (``meta["n_trees"]``, ``dict(meta)``),
    which is how ``Model.metadata`` was read before this type existed; equality is
    equality of that JSON form.

    Attributes
    ----------
    format_version : int
        The artifact format (:data:`reco_fast.artifact.FORMAT_VERSION`; 2, 3 or 4 are
        read; 4 only for a calibrated artifact).
    created : str
        When the artifact was built: ISO 8601, UTC, to the second
        (``"2026-11-29T20:15:54+00:00"``).
    library : str
        File name (inside the artifact) of the compiled extension module.
    module : str
        The extension module's import name (``_reco_model_<16 hex digits>``).
    feature_names : tuple of str
        The model's input columns, in order (JSON: an array).
    feature_set : str or None
        The feature set the model was built on (``"seed"``, ``"ranking"``, an event-log
        set such as ``"events+category+price"``), or None for a bare feature matrix.
    feature_spec : dict
        ``{"feature_set", "names", "definition_sha256"}``: what ``load`` compares with this
        reco_fast's feature specification (``definition_sha256``: hex sha256, or None).
    threshold : float or None
        Probability in [0, 1] at or above which ``recommend`` shows a product; None for a
        model whose output is not a probability (a ranker's score, a regressor's value).
    family : str
        The front end that read the estimator: ``"sklearn-gb"``, ``"sklearn-hgb"``,
        ``"xgboost"`` or ``"lightgbm"``. Format 2: absent, read as ``"sklearn-gb"``.
    objective : str
        The library's own name of the loss (``"log_loss"``, ``"lambdarank"``...).
        Format 2: absent, read as ``"log_loss"``.
    output : str
        What the model gives: ``"probability"``, ``"score"`` or ``"value"``
        (:data:`OUTPUT_KINDS`). Format 2: absent, read as ``"probability"``.
    link : str
        ``"sigmoid"`` (output = 1 / (1 + exp(-margin))) or ``"identity"``.
        Format 2: absent, read as ``"sigmoid"``.
    input_precision : str
        ``"float32"`` (inputs are rounded to float32 before any comparison) or
        ``"float64"``. Format 2: absent, read as ``"float32"``.
    missing_values : str
        ``"routed"`` (NaN is a valid input, sent where the model learned) or
        ``"refused"``. Format 2: absent, read as ``"refused"``.
    estimator : dict
        The estimator's JSON-scalar parameters (``max_depth``, ``learning_rate``...).
    n_trees : int
        Number of trees in the compiled ensemble.
    backend : str
        The evaluator that serves by default (``"flat"``, ``"tl2cgen"``...).
    flat_evaluator : str or None
        ``"generated"``, or ``"not generated: <why>"``. Format 2: absent (None).
    backends : dict
        ``{backend: {"ns_per_row": float}}``: each evaluator's speed at build time, in
        nanoseconds per feature row on the build machine.
    versions : dict of str to str
        Versions of reco_fast, Python and the libraries that built the artifact.
    platform : dict of str to str
        ``system``, ``machine``, ``ext_suffix`` and ``python`` of the build machine; the
        first three must match the loading interpreter's.
    verification : dict
        What the build verified: ``rows``/``adversarial_rows`` (counts) and the largest
        absolute differences from the reference (``max_abs_diff``...), the accepted
        ``tolerance`` and ``margin_tolerance`` (absolute, in output and margin units),
        the ``reference`` and the ``backends`` checked.
    golden : dict
        ``X`` (rows of feature values, null for a missing value), ``proba`` (the
        reference's output for each row) and, format 3, ``margin`` (its raw margin):
        checked against the library at every load.
    golden_sessions : dict or None
        For models built from sessions: ``sessions`` (raw page views), ``proba`` and
        ``recommend`` cases, checked at every load. None (absent) otherwise.
    vocabulary : dict or None
        The categorical encodings of a page-view feature set (field -> list of values,
        in code order); None (absent) otherwise.
    catalog : str or None
        File name (inside the artifact) of the product catalog CSV, if it has one.
    data : dict or None
        Where the training data came from (``source``, ``rows`` or ``events``, ``kind``).
    training : dict or None
        A retrained model's training counts (``rows``, ``positives``, ``requests``...).
    item_tables : tuple of str or None
        File names of an event-log model's item tables (``items.json``, ``covis.npz``).
    calibration : dict or None
        Format 4: the monotone map from the raw margin to the served probability
        (:class:`reco_fast.serve.calibration.Calibration`): ``{"method": "sigmoid", "a",
        "b"}`` or ``{"method": "isotonic", "x", "y"}``. None (absent): the model's own
        probability is served.
    threshold_choice : dict or None
        How the build chose ``threshold`` (``rule``: default, given, target_precision or
        target_coverage; ``target``) and the precision and coverage it gave on the
        calibration and evaluation halves of the held-out split. None (absent) otherwise.
    files : dict of str to str
        Every other file of the artifact and its sha256 (64 lowercase hex digits).
        Empty until :func:`reco_fast.artifact.write_metadata` seals the artifact.
    metadata_sha256 : str
        sha256 of the canonical JSON of everything else
        (:func:`reco_fast.artifact.metadata_digest`); empty until sealed.
    absent_keys : frozenset of str
        Optional keys the file does not have (a format-2 file has no ``output``...):
        :meth:`to_json` leaves them out, so a file reads back to exactly its own JSON.
        Not a key of the file.
    extra : dict
        Keys this reco_fast does not define, kept as they are (they are covered by the
        digest). Not a key of the file itself: its items are.
    """

    format_version: int
    created: str
    library: str
    module: str
    feature_names: tuple[str, ...]
    feature_set: str | None
    feature_spec: dict[str, Any]
    threshold: float | None
    estimator: dict[str, Any]
    n_trees: int
    backend: str
    backends: dict[str, Any]
    versions: dict[str, str]
    platform: dict[str, str]
    verification: dict[str, Any]
    golden: dict[str, Any]
    family: str = "sklearn-gb"
    objective: str = "log_loss"
    output: str = "probability"
    link: str = "sigmoid"
    input_precision: str = "float32"
    missing_values: str = "refused"
    flat_evaluator: str | None = None
    golden_sessions: dict[str, Any] | None = None
    vocabulary: dict[str, Any] | None = None
    catalog: str | None = None
    data: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    item_tables: tuple[str, ...] | None = None
    calibration: dict[str, Any] | None = None
    threshold_choice: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    metadata_sha256: str = ""
    absent_keys: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)

    # JSON type of each key (see _CHECKS)
    _TYPES: ClassVar[dict[str, str]] = {
        "format_version": "int",
        "created": "string",
        "library": "string",
        "module": "string",
        "feature_names": "strings",
        "feature_set": "string?",
        "feature_spec": "object",
        "threshold": "number?",
        "estimator": "object",
        "n_trees": "int",
        "backend": "string",
        "backends": "object",
        "versions": "string map",
        "platform": "string map",
        "verification": "object",
        "golden": "object",
        "family": "string",
        "objective": "string",
        "output": "string",
        "link": "string",
        "input_precision": "string",
        "missing_values": "string",
        "flat_evaluator": "string?",
        "golden_sessions": "object?",
        "vocabulary": "object?",
        "catalog": "string?",
        "data": "object?",
        "training": "object?",
        "item_tables": "strings?",
        "calibration": "object?",
        "threshold_choice": "object?",
        "files": "string map",
        "metadata_sha256": "string",
    }
    # keys a file may lack: the format-3 ones (absent from format 2) and those only some
    # builds write; and, while the artifact is not yet sealed, its checksums
    _OPTIONAL: ClassVar[frozenset[str]] = frozenset(
        {
            "family",
            "objective",
            "output",
            "link",
            "input_precision",
            "missing_values",
            "flat_evaluator",
            "golden_sessions",
            "vocabulary",
            "catalog",
            "data",
            "training",
            "item_tables",
            "calibration",
            "threshold_choice",
        }
    )
    _SEAL: ClassVar[frozenset[str]] = frozenset({"files", "metadata_sha256"})

    # ---- JSON ---------------------------------------------------------------------------
    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], source: str = "metadata.json", *, sealed: bool = True
    ) -> ArtifactMetadata:
        """The typed metadata of a parsed ``metadata.json`` object.

        Parameters
        ----------
        data : mapping
            The parsed JSON object (``json.loads`` of the file).
        source : str
            How errors name where ``data`` came from (the file's path).
        sealed : bool
            Whether ``files`` and ``metadata_sha256`` are required (True for a file read
            from disk; False for metadata about to be sealed by ``write_metadata``).

        Returns
        -------
        ArtifactMetadata
            Whose :meth:`to_json` equals ``data`` (keys and values).

        Raises
        ------
        ArtifactError
            ``data`` is not reco_fast metadata (``format``), or a field is missing or of
            the wrong JSON type, or an output-kind field has an unknown value; the
            message names the field. Nothing here checks the digest: see
            :func:`reco_fast.artifact.read_artifact`.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT_NAME:
            raise ArtifactError(f"{source} is not reco_fast metadata")
        values: dict[str, Any] = {}
        absent = set()
        for name in cls._TYPES:
            if name not in data:
                if name in cls._OPTIONAL or (name in cls._SEAL and not sealed):
                    absent.add(name)
                    continue
                raise ArtifactError(
                    f"{source} has no {name!r} field: it is damaged or was not written by "
                    "reco_fast; rebuild the artifact"
                )
            value = data[name]
            what, check = _CHECKS[cls._TYPES[name]]
            if not check(value):
                raise ArtifactError(
                    f"{source}: the field {name!r} must be {what}, got {_kind(value)}; "
                    "rebuild the artifact"
                )
            allowed = OUTPUT_KINDS.get(name)
            if allowed is not None and value not in allowed:
                raise ArtifactError(
                    f"{source}: the field {name!r} must be one of {list(allowed)}, got "
                    f"{str(value)[:_MAX_SHOWN]!r}; rebuild the artifact"
                )
            if name in ("feature_names", "item_tables") and value is not None:
                value = tuple(value)
            values[name] = value
        extra = {k: v for k, v in data.items() if k not in cls._TYPES and k != "format"}
        return cls(**values, absent_keys=frozenset(absent), extra=extra)

    def to_json(self) -> dict[str, Any]:
        """The ``metadata.json`` object: a fresh dict of JSON values (arrays as lists).

        Keys in :attr:`absent_keys` are left out; :attr:`extra`'s keys are included.
        """
        return {key: self[key] for key in self}

    def replace(self, **changes: Any) -> ArtifactMetadata:
        """A copy with some fields changed (a changed field is no longer absent)."""
        absent = self.absent_keys - changes.keys()
        return dataclasses.replace(self, **changes, absent_keys=absent)

    # ---- the read-only mapping of the JSON form ----------------------------------------
    # Per key, so reading one field never serializes the others (a wide model's golden
    # rows are megabytes of JSON). The view is exactly ``{"format": ..., fields...}``
    # updated with ``extra``, as JSON reads it back: extra keys as JSON writes them (1 is
    # "1"), an extra key that is also a field's overriding it in the field's place.
    def _extra(self) -> dict[str, Any]:
        if all(isinstance(key, str) for key in self.extra):
            return self.extra
        return {_json_key(key): value for key, value in self.extra.items()}

    def _keys(self) -> list[str]:
        present = [name for name in self._TYPES if name not in self.absent_keys]
        return list(dict.fromkeys(["format", *present, *self._extra()]))

    def _value(self, key: str) -> Any:
        """The value of ``key`` as held (not a copy); KeyError if the view lacks it."""
        extra = self._extra()
        if key in extra:
            return extra[key]
        if key == "format":
            return FORMAT_NAME
        if key in self._TYPES and key not in self.absent_keys:
            return getattr(self, key)
        raise KeyError(key)

    def __getitem__(self, key: str) -> Any:
        # a deep copy as JSON (tuples become lists, a numpy float a float): editing it
        # never edits this object
        value: Any = json.loads(json.dumps(self._value(key)))
        return value

    def __contains__(self, key: object) -> bool:
        try:
            self._value(key)  # type: ignore[arg-type]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


def _json_key(key: Any) -> str:
    """An object key as JSON writes it (``1`` -> ``"1"``, ``None`` -> ``"null"``)."""
    return str(next(iter(json.loads(json.dumps({key: None})))))
