"""The next-best-offer service over real HTTP: a uvicorn server on a free port, a real
(temporary) MLflow store with a trained model, a synthetic bank, API keys per role and
an SQLite audit trail.

Two stores are used: the main one (one champion, never changed) behind the module's main
server, and an "update" store whose registry the live-update tests change (new versions,
promotions, deleted artifacts) behind a server of its own. Tests that need a broken or
different service build their own app from `ServiceSettings` or from `build_services`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient
from sqlalchemy import select

from recommender import columns as C
from recommender.catalog import bank_catalog
from recommender.errors import ConfigError, RecommenderError
from serving.app import build_services, create_app
from serving.events import EventStore, decisions, offers
from serving.keys import digest
from tests.serving_fixtures import (
    MODEL_NAME,
    UNREACHABLE_MLFLOW,
    LiveServer,
    World,
    latest_holdings,
    live_server,
    make_world,
    metric_value,
    promote_to_champion,
    store_uri,
    train_into,
)
from training.tracking import configure

REC = "/v1/recommendations"
BATCH = "/v1/recommendations/batch"
CATALOG = [str(p) for p in bank_catalog()[C.PRODUCT_ID]]
MARGINS = dict(zip(CATALOG, bank_catalog()[C.MARGIN].astype(float), strict=True))
AS_OF = "2026-10-31"  # the synthetic bank's last snapshot
UNKNOWN_DETAIL = (
    "customer_id 'nobody' is not in the data as of 2026-10-31; to score a client the bank "
    'has not snapshotted yet, send {"customer": {"attributes": {...}, "holdings": [...]}} '
    "instead of customer_id"
)
AUDIT_DETAIL = "the audit trail cannot be written, so no offer is served; retry shortly"
NO_MODEL_DETAIL = "no model loaded yet; see /readyz"
# Ages as of 2026-10-31: 40.08 and 10.08 years.
ADULT = {
    "segment": "individual", "sex": "V", "birth_date": "1986-10-01", "join_date": "2015-03-01",
    "income": 50000, "risk_tolerance": 3, "region": "MADRID", "channel": "KHE",
}  # fmt: skip
CHILD = {**ADULT, "segment": "student", "birth_date": "2016-10-01", "income": 0}
CURRENT_ACCOUNT, PARTICULAR_ACCOUNT = "ind_cco_fin_ult1", "ind_ctop_fin_ult1"
JUNIOR, GUARANTEES, MORTGAGE = "ind_ctju_fin_ult1", "ind_aval_fin_ult1", "ind_hip_fin_ult1"
CREDIT_CARD, SECURITIES, FUNDS = "ind_tjcr_fin_ult1", "ind_valo_fin_ult1", "ind_fond_fin_ult1"
MAIN_ACCOUNTS = {CURRENT_ACCOUNT, "ind_ctma_fin_ult1", PARTICULAR_ACCOUNT, "ind_ctpp_fin_ult1"}


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The bank, the main MLflow store with version 1 as champion, and the keys file."""
    made = make_world(tmp_path_factory.mktemp("serving"))
    READINESS_KEY["key"] = made.keys["analyst"]  # every server of this module uses its keys
    return made


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[LiveServer]:
    with live_server(create_app(world.settings("main"))) as live:
        yield live


@pytest.fixture(scope="module")
def holdings(world: World) -> dict[str, set[str]]:
    return latest_holdings(world.bank_dir)


@pytest.fixture(scope="module")
def update_world(world: World, tmp_path_factory: pytest.TempPathFactory) -> World:
    """A store of its own (same bank, same keys) for the tests that change the registry."""
    home = tmp_path_factory.mktemp("update")
    uri = store_uri(home)
    outcome = train_into(world.bank_dir, uri, home)
    return World(home, world.bank_dir, uri, world.keys_file, world.keys, outcome.version)


@pytest.fixture(scope="module")
def update_server(update_world: World) -> Iterator[LiveServer]:
    with live_server(create_app(update_world.settings("update"))) as live:
        yield live


# -- helpers -------------------------------------------------------------------------------


def call(
    server: LiveServer, method: str, path: str, key: str | None = None, **kwargs: Any
) -> httpx.Response:
    """One request on a fresh connection (a failed request cannot spoil the next one)."""
    with server.client(key) as client:
        return client.request(method, path, **kwargs)


def recommend(server: LiveServer, world: World, body: Any, path: str = REC) -> httpx.Response:
    return call(server, "POST", path, world.keys["officer"], json=body)


def cold(
    server: LiveServer,
    world: World,
    attributes: dict[str, Any],
    holdings: list[str] | None = None,
    k: int = 24,
) -> tuple[list[str], dict[str, str]]:
    """(offered product ids in rank order, {excluded product id: reason}) for a new client."""
    body = {"customer": {"attributes": attributes, "holdings": holdings or []}, "k": k}
    response = recommend(server, world, body)
    assert response.status_code == 200, response.text
    payload = response.json()
    offered = [o["product_id"] for o in payload["recommendations"]]
    excluded = {e["product_id"]: e["reason"] for e in payload["excluded"]}
    assert sorted(offered + list(excluded)) == sorted(CATALOG)
    return offered, excluded


READINESS_KEY: dict[str, str] = {}  # /readyz details need a key (any role)


def readyz(server: LiveServer) -> dict[str, Any]:
    response = call(server, "GET", "/readyz", READINESS_KEY["key"])
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def metrics_text(server: LiveServer, world: World) -> str:
    response = call(server, "GET", "/metrics", world.keys["analyst"])
    assert response.status_code == 200, response.text
    return response.text


def events_of(world: World, tag: str) -> EventStore:
    return EventStore(f"sqlite:///{world.home / f'{tag}-events.db'}")


def assert_offer_list(payload: dict[str, Any], k: int, held: set[str]) -> None:
    """Ranks 1..k, nothing held offered, every other catalog product excluded with a reason."""
    offers_ = payload["recommendations"]
    assert [o["rank"] for o in offers_] == list(range(1, k + 1))
    offered = [o["product_id"] for o in offers_]
    assert not set(offered) & held
    for offer in offers_:
        assert 0.0 <= offer["probability"] <= 1.0
        assert isinstance(offer["reasons"], list)
        assert all(isinstance(r, str) and r for r in offer["reasons"])
    excluded = {e["product_id"]: e["reason"] for e in payload["excluded"]}
    assert len(excluded) == len(payload["excluded"])  # no product twice
    assert set(excluded) == set(CATALOG) - set(offered)
    assert all(reason for reason in excluded.values())
    for product in held:
        assert excluded[product] == "already held"


