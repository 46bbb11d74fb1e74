"""A small recommendation service: live session events in, top-k products out.

It uses reco_fast the way any service would: load the artifact once, share one
SessionTracker between request threads, and turn reco_fast's exceptions into
HTTP status codes (InputError -> 422, SessionNotFound -> 404,
StoreUnavailable -> 503). A request body over MAX_BODY_BYTES (64 KiB) is refused
with 413 before it is parsed, and no error response echoes more than a bounded
part of the request.

Configuration (environment):
    RECO_MODEL       artifact directory (default: artifacts/reco_model)
    RECO_REDIS_URL   keep sessions in Redis (e.g. redis://localhost:6379/0), so
                     several replicas behind a load balancer share them;
                     unset: in this process's memory
    RECO_IMPRESSIONS impression log directory: every recommendation is logged there
                     (reco_fast.serve.impressions, rotating JSONL) and POST /click and
                     POST /purchase are joined to the impression that showed the
                     product; unset: nothing is logged and /click answers 409
    RECO_VARIANTS    an A/B test instead of RECO_MODEL: name=ARTIFACT,name=ARTIFACT,...
                     served to a stable hash split of session ids (a session keeps its
                     variant); needs RECO_IMPRESSIONS; the variants share one catalog
    RECO_SPLIT       the variants' shares, name=0.5,name=0.5 (default: equal)

Run from the repository's root (``pip install -e '.[service]'`` installs FastAPI
and uvicorn; build the model first with ``python build_model.py``):
    RECO_MODEL=artifacts/reco_model uvicorn examples.service:create_app --factory --port 8000

    curl localhost:8000/health    # {"status": "ok", "model_id": "<sha256 of metadata.json>"}

    curl -X POST localhost:8000/sessions/s1/page_view -H 'content-type: application/json' \
        -d '{"product_id": "PROD0007", "device_type": "Desktop", "traffic_source": "Organic"}'
    curl -X POST localhost:8000/sessions/s1/engagement -H 'content-type: application/json' \
        -d '{"time_on_page_sec": 95, "scroll_depth": 0.85, "clicked_product_image": true}'
    curl -X POST localhost:8000/sessions/s1/cart -H 'content-type: application/json' \
        -d '{"product_id": "PROD0054"}'
    curl 'localhost:8000/sessions/s1/recommendations?k=3&threshold=0.7'

With RECO_IMPRESSIONS set, a recommendations response carries the impression's
``X-Request-Id``, ``X-Variant`` and ``X-Model-Id`` headers, and the shop reports what
the shopper clicked or bought among the products shown:

    curl -X POST localhost:8000/click -H 'content-type: application/json' \
        -d '{"session_id": "s1", "product_id": "PROD0107"}'     # 202: joined by the log
    curl localhost:8000/variants    # {"default": {"model_id": ..., "share": 1.0}}

``reco-fast ab-report DIR`` then gives each variant's CTR. Event times are the
server's clock when the event arrives.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

import reco_fast
from reco_fast import InputError, RedisStore, SessionNotFound, SessionTracker, StoreUnavailable
from reco_fast.errors import shown
from reco_fast.serve.ab import ABRouter
from reco_fast.serve.impressions import ImpressionLog, artifact_id

DEFAULT_MODEL = Path("artifacts") / "reco_model"
MAX_BODY_BYTES = 64 * 1024
"""Largest request body read; events are a few hundred bytes."""
MAX_REPORTED_ERRORS = 10


class PageView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: str
    customer_id: str | None = None
    device_type: str | None = None  # required on a session's first page view
    traffic_source: str | None = None  # likewise


class Engagement(BaseModel):
    """Signals for the page on screen; time and scroll only grow within a page.

    For a model that routes missing values (HistGradientBoosting, XGBoost, LightGBM),
    a signal the client could not measure is sent as ``NaN`` (the JSON token, or the
    string ``"NaN"``) and shown as ``null`` in the session; other models answer 422.
    """

    model_config = ConfigDict(extra="forbid")

    time_on_page_sec: float | None = None
    scroll_depth: float | None = None
    clicked_product_image: bool | int | float | None = None  # float: NaN (missing)


class CartItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: str


Id = Annotated[str, Field(min_length=1, max_length=512)]


class Outcome(BaseModel):
    """A click on (or purchase of) a product the session was shown."""

    model_config = ConfigDict(extra="forbid")

    session_id: Id
    product_id: Id


class RecommendationOut(BaseModel):
    product_id: str
    probability: float
    reason: str


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413, unread.

    A declared Content-Length is checked before anything is read; a chunked body is
    counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = JSONResponse(status_code=413, content={"detail": self._message()})
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body too large: at most {self.max_bytes} bytes"


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a malformed request, with every echoed input bounded."""
    errors = exc.errors()
    detail: list[dict[str, Any]] = []
    for e in errors[:MAX_REPORTED_ERRORS]:
        item: dict[str, Any] = {
            "type": str(e.get("type", ""))[:80],
            "loc": [x if isinstance(x, int) else str(x)[:80] for x in e.get("loc", ())][:10],
            "msg": str(e.get("msg", ""))[:200],
        }
        if "input" in e:
            item["input"] = shown(e["input"])
        detail.append(item)
    if len(errors) > MAX_REPORTED_ERRORS:
        detail.append({"msg": f"... and {len(errors) - MAX_REPORTED_ERRORS} more errors"})
    return JSONResponse(status_code=422, content={"detail": detail})


