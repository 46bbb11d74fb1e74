"""Docstring sections shared by several public methods, written once.

A module keeps a mapping of section texts; :func:`inject` replaces every docstring line
that holds only ``%(name)s`` with that section, re-indented to the line's indentation.
The result is an ordinary ``__doc__``: ``help()``, IDEs and tests/test_docstrings.py see
the whole text. (matplotlib's ``_docstring.interpd`` and pandas' ``@doc`` do the same.)
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = ["inject"]

F = TypeVar("F", bound=Callable[..., object])

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.MULTILINE)


def inject(sections: Mapping[str, str]) -> Callable[[F], F]:
    """A decorator that fills the function's ``%(name)s`` lines from ``sections``.

    Parameters
    ----------
    sections : mapping of str to str
        Section texts by name, written at any indentation (they are dedented).

    Returns
    -------
    callable
        The decorator; it returns the function itself, its ``__doc__`` filled.

    Raises
    ------
    KeyError
        A placeholder names no section (at import, where the decorator runs).
    ValueError
        The function has no docstring, or its docstring has no placeholder. Under
        ``python -OO``, which strips every docstring, a function without one is
        returned as it is.
    """

    def fill(match: re.Match[str]) -> str:
        text = textwrap.dedent(sections[match["name"]]).strip("\n")
        return textwrap.indent(text, match["indent"])

    def decorate(func: F) -> F:
        doc = func.__doc__
        if doc is None and sys.flags.optimize >= 2:
            return func  # -OO: no docstrings to fill
        if not doc or not _PLACEHOLDER.search(doc):
            raise ValueError(f"{func.__qualname__}: no %(name)s line in its docstring to fill")
        func.__doc__ = _PLACEHOLDER.sub(fill, doc)
        return func

    return decorate
