"""Live session tracking: page views, engagement and cart events -> the context the model scores.

Every event is a pure function from the stored state to the next state,
applied atomically by a store: in memory (a lock, a TTL and a size bound) or
in Redis (optimistic check-and-set transactions, so replicas behind a load
balancer never lose each other's updates). A rejected event raises before the
store is touched, so no event can leave a session half-updated.

Policies (documented and tested):
- An event older than the session's last event is rejected (out of order).
  An event without ``ts`` takes the clock's time as it applies, never earlier
  than the session's last event, so concurrent events cannot be out of order.
- time_on_page_sec and scroll_depth only grow within a page; a lower value is ignored.
- device_type and traffic_source are fixed by the session's first page view;
  a later event naming a different one is rejected.
- A session idle for longer than the TTL is gone: engagement and cart events
  for it are rejected, and a page view starts a new session.
- A session whose stored value is corrupt (not a session's JSON, in Redis) is
  treated as gone, with a message that says so: a page view starts it again.
- Products delisted by a catalog update (``Model.with_catalog``) while a session
  is live are skipped: the context keeps the current page's category and price as
  shown, and ``recommend`` ignores delisted viewed and in-cart products.
- Ids must be non-empty strings encodable as UTF-8 (no lone surrogates), in every
  store, so a session that works in memory works in Redis.
"""

from __future__ import annotations

import json
import math
import operator
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from reco_fast._docstrings import inject
from reco_fast.errors import InputError, SessionNotFound, StoreUnavailable, shown, shown_values
from reco_fast.features.schema import NONE_PRODUCT, NumericField, check_number
from reco_fast.serve.recommend import CART_FIELD, Recommendation

if TYPE_CHECKING:
    from reco_fast.serve.impressions import ImpressionLog, LoggedRecommender
    from reco_fast.serve.model import Model
    from reco_fast.serve.policies import Policy

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "MemoryStore",
    "RedisStore",
    "SessionNotFound",
    "SessionStore",
    "SessionTracker",
    "StoreUnavailable",
]

DEFAULT_TTL_SECONDS = 30 * 60
DEFAULT_MAX_SESSIONS = 100_000
DEFAULT_STORE_TIMEOUT_SECONDS = 1.0
MAX_SECONDS = 1e9
"""Longest duration a store accepts (about 31 years): a TTL beyond it is a mistake."""
State = dict[str, Any]
EVENT_STATE_KIND = "events"
"""The ``kind`` of a stored :class:`~reco_fast.serve.eventsession.EventTracker` session."""


def new_event_state(session_id: str, now: float) -> State:
    """A new event-log session's stored state: the one definition of its keys.

    ``now`` is the first event's time in epoch seconds. ``products`` (touched product
    ids, most recent last) and ``cart`` start empty. :class:`EventTracker` starts its
    sessions with it; every store refuses a stored event session without these keys.
    """
    return {
        "session_id": session_id,
        "kind": EVENT_STATE_KIND,
        "start_ts": now,
        "last_ts": now,
        "products": [],
        "cart": [],
    }


_EVENT_STATE_KEYS = frozenset(new_event_state("", 0.0))
_STATE_KEYS = frozenset(
    (
        "session_id",
        "customer_id",
        "device_type",
        "traffic_source",
        "start_ts",
        "last_ts",
        "current_product_id",
        "prev",
        "products_viewed_count",
        "cart",
        "time_on_page_sec",
        "scroll_depth",
        "clicked_product_image",
    )
)


def _seconds(name: str, value: Any) -> float:
    """A duration argument: a finite number of seconds in (0, MAX_SECONDS]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name} must be a number of seconds, got {type(value).__name__} {shown(value)}"
        )
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not 0.0 < v <= MAX_SECONDS:
        raise ValueError(
            f"{name} must be a positive, finite number of seconds (at most {MAX_SECONDS:g}), "
            f"got {shown(value)}"
        )
    return v


def _count(name: str, value: Any, low: int = 1) -> int:
    """An integer argument >= low (a bool or a float such as 0.5 is refused)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an integer >= {low}, got {type(value).__name__} {shown(value)}"
        ) from None
    if v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v}")
    return v


class SessionStore(Protocol):
    """Where session state lives: the contract a new store implements.

    A state is a JSON-serialisable dict (the trackers define its keys); a store keeps
    it per session id, forgets a session idle for more than ``ttl`` seconds, and
    applies every update atomically. :class:`MemoryStore` and :class:`RedisStore`
    implement it; ``tests/test_session.py`` checks the contract.

    Attributes
    ----------
    ttl : float
        Seconds a session is kept after its last update (finite, > 0).
    """

    ttl: float

    def get(self, session_id: str) -> State | None:
        """The stored state of a session, or None if it is unknown or expired.

        Parameters
        ----------
        session_id : str
            A non-empty id (the trackers check it).

        Returns
        -------
        dict or None
            The state as last stored (callers must not modify it).

        Raises
        ------
        StoreUnavailable
            The store cannot be reached in time.
        SessionNotFound
            The stored value is corrupt (not a session's JSON).
        """
        ...

    def update(self, session_id: str, fn: Callable[[State | None], State]) -> State:
        """Atomically replace a session's state by ``fn(state)``; return the new state.

        Parameters
        ----------
        session_id : str
            A non-empty id.
        fn : callable
            ``fn(state or None) -> new state``: None for an unknown or expired session.
            It must be pure (a store may call it more than once, e.g. after a conflicting
            concurrent update) and must not modify its argument. An exception it raises
            propagates and leaves the stored state unchanged.

        Returns
        -------
        dict
            The state stored, which restarts the session's TTL.

        Raises
        ------
        StoreUnavailable
            The store cannot be reached or is full; the message says whether the
            update may have been applied.
        """
        ...


