"""The exceptions reco_fast raises on purpose.

A service catches :class:`InputError` to answer a bad request with a 4xx and keep
serving; :class:`ArtifactError` means the model on disk must not be trusted.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ArtifactError", "CompileError", "InputError"]


class InputError(ValueError):
    """Invalid input: names the field and, in a batch, the first offending rows.

    It is a ValueError so that code written for scikit-learn's validation errors
    keeps working.
    """

    def __init__(self, message: str, *, field: str | None = None, rows: Sequence[int] = ()):
        super().__init__(message)
        self.field = field
        self.rows = tuple(int(r) for r in rows)


class ArtifactError(RuntimeError):
    """A model artifact is missing, damaged, foreign or built for another platform."""


class CompileError(RuntimeError):
    """An estimator cannot be compiled faithfully; nothing was written."""
