"""Ranked, explained, rule-checked offers for clients: what an officer is shown.

The model ranks; the rule book decides what may be offered; one product per family per
list; every product not offered is listed with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recommender import columns as C
from recommender.bundle import OBJECTIVES, ModelBundle
from recommender.errors import ConfigError
from recommender.ranking import top_k_distinct
from recommender.rules import ClientFacts, RuleBook
from recommender.state import CustomerState


@dataclass(frozen=True)
class Offer:
    rank: int
    product_id: str
    name: str
    category: str | None
    score: float
    probability: float
    expected_value: float
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OfferList:
    customer_id: str
    offers: list[Offer]
    excluded: list[tuple[str, str]]  # (product_id, reason)


class OfferEngine:
    def __init__(self, bundle: ModelBundle, rules: RuleBook) -> None:
        self.bundle = bundle
        self.rules = rules
        self.groups = (
            rules.family_index() if rules.settings.families else np.full(len(rules.ids), -1)
        )
        products = bundle.products
        self.names = rules.names  # same catalog, same order (checked where both are loaded)
        self.categories = [
            str(v) if v == v else None for v in products.get(C.CATEGORY, [None] * len(products))
        ]

    def recommend(
        self,
        state: CustomerState,
        k: int = 3,
        objective: str = "propensity",
        explain: bool = True,
        x: sp.csr_matrix | None = None,
        blocked: list[dict[int, str]] | None = None,
        facts: ClientFacts | None = None,
        reasons: int = 3,
        ranking: np.ndarray | None = None,
    ) -> list[OfferList]:
        """Offers per client. `x` and `facts`: the clients' precomputed features and rule
        facts (then `state.attributes` is not read); `blocked`: extra exclusions per client
        ({product index: reason}), e.g. from a contact policy; `ranking`: a key per
        product that ranks instead of the model (an offer policy such as popularity;
        probabilities and values still come from the model, reasons are not given)."""
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective {objective!r}: use {' or '.join(OBJECTIVES)}")
        model = self.bundle.model
        x = model.features(state) if x is None else x
        scores = model.score_features(x, state)
        probability = model.predict_proba(state, scores)
        value = probability * self.bundle.margins
        decision = self.rules.decide(state, facts)
        excluded_why = decision.reasons
        mask = decision.blocked.copy()
        for row, extra in enumerate(blocked or []):
            for product, why in extra.items():
                if not mask[row, product]:
                    mask[row, product] = True
                    excluded_why[row][product] = why
        key = scores if objective == "propensity" else value
        if ranking is not None:
            key = np.broadcast_to(np.asarray(ranking, dtype=scores.dtype), scores.shape)
            reasons = 0
        items, _, displaced = top_k_distinct(key, k, mask, self.groups)
        words = model.reasons(state, items, n=reasons, x=x) if explain and reasons else None
        return [
            self._offer_list(state, row, items[row], scores, probability, value,
                             words[row] if words else None, excluded_why[row], displaced[row])
            for row in range(len(state))
        ]  # fmt: skip

    def _offer_list(self, state: CustomerState, row: int, chosen: np.ndarray,
                    scores: np.ndarray, probability: np.ndarray, value: np.ndarray,
                    words: list[list[str]] | None, reasons: dict[int, str],
                    displaced: np.ndarray) -> OfferList:  # fmt: skip
        ids = self.bundle.product_ids
        offers = [
            Offer(rank + 1, ids[p], self.names[p], self.categories[p], float(scores[row, p]),
                  float(probability[row, p]), float(value[row, p]),
                  words[rank] if words else [])
            for rank, p in enumerate(chosen) if p >= 0
        ]  # fmt: skip
        offered = {int(p) for p in chosen if p >= 0}
        excluded = []
        for p, pid in enumerate(ids):
            if p in offered:
                continue
            if p in reasons:
                why = reasons[p]
            elif displaced[p] >= 0:
                winner = self.names[int(chosen[displaced[p]])]
                why = f"family {self.rules.family[p]}: {winner} offered at rank {displaced[p] + 1}"
            else:
                why = f"ranked below the top {len(chosen)}"
            excluded.append((pid, why))
        return OfferList(str(state.customer_ids[row]), offers, excluded)
