"""The README is executable: every shell and Python block runs, in order, from a fresh copy.

The repository's files (what ``git ls-files`` lists, as they are in this checkout)
are copied into a directory whose name has spaces and non-ASCII characters, and each
fenced ``bash`` or ``python`` block of README.md runs there exactly as written, one
after the other, so later blocks see what earlier ones built (the quick start's
relative ``artifacts/`` and ``data/``). A block preceded by
``<!-- readme-test: skip (reason) -->`` is skipped (it needs something the tests do
not have, such as a Spark DataFrame); ``<!-- readme-test: redis -->`` gets a Redis
server through ``REDIS_URL``.

Two commands are stood in for, because running them here would change the test
environment itself: ``pip`` checks that the extras a block installs exist and are
installed (CI installs them for real, and ``.ci/run`` runs the quick start's command
as written), and ``pytest`` collects the suite instead of running it from inside
itself.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO, require

README = REPO / "README.md"
FENCE = re.compile(
    r"(?:<!--\s*readme-test:\s*(?P<mark>[^>]*?)\s*-->\s*\n)?```(?P<lang>bash|python)\n(?P<body>.*?)```",
    re.S,
)

PIP_SHIM = r'''#!{python}
"""Stand-in for pip in the README test: the extras asked for exist and are installed."""
import re, sys
from importlib import metadata
from packaging.requirements import Requirement
args = sys.argv[1:]
if args[:1] != ["install"]:
    sys.exit(f"README test pip shim: only 'pip install' is expected, got {{args}}")
extras = set()
for arg in args[1:]:
    m = re.fullmatch(r"\.\[([\w,\-]+)\]", arg)
    if m:
        extras.update(m.group(1).split(","))
declared = set(metadata.metadata("reco_fast").get_all("Provides-Extra") or [])
missing = extras - declared
if missing:
    sys.exit(f"pip: reco_fast has no extra {{sorted(missing)}} (declared: {{sorted(declared)}})")
for req in map(Requirement, metadata.requires("reco_fast") or []):
    wanted = any(req.marker and req.marker.evaluate({{"extra": e}}) for e in extras)
    if not wanted or req.name == "reco_fast":
        continue
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(f"pip: {{req}} (extra {{sorted(extras)}}) is not installed")
    if version not in req.specifier:
        sys.exit(f"pip: {{req.name}} {{version}} does not satisfy {{req}}")
'''

PYTEST_SHIM = """#!{python}
import subprocess, sys
sys.exit(subprocess.call([sys.executable, "-m", "pytest", "--collect-only", "-q", *sys.argv[1:]]))
"""


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    mark: str
    body: str


def readme_blocks(text: str) -> list[Block]:
    """Every fenced bash/python block with the readme-test mark before it, in order."""
    return [
        Block(text.count("\n", 0, m.start("lang")) + 1, m["lang"], m["mark"] or "", m["body"])
        for m in FENCE.finditer(text)
    ]


def _copy_checkout(dst: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            require("redis-server", "the README's Redis block")
        yield None
        return
    port, work = _free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_readme_blocks_are_found_and_marked() -> None:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    langs = [b.lang for b in blocks]
    assert langs.count("bash") >= 3 and langs.count("python") >= 2
    assert blocks[0].lang == "bash" and "python build_model.py" in blocks[0].body
    for block in blocks:
        assert block.mark == "" or block.mark == "redis" or block.mark.startswith("skip ("), (
            f"README.md:{block.line}: unknown readme-test mark {block.mark!r}"
        )


def test_ci_runs_the_quick_start_command_as_written() -> None:
    quick_start = readme_blocks(README.read_text(encoding="utf-8"))[0].body.splitlines()[0]
    command = quick_start.split("#", 1)[0].strip()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert command in ci.splitlines(), f".ci/run must run the quick start as written: {command}"


def test_every_readme_block_runs_from_a_fresh_copy(tmp_path: Path, redis_url: str | None) -> None:
    clone = tmp_path / "a fresh clone, ünïcode"
    clone.mkdir()
    _copy_checkout(clone)
    shared = REPO.parent / "shared"
    if shared.is_dir():  # the README reads ../shared/data/ beside the clone, as CI has it
        (tmp_path / "shared").symlink_to(shared)
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, text in (("pip", PIP_SHIM), ("pytest", PYTEST_SHIM)):
        shim = shims / name
        shim.write_text(text.format(python=sys.executable))
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ)
    env["PATH"] = f"{shims}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(clone)
    env.pop("PYTHONSTARTUP", None)

    ran = 0
    for block in readme_blocks((clone / "README.md").read_text(encoding="utf-8")):
        if block.mark.startswith("skip"):
            continue
        if block.mark == "redis":
            if redis_url is None:
                continue  # no server here; under CI the fixture fails instead
            env["REDIS_URL"] = redis_url
        command = (
            ["bash", "-euo", "pipefail", "-c", block.body]
            if block.lang == "bash"
            else [sys.executable, "-c", block.body]
        )
        done = subprocess.run(
            command, cwd=clone, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, (
            f"README.md:{block.line} ({block.lang}) failed with exit {done.returncode}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )
        ran += 1
    assert ran >= 5
    assert (clone / "artifacts" / "reco_model" / "metadata.json").is_file()
    assert (clone / "scored.csv").is_file()
