"""Request and response bodies of the HTTP API (OpenAPI documented, with examples)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from recommender.bundle import AS_OF, MAX_TEXT_CHARS, RECORD_FIELDS
from recommender.experiment import MAX_VARIANTS, MAX_WEIGHT

Scalar = str | float | int | bool | None
# A cold start's attributes (CustomerInput): a few, short names, one short value each.
# The model knows a handful of attributes; nothing longer is a client fact, and whatever
# is accepted is stored in the audit trail and may be quoted back in reasons.
MAX_ATTRIBUTES = 64
ATTRIBUTE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
AttributeName = Annotated[str, StringConstraints(pattern=ATTRIBUTE_NAME_PATTERN, max_length=64)]
AttributeValue = (
    Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | float | int | bool | None
)
ProductId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerInput(Strict):
    """A client the bank has not snapshotted yet (cold start)."""

    attributes: dict[AttributeName, AttributeValue] = Field(
        default_factory=dict, max_length=MAX_ATTRIBUTES,
        description=f"At most {MAX_ATTRIBUTES} of the model's attributes, each one value: a "
                    f"text of at most {MAX_TEXT_CHARS} characters, a number, true/false or "
                    "null (unknown); dates in ISO 8601 (1975-04-02). A product whose rule "
                    "reads an attribute left out (age or birth date, income, risk "
                    "tolerance, segment) is not offered",
        examples=[{"segment": "top", "income": 180000.0, "birth_date": "1975-04-02",
                   "risk_tolerance": 4}],
    )  # fmt: skip
    holdings: list[ProductId] = Field(
        default_factory=list, max_length=100, description="Products held now, each once",
        examples=[["ind_cco_fin_ult1", "ind_nomina_ult1"]],
    )  # fmt: skip
    dropped: list[ProductId] = Field(default_factory=list, max_length=100,
                                     description="Products held before and closed, each once; "
                                                 "none also in holdings")  # fmt: skip

    @field_validator("attributes", mode="before")
    @classmethod
    def _bounded(cls, values: Any) -> Any:
        """Before the types are checked, for one error that names the attribute and says
        what to send (a union's type errors list every type, and quote nothing useful)."""
        if not isinstance(values, dict):
            return values  # the type check refuses it
        if len(values) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes (got {len(values)}); send "
                             "only the attributes the model knows")  # fmt: skip
        for name, value in values.items():
            if not isinstance(name, str) or not re.fullmatch(ATTRIBUTE_NAME_PATTERN, name):
                shown = repr(name) if len(repr(name)) <= 40 else f"{repr(name)[:37]}..."
                raise ValueError(f"attribute name {shown}: use letters, digits, _ . - (a "
                                 "letter or _ first), at most 64 characters")  # fmt: skip
            if name in RECORD_FIELDS and name != AS_OF:
                raise ValueError(f"attribute {name}: not an attribute; send it as "
                                 f"customer.{name} or customer_id")  # fmt: skip
            if isinstance(value, dict | list):
                what = "an object" if isinstance(value, dict) else "a list"
                raise ValueError(f"attribute {name}: {what} is not a value; send one text (at "
                                 f"most {MAX_TEXT_CHARS} characters), number, true/false, or "
                                 "null when it is unknown")  # fmt: skip
            if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
                raise ValueError(f"attribute {name}: a text of {len(value):,} characters; "
                                 f"send at most {MAX_TEXT_CHARS}")  # fmt: skip
            if isinstance(value, str) and _CONTROL.search(value):
                raise ValueError(f"attribute {name}: control characters (a line break, a "
                                 "tab) are not allowed in a value; send plain text")  # fmt: skip
        return values

    @model_validator(mode="after")
    def _each_product_once(self) -> CustomerInput:
        """A product held twice, or both held and dropped, is no client's state (and the
        audit row would keep the contradiction as asserted)."""
        for field, products in (("holdings", self.holdings), ("dropped", self.dropped)):
            seen: set[str] = set()
            for product in products:
                if product in seen:
                    raise ValueError(f"{field}: {product!r} is listed more than once; list "
                                     "each product once")  # fmt: skip
                seen.add(product)
        dropped = set(self.dropped)
        both = [p for p in self.holdings if p in dropped]
        if both:
            raise ValueError(f"{both[0]!r} is in both holdings and dropped; a product is held "
                             "now (holdings) or was closed (dropped), not both")  # fmt: skip
        return self

    @field_validator("attributes")
    @classmethod
    def _finite(cls, values: dict[str, Scalar]) -> dict[str, Scalar]:
        """JSON has no NaN or Infinity, but Python's parser accepts them; a NaN would pass
        for an unknown value (and skip the rule that reads it). Ranges: the model's."""
        for name, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"attribute {name}: {value} is not a number; send null (or "
                                 "leave the attribute out) when it is unknown")  # fmt: skip
        return values


