"""Request and response bodies of the HTTP API (OpenAPI documented, with examples)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scalar = str | float | int | bool | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerInput(Strict):
    """A client the bank has not snapshotted yet (cold start)."""

    attributes: dict[str, Scalar] = Field(
        default_factory=dict, max_length=200,
        examples=[{"segment": "top", "income": 180000.0, "birth_date": "1975-04-02",
                   "risk_tolerance": 4}],
    )  # fmt: skip
    holdings: list[str] = Field(default_factory=list, max_length=100,
                                examples=[["ind_cco_fin_ult1", "ind_nomina_ult1"]])  # fmt: skip
    dropped: list[str] = Field(default_factory=list, max_length=100)


class RecommendationRequest(Strict):
    customer_id: str | None = Field(default=None, min_length=1, max_length=128,
                                    examples=["C0000042"])  # fmt: skip
    customer: CustomerInput | None = None
    k: int = Field(default=3, ge=1, le=24, description="Offers to return (1 to catalog size)")
    explain: bool = Field(default=True, description="Reasons per offer and every exclusion")
    objective: Literal["propensity", "expected_value"] = "propensity"

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"customer_id": "C0000042", "k": 3, "explain": True, "objective": "propensity"},
            {"customer": {"attributes": {"segment": "top", "income": 180000.0},
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
    recommendations: list[OfferOut]
    excluded: list[Exclusion]


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
