"""Expensive requests over real HTTP: per-key rate and concurrency limits (in one worker,
and shared through Redis by two), the cap on cold starts per batch, cold starts kept off
the event loop, the cap on experiments, and the ranges of cold-start attributes and of
experiment weights.

Each test reproduces what the adversarial review did (issue 11, finding 12 and the two
extra findings) against a live uvicorn. Settings the unfixed code does not know are
dropped (`limited`), so the same file runs against an older commit and fails there on
the attack, not on a settings error.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pandas as pd
import pytest

import serving.routes
from recommender.errors import ConfigError
from recommender.experiment import Experiment, Variant
from recommender.synthetic import generate, write_bank
from serving.app import create_app
from serving.keys import add_key
from serving.settings import ServiceSettings
from tests.serving_fixtures import (
    LiveServer,
    World,
    live_server,
    make_keys,
    store_uri,
    train_into,
)

REC = "/v1/recommendations"
BATCH = "/v1/recommendations/batch"
REDIS_URL = "redis://127.0.0.1:6379/0"
OFFICERS = (
    "rate",
    "cold",
    "debt",
    "cap",
    "slot",
    "other",
    "loop",
    "shared",
    "fallback",
    "view",
    "feedback",
    "deep",
    "repeat",
)
STRICT = {  # small limits: a token refills every 10 s, so none refills during a test
    "rate_limit_per_minute": 6, "rate_limit_burst": 5, "rate_limit_cold_start_cost": 3,
    "rate_limit_concurrency": 1, "max_cold_starts_per_batch": 2,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Bank:
    world: World
    officers: dict[str, str]  # one officer key per test: buckets are per key


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Bank:
    """The serving tests' small bank with an `age` column too (the rules read age first),
    so that every attribute the rules read can be sent wrong."""
    home = tmp_path_factory.mktemp("limits")
    generated = generate(3000, 5, seed=3)
    customers = generated.customers.copy()
    last = pd.Timestamp(generated.snapshot_dates[-1])
    customers["age"] = ((last - customers["birth_date"]).dt.days / 365.25).round()
    bank_dir = home / "bank"
    write_bank(dataclasses.replace(generated, customers=customers), bank_dir)
    uri = store_uri(home)
    outcome = train_into(bank_dir, uri, home)
    keys_file = home / "api_keys.json"
    keys = make_keys(keys_file)
    officers = {name: add_key(keys_file, f"officer-{name}", "officer") for name in OFFICERS}
    return Bank(World(home, bank_dir, uri, keys_file, keys, outcome.version), officers)


def limited(bank: Bank, tag: str, **limits: Any) -> ServiceSettings:
    known = {k: v for k, v in limits.items() if k in ServiceSettings.model_fields}
    return bank.world.settings(tag, **known)


@pytest.fixture(scope="module")
def strict(bank: Bank) -> Iterator[LiveServer]:
    with live_server(create_app(limited(bank, "strict", **STRICT))) as live:
        yield live


@pytest.fixture(scope="module")
def open_server(bank: Bank) -> Iterator[LiveServer]:
    """The default limits (generous), and room for five experiments."""
    settings = limited(bank, "open", rate_limit_per_minute=600, rate_limit_concurrency=8,
                       max_experiments=5)  # fmt: skip
    with live_server(create_app(settings)) as live:
        yield live


def known(n: int) -> list[dict[str, Any]]:
    return [{"customer_id": f"C{i:07d}"} for i in range(1, n + 1)]


def cold(n: int) -> list[dict[str, Any]]:
    return [{"customer": {"attributes": {"segment": "top", "income": 90_000.0 + i},
                          "holdings": ["ind_cco_fin_ult1"]}} for i in range(n)]  # fmt: skip


def refused(response: httpx.Response, *fragments: str) -> int:
    """A 429 with Retry-After and a message naming the limit; the seconds to wait."""
    assert response.status_code == 429, response.text
    detail = response.json()["detail"]
    for fragment in fragments:
        assert fragment in detail, detail
    return int(response.headers["Retry-After"])


# -- rate ------------------------------------------------------------------------------------


def test_a_key_past_its_burst_gets_429_with_retry_after_naming_the_setting(
    strict: LiveServer, bank: Bank
) -> None:
    """Five tokens: five known clients, then a 429 until the bucket refills (1 token per
    10 s); another key is not affected."""
    with strict.client(bank.officers["rate"]) as http, strict.client(bank.officers["other"]) as b:
        codes = [http.post(REC, json=item).status_code for item in known(5)]
        assert codes == [200] * 5
        wait = refused(http.post(REC, json=known(1)[0]), "rate limit", "officer-rate",
                       "RECOMMENDER_RATE_LIMIT_PER_MINUTE", "this request 1")  # fmt: skip
        assert 1 <= wait <= 10
        assert b.post(REC, json=known(1)[0]).status_code == 200


def test_a_cold_start_costs_more_than_a_known_client(strict: LiveServer, bank: Bank) -> None:
    """A cold start costs 3 tokens here: after three known clients (3 of 5 tokens), a
    known client still passes but a cold start does not."""
    with strict.client(bank.officers["cold"]) as http:
        assert [http.post(REC, json=item).status_code for item in known(3)] == [200] * 3
        refused(http.post(REC, json=cold(1)[0]), "a cold start 3", "this request 3")
        assert http.post(REC, json=known(1)[0]).status_code == 200


def test_a_batch_costs_the_sum_of_its_items_and_leaves_the_bucket_in_debt(
    strict: LiveServer, bank: Bank
) -> None:
    """Four known clients and two cold starts cost 10 tokens, twice the burst: admitted on
    a full bucket, then the key waits for the debt (about 60 s at 6 tokens a minute)."""
    with strict.client(bank.officers["debt"]) as http:
        answer = http.post(BATCH, json={"requests": known(4) + cold(2)})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["results"]) == 6
        wait = refused(http.post(REC, json=known(1)[0]), "this request 1")
        assert 50 <= wait <= 61


def test_a_batch_with_too_many_cold_starts_is_refused_before_it_costs_anything(
    strict: LiveServer, bank: Bank
) -> None:
    """The review's 1,000 cold starts in one batch (7.6 s of scoring): a 422 naming the
    field and the setting, and no token is spent on it."""
    with strict.client(bank.officers["cap"]) as http:
        for _ in range(3):  # refused each time without draining the bucket
            answer = http.post(BATCH, json={"requests": cold(3)})
            assert answer.status_code == 422, answer.text
            (error,) = answer.json()["detail"]
            assert error["loc"] == ["body", "requests"]
            assert "at most 2 cold starts" in error["msg"]
            assert "RECOMMENDER_MAX_COLD_STARTS_PER_BATCH" in error["msg"]
        assert http.post(BATCH, json={"requests": cold(1) + known(2)}).status_code == 200


# -- concurrency -------------------------------------------------------------------------------


def hold_decisions(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Requests with k=5 stop inside the route's decision until `release` is set (the
    server runs in this process): a request held in flight, deterministically."""
    entered, release = threading.Event(), threading.Event()
    original: Callable[..., Any] = serving.routes._decide

    def held(*args: Any, **kwargs: Any) -> Any:
        if args[1].k == 5:
            entered.set()
            release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(serving.routes, "_decide", held)
    return entered, release


