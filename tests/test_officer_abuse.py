"""What a legitimate officer key must not be able to do, over real HTTP (issue 11,
findings 3, 7 and 8, and the contact cap): score made-up attributes for a known client,
write feedback on another officer's decisions, step out of an experiment by choosing the
channel, or use up a client's weekly contact cap by looking at the client again and again.

Each test replays the attack as the adversarial review ran it; each failed before the fix.
The keys file is written by hand, with the per-key permissions (`cold_start`, `channels`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sqlalchemy import Column, MetaData, Table, create_engine, insert, text

from recommender import columns as C
from serving import events as ev
from serving.app import create_app
from serving.events import DecisionRecord, EventStore
from serving.keys import digest
from tests.serving_fixtures import LiveServer, World, live_server, make_world
from tests.test_events import POSTGRES, _postgres_admin

REC = "/v1/recommendations"
CURRENT_ACCOUNT = "ind_cco_fin_ult1"
KEYS = {  # id -> (plaintext key, extra fields of its keys-file entry)
    "officer-a": ("key-officer-a-0123456789", {}),
    "officer-b": ("key-officer-b-0123456789", {}),
    "officer-known-only": ("key-officer-known-only-0123", {"cold_start": False}),
    "officer-branch": ("key-officer-branch-012345678", {"channels": ["branch"]}),
    "admin": ("key-admin-0123456789012345", {}),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("abuse"))


@pytest.fixture(scope="module")
def keys_file(world: World) -> Path:
    path = world.home / "abuse_keys.json"
    entries = [
        {"id": key_id, "role": "admin" if key_id == "admin" else "officer",
         "sha256": digest(plain), **extra}
        for key_id, (plain, extra) in KEYS.items()
    ]  # fmt: skip
    path.write_text(json.dumps({"keys": entries}))
    return path


@pytest.fixture(scope="module")
def server(world: World, keys_file: Path) -> Iterator[LiveServer]:
    """The contact policy on, as a bank runs it: at most 6 offers a week per client."""
    settings = world.settings("abuse", api_keys_file=keys_file, max_offers_per_week=6,
                              decline_suppress_days=30)  # fmt: skip
    with live_server(create_app(settings)) as live:
        yield live


def post(server: LiveServer, key_id: str, path: str, body: dict[str, Any]) -> httpx.Response:
    with server.client(KEYS[key_id][0]) as client:
        return client.post(path, json=body)


def customers(world: World) -> pd.DataFrame:
    return pd.read_parquet(world.bank_dir / f"{C.CUSTOMERS}.parquet")


def risk_levels(server: LiveServer) -> dict[str, float]:
    with server.client(KEYS["officer-a"][0]) as client:
        products = client.get("/v1/products").json()
    return {p["product_id"]: p["risk_level"] or 0.0 for p in products}


# ---- finding 3: made-up attributes for a known client ----------------------------------


def test_asserted_attributes_for_a_known_client_are_refused_and_nothing_is_audited(
    server: LiveServer, world: World
) -> None:
    """The attack: a real customer_id of a client with risk tolerance 1, sent with
    `customer: {attributes: {risk_tolerance: 5}}`. Before the fix the service scored the
    assertion (risk-4 funds offered) and the audit row said only cold_start=1."""
    people = customers(world)
    cautious = str(people.loc[people["risk_tolerance"] == 1, C.CUSTOMER_ID].iloc[0])
    risk = risk_levels(server)
    assert max(risk.values()) >= 4  # there is something unsuitable to offer
    events = server.services.events
    before = events.count()

    attack = {"customer_id": cautious, "k": 6,
              "customer": {"attributes": {"risk_tolerance": 5}, "holdings": []}}  # fmt: skip
    response = post(server, "officer-a", REC, attack)
    assert response.status_code == 422, response.text  # was 200, with risk-4 funds offered
    message = response.json()["detail"][0]["msg"]
    assert "customer" in message and "send customer_id alone" in message
    assert cautious in message
    assert events.count() == before  # nothing served, nothing audited

    honest = post(server, "officer-a", REC, {"customer_id": cautious, "k": 6})
    assert honest.status_code == 200, honest.text
    assert honest.json()["recommendations"]
    assert all(risk[o["product_id"]] <= 1 for o in honest.json()["recommendations"])
    before = events.count()

    batch = post(server, "officer-a", f"{REC}/batch", {"requests": [attack]})
    assert batch.status_code == 200, batch.text
    (item,) = batch.json()["results"]
    assert item["status"] == 422 and "send customer_id alone" in item["detail"]
    assert events.count() == before


def test_a_cold_start_keeps_what_was_asserted_in_its_audit_row(
    server: LiveServer,
) -> None:
    asserted = {"attributes": {"risk_tolerance": 2, "income": 52000.0, "segment": "individual"},
                "holdings": [CURRENT_ACCOUNT], "dropped": []}  # fmt: skip
    response = post(server, "officer-a", REC, {"customer_id": "prospect-7", "customer": asserted})
    assert response.status_code == 200, response.text
    row = server.services.events.decision(response.json()["request_id"])
    assert row is not None
    assert (row["cold_start"], row["customer_id"], row["key_id"]) == (
        True, "prospect-7", "officer-a"
    )  # fmt: skip
    assert row["customer_input"] == asserted

    anonymous = post(server, "officer-a", REC, {"customer": {"attributes": {"income": 40000.0}}})
    assert anonymous.status_code == 200, anonymous.text
    row = server.services.events.decision(anonymous.json()["request_id"])
    assert row is not None
    assert row["customer_input"] == {
        "attributes": {"income": 40000.0},
        "holdings": [],
        "dropped": [],
    }

    known = post(server, "officer-a", REC, {"customer_id": "C0000003"})
    row = server.services.events.decision(known.json()["request_id"])
    assert row is not None and row["customer_input"] is None


def test_a_key_without_the_cold_start_permission_gets_403_for_cold_starts(
    server: LiveServer,
) -> None:
    events = server.services.events
    before = events.count()
    body = {"customer": {"attributes": {"risk_tolerance": 5}, "holdings": []}}
    response = post(server, "officer-known-only", REC, body)
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert "officer-known-only" in detail and "cold start" in detail
    assert post(server, "officer-known-only", f"{REC}/batch",
                {"requests": [body]}).status_code == 403  # fmt: skip
    assert events.count() == before
    allowed = post(server, "officer-known-only", REC, {"customer_id": "C0000004"})
    assert allowed.status_code == 200, allowed.text


# ---- finding 7: feedback on another officer's decision ---------------------------------


def test_feedback_is_accepted_only_from_the_key_that_made_the_decision(
    server: LiveServer,
) -> None:
    made = post(server, "officer-a", REC, {"customer_id": "C0000011", "k": 3})
    assert made.status_code == 200, made.text
    request_id = made.json()["request_id"]
    product = made.json()["recommendations"][0]["product_id"]
    events = server.services.events
    before = events.count("feedback")

    decline = {"request_id": request_id, "product_id": product, "outcome": "declined"}
    forged = post(server, "officer-b", "/v1/feedback", decline)
    assert forged.status_code == 403, forged.text
    assert "another key" in forged.json()["detail"]
    in_batch = post(server, "officer-b", "/v1/feedback/batch", {"items": [decline]})
    assert in_batch.status_code == 200, in_batch.text
    assert in_batch.json()["results"][0]["status"] == 403
    assert events.count("feedback") == before  # no decline written: nothing suppressed

    again = post(server, "officer-a", REC, {"customer_id": "C0000011", "k": 3})
    assert product in [o["product_id"] for o in again.json()["recommendations"]]

    own = post(server, "officer-a", "/v1/feedback", decline)
    assert own.status_code == 200, own.text
    assert own.json()["status"] == "recorded"
    assert events.count("feedback") == before + 1


# ---- the contact cap: one key looking again and again ----------------------------------


def test_repeated_requests_by_one_key_leave_the_client_offerable_by_another_officer(
    server: LiveServer,
) -> None:
    """20 looks at one client by one key (k=3, cap 6 a week): before the fix the third
    look already found the cap used up, and every other officer got an empty list."""
    client = "C0000021"
    answers = [post(server, "officer-a", REC, {"customer_id": client, "k": 3})
               for _ in range(20)]  # fmt: skip
    assert all(a.status_code == 200 for a in answers)
    offered = [[o["product_id"] for o in a.json()["recommendations"]] for a in answers]
    assert all(len(o) == 3 for o in offered)  # the same officer keeps seeing the offers
    assert all(o == offered[0] for o in offered)

    other = post(server, "officer-b", REC, {"customer_id": client, "k": 3})
    assert other.status_code == 200, other.text
    assert len(other.json()["recommendations"]) == 3, other.json()["excluded"]

    events: EventStore = server.services.events
    now = datetime.now(UTC)
    made, _ = events.contact_history(client, now - timedelta(days=7), now)
    assert made == 6  # 3 by officer-a (counted once), 3 by officer-b
    rows = events.frame("offers").query("customer_id == @client")
    assert len(rows) == 21 * 3  # every look is still audited, with its key
    assert rows.groupby("key_id")["counted"].sum().to_dict() == {"officer-a": 3, "officer-b": 3}

    capped = post(server, "officer-b", REC, {"customer_id": client, "k": 3})
    assert capped.json()["recommendations"] == []  # the cap itself still holds


# ---- finding 8: stepping out of an experiment by choosing the channel ------------------


def test_a_key_tied_to_its_channel_cannot_step_out_of_the_experiment(
    world: World, keys_file: Path
) -> None:
    settings = world.settings("channels", api_keys_file=keys_file)
    with live_server(create_app(settings)) as live:
        created = post(live, "admin", "/v1/experiments", {
            "name": "branch-holdout", "channel": "branch", "holdout": 0.5,
            "variants": [{"name": "control"}],
        })  # fmt: skip
        assert created.status_code == 201, created.text
        ids = [f"C{i:07d}" for i in range(1, 41)]
        looked = post(live, "officer-branch", f"{REC}/batch",
                      {"requests": [{"customer_id": c} for c in ids]})  # fmt: skip
        assert looked.status_code == 200, looked.text
        held_out = [r["customer_id"] for r in looked.json()["results"]
                    if r["variant"] == "holdout"]  # fmt: skip
        assert held_out and all(
            r["experiment"] == "branch-holdout" and r["channel"] == "branch"
            for r in looked.json()["results"]
        )
        target = held_out[0]
        events = live.services.events
        before = events.count()

        escape = post(live, "officer-branch", REC, {"customer_id": target, "channel": "hold"})
        assert escape.status_code == 403, escape.text
        detail = escape.json()["detail"]
        assert "'hold'" in detail and "branch" in detail
        in_batch = post(live, "officer-branch", f"{REC}/batch",
                        {"requests": [{"customer_id": target, "channel": "hold"}]})  # fmt: skip
        assert in_batch.status_code == 403, in_batch.text
        assert events.count() == before

        untied = post(live, "officer-a", REC, {"customer_id": target, "channel": "hold"})
        assert untied.status_code == 200  # a key without `channels` may use any channel


# ---- the event store: the new columns on older stores ----------------------------------

NEW_COLUMNS = {("decisions", "customer_input"), ("offers", "key_id"), ("offers", "counted")}


@pytest.fixture(params=["sqlite", "postgresql"])
def old_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An events database as the previous version wrote it (without the new columns)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        _create_old_schema(url)
        yield url
        return
    admin = _postgres_admin()
    schema = f"t_{datetime.now(UTC).strftime('%H%M%S%f')}_abuse"
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
        _create_old_schema(url)
        yield url
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _create_old_schema(url: str) -> None:
    old = MetaData()
    for table in ev.metadata.sorted_tables:
        kept: list[Column[Any]] = [
            c._copy() for c in table.columns if (table.name, c.name) not in NEW_COLUMNS
        ]
        Table(table.name, old, *kept)
    engine = create_engine(url)
    try:
        old.create_all(engine)
        with engine.begin() as connection:
            connection.execute(insert(old.tables["offers"]).values(
                request_id="old-1", customer_id="C1", product_id="p1", rank=1, score=1.0,
                probability=0.1, created_at=datetime.now(UTC),
            ))  # fmt: skip
    finally:
        engine.dispose()


def decided(request_id: str, products: list[str], *, repeats: list[str] | None = None,
            customer_input: dict[str, Any] | None = None) -> DecisionRecord:  # fmt: skip
    return DecisionRecord(
        request_id=request_id, key_id="officer-a", customer_id="C1",
        cold_start=customer_input is not None, model_name="m", model_version="1",
        objective="propensity", k=len(products),
        offers=[{"product_id": p, "rank": i + 1, "score": 1.0, "probability": 0.1}
                for i, p in enumerate(products)],
        excluded=[], repeats=repeats or [], customer_input=customer_input,
    )  # fmt: skip


def test_an_older_store_gains_the_columns_and_repeats_do_not_count(old_store_url: str) -> None:
    store = EventStore(old_store_url)
    try:
        since = datetime.now(UTC) - timedelta(days=7)
        assert store.contact_history("C1", since, since)[0] == 1  # an older row counts
        asserted = {"attributes": {"risk_tolerance": 2}, "holdings": [], "dropped": []}
        store.record([decided("new-1", ["p2", "p3"], customer_input=asserted),
                      decided("new-2", ["p2", "p4"], repeats=["p2"])])  # fmt: skip
        assert store.contact_history("C1", since, since)[0] == 1 + 2 + 1  # p2 once
        assert store.counted_by("C1", "officer-a", since) == {"p2", "p3", "p4"}
        assert store.counted_by("C1", "officer-b", since) == set()
        row = store.decision("new-1")
        assert row is not None and row["customer_input"] == asserted
        assert store.offered("new-2") == {
            "customer_id": "C1",
            "key_id": "officer-a",
            "experiment": None,
            "variant": None,
            "products": {"p2", "p4"},
        }
    finally:
        store.close()
