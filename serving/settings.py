"""Service settings from environment variables (RECOMMENDER_*) and/or an env file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Validated at start-up; a bad value stops the service with a message naming it."""

    model_config = SettingsConfigDict(
        env_prefix="RECOMMENDER_", env_file=".env", extra="forbid", frozen=True
    )

    model_uri: str = "models:/cross-sell-recommender@champion"
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)",
    )
    data_dir: Path = Field(default=Path("demo/bank"), description="Bank data directory")
    events_url: str = Field(default="sqlite:///events.db", description="SQLAlchemy URL")
    api_keys_file: Path = Path("api_keys.json")
    local_model_dir: Path = Field(default=Path("models"), description="Last good model copy")
    poll_seconds: float = Field(default=60.0, ge=0, description="Registry poll; 0 = never")
    max_batch: int = Field(default=1000, ge=1, le=1000)
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024,
                                description="Larger request bodies get 413")  # fmt: skip
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed (CORS); none by default"
    )
    eligibility_rules: bool = True
    suitability_rules: bool = True
    family_rules: bool = True
    reasons_per_offer: int = Field(default=3, ge=0, le=10)
    decline_suppress_days: int = Field(
        default=30, ge=0, le=3650,
        description="After a decline, the product is not offered again for this long; 0 = off",
    )  # fmt: skip
    max_offers_per_week: int = Field(default=6, ge=0, le=1000,
                                     description="Offers per client per rolling 7 days; "
                                                 "0 = no limit")  # fmt: skip
    audit_wait_seconds: float = Field(
        default=2.0, gt=0, le=60,
        description="How long a request waits for its audit commit before answering anyway "
                    "(the event stays queued)",
    )  # fmt: skip
    audit_max_pending: int = Field(
        default=50_000, ge=100,
        description="Events kept in memory while the event store is down; beyond it "
                    "requests are refused (503) and counted",
    )  # fmt: skip
    spill_dir: Path = Field(
        default=Path("spill"),
        description="Where events still unwritten at shutdown are kept (written at the "
                    "next start)",
    )  # fmt: skip
    shutdown_flush_seconds: float = Field(default=20.0, ge=0, le=600)
    experiment_refresh_seconds: float = Field(default=5.0, ge=0,
                                              description="How often a worker re-reads "
                                                          "experiment definitions")  # fmt: skip

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> ServiceSettings:
        if self.audit_max_pending < self.max_batch:
            raise ValueError(
                f"audit_max_pending ({self.audit_max_pending}) must be at least max_batch "
                f"({self.max_batch}), or every full batch would be refused"
            )
        return self

    @field_validator("events_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("events_url must be a SQLAlchemy URL such as sqlite:///events.db")
        return value