def in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def test_a_key_may_have_only_so_many_requests_in_flight(
    strict: LiveServer, bank: Bank, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot per key here: while the key's batch is being scored, its next request is
    refused (429, Retry-After 1) and another key is still served."""
    entered, release = hold_decisions(monkeypatch)
    with strict.client(bank.officers["slot"]) as http, strict.client(bank.officers["other"]) as b:
        body = {"requests": [{"customer_id": "C0000001", "k": 5}]}
        thread, out = in_background(lambda: http.post(BATCH, json=body))
        try:
            assert entered.wait(30)
            second = http.post(REC, json=known(1)[0])
            assert refused(second, "concurrency limit", "RECOMMENDER_RATE_LIMIT_CONCURRENCY") == 1
            assert b.post(REC, json=known(1)[0]).status_code == 200
        finally:
            release.set()
            thread.join(30)
        assert out[0].status_code == 200
        assert http.post(REC, json=known(1)[0]).status_code == 200  # the slot is free again


# -- the event loop ----------------------------------------------------------------------------


def test_a_slow_cold_start_does_not_stall_the_event_loop(
    strict: LiveServer, bank: Bank, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold start whose decision takes 1.5 s of CPU (as a heavy re-ranked model would):
    /healthz answers meanwhile. Scored on the event loop, /healthz waited for it."""
    original: Callable[..., Any] = serving.routes._decide
    started = threading.Event()

    def heavy(*args: Any, **kwargs: Any) -> Any:
        if args[1].customer is not None:
            started.set()
            end = time.perf_counter() + 1.5
            while time.perf_counter() < end:  # CPU, holding the GIL as pandas would
                pass
        return original(*args, **kwargs)

    monkeypatch.setattr(serving.routes, "_decide", heavy)
    with strict.client(bank.officers["loop"]) as http, strict.client() as anonymous:
        thread, out = in_background(lambda: http.post(REC, json=cold(1)[0]))
        assert started.wait(30)
        start = time.perf_counter()
        assert anonymous.get("/healthz").status_code == 200
        latency = time.perf_counter() - start
        thread.join(30)
    assert out[0].status_code == 200, out[0].text
    assert latency < 0.5, f"/healthz took {latency:.2f} s during a cold start"


# -- shared through Redis ----------------------------------------------------------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own in the local Redis, deleted afterwards."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    prefix = f"test-limits-{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_two_workers_share_a_key_s_limits_through_redis(
    bank: Bank, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two apps (two workers) with one Redis: the burst of 4 is spent across both, and a
    request in flight in one takes the key's only slot in the other. Each worker counting
    on its own would have admitted 4 in each."""
    shared = {**STRICT, "rate_limit_burst": 4, "rate_limit_url": REDIS_URL,
              "rate_limit_prefix": redis_prefix}  # fmt: skip
    entered, release = hold_decisions(monkeypatch)
    key = bank.officers["shared"]
    with (
        live_server(create_app(limited(bank, "shared-a", **shared))) as one,
        live_server(create_app(limited(bank, "shared-b", **shared))) as two,
        one.client(key) as a,
        two.client(key) as b,
    ):
        thread, out = in_background(lambda: a.post(REC, json={"customer_id": "C0000001", "k": 5}))
        try:
            assert entered.wait(30)
            refused(b.post(REC, json=known(1)[0]), "concurrency limit")
        finally:
            release.set()
            thread.join(30)
        assert out[0].status_code == 200
        codes = [client.post(REC, json=known(1)[0]).status_code for client in (b, a, b)]
        assert codes == [200, 200, 200]  # 4 tokens spent, 1 + 3, across the two workers
        refused(a.post(REC, json=known(1)[0]), "rate limit")
        refused(b.post(REC, json=known(1)[0]), "rate limit")


def test_with_redis_unreachable_each_worker_still_limits_on_its_own(bank: Bank) -> None:
    """A Redis that is down must not take offers down, nor lift the limits."""
    settings = limited(bank, "fallback", **{**STRICT, "rate_limit_burst": 2,
                                            "rate_limit_url": "redis://127.0.0.1:1/0"})  # fmt: skip
    with live_server(create_app(settings)) as live, live.client(bank.officers["fallback"]) as h:
        assert [h.post(REC, json=item).status_code for item in known(2)] == [200, 200]
        refused(h.post(REC, json=known(1)[0]), "rate limit")


# -- experiments -------------------------------------------------------------------------------


def experiment(name: str, **change: Any) -> dict[str, Any]:
    return {"name": name, "channel": name, "variants": [{"name": "a"}, {"name": "b"}], **change}


def live_experiments(http: httpx.Client) -> list[str]:
    listed = http.get("/v1/experiments").json()
    return [e["name"] for e in listed if e["status"] in ("running", "scheduled")]


def test_running_and_scheduled_experiments_are_capped(open_server: LiveServer, bank: Bank) -> None:
    """The review created experiments without end; here at most 5 run or wait at once:
    the next is a 409 naming the setting, and stopping one makes room."""
    with open_server.client(bank.world.keys["admin"]) as http:
        created = []
        for n in range(10):
            body = experiment(f"cap-{n}")
            if n % 2:
                body["start"] = "2099-01-01T00:00Z"  # scheduled ones count too
            answer = http.post("/v1/experiments", json=body)
            if answer.status_code != 201:
                break
            created.append(body["name"])
        assert answer.status_code == 409, answer.text
        assert "RECOMMENDER_MAX_EXPERIMENTS=5" in answer.json()["detail"]
        assert len(live_experiments(http)) == 5
        assert http.post(f"/v1/experiments/{created[0]}/stop").status_code == 200
        assert http.post("/v1/experiments", json=experiment("cap-after-stop")).status_code == 201
        for name in live_experiments(http):
            http.post(f"/v1/experiments/{name}/stop")


@pytest.mark.parametrize(
    ("variants", "where", "fragment"),
    [
        ([{"name": "a", "weight": 1e308}, {"name": "b", "weight": 1e308}],
         ["body", "variants", 0, "weight"], "less than or equal to 1000"),
        ([{"name": "a"}, {"name": "b", "weight": 1e300}],
         ["body", "variants", 1, "weight"], "less than or equal to 1000"),
        ([{"name": "a", "weight": 1000.5}], ["body", "variants", 0, "weight"], "1000"),
        ([{"name": "a", "weight": 0}], ["body", "variants", 0, "weight"], "greater than 0"),
        ([{"name": "a", "weight": -2}], ["body", "variants", 0, "weight"], "greater than 0"),
        ([{"name": f"v{i}"} for i in range(11)], ["body", "variants"], "at most 10 items"),
        ([{"name": f"v{i}"} for i in range(500)], ["body", "variants"], "at most 10 items"),
    ],
    ids=["two-1e308", "1e300", "over-1000", "zero", "negative", "11-variants", "500-variants"],
)  # fmt: skip
def test_variant_weights_and_counts_out_of_bounds_are_field_errors(
    open_server: LiveServer, bank: Bank, variants: list[dict[str, Any]], where: list[Any],
    fragment: str,
) -> None:  # fmt: skip
    with open_server.client(bank.world.keys["admin"]) as http:
        answer = http.post("/v1/experiments", json=experiment("weights", variants=variants))
        assert answer.status_code == 422, answer.text
        errors = answer.json()["detail"]
        assert any(e["loc"] == where and fragment in e["msg"] for e in errors), errors


@pytest.mark.parametrize("literal", ["Infinity", "NaN", "-Infinity"])
def test_non_finite_weights_are_field_errors(
    open_server: LiveServer, bank: Bank, literal: str
) -> None:
    """Python's JSON parser reads NaN and Infinity; a weight must still be a number."""
    body = json.dumps(experiment("finite", variants=[{"name": "a"}])).replace(
        '{"name": "a"}', '{"name": "a", "weight": ' + literal + "}"
    )
    with open_server.client(bank.world.keys["admin"]) as http:
        answer = http.post("/v1/experiments", content=body,
                           headers={"content-type": "application/json"})  # fmt: skip
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][:4] == ["body", "variants", 0, "weight"]


