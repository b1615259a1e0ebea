"""The FastAPI app factory: `create_app(settings)`; everything loads in `lifespan`."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from recommender.errors import RecommenderError
from recommender.rules import RuleSettings
from serving.customers import CustomerDirectory
from serving.events import EventStore
from serving.keys import KeyRing
from serving.metrics import ServiceMetrics
from serving.model_holder import ModelHolder
from serving.security import SECURITY_HEADERS
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
    holder: ModelHolder
    metrics: ServiceMetrics


def build_services(settings: ServiceSettings) -> Services:
    from training.tracking import quiet_mlflow

    quiet_mlflow()
    metrics = ServiceMetrics()
    keys = KeyRing.load(settings.api_keys_file)
    directory = CustomerDirectory(settings.data_dir)
    events = EventStore(settings.events_url)
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
    return Services(settings, keys, directory, events, holder, metrics)


def create_app(
    settings: ServiceSettings | None = None, services: Services | None = None
) -> FastAPI:
    """The service. Tests pass their own settings (or ready-made services)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = services or build_services(settings or ServiceSettings())
        yield
        app.state.services.holder.stop()
        app.state.services.events.close()

    app = FastAPI(title="Next-best-offer API", version="1.0", description=DESCRIPTION,
                  lifespan=lifespan)  # fmt: skip
    _install_middleware(app)
    _install_error_handlers(app)
    from serving.routes import router

    app.include_router(router)
    return app


def _install_middleware(app: FastAPI) -> None:
    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.request_id = uuid.uuid4().hex
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics: ServiceMetrics | None = getattr(
            getattr(app.state, "services", None), "metrics", None
        )
        if metrics is not None:
            metrics.requests.labels(request.method, path, str(response.status_code)).inc()
            metrics.latency.labels(request.method, path).observe(time.perf_counter() - start)
        response.headers.update(SECURITY_HEADERS)
        response.headers["X-Request-ID"] = request.state.request_id
        return response


def _install_error_handlers(app: FastAPI) -> None:
    """Domain errors map to HTTP statuses here, in one place; never a 500 with a trace."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content=jsonable_encoder({"detail": errors}))

    @app.exception_handler(RecommenderError)
    async def domain(request: Request, exc: RecommenderError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "?")
        log.exception("unexpected error in request %s", request_id)
        return JSONResponse(
            status_code=500,
            content={"detail": f"internal error; quote request id {request_id} to support"},
        )


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` and `recommender serve` (settings from env)."""
    return create_app(ServiceSettings())
