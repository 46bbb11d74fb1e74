"""The impression log: what was shown to whom, by which model, and what was clicked.

Serving side: the standard library and numpy only (redis-py is imported by
:class:`RedisStreamSink` alone, when it is used).

Records
-------
One JSON object per line (JSONL) or per stream entry. An **impression** record
is written for every recommend request made through :class:`LoggedRecommender`::

    {"type": "impression", "request_id": "<uuid4 hex>", "session_id": "s1",
     "ts": 1718000000.123,            # epoch seconds (float) of the request
     "model_id": "<sha256 of the artifact's metadata.json>",   # as /health reports it
     "variant": "default", "k": 3, "threshold": 0.7,
     "policy": {"name": "softmax", "temperature": 1.0, "top_m": 10},
     "session": {...},                # the exact session fields that were scored
     "shown": [{"product_id": "PROD0107", "position": 0, "probability": 0.81,
                "propensity": 0.64}, ...],
     "candidates": [["PROD0107", 0.81], ...]}   # exploring policies: the ranked top_m

``session`` is the dict passed to ``recommend`` (or the tracker's context for a
session id), JSON-native, so the feature rows can be rebuilt bit for bit with
``model.builder``. ``propensity`` is the probability that the policy put this
product at this position given the candidate scores (:mod:`reco_fast.serve.policies`).

**Outcome** records (``log.click`` / ``log.purchase``) are joined to the latest
impression of the same session that showed the product and is at most
``click_window`` (default 30 min) older than the click::

    {"type": "click", "request_id": "<the impression's>", "session_id": "s1",
     "product_id": "PROD0107", "position": 0, "ts": ..., "impression_ts": ...,
     "variant": "default", "model_id": "..."}

A click that matches no impression is written with ``"request_id": null`` and
counted (``stats()["unmatched_clicks"]``); :func:`load_joined` retries the join
offline over the whole log (clicks that reached another replica). The join state
is bounded: the last ``join_per_session`` impressions of at most
``join_sessions`` sessions, each forgotten after the window.

The request path never waits on a sink
--------------------------------------
``recommend`` puts one tuple (the scored session, the model's list, ids and
times: no JSON) on a queue and returns; a background thread wakes every
``batch_interval`` seconds (default 0.05), drains the queue, builds the JSON,
does the join and writes. Waking per record instead would make each request
wait for the GIL behind the writer. The queue is a ``queue.SimpleQueue`` bounded
by a size check (``maxsize``, default 10,000): ``queue.Queue.put_nowait`` costs
about 1 µs (a Condition and a lock), the check and put about 60 ns; threads racing
past the check can overfill it by one record each. A record that finds the queue
full is dropped and counted (``stats()["dropped"]``); a sink that fails (disk
full, Redis down) counts ``failed`` records and the writer keeps going.
``flush()`` waits for what was queued before it; ``close()`` flushes, stops the
thread and closes the sink (also run at interpreter exit); records submitted
after ``close()`` are dropped and counted. The request path costs about 1.5 µs
per recommend (``benchmarks/test_impressions.py``).

Crash safety and the fsync policy (:class:`JsonlSink`)
-------------------------------------------------------
Each record is one ``write()`` of one whole line to a file opened with
``O_APPEND`` that only this log writes (a new file per process and per
rotation, ``impressions-<UTC time>-<pid>-<random>-<seq>.jsonl``). If the process
dies (even by SIGKILL) the kernel keeps what was written, and a record cut short
can only be the file's last line, without its newline: :func:`read_log` skips it
(and counts it as torn). A complete line that is not a JSON object is refused
(:class:`~reco_fast.InputError` naming the file and line).

fsync: the file is fsynced after every ``fsync_every`` records (default 1000),
at least every ``fsync_interval`` seconds while records arrive (default 1.0),
at rotation and on close; a new file's directory entry is fsynced when the file
is created. So a process crash loses only records still in the queue, and a
machine crash or power loss loses at most the records of the last
``fsync_interval`` seconds (or ``fsync_every`` records), the last one possibly
torn. ``fsync_every=1`` fsyncs every record (slow, safest); ``fsync_every=0`` and
``fsync_interval=None`` leave it to the OS until rotation and close.
Files rotate when the next record would take one past ``max_bytes`` (default 64 MiB).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import queue
import random
import secrets
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reco_fast.artifact import METADATA_FILE
from reco_fast.errors import ArtifactError, InputError
from reco_fast.serve.eventsession import EventTracker
from reco_fast.serve.handle import ModelHandle
from reco_fast.serve.policies import Greedy, Policy
from reco_fast.serve.recommend import CART_FIELD, Recommendation
from reco_fast.serve.session import SessionTracker

__all__ = [
    "DEFAULT_CLICK_WINDOW",
    "ImpressionLog",
    "JsonlSink",
    "LoggedImpression",
    "LoggedRecommender",
    "RedisStreamSink",
    "Shown",
    "artifact_id",
    "load_joined",
    "read_log",
    "read_stream",
]

log = logging.getLogger(__name__)

DEFAULT_CLICK_WINDOW = 30 * 60.0
"""Seconds after an impression within which a click or purchase of a shown product joins it."""
DEFAULT_MAXSIZE = 10_000
DEFAULT_MAX_BYTES = 64 << 20
_BATCH = 256  # records the writer takes off the queue per wake-up
DEFAULT_BATCH_INTERVAL = 0.05
"""Seconds the writer thread sleeps between drains of the queue."""


# ---- request ids and model ids --------------------------------------------------------------
_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_V4_SET = (0x4000 << 64) | (0x8000 << 48)
_ids = random.Random(secrets.randbits(128))
_getrandbits = _ids.getrandbits
_ID_POOL = 4096
_id_pool: deque[str] = deque()  # made by the writer threads, taken by the request path
_take_id = _id_pool.pop


def _reseed_ids() -> None:  # a forked child must not repeat its parent's ids
    _ids.seed(secrets.randbits(128))
    _id_pool.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


def new_request_id() -> str:
    """A random request id: 32 hex digits with the uuid4 version and variant bits.

    Drawn from a private Mersenne Twister seeded from the OS (and reseeded in a
    forked child): unique and unpredictable enough for an id, not a secret. The
    log's writer thread keeps a pool of them ready, so the request path takes
    one in a few tens of nanoseconds (``uuid.uuid4().hex`` costs ~2 µs).
    """
    return "%032x" % (_getrandbits(128) & _V4_CLEAR | _V4_SET)


def _refill_ids() -> None:
    if len(_id_pool) < _ID_POOL // 2:
        _id_pool.extend([new_request_id() for _ in range(_ID_POOL - len(_id_pool))])


def artifact_id(model: Any) -> str:
    """The id of the artifact a model was loaded from: sha256 of its ``metadata.json`` bytes.

    The value ``examples/service.py`` reports at ``/health`` (metadata.json lists every
    file's sha256, so this one digest names the whole artifact). The file is read
    and checked to hold the metadata the model was loaded with.

    Raises
    ------
    ArtifactError
        metadata.json cannot be read or no longer matches the loaded model (the
        directory was rebuilt since).
    """
    path = Path(model.path) / METADATA_FILE
    try:
        data = path.read_bytes()
        same = json.loads(data) == dict(model.metadata)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path} to identify the model: {exc}") from exc
    if not same:
        raise ArtifactError(
            f"{path} changed since the model was loaded; reload the model to log its id"
        )
    return hashlib.sha256(data).hexdigest()


# ---- sinks ---------------------------------------------------------------------------------
class JsonlSink:
    """Rotating JSONL files in a directory; one ``write()`` per record (see the module doc).

    Parameters
    ----------
    directory : path
        Created if missing. Several processes may share it (each writes its own files).
    max_bytes : int
        Rotate before a record would take the current file past this size.
    fsync_every : int
        fsync after this many records (0: not by count).
    fsync_interval : float or None
        fsync when this many seconds passed since the last fsync and records were
        written since (None: not by time).
    prefix : str
        File names start with it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync_every: int = 1000,
        fsync_interval: float | None = 1.0,
        prefix: str = "impressions",
    ):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r:.40}")
        if isinstance(fsync_every, bool) or not isinstance(fsync_every, int) or fsync_every < 0:
            raise ValueError(f"fsync_every must be an integer >= 0, got {fsync_every!r:.40}")
        if fsync_interval is not None and not (fsync_interval >= 0):
            raise ValueError(f"fsync_interval must be >= 0 or None, got {fsync_interval!r:.40}")
        if not prefix or "/" in prefix or os.sep in prefix:
            raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r:.40}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.fsync_every = fsync_every
        self.fsync_interval = fsync_interval
        self.prefix = prefix
        self._token = secrets.token_hex(3)
        self._fd: int | None = None
        self._seq = 0
        self._size = 0
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.path: Path | None = None
        self.files: list[Path] = []

    def _open(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._seq += 1
        name = f"{self.prefix}-{stamp}-{os.getpid()}-{self._token}-{self._seq:06d}.jsonl"
        path = self.directory / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(path, flags, 0o644)
        self._size = 0
        self.path = path
        self.files.append(path)
        try:  # the new file's name survives a power loss too
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # pragma: no cover - directories that cannot be fsynced
            pass

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                if self._unsynced:
                    os.fsync(fd)
            finally:
                self._unsynced = 0
                self._last_sync = time.monotonic()
                os.close(fd)

    def write_batch(self, lines: Sequence[bytes]) -> tuple[int, int]:
        """Append each of ``lines`` (one ``write()`` each); return (written, failed)."""
        written = failed = 0
        for line in lines:
            try:
                if self._fd is None or (self._size and self._size + len(line) > self.max_bytes):
                    self._close_file()
                    self._open()
                fd = self._fd
                assert fd is not None
                n = os.write(fd, line)
                while n < len(line):  # a short write: finish the line in the same file
                    n += os.write(fd, line[n:])
            except OSError as exc:
                failed += 1
                log.warning("impression log: write to %s failed: %s", self.path, exc)
                try:  # a partial line stays the old file's last line; continue in a new one
                    self._close_file()
                except OSError:
                    pass
                continue
            written += 1
            self._size += len(line)
            self._unsynced += 1
            if self.fsync_every and self._unsynced >= self.fsync_every:
                self.sync()
        return written, failed

    def sync(self) -> None:
        """fsync the current file now."""
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def tick(self) -> None:
        """The writer's timer: fsync when ``fsync_interval`` has passed with unsynced records."""
        if (
            self._unsynced
            and self.fsync_interval is not None
            and time.monotonic() - self._last_sync >= self.fsync_interval
        ):
            self.sync()

    def close(self) -> None:
        """fsync and close the current file."""
        self._close_file()


class RedisStreamSink:
    """Records appended to a Redis Stream (``XADD key MAXLEN ~ maxlen * record <json>``).

    For several replicas: every replica's log writes to the same stream; each
    entry is one whole record (field ``record``). The writer thread sends each
    batch in one pipeline. :func:`read_stream` reads it back.

    Parameters
    ----------
    client : redis.Redis
        A redis-py client (``RedisStreamSink.from_url`` makes one with short timeouts).
    key : str
        The stream's key.
    maxlen : int
        Approximate cap on the stream's length (Redis trims whole macro-nodes).
    """

    def __init__(self, client: Any, key: str = "reco_fast:impressions", maxlen: int = 1_000_000):
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen <= 0:
            raise ValueError(f"maxlen must be a positive integer, got {maxlen!r:.40}")
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r:.40}")
        self.client = client
        self.key = key
        self.maxlen = maxlen

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStreamSink:
        """A sink with its own client for the Redis at ``url`` (2 s socket timeouts);
        ``kwargs`` as the constructor's (``key``, ``maxlen``)."""
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        return cls(client, **kwargs)

    def write_batch(self, lines: Sequence[bytes]) -> tuple[int, int]:
        """XADD each of ``lines`` in one pipeline; return (written, failed): all or none."""
        import redis

        try:
            pipe = self.client.pipeline(transaction=False)
            for line in lines:
                pipe.xadd(self.key, {"record": line}, maxlen=self.maxlen, approximate=True)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("impression log: XADD to %s failed: %s", self.key, exc)
            return 0, len(lines)
        return len(lines), 0

    def tick(self) -> None:
        """The writer's timer: nothing to do (Redis persists on its own terms)."""

    def close(self) -> None:
        """Nothing to close: the client belongs to the caller (or to ``from_url``'s sink)."""


