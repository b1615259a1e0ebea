"""The HTTP routes. Thin: resolve the client, ask the offer engine, audit, answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from recommender import columns as C
from recommender.errors import RecommenderError, one_line
from recommender.experiment import Experiment
from serving.app import Services
from serving.decision import Decision, Forbidden, NotFound, NotReady, decide
from serving.events import (
    UNAVAILABLE,
    DecisionRecord,
    ExperimentConflict,
    FeedbackRecord,
    QueueFull,
)
from serving.keys import ApiKey
from serving.limits import key_limits, offer_limits
from serving.model_holder import ServedModel
from serving.schemas import (
    CUSTOMER_ID_PATTERN,
    BatchItemError,
    BatchRequest,
    BatchResponse,
    ExperimentIn,
    ExperimentOut,
    FeedbackBatch,
    FeedbackBatchResponse,
    FeedbackError,
    FeedbackRequest,
    FeedbackResponse,
    ProductOut,
    RecommendationRequest,
    RecommendationResponse,
    ReloadResponse,
)
from serving.security import API_KEY_HEADER, require

router = APIRouter()
Officer = Annotated[ApiKey, Depends(require("officer"))]
Reader = Annotated[ApiKey, Depends(require("officer", "analyst", "admin"))]
Analyst = Annotated[ApiKey, Depends(require("analyst", "admin"))]
Admin = Annotated[ApiKey, Depends(require("admin"))]


async def services(request: Request) -> Services:  # async: no thread hop for a lookup
    found: Services = request.app.state.services
    return found


Svc = Annotated[Services, Depends(services)]


async def _offer_limits(request: Request, key: Officer) -> AsyncIterator[None]:
    """The key's rate and concurrency limits on the offer routes (serving/limits.py),
    taken after the key check. The key's slot is freed when the route returns, before
    the answer is sent (scope="function"), so a client's next request never finds it
    still taken."""
    async with offer_limits(request, key.id):
        yield


Limited = Annotated[None, Depends(_offer_limits, scope="function")]


async def _view_limits(request: Request, key: Officer) -> AsyncIterator[None]:
    """The same per-key limits on the client view: reading the whole client base is
    paced like asking for offers."""
    async with key_limits(request, key.id):
        yield


async def _feedback_limits(request: Request, key: Officer) -> AsyncIterator[None]:
    """Per-key limits on feedback: one token per outcome (a batch: per item)."""
    async with key_limits(request, key.id, items_field="items"):
        yield


ViewLimited = Annotated[None, Depends(_view_limits, scope="function")]
FeedbackLimited = Annotated[None, Depends(_feedback_limits, scope="function")]


def _served(svc: Services) -> ServedModel:
    served = svc.holder.current
    if served is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail="no model loaded yet; see /readyz")  # fmt: skip
    return served


@router.post("/v1/recommendations", response_model=RecommendationResponse, tags=["offers"],
             responses={403: {"description": "The key may not request this channel or a "
                                             "cold start"},
                        404: {"description": "Unknown customer_id"},
                        422: {"description": "Invalid request"}})  # fmt: skip
async def recommend(
    body: RecommendationRequest, request: Request, svc: Svc, key: Officer, _limits: Limited
) -> Any:
    """Ranked, explained, rule-checked offers for one client (known id or cold start).

    Clients in a running experiment get their variant's model, objective or policy (the
    response names the experiment and variant; the holdout gets no offer). Products the
    contact policy suppresses are listed in `excluded` with the policy's reason.

    `async` on purpose, against the habit for CPU-bound routes: scoring one client takes
    well under a millisecond, less than the two thread hand-overs a sync route costs
    (measured in bench/bench_serving.py); the audit write is awaited, not blocked on.
    A cold start is decided in a worker thread: parsing and encoding its attributes takes
    ~10 ms, which would stall every other request on the event loop."""
    request_id = request.state.request_id
    if body.customer is None:
        decision = _decide(svc, body, key)
    else:
        decision = await run_in_threadpool(_decide, svc, body, key)
    records = [decision.record(request_id, key, body.k)]
    committed = asyncio.wrap_future(_submit(svc, records))
    deadline = time.monotonic() + svc.settings.audit_wait_seconds
    while True:  # wait for the commit, unless the store is down or too slow
        done, _ = await asyncio.wait({committed}, timeout=0.05)
        if done:
            if committed.exception() is not None:  # the store refused this record
                raise _audit_failed(svc, records) from committed.exception()
            break
        if not svc.audit.healthy or time.monotonic() > deadline:
            svc.metrics.audit_deferred.inc()  # answered; the event stays queued
            break
    _count_offers(svc, records)
    return JSONResponse(decision.response(request_id))  # our shape; not re-validated


def _submit(svc: Services, records: list[DecisionRecord]) -> Future[None]:
    """Queue the audit records; a full queue (store down too long) refuses the request."""
    try:
        return svc.audit.submit(records)
    except QueueFull as exc:
        svc.metrics.audit_rejected.inc(len(records))
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the audit trail cannot be written (the event store is unavailable and "
            "the queue of unwritten events is full), so no offer is served; retry shortly",
        ) from exc


def _wait(svc: Services, records: list[DecisionRecord], future: Future[None]) -> None:
    """The batch route's (threaded) version of waiting for the audit commit."""
    deadline = time.monotonic() + svc.settings.audit_wait_seconds
    while True:
        try:
            future.result(0.05)
            return
        except FutureTimeout:
            if not svc.audit.healthy or time.monotonic() > deadline:
                svc.metrics.audit_deferred.inc()
                return
        except Exception as exc:
            raise _audit_failed(svc, records) from exc


