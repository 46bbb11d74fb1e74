"""RedisStore under faults, against a real redis-server this module starts, stops and kills.

The module runs its own ``redis-server`` on a free loopback port (never the
shared ``REDIS_URL`` server: these tests stop it). Without ``redis-server`` on
PATH the tests are skipped, except under CI (``CI`` set), where they fail.

Guarantees shown here:
- server down -> every event raises StoreUnavailable (typed, bounded in time), the
  stored state is untouched; server back -> the same tracker works again;
- connections killed between and during events -> events apply exactly once;
- an EXEC whose reply is lost is not applied twice when it is retried;
- without persistence (``--save ""``) a restart empties the store: session state
  is a cache with a TTL, sessions start again at their next page view.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reco_fast import RedisStore, SessionNotFound, SessionTracker, StoreUnavailable
from reco_fast.serve.recommend import CART_FIELD
from tests.helpers import require

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One redis-server process on a fixed port that tests may stop and start again."""

    def __init__(self, binary: str, workdir: Path):
        self.binary, self.workdir = binary, workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.persist = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, persist: bool | None = None) -> None:
        """persist: append-only file fsynced on every write (survives kill -9) or nothing."""
        if persist is not None:
            self.persist = persist
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persist
            else ["--appendonly", "no"]
        )
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durability]
        self.proc = subprocess.Popen(
            [self.binary, *args, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
            try:
                client.ping()
                # an AOF server answers LOADING errors (ResponseError) until loaded
                return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def wipe(self) -> None:
        for p in self.workdir.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = shutil.which("redis-server")
    if binary is None:
        require("redis-server", "not on PATH")
    srv = Server(binary, tmp_path_factory.mktemp("redis-faults"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(signal.SIGKILL)


@pytest.fixture
def fresh(server: Server) -> Iterator[Server]:
    """The server running, empty, without persistence (each test may change that)."""
    server.stop(signal.SIGKILL)
    server.wipe()
    server.start(persist=False)
    yield server
    if server.proc is None:
        server.start()


def _client(srv: Server) -> Any:
    """A client configured as RedisStore.from_url configures its own."""
    return RedisStore.from_url(srv.url).client


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("built").model


@pytest.fixture(scope="module")
def products(model: Any) -> list[str]:
    return sorted(p for p, _, _ in model.builder.catalog.to_rows())[:8]


def _start(tracker: SessionTracker, products: list[str], sid: str = "s") -> None:
    tracker.page_view(sid, products[0], device_type="Desktop", traffic_source="Direct")


# ---- the server goes away and comes back --------------------------------------------------
def test_server_down_is_store_unavailable_and_state_is_kept(fresh: Server, model, products):
    """Down: typed error within seconds for every operation, the stored value untouched.
    Back (kill -9, AOF fsync always): the same tracker reconnects and continues the session."""
    fresh.stop(signal.SIGKILL)
    fresh.wipe()
    fresh.start(persist=True)
    client = _client(fresh)
    tracker = SessionTracker(model, RedisStore(client, prefix="t:"))
    _start(tracker, products)
    tracker.add_to_cart("s", products[1])
    raw_before, ctx_before = client.get("t:s"), tracker.context("s")

    fresh.stop(signal.SIGKILL)
    for event in (
        lambda: tracker.add_to_cart("s", products[2]),
        lambda: tracker.engagement("s", scroll_depth=0.9),
        lambda: tracker.page_view("s", products[3]),
        lambda: tracker.context("s"),
        lambda: tracker.recommend("s"),
    ):
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            event()
        assert time.monotonic() - start < 5  # fails fast: a few quick reconnects
        assert "session store unavailable" in str(info.value)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(StoreUnavailable, match="the event was not applied"):
        tracker.add_to_cart("s", products[2])

    fresh.start()
    assert client.get("t:s") == raw_before  # the failed events left no trace
    assert tracker.context("s") == ctx_before  # same tracker, same client: reconnected
    ctx = tracker.add_to_cart("s", products[2])
    assert ctx[CART_FIELD] == [products[1], products[2]]
    assert ctx["products_viewed_count"] == 1


def test_restart_without_persistence_starts_sessions_again(fresh: Server, model, products):
    """--save "" keeps nothing over a restart: expected, session state is a TTL cache."""
    tracker = SessionTracker(model, RedisStore(_client(fresh), prefix="t:"))
    _start(tracker, products)
    tracker.add_to_cart("s", products[1])
    fresh.stop()
    fresh.start()
    with pytest.raises(SessionNotFound):
        tracker.context("s")
    with pytest.raises(SessionNotFound):
        tracker.add_to_cart("s", products[2])
    ctx = tracker.page_view("s", products[4], device_type="Mobile", traffic_source="Email")
    assert (ctx["products_viewed_count"], ctx["products_in_cart"]) == (1, 0)


# ---- connections dropped ------------------------------------------------------------------
def _kill_clients(admin: Any) -> int:
    return int(admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))


def test_connections_killed_between_events(fresh: Server, model, products):
    admin = _client(fresh)
    tracker = SessionTracker(model, RedisStore(_client(fresh), prefix="t:"))
    _start(tracker, products)
    killed = 0
    for i in range(20):
        killed += _kill_clients(admin)
        ctx = tracker.add_to_cart("s", products[1 + i % 3])
        assert ctx["products_in_cart"] == i + 1
    assert killed >= 19  # the tracker's connection, every time
    assert tracker.context("s")["products_in_cart"] == 20


def _patch_write(
    monkeypatch: pytest.MonkeyPatch, when: str, times: int, meanwhile: Any = None
) -> list[int]:
    """Drop the connection at the store's write (the check-and-set script): before it is
    sent, or after the server applied it (the reply is lost). ``meanwhile()`` runs
    between the applied write and the drop (another replica's update)."""
    real = redis.Redis._send_command_parse_response
    calls = [0]

    def flaky(self, conn, command_name, *args, **options):
        if command_name not in ("EVALSHA", "EVAL"):
            return real(self, conn, command_name, *args, **options)
        calls[0] += 1
        if calls[0] <= times and when == "before":
            raise redis.ConnectionError("connection dropped before the write (injected)")
        result = real(self, conn, command_name, *args, **options)
        if calls[0] <= times:
            if meanwhile is not None:
                meanwhile()
            raise redis.ConnectionError("connection dropped after the write (injected)")
        return result

    monkeypatch.setattr(redis.Redis, "_send_command_parse_response", flaky)
    return calls


def _retrying_client(srv: Server) -> Any:
    """A client whose redis-py resends a command after a dropped connection by itself."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(srv.url, socket_timeout=1.0, retry=Retry(NoBackoff(), 2))


@pytest.mark.parametrize("client_kind", ["from_url", "retrying"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_dropped_write_applies_the_event_exactly_once(
    when: str, client_kind: str, fresh: Server, model, products, monkeypatch
):
    """ "after" is the lost reply: the write applied, the client saw an error. from_url's
    client does not resend (the store's retry re-reads and finds the event's id); a
    client that resends by itself has its resent check-and-set refused, then the same."""
    client = _client(fresh) if client_kind == "from_url" else _retrying_client(fresh)
    tracker = SessionTracker(model, RedisStore(client, prefix="t:"))
    _start(tracker, products)
    calls = _patch_write(monkeypatch, when, times=1)
    ctx = tracker.add_to_cart("s", products[1])
    assert ctx[CART_FIELD] == [products[1]]
    assert calls[0] == (1 if when == "after" and client_kind == "from_url" else 2)
    monkeypatch.undo()
    assert tracker.context("s")[CART_FIELD] == [products[1]]
    ctx = tracker.engagement("s", time_on_page_sec=12.0)
    assert (ctx["products_in_cart"], ctx["time_on_page_sec"]) == (1, 12.0)


def test_lost_reply_does_not_overwrite_another_replicas_update(
    fresh: Server, model, products, monkeypatch
):
    """The write applied, another replica updated the session, then the reply was lost.
    A resent unconditional write (what redis-py does with a MULTI/EXEC after a dropped
    connection, WATCH lost) would erase the other replica's event; both must stay."""
    tracker = SessionTracker(model, RedisStore(_client(fresh), prefix="t:"))
    other = SessionTracker(model, RedisStore(_client(fresh), prefix="t:"))
    _start(tracker, products)

    def other_replica() -> None:
        with monkeypatch.context() as m:  # the other replica's own write is not dropped
            m.setattr(redis.Redis, "_send_command_parse_response", real)
            other.add_to_cart("s", products[2])

    real = redis.Redis._send_command_parse_response
    _patch_write(monkeypatch, "after", times=1, meanwhile=other_replica)
    ctx = tracker.add_to_cart("s", products[1])
    monkeypatch.undo()
    assert ctx["products_in_cart"] >= 1
    assert sorted(tracker.context("s")[CART_FIELD]) == sorted([products[1], products[2]])


def test_lost_reply_then_server_gone_says_the_outcome_is_unknown(
    fresh: Server, model, products, monkeypatch
):
    tracker = SessionTracker(model, RedisStore(_client(fresh), prefix="t:"))
    _start(tracker, products)
    _patch_write(monkeypatch, "after", times=1, meanwhile=lambda: fresh.stop(signal.SIGKILL))
    with pytest.raises(StoreUnavailable, match="may or may not have been applied"):
        tracker.add_to_cart("s", products[1])
    monkeypatch.undo()
    fresh.start()  # without persistence: the session is gone, the store works again
    with pytest.raises(SessionNotFound):
        tracker.context("s")


def test_burst_with_connections_killed_loses_nothing_and_doubles_nothing(
    fresh: Server, model, products
):
    """Two replicas add to one cart while a third client kills every connection every
    few milliseconds. Each acknowledged event is in the cart exactly once."""
    n = 150
    admin = _client(fresh)
    replicas = [
        SessionTracker(model, RedisStore(_client(fresh), prefix="t:", reconnect_retries=5))
        for _ in range(2)
    ]
    _start(replicas[0], products)
    acked = [0, 0]
    unknown = [0, 0]
    errors: list[BaseException] = []
    done = threading.Event()
    kills = [0]

    def shopper(i: int) -> None:
        try:
            for _ in range(n):
                try:
                    replicas[i].add_to_cart("s", products[1 + i])
                    acked[i] += 1
                except StoreUnavailable as exc:
                    if "may or may not" in str(exc):
                        unknown[i] += 1
        except BaseException as exc:
            errors.append(exc)

    def killer() -> None:
        while not done.is_set():
            kills[0] += _kill_clients(admin)
            time.sleep(0.003)

    threads = [threading.Thread(target=shopper, args=(i,)) for i in range(2)]
    k = threading.Thread(target=killer)
    k.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    k.join()
    assert not errors, errors[:3]
    assert kills[0] > 10
    cart = replicas[1].context("s")[CART_FIELD]
    for i in range(2):
        count = cart.count(products[1 + i])
        assert acked[i] <= count <= acked[i] + unknown[i], (i, acked, unknown, count)
        assert acked[i] >= n // 2  # transparently retried: most events succeed


# ---- a server that hangs or is full -------------------------------------------------------
def test_hung_server_fails_every_call_within_the_deadline(fresh: Server, model, products):
    """SIGSTOP: the kernel still accepts connections, nothing answers. Each call used to
    block 8-33 s (redis-py's retries times the socket timeout, times the store's own
    retries); from_url's store bounds the whole call, retries included."""
    store = RedisStore.from_url(fresh.url)  # timeout 1 s: at most about 1.5 s a call
    tracker = SessionTracker(model, store)
    _start(tracker, products)
    assert fresh.proc is not None
    fresh.proc.send_signal(signal.SIGSTOP)
    try:
        for event in (
            lambda: tracker.add_to_cart("s", products[1]),
            lambda: tracker.context("s"),
            lambda: tracker.page_view("s", products[2]),
            lambda: tracker.recommend("s"),
        ):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match="session store unavailable"):
                event()
            assert time.monotonic() - start < 1.5 * store.timeout + 0.3
    finally:
        fresh.proc.send_signal(signal.SIGCONT)
    ctx = tracker.add_to_cart("s", products[3])  # the same store works again
    assert products[3] in ctx[CART_FIELD]


def test_server_at_maxmemory_is_store_unavailable(fresh: Server, model, products):
    """A write refused for memory used to escape as redis-py's OutOfMemoryError (an HTTP
    500 in examples/service.py); nothing is applied, reads keep working."""
    admin = _client(fresh)
    tracker = SessionTracker(model, RedisStore(_client(fresh), prefix="t:"))
    _start(tracker, products)
    before = tracker.context("s")
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    try:
        with pytest.raises(StoreUnavailable, match="maxmemory") as info:
            tracker.add_to_cart("s", products[1])
        assert "was not applied" in str(info.value)
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            tracker.page_view("other", products[0], device_type="Desktop", traffic_source="Direct")
        assert tracker.context("s") == before
    finally:
        admin.config_set("maxmemory", 0)
    assert tracker.add_to_cart("s", products[1])["products_in_cart"] == 1
