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

Event times are the server's clock when the event arrives.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

import reco_fast
from reco_fast import InputError, RedisStore, SessionNotFound, SessionTracker, StoreUnavailable
from reco_fast.artifact import METADATA_FILE
from reco_fast.errors import shown

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


def model_id(model: reco_fast.Model) -> str:
    """The serving artifact's id: the sha256 of its ``metadata.json``.

    metadata.json lists the sha256 of every other file of the artifact (library,
    catalog, report...) and its build time, so this one digest names the whole
    artifact; ``sha256sum artifacts/reco_model/metadata.json`` gives the same value.
    The file is re-read here, so it is checked to be the metadata the model was
    loaded with (a rebuild may have replaced the directory since).
    """
    data = (Path(model.path) / METADATA_FILE).read_bytes()
    if json.loads(data) != dict(model.metadata):
        raise RuntimeError(
            f"{model.path} changed while the model was loading; start the service again"
        )
    return hashlib.sha256(data).hexdigest()


def create_app(
    model_path: str | os.PathLike[str] | None = None,
    store: Any = None,
) -> FastAPI:
    """Build the app. Arguments override RECO_MODEL and RECO_REDIS_URL."""
    if model_path is None:
        model_path = os.environ.get("RECO_MODEL") or DEFAULT_MODEL
    model = reco_fast.load(model_path)  # verified: checksums, platform, golden outputs
    if not model.can_recommend:
        raise ValueError(
            f"the model at {model_path} was trained without candidate-product features and "
            "cannot rank products; rebuild it with the default (ranking) feature set"
        )
    if store is None and os.environ.get("RECO_REDIS_URL"):
        store = RedisStore.from_url(os.environ["RECO_REDIS_URL"])
    tracker = SessionTracker(model, store)  # store None: in memory
    serving_id = model_id(model)

    app = FastAPI(title="reco_fast example service")
    app.state.model = model
    app.state.model_id = serving_id
    app.state.tracker = tracker
    # Starlette picks the handler of the most specific class: SessionNotFound is an InputError.
    app.add_exception_handler(InputError, _error(422))
    app.add_exception_handler(SessionNotFound, _error(404))
    app.add_exception_handler(StoreUnavailable, _error(503))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    # Plain `def` endpoints run in FastAPI's thread pool; the tracker and the
    # model are thread-safe, and the compiled model releases the GIL.
    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness, and which artifact is serving (see :func:`model_id`)."""
        return {"status": "ok", "model_id": serving_id}

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
        session_id: str, k: int = 3, threshold: float | None = None
    ) -> list[RecommendationOut]:
        recs = tracker.recommend(session_id, k=k, threshold=threshold)
        return [
            RecommendationOut(product_id=r.product_id, probability=r.probability, reason=r.reason)
            for r in recs
        ]

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
