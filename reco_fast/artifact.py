"""The model artifact on disk: one directory, written atomically, checked at load.

Loading an artifact executes its native code, so nothing here trusts the
directory. :func:`read_artifact` checks, without executing anything:

* ``metadata.json`` against its own digest (``metadata_sha256``: the sha256 of
  its canonical JSON without that field), so no field that affects scoring
  (threshold, feature names, vocabulary, golden outputs, the file list) can
  change unnoticed;
* the format version (older artifacts are refused: rebuild them), the platform
  and Python ABI;
* that every file name stays inside the artifact (a plain name: no separator,
  no ``..``, not absolute; no symbolic links) and that the files load needs (the
  library, the catalog when the model has one) are listed;
* every listed file's sha256, reading each file once: the library's and the
  catalog's bytes are returned, so the bytes checked are the bytes used.

These checks detect damage and accidental edits. They cannot stop someone who
can write the directory and recompute the digests: see the README's Trust model.
Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reco_fast.errors import ArtifactError
from reco_fast.metadata import FORMAT_NAME, ArtifactMetadata

__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILE",
    "UNCALIBRATED_FORMAT_VERSION",
    "ArtifactMetadata",
    "CheckedArtifact",
    "metadata_digest",
    "platform_tag",
    "read_artifact",
    "read_metadata",
]

FORMAT_VERSION = 4
"""2: metadata_sha256, feature_spec and golden raw sessions; required library/catalog entries.
3: model families (issue 15): ``output`` (probability, score or value), ``missing_values``
(routed: NaN is a valid input), raw-margin entry points and golden margins. A version-2
artifact is still read (a binary classifier that refuses NaN); a reader of version 2
refuses a version-3 one, which it would misread (a ranker's scores as probabilities).
4: ``calibration`` (issue 12: probabilities calibrated on held-out rows, a monotone map
of the raw margin). Only a calibrated artifact is written as version 4
(:data:`UNCALIBRATED_FORMAT_VERSION` otherwise), so a reader of version 3, which would
serve its uncalibrated probabilities, refuses it and reads every other artifact."""
UNCALIBRATED_FORMAT_VERSION = 3
OLDEST_FORMAT_VERSION = 2
METADATA_FILE = "metadata.json"
CATALOG_FILE = "catalog.csv"
DIGEST_FIELD = "metadata_sha256"
MAX_METADATA_BYTES = 64 << 20

# Computed once, at import: sysconfig's first use is not thread-safe, and eight threads
# loading artifacts at once must not each race to initialise it.
_PLATFORM_TAG: dict[str, str] = {
    "system": sys.platform,
    "machine": platform.machine(),
    "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX") or "",
    "python": platform.python_version(),
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


def platform_tag() -> dict[str, str]:
    """What a compiled library needs of the machine that loads it (a fresh copy)."""
    return dict(_PLATFORM_TAG)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(metadata: Mapping[str, Any]) -> bytes:
    return json.dumps(
        metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def metadata_digest(metadata: Mapping[str, Any]) -> str:
    """sha256 of metadata's canonical JSON (sorted keys, no spaces), without its own digest.

    Computed over the parsed content, so any change of a value (a flipped digit, an
    added or removed key) changes it, while re-indenting the file does not.
    """
    return hashlib.sha256(
        _canonical({k: v for k, v in metadata.items() if k != DIGEST_FIELD})
    ).hexdigest()


def write_metadata(
    staging: Path, metadata: ArtifactMetadata | Mapping[str, Any]
) -> ArtifactMetadata:
    """Seal a staging directory: checksum every file, then write metadata.json last.

    Parameters
    ----------
    staging : Path
        The directory holding every other file of the artifact.
    metadata : ArtifactMetadata or mapping
        The artifact's metadata; a mapping is its JSON form (``files`` and
        ``metadata_sha256`` may be missing), checked by :meth:`ArtifactMetadata.from_json`.

    Returns
    -------
    ArtifactMetadata
        What was written: ``files`` holds the sha256 of every file beside
        metadata.json and ``metadata_sha256`` the digest of everything else.

    Raises
    ------
    ArtifactError
        A field of ``metadata`` is missing or ill-typed (named in the message).
    ValueError
        A value is not finite (JSON has no NaN or infinity).
    """
    if not isinstance(metadata, ArtifactMetadata):
        metadata = ArtifactMetadata.from_json(
            {"format": FORMAT_NAME, **metadata}, "the metadata to write", sealed=False
        )
    files = sorted(p for p in staging.iterdir() if p.is_file() and p.name != METADATA_FILE)
    data = metadata.replace(files={p.name: sha256_file(p) for p in files}).to_json()
    data.pop(DIGEST_FIELD, None)
    data[DIGEST_FIELD] = metadata_digest(data)  # ValueError for NaN or infinity
    # one top-level key per line, each value compact: readable, and written by json's C
    # encoder (indent= would take its pure-Python path: seconds for a wide model's rows)
    text = ",\n".join(
        f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in data.items()
    )
    (staging / METADATA_FILE).write_text("{\n" + text + "\n}\n", encoding="utf-8")
    return ArtifactMetadata.from_json(data, str(staging / METADATA_FILE))


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


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_metadata(data: bytes, meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(
            data.decode("utf-8"), object_pairs_hook=_strict_object, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{meta_path} is unreadable or damaged: {str(exc)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{meta_path} is not reco_fast metadata")
    return meta


def _check_version_and_digest(meta: dict[str, Any], root: Path) -> None:
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(
            f"{root} has no valid format version ({str(version)[:40]!r}); rebuild the artifact"
        )
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{root} has format version {version}, newer than this reco_fast reads "
            f"({FORMAT_VERSION}); upgrade reco_fast"
        )
    if version < OLDEST_FORMAT_VERSION:
        raise ArtifactError(
            f"{root} has format version {version}, older than this reco_fast reads "
            f"({OLDEST_FORMAT_VERSION}): its metadata is not covered by a checksum and it records no "
            "feature specification; rebuild the artifact with `python build_model.py`"
        )
    digest = meta.get(DIGEST_FIELD)
    try:
        actual = metadata_digest(meta)
    except (TypeError, ValueError):
        actual = None
    if not isinstance(digest, str) or digest != actual:
        raise ArtifactError(
            f"{root / METADATA_FILE} does not match its checksum ({DIGEST_FIELD}): the metadata "
            "is damaged or was edited; rebuild the artifact or re-copy it"
        )


def load_metadata_file(meta_path: Path) -> ArtifactMetadata:
    """Parse a metadata.json, check it is reco_fast's, of this format version, intact
    (its ``metadata_sha256``) and well typed. Reads no other file and executes nothing.

    Raises
    ------
    ArtifactError
        The file is unreadable, not reco_fast's, of another format version, does not
        match its digest, or a field is missing or ill-typed (named in the message).
    """
    data = _read_regular(meta_path, MAX_METADATA_BYTES)
    meta = _parse_metadata(data, meta_path)
    _check_version_and_digest(meta, meta_path.parent)
    return ArtifactMetadata.from_json(meta, str(meta_path))


def _read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file, read once; symbolic links, FIFOs and devices are refused."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ArtifactError(
            f"{path.parent} is missing {path.name}; rebuild or re-copy the artifact"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactError(
                f"{path} is a symbolic link; an artifact's files must be inside it"
            ) from None
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path} is not a regular file")
        if limit is not None and st.st_size > limit:
            raise ArtifactError(f"{path} is larger than {limit} bytes: not reco_fast metadata")
        chunks = []
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            chunks.append(block)
        return b"".join(chunks)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _plain_name(name: Any, what: str, meta_path: Path) -> str:
    """A file name that stays inside the artifact: no separator, no '..', not absolute."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or (os.altsep is not None and os.altsep in name)
        or os.path.isabs(name)
        or Path(name).name != name
    ):
        raise ArtifactError(
            f"{meta_path} names a file outside the artifact ({what}: {str(name)[:80]!r}); "
            "every file must be a plain name inside the artifact directory"
        )
    return name