def read_stream(client: Any, key: str = "reco_fast:impressions", page: int = 1000) -> list[dict]:
    """Every record of a Redis Stream written by :class:`RedisStreamSink`, oldest first."""
    out: list[dict] = []
    start = "-"
    while True:
        entries = client.xrange(key, min=start, max="+", count=page)
        for _entry_id, fields in entries:
            raw = fields.get(b"record", fields.get("record"))
            out.append(json.loads(raw))
        if len(entries) < page:
            return out
        last = entries[-1][0]
        last = last.decode() if isinstance(last, bytes) else last
        start = "(" + last


# ---- reading a log directory ----------------------------------------------------------------
@dataclass
class LogRead:
    """What :func:`read_log` found: the records, and how many torn last lines it skipped."""

    records: list[dict[str, Any]]
    files: int
    torn: int


def read_log(directory: str | os.PathLike[str]) -> LogRead:
    """Every record of the ``*.jsonl`` files in a directory (files in name order).

    A file's last line without a newline is a record cut short by a crash (or
    still being written): skipped and counted in ``torn``.

    Raises
    ------
    InputError
        The directory does not exist, or a complete line is not a JSON object
        (the file is damaged; the message names it and the line).
    """
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"impression log directory {str(root)[:200]!r} does not exist")
    records: list[dict[str, Any]] = []
    torn = 0
    paths = sorted(root.glob("*.jsonl"))
    for path in paths:
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines[-1]:
            torn += 1
        for i, line in enumerate(lines[:-1], start=1):
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                raise InputError(
                    f"{path.name}: line {i} is not a JSON record ({line[:60]!r}); "
                    "the file is damaged: move it out of the log directory"
                )
            records.append(rec)
    return LogRead(records, len(paths), torn)


