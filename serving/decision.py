"""One client's decision: what the calling key may ask, which arm the client is in, what
the contact policy allows, and the ranked, explained, rule-checked offers. The routes
only turn it into HTTP."""

from __future__ import annotations

import dataclasses
import functools
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


class Forbidden(Exception):
    """The key may not make this request (a channel or a cold start it is not allowed)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


class KnownClient(RecommenderError):
    """`customer` (asserted attributes) sent for a client the bank's data knows: scoring
    the assertion instead of the data would get past suitability and eligibility."""


@dataclass(frozen=True)
class Decision:
    result: OfferList
    arm: Arm
    served: ServedModel  # the model that scored (for the holdout: the main model)
    objective: str
    cold: bool
    channel: str
    customer_input: dict[str, Any] | None = None  # a cold start's asserted inputs
    repeats: frozenset[str] = frozenset()  # products this key offered lately (not counted)

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
            customer_input=self.customer_input,
            repeats=sorted(o.product_id for o in result.offers if o.product_id in self.repeats),
        )  # fmt: skip


def decide(svc: Services, item: RecommendationRequest, key: ApiKey) -> Decision:
    """The decision for one request item by `key` (Forbidden, NotFound, NotReady or
    RecommenderError)."""
    permit(key, item)
    main = svc.holder.current
    if main is None:
        raise NotReady()
    catalog = len(main.bundle.product_ids)
    if item.k > catalog:
        raise RecommenderError(f"k={item.k} exceeds the catalog size ({catalog})")
    row = None if item.customer_id is None else svc.directory.row(item.customer_id)
    if item.customer is not None and row is not None:
        raise KnownClient(
            f"customer: customer_id {item.customer_id!r} is a client in the data as of "
            f"{svc.directory.as_of.date()}, so `customer` (asserted attributes and holdings) "
            "is not accepted for it; send customer_id alone (the bank's data is scored, with "
            "its suitability and eligibility rules). `customer` is only for a client the "
            "bank has not snapshotted yet"
        )
    if item.customer is None and row is None:
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
    asserted = item.customer.model_dump(mode="json") if item.customer is not None else None
    decision = functools.partial(
        Decision, arm=arm, served=served, objective=objective, cold=cold, channel=item.channel,
        customer_input=asserted,
    )  # fmt: skip
    ids = served.bundle.product_ids
    customer_id = item.customer_id or "new client"
    if arm.variant == HOLDOUT:
        return decision(OfferList(customer_id, [], [(p, HOLDOUT_REASON) for p in ids]))
    k, blocked, repeats = item.k, dict[int, str](), frozenset[str]()
    if item.customer_id is not None and svc.contact.enabled:
        k_allowed, blocked, repeats = _contact(svc, svc.contact, item.customer_id, key.id, ids)
        if k_allowed == 0:
            return decision(OfferList(customer_id, [], [(p, blocked[i]) for i, p in
                                                         enumerate(ids)]))  # fmt: skip
        k = k if k_allowed is None else min(k, k_allowed)
    if cold:
        state = served.bundle.state_from_frame(_cold_start_frame(item, served))
        # Asserted facts are strict: an attribute left out excludes what its rule guards.
        x, facts = None, served.bundle.asserted_facts(state)
    else:
        assert row is not None
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
    return decision(result, repeats=repeats)


def permit(key: ApiKey, item: RecommendationRequest) -> None:
    """Forbidden unless `key` may ask for `item`: its channel (a key tied to channels
    cannot step into another channel, e.g. out of the experiment running in its own) and
    a cold start (scoring attributes the caller asserts is a permission of its own).
    A keys-file entry that names neither allows both."""
    if not key.may_use_channel(item.channel):
        allowed = ", ".join(sorted(key.channels or ()))
        raise Forbidden(
            f"key {key.id!r} may not request channel {item.channel!r}; its channels: "
            f"{allowed} (send one of them, or ask an admin to add the channel to the key)"
        )
    if item.customer is not None and not key.cold_start:
        raise Forbidden(
            f"key {key.id!r} may not request cold starts (a `customer` with asserted "
            "attributes); send the customer_id of a client in the bank's data, or ask an "
            "admin for a key with cold_start allowed"
        )


def _contact(svc: Services, policy: ContactPolicy, customer_id: str, key_id: str,
             ids: list[str]) -> tuple[int | None, dict[int, str], frozenset[str]]:  # fmt: skip
    """The contact policy from the client's history in the event store, and the products
    this key offered the client within the repeat window (offering them again is a repeat
    that does not count toward the cap). With the store down the decision is made without
    it (counted in contact_policy_skipped_total)."""
    now = datetime.now(UTC)
    if not svc.audit.healthy:
        svc.metrics.contact_skipped.inc()
        return None, {}, frozenset()
    window = svc.settings.repeat_window_seconds
    try:
        made, declined = svc.events.contact_history(
            customer_id, now - timedelta(days=policy.window_days),
            now - timedelta(days=policy.decline_days),
        )  # fmt: skip
        repeats = (
            svc.events.counted_by(customer_id, key_id, now - timedelta(seconds=window))
            if window > 0 and policy.max_offers > 0 else set()
        )  # fmt: skip
    except UNAVAILABLE:
        svc.metrics.contact_skipped.inc()
        return None, {}, frozenset()
    allowed, blocked = policy.apply(made, declined, ids)
    return allowed, blocked, frozenset(repeats)


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