# A client id: a letter or digit, then letters, digits and _ . : - (Santander's numbers,
# Zimnat's `4WKQSBB`, `C0000042`). Never a first character a spreadsheet would run as a
# formula (= + - @) nor a control character that would forge a log line.
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class RecommendationRequest(Strict):
    customer_id: str | None = Field(default=None, min_length=1, max_length=128,
                                    pattern=CUSTOMER_ID_PATTERN, examples=["C0000042"],
                                    description="The bank's client id: a letter or digit, "
                                                "then letters, digits and _ . : -")  # fmt: skip
    customer: CustomerInput | None = None
    k: int = Field(default=3, ge=1, le=24, description="Offers to return (1 to catalog size)")
    explain: bool = Field(default=True, description="Reasons per offer and every exclusion")
    objective: Literal["propensity", "expected_value"] = "propensity"
    channel: str = Field(default="branch", min_length=1, max_length=64,
                         pattern=r"^[A-Za-z0-9_.-]+$",
                         description="Where the officer meets the client; experiments run "
                                     "per channel")  # fmt: skip

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"customer_id": "C0000042", "k": 3, "explain": True, "objective": "propensity"},
            {"customer": {"attributes": {"segment": "top", "income": 180000.0,
                                         "birth_date": "1975-04-02", "risk_tolerance": 4},
                          "holdings": ["ind_cco_fin_ult1"]}, "k": 3},
        ]},
    )  # fmt: skip

    @model_validator(mode="after")
    def _who(self) -> RecommendationRequest:
        if self.customer_id is None and self.customer is None:
            raise ValueError(
                "send customer_id, or customer (attributes and holdings) for a new client"
            )
        return self


class BatchRequest(Strict):
    requests: list[RecommendationRequest] = Field(min_length=1, max_length=1000)


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str | None


class OfferOut(BaseModel):
    rank: int
    product_id: str
    name: str
    category: str | None
    score: float
    probability: float = Field(description="Calibrated probability of acquisition")
    expected_value: float = Field(description="probability x product margin")
    reasons: list[str]


class Exclusion(BaseModel):
    product_id: str
    reason: str


class RecommendationResponse(BaseModel):
    request_id: str
    customer_id: str
    model: ModelInfo
    experiment: str | None = Field(description="The running experiment the client is in")
    variant: str | None = Field(description="The client's arm: a variant or 'holdout'")
    policy: Literal["model", "popularity"]
    channel: str
    recommendations: list[OfferOut]
    excluded: list[Exclusion]


Outcome = Literal["shown", "accepted", "declined", "converted"]


class FeedbackRequest(Strict):
    request_id: str = Field(min_length=1, max_length=64)
    product_id: str = Field(min_length=1, max_length=128, examples=["ind_ctop_fin_ult1"])
    outcome: Outcome

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"request_id": "3f2a...", "product_id": "ind_ctop_fin_ult1", "outcome": "accepted"}
        ]},
    )  # fmt: skip


class FeedbackResponse(BaseModel):
    status: Literal["recorded", "duplicate"]
    request_id: str
    product_id: str
    outcome: Outcome


class FeedbackBatch(Strict):
    items: list[FeedbackRequest] = Field(min_length=1, max_length=1000)


class FeedbackError(BaseModel):
    request_id: str
    product_id: str
    status: int
    detail: str


class FeedbackBatchResponse(BaseModel):
    results: list[FeedbackResponse | FeedbackError]


class VariantIn(Strict):
    name: str = Field(min_length=1, max_length=64, examples=["challenger"])
    weight: float = Field(default=1.0, gt=0, le=MAX_WEIGHT, allow_inf_nan=False,
                          description="Traffic weight, relative (1 and 3: a 25/75 split); "
                                      f"in (0, {MAX_WEIGHT:g}]")  # fmt: skip
    model: str | None = Field(default=None, max_length=256,
                              description="Registry alias (champion), version (7) or a "
                                          "models:/ URI; default: the service's model",
                              examples=["challenger"])  # fmt: skip
    objective: Literal["propensity", "expected_value"] | None = None
    policy: Literal["model", "popularity"] = "model"


class ExperimentIn(Strict):
    name: str = Field(min_length=1, max_length=64, examples=["nbo-challenger-2026-12"])
    salt: str | None = Field(default=None, max_length=128,
                             description="Hash salt; default: the name")  # fmt: skip
    channel: str = Field(default="branch", min_length=1, max_length=64,
                         pattern=r"^[A-Za-z0-9_.-]+$")  # fmt: skip
    control: str | None = Field(default=None, description="Default: the first variant")
    holdout: float = Field(default=0.0, ge=0, lt=1, description="Share that gets no offer")
    variants: list[VariantIn] = Field(min_length=1, max_length=MAX_VARIANTS)
    start: str | None = Field(default=None, description="ISO 8601; default: now")
    end: str | None = Field(default=None, description="ISO 8601; default: until stopped")
    description: str = Field(default="", max_length=2000)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "name": "nbo-challenger-2026-12", "holdout": 0.05,
            "variants": [{"name": "control", "model": "champion"},
                         {"name": "treatment", "model": "challenger"}],
        }]},
    )  # fmt: skip


class ExperimentOut(BaseModel):
    name: str
    salt: str
    channel: str
    control: str
    holdout: float
    variants: list[VariantIn]
    start: str
    end: str | None
    stopped_at: str | None
    description: str
    status: Literal["scheduled", "running", "stopped", "ended"]
    shares: dict[str, float]


class BatchItemError(BaseModel):
    customer_id: str | None
    status: int
    detail: str


class BatchResponse(BaseModel):
    results: list[RecommendationResponse | BatchItemError]


class ProductOut(BaseModel):
    product_id: str
    name: str
    category: str | None = None
    risk_level: float | None = None
    margin: float | None = None
    family: str | None = None
    eligibility: dict[str, float | list[str] | None]


class ReloadResponse(BaseModel):
    status: Literal["checking", "done"]
    result: str | None = None
    model: dict[str, object] | None = None
