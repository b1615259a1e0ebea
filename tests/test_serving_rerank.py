"""A model with the second stage (re-ranker) served over real HTTP: known clients (whose
request state carries attributes and history for the re-ranker) and cold-start clients."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from serving.app import create_app
from tests.serving_fixtures import (
    SMALL,
    LiveServer,
    World,
    latest_holdings,
    live_server,
    make_bank,
    make_keys,
    store_uri,
    train_into,
)
from tests.test_serving import ADULT, assert_offer_list, recommend

RERANKED = replace(SMALL, rerank=True, rerank_rounds=10, rerank_candidates=6)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home = tmp_path_factory.mktemp("rerank")
    bank_dir = make_bank(home / "bank")
    uri = store_uri(home)
    outcome = train_into(bank_dir, uri, home, RERANKED)
    keys_file = home / "api_keys.json"
    return World(home, bank_dir, uri, keys_file, make_keys(keys_file), outcome.version)


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[LiveServer]:
    with live_server(create_app(world.settings("rerank"))) as live:
        yield live


def test_reranked_model_serves_known_clients_with_reasons(server: LiveServer, world: World) -> None:
    holdings = latest_holdings(Path(world.bank_dir))
    clients = [c for c, held in holdings.items() if len(held) >= 2][:5]
    for customer in clients:
        response = recommend(server, world, {"customer_id": customer, "k": 4})
        assert response.status_code == 200, response.text
        assert_offer_list(response.json(), 4, holdings[customer])
        assert any(o["reasons"] for o in response.json()["recommendations"])


def test_reranked_model_serves_cold_start_clients(server: LiveServer, world: World) -> None:
    holdings = latest_holdings(Path(world.bank_dir))
    held = sorted(next(iter(holdings.values())))[:1]
    body = {"customer": {"attributes": ADULT, "holdings": held}, "k": 3}
    response = recommend(server, world, body)
    assert response.status_code == 200, response.text
    assert_offer_list(response.json(), 3, set(held))
