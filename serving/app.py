"""The FastAPI app factory: `create_app(settings)`; everything loads in `lifespan`."""

from __future__ import annotations

import gc
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recommender.contact import ContactPolicy
from recommender.errors import RecommenderError, first_line
from recommender.rules import RuleSettings
from serving.customers import CustomerDirectory
from serving.docs import ASSET_PREFIX, DOCS_PATH, install_docs
from serving.events import AuditWriter, EventStore
from serving.experiments import ExperimentBook, popularity
from serving.keys import KeyRing, read_keys
from serving.logs import prepare_process
from serving.metrics import ServiceMetrics
from serving.model_holder import ModelHolder
from serving.security import (
    API_KEY_HEADER,
    DOCS_CSP,
    SECURITY_HEADERS,
    UNAUTHENTICATED,
    presented_key,
)
from serving.settings import ServiceSettings

log = logging.getLogger("serving")
DESCRIPTION = """Next-best-offer for relationship officers: ranked, explained,
rule-checked product suggestions for a client, with every decision kept in an audit
trail. Authenticate with an API key in the `X-API-Key` header (roles: officer, analyst,
admin)."""


@dataclass
class Services:
    settings: ServiceSettings
    keys: KeyRing
    directory: CustomerDirectory
    events: EventStore
    audit: AuditWriter
    holder: ModelHolder
    metrics: ServiceMetrics
    experiments: ExperimentBook
    contact: ContactPolicy
    popularity: np.ndarray  # the popularity policy's key: share of clients per product


def build_services(settings: ServiceSettings) -> Services:
    from training.tracking import quiet_mlflow

    quiet_mlflow()
    # An unreachable MLflow must not hold start-up for minutes: few, short retries, then
    # the local copy of the last good model.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    metrics = ServiceMetrics()
    keys = KeyRing.load(settings.api_keys_file)
    directory = CustomerDirectory(settings.data_dir)
    events = EventStore(settings.events_url, tolerate_unavailable=True)
    if events.ready and settings.spill_dir.exists():
        events.replay(settings.spill_dir)
    rules = RuleSettings(settings.eligibility_rules, settings.suitability_rules,
                         settings.family_rules)  # fmt: skip
    holder = ModelHolder(settings.model_uri, settings.tracking_uri, directory, rules,
                         settings.local_model_dir)  # fmt: skip

    def on_event(kind: str, detail: str) -> None:
        if kind == "failure":
            metrics.reload_failures.inc()
        elif kind == "swap" and holder.current is not None:
            metrics.swaps.inc()
            current = holder.current
            metrics.set_model(current.name, current.version, current.source)

    holder.on_event = on_event
    holder.start()
    holder.start_polling(settings.poll_seconds)
    book = ExperimentBook(events, holder, settings.experiment_refresh_seconds,
                          settings.poll_seconds)  # fmt: skip
    book.start()
    contact = ContactPolicy(settings.decline_suppress_days, settings.max_offers_per_week)
    popular = popularity(directory.cube.held[-1])

    def on_state(writer: AuditWriter) -> None:
        metrics.store_up.set(1 if writer.healthy else 0)
        metrics.audit_queued.set(writer.pending)
        metrics.audit_refused.set(writer.dropped)

    audit = AuditWriter(events, max_pending=settings.audit_max_pending,
                        spill_dir=settings.spill_dir, on_state=on_state)  # fmt: skip
    return Services(settings, keys, directory, events, audit, holder, metrics, book, contact,
                    popular)  # fmt: skip


