"""Reference docstrings: every public name of ``reco_fast`` (its ``__all__``) and every
public method of those classes documents each of its parameters by name.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import reco_fast
from reco_fast._docstrings import inject
from tests.helpers import subprocess_env

PENDING: set[str] = set()
BUILT_BY_LOAD = {"Model"}  # its constructor is internal: load() builds it


def _public() -> Iterator[tuple[str, Callable[..., Any], Callable[..., Any] | None]]:
    """(name, what holds the docstring, what has the signature) of each public name."""
    for name in reco_fast.__all__:
        obj = getattr(reco_fast, name)
        if name in PENDING or not callable(obj):
            continue
        if not inspect.isclass(obj):
            yield name, obj, obj
            continue
        internal = issubclass(obj, BaseException) or name in BUILT_BY_LOAD
        init = None if internal else obj.__init__
        yield name, obj, init if init is not object.__init__ else None
        for attr, value in vars(obj).items():
            qual = f"{name}.{attr}"
            if attr.startswith("_") or qual in PENDING:
                continue
            if isinstance(value, property):
                yield qual, value.fget, None
            elif isinstance(value, (classmethod, staticmethod)):
                yield qual, value.__func__, value.__func__
            elif inspect.isfunction(value):
                yield qual, value, value


PUBLIC = sorted(_public(), key=lambda item: item[0])


@pytest.mark.parametrize(("name", "holder", "signed"), PUBLIC, ids=[p[0] for p in PUBLIC])
def test_every_parameter_is_documented(
    name: str, holder: Callable[..., Any], signed: Callable[..., Any] | None
) -> None:
    doc = inspect.getdoc(holder) or ""
    assert len(doc) >= 20, f"{name} has no docstring"
    assert "%(" not in doc, f"{name}: a shared section placeholder was left unfilled"
    if signed is None:
        return
    params = [
        p
        for p in inspect.signature(signed).parameters.values()
        if p.name not in ("self", "cls")
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    missing = [p.name for p in params if f"{p.name}" not in doc]
    assert not missing, f"{name}: {missing} not documented"


def test_shared_sections_are_filled_at_the_placeholder_indent() -> None:
    sections = {
        "params": """
        x : int
            Rows, a count.
    """
    }

    @inject(sections)
    def f(x: int) -> None:
        """Summary.

        Parameters
        ----------
        %(params)s
        """

    assert f.__doc__ is not None
    assert "\n        x : int\n            Rows, a count.\n" in f.__doc__
    assert "%(" not in f.__doc__


def test_shared_sections_refuse_an_unknown_name_or_nothing_to_fill() -> None:
    def unknown() -> None:
        """Summary.

        %(nope)s
        """

    def plain() -> None:
        """Summary with nothing to fill."""

    with pytest.raises(KeyError, match="nope"):
        inject({})(unknown)
    with pytest.raises(ValueError, match="no %\\(name\\)s line"):
        inject({})(plain)


def test_reco_fast_imports_without_docstrings() -> None:
    # python -OO strips every docstring: the shared sections then have nothing to fill,
    # and importing reco_fast and building the CLI's parsers (descriptions taken from
    # module docstrings, as the benchmark reports' are) must still work
    code = (
        "import reco_fast.serve.session, reco_fast.serve.eventsession, reco_fast\n"
        "from reco_fast.tools import cli, loop_cli\n"
        "from benchmarks import families_report, report\n"
        "for p in (cli.main, loop_cli.main, report.main, families_report.main):\n"
        "    try:\n"
        "        p(['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-OO", "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
