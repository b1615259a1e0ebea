"""Bad input and security over real HTTP: the whole API fuzzed from its own OpenAPI
document (schemathesis), request size limits, CORS, security headers, and what the logs
may contain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from serving.app import create_app
from serving.security import SECURITY_HEADERS
from tests.serving_fixtures import API_KEY, LiveServer, World, live_server, make_world

ADMIN_ONLY = ("/v1/admin/", "/v1/experiments")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("security"))


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[LiveServer]:
    with live_server(create_app(world.settings("security"))) as live:
        yield live


def role_for(method: str, path: str) -> str:
    """The role that may call a route (from the route table in test_serving)."""
    if path.startswith("/v1/admin/") or (method == "POST" and path.startswith("/v1/experiments")):
        return "admin"
    if path in ("/metrics",) or path.startswith("/v1/experiments"):
        return "analyst"
    return "officer"


def test_fuzzing_finds_no_server_error_and_every_answer_matches_the_schema(
    server: LiveServer, world: World
) -> None:
    """Every operation of the OpenAPI document, with generated requests (valid and
    invalid bodies, paths, queries) and the right role's key: never a 5xx other than the
    documented 503s, every documented response matches its schema, and the same request
    without a key is refused (401)."""
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @settings(max_examples=20, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            key = world.keys[role_for(case.method, case.path)]
            response = case.call(headers={API_KEY: key})
            if response.status_code != 503:  # 503: documented degradation
                case.validate_response(response, checks=[not_a_server_error,
                                                         response_schema_conformance])  # fmt: skip
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name.lower()) == [value]
            if case.path not in ("/healthz", "/readyz"):
                anonymous = case.call(headers={API_KEY: ""})
                assert anonymous.status_code == 401, (case.method, case.path, anonymous.text)

        fuzz()


def test_the_openapi_document_declares_the_key_on_every_protected_route(
    server: LiveServer,
) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    scheme = document["components"]["securitySchemes"]["APIKeyHeader"]
    assert scheme == {"type": "apiKey", "in": "header", "name": API_KEY,
                      "description": "API key; roles: officer, analyst, admin"}  # fmt: skip
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            protected = path not in ("/healthz", "/readyz")
            assert bool(operation.get("security")) == protected, (method, path)


# -- request limits --------------------------------------------------------------------------


def test_a_huge_body_is_refused_before_it_is_read(server: LiveServer, world: World) -> None:
    headers = {API_KEY: world.keys["officer"], "content-type": "application/json"}
    big = b'{"requests": [' + b'{"customer_id": "C0000001"},' * 120_000 + b"]}"
    assert len(big) > 2 * 1024 * 1024
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/v1/recommendations/batch", content=big, headers=headers)
    assert response.status_code == 413
    assert response.json()["detail"].startswith("request body over 2,097,152 bytes")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


def test_a_chunked_body_is_cut_off_at_the_limit(server: LiveServer, world: World) -> None:
    """No Content-Length: the limit is applied while the body streams in."""
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"customer_id": "'
        for _ in range(4096):  # 4 MiB in all, if nobody stops it
            sent += 1024
            yield b"x" * 1024
        yield b'"}'

    headers = {API_KEY: world.keys["officer"], "content-type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        try:
            response = client.post("/v1/recommendations", content=chunks(), headers=headers)
        except httpx.HTTPError:
            return  # the server closed the connection mid-upload: refused, nothing kept
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"customer_id": "C0000001", "k": 0}, ["body", "k"]),
        ({"customer_id": "C0000001", "k": 25}, ["body", "k"]),
        ({"requests": [{"customer_id": "C1"}] * 1001}, ["body", "requests"]),
        ({"customer_id": "x" * 129}, ["body", "customer_id"]),
        ({"customer": {"attributes": {f"a{i}": 1 for i in range(201)}}},
         ["body", "customer", "attributes"]),
    ],
)  # fmt: skip
def test_sizes_and_counts_outside_the_limits_are_field_errors(
    server: LiveServer, world: World, body: dict[str, Any], where: list[str]
) -> None:
    path = "/v1/recommendations/batch" if "requests" in body else "/v1/recommendations"
    with server.client(world.keys["officer"]) as client:
        response = client.post(path, json=body)
    assert response.status_code == 422
    assert where in [e["loc"][: len(where)] for e in response.json()["detail"]]


# -- CORS, headers, logs ---------------------------------------------------------------------


def test_cors_is_off_by_default(server: LiveServer) -> None:
    preflight = httpx.options(
        f"{server.url}/v1/recommendations",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    plain = httpx.get(f"{server.url}/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in plain.headers


def test_cors_admits_only_the_configured_origins(world: World) -> None:
    settings_ = world.settings("cors", cors_origins=["https://officer.bank.example"])
    with live_server(create_app(settings_)) as live:
        good = httpx.options(f"{live.url}/v1/recommendations", headers={
            "Origin": "https://officer.bank.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key,content-type"})  # fmt: skip
        assert good.headers["access-control-allow-origin"] == "https://officer.bank.example"
        bad = httpx.options(f"{live.url}/v1/recommendations", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert "access-control-allow-origin" not in bad.headers


def test_logs_hold_no_key_attribute_or_score(
    server: LiveServer, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Everything the service logs while serving, failing and being refused: at most
    customer and request ids, never a key, a client attribute, a score or a probability."""
    caplog.set_level(logging.DEBUG)
    secret_income, secret_birth = 734_521.25, "1961-07-19"
    attributes = {"segment": "top", "income": secret_income, "birth_date": secret_birth,
                  "risk_tolerance": 4}  # fmt: skip
    officer = world.keys["officer"]
    seen: list[str] = []
    with server.client(officer) as client:
        made = client.post("/v1/recommendations", json={"customer_id": "C0000002", "k": 3})
        seen += [str(o["score"]) for o in made.json()["recommendations"]]
        seen += [str(o["probability"]) for o in made.json()["recommendations"]]
        cold = client.post("/v1/recommendations",
                           json={"customer": {"attributes": attributes}, "k": 3})  # fmt: skip
        assert cold.status_code == 200
        client.post("/v1/recommendations", json={"customer": {"attributes": {"income": "lots"}}})
        client.post("/v1/feedback", json={"request_id": made.json()["request_id"],
                                          "product_id": "nope", "outcome": "declined"})  # fmt: skip
    httpx.post(f"{server.url}/v1/recommendations", headers={API_KEY: officer + "x"}, json={})
    with server.client(world.keys["analyst"]) as client:
        client.post("/v1/admin/reload")  # 403
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    for secret in [*world.keys.values(), officer + "x", str(secret_income), secret_birth,
                   "734521", *seen]:  # fmt: skip
        assert secret not in logged, f"{secret!r} appears in the logs"
