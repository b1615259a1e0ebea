"""One client's decision: which arm they are in, what the contact policy allows, and
the ranked, explained, rule-checked offers. The routes only turn it into HTTP."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.bundle import DROPPED, HOLDINGS
from recommender.contact import ContactPolicy
from recommender.errors import RecommenderError
from recommender.experiment import HOLDOUT
from recommender.offer import OfferList
from serving.events import UNAVAILABLE, DecisionRecord
from serving.experiments import Arm
from serving.keys import ApiKey
from serving.model_holder import ServedModel
from serving.schemas import RecommendationRequest

if TYPE_CHECKING:
    from serving.app import Services

HOLDOUT_REASON = "experiment holdout: this client is in the control group that gets no offer"


class NotFound(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


class NotReady(Exception):
    """No model is loaded yet."""


@dataclass(frozen=True)
class Decision:
    result: OfferList
    arm: Arm
    served: ServedModel  # the model that scored (for the holdout: the main model)
    objective: str
    cold: bool
    channel: str

    def response(self, request_id: str) -> dict[str, Any]:
        served = self.served
        return {
            "request_id": request_id,
            "customer_id": self.result.customer_id,
            "model": {"name": served.name, "version": served.version, "alias": served.alias},
            "experiment": self.arm.experiment,
            "variant": self.arm.variant,
            "policy": self.arm.policy,
            "channel": self.channel,
            "recommendations": [offer.__dict__ for offer in self.result.offers],
            "excluded": [{"product_id": p, "reason": r} for p, r in self.result.excluded],
        }

    def record(self, request_id: str, key: ApiKey, k: int) -> DecisionRecord:
        result = self.result
        return DecisionRecord(
            request_id=request_id, key_id=key.id, customer_id=result.customer_id,
            cold_start=self.cold, model_name=self.served.name,
            model_version=self.served.version, objective=self.objective, k=k,
            offers=[{"product_id": o.product_id, "rank": o.rank, "score": o.score,
                     "probability": o.probability} for o in result.offers],
            excluded=[{"product_id": p, "reason": r} for p, r in result.excluded],
            channel=self.channel, experiment=self.arm.experiment, variant=self.arm.variant,
        )  # fmt: skip


def decide(svc: Services, item: RecommendationRequest) -> Decision:
    """The decision for one request item (NotFound, NotReady or RecommenderError)."""
    main = svc.holder.current
    if main is None:
        raise NotReady()
    catalog = len(main.bundle.product_ids)
    if item.k > catalog:
        raise RecommenderError(f"k={item.k} exceeds the catalog size ({catalog})")
    row = None
    if item.customer is None:
        assert item.customer_id is not None
        row = svc.directory.row(item.customer_id)
        if row is None:
            raise NotFound(
                f"customer_id {item.customer_id!r} is not in the data as of "
                f"{svc.directory.as_of.date()}; to score a client the bank has not "
                'snapshotted yet, send {"customer": {"attributes": {...}, '
                '"holdings": [...]}} instead of customer_id'
            )
    arm = svc.experiments.arm(item.channel, item.customer_id)
    served = arm.served or main
    objective = arm.objective or item.objective
    cold = item.customer is not None
    ids = served.bundle.product_ids
    customer_id = item.customer_id or "new client"
    if arm.variant == HOLDOUT:
        result = OfferList(customer_id, [], [(p, HOLDOUT_REASON) for p in ids])
        return Decision(result, arm, served, objective, cold, item.channel)
    k, blocked = item.k, dict[int, str]()
    if item.customer_id is not None and svc.contact.enabled:
        k_allowed, blocked = _contact(svc, svc.contact, item.customer_id, ids)
        if k_allowed == 0:
            result = OfferList(customer_id, [], [(p, blocked[i]) for i, p in enumerate(ids)])
            return Decision(result, arm, served, objective, cold, item.channel)
        k = k if k_allowed is None else min(k, k_allowed)
    if cold:
        state = served.bundle.state_from_frame(_cold_start_frame(item, served))
        x, facts = None, None
    else:
        assert row is not None and item.customer_id is not None
        state = svc.directory.client(served.bundle.options, row, served.bundle.model.reranked)
        x = served.features[row]
        facts = served.facts.take(np.array([row]))
    ranking = svc.popularity if arm.policy == "popularity" else None
    (result,) = served.engine.recommend(
        state, k, objective, item.explain, x=x, facts=facts, blocked=[blocked] if blocked else None,
        reasons=svc.settings.reasons_per_offer, ranking=ranking,
    )  # fmt: skip
    if ranking is not None and item.explain:
        result = _popularity_reasons(result, ids, ranking)
    return Decision(result, arm, served, objective, cold, item.channel)


def _contact(svc: Services, policy: ContactPolicy, customer_id: str,
             ids: list[str]) -> tuple[int | None, dict[int, str]]:  # fmt: skip
    """The contact policy from the client's history in the event store; with the store
    down the decision is made without it (counted in contact_policy_skipped_total)."""
    now = datetime.now(UTC)
    if not svc.audit.healthy:
        svc.metrics.contact_skipped.inc()
        return None, {}
    try:
        made, declined = svc.events.contact_history(
            customer_id, now - timedelta(days=policy.window_days),
            now - timedelta(days=policy.decline_days),
        )  # fmt: skip
    except UNAVAILABLE:
        svc.metrics.contact_skipped.inc()
        return None, {}
    return policy.apply(made, declined, ids)


def _popularity_reasons(result: OfferList, ids: list[str], share: np.ndarray) -> OfferList:
    index = {p: i for i, p in enumerate(ids)}
    offers = [
        dataclasses.replace(offer, reasons=[
            f"popularity policy: held by {share[index[offer.product_id]]:.0%} of clients"
        ])
        for offer in result.offers
    ]  # fmt: skip
    return dataclasses.replace(result, offers=offers)


def _cold_start_frame(item: RecommendationRequest, served: ServedModel) -> pd.DataFrame:
    assert item.customer is not None
    record: dict[str, Any] = dict(item.customer.attributes)
    record[C.CUSTOMER_ID] = item.customer_id or "new client"
    record[HOLDINGS] = list(item.customer.holdings)
    record[DROPPED] = list(item.customer.dropped)
    return served.bundle.coerce_attributes(pd.DataFrame([record]))
