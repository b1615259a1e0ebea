"""Service settings from environment variables (RECOMMENDER_*) and/or an env file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recommender.errors import redact


class ServiceSettings(BaseSettings):
    """Validated at start-up; a bad value stops the service with a message naming it.

    URLs (`events_url`, `tracking_uri`) may carry a password (`postgresql://u:pw@db/x`).
    They stay plain `str` for the code that connects with them (a `SecretStr` would turn
    into `**********` wherever someone forgets `.get_secret_value()`: a wrong URL at run
    time instead of a leak), and are hidden where settings are shown: `redacted()` (the
    admin settings route) and `repr` (logs, tracebacks).
    """

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
    repeat_window_seconds: float = Field(
        default=600.0, ge=0, le=86_400,
        description="A product the same key offered the same client within this window "
                    "does not count again toward max_offers_per_week; 0 = every offer counts",
    )  # fmt: skip
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
    log_format: Literal["text", "json"] = Field(
        default="text", description="Service log lines: text, or one JSON object per line"
    )
    # Per-key limits on the offer routes (serving/limits.py): tokens, a known client
    # costing 1 and a cold start rate_limit_cold_start_cost; a batch the sum of its items.
    rate_limit_per_minute: int = Field(default=6000, ge=0, le=10_000_000,
                                       description="Tokens a key earns per minute; "
                                                   "0 = no rate limit")  # fmt: skip
    rate_limit_burst: int = Field(default=2000, ge=1, le=10_000_000,
                                  description="Tokens a key may spend at once (a batch "
                                              "costing more waits for a full bucket)")  # fmt: skip
    rate_limit_cold_start_cost: int = Field(default=10, ge=1, le=1000,
                                            description="Tokens per cold start (a known "
                                                        "client costs 1)")  # fmt: skip
    rate_limit_concurrency: int = Field(default=32, ge=0, le=10_000,
                                        description="Offer requests a key may have in "
                                                    "flight; 0 = no cap")  # fmt: skip
    rate_limit_url: str | None = Field(
        default=None, pattern=r"^(redis|rediss|unix)://",
        description="Redis URL (redis://host:6379/0) to share the limits between workers "
                    "and hosts; default: each worker counts on its own",
    )  # fmt: skip
    rate_limit_prefix: str = Field(default="recommender:limits:", min_length=1,
                                   max_length=200,
                                   description="Prefix of the Redis keys")  # fmt: skip
    max_cold_starts_per_batch: int = Field(default=100, ge=0, le=1000,
                                           description="Cold starts (items with 'customer') "
                                                       "allowed in one batch")  # fmt: skip
    max_experiments: int = Field(default=20, ge=1, le=1000,
                                 description="Experiments running or scheduled at "
                                             "once")  # fmt: skip

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON values, with the passwords of URLs hidden (`u:***@`)."""
        return {name: redact(value) if isinstance(value, str) else value
                for name, value in self.model_dump(mode="json").items()}  # fmt: skip

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) else value

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