@dataclass
class LoggedImpression:
    """One impression record with its outcomes attached (see :func:`load_joined`)."""

    record: dict[str, Any]
    clicked: set[str] = field(default_factory=set)  # product ids clicked
    purchased: set[str] = field(default_factory=set)

    @property
    def request_id(self) -> str:
        return self.record["request_id"]

    @property
    def variant(self) -> str:
        return self.record.get("variant", "default")

    @property
    def shown(self) -> list[dict[str, Any]]:
        return self.record["shown"]


def load_joined(
    directory: str | os.PathLike[str] | LogRead, window: float = DEFAULT_CLICK_WINDOW
) -> tuple[list[LoggedImpression], dict[str, int]]:
    """Impressions with their clicks and purchases, and counts of what could not be joined.

    Outcome records carrying a ``request_id`` join that impression. Those written
    unmatched (``request_id`` null: the click reached a replica that had not seen
    the impression) are joined here to the latest impression of the session that
    showed the product at most ``window`` seconds before. Returns
    ``(impressions, counts)`` with counts ``{"records", "impressions", "clicks",
    "purchases", "unmatched", "joined_offline", "torn"}``.
    """
    read = directory if isinstance(directory, LogRead) else read_log(directory)
    by_id: dict[str, LoggedImpression] = {}
    by_session: dict[str, list[LoggedImpression]] = {}
    outcomes = []
    for rec in read.records:
        kind = rec.get("type")
        if kind == "impression":
            logged = LoggedImpression(rec)
            by_id[rec["request_id"]] = logged
            by_session.setdefault(rec["session_id"], []).append(logged)
        elif kind in ("click", "purchase"):
            outcomes.append(rec)
    for imps in by_session.values():
        imps.sort(key=lambda i: i.record["ts"])
    counts = {
        "records": len(read.records),
        "impressions": len(by_id),
        "clicks": 0,
        "purchases": 0,
        "unmatched": 0,
        "joined_offline": 0,
        "torn": read.torn,
    }
    for rec in outcomes:
        imp: LoggedImpression | None = by_id.get(rec.get("request_id") or "")
        if imp is None:
            imp = _latest_showing(by_session.get(rec.get("session_id", ""), ()), rec, window)
            if imp is None:
                counts["unmatched"] += 1
                continue
            counts["joined_offline"] += 1
        target = imp.clicked if rec["type"] == "click" else imp.purchased
        target.add(rec["product_id"])
        counts["clicks" if rec["type"] == "click" else "purchases"] += 1
    return list(by_id.values()), counts