def _decide(svc: Services, item: RecommendationRequest, key: ApiKey) -> Decision:
    try:
        return decide(svc, item, key)
    except Forbidden as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=exc.detail) from exc
    except NotReady as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail="no model loaded yet; see /readyz") from exc  # fmt: skip
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=exc.detail) from exc


@router.post("/v1/recommendations/batch", response_model=BatchResponse, tags=["offers"])
def recommend_batch(
    body: BatchRequest, request: Request, svc: Svc, key: Officer, _limits: Limited
) -> Any:
    """Offers for up to 1,000 clients in one call; per-client errors are reported inline.

    At most `max_cold_starts_per_batch` items may be cold starts, and the batch costs the
    key's rate limit the sum of its items (serving/limits.py). Sync on purpose: FastAPI
    runs it in a worker thread, so a long batch does not stall the event loop."""
    if len(body.requests) > svc.settings.max_batch:
        limit, got = svc.settings.max_batch, len(body.requests)
        raise RequestValidationError([{
            "loc": ("body", "requests"), "type": "too_long", "input": None,
            "msg": f"at most {limit} requests per batch (got {got})",
        }])  # fmt: skip
    _refuse_repeated_clients(body)
    results: list[Any] = []
    records = []
    for i, item in enumerate(body.requests):
        request_id = f"{request.state.request_id}-{i}"
        try:
            decision = _decide(svc, item, key)
        except HTTPException as exc:
            if exc.status_code != status.HTTP_404_NOT_FOUND:
                raise
            results.append(
                BatchItemError(customer_id=item.customer_id, status=404, detail=exc.detail)
            )
            continue
        except RecommenderError as exc:
            results.append(
                BatchItemError(customer_id=item.customer_id, status=422, detail=str(exc))
            )
            continue
        results.append(decision.response(request_id))
        records.append(decision.record(request_id, key, item.k))
    if records:
        _wait(svc, records, _submit(svc, records))  # every decision queued before answering
    _count_offers(svc, records)
    return {"results": results}


def _refuse_repeated_clients(body: BatchRequest) -> None:
    """One item per client in a batch: each item's contact policy reads the client's
    history as it was before the batch, so two items for one client (another objective,
    k=6 twice) would pass the weekly cap together."""
    seen: dict[str, int] = {}
    for i, item in enumerate(body.requests):
        if item.customer_id is None:
            continue
        if item.customer_id in seen:
            raise RequestValidationError([{
                "loc": ("body", "requests", i, "customer_id"), "type": "repeated_client",
                "input": item.customer_id,
                "msg": f"customer_id {item.customer_id!r} is already item {seen[item.customer_id]}"
                       " of this batch; send each client once per batch",
            }])  # fmt: skip
        seen[item.customer_id] = i