# ---- stores -------------------------------------------------------------------------------
class MemoryStore:
    """Thread-safe in-process store with a TTL and a bound on the number of sessions.

    Sessions are kept in least-recently-updated order, so expired sessions are
    always at the front and the bound evicts the idlest session first.

    Parameters
    ----------
    ttl : float
        Seconds a session lives after its last update (default 1,800), finite and > 0.
    max_sessions : int
        Most sessions kept (default 100,000), >= 1; beyond it the idlest is evicted
        (counted in ``evicted``; sessions dropped for their TTL in ``expired``).
    clock : callable
        The time in seconds (``time.time``); tests pass a fake one.

    Raises
    ------
    ValueError
        A bad ``ttl`` or ``max_sessions`` (named).
    """

    def __init__(
        self,
        ttl: float = DEFAULT_TTL_SECONDS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        clock: Callable[[], float] = time.time,
    ):
        self.ttl = _seconds("ttl", ttl)
        self.max_sessions = _count("max_sessions", max_sessions)
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[float, State]] = OrderedDict()
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._data)

    def _sweep(self, now: float) -> None:
        data = self._data
        while data:
            sid, (touched, _) = next(iter(data.items()))
            if now - touched <= self.ttl:
                break
            del data[sid]
            self.expired += 1

    def get(self, session_id: str) -> State | None:
        """The state of ``session_id``, or None if unknown or idle for more than ``ttl``
        seconds (:meth:`SessionStore.get`)."""
        with self._lock:
            item = self._data.get(session_id)
            if item is None or self._clock() - item[0] > self.ttl:
                return None
            return item[1]

    def update(self, session_id: str, fn: Callable[[State | None], State]) -> State:
        """Store ``fn(state)`` as the state of ``session_id``, under the store's lock
        (:meth:`SessionStore.update`); expired sessions are dropped first, and past
        ``max_sessions`` the idlest is evicted. Returns the new state."""
        with self._lock:
            now = self._clock()
            self._sweep(now)
            item = self._data.get(session_id)
            new = fn(None if item is None else item[1])
            self._data[session_id] = (now, new)
            self._data.move_to_end(session_id)
            while len(self._data) > self.max_sessions:
                self._data.popitem(last=False)
                self.evicted += 1
            return new


# Check-and-set: write the new value only if the key still holds the value the update
# read ('' = absent), and mark the event applied (a key that expires). Unlike a
# WATCH/MULTI/EXEC, which redis-py resends on a new connection, no longer watched,
# after a dropped reply (overwriting any concurrent update), a resent check-and-set
# is still conditional.
_CAS_LUA = """
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
  return 1
end
return 0
"""


def _loads(raw: bytes) -> State | None:
    """A stored session, or None when the value is not one (corrupt)."""
    try:
        state = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if not isinstance(state, dict):
        return None
    if state.get("kind") == EVENT_STATE_KIND:  # serve.eventsession.EventTracker's sessions
        return state if _EVENT_STATE_KEYS <= state.keys() else None
    if not _STATE_KEYS <= state.keys():
        return None
    return state


def _corrupt(session_id: str) -> SessionNotFound:
    return SessionNotFound(
        f"session {shown(session_id)} has a corrupt value in the session store (not a "
        "session's JSON); it is treated as gone: start it again with a page_view",
        field="session_id",
    )