def train_and_promote(world: World) -> str:
    """A new version trained into the world's store (registered as @challenger) and then
    promoted to @champion with force; returns the new version."""
    outcome = train_into(world.bank_dir, world.tracking_uri, world.home)
    assert outcome.alias == "challenger"
    promote_to_champion(world.tracking_uri, outcome.version)
    return outcome.version


def serving_version(server: LiveServer) -> str:
    version: str = readyz(server)["model"]["version"]
    return version


def reload(server: LiveServer, world: World, wait: bool = True) -> httpx.Response:
    path = f"/v1/admin/reload?wait={'true' if wait else 'false'}"
    return call(server, "POST", path, world.keys["admin"])


def wait_for(predicate: Any, timeout: float = 60, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


# -- the endpoints -------------------------------------------------------------------------


def test_recommendations_for_known_clients_rank_unheld_products_and_explain_exclusions(
    server: LiveServer, world: World, holdings: dict[str, set[str]]
) -> None:
    clients = [c for c, held in holdings.items() if len(held) >= 2][:5]
    assert len(clients) == 5
    for customer in clients:
        response = recommend(server, world, {"customer_id": customer, "k": 5})
        assert response.status_code == 200, response.text
        payload = response.json()
        assert payload["customer_id"] == customer
        assert payload["model"] == {"name": MODEL_NAME, "version": world.version,
                                    "alias": "champion"}  # fmt: skip
        assert payload["request_id"] == response.headers["X-Request-ID"]
        assert_offer_list(payload, 5, holdings[customer])
        scores = [o["score"] for o in payload["recommendations"]]
        assert scores == sorted(scores, reverse=True)
        assert any(o["reasons"] for o in payload["recommendations"])


def test_expected_value_objective_sorts_by_expected_value(
    server: LiveServer, world: World, holdings: dict[str, set[str]]
) -> None:
    customer = next(c for c, held in holdings.items() if len(held) >= 2)
    response = recommend(server, world, {"customer_id": customer, "k": 6,
                                         "objective": "expected_value"})  # fmt: skip
    assert response.status_code == 200, response.text
    payload = response.json()
    assert_offer_list(payload, 6, holdings[customer])
    values = [o["expected_value"] for o in payload["recommendations"]]
    assert values == sorted(values, reverse=True)
    for offer in payload["recommendations"]:
        expected = offer["probability"] * MARGINS[offer["product_id"]]
        assert offer["expected_value"] == pytest.approx(expected)


def test_explain_false_gives_offers_without_reasons_but_keeps_exclusions(
    server: LiveServer, world: World, holdings: dict[str, set[str]]
) -> None:
    customer = next(c for c, held in holdings.items() if len(held) >= 2)
    response = recommend(server, world, {"customer_id": customer, "k": 3, "explain": False})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert [o["reasons"] for o in payload["recommendations"]] == [[], [], []]
    assert_offer_list(payload, 3, holdings[customer])


def test_cold_start_client_with_attributes_and_holdings(server: LiveServer, world: World) -> None:
    body = {"customer": {"attributes": ADULT, "holdings": [CURRENT_ACCOUNT]}, "k": 4}
    response = recommend(server, world, body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["customer_id"] == "new client"
    assert_offer_list(payload, 4, {CURRENT_ACCOUNT})

    named = recommend(server, world, {**body, "customer_id": "prospect-17"})
    assert named.status_code == 200, named.text
    assert named.json()["customer_id"] == "prospect-17"

    bare = recommend(server, world, {"customer": {"attributes": {}, "holdings": []}})
    assert bare.status_code == 200, bare.text  # nothing known: only what no rule guards
    assert [o["product_id"] for o in bare.json()["recommendations"]] == [CURRENT_ACCOUNT]


def test_unknown_customer_is_404_telling_how_to_send_attributes(
    server: LiveServer, world: World
) -> None:
    response = recommend(server, world, {"customer_id": "nobody"})
    assert response.status_code == 404
    assert response.json() == {"detail": UNKNOWN_DETAIL}


def test_batch_answers_every_item_with_inline_errors(
    server: LiveServer, world: World, holdings: dict[str, set[str]]
) -> None:
    known = [c for c, held in holdings.items() if held][:2]
    body = {"requests": [
        {"customer_id": known[0], "k": 2},
        {"customer_id": "nobody"},
        {"customer": {"attributes": ADULT, "holdings": ["ind_gold_bars"]}},
        {"customer": {"attributes": ADULT, "holdings": [CURRENT_ACCOUNT]}, "k": 3},
        {"customer_id": known[1], "objective": "expected_value"},
    ]}  # fmt: skip
    response = recommend(server, world, body, BATCH)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5
    request_id = response.headers["X-Request-ID"]
    assert results[0]["request_id"] == f"{request_id}-0"
    assert results[0]["customer_id"] == known[0]
    assert_offer_list(results[0], 2, holdings[known[0]])
    assert results[1] == {"customer_id": "nobody", "status": 404, "detail": UNKNOWN_DETAIL}
    assert results[2]["status"] == 422
    assert results[2]["detail"].startswith("unknown product 'ind_gold_bars'; known products: ")
    assert results[3]["request_id"] == f"{request_id}-3"
    assert_offer_list(results[3], 3, {CURRENT_ACCOUNT})
    assert results[4]["request_id"] == f"{request_id}-4"
    values = [o["expected_value"] for o in results[4]["recommendations"]]
    assert values == sorted(values, reverse=True)


def test_batch_limits(server: LiveServer, world: World) -> None:
    too_many = recommend(server, world, {"requests": [{"customer_id": "x"}] * 1001}, BATCH)
    assert too_many.status_code == 422
    (error,) = too_many.json()["detail"]
    assert error["loc"] == ["body", "requests"]
    assert error["type"] == "too_long"
    assert "at most 1000 items" in error["msg"]

    empty = recommend(server, world, {"requests": []}, BATCH)
    assert empty.status_code == 422
    assert empty.json()["detail"][0]["loc"] == ["body", "requests"]


def test_customer_view_shows_attributes_holdings_drops_and_offers_made(
    server: LiveServer, world: World
) -> None:
    frame = pd.read_parquet(world.bank_dir / "holdings.parquet")
    frame[C.SNAPSHOT_DATE] = pd.to_datetime(frame[C.SNAPSHOT_DATE]).dt.date.astype(str)
    frame = frame.astype({C.CUSTOMER_ID: str, C.PRODUCT_ID: str})
    dates = sorted(frame[C.SNAPSHOT_DATE].unique())
    held_at = {d: set(zip(g[C.CUSTOMER_ID], g[C.PRODUCT_ID], strict=True))
               for d, g in frame.groupby(C.SNAPSHOT_DATE)}  # fmt: skip
    last, window = dates[-1], dates[-4:-1]
    # A client holding something now who dropped a product within the last 3 snapshots.
    dropped_pairs = {pair for d in window for pair in held_at[d]} - held_at[last]
    now = {c for c, _ in held_at[last]}
    customer = sorted(c for c, _ in dropped_pairs if c in now)[0]
    held = {p for c, p in held_at[last] if c == customer}
    dropped = {p for c, p in dropped_pairs if c == customer}

    response = call(server, "GET", f"/v1/customers/{customer}", world.keys["officer"])
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["customer_id"] == customer
    assert view["as_of"] == AS_OF
    customers = pd.read_parquet(world.bank_dir / "customers.parquet").set_index(C.CUSTOMER_ID)
    expected = customers.loc[customer]
    assert view["attributes"]["segment"] == expected["segment"] == view["segment"]
    assert view["attributes"]["income"] == pytest.approx(expected["income"])
    assert view["attributes"]["birth_date"] == str(expected["birth_date"].date())
    assert view["tier"] in {"A", "B", "C"}
    assert {h["product_id"] for h in view["holdings"]} == held
    for holding in view["holdings"]:
        start = last
        for d in reversed(dates):  # the start of the current, unbroken run
            if (customer, holding["product_id"]) not in held_at[d]:
                break
            start = d
        assert holding["since"] == start
        assert holding["since_first_snapshot"] == (start == dates[0])
    assert {d["product_id"] for d in view["recently_dropped"]} == dropped
    for drop in view["recently_dropped"]:
        last_held = max(d for d in dates if (customer, drop["product_id"]) in held_at[d])
        assert drop["last_held"] == last_held
    before = len(view["offers"])

    made = recommend(server, world, {"customer_id": customer, "k": 3})
    assert made.status_code == 200, made.text
    after = call(server, "GET", f"/v1/customers/{customer}", world.keys["officer"]).json()
    new = [o for o in after["offers"] if o["request_id"] == made.json()["request_id"]]
    assert len(after["offers"]) == before + 3
    assert [(o["product_id"], o["rank"]) for o in new] == [
        (o["product_id"], o["rank"]) for o in made.json()["recommendations"]
    ]
    assert after["offers"][:3] == new  # newest first
    assert all(o["outcome"] is None and o["created_at"] for o in new)

    missing = call(server, "GET", "/v1/customers/nobody", world.keys["officer"])
    assert missing.status_code == 404
    assert missing.json() == {"detail": "customer_id 'nobody' is not in the data as of 2026-10-31"}


def test_products_list_the_catalog_with_eligibility(server: LiveServer, world: World) -> None:
    response = call(server, "GET", "/v1/products", world.keys["analyst"])
    assert response.status_code == 200, response.text
    products = {p["product_id"]: p for p in response.json()}
    assert list(products) == CATALOG
    assert products[GUARANTEES]["eligibility"]["segments"] == ["top"]
    assert products[MORTGAGE]["eligibility"] == {
        "min_age": 21.0, "max_age": 70.0, "min_income": 25000.0, "segments": None,
    }  # fmt: skip
    assert products[JUNIOR]["eligibility"]["max_age"] == 17.0
    assert products[SECURITIES]["risk_level"] == 5.0
    assert products[CURRENT_ACCOUNT]["family"] == "main account"
    assert products[CURRENT_ACCOUNT]["category"] == "accounts"
    assert products[CURRENT_ACCOUNT]["name"] == "current account"
    for product_id, product in products.items():
        assert product["margin"] == MARGINS[product_id]
        assert set(product["eligibility"]) == {"min_age", "max_age", "min_income", "segments"}


def test_health_and_readiness(server: LiveServer, world: World) -> None:
    health = call(server, "GET", "/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = readyz(server)
    assert ready["ready"] is True
    assert ready["model"]["name"] == MODEL_NAME
    assert ready["model"]["version"] == world.version
    assert ready["model"]["alias"] == "champion"
    assert ready["model"]["source"] == "mlflow"
    assert ready["degraded"] is False
    assert ready["last_error"] is None
    assert ready["customers"] == 3000
    assert ready["as_of"] == AS_OF
    assert ready["event_store"] == {"up": True, "queued_events": 0, "last_error": None}


def test_metrics_count_offers_and_name_the_model(server: LiveServer, world: World) -> None:
    made = recommend(server, world, {"customer": {"attributes": ADULT}, "k": 1})
    assert made.status_code == 200, made.text
    product = made.json()["recommendations"][0]["product_id"]
    response = call(server, "GET", "/metrics", world.keys["admin"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    served = metric_value(text, "recommendations_served_total", {"product_id": product})
    assert served is not None and served >= 1
    labels = {"name": MODEL_NAME, "version": world.version, "source": "mlflow"}
    assert metric_value(text, "model_info", labels) == 1.0
    assert metric_value(text, "model_reload_failures_total") == 0.0
    assert metric_value(text, "audit_write_failures_total") == 0.0
    requests = metric_value(
        text, "http_requests_total", {"method": "POST", "route": REC, "status": "200"}
    )
    assert requests is not None and requests >= 1


# -- validation ----------------------------------------------------------------------------

VALID = {"customer_id": "C0000001"}
FIELD_ERRORS = [
    pytest.param({**VALID, "k": 0}, ["body", "k"], "greater_than_equal", id="k=0"),
    pytest.param({**VALID, "k": 25}, ["body", "k"], "less_than_equal", id="k=25"),
    pytest.param({**VALID, "k": "three"}, ["body", "k"], "int_parsing", id="k-not-a-number"),
    pytest.param({**VALID, "colour": "red"}, ["body", "colour"], "extra_forbidden",
                 id="unknown-field"),
    pytest.param({**VALID, "objective": "profit"}, ["body", "objective"], "literal_error",
                 id="unknown-objective"),
    pytest.param({"customer_id": ""}, ["body", "customer_id"], "string_too_short",
                 id="empty-customer-id"),
    pytest.param({"customer": {"attributes": {}, "pets": 2}}, ["body", "customer", "pets"],
                 "extra_forbidden", id="unknown-customer-field"),
    pytest.param({"customer": {"holdings": [f"p{i}" for i in range(101)]}},
                 ["body", "customer", "holdings"], "too_long", id="too-many-holdings"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "loc", "kind"), FIELD_ERRORS)
def test_invalid_fields_are_422_naming_the_field(
    server: LiveServer, world: World, body: dict[str, Any], loc: list[Any], kind: str
) -> None:
    response = recommend(server, world, body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == loc
    assert error["type"] == kind
    assert error["msg"]


def test_malformed_json_is_422(server: LiveServer, world: World) -> None:
    response = call(server, "POST", REC, world.keys["officer"], content=b'{"customer_id": "C0',
                    headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["msg"] == "JSON decode error"


@pytest.mark.parametrize("body", [{}, {"k": 3}, {"customer_id": None, "customer": None}])
def test_neither_customer_id_nor_customer_is_422(
    server: LiveServer, world: World, body: dict[str, Any]
) -> None:
    response = recommend(server, world, body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body"]
    expected = "send customer_id, or customer (attributes and holdings) for a new client"
    assert expected in error["msg"]


GOLD = "unknown product 'ind_gold_bars'; known products: "
DOMAIN_ERRORS = [
    pytest.param({"holdings": ["ind_gold_bars"]}, GOLD, id="unknown-product"),
    pytest.param({"dropped": ["ind_gold_bars"]}, GOLD, id="unknown-dropped-product"),
    pytest.param({"attributes": {**ADULT, "income": "lots"}},
                 "attribute income: 'lots' is not a number", id="non-numeric-income"),
    pytest.param({"attributes": {**ADULT, "birth_date": "01/10/1986"}},
                 "attribute birth_date: '01/10/1986' is not a date (YYYY-MM-DD)", id="bad-date"),
    pytest.param({"attributes": {"favourite_colour": "red"}},
                 "unknown attribute 'favourite_colour'; known: ", id="unknown-attribute"),
]  # fmt: skip


@pytest.mark.parametrize(("customer", "detail"), DOMAIN_ERRORS)
def test_invalid_cold_start_clients_are_422_naming_the_value(
    server: LiveServer, world: World, customer: dict[str, Any], detail: str
) -> None:
    response = recommend(server, world, {"customer": customer})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]  # the documented shape of every 422
    assert error["loc"] == ["body"]
    assert error["msg"].startswith(detail)


def test_an_unparsable_as_of_attribute_is_a_422_not_a_500(server: LiveServer, world: World) -> None:
    """`as_of` passes the unknown-attribute check (it is a record field) but is parsed
    without error handling later on."""
    response = recommend(server, world, {"customer": {"attributes": {"as_of": "someday"}}})
    assert response.status_code == 422, response.text
    assert "as_of" in response.json()["detail"][0]["msg"]


# -- business rules, through cold start ------------------------------------------------------


def test_held_product_is_never_offered(server: LiveServer, world: World) -> None:
    offered, excluded = cold(server, world, ADULT, [CURRENT_ACCOUNT, FUNDS])
    assert CURRENT_ACCOUNT not in offered and FUNDS not in offered
    assert excluded[CURRENT_ACCOUNT] == excluded[FUNDS] == "already held"


def test_minimum_age(server: LiveServer, world: World) -> None:
    offered, excluded = cold(server, world, CHILD)
    assert CREDIT_CARD not in offered
    assert excluded[CREDIT_CARD] == "eligibility: minimum age 18 (client 10)"
    minimum = dict(zip(CATALOG, bank_catalog()[C.MIN_AGE], strict=True))
    assert all(minimum[p] <= 10 for p in offered)


def test_minimum_age_reason_does_not_round_a_minor_up_to_the_minimum(
    server: LiveServer, world: World
) -> None:
    """A client of 17.75 years is refused for being under 18; the reason should not
    say 'client 18'."""
    _, excluded = cold(server, world, {**CHILD, "birth_date": "2009-02-01"})
    assert excluded[CREDIT_CARD] == "eligibility: minimum age 18 (client 17)"


def test_maximum_age(server: LiveServer, world: World) -> None:
    offered, excluded = cold(server, world, ADULT)
    assert JUNIOR not in offered
    assert excluded[JUNIOR] == "eligibility: maximum age 17 (client 40)"
    retired = {**ADULT, "birth_date": "1951-10-01", "income": 90000}
    _, excluded = cold(server, world, retired)
    assert excluded[MORTGAGE] == "eligibility: maximum age 70 (client 75)"


def test_segments(server: LiveServer, world: World) -> None:
    offered, excluded = cold(server, world, ADULT)
    assert GUARANTEES not in offered
    assert excluded[GUARANTEES] == "eligibility: only for segments top (client: individual)"
    offered, excluded = cold(server, world, {**ADULT, "segment": "top"})
    assert GUARANTEES in offered or not excluded[GUARANTEES].startswith("eligibility")


def test_minimum_income(server: LiveServer, world: World) -> None:
    offered, excluded = cold(server, world, {**ADULT, "income": 1000})
    assert MORTGAGE not in offered
    assert excluded[MORTGAGE] == "eligibility: minimum income 25,000 (client 1,000)"
    assert excluded[CREDIT_CARD] == "eligibility: minimum income 10,000 (client 1,000)"
    offered, excluded = cold(server, world, {**ADULT, "income": 90000})
    assert MORTGAGE in offered  # k = catalog size: everything allowed is offered


def test_suitability(server: LiveServer, world: World) -> None:
    offered, excluded = cold(server, world, {**ADULT, "risk_tolerance": 1})
    assert SECURITIES not in offered and FUNDS not in offered
    assert excluded[SECURITIES] == "suitability: risk level 5 exceeds the client's risk tolerance 1"
    assert excluded[FUNDS] == "suitability: risk level 4 exceeds the client's risk tolerance 1"


@pytest.mark.parametrize("tolerance", ["absent", None])
def test_a_cold_start_without_risk_tolerance_is_not_offered_risky_products(
    server: LiveServer, world: World, tolerance: Any
) -> None:
    """A caller's unknown fact excludes what its rule guards (known clients keep "unknown
    does not exclude": tests/test_cold_start_inputs.py)."""
    attributes = {k: v for k, v in ADULT.items() if k != "risk_tolerance"}
    if tolerance != "absent":
        attributes["risk_tolerance"] = tolerance
    offered, excluded = cold(server, world, attributes)
    assert SECURITIES not in offered and FUNDS not in offered
    assert excluded[SECURITIES] == (
        "suitability: risk level 5 needs the client's risk tolerance; send it"
    )


def test_family_rules(server: LiveServer, world: World) -> None:
    offered, excluded = cold(server, world, ADULT, [CURRENT_ACCOUNT])
    assert PARTICULAR_ACCOUNT not in offered
    assert excluded[PARTICULAR_ACCOUNT] == "family main account: already holds current account"
    assert not MAIN_ACCOUNTS & set(offered)

    offered, excluded = cold(server, world, {**ADULT, "income": 90000})
    (winner,) = MAIN_ACCOUNTS & set(offered)  # one product per family in a list
    rank = offered.index(winner) + 1
    names = dict(zip(CATALOG, bank_catalog()[C.NAME], strict=True))
    for product in MAIN_ACCOUNTS - {winner}:
        assert excluded[product] == f"family main account: {names[winner]} offered at rank {rank}"


# -- authentication and roles ------------------------------------------------------------------

ROUTES = [
    ("POST", REC, {"customer_id": "C0000002"}, ("officer",), 200),
    ("POST", BATCH, {"requests": [{"customer_id": "C0000002"}]}, ("officer",), 200),
    ("GET", "/v1/customers/C0000002", None, ("officer",), 200),
    ("GET", "/v1/products", None, ("officer", "analyst", "admin"), 200),
    ("GET", "/metrics", None, ("analyst", "admin"), 200),
    ("POST", "/v1/admin/reload?wait=true", None, ("admin",), 200),
    ("GET", "/v1/admin/settings", None, ("admin",), 200),
    ("POST", "/v1/feedback", {"request_id": "nope", "product_id": "x", "outcome": "shown"},
     ("officer",), 404),
    ("POST", "/v1/feedback/batch",
     {"items": [{"request_id": "nope", "product_id": "x", "outcome": "shown"}]}, ("officer",), 200),
    ("GET", "/v1/experiments", None, ("analyst", "admin"), 200),
    ("GET", "/v1/experiments/none", None, ("analyst", "admin"), 404),
    ("POST", "/v1/experiments", {"name": "x"}, ("admin",), 422),  # invalid: no side effect
    ("POST", "/v1/experiments/none/stop", None, ("admin",), 404),
]  # fmt: skip
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}
CALLERS = ["officer", "analyst", "admin", "no key", "wrong key"]
AUTH_CASES = [
    pytest.param(method, path, body, allowed, ok, caller, id=f"{method} {path} as {caller}")
    for method, path, body, allowed, ok in ROUTES
    for caller in CALLERS
]


@pytest.mark.parametrize(("method", "path", "body", "allowed", "ok", "caller"), AUTH_CASES)
def test_every_protected_route_admits_exactly_its_roles(
    server: LiveServer,
    world: World,
    method: str,
    path: str,
    body: Any,
    allowed: tuple[str, ...],
    ok: int,
    caller: str,
) -> None:
    key = {"no key": None, "wrong key": "not-a-key-" + "x" * 30}.get(caller, world.keys.get(caller))
    response = call(server, method, path, key, json=body)
    if caller in ("no key", "wrong key"):
        assert response.status_code == 401
        assert response.json() == {
            "detail": "missing or invalid API key; send it in the X-API-Key header"
        }
        assert response.headers["WWW-Authenticate"] == "X-API-Key"
    elif caller in allowed:
        assert response.status_code == ok, response.text
    else:
        assert response.status_code == 403
        route = path.partition("?")[0]
        assert response.json() == {
            "detail": f"role '{caller}' may not call {method} {route}; "
            f"allowed: {', '.join(allowed)}"
        }


def test_the_role_table_covers_every_route_of_the_app(server: LiveServer) -> None:
    """A new route without a row in ROUTES (or PUBLIC) fails here, so the walk above
    always covers every route with every role."""
    from fastapi.routing import APIRoute

    for route in server.app.routes:
        if not isinstance(route, APIRoute):
            continue  # the OpenAPI document and docs pages
        for method in route.methods:
            covered = (method, route.path) in PUBLIC or any(
                m == method and route.path_regex.match(p.partition("?")[0]) for m, p, *_ in ROUTES
            )
            assert covered, f"{method} {route.path} is missing from ROUTES"


def test_authentication_comes_before_body_validation(server: LiveServer) -> None:
    """An unauthenticated caller learns nothing about the request schema."""
    for body in ({"k": 0}, {"customer_id": "C0000001", "colour": "red"}):
        response = call(server, "POST", REC, None, json=body)
        assert response.status_code == 401, response.text


def test_settings_show_no_secrets(server: LiveServer, world: World) -> None:
    response = call(server, "GET", "/v1/admin/settings", world.keys["admin"])
    assert response.status_code == 200
    settings = response.json()
    assert settings["model_uri"] == f"models:/{MODEL_NAME}@champion"
    assert settings["max_batch"] == 1000
    text = json.dumps(settings)
    for key in world.keys.values():
        assert key not in text and digest(key) not in text


@pytest.mark.parametrize(
    ("method", "path", "role", "body", "status"),
    [
        ("GET", "/healthz", None, None, 200),
        ("POST", REC, "officer", {"customer_id": "C0000003"}, 200),
        ("POST", REC, "officer", {"customer_id": "nobody"}, 404),
        ("POST", REC, "officer", {"k": 3}, 422),
        ("GET", "/metrics", None, None, 401),
        ("GET", "/metrics", "officer", None, 403),
    ],
)
def test_security_headers_on_every_response(
    server: LiveServer, world: World, method: str, path: str, role: str | None, body: Any,
    status: int,
) -> None:  # fmt: skip
    key = world.keys[role] if role else None
    response = call(server, method, path, key, json=body)
    assert response.status_code == status
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    request_id = response.headers["X-Request-ID"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0


def test_an_unexpected_error_is_a_500_with_request_id_and_security_headers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = build_services(world.settings("faulty"))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(services.directory, "view", broken)
    with live_server(create_app(services=services)) as live:
        response = call(live, "GET", "/v1/customers/C0000001", world.keys["officer"])
        assert response.status_code == 500
        detail = response.json()["detail"]
        assert detail.startswith("internal error; quote request id ")
        assert "disk on fire" not in response.text
        request_id = detail.removeprefix("internal error; quote request id ").split()[0]
        assert response.headers.get("X-Content-Type-Options") == "nosniff"
        assert response.headers.get("X-Request-ID") == request_id


# -- audit trail ---------------------------------------------------------------------------


def test_every_served_decision_is_audited_once_with_the_key_id(
    server: LiveServer, world: World, holdings: dict[str, set[str]]
) -> None:
    events = events_of(world, "main")
    try:
        customer = next(c for c, held in holdings.items() if len(held) >= 2)
        start, start_offers = events.count(), events.count("offers")

        one = recommend(server, world, {"customer_id": customer, "k": 4,
                                        "objective": "expected_value"})  # fmt: skip
        assert one.status_code == 200
        payload = one.json()
        assert events.count() == start + 1
        assert events.count("offers") == start_offers + 4
        row = events.decision(payload["request_id"])
        assert row is not None
        assert row["key_id"] == "officer-app"
        assert row["customer_id"] == customer
        assert row["cold_start"] is False
        assert (row["model_name"], row["model_version"]) == (MODEL_NAME, world.version)
        assert (row["objective"], row["k"]) == ("expected_value", 4)
        assert [(o["product_id"], o["rank"]) for o in row["offers"]] == [
            (o["product_id"], o["rank"]) for o in payload["recommendations"]
        ]
        assert [o["score"] for o in row["offers"]] == pytest.approx(
            [o["score"] for o in payload["recommendations"]]
        )
        assert row["excluded"] == payload["excluded"]

        new = recommend(server, world, {"customer": {"attributes": ADULT}, "k": 2})
        assert new.status_code == 200
        row = events.decision(new.json()["request_id"])
        assert row is not None
        assert (row["cold_start"], row["customer_id"]) == (True, "new client")
        assert events.count() == start + 2

        batch = recommend(server, world, {"requests": [
            {"customer_id": customer}, {"customer_id": "nobody"}, {"customer": {}},
        ]}, BATCH)  # fmt: skip
        assert batch.status_code == 200
        batch_id = batch.headers["X-Request-ID"]
        assert events.count() == start + 4
        assert events.decision(f"{batch_id}-0") is not None
        assert events.decision(f"{batch_id}-1") is None  # the 404 item
        assert events.decision(f"{batch_id}-2") is not None

        for failed in (
            {"customer_id": "nobody"},
            {"customer_id": customer, "k": 0},
            {"customer": {"holdings": ["ind_gold_bars"]}},
            {"customer": {"attributes": {"income": "lots"}}},
        ):
            response = recommend(server, world, failed)
            assert response.status_code in (404, 422)
            assert events.decision(response.headers["X-Request-ID"]) is None
        assert events.count() == start + 4

        with events.engine.connect() as connection:
            rows = [
                *connection.execute(select(decisions)).all(),
                *connection.execute(select(offers)).all(),
            ]
        dumped = repr(rows)
        assert "officer-app" in dumped
        for key in world.keys.values():
            assert key not in dumped
        for path in world.home.glob("main-events.db*"):
            raw = path.read_bytes()
            assert all(key.encode() not in raw for key in world.keys.values())
    finally:
        events.close()


# -- live model updates ----------------------------------------------------------------------


def test_promoted_champion_is_served_after_reload(
    update_server: LiveServer, update_world: World
) -> None:
    old = serving_version(update_server)
    new = train_and_promote(update_world)
    assert serving_version(update_server) == old  # no polling: nothing changes by itself

    response = reload(update_server, update_world)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["status"] == "done"
    assert payload["result"] == f"now serving version {new}"
    assert payload["model"]["version"] == new
    ready = readyz(update_server)
    assert ready["model"]["version"] == new
    assert ready["model"]["source"] == "mlflow"
    assert ready["degraded"] is False

    served = recommend(update_server, update_world, {"customer_id": "C0000001"})
    assert served.json()["model"]["version"] == new
    text = metrics_text(update_server, update_world)
    assert metric_value(text, "model_info", {"version": new, "source": "mlflow"}) == 1.0
    assert metric_value(text, "model_info", {"version": old}) is None

    again = reload(update_server, update_world)
    assert again.json()["result"] == f"version {new} is already serving"


def test_hot_swap_under_load_serves_every_request_from_one_model(
    update_server: LiveServer, update_world: World
) -> None:
    body = {"customer_id": "C0000001", "k": 5}
    old = serving_version(update_server)
    reference = {old: recommend(update_server, update_world, body).json()}
    new = train_and_promote(update_world)
    stop = threading.Event()

    def hammer() -> list[tuple[int, dict[str, Any]]]:
        seen: list[tuple[int, dict[str, Any]]] = []
        with update_server.client(update_world.keys["officer"]) as client:
            while not stop.is_set() or len(seen) < 5:
                response = client.post(REC, json=body)
                seen.append((response.status_code, response.json()))
        return seen

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(hammer) for _ in range(8)]
        time.sleep(0.3)
        accepted = reload(update_server, update_world, wait=False)
        assert accepted.status_code == 202
        assert accepted.json()["status"] == "checking"
        swapped = wait_for(lambda: serving_version(update_server) == new, timeout=90)
        time.sleep(0.5)  # keep hammering the new model for a moment
        stop.set()
        results = [item for future in futures for item in future.result()]

    assert swapped, readyz(update_server)
    reference[new] = recommend(update_server, update_world, body).json()
    assert [status for status, _ in results] == [200] * len(results)
    versions = [payload["model"]["version"] for _, payload in results]
    assert set(versions) == {old, new}
    for _, payload in results:
        expected = reference[payload["model"]["version"]]
        assert [(o["product_id"], o["rank"]) for o in payload["recommendations"]] == [
            (o["product_id"], o["rank"]) for o in expected["recommendations"]
        ]
        assert [o["score"] for o in payload["recommendations"]] == pytest.approx(
            [o["score"] for o in expected["recommendations"]]
        )
    events = events_of(update_world, "update")
    try:  # the audit trail names the model that actually answered
        for _, payload in results[:: max(1, len(results) // 40)]:
            row = events.decision(payload["request_id"])
            assert row is not None and row["model_version"] == payload["model"]["version"]
    finally:
        events.close()


def _delete_artifacts(world: World, version: str) -> None:
    configure(world.tracking_uri)
    client = MlflowClient()
    source = client.get_model_version(MODEL_NAME, version).source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    shutil.rmtree(location.removeprefix("file://"))


def test_failed_reload_keeps_the_old_model_serving(
    update_server: LiveServer, update_world: World
) -> None:
    old = serving_version(update_server)
    failures = metric_value(metrics_text(update_server, update_world),
                            "model_reload_failures_total")  # fmt: skip
    assert failures is not None
    broken = train_into(update_world.bank_dir, update_world.tracking_uri, update_world.home)
    _delete_artifacts(update_world, broken.version)
    promote_to_champion(update_world.tracking_uri, broken.version)
    try:
        response = reload(update_server, update_world)
        assert response.status_code == 200
        payload = response.json()
        assert payload["status"] == "done"
        assert payload["result"].startswith("reload failed: ")
        assert payload["model"]["version"] == old

        ready = readyz(update_server)
        assert ready["ready"] is True
        assert ready["model"]["version"] == old
        assert ready["degraded"] is True
        assert ready["last_error"].startswith("reload failed: ")
        assert f"{MODEL_NAME}/{broken.version}" in ready["last_error"]
        served = recommend(update_server, update_world, {"customer_id": "C0000001"})
        assert served.status_code == 200
        assert served.json()["model"]["version"] == old
        text = metrics_text(update_server, update_world)
        assert metric_value(text, "model_reload_failures_total") == failures + 1
        assert metric_value(text, "model_info", {"version": old}) == 1.0
    finally:  # point the champion back at the serving version; the next check clears it
        promote_to_champion(update_world.tracking_uri, old)
    recovered = reload(update_server, update_world)
    assert recovered.json()["result"] == f"version {old} is already serving"
    assert readyz(update_server)["degraded"] is False
    assert readyz(update_server)["last_error"] is None


def test_failed_reload_reports_its_error_once_and_recovers(
    update_server: LiveServer, update_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.scoring

    old = serving_version(update_server)
    new = train_and_promote(update_world)

    def unavailable(uri: str, tracking_uri: str | None = None) -> Any:
        raise RecommenderError(f"cannot load model {uri!r}: artifact store offline")

    monkeypatch.setattr(training.scoring, "fetch_bundle", unavailable)
    failed = reload(update_server, update_world).json()
    error = f"cannot load model 'models:/{MODEL_NAME}/{new}': artifact store offline"
    ready = readyz(update_server)
    assert ready["model"]["version"] == old
    assert ready["last_error"] == f"reload failed: {error}"
    monkeypatch.undo()

    recovered = reload(update_server, update_world).json()
    assert recovered["result"] == f"now serving version {new}"
    ready = readyz(update_server)
    assert (ready["model"]["version"], ready["degraded"], ready["last_error"]) == (new, False, None)
    assert failed["result"] == f"reload failed: {error}"


# -- start-up: MLflow unreachable, catalog errors ----------------------------------------------


@pytest.fixture
def offline_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No retries against the unreachable tracking server (MLflow's default retries with
    backoff take about four minutes before giving up)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_starts_from_the_local_copy_when_mlflow_is_unreachable(
    server: LiveServer, world: World, offline_mlflow: None
) -> None:
    local = world.home / "main-models" / MODEL_NAME  # written by the main server's start
    assert (local / "bundle.pkl").exists()
    assert json.loads((local / "meta.json").read_text())["version"] == world.version
    copy = world.home / "offline-models"
    shutil.copytree(local, copy / MODEL_NAME)

    settings = world.settings("offline", tracking_uri=UNREACHABLE_MLFLOW, local_model_dir=copy)
    with live_server(create_app(settings)) as live:
        served = recommend(live, world, {"customer_id": "C0000001"})
        assert served.status_code == 200, served.text
        assert served.json()["model"]["version"] == world.version
        ready = readyz(live)
        assert ready["ready"] is True
        assert ready["model"]["source"] == "local copy"
        assert ready["model"]["version"] == world.version
        assert ready["degraded"] is True
        assert ready["last_error"].startswith(
            f"cannot load models:/{MODEL_NAME}@champion from MLflow: "
        )
        text = metrics_text(live, world)
        labels = {"version": world.version, "source": "local copy"}
        assert metric_value(text, "model_info", labels) == 1.0
        assert metric_value(text, "model_reload_failures_total") == 1.0

        response = reload(live, world)
        assert response.json()["result"].startswith("reload failed: ")
        assert readyz(live)["model"]["source"] == "local copy"


def test_without_local_copy_and_mlflow_unreachable_it_is_not_ready(
    world: World, offline_mlflow: None
) -> None:
    settings = world.settings("empty", tracking_uri=UNREACHABLE_MLFLOW,
                              local_model_dir=world.home / "no-models")  # fmt: skip
    with live_server(create_app(settings)) as live:
        assert call(live, "GET", "/healthz").status_code == 200
        ready = call(live, "GET", "/readyz", world.keys["analyst"])
        assert ready.status_code == 503
        payload = ready.json()
        assert (payload["ready"], payload["model"], payload["degraded"]) == (False, None, True)
        assert "MLflow" in payload["last_error"]
        response = recommend(live, world, {"customer_id": "C0000001"})
        assert response.status_code == 503
        assert response.json() == {"detail": NO_MODEL_DETAIL}
        products = call(live, "GET", "/v1/products", world.keys["officer"])
        assert products.status_code == 503
        assert products.json() == {"detail": NO_MODEL_DETAIL}


def _bank_variant(world: World, name: str) -> Path:
    directory = world.home / name
    shutil.copytree(world.bank_dir, directory)
    return directory


def _build_expecting_config_error(world: World, data_dir: Path, *parts: str) -> None:
    try:
        services = build_services(world.settings(data_dir.name, data_dir=data_dir))
    except ConfigError as exc:
        for part in parts:
            assert part in str(exc)
        return
    services.holder.stop()
    services.events.close()
    pytest.fail(f"the service started on {data_dir} instead of raising ConfigError")


def test_catalog_segment_that_no_client_has_stops_start_up(world: World) -> None:
    directory = _bank_variant(world, "no-top-clients")
    customers = pd.read_parquet(directory / "customers.parquet")
    customers["segment"] = customers["segment"].replace({"top": "individual"})
    customers.to_parquet(directory / "customers.parquet")
    _build_expecting_config_error(
        world, directory, GUARANTEES, "allows segments ['top'] that no client has"
    )


def test_catalog_min_age_above_max_age_stops_start_up(world: World) -> None:
    directory = _bank_variant(world, "bad-ages")
    products = pd.read_parquet(directory / "products.parquet")
    products.loc[products[C.PRODUCT_ID] == JUNIOR, C.MIN_AGE] = 80
    products.to_parquet(directory / "products.parquet")
    _build_expecting_config_error(world, directory, JUNIOR, "min_age 80 above max_age 17")


def test_catalog_in_another_order_than_the_model_never_offers_held_products(
    world: World, holdings: dict[str, set[str]]
) -> None:
    """The same catalog, rows in another order (e.g. re-exported sorted by name): the
    service must either refuse to start or map products by id."""
    directory = _bank_variant(world, "reordered-catalog")
    products = pd.read_parquet(directory / "products.parquet")
    products.iloc[::-1].to_parquet(directory / "products.parquet")
    try:
        services = build_services(world.settings("reordered", data_dir=directory))
    except ConfigError:
        return
    with live_server(create_app(services=services)) as live:
        clients = [c for c, held in holdings.items() if held][:20]
        wrong = {}
        for customer in clients:
            response = recommend(live, world, {"customer_id": customer, "k": 3})
            assert response.status_code == 200
            offered = {o["product_id"] for o in response.json()["recommendations"]}
            if offered & holdings[customer]:
                wrong[customer] = sorted(offered & holdings[customer])
        assert not wrong, f"held products offered: {wrong}"


# -- settings --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_server(world: World) -> Iterator[LiveServer]:
    settings = world.settings("tuned", max_batch=2, reasons_per_offer=1,
                              eligibility_rules=False, family_rules=False)  # fmt: skip
    with live_server(create_app(settings)) as live:
        yield live


def test_rule_switches_are_honoured(tuned_server: LiveServer, world: World) -> None:
    offered, excluded = cold(tuned_server, world, CHILD, [CURRENT_ACCOUNT])
    reasons = set(excluded.values())
    assert not [r for r in reasons if r.startswith(("eligibility", "family"))]
    assert excluded[CURRENT_ACCOUNT] == "already held"
    assert CREDIT_CARD in offered or CREDIT_CARD in excluded  # not refused for the age


def test_max_batch_setting_is_honoured(tuned_server: LiveServer, world: World) -> None:
    body = {"requests": [{"customer_id": "C0000001"}] * 3}
    response = recommend(tuned_server, world, body, BATCH)
    assert response.status_code == 422, "max_batch=2 but a batch of 3 was served"


def test_reasons_per_offer_setting_is_honoured(tuned_server: LiveServer, world: World) -> None:
    response = recommend(tuned_server, world, {"customer_id": "C0000001", "k": 5})
    assert response.status_code == 200
    counts = [len(o["reasons"]) for o in response.json()["recommendations"]]
    assert max(counts) <= 1, f"reasons_per_offer=1 but offers carry {counts} reasons"


# -- the command line --------------------------------------------------------------------------


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("RECOMMENDER_") and k != "FORCE_COLOR"}  # fmt: skip
    clean.update({"NO_COLOR": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "recommender", *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def assert_one_line_error(result: Any, *parts: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for part in parts:
        assert part in lines[0]


def test_cli_keys_add_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    result = run_cli(tmp_path, "keys", "add", "--file", str(keys_file), "--id", "x",
                     "--role", "officer")  # fmt: skip
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert len(result.stdout.strip().splitlines()) == 1 and len(key) >= 32
    stored = keys_file.read_text()
    assert json.loads(stored) == {"keys": [{"id": "x", "role": "officer", "sha256": digest(key)}]}
    assert key not in stored
    assert key not in result.stderr

    again = run_cli(tmp_path, "keys", "add", "--file", str(keys_file), "--id", "x",
                    "--role", "admin")  # fmt: skip
    assert_one_line_error(again, "a key with id 'x' exists")
    bad_role = run_cli(tmp_path, "keys", "add", "--file", str(keys_file), "--id", "y",
                       "--role", "boss")  # fmt: skip
    assert_one_line_error(bad_role, "role 'boss'", "officer, analyst, admin")


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("RECOMMENDER_MAX_BATCH", "0", "max_batch"),
        ("RECOMMENDER_POLL_SECONDS", "-1", "poll_seconds"),
        ("RECOMMENDER_EVENTS_URL", "events.db", "events_url"),
    ],
)
def test_cli_serve_with_an_invalid_setting_exits_2_with_one_line(
    tmp_path: Path, variable: str, value: str, setting: str
) -> None:
    result = run_cli(tmp_path, "serve", "--port", "1", env={variable: value})
    assert_one_line_error(result, f"error: setting {setting}")