def _no_nan(context: dict[str, Any]) -> dict[str, Any]:
    """A session context for a JSON response: a missing value (NaN) becomes null
    (JSON has no NaN; FastAPI would fail to encode it)."""
    return {k: None if isinstance(v, float) and v != v else v for k, v in context.items()}


def _error(status: int) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        field = getattr(exc, "field", None)
        if field is not None:
            body["field"] = field
        return JSONResponse(status_code=status, content=body)

    return handler


def model_id(model: Any) -> str:
    """The serving artifact's id: the sha256 of its ``metadata.json``.

    metadata.json lists the sha256 of every other file of the artifact (library,
    catalog, report...) and its build time, so this one digest names the whole
    artifact; ``sha256sum artifacts/reco_model/metadata.json`` gives the same value,
    and so do ``ModelHandle.model_id`` and the ``model_id`` of every impression record
    (:func:`reco_fast.serve.impressions.artifact_id`). The file is re-read, so it is
    checked to be the metadata the model was loaded with (a rebuild may have replaced
    the directory since: ArtifactError).
    """
    return artifact_id(model)


def parse_pairs(text: str, name: str) -> dict[str, str]:
    """``a=x,b=y`` -> {"a": "x", "b": "y"} (RECO_VARIANTS, RECO_SPLIT); ValueError naming ``name``."""
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip() or not value.strip() or key.strip() in out:
            raise ValueError(
                f"{name} must be name=value pairs separated by commas, each name once; "
                f"got {shown(text)}"
            )
        out[key.strip()] = value.strip()
    return out


def _shares(split: Mapping[str, Any] | None) -> dict[str, float] | None:
    if split is None:
        return None
    try:
        return {k: float(v) for k, v in split.items()}
    except (TypeError, ValueError):
        raise ValueError(f"RECO_SPLIT shares must be numbers, got {shown(dict(split))}") from None