class RedisStore:
    """Session state in Redis, one JSON value per session, expiring after the TTL.

    Each update is optimistic and atomic: read the value, compute the next state,
    then write it with a server-side check-and-set (a Lua script: set only if
    the value is still the one read), re-read and retry on conflict. Concurrent
    updates of one session from several replicas all apply.

    Faults (tested against a real server that is stopped, restarted, paused with
    SIGSTOP, filled to ``maxmemory`` and whose connections are killed,
    tests/test_redis_faults.py):

    - Every call is bounded in time, retries included: it returns, or raises
      :class:`StoreUnavailable`, within ``timeout`` seconds (default 1) plus one
      round trip. No new attempt starts after the deadline. With :meth:`from_url`'s
      client a round trip is bounded by its socket timeouts (``timeout / 4`` to
      connect and ``timeout / 4`` to read), so a server that hangs (paused, or
      overloaded) costs about ``timeout`` (0.5 s by default) and a call never
      takes more than ``1.5 * timeout``. A client of your own needs socket timeouts
      for this bound to hold (redis-py's default is to wait forever).
    - The server cannot be reached: :class:`StoreUnavailable`. Nothing is half
      written (a check-and-set applies whole or not at all). The same store
      reconnects by itself once the server is back: it keeps no connection state
      between updates, and redis-py reopens dropped connections.
    - A connection drops mid-update: the update is retried on a new connection
      (``reconnect_retries`` times, default 1, within the deadline). Each update
      has a random event id; the write that applies it also sets a marker key
      ``<prefix without ':'>~event:<id>`` that expires after
      ``idempotency_window`` seconds (default 120), and every attempt checks it
      first. So a retry of an update that was applied but whose reply was lost
      does not apply the event again, and a resent check-and-set cannot overwrite
      another replica's update: no acknowledged event is lost, none is applied
      twice. If the retries fail too, StoreUnavailable says whether the event was
      not applied or "may or may not have been applied" (the write was sent, its
      outcome is unknown).
    - The server is out of memory (``maxmemory`` with the ``noeviction`` policy)
      or answers with another error: :class:`StoreUnavailable` naming it; a
      refused write was not applied.
    - Session state is a cache with a TTL: a server that restarts without
      persistence (``--save ""``) comes back empty, and sessions start again with
      their next page view (other events raise SessionNotFound). A value that is
      not a session's JSON (written by something else, or damaged) is treated the
      same way: :class:`SessionNotFound` says it is corrupt, and the next page view
      replaces it (conditionally, like every write).

    The script touches two keys, so on Redis Cluster give ``prefix`` a hash tag
    (e.g. ``"{reco}:session:"``) to keep them in one slot.

    Parameters
    ----------
    client : redis.Redis
        The client to use (give it socket timeouts; see above), or use :meth:`from_url`.
    ttl : float
        Seconds a session lives after its last update (default 1,800), finite and > 0.
    prefix : str
        Prepended to the session id to make its key.
    max_retries : int
        Conflicting concurrent updates of one session tolerated in a row (default 50).
    reconnect_retries : int
        Retries on a new connection after a dropped one (default 1, >= 0).
    idempotency_window : float
        Seconds an applied update's marker is kept (default 120).
    timeout : float
        Seconds a call may take, retries included (default 1).

    Raises
    ------
    ValueError
        A bad ``ttl``, ``max_retries``, ``reconnect_retries``, ``idempotency_window``
        or ``timeout`` (named).
    """

    def __init__(
        self,
        client: Any,
        ttl: float = DEFAULT_TTL_SECONDS,
        prefix: str = "reco_fast:session:",
        max_retries: int = 50,
        reconnect_retries: int = 1,
        idempotency_window: float = 120.0,
        timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS,
    ):
        self.client = client
        self.ttl = _seconds("ttl", ttl)
        self.prefix = prefix
        self.event_prefix = prefix.rstrip(":") + "~event:"  # never matches prefix + "*"
        self.max_retries = _count("max_retries", max_retries)
        self.reconnect_retries = _count("reconnect_retries", reconnect_retries, low=0)
        self.idempotency_window = _seconds("idempotency_window", idempotency_window)
        self.timeout = _seconds("timeout", timeout)
        self._cas = client.register_script(_CAS_LUA)  # no round trip: loaded on first use

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = DEFAULT_STORE_TIMEOUT_SECONDS, **kwargs: Any
    ) -> RedisStore:
        """A store with its own client, whose every call takes at most about ``timeout`` s.

        The client's socket timeouts are ``timeout / 4`` (connect and read) and redis-py
        does not retry by itself: the store's own retries (``reconnect_retries``) are the
        only ones, within the deadline. Other keyword arguments go to :class:`RedisStore`.

        Parameters
        ----------
        url : str
            A Redis URL (``redis://host:6379/0``, ``rediss://`` for TLS,
            ``unix:///path``), as redis-py's ``Redis.from_url`` reads it.
        timeout : float
            Seconds a call may take, retries included (default 1).

        Raises
        ------
        ValueError
            A bad ``timeout`` or other argument (named), or a URL redis-py refuses.
        ImportError
            redis-py is not installed (the ``redis`` extra).
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        timeout = _seconds("timeout", timeout)
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout / 4,
            socket_connect_timeout=timeout / 4,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, timeout=timeout, **kwargs)

    def _errors(self) -> tuple[type[BaseException], ...]:
        import redis

        return (redis.ConnectionError, redis.TimeoutError)

    def _failed(self, exc: BaseException, outcome: str) -> StoreUnavailable:
        """StoreUnavailable for an error reply of the server (not a lost connection)."""
        import redis

        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            return StoreUnavailable(
                f"session store is full (Redis reached maxmemory) and refused the write "
                f"({outcome}); raise maxmemory, or use an eviction policy such as volatile-ttl"
            )
        return StoreUnavailable(f"session store error ({outcome}): {shown(str(exc), 200)}")

    def get(self, session_id: str) -> State | None:
        """The state of ``session_id``, or None if Redis has no (unexpired) value for it
        (:meth:`SessionStore.get`). Retried on a new connection within ``timeout``.

        Raises
        ------
        StoreUnavailable
            Redis cannot be reached within ``timeout`` seconds, or answered an error.
        SessionNotFound
            The stored value is not a session's JSON (corrupt).
        """
        import redis

        deadline = time.monotonic() + self.timeout
        failures = 0
        while True:
            try:
                raw = self.client.get(self.prefix + session_id)
                break
            except self._errors() as exc:  # idempotent: retried on a new connection
                failures += 1
                if failures > self.reconnect_retries or time.monotonic() >= deadline:
                    raise StoreUnavailable(f"session store unavailable: {exc}") from exc
            except redis.RedisError as exc:
                raise self._failed(exc, "nothing was read") from exc
        if raw is None:
            return None
        state = _loads(raw)
        if state is None:
            raise _corrupt(session_id)
        return state

    def update(self, session_id: str, fn: Callable[[State | None], State]) -> State:
        """Store ``fn(state)`` as the state of ``session_id`` with optimistic
        check-and-set (:meth:`SessionStore.update`); return the new state.

        The new value is written only if the stored one is still the one ``fn`` read;
        otherwise the state is re-read and ``fn`` applied again (up to ``max_retries``
        conflicts). Each update carries an id, so a retry after a lost reply never
        applies it twice. The value's TTL is reset to ``ttl``.

        Raises
        ------
        StoreUnavailable
            Redis cannot be reached within ``timeout`` seconds, is full, answered an
            error, or the session is too contended; the message says whether the
            update may have been applied.
        SessionNotFound
            The stored value is not a session's JSON (corrupt).
        """
        import redis

        key = self.prefix + session_id
        marker = self.event_prefix + uuid.uuid4().hex
        ttl_ms = max(1, int(self.ttl * 1000))
        window_ms = max(1, int(self.idempotency_window * 1000))
        deadline = time.monotonic() + self.timeout
        unknown = False  # a write went out and its reply was lost: its outcome is unknown
        failures = 0
        conflicts = 0
        last_error: BaseException | None = None

        def outcome() -> str:
            if unknown:
                return "the event may or may not have been applied"
            return "the event was not applied"

        while conflicts < self.max_retries:
            if time.monotonic() >= deadline and (failures or conflicts):
                raise StoreUnavailable(
                    f"session store unavailable ({outcome()}): no answer within "
                    f"{self.timeout:g} s: {last_error or 'too many conflicting updates'}"
                ) from last_error
            sending = False
            try:
                raw, applied = self.client.mget(key, marker)
                if applied is not None:  # an earlier attempt applied it; its reply was lost
                    if raw is None:
                        raise StoreUnavailable(
                            f"session {shown(session_id)} expired right after the event was applied"
                        )
                    state = _loads(raw)
                    if state is None:
                        raise _corrupt(session_id)
                    return state
                state = None if raw is None else _loads(raw)
                try:
                    new = fn(state)
                except SessionNotFound:
                    if raw is not None and state is None:
                        raise _corrupt(session_id) from None
                    raise
                value = json.dumps(new, separators=(",", ":"))
                old = b"" if raw is None else raw
                sending = True
                if self._cas(keys=[key, marker], args=[old, value, ttl_ms, window_ms]):
                    return new
                conflicts += 1  # another update came first (or this one, resent): re-read
            except self._errors() as exc:
                unknown = unknown or sending
                failures += 1
                last_error = exc
                if failures <= self.reconnect_retries:
                    continue  # same event id: a retry cannot apply the event twice
                raise StoreUnavailable(f"session store unavailable ({outcome()}): {exc}") from exc
            except redis.RedisError as exc:  # an error reply: this attempt was refused
                raise self._failed(exc, outcome()) from exc
        raise StoreUnavailable(
            f"session {shown(session_id)} is too contended: "
            f"{self.max_retries} conflicting updates in a row"
        )


# ---- events -------------------------------------------------------------------------------
_TS = NumericField("ts")  # an event's time in seconds: non-negative, within float32


def _check_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{name!r} must be a non-empty string, got {shown(value)}", field=name)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: no store could key it
            raise InputError(
                f"{name!r} must be valid Unicode text, got {shown(value)} (a lone surrogate "
                f"at position {exc.start})",
                field=name,
            ) from None
    return value


@dataclass(frozen=True)
class _Catalogue:
    """What the tracker needs of a model: product lookups and label vocabularies."""

    products: Mapping[str, tuple[str, float]]
    devices: frozenset[str]
    traffic_sources: frozenset[str]


def _grown(old: float, new: float) -> float:
    """A signal that only grows within a page: NaN (not measured) replaces the page's
    value, and a number replaces NaN."""
    if new != new or old != old:
        return new
    return max(old, new)


def _int_or_nan(v: Any) -> Any:
    """A count or flag as an int; NaN (a missing value) stays NaN."""
    v = float(v)
    return v if v != v else int(v)


# The tracker's methods' shared docstring sections (reco_fast._docstrings.inject).
_TRACKER_DOC = {
    "live": """
        session_id : str
            A live session.
    """,
    "ts": """
        ts : float, optional
            The event's time in epoch seconds; default now (see :meth:`page_view`).
    """,
    "returns": """
        Returns
        -------
        dict
            The session's context after the event (:meth:`context`).
    """,
    "not_found": """
        SessionNotFound
            The session is unknown or expired.
    """,
    "unavailable": """
        StoreUnavailable
            The session store cannot be reached; the message says whether the event
            may have been applied.
    """,
}


class SessionTracker:
    """Turns a stream of events into the session context ``Model.recommend`` scores.

    Build it from the model that will score the sessions, so product lookups
    and vocabularies are the model's. Share one tracker between threads.

    Parameters
    ----------
    model : Model
        The model whose catalog and vocabularies events are checked against.
    store : SessionStore, optional
        Where sessions live; default a :class:`MemoryStore` of ``ttl`` and
        ``max_sessions``. A store carries its own TTL (``RedisStore(client, ttl=...)``):
        giving ``ttl`` or ``max_sessions`` with a store raises ValueError unless they
        equal the store's, since they would be ignored.
    ttl : float, optional
        Seconds a session lives without events (default 1,800), finite and > 0.
    max_sessions : int, optional
        Most sessions the in-memory store keeps (default 100,000), an integer >= 1.
    clock : callable
        The time in seconds (``time.time``); tests pass a fake one.
    log : ImpressionLog, optional
        Attach an impression log (:mod:`reco_fast.serve.impressions`): ``recommend``
        then logs one impression per call (through a
        :class:`~reco_fast.serve.impressions.LoggedRecommender`, which returns a
        ``Shown`` list carrying the ``request_id``), and :meth:`click` and
        :meth:`purchase` record outcomes that the log joins to the impression that
        showed the product. Impression and outcome times are the wall clock
        (``time.time``) unless ``ts=`` is given, not ``clock``.
    policy : Policy, optional
        With ``log``: an exploration policy (:mod:`reco_fast.serve.policies`);
        default the model's top k.

    Raises
    ------
    ValueError
        A bad ``ttl`` or ``max_sessions`` (named), or either given with a store that
        has another value; a model without a catalog; ``policy`` without ``log``.
    TypeError
        ``log`` is not an ImpressionLog, ``policy`` not a Policy.
    """

    def __init__(
        self,
        model: Model,
        store: SessionStore | None = None,
        *,
        ttl: float | None = None,
        max_sessions: int | None = None,
        clock: Callable[[], float] = time.time,
        log: ImpressionLog | None = None,
        policy: Policy | None = None,
    ):
        if ttl is not None:
            ttl = _seconds("ttl", ttl)
        if max_sessions is not None:
            max_sessions = _count("max_sessions", max_sessions)
        if store is not None:
            for name, value in (("ttl", ttl), ("max_sessions", max_sessions)):
                if value is not None and getattr(store, name, None) != value:
                    raise ValueError(
                        f"{name}={value!r} would be ignored: the {type(store).__name__} passed "
                        f"as store has its own ({getattr(store, name, 'none')!r}); set it on the "
                        "store instead (e.g. RedisStore(client, ttl=...)), or pass no store"
                    )
        builder = model.builder
        if builder.catalog is None:
            raise ValueError("tracking sessions needs a model with a product catalog")
        catalog = builder.catalog
        self._model = model
        # NaN (a missing value) in an event: the model's policy, the one rule of schema.py
        self._nan_ok: bool = builder.nan_ok
        self._cat = _Catalogue(
            {p: (c, float(pr)) for p, c, pr in catalog.to_rows()},
            frozenset(builder.vocabulary.devices),
            frozenset(builder.vocabulary.traffic_sources),
        )
        self._clock = clock
        self.store: SessionStore = (
            store
            if store is not None
            else MemoryStore(
                DEFAULT_TTL_SECONDS if ttl is None else ttl,
                DEFAULT_MAX_SESSIONS if max_sessions is None else max_sessions,
                clock,
            )
        )
        self.ttl = self.store.ttl
        self._logged: LoggedRecommender | None = _attach(self, log, policy)

    @property
    def log(self) -> ImpressionLog | None:
        """The attached impression log, or None."""
        return None if self._logged is None else self._logged.log

    # -- helpers --
    def _ts(self, ts: float | None) -> float | None:
        """A client's event time, validated; None means "now", read as the event applies."""
        return None if ts is None else check_number("ts", ts, _TS)

    def _at(self, ts: float | None, state: State | None) -> float:
        """The event's time. "Now" is read inside the store's atomic update and never
        precedes the session's last event, so concurrent events are not out of order."""
        if ts is not None:
            return ts
        now = self._clock()
        return now if state is None else max(now, state["last_ts"])

    def _product(self, name: str, product_id: Any) -> tuple[str, float]:
        _check_id(name, product_id)
        try:
            return self._cat.products[product_id]
        except KeyError:
            raise InputError(
                f"{name!r} {shown(product_id)} is not in the catalog", field=name
            ) from None

    def _live(self, state: State | None, session_id: str, ts: float) -> State:
        if state is None:
            raise SessionNotFound(
                f"session {shown(session_id)} is unknown or expired; start it with a page_view",
                field="session_id",
            )
        if ts - state["last_ts"] > self.ttl:
            raise SessionNotFound(
                f"session {shown(session_id)} expired after {self.ttl:g} s idle; "
                "start it again with a page_view",
                field="session_id",
            )
        if ts < state["last_ts"]:
            raise InputError(
                f"event at ts={ts!r} is older than the session's last event "
                f"(ts={state['last_ts']!r}); events must arrive in order",
                field="ts",
            )
        return state

    def _update_live(
        self, session_id: str, ts: float | None, change: Callable[[State, float], State]
    ) -> dict[str, Any]:
        """Apply ``change(state, at)`` to the live session in one store update, ``at``
        being the event's time (:meth:`_at`); the session's context after it. An unknown
        or expired session is a SessionNotFound (:meth:`_live`)."""

        def apply(state: State | None) -> State:
            at = self._at(ts, state)
            return change(self._live(state, session_id, at), at)

        return self._context(self.store.update(session_id, apply))

    # -- events --
    @inject(_TRACKER_DOC)
    def page_view(
        self,
        session_id: str,
        product_id: str,
        *,
        customer_id: str | None = None,
        device_type: str | None = None,
        traffic_source: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """The viewed product becomes current; the previous three shift; engagement resets.

        The product's category and price as shown are kept with the session, so a
        catalog update that delists it (``Model.with_catalog``) does not break the
        session: its context keeps them until the next page view. A page view for an
        unknown or expired session starts a new one.

        Parameters
        ----------
        session_id : str
            Non-empty id of the session.
        product_id : str
            The viewed product; must be in the model's catalog.
        customer_id : str, optional
            Fixed by the first page view that gives one; a different one later is refused.
        device_type, traffic_source : str, optional
            Required on a session's first page view (values the model's vocabulary
            knows); later ones must equal the session's or be omitted.
        ts : float, optional
            The event's time in epoch seconds (>= 0); default: the clock's time as the
            event applies, never before the session's last event.

        %(returns)s

        Raises
        ------
        InputError
            An empty or non-string id, a product not in the catalog, an unknown device or
            traffic source, one that differs from the session's, a first page view
            without them, or ``ts`` older than the session's last event (named field).
        %(unavailable)s
        """
        _check_id("session_id", session_id)
        shown_category, shown_price = self._product("product_id", product_id)
        ts = self._ts(ts)
        for name, value, allowed in (
            ("device_type", device_type, self._cat.devices),
            ("traffic_source", traffic_source, self._cat.traffic_sources),
        ):
            if value is not None and (not isinstance(value, str) or value not in allowed):
                raise InputError(
                    f"{name!r} has unknown value {shown(value)}; the model knows "
                    f"{shown_values(sorted(allowed))}",
                    field=name,
                )
        if customer_id is not None:
            _check_id("customer_id", customer_id)

        def apply(state: State | None) -> State:
            at = self._at(ts, state)
            if state is None or at - state["last_ts"] > self.ttl:
                if device_type is None or traffic_source is None:
                    raise InputError(
                        "a new session's first page_view needs device_type and traffic_source",
                        field="device_type" if device_type is None else "traffic_source",
                    )
                return {
                    "session_id": session_id,
                    "customer_id": customer_id or "",
                    "device_type": device_type,
                    "traffic_source": traffic_source,
                    "start_ts": at,
                    "last_ts": at,
                    "page_ts": at,
                    "current_product_id": product_id,
                    "current_category": shown_category,
                    "current_price": shown_price,
                    "prev": [],
                    "products_viewed_count": 1,
                    "cart": [],
                    "time_on_page_sec": 0.0,
                    "scroll_depth": 0.0,
                    "clicked_product_image": 0,
                }
            self._live(state, session_id, at)
            for name, value in (("device_type", device_type), ("traffic_source", traffic_source)):
                if value is not None and value != state[name]:
                    raise InputError(
                        f"{name!r} {shown(value)} differs from the session's {shown(state[name])}",
                        field=name,
                    )
            if customer_id is not None and state["customer_id"] not in ("", customer_id):
                raise InputError(
                    f"'customer_id' {shown(customer_id)} differs from the session's "
                    f"{shown(state['customer_id'])}",
                    field="customer_id",
                )
            new = dict(state)
            new["customer_id"] = customer_id or state["customer_id"]
            new["prev"] = ([state["current_product_id"], *state["prev"]])[:3]
            new.update(
                current_product_id=product_id,
                current_category=shown_category,
                current_price=shown_price,
                last_ts=at,
                page_ts=at,
                products_viewed_count=state["products_viewed_count"] + 1,
                time_on_page_sec=0.0,
                scroll_depth=0.0,
                clicked_product_image=0,
            )
            return new

        return self._context(self.store.update(session_id, apply))

    @inject(_TRACKER_DOC)
    def engagement(
        self,
        session_id: str,
        *,
        time_on_page_sec: float | None = None,
        scroll_depth: float | None = None,
        clicked_product_image: bool | int | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """Update the current page's engagement signals; each only grows within a page.

        ``None`` leaves a signal as it is. For a model that routes missing values
        (``model.missing_values == "routed"``), NaN says the signal could not be
        measured: the page's value becomes missing (NaN) until a number arrives, which
        then replaces it. For other models NaN is an InputError naming the field.

        Parameters
        ----------
        session_id : str
            A live session (started by :meth:`page_view`).
        time_on_page_sec : float, optional
            Seconds on the current page so far (>= 0); a lower value than the stored
            one is ignored.
        scroll_depth : float, optional
            Fraction of the page scrolled, in [0, 1]; a lower value is ignored.
        clicked_product_image : bool or int, optional
            1 (True) once the product image was clicked; 0 does not undo it.
        %(ts)s

        %(returns)s

        Raises
        ------
        %(not_found)s
        InputError
            A value outside its domain, or ``ts`` older than the session's last event.
        %(unavailable)s
        """
        _check_id("session_id", session_id)
        ts = self._ts(ts)
        nan_ok = self._nan_ok
        t = (
            None
            if time_on_page_sec is None
            else check_number("time_on_page_sec", time_on_page_sec, nan_ok=nan_ok)
        )
        s = (
            None
            if scroll_depth is None
            else check_number("scroll_depth", scroll_depth, nan_ok=nan_ok)
        )
        c = (
            None
            if clicked_product_image is None
            else check_number("clicked_product_image", clicked_product_image, nan_ok=nan_ok)
        )

        def change(state: State, at: float) -> State:
            new = dict(state, last_ts=at)
            for name, value in (
                ("time_on_page_sec", t),
                ("scroll_depth", s),
                ("clicked_product_image", c),
            ):
                if value is not None:
                    new[name] = _grown(state[name], value)
            if c is not None and c == c:
                new["clicked_product_image"] = int(new["clicked_product_image"])
            return new

        return self._update_live(session_id, ts, change)

    @inject(_TRACKER_DOC)
    def add_to_cart(
        self, session_id: str, product_id: str, ts: float | None = None
    ) -> dict[str, Any]:
        """Put a product in the session's cart (a product may be added more than once).

        Parameters
        ----------
        %(live)s
        product_id : str
            A product in the model's catalog.
        %(ts)s

        %(returns)s

        Raises
        ------
        %(not_found)s
        InputError
            The product is not in the catalog, or ``ts`` is older than the session's
            last event.
        %(unavailable)s
        """
        _check_id("session_id", session_id)
        self._product("product_id", product_id)
        ts = self._ts(ts)

        return self._update_live(
            session_id,
            ts,
            lambda state, at: dict(state, last_ts=at, cart=[*state["cart"], product_id]),
        )

    @inject(_TRACKER_DOC)
    def remove_from_cart(
        self, session_id: str, product_id: str, ts: float | None = None
    ) -> dict[str, Any]:
        """Take one occurrence of a product out of the session's cart.

        Parameters
        ----------
        %(live)s
        product_id : str
            A product in the cart (it may have been delisted since).
        %(ts)s

        %(returns)s

        Raises
        ------
        %(not_found)s
        InputError
            The product is not in the cart, or ``ts`` is older than the session's last
            event.
        %(unavailable)s
        """
        _check_id("session_id", session_id)
        _check_id("product_id", product_id)
        ts = self._ts(ts)

        def change(state: State, at: float) -> State:
            if product_id not in state["cart"]:
                raise InputError(
                    f"product {shown(product_id)} is not in the cart of session "
                    f"{shown(session_id)}",
                    field="product_id",
                )
            cart = list(state["cart"])
            cart.remove(product_id)
            return dict(state, last_ts=at, cart=cart)

        return self._update_live(session_id, ts, change)

    # -- reading --
    @inject(_TRACKER_DOC)
    def context(self, session_id: str) -> dict[str, Any]:
        """The current page view in the seed's schema, ready for ``Model.recommend``.

        To score one particular product with ``predict_proba``, add its
        ``recommended_product_id`` to the dict.

        Parameters
        ----------
        session_id : str
            The session's id.

        Returns
        -------
        dict
            ``session_id``, ``customer_id``, ``current_product_id``, ``current_category``,
            ``current_price`` (the catalog's price, or the price shown if delisted since),
            ``prev_product_1``..``3`` (``"NONE"`` when absent), ``products_in_cart``
            (count), ``device_type``, ``traffic_source``, ``time_on_page_sec`` (seconds),
            ``scroll_depth`` (fraction in [0, 1]), ``clicked_product_image`` (0 or 1),
            ``session_length_mins`` (minutes from the first event to the last),
            ``products_viewed_count`` and ``cart_product_ids`` (the cart's product ids).

        Raises
        ------
        %(not_found)s
        %(unavailable)s
        """
        _check_id("session_id", session_id)
        state = self.store.get(session_id)
        if state is None:
            raise SessionNotFound(
                f"session {shown(session_id)} is unknown or expired", field="session_id"
            )
        return self._context(state)

    def _context(self, state: State) -> dict[str, Any]:
        product = state["current_product_id"]
        item: tuple[Any, Any] | None = self._cat.products.get(product)
        if item is None:  # delisted since it was viewed: the category and price it was shown at
            item = (state.get("current_category"), state.get("current_price"))
            if item[0] is None or item[1] is None:  # a session stored by an older reco_fast
                raise InputError(
                    f"session {shown(state['session_id'])}: its current product "
                    f"{shown(product)} is no longer in the catalog; the session continues "
                    "with its next page_view",
                    field="current_product_id",
                )
        category, price = item
        prev = [*state["prev"], NONE_PRODUCT, NONE_PRODUCT, NONE_PRODUCT]
        return {
            "session_id": state["session_id"],
            "customer_id": state["customer_id"],
            "current_product_id": state["current_product_id"],
            "current_category": category,
            "current_price": price,
            "prev_product_1": prev[0],
            "prev_product_2": prev[1],
            "prev_product_3": prev[2],
            "products_in_cart": len(state["cart"]),
            "device_type": state["device_type"],
            "traffic_source": state["traffic_source"],
            "time_on_page_sec": float(state["time_on_page_sec"]),
            "scroll_depth": float(state["scroll_depth"]),
            "clicked_product_image": _int_or_nan(state["clicked_product_image"]),
            "session_length_mins": (state["last_ts"] - state["start_ts"]) / 60.0,
            "products_viewed_count": int(state["products_viewed_count"]),
            CART_FIELD: list(state["cart"]),
        }

    @inject(_TRACKER_DOC)
    def recommend(
        self, session_id: str, k: int = 3, threshold: float | None = None, **kwargs: Any
    ) -> list[Recommendation]:
        """Recommendations for the session ``session_id`` as it is now:
        ``Model.recommend`` of :meth:`context` (``k``, ``threshold`` and ``kwargs`` are
        passed on; ``threshold`` None is the model's).

        With a ``log`` attached, the call is logged as one impression and returns a
        :class:`~reco_fast.serve.impressions.Shown` (a list of Recommendation with
        ``request_id``, ``variant`` and ``model_id``); ``ts=`` (epoch seconds) then
        sets the impression's time.

        Raises
        ------
        %(not_found)s
        %(unavailable)s
        """
        logged = self._logged
        if logged is not None:
            return logged.recommend(session_id, k, threshold, **kwargs)
        return self._model.recommend(self.context(session_id), k, threshold, **kwargs)

    def click(self, session_id: str, product_id: str, ts: float | None = None) -> None:
        """Record a click on a recommended product, joined to the impression that showed it.

        Forwards to the attached log's :meth:`~reco_fast.serve.impressions.ImpressionLog.click`:
        the click joins the latest impression of ``session_id`` that showed
        ``product_id`` within the log's ``click_window`` (a click that matches none is
        written unmatched and counted). The session itself is not changed (a click
        that opens the product's page is a :meth:`page_view` too). Never waits.

        Parameters
        ----------
        session_id, product_id : str
        ts : float, optional
            Epoch seconds of the click (default: now).

        Raises
        ------
        RuntimeError
            No impression log is attached.
        TypeError, ValueError
            A non-string or empty id, a bad ``ts``.
        """
        _log_of(self, "click").click(session_id, product_id, ts)

    def purchase(self, session_id: str, product_id: str, ts: float | None = None) -> None:
        """Record a purchase of ``product_id`` in ``session_id`` at ``ts`` (epoch seconds,
        default now), joined like :meth:`click` (within the log's ``purchase_window``).

        Raises RuntimeError without an attached log; TypeError/ValueError for bad ids or ``ts``.
        """
        _log_of(self, "purchase").purchase(session_id, product_id, ts)


def _attach(tracker: Any, log: Any, policy: Any) -> LoggedRecommender | None:
    """The LoggedRecommender a tracker recommends through when ``log`` is given."""
    if log is None:
        if policy is not None:
            raise ValueError("policy goes with log: an exploration policy needs an impression log")
        return None
    from reco_fast.serve.impressions import LoggedRecommender

    return LoggedRecommender(tracker, log, policy)


def _log_of(tracker: Any, what: str) -> ImpressionLog:
    logged = tracker._logged
    if logged is None:
        raise RuntimeError(
            f"{type(tracker).__name__} has no impression log to record a {what} in: "
            f"create it with {type(tracker).__name__}(model, log=ImpressionLog(...))"
        )
    log: ImpressionLog = logged.log
    return log
