"""The exceptions reco_fast raises on purpose.

A service catches :class:`InputError` to answer a bad request with a 4xx and keep
serving; :class:`ArtifactError` means the model on disk must not be trusted.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ArtifactError",
    "CompileError",
    "InputError",
    "RecoFastError",
    "SessionNotFound",
    "StoreUnavailable",
]


class RecoFastError(Exception):
    """Base class of every error reco_fast raises on purpose.

    Bad *arguments* (a wrong type or value for a parameter) are plain
    ``TypeError``/``ValueError`` naming the argument, as in scikit-learn; bad
    *data*, damaged artifacts, failed compiles and unreachable stores are
    subclasses of this class.
    """


class InputError(RecoFastError, ValueError):
    """Invalid input: names the field and, in a batch, the first offending rows.

    It is a ValueError so that code written for scikit-learn's validation errors
    keeps working.
    """

    def __init__(self, message: str, *, field: str | None = None, rows: Sequence[int] = ()):
        super().__init__(message)
        self.field = field
        self.rows = tuple(int(r) for r in rows)


class ArtifactError(RecoFastError, RuntimeError):
    """A model artifact is missing, damaged, foreign or built for another platform."""


class CompileError(RecoFastError, RuntimeError):
    """An estimator cannot be compiled faithfully; nothing was written."""


class SessionNotFound(InputError):
    """The session is unknown or expired (idle for longer than the TTL)."""


class StoreUnavailable(RecoFastError, RuntimeError):
    """The session store (Redis) cannot be reached.

    The message says whether the event was not applied or, when the connection
    dropped after the transaction was sent and retrying failed too, that it may
    or may not have been applied.
    """