def _audit_failed(svc: Services, records: list[DecisionRecord]) -> HTTPException:
    svc.metrics.audit_failures.inc(len(records))
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail="the audit trail cannot be written, so no offer is served; retry shortly",
    )


@router.post("/v1/feedback", response_model=FeedbackResponse, tags=["offers"],
             responses={403: {"description": "The decision was made by another key"},
                        404: {"description": "Unknown request_id"},
                        422: {"description": "Product not offered in that request"}})  # fmt: skip
def record_feedback(body: FeedbackRequest, svc: Svc, key: Officer, _limits: FeedbackLimited) -> Any:
    """What happened to an offer: shown, accepted, declined or converted. Repeats are
    harmless (the same outcome for the same offer is kept once). A decline suppresses
    the product for the client for the contact policy's period."""
    checked = _check_feedback(svc, key, body)
    if isinstance(checked, FeedbackError):
        if checked.status in (403, 404, 503):
            raise HTTPException(checked.status, detail=checked.detail)
        error = {"loc": ("body", "product_id"), "type": "not_offered",
                 "input": body.product_id, "msg": checked.detail}  # fmt: skip
        raise RequestValidationError([error])
    answer, record = checked
    _write_feedback(svc, [record] if record else [])
    return answer


@router.post("/v1/feedback/batch", response_model=FeedbackBatchResponse, tags=["offers"])
def record_feedback_batch(
    body: FeedbackBatch, svc: Svc, key: Officer, _limits: FeedbackLimited
) -> Any:
    """Up to 1,000 outcomes in one call (an officer app syncing after a day offline);
    each item is checked as `/v1/feedback` checks it, and errors are reported inline."""
    results: list[Any] = []
    records = []
    for item in body.items:
        checked = _check_feedback(svc, key, item)
        if isinstance(checked, FeedbackError):
            results.append(checked)
            continue
        answer, record = checked
        results.append(answer)
        if record is not None:
            records.append(record)
    _write_feedback(svc, records)
    return {"results": results}


def _check_feedback(svc: Services, key: ApiKey, body: FeedbackRequest) -> Any:
    """(answer, record to write or None for a repeat), or a FeedbackError. Only the key
    that made the decision may report its outcome: feedback suppresses products (a
    decline) and decides A/B readouts, so another officer must not write it."""
    if not svc.audit.healthy:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail="the event store is unavailable; retry shortly")  # fmt: skip
    decision = svc.events.offered(body.request_id)
    if decision is None and svc.audit.pending:  # this item only: the rest of a batch goes on
        return FeedbackError(
            request_id=body.request_id, product_id=body.product_id, status=503,
            detail=f"request_id {body.request_id!r} is not recorded yet (events are waiting "
            "to be written); retry this item shortly",
        )  # fmt: skip
    if decision is None:
        return FeedbackError(
            request_id=body.request_id, product_id=body.product_id, status=404,
            detail=f"request_id {body.request_id!r} is unknown; send the request_id a "
            "/v1/recommendations response returned",
        )  # fmt: skip
    if decision["key_id"] != key.id:
        return FeedbackError(
            request_id=body.request_id, product_id=body.product_id, status=403,
            detail=f"request_id {body.request_id!r} was made by another key; feedback is "
            f"accepted only from the key that made the decision (this key: {key.id!r}); send "
            "feedback for your own requests",
        )  # fmt: skip
    if body.product_id not in decision["products"]:
        offered = sorted(decision["products"]) or "no product"
        return FeedbackError(
            request_id=body.request_id, product_id=body.product_id, status=422,
            detail=f"{body.product_id!r} was not offered in request {body.request_id!r} "
            f"(offered: {offered})",
        )  # fmt: skip
    answer = {"request_id": body.request_id, "product_id": body.product_id,
              "outcome": body.outcome}  # fmt: skip
    if svc.events.has_feedback(body.request_id, body.product_id, body.outcome):
        return {"status": "duplicate", **answer}, None
    record = FeedbackRecord(body.request_id, decision["customer_id"], body.product_id,
                            body.outcome, key.id)  # fmt: skip
    return {"status": "recorded", **answer}, record


