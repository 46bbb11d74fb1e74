"""The model artifact on disk: one directory, written atomically, checked at load.

Loading an artifact executes its native code, so nothing here trusts the
directory: every file's sha256 is checked against ``metadata.json``, the
platform and Python ABI must match, and nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ArtifactError

__all__ = ["FORMAT_VERSION", "METADATA_FILE", "platform_tag", "read_metadata"]

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
CATALOG_FILE = "catalog.csv"


_PLATFORM_LOCK = threading.RLock()
_PLATFORM: dict[str, str] | None = None


def config_var(name: str) -> Any:
    """``sysconfig.get_config_var(name)``, serialised: sysconfig is not thread-safe on
    first use (a thread asking while another initialises it gets None)."""
    with _PLATFORM_LOCK:
        return sysconfig.get_config_var(name)


def platform_tag() -> dict[str, str]:
    """What a compiled library needs of the machine that loads it.

    Computed once per process, under a lock: ``sysconfig.get_config_var`` is not
    thread-safe on first use (it returned None to some of eight threads loading at
    once), and the answer cannot change while the process runs.
    """
    global _PLATFORM
    with _PLATFORM_LOCK:
        if _PLATFORM is None:
            _PLATFORM = {
                "system": sys.platform,
                "machine": platform.machine(),
                "ext_suffix": config_var("EXT_SUFFIX") or "",
                "python": platform.python_version(),
            }
        return dict(_PLATFORM)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_metadata(staging: Path, metadata: dict[str, Any]) -> None:
    """Seal a staging directory: checksum every file, then write metadata.json last."""
    files = sorted(p for p in staging.iterdir() if p.is_file() and p.name != METADATA_FILE)
    metadata = dict(metadata)
    metadata["files"] = {p.name: sha256_file(p) for p in files}
    text = json.dumps(metadata, indent=2, sort_keys=False)
    (staging / METADATA_FILE).write_text(text + "\n", encoding="utf-8")


@contextlib.contextmanager
def build_lock(out_dir: Path) -> Iterator[None]:
    """Serialise builds into one directory (an flock beside it, released on crash)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def current_umask() -> int:
    """The process's file-creation mask, read without changing it.

    Linux reports it in ``/proc/self/status`` (``Umask:``, since 4.7). Elsewhere the
    only way is to set it and set it back (``os.umask``), which other threads creating
    files at that instant would see; the fallback is used only there.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # the most restrictive value, in case another thread looks now
    os.umask(mask)
    return mask


def staging_dir(out_dir: Path) -> Path:
    """A fresh directory beside the target, so the final rename stays on one filesystem."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))


def publish(staging: Path, out_dir: Path) -> None:
    """Move a sealed staging directory into place, replacing any previous artifact.

    Where the kernel and filesystem support it (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``), the new directory and the previous artifact trade
    places in one atomic step, so ``out_dir`` always names one complete
    artifact. Elsewhere the previous artifact is renamed aside first and removed
    only once the new one is in place; a crash between the two renames leaves
    the previous artifact in ``.NAME.old-*``, which the next build (under the
    build lock) moves back (:func:`recover`).
    """
    if out_dir.exists() and not (out_dir / METADATA_FILE).is_file() and any(out_dir.iterdir()):
        raise ArtifactError(
            f"{out_dir} exists and is not a reco_fast artifact; refusing to replace it"
        )
    # mkdtemp made the directory 0700: give it the mode mkdir would (what the umask allows),
    # so an artifact built by one user can be served by another
    os.chmod(staging, 0o777 & ~current_umask())
    _fsync_files(staging)  # the data reaches the disk before the rename that publishes it
    if out_dir.exists() and _exchange(staging, out_dir):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous artifact
        _fsync_dir(out_dir.parent)
        return
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rmdir(old)
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out_dir.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # this filesystem cannot exchange: use the two-rename fallback
    raise OSError(err, os.strerror(err), str(b))


def recover(out_dir: Path) -> list[Path]:
    """Clean up after builds that crashed; call with the build lock held.

    Under the lock no other build of ``out_dir`` runs, so every
    ``.NAME.staging-*`` and ``.NAME.old-*`` directory beside it is left over
    from a build that was killed. If ``out_dir`` itself is missing (a crash
    between the fallback's two renames), the newest complete ``.NAME.old-*``
    artifact is moved back first. Returns the directories removed.
    """
    parent = out_dir.parent
    if not parent.is_dir():
        return []
    olds = sorted(
        (p for p in parent.glob(f".{out_dir.name}.old-*") if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    if not out_dir.exists():
        for old in olds:
            if (old / METADATA_FILE).is_file():
                os.replace(old, out_dir)
                olds.remove(old)
                break
    removed = []
    for stale in [*parent.glob(f".{out_dir.name}.staging-*"), *olds]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def write_error(out_dir: Path, exc: OSError) -> ArtifactError:
    """A clear error for a build that could not write its artifact (disk full, read-only...)."""
    reason = exc.strerror or str(exc)
    return ArtifactError(
        f"cannot write artifact to {out_dir}: {reason}"
        + (f" ({exc.filename})" if exc.filename else "")
        + "; nothing was written, the previous artifact (if any) is unchanged"
    )


def _fsync_files(staging: Path) -> None:
    for p in staging.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(staging)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_metadata_file(meta_path: Path) -> dict[str, Any]:
    """Parse a metadata.json and check it is reco_fast's, nothing more (no checksums)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{meta_path} is unreadable or damaged: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != "reco_fast":
        raise ArtifactError(f"{meta_path} is not reco_fast metadata")
    return meta


def read_metadata(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Read and check an artifact's metadata and checksums; raise ArtifactError if anything is off."""
    root = Path(path)
    meta_path = root / METADATA_FILE
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory; build one with `python build_model.py`")
    if not meta_path.is_file():
        raise ArtifactError(
            f"{root} has no {METADATA_FILE}: not a reco_fast artifact (or an interrupted copy)"
        )
    meta = load_metadata_file(meta_path)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{root} has format version {version!r}, newer than this reco_fast reads "
            f"({FORMAT_VERSION}); upgrade reco_fast"
        )
    here, there = platform_tag(), meta.get("platform", {})
    for key in ("system", "machine", "ext_suffix"):
        if there.get(key) != here[key]:
            raise ArtifactError(
                f"{root} was built for {key}={there.get(key)!r} but this interpreter is "
                f"{here[key]!r}; rebuild the artifact on this platform"
            )
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{meta_path} lists no files")
    for name, digest in files.items():
        if Path(name).name != name:
            raise ArtifactError(f"{meta_path} names a file outside the artifact: {name!r}")
        file_path = root / name
        if not file_path.is_file():
            raise ArtifactError(f"{root} is missing {name}; rebuild or re-copy the artifact")
        if sha256_file(file_path) != digest:
            raise ArtifactError(
                f"{file_path} does not match its checksum: the artifact is damaged or was "
                "modified; rebuild it or run `reco-fast verify`"
            )
    return root, meta
