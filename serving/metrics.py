"""Prometheus metrics of one app (its own registry, so test apps do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "Requests by route and status",
                                ["method", "route", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Request latency by route",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.offers = Counter("recommendations_served_total", "Offers served by product",
                              ["product_id"], registry=self.registry)  # fmt: skip
        self.model = Gauge("model_info", "The model being served (value 1)",
                           ["name", "version", "source"], registry=self.registry)  # fmt: skip
        self.reload_failures = Counter("model_reload_failures_total", "Failed model loads",
                                       registry=self.registry)  # fmt: skip
        self.feedback = Counter("feedback_total", "Offer outcomes recorded", ["outcome"],
                                registry=self.registry)  # fmt: skip
        self.swaps = Counter("model_swaps_total", "Models swapped in", registry=self.registry)
        self.audit_failures = Counter("audit_write_failures_total",
                                      "Decisions not served because the audit write failed",
                                      registry=self.registry)  # fmt: skip

        self.store_up = Gauge("event_store_up", "1 while the event store takes writes",
                              registry=self.registry)  # fmt: skip
        self.store_up.set(1)
        self.audit_queued = Gauge("audit_queue_events", "Events waiting to be written",
                                  registry=self.registry)  # fmt: skip
        self.audit_deferred = Counter(
            "audit_deferred_total",
            "Answers sent before their event was committed (the store was slow or down; the "
            "event stays queued)", registry=self.registry,
        )  # fmt: skip
        self.audit_rejected = Counter(
            "audit_rejected_total",
            "Requests refused because the queue of unwritten events was full",
            registry=self.registry,
        )  # fmt: skip
        self.audit_refused = Gauge(
            "audit_refused_events",
            "Events the store refused on their own (a constraint or bad data), logged",
            registry=self.registry,
        )  # fmt: skip
        self.contact_skipped = Counter(
            "contact_policy_skipped_total",
            "Decisions made without the contact policy (the event store could not be read)",
            registry=self.registry,
        )  # fmt: skip

    def set_model(self, name: str, version: str, source: str) -> None:
        self.model.clear()
        self.model.labels(name=name, version=version, source=source).set(1)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