def _write_feedback(svc: Services, records: list[FeedbackRecord]) -> None:
    try:
        svc.audit.write(records)
    except Exception as exc:
        detail = "the event store cannot be written; retry shortly"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=detail) from exc
    for record in records:
        svc.metrics.feedback.labels(record.outcome).inc()


@router.post("/v1/experiments", response_model=ExperimentOut, status_code=201,
             tags=["experiments"],
             responses={409: {"description": "Name taken, another experiment runs in "
                                             "the channel, or max_experiments are running "
                                             "or scheduled"}})  # fmt: skip
def create_experiment(body: ExperimentIn, svc: Svc, key: Admin) -> Any:
    """Start an A/B experiment: variants with traffic weights (each may name a model
    alias or version, an objective, or the popularity policy) and an optional holdout
    share that gets no offer. One experiment at a time per channel, and at most
    `max_experiments` running or scheduled (each keeps its variants' models loaded in
    every worker), checked before any model is loaded."""
    experiment = Experiment.from_dict(body.model_dump(exclude_none=True))
    now = datetime.now(UTC)
    live = [e.name for e in svc.events.experiments()
            if e.active(now) or (e.start > now and e.stopped_at is None)]  # fmt: skip
    cap = svc.settings.max_experiments
    if len(live) >= cap:
        names = ", ".join(live[:5]) + (", ..." if len(live) > 5 else "")
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"at most {cap} experiments may be running or scheduled at once "
            f"(RECOMMENDER_MAX_EXPERIMENTS={cap}), and {len(live)} are ({names}); stop one "
            "with POST /v1/experiments/{name}/stop, or raise the setting",
        )
    try:
        svc.experiments.create(experiment)
    except ExperimentConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return _experiment_out(experiment)


@router.get("/v1/experiments", response_model=list[ExperimentOut], tags=["experiments"])
def list_experiments(svc: Svc, key: Analyst) -> Any:
    """Every experiment, with its status (scheduled, running, stopped or ended)."""
    return [_experiment_out(e) for e in svc.events.experiments()]


@router.get("/v1/experiments/{name}", response_model=ExperimentOut, tags=["experiments"])
def get_experiment(name: str, svc: Svc, key: Analyst) -> Any:
    """One experiment."""
    found = svc.events.experiment(name)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no experiment named {name!r}")
    return _experiment_out(found)


@router.post("/v1/experiments/{name}/stop", response_model=ExperimentOut,
             tags=["experiments"])  # fmt: skip
def stop_experiment(name: str, svc: Svc, key: Admin) -> Any:
    """Stop an experiment now: its clients get the main model again (stopping twice is
    harmless)."""
    stopped = svc.experiments.stop_experiment(name)
    if stopped is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no experiment named {name!r}")
    return _experiment_out(stopped)


def _experiment_out(experiment: Experiment) -> dict[str, Any]:
    now = datetime.now(UTC)
    if experiment.active(now):
        state = "running"
    elif experiment.stopped_at is not None and experiment.stopped_at <= now:
        state = "stopped"
    elif experiment.start > now:
        state = "scheduled"
    else:
        state = "ended"
    return {**experiment.to_dict(), "status": state, "shares": experiment.shares()}


def _count_offers(svc: Services, records: list[DecisionRecord]) -> None:
    for record in records:
        for offer in record.offers:
            svc.metrics.offers.labels(offer["product_id"]).inc()