@dataclass(frozen=True)
class CheckedArtifact:
    """An artifact whose metadata and files passed every check, with the bytes load uses.

    ``library`` and ``catalog`` are the bytes that were hashed: load them, never
    the paths again.
    """

    root: Path
    metadata: ArtifactMetadata
    library: bytes
    library_sha256: str
    catalog: bytes | None


def read_artifact(path: str | os.PathLike[str]) -> CheckedArtifact:
    """Check an artifact without executing any of it; raise ArtifactError if anything is off.

    Checks, in order: the directory and ``metadata.json`` (reco_fast's, this format
    version, matching its ``metadata_sha256``), the platform and Python ABI, the
    file names (plain names inside the artifact; the library and, when the model
    has one, the catalog must be listed), then every listed file's sha256.

    Returns
    -------
    CheckedArtifact
        The metadata and the checked bytes of the library and the catalog.
    """
    root = Path(path)
    meta_path = root / METADATA_FILE
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory; build one with `python build_model.py`")
    if not meta_path.exists() and not meta_path.is_symlink():
        raise ArtifactError(
            f"{root} has no {METADATA_FILE}: not a reco_fast artifact (or an interrupted copy)"
        )
    meta = load_metadata_file(meta_path)
    here, there = platform_tag(), meta.platform
    for key in ("system", "machine", "ext_suffix"):
        if there.get(key) != here[key]:
            raise ArtifactError(
                f"{root} was built for {key}={str(there.get(key))[:80]!r} but this interpreter "
                f"is {here[key]!r}; rebuild the artifact on this platform"
            )
    files = meta.files
    if not files:
        raise ArtifactError(f"{meta_path} lists no files")
    for name, digest in files.items():
        _plain_name(name, "files", meta_path)
        if name == METADATA_FILE:
            raise ArtifactError(f"{meta_path} lists itself in files; rebuild the artifact")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ArtifactError(f"{meta_path} has no valid sha256 for {name[:80]!r}")
    library = _plain_name(meta.library, "library", meta_path)
    if not library.endswith(here["ext_suffix"]):
        raise ArtifactError(
            f"{meta_path}: the library {library[:80]!r} is not a {here['ext_suffix']} module"
        )
    if not _MODULE_NAME.fullmatch(meta.module):
        raise ArtifactError(f"{meta_path} has no valid module name")
    catalog = meta.catalog
    needed = [library]
    if catalog is not None:
        needed.append(_plain_name(catalog, "catalog", meta_path))
    for name in needed:
        if name not in files:
            raise ArtifactError(
                f"{meta_path} does not list {name[:80]!r} in files, so it has no checksum; "
                "rebuild the artifact"
            )
    kept: dict[str, bytes] = {}
    for name, digest in files.items():
        file_path = root / name
        data = _read_regular(file_path)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtifactError(
                f"{file_path} does not match its checksum: the artifact is damaged or was "
                "modified; rebuild it or run `reco-fast verify`"
            )
        if name in needed:
            kept[name] = data
    return CheckedArtifact(
        root=root,
        metadata=meta,
        library=kept[library],
        library_sha256=files[library],
        catalog=kept[catalog] if catalog is not None else None,
    )


def read_metadata(path: str | os.PathLike[str]) -> tuple[Path, ArtifactMetadata]:
    """Read and check an artifact's metadata and checksums; raise ArtifactError if anything is off.

    The checks of :func:`read_artifact` (nothing is executed).
    """
    checked = read_artifact(path)
    return checked.root, checked.metadata
