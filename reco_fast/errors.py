"""The exceptions reco_fast raises on purpose.

A service catches :class:`InputError` to answer a bad request with a 4xx and keep
serving; :class:`ArtifactError` means the model on disk must not be trusted.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "ArtifactError",
    "CompileError",
    "InputError",
    "RecoFastError",
    "SessionNotFound",
    "StoreUnavailable",
    "shown",
    "shown_values",
]

MAX_SHOWN = 80
"""Longest echo of one input value in an error message, in characters."""
MAX_SHOWN_VALUES = 8
"""How many values of a list (a vocabulary, say) a message shows before "and N more"."""

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = MAX_SHOWN - 20
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdict = 6
_repr.maxlevel = 2


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters.

    Every message that echoes an input uses this, so a 1 MB id or body never
    becomes a 1 MB message: long strings keep their start and end around
    ``...``, long containers their first items.
    """
    try:
        text = _repr.repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_values(values: Iterable[Any], first: int = MAX_SHOWN_VALUES) -> str:
    """A list of allowed values for a message: the first few, then "... and N more"."""
    values = list(values)
    head = ", ".join(shown(v, MAX_SHOWN // 2) for v in values[:first])
    more = len(values) - first
    return f"[{head}]" if more <= 0 else f"[{head}, ... and {more} more]"


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

    Parameters
    ----------
    message : str
        What is wrong and what to do; bounded in length (inputs are echoed with
        :func:`shown`).
    field : str, optional
        The input field (or argument, e.g. ``"X"``) at fault; also the ``field`` attribute.
    rows : sequence of int
        The 0-based batch rows at fault (the first few); also the ``rows`` attribute
        (a tuple; empty for a single input).
    """

    def __init__(self, message: str, *, field: str | None = None, rows: Sequence[int] = ()):
        super().__init__(message)
        self.field = field
        self.rows = tuple(int(r) for r in rows)


class ArtifactError(RecoFastError, RuntimeError):
    """A model artifact is missing, damaged, foreign or built for another platform.

    Raised by ``load`` (and ``reco-fast verify``/``info``); every check that needs no
    native code runs before any of the artifact's code. The message names the file or
    metadata field and says what to do (usually: rebuild the artifact).
    """


class CompileError(RecoFastError, RuntimeError):
    """An estimator cannot be compiled faithfully; nothing was written.

    Raised by ``compile_model``: an unsupported estimator or parameter, a build that
    differs from the library's own predictions beyond the tolerance, or a failing C
    compiler (its first error is in the message).
    """


class SessionNotFound(InputError):
    """The session is unknown or expired (idle for longer than the TTL), or its stored
    value is corrupt; ``field`` is ``"session_id"``.
    Start it again with a page view (or any event, for an ``EventTracker``)."""


class StoreUnavailable(RecoFastError, RuntimeError):
    """The session store (Redis) cannot be reached.

    The message says whether the event was not applied or, when the connection
    dropped after the transaction was sent and retrying failed too, that it may
    or may not have been applied.
    """