@router.get("/v1/customers/{customer_id}", tags=["clients"])
def customer_view(
    customer_id: Annotated[str, Path(pattern=CUSTOMER_ID_PATTERN, max_length=128)],
    svc: Svc,
    key: Officer,
    _limits: ViewLimited,
) -> Any:
    """The client view: attributes, value tier, holdings with since-when, recently
    dropped products, and the offers made to this client."""
    served = _served(svc)
    row = svc.directory.row(customer_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"customer_id {customer_id!r} is not in the data as of "
                            f"{svc.directory.as_of.date()}")  # fmt: skip
    view = svc.directory.view(row, served.bundle.options)
    try:
        made = svc.events.offers_for(customer_id) if svc.audit.healthy else None
    except UNAVAILABLE:
        made = None
    view["offers"] = [{**offer, "created_at": offer["created_at"].isoformat()}
                      for offer in made or []]  # fmt: skip
    view["offers_unavailable"] = made is None  # the event store is down: history unknown
    return view


@router.get("/v1/products", response_model=list[ProductOut], tags=["catalog"])
def products(svc: Svc, key: Reader) -> Any:
    """The product catalog with its eligibility rules."""
    rules = _served(svc).engine.rules
    out = []
    for i, pid in enumerate(rules.ids):
        row = svc.directory.products.iloc[i]
        out.append({
            "product_id": pid, "name": rules.names[i],
            "category": _or_none(row.get(C.CATEGORY)), "risk_level": _num(rules.risk[i]),
            "margin": _num(row.get(C.MARGIN)), "family": rules.family[i],
            "eligibility": {"min_age": _num(rules.min_age[i]), "max_age": _num(rules.max_age[i]),
                            "min_income": _num(rules.min_income[i]),
                            "segments": sorted(rules.segments[i]) or None},
        })  # fmt: skip
    return out


@router.get("/healthz", tags=["operations"])
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
def readyz(svc: Svc, request: Request, response: Response) -> dict[str, Any]:
    """Readiness: a model and the client data are loaded (200, else 503). The event
    store's state is reported (a store that is down degrades the service: offers are
    still served and their events queued) but does not make the service unready.

    Without a valid key, only `{"ready": ...}`: the details (model, errors naming
    internal hosts) are for the people who run the service, and a probe needs only the
    status code. With a key of any role, the details, each text on one line."""
    ready = svc.holder.current is not None
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    if svc.keys.identify(request.headers.get(API_KEY_HEADER)) is None:
        return {"ready": ready}
    status_ = svc.holder.status()
    audit = svc.audit
    store = {"up": audit.healthy and svc.events.ping(), "queued_events": audit.pending,
             "last_error": audit.last_error}  # fmt: skip
    details = {"ready": ready, **status_, "degraded": status_["degraded"] or not store["up"],
               "customers": len(svc.directory), "as_of": svc.directory.as_of.date().isoformat(),
               "event_store": store, "experiments": svc.experiments.status()}  # fmt: skip
    shown: dict[str, Any] = _single_lines(details)
    return shown


def _single_lines(value: Any) -> Any:
    """Every text in a (nested) answer on one line, credentials hidden (`one_line`)."""
    if isinstance(value, str):
        return one_line(value)
    if isinstance(value, dict):
        return {k: _single_lines(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_single_lines(v) for v in value]
    return value


@router.get("/metrics", tags=["operations"])
def metrics(svc: Svc, key: Analyst) -> Response:
    """Prometheus metrics."""
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")


@router.post("/v1/admin/reload", response_model=ReloadResponse, tags=["admin"])
def reload(
    svc: Svc,
    key: Admin,
    response: Response,
    wait: Annotated[bool, Query(description="Wait for the check to finish")] = False,
) -> Any:
    """Check the registry alias now; a new version is loaded and swapped in."""
    if not wait:
        svc.holder.check_in_background()
        response.status_code = status.HTTP_202_ACCEPTED
        return {"status": "checking", "model": svc.holder.status()["model"]}
    result = svc.holder.check()
    return {"status": "done", "result": result, "model": svc.holder.status()["model"]}


@router.get("/v1/admin/settings", tags=["admin"])
def settings(svc: Svc, key: Admin) -> dict[str, Any]:
    """The service's settings; passwords in URLs (event store, MLflow) are shown as
    `***`, and API keys are never in settings (only their hashes, in the keys file)."""
    return svc.settings.redacted()


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _or_none(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
