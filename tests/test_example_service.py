"""examples/service.py driven through a real HTTP client (FastAPI's TestClient, on httpx)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    # Starlette 1.x suggests httpx2 for its TestClient; httpx (the test extra) works the same.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from reco_fast import MemoryStore, RedisStore, StoreUnavailable
from tests.helpers import REPO, subprocess_env

SERVICE = REPO / "examples" / "service.py"


@pytest.fixture(scope="module")
def service() -> Any:
    """examples/service.py imported from its file, as uvicorn would import it."""
    spec = importlib.util.spec_from_file_location("reco_fast_example_service", SERVICE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def built_model(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("built")


@pytest.fixture(scope="module")
def catalog(built_model: Any) -> dict[str, tuple[str, float]]:
    return {p: (c, float(pr)) for p, c, pr in built_model.model.builder.catalog.to_rows()}


@pytest.fixture
def client(service: Any, built_model: Any) -> Any:
    with TestClient(service.create_app(model_path=built_model.path)) as c:
        yield c


def by_category(catalog: dict[str, tuple[str, float]], category: str) -> list[str]:
    return sorted((p for p, (c, _) in catalog.items() if c == category), key=lambda p: catalog[p])


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def test_the_seeds_story_over_http(client, catalog, built_model):
    model = built_model.model
    sports = by_category(catalog, "Sports")
    boots, tent, bag = sports[len(sports) // 2], sports[-1], sports[-2]
    base = "/sessions/shopper"

    def recs(**params: Any) -> list[dict[str, Any]]:
        out = ok(client.get(f"{base}/recommendations", params=params))
        # exactly what the library answers for the session the service holds
        ctx = ok(client.get(base))
        expected = model.recommend(ctx, params.get("k", 3), params.get("threshold"))
        assert out == [
            {"product_id": r.product_id, "probability": r.probability, "reason": r.reason}
            for r in expected
        ]
        return out

    ctx = ok(
        client.post(
            f"{base}/page_view",
            json={"product_id": boots, "device_type": "Desktop", "traffic_source": "Organic"},
        )
    )
    assert (ctx["current_product_id"], ctx["current_category"]) == (boots, "Sports")
    assert ctx["current_price"] == catalog[boots][1]
    landed = recs(k=5, threshold=0.0)
    assert [catalog[r["product_id"]][0] for r in landed] == ["Sports"] * 5
    assert recs() == []  # k=3 at the artifact's 0.7: nothing is confident yet

    ok(
        client.post(
            f"{base}/engagement",
            json={"time_on_page_sec": 95, "scroll_depth": 0.85, "clicked_product_image": True},
        )
    )
    engaged = recs(k=5, threshold=0.0)
    assert engaged[0]["probability"] > landed[0]["probability"]
    confident = recs(k=3, threshold=0.7)
    assert 1 <= len(confident) <= 3
    assert all(r["probability"] >= 0.7 for r in confident)

    ok(client.post(f"{base}/page_view", json={"product_id": tent}))
    ctx = ok(client.post(f"{base}/cart", json={"product_id": tent}))
    assert (ctx["products_in_cart"], ctx["prev_product_1"]) == (1, boots)
    ok(client.post(f"{base}/page_view", json={"product_id": bag}))
    ok(client.post(f"{base}/engagement", json={"time_on_page_sec": 80, "scroll_depth": 0.9}))
    browsing = recs(k=5, threshold=0.0)
    assert [catalog[r["product_id"]][0] for r in browsing] == ["Sports"] * 5
    assert not {boots, tent, bag} & {r["product_id"] for r in browsing}

    electronics = by_category(catalog, "Electronics")
    ok(client.post(f"{base}/page_view", json={"product_id": electronics[len(electronics) // 2]}))
    ok(client.post(f"{base}/engagement", json={"time_on_page_sec": 80, "scroll_depth": 0.9}))
    moved = recs(k=5, threshold=0.0)
    assert [catalog[r["product_id"]][0] for r in moved] == ["Electronics"] * 5

    ctx = ok(client.delete(f"{base}/cart/{tent}"))
    assert (ctx["products_in_cart"], ctx["cart_product_ids"]) == (0, [])
    assert ok(client.get(base))["products_viewed_count"] == 4


@pytest.mark.parametrize(
    "method, path, body, status, mentions",
    [
        ("get", "/sessions/nobody", None, 404, "nobody"),
        ("get", "/sessions/nobody/recommendations", None, 404, "nobody"),
        ("post", "/sessions/nobody/engagement", {"scroll_depth": 0.5}, 404, "nobody"),
        ("post", "/sessions/nobody/cart", {"product_id": "{p}"}, 404, "nobody"),
        ("delete", "/sessions/nobody/cart/{p}", None, 404, "nobody"),
        ("post", "/sessions/new/page_view", {"product_id": "{p}"}, 422, "device_type"),
        ("post", "/sessions/s/page_view", {"product_id": "NOPE"}, 422, "NOPE"),
        (
            "post",
            "/sessions/s/page_view",
            {"product_id": "{p}", "device_type": "Mobile"},
            422,
            "device",
        ),
        ("post", "/sessions/s/engagement", {"scroll_depth": 1.5}, 422, "scroll_depth"),
        ("post", "/sessions/s/engagement", {"time_on_page_sec": -3}, 422, "time_on_page_sec"),
        ("post", "/sessions/s/engagement", {"clicked_product_image": 2}, 422, "clicked"),
        ("post", "/sessions/s/engagement", {"scroll": 0.5}, 422, ""),  # unknown field
        ("post", "/sessions/s/cart", {"product_id": "NOPE"}, 422, "NOPE"),
        ("post", "/sessions/s/cart", {}, 422, ""),
        ("delete", "/sessions/s/cart/{p}", None, 422, "not in the cart"),
        ("get", "/sessions/s/recommendations?k=-1", None, 422, "k must be"),
        ("get", "/sessions/s/recommendations?k=many", None, 422, ""),
        ("get", "/sessions/s/recommendations?threshold=2", None, 422, "threshold"),
    ],
)
def test_error_codes(client, catalog, method, path, body, status, mentions):
    p = sorted(catalog)[0]
    ok(
        client.post(
            "/sessions/s/page_view",
            json={"product_id": p, "device_type": "Desktop", "traffic_source": "Direct"},
        )
    )
    before = ok(client.get("/sessions/s"))
    path = path.replace("{p}", p)
    if body is not None:
        body = {k: v.replace("{p}", p) if isinstance(v, str) else v for k, v in body.items()}
    response = client.request(method.upper(), path, json=body)
    assert response.status_code == status, response.text
    assert mentions in response.text
    assert ok(client.get("/sessions/s")) == before  # a refused request changed nothing
    assert client.get("/sessions/new").status_code == 404


class DownStore:
    """A session store whose backend is unreachable."""

    ttl = 60.0

    def get(self, session_id: str) -> Any:
        raise StoreUnavailable("session store unavailable: connection refused")

    def update(self, session_id: str, fn: Any) -> Any:
        raise StoreUnavailable("session store unavailable: connection refused")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["fake", "redis"])
def test_store_unavailable_is_503(service, built_model, catalog, kind):
    if kind == "redis":
        pytest.importorskip("redis")
        store = RedisStore.from_url(f"redis://127.0.0.1:{_closed_port()}/0")
    else:
        store = DownStore()
    p = sorted(catalog)[0]
    with TestClient(service.create_app(model_path=built_model.path, store=store)) as client:
        r = client.post(
            "/sessions/s/page_view",
            json={"product_id": p, "device_type": "Desktop", "traffic_source": "Direct"},
        )
        assert r.status_code == 503, r.text
        assert "unavailable" in r.json()["detail"]
        assert client.get("/sessions/s").status_code == 503
        assert client.get("/sessions/s/recommendations").status_code == 503
        # bad input is still a 422: it is refused before the store is asked
        r = client.post("/sessions/s/page_view", json={"product_id": "NOPE"})
        assert r.status_code == 422


def test_configuration_from_the_environment(service, built_model, monkeypatch):
    monkeypatch.setenv("RECO_MODEL", str(built_model.path))
    monkeypatch.delenv("RECO_REDIS_URL", raising=False)
    app = service.create_app()
    assert app.state.model.path == Path(built_model.path).resolve()
    assert isinstance(app.state.tracker.store, MemoryStore)

    pytest.importorskip("redis")
    monkeypatch.setenv("RECO_REDIS_URL", "redis://127.0.0.1:6390/3")  # connects lazily
    store = service.create_app().state.tracker.store
    assert isinstance(store, RedisStore)
    assert store.client.connection_pool.connection_kwargs["db"] == 3

    monkeypatch.setenv("RECO_MODEL", str(Path(built_model.path) / "missing"))
    with pytest.raises(Exception, match="missing"):
        service.create_app()


def test_a_model_that_cannot_rank_is_refused_at_startup(service, request):
    seed = request.getfixturevalue("seed_built")
    with pytest.raises(ValueError, match="cannot rank products"):
        service.create_app(model_path=seed.path)


# ---- what the service reads and echoes is bounded --------------------------------------------
def test_a_large_body_is_refused_unread(client, service):
    """A 5 MB body used to be parsed whole and echoed whole in the 422 response."""
    body = b'{"scroll_depth": 0.5, "note": "' + b"y" * 5_000_000 + b'"}'
    r = client.post(
        "/sessions/s/engagement", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text[:300]
    assert len(r.content) < 300
    assert str(service.MAX_BODY_BYTES) in r.json()["detail"]


def test_a_large_chunked_body_is_refused(client):
    """No Content-Length: counted as it arrives."""

    def chunks():
        yield b'{"product_id": "'
        for _ in range(100):
            yield b"z" * 10_000
        yield b'"}'

    r = client.post(
        "/sessions/s/cart", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text[:300]
    assert len(r.content) < 300


def test_validation_errors_echo_bounded_input(client):
    r = client.post("/sessions/s/engagement", json={"scroll": "y" * 60_000})
    assert r.status_code == 422
    assert len(r.content) < 1000, r.text[:300]
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["body", "scroll"]
    r = client.post("/sessions/s/page_view", json={"product_id": "P" * 60_000})
    assert r.status_code == 422  # not in the catalog: the library's message, bounded
    assert len(r.content) < 500, r.text[:300]


# ---- /health and the documented command ------------------------------------------------------


def test_health_names_the_serving_artifact(client, built_model):
    digest = hashlib.sha256((Path(built_model.path) / "metadata.json").read_bytes()).hexdigest()
    assert ok(client.get("/health")) == {"status": "ok", "model_id": digest}


def test_the_service_extra_installs_what_the_documented_command_needs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPO / "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0] for r in extras["service"]}
    assert {"fastapi", "uvicorn"} <= names
    assert any(r.startswith("reco_fast[") and "service" in r for r in extras["dev"])


def test_the_documented_command_serves(built_model):
    """`RECO_MODEL=artifacts/reco_model uvicorn examples.service:create_app --factory`,
    run from the repository's root (on a free loopback port), answers /health."""
    uvicorn = shutil.which("uvicorn")
    if uvicorn is None:
        pytest.skip("uvicorn is not installed (pip install -e '.[service]')")
    port = _closed_port()
    env = {**subprocess_env(), "RECO_MODEL": str(built_model.path)}
    cmd = [uvicorn, "examples.service:create_app", "--factory", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        while True:
            try:
                with direct.open(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "uvicorn did not answer within 60 s"
                time.sleep(0.2)
        metadata = (Path(built_model.path) / "metadata.json").read_bytes()
        assert body == {"status": "ok", "model_id": hashlib.sha256(metadata).hexdigest()}
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# ---- the impression log, clicks and A/B variants ---------------------------------------------
def _sha(artifact: Path) -> str:
    return hashlib.sha256((Path(artifact) / "metadata.json").read_bytes()).hexdigest()


def _start(client: Any, sid: str, product: str) -> None:
    body = {"product_id": product, "device_type": "Desktop", "traffic_source": "Direct"}
    ok(client.post(f"/sessions/{sid}/page_view", json=body))


def test_a_click_over_http_joins_the_impression_it_came_from(
    service, built_model, catalog, tmp_path
):
    from reco_fast.serve.impressions import read_log

    log_dir = tmp_path / "impressions"
    app = service.create_app(model_path=built_model.path, impressions=log_dir)
    with TestClient(app) as client:
        _start(client, "shopper", sorted(catalog)[5])
        r = client.get("/sessions/shopper/recommendations?k=3&threshold=0")
        recs = [x["product_id"] for x in ok(r)]
        assert len(recs) == 3
        rid = r.headers["X-Request-Id"]
        assert r.headers["X-Variant"] == "default"
        assert r.headers["X-Model-Id"] == _sha(built_model.path)
        click = {"session_id": "shopper", "product_id": recs[1]}
        assert client.post("/click", json=click).status_code == 202
        buy = {"session_id": "shopper", "product_id": recs[0]}
        assert client.post("/purchase", json=buy).status_code == 202
        for bad in ({"session_id": "", "product_id": "x"}, {**click, "extra": 1}, {}):
            assert client.post("/click", json=bad).status_code == 422
        assert ok(client.get("/variants")) == {
            "default": {"model_id": _sha(built_model.path), "share": 1.0}
        }
    imp, clicked, bought = read_log(log_dir).records  # the app's shutdown closed the log
    assert imp["request_id"] == rid and imp["session_id"] == "shopper"
    assert [s["product_id"] for s in imp["shown"]] == recs
    assert (clicked["type"], clicked["request_id"], clicked["position"]) == ("click", rid, 1)
    assert (bought["type"], bought["request_id"], bought["position"]) == ("purchase", rid, 0)


def test_without_a_log_a_click_is_refused(client, catalog):
    _start(client, "s", sorted(catalog)[0])
    r = client.get("/sessions/s/recommendations?threshold=0")
    assert r.status_code == 200 and "X-Request-Id" not in r.headers
    r = client.post("/click", json={"session_id": "s", "product_id": "PROD0001"})
    assert r.status_code == 409 and "RECO_IMPRESSIONS" in r.json()["detail"]


def test_ab_variants_over_http(service, built_model, catalog, tmp_path, monkeypatch):
    """Two variants (the same model under two artifact ids): each session keeps its variant,
    the response names it and its artifact, clicks join, ab-report sees both."""
    from reco_fast.serve.ab import ab_report, bucket
    from reco_fast.serve.impressions import read_log

    other = tmp_path / "other"
    shutil.copytree(built_model.path, other)
    meta = json.loads((other / "metadata.json").read_text())
    (other / "metadata.json").write_text(json.dumps(meta, indent=1))  # other bytes, other id
    ids = {"a": _sha(built_model.path), "b": _sha(other)}
    assert ids["a"] != ids["b"]
    log_dir = tmp_path / "impressions"
    monkeypatch.setenv("RECO_VARIANTS", f"a={built_model.path},b={other}")
    monkeypatch.setenv("RECO_SPLIT", "a=0.5,b=0.5")
    monkeypatch.setenv("RECO_IMPRESSIONS", str(log_dir))
    seen: dict[str, str] = {}
    with TestClient(service.create_app()) as client:
        health = ok(client.get("/health"))
        assert health["model_id"] == ids["a"]
        assert health["variants"] == {n: {"model_id": ids[n], "share": 0.5} for n in "ab"}
        assert ok(client.get("/variants")) == health["variants"]
        products = sorted(catalog)
        for i in range(24):
            sid = f"ab-{i}"
            _start(client, sid, products[i])
            for _ in range(2):  # a session keeps its variant
                r = client.get(f"/sessions/{sid}/recommendations?k=2&threshold=0")
                variant = r.headers["X-Variant"]
                assert variant == ("a" if bucket(sid) < 0.5 else "b")
                assert r.headers["X-Model-Id"] == ids[variant]
                seen[sid] = variant
            click = {"session_id": sid, "product_id": ok(r)[0]["product_id"]}
            assert client.post("/click", json=click).status_code == 202
    assert set(seen.values()) == {"a", "b"}
    records = read_log(log_dir).records
    clicks = [r for r in records if r["type"] == "click"]
    assert len(clicks) == 24
    assert all(c["variant"] == seen[c["session_id"]] and c["position"] == 0 for c in clicks)
    report = ab_report(log_dir)
    assert sorted(report["variants"]) == ["a", "b"]
    assert sum(v["requests"] for v in report["variants"].values()) == 48


def test_ab_configuration_is_checked(service, built_model, tmp_path, monkeypatch):
    for name in ("RECO_VARIANTS", "RECO_SPLIT", "RECO_IMPRESSIONS", "RECO_MODEL"):
        monkeypatch.delenv(name, raising=False)
    path = str(built_model.path)
    with pytest.raises(ValueError, match="needs an impression log"):
        service.create_app(variants={"a": path})
    with pytest.raises(ValueError, match="RECO_SPLIT goes with RECO_VARIANTS"):
        service.create_app(model_path=path, split={"a": 1.0})
    monkeypatch.setenv("RECO_IMPRESSIONS", str(tmp_path / "log"))
    for variants, split, problem in [
        ("a", None, "RECO_VARIANTS must be name=value pairs"),
        (f"a={path},a={path}", None, "each name once"),
        (f"a={path},b={path}", "a=half,b=0.5", "RECO_SPLIT shares must be numbers"),
        (f"a={path},b={path}", "a=0.7,b=0.5", "split shares must sum to 1"),
        (f"a={path},b={path}", "a=1.0", "split must give a share for exactly the variants"),
    ]:
        monkeypatch.setenv("RECO_VARIANTS", variants)
        if split is None:
            monkeypatch.delenv("RECO_SPLIT", raising=False)
        else:
            monkeypatch.setenv("RECO_SPLIT", split)
        with pytest.raises(ValueError, match=problem):
            service.create_app()