def create_app(
    model_path: str | os.PathLike[str] | None = None,
    store: Any = None,
    *,
    impressions: str | os.PathLike[str] | ImpressionLog | None = None,
    variants: Mapping[str, str | os.PathLike[str]] | None = None,
    split: Mapping[str, float] | None = None,
) -> FastAPI:
    """Build the app. Arguments override RECO_MODEL, RECO_REDIS_URL, RECO_IMPRESSIONS,
    RECO_VARIANTS and RECO_SPLIT.

    ``impressions``: a log directory (closed with the app) or an ImpressionLog (the
    caller closes it). ``variants``: name -> artifact, served by an A/B split
    (``split``: name -> share, default equal), instead of ``model_path``.
    """
    env = os.environ
    if variants is None and env.get("RECO_VARIANTS"):
        variants = parse_pairs(env["RECO_VARIANTS"], "RECO_VARIANTS")
    if split is None and env.get("RECO_SPLIT"):
        split = _shares(parse_pairs(env["RECO_SPLIT"], "RECO_SPLIT"))
    if impressions is None and env.get("RECO_IMPRESSIONS"):
        impressions = env["RECO_IMPRESSIONS"]
    if variants is not None:
        if model_path is not None:
            raise ValueError("give model_path or variants, not both")
        if not variants:
            raise ValueError("variants: give at least one name=artifact")
        if impressions is None:
            raise ValueError(
                "an A/B test (RECO_VARIANTS) needs an impression log to measure it: "
                "set RECO_IMPRESSIONS to a directory"
            )
        models = {name: reco_fast.load(path) for name, path in variants.items()}
    else:
        if split is not None:
            raise ValueError("RECO_SPLIT goes with RECO_VARIANTS")
        if model_path is None:
            model_path = env.get("RECO_MODEL") or DEFAULT_MODEL
        models = {"default": reco_fast.load(model_path)}  # verified: checksums, golden outputs
    for m in models.values():
        if not m.can_recommend:
            raise ValueError(
                f"the model at {m.path} was trained without candidate-product features and "
                "cannot rank products; rebuild it with the default (ranking) feature set"
            )
    model = next(iter(models.values()))

    def rows(m: reco_fast.Model) -> Any:
        catalog = m.builder.catalog
        return None if catalog is None else catalog.to_rows()

    for name, m in models.items():
        if rows(m) != rows(model):
            raise ValueError(
                f"variant {shown(name)} ({m.path}) has another catalog than {model.path}: "
                "the variants of one service share the catalog their sessions are tracked in"
            )
    if store is None and env.get("RECO_REDIS_URL"):
        store = RedisStore.from_url(env["RECO_REDIS_URL"])
    owned = impressions is not None and not isinstance(impressions, ImpressionLog)
    log = ImpressionLog(impressions) if owned else impressions
    assert log is None or isinstance(log, ImpressionLog)
    router: ABRouter | None = None
    try:
        if variants is not None and log is not None:
            tracker = SessionTracker(model, store)
            router = ABRouter(models, split, log=log, tracker=tracker)
            serve: SessionTracker | ABRouter = router
        else:
            tracker = SessionTracker(model, store, log=log)  # store None: in memory
            serve = tracker
    except BaseException:
        if owned and log is not None:  # a refused configuration leaves no writer thread
            log.close()
        raise
    serving_id = model_id(model)
    shares = router.split if router is not None else {"default": 1.0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned and log is not None:
            log.close()

    app = FastAPI(title="reco_fast example service", lifespan=lifespan)
    app.state.model = model
    app.state.model_id = serving_id
    app.state.tracker = tracker
    app.state.impressions = log
    app.state.router = router
    # Starlette picks the handler of the most specific class: SessionNotFound is an InputError.
    app.add_exception_handler(InputError, _error(422))
    app.add_exception_handler(SessionNotFound, _error(404))
    app.add_exception_handler(StoreUnavailable, _error(503))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    # Plain `def` endpoints run in FastAPI's thread pool; the tracker and the
    # model are thread-safe, and the compiled model releases the GIL.
    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, and which artifact is serving (see :func:`model_id`); with an A/B
        test, the first variant's and every variant's."""
        if router is None:
            return {"status": "ok", "model_id": serving_id}
        return {"status": "ok", "model_id": serving_id, "variants": variants_()}

    @app.get("/variants")
    def variants_() -> dict[str, dict[str, Any]]:
        """Each variant's artifact id and traffic share (one "default" without an A/B test)."""
        if router is None:
            return {"default": {"model_id": serving_id, "share": 1.0}}
        # each variant is a ModelHandle (swappable on its own): its current artifact's id
        return {n: {"model_id": h.model_id, "share": shares[n]} for n, h in router.models.items()}

    def outcome(kind: str, event: Outcome) -> dict[str, str]:
        if log is None:
            raise HTTPException(
                status_code=409,
                detail=f"this service keeps no impression log to join a {kind} to: "
                "start it with RECO_IMPRESSIONS=DIR",
            )
        getattr(log, kind)(event.session_id, event.product_id)
        return {"status": "accepted", "type": kind}

    @app.post("/click", status_code=202)
    def click(event: Outcome) -> dict[str, str]:
        """A click on a recommended product: joined (by the log's writer) to the latest
        impression of the session that showed it, within the log's click window."""
        return outcome("click", event)

    @app.post("/purchase", status_code=202)
    def purchase(event: Outcome) -> dict[str, str]:
        """A purchase of a recommended product, joined like a click."""
        return outcome("purchase", event)

    @app.post("/sessions/{session_id}/page_view")
    def page_view(session_id: str, event: PageView) -> dict[str, Any]:
        return _no_nan(tracker.page_view(session_id, **event.model_dump()))

    @app.post("/sessions/{session_id}/engagement")
    def engagement(session_id: str, event: Engagement) -> dict[str, Any]:
        return _no_nan(tracker.engagement(session_id, **event.model_dump()))

    @app.post("/sessions/{session_id}/cart")
    def add_to_cart(session_id: str, item: CartItem) -> dict[str, Any]:
        return _no_nan(tracker.add_to_cart(session_id, item.product_id))

    @app.delete("/sessions/{session_id}/cart/{product_id}")
    def remove_from_cart(session_id: str, product_id: str) -> dict[str, Any]:
        return _no_nan(tracker.remove_from_cart(session_id, product_id))

    @app.get("/sessions/{session_id}")
    def context(session_id: str) -> dict[str, Any]:
        return _no_nan(tracker.context(session_id))

    @app.get("/sessions/{session_id}/recommendations")
    def recommendations(
        session_id: str, response: Response, k: int = 3, threshold: float | None = None
    ) -> list[RecommendationOut]:
        recs = serve.recommend(session_id, k, threshold)
        request_id = getattr(recs, "request_id", None)
        if request_id is not None:  # logged: the impression this response is
            response.headers["X-Request-Id"] = request_id
            response.headers["X-Variant"] = recs.variant  # type: ignore[attr-defined]
            response.headers["X-Model-Id"] = recs.model_id  # type: ignore[attr-defined]
        return [
            RecommendationOut(product_id=r.product_id, probability=r.probability, reason=r.reason)
            for r in recs
        ]

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