def _latest_showing(
    imps: Sequence[LoggedImpression], rec: Mapping[str, Any], window: float
) -> LoggedImpression | None:
    ts, pid = rec.get("ts"), rec.get("product_id")
    if not isinstance(ts, (int, float)):
        return None
    for imp in reversed(imps):
        dt = ts - imp.record["ts"]
        if dt < 0:
            continue
        if dt > window:
            return None
        if any(s["product_id"] == pid for s in imp.record["shown"]):
            return imp
    return None


# ---- the join of outcomes to impressions (writer thread only) -----------------------------
class _Join:
    """Latest impressions per session, bounded: ``per_session`` each, ``max_sessions``
    sessions (least recently shown evicted first), forgotten after ``ttl`` seconds."""

    def __init__(self, max_sessions: int, per_session: int, ttl: float):
        self.max_sessions = max_sessions
        self.per_session = per_session
        self.ttl = ttl
        self._data: OrderedDict[str, deque[tuple[float, str, dict[str, int], str, str]]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._data)

    def add(
        self, sid: str, ts: float, rid: str, positions: dict[str, int], variant: str, mid: str
    ) -> None:
        data = self._data
        entries = data.get(sid)
        if entries is None:
            entries = data[sid] = deque(maxlen=self.per_session)
        else:
            data.move_to_end(sid)
        entries.append((ts, rid, positions, variant, mid))
        while len(data) > self.max_sessions:
            data.popitem(last=False)
        # sessions shown nothing for a whole ttl (relative to this impression) are gone
        while data:
            first = next(iter(data.values()))
            if ts - first[-1][0] <= self.ttl:
                break
            data.popitem(last=False)

    def find(
        self, sid: str, pid: str, ts: float, window: float
    ) -> tuple[float, str, int, str, str] | None:
        entries = self._data.get(sid)
        if not entries:
            return None
        for imp_ts, rid, positions, variant, mid in reversed(entries):
            dt = ts - imp_ts
            if dt < 0:
                continue  # an impression after the click cannot have caused it
            if dt > window:
                return None
            pos = positions.get(pid)
            if pos is not None:
                return imp_ts, rid, pos, variant, mid
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default).encode

