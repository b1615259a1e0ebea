"""The HTTP routes. Thin: resolve the client, ask the offer engine, audit, answer."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from recommender import columns as C
from recommender.bundle import DROPPED, HOLDINGS
from recommender.errors import RecommenderError
from recommender.offer import OfferList
from serving.app import Services
from serving.events import DecisionRecord
from serving.keys import ApiKey
from serving.model_holder import ServedModel
from serving.schemas import (
    BatchItemError,
    BatchRequest,
    BatchResponse,
    ProductOut,
    RecommendationRequest,
    RecommendationResponse,
    ReloadResponse,
)
from serving.security import require

router = APIRouter()
Officer = Annotated[ApiKey, Depends(require("officer"))]
Reader = Annotated[ApiKey, Depends(require("officer", "analyst", "admin"))]
Analyst = Annotated[ApiKey, Depends(require("analyst", "admin"))]
Admin = Annotated[ApiKey, Depends(require("admin"))]


async def services(request: Request) -> Services:  # async: no thread hop for a lookup
    found: Services = request.app.state.services
    return found


Svc = Annotated[Services, Depends(services)]


class NotFound(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _served(svc: Services) -> ServedModel:
    served = svc.holder.current
    if served is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail="no model loaded yet; see /readyz")  # fmt: skip
    return served


@router.post("/v1/recommendations", response_model=RecommendationResponse, tags=["offers"],
             responses={404: {"description": "Unknown customer_id"},
                        422: {"description": "Invalid request"}})  # fmt: skip
async def recommend(body: RecommendationRequest, request: Request, svc: Svc, key: Officer) -> Any:
    """Ranked, explained, rule-checked offers for one client (known id or cold start).

    `async` on purpose, against the habit for CPU-bound routes: scoring one client takes
    well under a millisecond, less than the two thread hand-overs a sync route costs
    (measured in bench/bench_serving.py); the audit write is awaited, not blocked on."""
    served = _served(svc)
    try:
        result, cold = _offers_for(svc, served, [body])[0]
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=exc.detail) from exc
    response = _response(request.state.request_id, served, result)
    records = _records(key, served, [(request.state.request_id, body, result, cold)])
    try:
        await asyncio.wrap_future(svc.audit.submit(records))
    except Exception as exc:
        raise _audit_failed(svc, records) from exc
    _count_offers(svc, records)
    return JSONResponse(response)  # the shape is ours; skip re-validating it per request


@router.post("/v1/recommendations/batch", response_model=BatchResponse, tags=["offers"])
def recommend_batch(body: BatchRequest, request: Request, svc: Svc, key: Officer) -> Any:
    """Offers for up to 1,000 clients in one call; per-client errors are reported inline."""
    served = _served(svc)
    if len(body.requests) > svc.settings.max_batch:
        limit, got = svc.settings.max_batch, len(body.requests)
        raise RequestValidationError([{
            "loc": ("body", "requests"), "type": "too_long", "input": None,
            "msg": f"at most {limit} requests per batch (got {got})",
        }])  # fmt: skip
    results: list[Any] = []
    audited = []
    for i, item in enumerate(body.requests):
        request_id = f"{request.state.request_id}-{i}"
        try:
            result, cold = _offers_for(svc, served, [item])[0]
        except NotFound as exc:
            results.append(
                BatchItemError(customer_id=item.customer_id, status=404, detail=exc.detail)
            )
            continue
        except RecommenderError as exc:
            results.append(
                BatchItemError(customer_id=item.customer_id, status=422, detail=str(exc))
            )
            continue
        results.append(_response(request_id, served, result))
        audited.append((request_id, item, result, cold))
    _audit(svc, key, served, audited)
    return {"results": results}


def _offers_for(svc: Services, served: ServedModel,
                items: list[RecommendationRequest]) -> list[tuple[OfferList, bool]]:  # fmt: skip
    out = []
    catalog = len(served.bundle.product_ids)
    for item in items:
        if item.k > catalog:
            raise RecommenderError(f"k={item.k} exceeds the catalog size ({catalog})")
        if item.customer is not None:
            frame = _cold_start_frame(item, served)
            state = served.bundle.state_from_frame(frame)
            x, facts = None, None
        else:
            assert item.customer_id is not None
            row = svc.directory.row(item.customer_id)
            if row is None:
                raise NotFound(
                    f"customer_id {item.customer_id!r} is not in the data as of "
                    f"{svc.directory.as_of.date()}; to score a client the bank has not "
                    'snapshotted yet, send {"customer": {"attributes": {...}, '
                    '"holdings": [...]}} instead of customer_id'
                )
            state = svc.directory.client(served.bundle.options, row)
            x = served.features[row]
            facts = served.facts.take(np.array([row]))
        (result,) = served.engine.recommend(
            state, item.k, item.objective, item.explain, x=x, facts=facts,
            reasons=svc.settings.reasons_per_offer,
        )  # fmt: skip
        out.append((result, item.customer is not None))
    return out


def _cold_start_frame(item: RecommendationRequest, served: ServedModel) -> pd.DataFrame:
    assert item.customer is not None
    record: dict[str, Any] = dict(item.customer.attributes)
    record[C.CUSTOMER_ID] = item.customer_id or "new client"
    record[HOLDINGS] = list(item.customer.holdings)
    record[DROPPED] = list(item.customer.dropped)
    return served.bundle.coerce_attributes(pd.DataFrame([record]))


def _response(request_id: str, served: ServedModel, result: OfferList) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "customer_id": result.customer_id,
        "model": {"name": served.name, "version": served.version, "alias": served.alias},
        "recommendations": [offer.__dict__ for offer in result.offers],
        "excluded": [{"product_id": p, "reason": r} for p, r in result.excluded],
    }


def _records(key: ApiKey, served: ServedModel, decided: list[Any]) -> list[DecisionRecord]:
    return [
        DecisionRecord(
            request_id=request_id, key_id=key.id, customer_id=result.customer_id,
            cold_start=cold, model_name=served.name, model_version=served.version,
            objective=item.objective, k=item.k,
            offers=[{"product_id": o.product_id, "rank": o.rank, "score": o.score,
                     "probability": o.probability} for o in result.offers],
            excluded=[{"product_id": p, "reason": r} for p, r in result.excluded],
        )
        for request_id, item, result, cold in decided
    ]  # fmt: skip


def _audit(svc: Services, key: ApiKey, served: ServedModel, decided: list[Any]) -> None:
    """Write every decision before answering; without an audit row, no offer leaves."""
    records = _records(key, served, decided)
    try:
        svc.audit.write(records)
    except Exception as exc:
        raise _audit_failed(svc, records) from exc
    _count_offers(svc, records)


def _audit_failed(svc: Services, records: list[DecisionRecord]) -> HTTPException:
    svc.metrics.audit_failures.inc(len(records))
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail="the audit trail cannot be written, so no offer is served; retry shortly",
    )


def _count_offers(svc: Services, records: list[DecisionRecord]) -> None:
    for record in records:
        for offer in record.offers:
            svc.metrics.offers.labels(offer["product_id"]).inc()


@router.get("/v1/customers/{customer_id}", tags=["clients"])
def customer_view(customer_id: str, svc: Svc, key: Officer) -> Any:
    """The client view: attributes, value tier, holdings with since-when, recently
    dropped products, and the offers made to this client."""
    served = _served(svc)
    row = svc.directory.row(customer_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"customer_id {customer_id!r} is not in the data as of "
                            f"{svc.directory.as_of.date()}")  # fmt: skip
    view = svc.directory.view(row, served.bundle.options)
    view["offers"] = [
        {**offer, "created_at": offer["created_at"].isoformat(), "outcome": None}
        for offer in svc.events.offers_for(customer_id)
    ]
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
def readyz(svc: Svc, response: Response) -> dict[str, Any]:
    """Readiness: a model and the client data are loaded and the event store answers."""
    events_ok = svc.events.ping()
    status_ = svc.holder.status()
    ready = svc.holder.current is not None and events_ok
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"ready": ready, **status_, "customers": len(svc.directory),
            "as_of": svc.directory.as_of.date().isoformat(), "event_store": events_ok}  # fmt: skip


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
    """The service's settings (no secrets are kept in settings)."""
    return svc.settings.model_dump(mode="json")


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _or_none(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
