"""Cold-start input handling over real HTTP (issue 11, red-team review of cold starts):
`{"customer": {"attributes": {...}, "holdings": [...], "dropped": [...]}}` is what a
caller asserts about a client the bank has not snapshotted, and every byte of it is
scored, kept in the audit trail and may be quoted back in reasons.

Each test replays the attack as the review ran it against a live uvicorn (officer key)
and failed before the fix:
1. a 1.9 MB text attribute was scored (200), stored twice in the audit row and echoed in
   an exclusion reason;
2. true/false for a date attribute was a 500 (a whole batch with it too), "now" and
   "today" were dates;
3. leaving attributes out switched eligibility and suitability off (a client with no
   attributes was offered a mortgage, loans, a credit card, derivatives and securities);
4. `holdings` and `dropped` could name one product in both, or one product 100 times.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from recommender import columns as C
from recommender.catalog import bank_catalog
from recommender.rules import RuleBook, client_facts
from recommender.state import CustomerState
from serving.app import create_app
from tests.serving_fixtures import LiveServer, World, live_server, make_world

REC = "/v1/recommendations"
BATCH = "/v1/recommendations/batch"
CATALOG = bank_catalog()
CURRENT_ACCOUNT, SAVINGS = "ind_cco_fin_ult1", "ind_ahor_fin_ult1"
MORTGAGE, LOANS, CREDIT_CARD = "ind_hip_fin_ult1", "ind_pres_fin_ult1", "ind_tjcr_fin_ult1"
DERIVATIVES, SECURITIES = "ind_cder_fin_ult1", "ind_valo_fin_ult1"
GUARANTEES = "ind_aval_fin_ult1"  # segments: top
NEEDS_INCOME = "needs the client's income; send it"
TWICE = "is listed more than once"
# Ages as of the bank's last snapshot (2026-10-31): 40 years.
ADULT = {
    "segment": "individual", "sex": "V", "birth_date": "1986-10-01", "join_date": "2015-03-01",
    "income": 90000, "risk_tolerance": 5, "region": "MADRID", "channel": "KHE",
}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("cold-inputs"))


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[LiveServer]:
    with live_server(create_app(world.settings("cold-inputs"))) as live:
        yield live


def post(server: LiveServer, world: World, body: Any, path: str = REC) -> httpx.Response:
    with server.client(world.keys["officer"]) as client:
        return client.post(path, json=body)


def cold(attributes: dict[str, Any], **customer: Any) -> dict[str, Any]:
    return {"customer": {"attributes": attributes, **customer}, "k": 24}


def message(response: httpx.Response) -> str:
    """The one error message of a 422 (the documented shape)."""
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    text: str = error["msg"]
    return text


def offers(response: httpx.Response) -> tuple[list[str], dict[str, str]]:
    assert response.status_code == 200, response.text
    payload = response.json()
    excluded = {e["product_id"]: e["reason"] for e in payload["excluded"]}
    return [o["product_id"] for o in payload["recommendations"]], excluded


# -- 1. long texts ----------------------------------------------------------------------------


def test_a_megabyte_text_attribute_is_refused_and_nothing_is_stored(
    server: LiveServer, world: World
) -> None:
    """Was 200: the 1.9 MB segment was kept as customer_input and inside the reason
    "eligibility: only for segments top (client: xxxx...)", and echoed in the answer."""
    events = server.services.events
    before = events.count()
    response = post(server, world, {"customer": {"attributes": {"segment": "x" * 1_900_000}},
                                    "k": 24})  # fmt: skip
    text = message(response)
    assert "attribute segment" in text and "1,900,000 characters" in text and "128" in text
    assert len(response.content) < 1000  # the value is not echoed
    batch = post(server, world, {"requests": [{"customer": {"attributes": {"region": "y" * 129}}}]},
                 BATCH)  # fmt: skip
    assert "attribute region" in message(batch)
    assert events.count() == before  # nothing scored, nothing audited


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [
        ({f"a{i}": 1 for i in range(65)}, "at most 64 attributes (got 65)"),
        ({"x" * 65: 1}, "attribute name 'xxxxxxx"),
        ({"bad name": "top"}, "attribute name 'bad name'"),
        ({"segment\n": "top"}, "attribute name 'segment\\n'"),
        ({"segment": "top\nforged line"}, "attribute segment: control characters"),
        ({"customer_id": "C0000001"}, "attribute customer_id: not an attribute"),
        ({"holdings": "ind_cco_fin_ult1"}, "attribute holdings: not an attribute"),
    ],
    ids=["65-attributes", "long-name", "name-with-space", "name-with-newline",
         "value-with-newline", "customer_id", "holdings"],
)  # fmt: skip
def test_attribute_names_counts_and_texts_are_bounded(
    server: LiveServer, world: World, attributes: dict[str, Any], fragment: str
) -> None:
    assert fragment in message(post(server, world, cold(attributes)))


def test_a_reason_quotes_a_client_value_cut_short(server: LiveServer, world: World) -> None:
    """The longest text accepted (128 characters) is scored; a reason quotes at most 40
    characters of it."""
    segment = "s" * 128
    response = post(server, world, cold({**ADULT, "segment": segment}))
    _, excluded = offers(response)
    assert excluded[GUARANTEES] == f"eligibility: only for segments top (client: {'s' * 37}...)"
    assert "s" * 41 not in response.text
    row = server.services.events.decision(response.json()["request_id"])
    assert row is not None and row["customer_input"]["attributes"]["segment"] == segment
    assert all(len(e["reason"]) < 200 for e in response.json()["excluded"])


# -- 2. types and dates --------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["birth_date", "join_date", "as_of"])
@pytest.mark.parametrize("value", [True, False])
def test_true_or_false_for_a_date_is_a_422_naming_it_alone_and_in_a_batch(
    server: LiveServer, world: World, attribute: str, value: bool
) -> None:
    """Was a 500 (TypeError in pandas' tz_convert), and a whole batch with it a 500."""
    text = message(post(server, world, cold({attribute: value})))
    assert attribute in text and f"{value} is not a date" in text and "ISO 8601" in text
    batch = post(server, world, {"requests": [{"customer": {"attributes": {attribute: value}}},
                                              {"customer_id": "C0000002"}]}, BATCH)  # fmt: skip
    assert batch.status_code == 200, batch.text
    bad, good = batch.json()["results"]
    assert bad["status"] == 422 and attribute in bad["detail"] and "ISO 8601" in bad["detail"]
    assert good["customer_id"] == "C0000002" and good["recommendations"]


@pytest.mark.parametrize("attribute", ["birth_date", "join_date", "as_of"])
@pytest.mark.parametrize("value", ["now", "today", "Now ", 19861001, 1.5, "2015-03", "20150301"])
def test_only_iso_dates_are_dates(
    server: LiveServer, world: World, attribute: str, value: Any
) -> None:
    """ "now" and "today" were read as dates (pandas' special words), a number as one."""
    text = message(post(server, world, cold({attribute: value})))
    assert attribute in text and "is not a date" in text and "1986-10-01" in text


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [
        ({"income": [50000]}, "attribute income: a list is not a value"),
        ({"income": {"amount": 50000}}, "attribute income: an object is not a value"),
        ({"segment": ["top"]}, "attribute segment: a list is not a value"),
        ({"birth_date": ["1986-10-01"]}, "attribute birth_date: a list is not a value"),
        ({"income": True}, "attribute income: True is not a number"),
        ({"risk_tolerance": False}, "attribute risk_tolerance: False is not a number"),
        ({"segment": True}, "attribute segment: True is not a text"),
        ({"sex": False}, "attribute sex: False is not a text"),
        ({"income": "lots"}, "attribute income: 'lots' is not a number"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_any_wrong_type_is_a_422_naming_the_attribute(
    server: LiveServer, world: World, attributes: dict[str, Any], fragment: str
) -> None:
    response = post(server, world, cold(attributes))
    assert fragment in message(response)
    batch = post(server, world, {"requests": [cold(attributes)]}, BATCH)
    if batch.status_code == 200:  # refused by the model's gate: inline, never a 500
        (item,) = batch.json()["results"]
        assert item["status"] == 422 and fragment in item["detail"]
    else:  # refused by the request's schema
        assert fragment in message(batch)


def test_well_formed_values_are_still_scored(server: LiveServer, world: World) -> None:
    """ISO dates with a time and an offset, null for unknown, numbers as text, and a
    value of a text attribute the training data never showed (encoded as `other`)."""
    for attributes in [
        ADULT,
        {**ADULT, "birth_date": "1986-10-01T09:30:00Z", "as_of": "2026-11-01T00:00-05:00"},
        {**ADULT, "join_date": None, "income": "90000"},
        {**ADULT, "region": "ATLANTIS", "sex": "X", "channel": 7},
    ]:
        response = post(server, world, cold(attributes))
        assert response.status_code == 200, (attributes, response.text)
        assert response.json()["recommendations"], attributes


# -- 3. attributes left out -------------------------------------------------------------------


def _binding(product: str) -> bool:
    """Whether any rule of `product` can exclude a client (needs a fact to be decided)."""
    row = CATALOG.set_index(C.PRODUCT_ID).loc[product]
    return bool(row[C.MIN_AGE] > 0 or row[C.MAX_AGE] < 120 or row[C.MIN_INCOME] > 0
                or str(row[C.SEGMENTS] or "").strip() or row[C.RISK_LEVEL] > 1)  # fmt: skip


def test_a_client_with_no_attributes_is_offered_only_what_no_rule_guards(
    server: LiveServer, world: World
) -> None:
    """Was: mortgage, loans, credit card, derivatives, securities (unknown: no rule)."""
    offered, excluded = offers(post(server, world, cold({})))
    assert offered == [CURRENT_ACCOUNT]  # ages 0-120, no income, any segment, lowest risk
    assert not [p for p in offered if _binding(p)]
    for product in (MORTGAGE, LOANS, CREDIT_CARD, DERIVATIVES, SECURITIES, SAVINGS):
        assert product not in offered
    assert (
        excluded[MORTGAGE]
        == "eligibility: minimum age 21 needs the client's age or birth date; send it"
    )
    assert (
        excluded[SECURITIES]
        == "eligibility: minimum age 18 needs the client's age or birth date; send it"
    )


@pytest.mark.parametrize(
    ("left_out", "product", "reason"),
    [
        ("birth_date", MORTGAGE,
         "eligibility: minimum age 21 needs the client's age or birth date; send it"),
        ("income", MORTGAGE, f"eligibility: minimum income 25,000 {NEEDS_INCOME}"),
        ("income", CREDIT_CARD, f"eligibility: minimum income 10,000 {NEEDS_INCOME}"),
        ("risk_tolerance", DERIVATIVES,
         "suitability: risk level 5 needs the client's risk tolerance; send it"),
        ("risk_tolerance", SECURITIES,
         "suitability: risk level 5 needs the client's risk tolerance; send it"),
        ("segment", GUARANTEES,
         "eligibility: only for segments top needs the client's segment; send it"),
    ],
    ids=lambda v: str(v)[:24],
)  # fmt: skip
@pytest.mark.parametrize("how", ["absent", "null"])
def test_each_fact_a_rule_reads_must_be_sent(
    server: LiveServer, world: World, left_out: str, product: str, reason: str, how: str
) -> None:
    """A well-off adult with every fact stated is offered the product; the same client
    without the one fact its rule reads (left out, or sent as null) is not."""
    stated = {**ADULT, "segment": "top"} if product == GUARANTEES else ADULT
    offered, _ = offers(post(server, world, cold(stated)))
    assert product in offered
    partial = {k: v for k, v in stated.items() if k != left_out}
    if how == "null":
        partial[left_out] = None
    offered, excluded = offers(post(server, world, cold(partial)))
    assert product not in offered
    assert excluded[product] == reason


def test_stating_a_child_s_facts_is_no_worse_than_leaving_them_out(
    server: LiveServer, world: World
) -> None:
    """Was: age 11 and income 1,000 got only the current account, no facts got 19 offers."""
    child = {"birth_date": "2015-06-01", "income": 1000, "segment": "student",
             "risk_tolerance": 1}  # fmt: skip
    told, _ = offers(post(server, world, cold(child)))
    silent, _ = offers(post(server, world, cold({})))
    guarded = {p for p in CATALOG[C.PRODUCT_ID] if _binding(p)}
    assert not set(silent) & guarded
    assert not {MORTGAGE, LOANS, CREDIT_CARD, DERIVATIVES, SECURITIES} & set(told + silent)


def test_known_clients_keep_unknown_facts_unexcluding(server: LiveServer, world: World) -> None:
    """The bank's own data keeps today's rule: a client whose risk tolerance is missing
    from the data is not refused for it."""
    customers = pd.read_parquet(world.bank_dir / f"{C.CUSTOMERS}.parquet")
    unknown = customers[customers["risk_tolerance"].isna()][C.CUSTOMER_ID].head(5)
    assert len(unknown)
    for customer in unknown:
        _, excluded = offers(post(server, world, {"customer_id": customer, "k": 24}))
        assert not [r for r in excluded.values() if "needs the client's" in r]
        assert not [r for r in excluded.values() if r.startswith("suitability")]


def test_strict_facts_in_the_rule_book() -> None:
    """The core rule: strict (asserted) facts exclude what an unknown fact guards; bounds
    nobody fails (minimum age 0, risk at the lowest tolerance) need nothing."""
    products = pd.DataFrame({
        C.PRODUCT_ID: ["acc", "card", "fund", "vip"], C.NAME: ["acc", "card", "fund", "vip"],
        C.RISK_LEVEL: [1, 3, 5, 2], C.MIN_AGE: [0, 18, 18, 18], C.MAX_AGE: [120, 120, 120, 120],
        C.MIN_INCOME: [0, 10_000, 0, 0], C.SEGMENTS: ["", "", "", "top"],
    })  # fmt: skip
    state = CustomerState(
        customer_ids=np.array(["c0"], dtype=object),
        as_of=np.array([np.datetime64("2026-10-31", "ns")]),
        held=np.zeros((1, 4), dtype=bool), dropped=np.zeros((1, 4), dtype=bool),
        held_months=np.zeros((1, 4), dtype=np.int16),
        attributes=pd.DataFrame({"segment": [None], "age": [np.nan], "income": [np.nan],
                                 "risk_tolerance": [np.nan]}),
        tier=np.array(["A"], dtype=object), segment=np.array(["unknown"], dtype=object),
    )  # fmt: skip
    book = RuleBook(products, known_segments={"top", "unknown"})
    assert book.decide(state).reasons[0] == {
        3: "eligibility: only for segments top (client: unknown)"
    }
    strict = book.decide(state, client_facts(state, strict=True, lowest_tolerance=1.0))
    assert strict.reasons[0] == {
        1: "eligibility: minimum age 18 needs the client's age or birth date; send it",
        2: "eligibility: minimum age 18 needs the client's age or birth date; send it",
        3: "eligibility: minimum age 18 needs the client's age or birth date; send it",
    }
    assert not strict.blocked[0, 0]
    state.attributes["age"] = [30.0]
    strict = book.decide(state, client_facts(state, strict=True, lowest_tolerance=1.0))
    assert strict.reasons[0] == {
        1: "eligibility: minimum income 10,000 needs the client's income; send it",
        2: "suitability: risk level 5 needs the client's risk tolerance; send it",
        3: "eligibility: only for segments top needs the client's segment; send it",
    }
    everything = book.decide(state, client_facts(state, strict=True))  # no lowest tolerance
    assert (
        everything.reasons[0][0]
        == "suitability: risk level 1 needs the client's risk tolerance; send it"
    )


# -- 4. holdings and dropped ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("customer", "fragment"),
    [
        ({"holdings": [CURRENT_ACCOUNT], "dropped": [CURRENT_ACCOUNT]},
         f"'{CURRENT_ACCOUNT}' is in both holdings and dropped"),
        ({"holdings": [CURRENT_ACCOUNT] * 100}, f"holdings: '{CURRENT_ACCOUNT}' {TWICE}"),
        ({"dropped": [SAVINGS, MORTGAGE, SAVINGS]}, f"dropped: '{SAVINGS}' {TWICE}"),
        ({"holdings": [CURRENT_ACCOUNT, f" {CURRENT_ACCOUNT} "]},
         f"holdings: '{CURRENT_ACCOUNT}' {TWICE}"),
        ({"holdings": ["p" * 129]}, "at most 128 characters"),
    ],
    ids=["held-and-dropped", "held-100-times", "dropped-twice", "padded-twice", "long-id"],
)  # fmt: skip
def test_holdings_and_dropped_name_each_product_once(
    server: LiveServer, world: World, customer: dict[str, Any], fragment: str
) -> None:
    events = server.services.events
    before = events.count()
    body = {"customer": {"attributes": ADULT, **customer}, "k": 3}
    assert fragment in message(post(server, world, body))
    assert events.count() == before
    fine = {"customer": {"attributes": ADULT, "holdings": [CURRENT_ACCOUNT],
                         "dropped": [SAVINGS]}, "k": 3}  # fmt: skip
    assert post(server, world, fine).status_code == 200