_IMPRESSION, _OUTCOME, _FLUSH, _STOP = 0, 1, 2, 3


class ImpressionLog:
    """A non-blocking log of impressions and outcomes, written by a background thread.

    Parameters
    ----------
    sink : JsonlSink, RedisStreamSink, or a directory path
        Where records go; a path means ``JsonlSink(path)``.
    maxsize : int
        Capacity of the queue between the request path and the writer; a record
        arriving when it is full is dropped and counted.
    click_window : float
        Seconds after an impression within which a click joins it (default 1800).
    purchase_window : float, optional
        The same for purchases (default: ``click_window``).
    join_sessions, join_per_session : int
        Bounds of the join state (sessions kept, impressions kept per session).
    batch_interval : float
        Seconds the writer thread sleeps between drains of the queue (default 0.05).

    ``stats()`` -> ``{"written", "dropped", "queued", "failed", "clicks",
    "unmatched_clicks", "purchases", "unmatched_purchases", "unserializable"}``.
    """

    def __init__(
        self,
        sink: Any,
        *,
        maxsize: int = DEFAULT_MAXSIZE,
        click_window: float = DEFAULT_CLICK_WINDOW,
        purchase_window: float | None = None,
        join_sessions: int = 100_000,
        join_per_session: int = 8,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
    ):
        if isinstance(sink, (str, os.PathLike)):
            sink = JsonlSink(sink)
        if not hasattr(sink, "write_batch"):
            raise TypeError(
                f"sink must be a JsonlSink, RedisStreamSink or a directory, got {sink!r:.60}"
            )
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize <= 0:
            raise ValueError(f"maxsize must be a positive integer, got {maxsize!r:.40}")
        for name, value in (("click_window", click_window), ("purchase_window", purchase_window)):
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r:.40}")
        for name, value in (
            ("join_sessions", join_sessions),
            ("join_per_session", join_per_session),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r:.40}")
        if not (isinstance(batch_interval, (int, float)) and 0 < batch_interval <= 60):
            raise ValueError(
                f"batch_interval must be in (0, 60] seconds, got {batch_interval!r:.40}"
            )
        self.sink = sink
        self.maxsize = maxsize
        self._limit = maxsize  # 0 once closed: every record is then dropped
        self.batch_interval = float(batch_interval)
        self._wake = threading.Event()
        self.click_window = float(click_window)
        self.purchase_window = float(click_window if purchase_window is None else purchase_window)
        self._join = _Join(
            join_sessions, join_per_session, max(self.click_window, self.purchase_window)
        )
        # A SimpleQueue bounded by a size check: put is ~30 ns where queue.Queue.put_nowait
        # takes ~1 us (a Condition and a lock). Threads racing past the check can overfill
        # it by at most one item each.
        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._put = self._q.put
        self._qsize = self._q.qsize
        self._drop_lock = threading.Lock()
        self._dropped = 0
        self._closed = False
        self._counts = dict.fromkeys(
            (
                "written",
                "failed",
                "clicks",
                "unmatched_clicks",
                "purchases",
                "unmatched_purchases",
                "unserializable",
            ),
            0,
        )
        self._thread = threading.Thread(target=self._run, name="reco_fast-impressions", daemon=True)
        self._thread.start()
        self._atexit = _close_at_exit(self)
        atexit.register(self._atexit)

    # ---- request path ----------------------------------------------------------------------
    def _submit(self, item: tuple[Any, ...]) -> None:
        """Queue one item; never blocks (a full queue or a closed log drops and counts it)."""
        if self._qsize() < self._limit:
            self._put(item)
        else:
            self._drop()

    def _drop(self) -> None:
        with self._drop_lock:
            self._dropped += 1

    def click(self, session_id: str, product_id: str, ts: float | None = None) -> None:
        """Record a click of ``product_id`` in ``session_id`` (joined by the writer, see the module doc).

        Raises TypeError/ValueError for a non-string id or a bad ``ts``; never waits.
        """
        self._outcome("click", session_id, product_id, ts)

    def purchase(self, session_id: str, product_id: str, ts: float | None = None) -> None:
        """Record a purchase of ``product_id`` in ``session_id`` at ``ts`` (epoch seconds,
        default now); joined like a click, within ``purchase_window``."""
        self._outcome("purchase", session_id, product_id, ts)

    def _outcome(self, kind: str, session_id: Any, product_id: Any, ts: Any) -> None:
        for name, value in (("session_id", session_id), ("product_id", product_id)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty string, got {value!r:.40}")
        self._submit((_OUTCOME, kind, session_id, product_id, _check_ts(ts)))

    # ---- control ---------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters since the log started (``queued``: waiting for the writer now)."""
        out = dict(self._counts)
        out["dropped"] = self._dropped
        out["queued"] = self._q.qsize()
        return out

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued before this call is written; False on timeout."""
        if self._closed or not self._thread.is_alive():
            return self._q.qsize() == 0
        done = threading.Event()
        self._q.put((_FLUSH, done))  # control items skip the bound
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush, stop the writer and close the sink. Later records are dropped (counted).

        Waits at most ``timeout`` seconds for the writer (None: until it is done).
        """
        if self._closed:
            return
        self._closed = True
        self._limit = 0
        atexit.unregister(self._atexit)
        if self._thread.is_alive():
            self._q.put((_STOP,))
            self._wake.set()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("impression log: the writer did not finish within %s s", timeout)

    def __enter__(self) -> ImpressionLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        q = self._q
        get = q.get_nowait
        wake = self._wake
        stop = False
        while not stop:
            # Wake every batch_interval (or when flush/close asks), then drain in batches:
            # waking per record would make every request wait for the GIL behind it.
            wake.wait(self.batch_interval)
            wake.clear()
            _refill_ids()
            while not stop:
                batch: list[Any] = []
                try:
                    while len(batch) < _BATCH:
                        batch.append(get())
                except queue.Empty:
                    pass
                if not batch:
                    break
                lines: list[bytes] = []
                for item in batch:
                    kind = item[0]
                    if kind == _IMPRESSION or kind == _OUTCOME:
                        line = self._line(item)
                        if line is not None:
                            lines.append(line)
                    elif kind == _FLUSH:
                        self._write(lines)
                        lines = []
                        self._tick(force=True)
                        item[1].set()
                    else:
                        stop = True
                self._write(lines)
            self._tick()
        try:
            self.sink.close()
        except Exception as exc:  # pragma: no cover - a failing close is logged only
            log.warning("impression log: closing the sink failed: %s", exc)

    def _tick(self, force: bool = False) -> None:
        try:
            if force and hasattr(self.sink, "sync"):
                self.sink.sync()
            else:
                self.sink.tick()
        except OSError as exc:  # pragma: no cover - fsync failing
            log.warning("impression log: fsync failed: %s", exc)

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        try:
            written, failed = self.sink.write_batch(lines)
        except Exception as exc:  # a sink must not kill the writer
            log.warning("impression log: sink failed: %s", exc)
            written, failed = 0, len(lines)
        self._counts["written"] += written
        self._counts["failed"] += failed

    def _line(self, item: tuple[Any, ...]) -> bytes | None:
        try:
            record = (
                self._impression(item) if item[0] == _IMPRESSION else self._outcome_record(item)
            )
            return (_encode(record) + "\n").encode()
        except (TypeError, ValueError) as exc:
            self._counts["unserializable"] += 1
            log.warning("impression log: record not written: %s", str(exc)[:200])
            return None

    def _impression(self, item: tuple[Any, ...]) -> dict[str, Any]:
        _, rid, ts, sid, mid, variant, session, items, picks, policy, k, threshold, options = item
        if picks is None:
            shown = [
                {
                    "product_id": r.product_id,
                    "position": p,
                    "probability": r.probability,
                    "propensity": 1.0,
                }
                for p, r in enumerate(items)
            ]
            candidates = None
        else:
            scores = [r.probability for r in items]
            props = policy.propensities(scores, k, picks)
            shown = [
                {
                    "product_id": items[r].product_id,
                    "position": p,
                    "probability": items[r].probability,
                    "propensity": q,
                }
                for p, (r, q) in enumerate(zip(picks, props, strict=True))
            ]
            candidates = [[r.product_id, r.probability] for r in items]
        record: dict[str, Any] = {
            "type": "impression",
            "request_id": rid,
            "session_id": sid,
            "ts": ts,
            "model_id": mid,
            "variant": variant,
            "k": k,
            "threshold": threshold,
            "policy": (policy or _GREEDY).to_json(),
            "session": session,
            "shown": shown,
        }
        if candidates is not None:
            record["candidates"] = candidates
        if options:
            record["options"] = options
        self._join.add(sid, ts, rid, {s["product_id"]: s["position"] for s in shown}, variant, mid)
        return record

    def _outcome_record(self, item: tuple[Any, ...]) -> dict[str, Any]:
        _, kind, sid, pid, ts = item
        window = self.click_window if kind == "click" else self.purchase_window
        found = self._join.find(sid, pid, ts, window)
        record: dict[str, Any] = {"type": kind, "session_id": sid, "product_id": pid, "ts": ts}
        counts = self._counts
        counts[kind + "s"] += 1
        if found is None:
            counts["unmatched_" + kind + "s"] += 1
            record["request_id"] = None
            return record
        imp_ts, rid, pos, variant, mid = found
        record.update(
            request_id=rid, position=pos, impression_ts=imp_ts, variant=variant, model_id=mid
        )
        return record


_GREEDY = Greedy()


def _close_at_exit(log_: ImpressionLog) -> Any:
    ref = weakref.ref(log_)

    def close() -> None:
        obj = ref()
        if obj is not None:
            obj.close(timeout=5.0)

    return close


def _check_ts(ts: Any) -> float:
    if ts is None:
        return time.time()
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise TypeError(f"ts must be epoch seconds (a number), got {type(ts).__name__}")
    ts = float(ts)
    if not (math.isfinite(ts) and ts >= 0):
        raise ValueError(f"ts must be finite epoch seconds >= 0, got {ts!r}")
    return ts


# ---- the serving wrapper -------------------------------------------------------------------
class Shown(list[Recommendation]):
    """The recommendations shown (a list of :class:`Recommendation`), with the request's id."""

    __slots__ = ("model_id", "request_id", "variant")
    model_id: str
    request_id: str
    variant: str


class LoggedRecommender:
    """``recommend`` through a model, an exploration policy and an impression log.

    Parameters
    ----------
    source : SessionTracker, EventTracker, ModelHandle or Model
        With a tracker, ``recommend`` takes a session id and scores the tracker's
        context with the tracker's model (``SessionTracker(model, log=...)`` does
        this itself); a ModelHandle is read at every request
        (swaps take effect, and the logged ``model_id`` is the model that scored).
    log : ImpressionLog
        Where impressions go (shared by any number of recommenders).
    policy : Policy, optional
        Exploration (:mod:`reco_fast.serve.policies`); None shows the model's top k.
    variant : str
        Recorded in every impression (A/B variant name).
    tracker : SessionTracker or EventTracker, optional
        With a ModelHandle or Model as ``source``: session ids are looked up in
        this tracker and scored by ``source`` (what :class:`~reco_fast.serve.ab.ABRouter` does).
    """

    def __init__(
        self,
        source: Any,
        log: ImpressionLog,
        policy: Policy | None = None,
        variant: str = "default",
        *,
        tracker: SessionTracker | EventTracker | None = None,
    ):
        if not isinstance(log, ImpressionLog):
            raise TypeError(f"log must be an ImpressionLog, got {type(log).__name__}")
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be a reco_fast.serve.policies.Policy, got {policy!r:.60}")
        if not isinstance(variant, str) or not variant:
            raise ValueError(f"variant must be a non-empty string, got {variant!r:.40}")
        if tracker is not None and not isinstance(tracker, (SessionTracker, EventTracker)):
            raise TypeError(
                f"tracker must be a SessionTracker or EventTracker, got {type(tracker).__name__}"
            )
        self.tracker: SessionTracker | EventTracker | None = tracker
        if isinstance(source, (SessionTracker, EventTracker)):
            self.tracker = source
            source = source._model  # hook: a public SessionTracker.model would replace this
        if not hasattr(source, "recommend") or not hasattr(source, "path"):
            raise TypeError(
                f"source must be a SessionTracker, ModelHandle or Model, got {type(source).__name__}"
            )
        self.source = source
        self._handle = type(source) is ModelHandle
        self.log = log
        self._qsize = log._q.qsize
        self._put = log._q.put
        self.policy = None if isinstance(policy, Greedy) else policy
        self.variant = variant
        self._id_model: Any = None
        self._id = ""

    def model_id(self, model: Any) -> str:
        """The artifact id of ``model`` (cached for the last model seen)."""
        if model is not self._id_model:
            self._id = artifact_id(model)
            self._id_model = model
        return self._id

    def recommend(
        self,
        session: str | Mapping[str, Any],
        k: int = 3,
        threshold: float | None = None,
        *,
        session_id: str | None = None,
        ts: float | None = None,
        **kwargs: Any,
    ) -> Shown:
        """Recommend for a session id (with a tracker) or a session dict, and log the impression.

        Parameters
        ----------
        session : str or dict
            A session id (needs a tracker) or a session in the model's schema.
        k, threshold, **kwargs
            As ``Model.recommend`` (``candidates``, ``exclude``).
        session_id : str, optional
            For a dict session: its id (default: ``session["session_id"]``).
        ts : float, optional
            Epoch seconds of the request (default: now).

        Returns
        -------
        Shown
            The shown recommendations (a list), with ``request_id``, ``variant``, ``model_id``.

        Raises
        ------
        InputError, SessionNotFound, StoreUnavailable
            As ``Model.recommend`` / ``SessionTracker.context``; nothing is logged.
        """
        cls = type(session)
        if cls is dict or (cls is not str and isinstance(session, Mapping)):
            assert isinstance(session, Mapping)
            sid = session.get("session_id") if session_id is None else session_id
            if type(sid) is not str or not sid:
                raise ValueError(
                    "session_id: a session dict needs a non-empty string session_id "
                    "(a 'session_id' field or the session_id= argument)"
                )
            logged = None
        elif isinstance(session, str):
            tracker = self.tracker
            if tracker is None:
                raise TypeError("a session id needs a LoggedRecommender built on a SessionTracker")
            sid = session
            session = logged = tracker.context(sid)  # a new dict: logged as it is
        else:
            raise TypeError(f"session must be a session id or a dict, got {cls.__name__}")
        if type(k) is not int or k < 0:
            raise InputError(f"k must be a non-negative integer, got {k!r:.40}", field="k")
        model = self.source.model if self._handle else self.source
        mid = self._id if model is self._id_model else self.model_id(model)
        policy = self.policy
        if policy is None:
            if kwargs:
                items = recs = model.recommend(session, k, threshold, **kwargs)
            else:
                items = recs = model.recommend(session, k, threshold)
            picks = None
        else:
            items = model.recommend(session, max(k, policy.top_m), threshold, **kwargs)
            picks = policy.select([r.probability for r in items], k)
            recs = [items[i] for i in picks]
        if logged is None:
            assert isinstance(session, Mapping)
            logged = dict(session)
            cart = logged.get(CART_FIELD)
            if type(cart) is list:
                logged[CART_FIELD] = list(cart)
        try:
            rid = _take_id()
        except IndexError:  # the pool ran dry (a burst, or no writer yet)
            rid = new_request_id()
        if self._qsize() < self.log._limit:
            self._put(
                (
                    _IMPRESSION,
                    rid,
                    time.time() if ts is None else _check_ts(ts),
                    sid,
                    mid,
                    self.variant,
                    logged,
                    items,
                    picks,
                    policy,
                    k,
                    model.threshold if threshold is None else threshold,
                    kwargs,
                )
            )
        else:
            self.log._drop()
        out = Shown(recs)
        out.request_id = rid
        out.variant = self.variant
        out.model_id = mid
        return out

    def click(self, session_id: str, product_id: str, ts: float | None = None) -> None:
        """``log.click(session_id, product_id, ts)``: record a click, joined to the impression
        that showed the product."""
        self.log.click(session_id, product_id, ts)

    def purchase(self, session_id: str, product_id: str, ts: float | None = None) -> None:
        """``log.purchase(session_id, product_id, ts)``: record a purchase, joined like a click."""
        self.log.purchase(session_id, product_id, ts)
