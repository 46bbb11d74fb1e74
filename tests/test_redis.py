"""SessionTracker on RedisStore, against a real redis-server.

Uses ``REDIS_URL`` when it is set (CI starts a server and sets it); otherwise
starts a throwaway ``redis-server`` on a free loopback port. Without either,
the tests are skipped, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from reco_fast import InputError, RedisStore, SessionNotFound, SessionTracker, StoreUnavailable
from reco_fast.serve.recommend import CART_FIELD
from tests.helpers import require

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.redis


def _unavailable(reason: str) -> None:
    require("Redis", reason)


def _ping(url: str, timeout: float) -> str | None:
    """None when a server answers at url within timeout seconds, else the last error."""
    deadline = time.monotonic() + timeout
    error = "no answer"
    while True:
        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            client.ping()
            return None
        except redis.RedisError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        if time.monotonic() > deadline:
            return error
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        error = _ping(url, timeout=2.0)
        if error:
            _unavailable(f"REDIS_URL={url} does not answer: {error}")
        yield url
        return
    server = shutil.which("redis-server")
    if server is None:
        _unavailable("REDIS_URL is not set and redis-server is not on PATH")
    workdir = tmp_path_factory.mktemp("redis")
    error = "not started"
    for _ in range(3):  # another process may take the free port first
        port = _free_port()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(
            [server, *args, "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        error = _ping(url, timeout=5.0)
        if error is None and proc.poll() is None:
            break
        proc.kill()
        proc.wait()
    else:
        _unavailable(f"could not start {server}: {error}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client(url: str) -> Any:
    return redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)


def _client_like(client: Any) -> Any:
    """A new client (its own connection pool) to the same server."""
    kw = client.connection_pool.connection_kwargs
    return redis.Redis(host=kw["host"], port=kw["port"], db=kw.get("db", 0))


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    c = _client(redis_url)
    yield c
    c.close()


@pytest.fixture
def prefix(client: Any) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    p = f"reco_fast_test:{uuid.uuid4().hex}:"
    yield p
    keys = list(client.scan_iter(match=p + "*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("built").model


@pytest.fixture(scope="module")
def products(model: Any) -> list[str]:
    return sorted(p for p, _, _ in model.builder.catalog.to_rows())[:8]


def _stream(products: list[str]) -> list[tuple[str, tuple, dict]]:
    """Two interleaved sessions with some of everything, including rejected events."""
    a, b = "alpha", "beta"
    p = products
    return [
        ("page_view", (a, p[0]), {"device_type": "Mobile", "traffic_source": "Social", "ts": 10}),
        ("page_view", (b, p[1]), {"device_type": "Desktop", "traffic_source": "Direct", "ts": 11}),
        ("engagement", (a,), {"time_on_page_sec": 33.5, "scroll_depth": 0.45, "ts": 40}),
        ("engagement", (a,), {"time_on_page_sec": 20, "clicked_product_image": 1, "ts": 41}),
        ("add_to_cart", (a, p[2]), {"ts": 50}),
        ("add_to_cart", (b, p[3]), {"ts": 52}),
        ("page_view", (a, p[4]), {"customer_id": "C42", "ts": 90}),
        ("engagement", (a,), {"scroll_depth": 1.5, "ts": 91}),  # rejected
        ("page_view", (a, p[5]), {"ts": 80}),  # rejected: out of order
        ("add_to_cart", (a, p[2]), {"ts": 100}),
        ("remove_from_cart", (a, p[2]), {"ts": 130}),
        ("remove_from_cart", (b, p[2]), {"ts": 131}),  # rejected: not in the cart
        ("page_view", (b, p[6]), {"device_type": "Tablet", "ts": 140}),  # rejected
        ("page_view", (a, p[5]), {"ts": 200.25}),
        ("engagement", (b,), {"time_on_page_sec": 75, "scroll_depth": 0.8, "ts": 300}),
        ("engagement", ("nobody",), {"scroll_depth": 0.2, "ts": 300}),  # rejected: unknown
        ("page_view", (b, p[7]), {"ts": 400}),
    ]


def _replay(tracker: SessionTracker, stream) -> list[Any]:
    out = []
    for method, args, kwargs in stream:
        try:
            out.append(getattr(tracker, method)(*args, **kwargs))
        except InputError as exc:
            out.append((type(exc).__name__, str(exc), exc.field))
        out.append(tracker.context(args[0]) if args[0] != "nobody" else None)
    return out


def test_same_contexts_as_the_memory_store(model, client, prefix, products):
    stream = _stream(products)
    memory = SessionTracker(model)
    tracker = SessionTracker(model, RedisStore(client, prefix=prefix))
    in_memory, in_redis = _replay(memory, stream), _replay(tracker, stream)
    assert in_redis == in_memory
    assert sum(isinstance(x, tuple) for x in in_redis) == 5  # the rejected events
    assert sorted(client.scan_iter(match=prefix + "*")) == [
        (prefix + "alpha").encode(),
        (prefix + "beta").encode(),
    ]
    # and so are the recommendations, also from a fresh tracker (another replica)
    replica = SessionTracker(model, RedisStore(_client_like(client), prefix=prefix))
    for sid in ("alpha", "beta"):
        expected = memory.recommend(sid, k=5, threshold=0.0)
        assert len(expected) == 5
        assert tracker.recommend(sid, k=5, threshold=0.0) == expected
        assert replica.recommend(sid, k=5, threshold=0.0) == expected


def test_state_expires_with_the_ttl(model, client, prefix, products):
    tracker = SessionTracker(model, RedisStore(client, ttl=1, prefix=prefix))
    assert tracker.ttl == 1
    key = prefix + "s"
    tracker.page_view("s", products[0], device_type="Desktop", traffic_source="Direct")
    assert 0 < client.pttl(key) <= 1000
    time.sleep(0.4)
    tracker.add_to_cart("s", products[1])  # every event renews the TTL
    assert 600 < client.pttl(key) <= 1000
    assert tracker.context("s")["products_in_cart"] == 1
    time.sleep(1.2)
    assert client.exists(key) == 0
    with pytest.raises(SessionNotFound):
        tracker.context("s")
    with pytest.raises(SessionNotFound):
        tracker.engagement("s", scroll_depth=0.5)
    assert client.exists(key) == 0
    ctx = tracker.page_view("s", products[2], device_type="Mobile", traffic_source="Email")
    assert (ctx["products_viewed_count"], ctx["products_in_cart"]) == (1, 0)
    assert 0 < client.pttl(key) <= 1000


def test_two_replicas_updating_one_session_lose_nothing(model, redis_url, prefix, products):
    clients = [_client(redis_url), _client(redis_url)]  # two processes' own connections
    replicas = [SessionTracker(model, RedisStore(c, prefix=prefix)) for c in clients]
    replicas[0].page_view("s", products[0], device_type="Desktop", traffic_source="Direct")
    n = 200
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def shopper(tracker: SessionTracker, item: str) -> None:
        barrier.wait()
        try:
            for i in range(n):
                tracker.add_to_cart("s", item)
                if i % 20 == 0:
                    tracker.engagement("s", scroll_depth=0.5)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=shopper, args=(replicas[0], products[1])),
        threading.Thread(target=shopper, args=(replicas[1], products[2])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    assert not errors, errors[:3]
    ctx = replicas[0].context("s")
    assert ctx["products_in_cart"] == 2 * n
    assert sorted(ctx[CART_FIELD]) == [products[1]] * n + [products[2]] * n
    assert ctx["products_viewed_count"] == 1


@pytest.mark.parametrize(
    "event",
    [
        lambda t, p: t.engagement("s", scroll_depth=1.5),
        lambda t, p: t.engagement("s", clicked_product_image=2),
        lambda t, p: t.add_to_cart("s", "NO-SUCH-PRODUCT"),
        lambda t, p: t.remove_from_cart("s", p[7]),
        lambda t, p: t.page_view("s", p[3], device_type="Mobile"),
        lambda t, p: t.page_view("s", p[3], ts=1.0),
    ],
    ids=["scroll", "clicked", "unknown product", "not in cart", "device", "out of order"],
)
def test_rejected_event_leaves_the_stored_value_unchanged(event, model, client, prefix, products):
    tracker = SessionTracker(model, RedisStore(client, prefix=prefix))
    tracker.page_view("s", products[0], device_type="Desktop", traffic_source="Direct")
    tracker.add_to_cart("s", products[1])
    raw, before = client.get(prefix + "s"), tracker.context("s")
    with pytest.raises(InputError):
        event(tracker, products)
    assert client.get(prefix + "s") == raw
    assert tracker.context("s") == before
    with pytest.raises(SessionNotFound):
        tracker.add_to_cart("other", products[1])
    assert client.exists(prefix + "other") == 0


def test_unreachable_redis_is_store_unavailable(model, products):
    store = RedisStore.from_url(f"redis://127.0.0.1:{_free_port()}/0")
    tracker = SessionTracker(model, store)
    with pytest.raises(StoreUnavailable):
        tracker.page_view("s", products[0], device_type="Desktop", traffic_source="Direct")
    with pytest.raises(StoreUnavailable):
        tracker.context("s")
    # a bad event is still refused as bad input, before the store is asked
    with pytest.raises(InputError):
        tracker.engagement("s", scroll_depth=2.0)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'"a string"', b"{}", b'{"session_id": "s"}'],
    ids=["not-json", "not-utf8", "a-list", "a-string", "empty-object", "missing-fields"],
)
def test_corrupt_session_value_is_a_clear_session_not_found(model, client, prefix, products, raw):
    """A value that is not a session's JSON used to raise a raw JSONDecodeError (or a
    KeyError): it is a corrupt session, treated as gone, and a page view replaces it."""
    tracker = SessionTracker(model, RedisStore(client, prefix=prefix))
    client.set(prefix + "s", raw)
    for event in (
        lambda: tracker.context("s"),
        lambda: tracker.recommend("s"),
        lambda: tracker.engagement("s", scroll_depth=0.5),
        lambda: tracker.add_to_cart("s", products[1]),
    ):
        with pytest.raises(SessionNotFound, match="'s' has a corrupt value") as info:
            event()
        assert info.value.field == "session_id"
    assert client.get(prefix + "s") == raw  # refused events wrote nothing
    ctx = tracker.page_view("s", products[0], device_type="Desktop", traffic_source="Direct")
    assert (ctx["products_viewed_count"], ctx["products_in_cart"]) == (1, 0)
    assert tracker.context("s") == ctx


def test_lone_surrogate_session_id_is_input_error_with_redis(model, client, prefix, products):
    """redis-py raised UnicodeEncodeError encoding the key."""
    tracker = SessionTracker(model, RedisStore(client, prefix=prefix))
    with pytest.raises(InputError, match="lone surrogate"):
        tracker.page_view("s\udc80", products[0], device_type="Desktop", traffic_source="Direct")
    with pytest.raises(InputError, match="lone surrogate"):
        tracker.context("s\udc80")
    assert list(client.scan_iter(match=prefix + "*")) == []


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"timeout": float("inf")}, "timeout"),
        ({"idempotency_window": -1}, "idempotency_window"),
        ({"max_retries": 0.5}, "max_retries"),
    ],
)
def test_redis_store_bad_arguments_are_value_errors(client, kwargs, name):
    with pytest.raises(ValueError, match=name):
        RedisStore(client, **kwargs)
