"""A reference to the model a service is serving, replaceable while it serves.

A service holds a :class:`ModelHandle` instead of a :class:`~reco_fast.Model`.
``swap`` loads and verifies a new artifact (checksums, platform, golden outputs:
everything :func:`reco_fast.load` checks) *before* it replaces the reference, in
one assignment. Scoring never takes a lock: each call reads the reference once,
so calls in flight finish on the model they started with, later calls use the
new one, and none fails. A new artifact that fails its checks raises
:class:`~reco_fast.ArtifactError` from ``swap`` and the old model keeps serving.

An artifact rebuilt in place (``build_model.py --out`` the same directory) is
picked up by ``reload()``; its compiled library carries a content hash in its
file and module name, so the new code is loaded beside the old one, never over it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from reco_fast.artifact import METADATA_FILE
from reco_fast.errors import ArtifactError
from reco_fast.serve.model import Model, load
from reco_fast.serve.recommend import Recommendation

__all__ = ["ModelHandle"]

# A rebuild publishing while we load can make one attempt see a mix of the two
# directories (refused by the checksums); it is retried when the artifact changed.
_LOAD_ATTEMPTS = 3


def _fingerprint(path: Path) -> str | None:
    """Identity of the artifact at path: the digest of its metadata (which lists every
    file's sha256 and the build time), or None when it cannot be read."""
    try:
        return hashlib.sha256((path / METADATA_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


class ModelHandle:
    """The current model of a service; thread-safe, swappable while serving.

    ``ModelHandle(path)`` loads the artifact at path; ``ModelHandle(model)`` wraps
    a loaded :class:`Model`. ``backend`` (for paths) is passed to every load.
    The scoring methods and any other attribute delegate to the current model,
    so a handle can stand where a Model is expected (e.g. ``SessionTracker(handle)``:
    its recommendations then always come from the current model; its product
    lookups are the catalog of the model it was built with).

    Parameters
    ----------
    source : str, path-like or Model
        An artifact directory to load, or a loaded model.
    backend : str, optional
        The evaluator for every load of a path, here and on ``swap``/``reload``
        (see :meth:`Model.load`); a loaded model is used as it is.

    Raises
    ------
    ArtifactError
        The artifact at ``source`` fails a load check.
    ValueError
        ``backend`` is not a known backend (when a path is loaded).
    """

    def __init__(self, source: str | os.PathLike[str] | Model, *, backend: str | None = None):
        self._swap_lock = threading.Lock()  # serialises swaps; scoring never takes it
        self._backend = backend
        if isinstance(source, Model):
            self._model = source
            self._path = Path(source.path)
            self._fingerprint = _fingerprint(self._path)
        else:
            self._path = Path(source)
            self._model, self._fingerprint = self._load(self._path)
        self.swaps = 0
        self._id: tuple[Model | None, str] = (None, "")

    # ---- the current model -----------------------------------------------------------------
    @property
    def model(self) -> Model:
        """The model serving now (hold on to it to finish a unit of work on one model)."""
        return self._model

    @property
    def path(self) -> Path:
        """The artifact directory the current model came from (what ``reload`` re-opens)."""
        return self._path

    @property
    def model_id(self) -> str:
        """The current model's artifact id: the sha256 of its ``metadata.json``.

        The value impression records carry as ``model_id`` and the example service
        reports at ``/health`` (:func:`reco_fast.serve.impressions.artifact_id`);
        computed once per model (after a swap, at the first read).

        Raises
        ------
        ArtifactError
            The artifact's metadata.json cannot be read or was rebuilt since the
            current model was loaded (``reload()`` picks the new one up).
        """
        model = self._model
        cached, mid = self._id
        if cached is not model:
            from reco_fast.serve.impressions import artifact_id

            mid = artifact_id(model)
            self._id = (model, mid)
        return mid

    def predict_proba(self, sessions: Any, **kwargs: Any) -> Any:
        """:meth:`Model.predict_proba` of ``sessions`` by the model serving now (same
        parameters, returns and errors)."""
        return self._model.predict_proba(sessions, **kwargs)

    def predict_proba_features(self, X: Any, **kwargs: Any) -> Any:
        """:meth:`Model.predict_proba_features` of ``X`` by the model serving now (same
        parameters, returns and errors)."""
        return self._model.predict_proba_features(X, **kwargs)

    def recommend(self, session: Any, *args: Any, **kwargs: Any) -> list[Recommendation]:
        """:meth:`Model.recommend` of ``session`` by the model serving now (same
        parameters, returns and errors)."""
        return self._model.recommend(session, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # only reached for names the handle does not define: builder, features, threshold...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._model, name)

    def __repr__(self) -> str:
        return f"ModelHandle({self._model!r}, swaps={self.swaps})"

    # ---- replacing it ----------------------------------------------------------------------
    def _load(self, path: Path) -> tuple[Model, str | None]:
        for attempt in range(_LOAD_ATTEMPTS):
            before = _fingerprint(path)
            try:
                return load(path, self._backend), before
            except ArtifactError:
                if attempt + 1 == _LOAD_ATTEMPTS or _fingerprint(path) == before:
                    raise  # damaged, not merely replaced while we read it
        raise AssertionError("unreachable")  # pragma: no cover

    def swap(self, source: str | os.PathLike[str] | Model) -> Model:
        """Serve the artifact at ``source`` (or a loaded Model) from now on; return it.

        The new artifact is loaded and verified first; if that fails, ArtifactError
        propagates and the current model keeps serving. Returns the new model.
        """
        with self._swap_lock:
            if isinstance(source, Model):
                model, path, fingerprint = source, Path(source.path), _fingerprint(source.path)
            else:
                path = Path(source)
                model, fingerprint = self._load(path)
            self._model, self._path, self._fingerprint = model, path, fingerprint
            self.swaps += 1
            return model

    def reload(self) -> bool:
        """Re-open the current artifact's directory if it was rebuilt; True if swapped.

        Raises ArtifactError (and keeps serving the current model) if the
        directory now holds a damaged or foreign artifact.
        """
        with self._swap_lock:
            current = _fingerprint(self._path)
            if current is None or current == self._fingerprint:
                if current is None:
                    raise ArtifactError(
                        f"{self._path} has no readable {METADATA_FILE}; "
                        "still serving the current model"
                    )
                return False
            model, fingerprint = self._load(self._path)
            self._model, self._fingerprint = model, fingerprint
            self.swaps += 1
            return True