def test_the_largest_weight_and_the_most_variants_allowed_are_accepted(
    open_server: LiveServer, bank: Bank
) -> None:
    variants = [{"name": f"v{i}", "weight": 1000 if i == 0 else 0.001} for i in range(10)]
    with open_server.client(bank.world.keys["admin"]) as http:
        answer = http.post("/v1/experiments", json=experiment("bounds", variants=variants))
        assert answer.status_code == 201, answer.text
        shares = answer.json()["shares"]
        assert shares["v0"] == pytest.approx(1000 / (1000 + 9 * 0.001))
        assert http.post("/v1/experiments/bounds/stop").status_code == 200


def test_the_core_refuses_the_same_weights_and_counts() -> None:
    """Experiments also come from the event store and from code: the bounds are the
    core's, the API schema only documents them."""
    with pytest.raises(ConfigError, match=r"weight must be a positive number, got 1e\+308; "
                                          r"a relative traffic weight in \(0, 1000\]"):  # fmt: skip
        Variant("a", weight=1e308)
    with pytest.raises(ConfigError, match="at most 10 variants, got 11"):
        Experiment("x", "x", tuple(Variant(f"v{i}") for i in range(11)))
    assert Variant("a", weight=1000).weight == 1000


# -- cold-start attributes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "value", "fragment"),
    [
        ("age", -5, "attribute age: -5 is out of range; allowed 0 to 120 (an age in years)"),
        ("age", 1e308, "attribute age: 1e+308 is out of range; allowed 0 to 120"),
        ("age", 999, "attribute age: 999 is out of range; allowed 0 to 120"),
        ("income", -1, "attribute income: -1 is out of range; allowed 0 to "),
        ("income", 1e308, "attribute income: 1e+308 is out of range; allowed 0 to "),
        ("income", 10**400, "attribute income: 1000000000000000000000000000000000000..."),
        ("risk_tolerance", 99, "attribute risk_tolerance: 99 is out of range; allowed 1 to 5"),
        ("risk_tolerance", 0, "attribute risk_tolerance: 0 is out of range; allowed 1 to 5"),
        ("risk_tolerance", -3.5, "attribute risk_tolerance: -3.5 is out of range"),
        ("birth_date", "9999-01-01", "attribute birth_date: '9999-01-01' is out of range; "
                                     "allowed 1906-10-31 to 2027-10-31 (an age of 0 to 120"),
        ("birth_date", "1600-01-01", "attribute birth_date: '1600-01-01' is out of range"),
        ("birth_date", "2200-06-01", "attribute birth_date: '2200-06-01' is out of range"),
        ("join_date", "9999-12-31", "attribute join_date: '9999-12-31' is out of range; "
                                    "allowed 1896-"),
        ("join_date", "1600-01-01", "attribute join_date: '1600-01-01' is out of range"),
        ("as_of", "2200-01-01", "as_of '2200-01-01' is out of range; allowed 2016-10-31 to "),
        ("birth_date", "9999-01-01T00:00:00+02:00", "attribute birth_date: '9999-01-01T00"),
    ],
    ids=lambda v: str(v)[:20],
)  # fmt: skip
def test_cold_start_attributes_out_of_range_are_refused_naming_the_range(
    open_server: LiveServer, bank: Bank, attribute: str, value: Any, fragment: str
) -> None:
    """The review sent age -5 or 1e308, a risk tolerance of 99 (past suitability: a
    tolerance above every product's risk), dates in 1600 and 9999: all were scored."""
    body = {"customer": {"attributes": {"segment": "top", attribute: value}}}
    with open_server.client(bank.officers["other"]) as http:
        answer = http.post(REC, json=body)
    assert answer.status_code == 422, answer.text
    assert fragment in answer.json()["detail"][0]["msg"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_attribute_values_are_refused(
    open_server: LiveServer, bank: Bank, literal: str
) -> None:
    """A NaN income passed for an unknown one (so the minimum-income rule let it by)."""
    body = '{"customer": {"attributes": {"income": ' + literal + "}}}"
    with open_server.client(bank.officers["other"]) as http:
        answer = http.post(REC, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "customer", "attributes"]
    assert "attribute income:" in error["msg"] and "is not a number" in error["msg"]


def test_attributes_at_the_edges_of_their_ranges_are_scored(
    open_server: LiveServer, bank: Bank
) -> None:
    """The ranges are generous: a newborn, a centenarian, no income, a very high one,
    either end of the risk scale, a client who joined after the model's snapshot."""
    edges = [{"age": 0}, {"age": 120}, {"income": 0}, {"income": 5_000_000},
             {"risk_tolerance": 1}, {"risk_tolerance": 5}, {"birth_date": "1910-01-01"},
             {"birth_date": "2026-12-01"}, {"join_date": "2026-11-30"},
             {"as_of": "2026-12-01"}, {"income": None},
             {"birth_date": "1975-04-02T10:00:00Z"}, {"birth_date": "1975-04-02T00:00+02:00"},
             {"as_of": "2026-11-01T00:00:00-05:00"}]  # fmt: skip
    with open_server.client(bank.officers["other"]) as http:
        for attributes in edges:
            body = {"customer": {"attributes": {"segment": "individual", **attributes}}}
            answer = http.post(REC, json=body)
            assert answer.status_code == 200, (attributes, answer.text)


def test_the_ranges_come_from_the_known_domains_and_the_training_data(
    open_server: LiveServer,
) -> None:
    """The served bundle's ranges: known domains for the rules' attributes (income never
    negative), the training data's span, widened, for the others."""
    from recommender.bundle import allowed_range

    bundle = open_server.services.holder.current.bundle
    ranges = bundle.attribute_ranges()
    assert (ranges["age"].low, ranges["age"].high) == (0, 120)
    assert (ranges["risk_tolerance"].low, ranges["risk_tolerance"].high) == (1, 5)
    assert ranges["income"].low == 0 and 5e6 < ranges["income"].high < 1e9
    assert ranges["birth_date"].high == 120  # years before the snapshot
    assert "segment" not in ranges  # categorical: checked against nothing here
    assert allowed_range("edad", "numeric", seen=[], catalog_risk=[]).high == 120
    spread = allowed_range("balance", "numeric", seen=[100.0, 950.0], catalog_risk=[])
    assert spread.low < 0 and spread.high > 50_000  # overdrafts hide below the quantiles
    assert allowed_range("renta", "numeric", seen=[100.0, 950.0], catalog_risk=[]).low == 0


# -- found by the adversarial review of the hardened service -------------------------------


def test_reading_client_views_is_paced_like_offers(strict: LiveServer, bank: Bank) -> None:
    """Before: an officer key read all 5,000 client views in 6.5 s, none refused."""
    with strict.client(bank.officers["view"]) as http:
        codes = [http.get(f"/v1/customers/C{i:07d}").status_code for i in range(1, 6)]
        assert codes == [200] * 5
        refused(http.get("/v1/customers/C0000006"), "rate limit", "officer-view")


def test_feedback_costs_a_token_per_item(strict: LiveServer, bank: Bank) -> None:
    """A feedback batch of 6 items is over the burst of 5: admitted on a full bucket and
    leaves it in debt, so the next feedback waits."""
    with strict.client(bank.officers["feedback"]) as http:
        items = [{"request_id": f"r{i}", "product_id": "p", "outcome": "shown"} for i in range(6)]
        first = http.post("/v1/feedback/batch", json={"items": items})
        assert first.status_code == 200, first.text
        assert {r["status"] for r in first.json()["results"]} == {404}
        refused(http.post("/v1/feedback", json=items[0]), "rate limit", "officer-feedback")


@pytest.mark.parametrize("route", [REC, BATCH])
def test_deeply_nested_json_of_another_content_type_is_not_a_server_error(
    strict: LiveServer, bank: Bank, route: str
) -> None:
    """Before: 500 (RecursionError from the rate limit's look at the body)."""
    body = "[" * 100_000 + "]" * 100_000
    with strict.client(bank.officers["deep"]) as http:
        answer = http.post(route, content=body, headers={"content-type": "text/plain"})
    assert 400 <= answer.status_code < 500, answer.text


def test_a_batch_names_each_client_once(open_server: LiveServer, bank: Bank) -> None:
    """Before: two items for one client with k=6 (two objectives) made 12 offers in one
    call, past the weekly cap of 6, since each item read the history before the batch."""
    items = [{"customer_id": "C0000031", "k": 6, "objective": "propensity"},
             {"customer_id": "C0000031", "k": 6, "objective": "expected_value"}]  # fmt: skip
    with open_server.client(bank.officers["repeat"]) as http:
        answer = http.post(BATCH, json={"requests": items})
    assert answer.status_code == 422, answer.text
    error = answer.json()["detail"][0]
    assert error["loc"] == ["body", "requests", 1, "customer_id"]
    assert "already item 0" in error["msg"]


def test_no_redirect_is_built_from_the_callers_host(open_server: LiveServer, bank: Bank) -> None:
    """Before: `GET /docs/` with `Host: evil.example` answered 307 to http://evil.example/docs."""
    with open_server.client(bank.officers["repeat"]) as http:
        for path in ("/docs/", "/v1/products/"):
            answer = http.get(path, headers={"host": "evil.example"}, follow_redirects=False)
            assert answer.status_code in (401, 404), (path, answer.status_code)
            assert "evil.example" not in answer.headers.get("location", "")


def test_a_feedback_item_still_queued_is_answered_alone(
    open_server: LiveServer, bank: Bank
) -> None:
    """Before: while events waited to be written, one unknown request id turned the whole
    feedback batch into a 503; now that item says 503 inline and the others are answered."""
    with open_server.client(bank.officers["repeat"]) as http:
        made = http.post(REC, json={"customer_id": "C0000040", "k": 1})
        assert made.status_code == 200, made.text
        offer = made.json()["recommendations"][0]["product_id"]
        audit = open_server.app.state.services.audit
        audit.pending += 1  # as if another decision were still waiting for its commit
        try:
            answer = http.post("/v1/feedback/batch", json={"items": [
                {"request_id": made.json()["request_id"], "product_id": offer,
                 "outcome": "shown"},
                {"request_id": "not-yet-written", "product_id": offer, "outcome": "shown"},
            ]})  # fmt: skip
        finally:
            audit.pending -= 1
    assert answer.status_code == 200, answer.text
    assert [r["status"] for r in answer.json()["results"]] == ["recorded", 503]