def create_app(
    settings: ServiceSettings | None = None, services: Services | None = None
) -> FastAPI:
    """The service. Tests pass their own settings (or ready-made services)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = services or build_services(settings or ServiceSettings())
        # Everything loaded at start-up lives as long as the process: keep it out of the
        # garbage collector's full passes, which otherwise stall requests for ~100 ms.
        gc.collect()
        gc.freeze()
        yield
        app.state.services.holder.stop()
        app.state.services.experiments.stop()
        app.state.services.audit.close(app.state.services.settings.shutdown_flush_seconds)
        app.state.services.events.close()

    # /docs from pinned local copies (serving/docs.py), not FastAPI's CDN page; no ReDoc.
    app = FastAPI(title="Next-best-offer API", version="1.0", description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # fmt: skip
    # No redirect to the slash-less path: Starlette builds it from the Host header, which
    # the caller chooses (a poisoned cache would send users elsewhere); a 404 instead.
    app.router.redirect_slashes = False
    _install_middleware(app, settings or (services.settings if services else None))
    _install_error_handlers(app)
    install_docs(app)
    from serving.routes import router

    app.include_router(router)
    return app


class BodyTooLarge(HTTPException):
    """An HTTPException, so that FastAPI, which turns other errors raised while reading a
    body into a 400, lets it through as a 413."""

    def __init__(self, limit: int) -> None:
        detail = (
            f"request body over {limit:,} bytes; send less (batches of at most 1,000 items) "
            "or raise RECOMMENDER_MAX_BODY_BYTES"
        )
        super().__init__(413, detail=detail)


# Routes anyone may call; every other request needs a valid key before its body is read.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", DOCS_PATH})
SWALLOW_BYTES = 64 * 1024  # an unauthenticated body up to this is skipped, not cut off


class Observe:
    """Pure ASGI middleware: request id, security headers, Prometheus latency and counts,
    the API key (401 from the X-API-Key header alone, before the body is read or parsed,
    on every route but PUBLIC_PATHS and the docs assets; the role is checked by the route,
    serving/security.py `require`), and the request body limit (413 from the
    Content-Length header before anything is read, or as soon as a chunked body passes
    the limit: no body is held whole)."""

    def __init__(self, app: ASGIApp, owner: FastAPI, max_body: int = 2 * 1024 * 1024) -> None:
        self.app = app
        self.owner = owner
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        path = _route_path(scope)
        csp = DOCS_CSP if path == DOCS_PATH else SECURITY_HEADERS["Content-Security-Policy"]
        start = time.perf_counter()
        status_code = 500
        limit = self.max_body
        declared = _content_length(scope)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers["Content-Security-Policy"] = csp
                headers["X-Request-ID"] = request_id
            await send(message)

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_headers(message)

        try:
            if not (path in PUBLIC_PATHS or path.startswith(ASSET_PREFIX)):
                services = getattr(self.owner.state, "services", None)
                key = None if services is None else presented_key(services.keys,
                                                                  scope["headers"])  # fmt: skip
                if services is not None and key is None:
                    await _unauthenticated(scope, receive, send_with_headers, declared)
                    return
                state["api_key"] = key
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit)
            await self.app(scope, limited, tracked)
        except BodyTooLarge as exc:
            if started:
                raise
            response = JSONResponse(status_code=413, content={"detail": exc.detail})
            await response(scope, receive, send_with_headers)
        except Exception:  # never a trace to the caller; the request id to quote instead
            log.exception("unexpected error in request %s", request_id)
            if started:
                raise
            response = JSONResponse(
                status_code=500,
                content={"detail": f"internal error; quote request id {request_id} to support"},
            )
            await response(scope, receive, send_with_headers)
        finally:
            self._observe(scope, status_code, time.perf_counter() - start)

    def _observe(self, scope: Scope, status_code: int, seconds: float) -> None:
        services = getattr(self.owner.state, "services", None)
        if services is None:
            return
        path = getattr(scope.get("route"), "path", "unmatched")
        method = scope.get("method", "")
        services.metrics.requests.labels(method, path, str(status_code)).inc()
        services.metrics.latency.labels(method, path).observe(seconds)


async def _unauthenticated(
    scope: Scope, receive: Receive, send: Send, declared: int | None
) -> None:
    """401 without reading the body. A small body is left to be skipped on the kept-alive
    connection (the client reads its 401 cleanly); after a larger or chunked one the
    connection is closed, so no unauthenticated upload is swallowed."""
    headers = {"WWW-Authenticate": API_KEY_HEADER}
    chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
    if chunked or (declared or 0) > SWALLOW_BYTES:
        headers["Connection"] = "close"
    response = JSONResponse(status_code=401, content={"detail": UNAUTHENTICATED}, headers=headers)
    await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the router sees (without a proxy's root_path prefix)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _install_middleware(app: FastAPI, settings: ServiceSettings | None) -> None:
    limit = settings.max_body_bytes if settings else ServiceSettings.model_fields[
        "max_body_bytes"].default  # fmt: skip
    app.add_middleware(Observe, owner=app, max_body=limit)
    origins = settings.cors_origins if settings else []
    if origins:  # off by default: officer apps call from servers, not browsers
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Content-Type"])  # fmt: skip


def _install_error_handlers(app: FastAPI) -> None:
    """Domain errors map to HTTP statuses here, in one place; never a 500 with a trace."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content=jsonable_encoder({"detail": errors}))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def store_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("event store unavailable: %s", first_line(exc))
        return JSONResponse(status_code=503, content={
            "detail": "the event store is unavailable; retry shortly"})  # fmt: skip

    @app.exception_handler(RecommenderError)
    async def domain(request: Request, exc: RecommenderError) -> JSONResponse:
        """The same shape as a validation error (the documented 422)."""
        error = {"loc": ["body"], "msg": str(exc), "type": "value_error"}
        return JSONResponse(status_code=422, content={"detail": [error]})


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` and `recommender serve` (settings from env)."""
    settings = ServiceSettings()
    prepare_process(settings.log_format)  # private files (umask 077), one-line logs
    read_keys(settings.api_keys_file)  # a bad keys file: one line from the CLI, no traceback
    return create_app(settings)
