"""A/B experiments over real HTTP: definitions, sticky assignment, exposures, feedback,
the contact policy, and rehearsals whose readouts must find a real difference and no
false one.

The world here is a rehearsal bank (20,000 clients, 8 snapshots, with the true
probabilities of the month after) and a store with two versions of the model: v1 is
@champion, v2 @challenger. Every test uses a channel of its own, so experiments do not
meet (one experiment per channel at a time).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from recommender import columns as C
from recommender.catalog import bank_catalog
from recommender.cli import main
from recommender.experiment import Experiment
from recommender.models.hybrid import HybridConfig
from recommender.synthetic import generate, write_bank
from serving.app import create_app
from serving.events import EventStore
from serving.rehearsal import Behaviour, simulate
from tests import serving_fixtures as fx
from tests.serving_fixtures import LiveServer, World, live_server, make_keys, store_uri
from training.abreport import experiment_report
from training.tracking import configure

CATALOG = [str(p) for p in bank_catalog()[C.PRODUCT_ID]]
HOLDOUT_REASON = "experiment holdout: this client is in the control group that gets no offer"
REHEARSAL_MODEL = HybridConfig(epochs=10, no_components=32, ensemble=1, num_threads=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home = tmp_path_factory.mktemp("experiments")
    bank = home / "bank"
    write_bank(generate(20_000, 8, seed=5, next_month=True), bank)
    uri = store_uri(home)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fx, "SMALL", REHEARSAL_MODEL)
        first = fx.train_into(bank, uri, home)  # v1: @champion
        second = fx.train_into(bank, uri, home)  # v2: @challenger
    assert (first.version, second.version) == ("1", "2")
    keys_file = home / "api_keys.json"
    return World(home, bank, uri, keys_file, make_keys(keys_file), first.version)


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[LiveServer]:
    with live_server(create_app(world.settings("ab"))) as live:
        yield live


def events_url(world: World, tag: str = "ab") -> str:
    return f"sqlite:///{world.home / f'{tag}-events.db'}"


def call(server: LiveServer, world: World, role: str, method: str, path: str,
         **kwargs: Any) -> httpx.Response:  # fmt: skip
    with server.client(world.keys[role]) as client:
        return client.request(method, path, **kwargs)


def create(server: LiveServer, world: World, body: dict[str, Any]) -> dict[str, Any]:
    response = call(server, world, "admin", "POST", "/v1/experiments", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def batch(server: LiveServer, world: World, ids: list[str], channel: str,
          k: int = 3) -> list[dict[str, Any]]:  # fmt: skip
    body = {"requests": [{"customer_id": c, "k": k, "channel": channel} for c in ids]}
    response = call(server, world, "officer", "POST", "/v1/recommendations/batch", json=body)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


IDS = [f"C{i:07d}" for i in range(1, 401)]


# -- definitions ---------------------------------------------------------------------------


def test_experiments_are_created_listed_refused_and_stopped(
    server: LiveServer, world: World
) -> None:
    body = {"name": "life", "channel": "life", "holdout": 0.1,
            "variants": [{"name": "control"}, {"name": "treatment", "weight": 3,
                                               "model": "challenger"}]}  # fmt: skip
    created = create(server, world, body)
    assert created["status"] == "running"
    assert created["control"] == "control"
    assert created["shares"] == pytest.approx({"control": 0.225, "treatment": 0.675,
                                               "holdout": 0.1})  # fmt: skip

    again = call(server, world, "admin", "POST", "/v1/experiments", json=body)
    assert again.status_code == 409
    assert "exists" in again.json()["detail"]
    overlapping = call(server, world, "admin", "POST", "/v1/experiments",
                       json={**body, "name": "life-2"})  # fmt: skip
    assert overlapping.status_code == 409
    assert "runs in channel 'life'" in overlapping.json()["detail"]

    listed = call(server, world, "analyst", "GET", "/v1/experiments")
    assert listed.status_code == 200
    assert "life" in [e["name"] for e in listed.json()]
    assert call(server, world, "officer", "GET", "/v1/experiments").status_code == 403
    one = call(server, world, "analyst", "GET", "/v1/experiments/life")
    assert one.json()["variants"][1]["model"] == "challenger"
    assert call(server, world, "analyst", "GET", "/v1/experiments/none").status_code == 404

    stopped = call(server, world, "admin", "POST", "/v1/experiments/life/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    again_stopped = call(server, world, "admin", "POST", "/v1/experiments/life/stop")
    assert again_stopped.json()["stopped_at"] == stopped.json()["stopped_at"]
    assert all(r["experiment"] is None for r in batch(server, world, IDS[:20], "life"))
    assert call(server, world, "admin", "POST", "/v1/experiments/none/stop").status_code == 404


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": [{"name": "a", "weight": 0}]}, "greater than 0"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "variant names must be unique"),
        ({"variants": [{"name": "holdout"}]}, "reserved for the holdout"),
        ({"holdout": 1.0}, "less than 1"),
        ({"control": "nope"}, "control 'nope' is not a variant"),
        ({"variants": [{"name": "a", "model": "no-such-alias"}]}, "could not be loaded"),
        ({"variants": [{"name": "a", "policy": "popularity", "model": "champion"}]},
         "uses no model"),
        ({"end": "2020-01-01T00:00Z"}, "must be after start"),
        ({"start": "yesterday"}, "not an ISO 8601 time"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_bad_definition_is_a_422_that_says_why(
    server: LiveServer, world: World, change: dict[str, Any], message: str
) -> None:
    body = {"name": "bad", "channel": "bad", "variants": [{"name": "a"}], **change}
    response = call(server, world, "admin", "POST", "/v1/experiments", json=body)
    assert response.status_code == 422, response.text
    assert message in json.dumps(response.json())
    assert call(server, world, "analyst", "GET", "/v1/experiments/bad").status_code == 404


# -- serving under an experiment -----------------------------------------------------------


def test_assignment_is_sticky_and_every_offer_is_an_exposure(
    server: LiveServer, world: World
) -> None:
    created = create(server, world, {
        "name": "sticky", "channel": "sticky", "holdout": 0.2,
        "variants": [{"name": "control", "model": "champion"},
                     {"name": "treatment", "model": "challenger"}],
    })  # fmt: skip
    experiment = Experiment.from_dict({k: v for k, v in created.items()
                                       if k not in ("status", "shares")})  # fmt: skip
    first = batch(server, world, IDS, "sticky")
    second = batch(server, world, IDS, "sticky")
    arms = {r["customer_id"]: r["variant"] for r in first}
    assert arms == {r["customer_id"]: r["variant"] for r in second}  # sticky
    assert arms == {c: experiment.assign(c) for c in IDS}  # the hash, no lookup
    assert set(arms.values()) == {"control", "treatment", "holdout"}
    for r in first:
        assert r["experiment"] == "sticky"
        if r["variant"] == "holdout":
            assert r["recommendations"] == []
            assert {e["reason"] for e in r["excluded"]} == {HOLDOUT_REASON}
            assert sorted(e["product_id"] for e in r["excluded"]) == sorted(CATALOG)
        else:
            assert HOLDOUT_REASON not in {e["reason"] for e in r["excluded"]}
            version = {"control": "1", "treatment": "2"}[r["variant"]]
            assert r["model"]["version"] == version
    outside = batch(server, world, IDS[:10], "branch")
    assert all(r["experiment"] is None and r["variant"] is None for r in outside)

    store = EventStore(events_url(world))
    try:
        shown = store.frame("offers", "sticky")
        decided = store.frame("decisions", "sticky")
    finally:
        store.close()
    served = [(r["request_id"], o["product_id"], o["rank"], r["variant"])
              for r in first + second for o in r["recommendations"]]  # fmt: skip
    logged = list(zip(shown["request_id"], shown["product_id"], shown["rank"], shown["variant"],
                      strict=True))  # fmt: skip
    assert sorted(logged) == sorted(served)
    assert len(decided) == 2 * len(IDS)  # the holdout's decisions are kept too
    assert dict(zip(decided["customer_id"], decided["variant"], strict=False)) == arms


def test_the_popularity_policy_ranks_by_holding_share(server: LiveServer, world: World) -> None:
    create(server, world, {"name": "pop", "channel": "pop",
                           "variants": [{"name": "popular", "policy": "popularity"}]})  # fmt: skip
    results = batch(server, world, IDS[:50], "pop", k=4)
    share = server.services.popularity
    index = {p: i for i, p in enumerate(CATALOG)}
    for r in results:
        assert (r["variant"], r["policy"]) == ("popular", "popularity")
        shares = [share[index[o["product_id"]]] for o in r["recommendations"]]
        assert shares == sorted(shares, reverse=True)
        for o in r["recommendations"]:
            assert o["reasons"] == [
                f"popularity policy: held by {share[index[o['product_id']]]:.0%} of clients"
            ]


# -- feedback and the contact policy -------------------------------------------------------


def test_feedback_is_checked_idempotent_and_shown_in_the_client_view(
    server: LiveServer, world: World
) -> None:
    (answer,) = batch(server, world, ["C0000500"], "branch")
    request_id = answer["request_id"]
    offered = answer["recommendations"][0]["product_id"]
    offers = {o["product_id"] for o in answer["recommendations"]}
    not_offered = next(p for p in CATALOG if p not in offers)

    def send(body: dict[str, Any]) -> httpx.Response:
        return call(server, world, "officer", "POST", "/v1/feedback", json=body)

    unknown = send({"request_id": "nope", "product_id": offered, "outcome": "shown"})
    assert unknown.status_code == 404
    assert unknown.json()["detail"].startswith("request_id 'nope' is unknown")
    wrong = send({"request_id": request_id, "product_id": not_offered, "outcome": "accepted"})
    assert wrong.status_code == 422
    (error,) = wrong.json()["detail"]
    assert error["loc"] == ["body", "product_id"]
    assert f"{not_offered!r} was not offered in request" in error["msg"]
    bad = send({"request_id": request_id, "product_id": offered, "outcome": "maybe"})
    assert bad.status_code == 422

    body = {"request_id": request_id, "product_id": offered, "outcome": "accepted"}
    assert send(body).json()["status"] == "recorded"
    assert send(body).json()["status"] == "duplicate"
    mixed = call(server, world, "officer", "POST", "/v1/feedback/batch", json={"items": [
        {**body, "outcome": "converted"}, body,
        {"request_id": "nope", "product_id": offered, "outcome": "shown"},
    ]})  # fmt: skip
    assert mixed.status_code == 200
    assert [r["status"] for r in mixed.json()["results"]] == ["recorded", "duplicate", 404]

    store = EventStore(events_url(world))
    try:
        rows = store.frame("feedback")
    finally:
        store.close()
    mine = rows[rows["request_id"] == request_id]
    assert sorted(mine["outcome"]) == ["accepted", "converted"]
    assert set(mine["key_id"]) == {"officer-app"}

    view = call(server, world, "officer", "GET", "/v1/customers/C0000500").json()
    made = {(o["request_id"], o["product_id"]): o for o in view["offers"]}
    assert made[(request_id, offered)]["outcome"] == "converted"
    assert made[(request_id, offered)]["outcomes"] == ["accepted", "converted"]
    metrics = call(server, world, "analyst", "GET", "/metrics").text
    assert fx.metric_value(metrics, "feedback_total", {"outcome": "converted"}) == 1.0


def test_the_contact_policy_suppresses_declines_and_caps_offers(world: World) -> None:
    # every request counts here (repeat window off): one key's repeats are in test_officer_abuse
    settings = world.settings("contact", decline_suppress_days=30, max_offers_per_week=4,
                              repeat_window_seconds=0)  # fmt: skip
    with live_server(create_app(settings)) as live:
        customer = "C0000900"
        first = batch(live, world, [customer], "branch", k=3)[0]
        assert len(first["recommendations"]) == 3
        declined = first["recommendations"][0]["product_id"]
        with live.client(world.keys["officer"]) as client:
            answer = client.post("/v1/feedback", json={
                "request_id": first["request_id"], "product_id": declined, "outcome": "declined",
            })  # fmt: skip
            assert answer.status_code == 200, answer.text
        second = batch(live, world, [customer], "branch", k=3)[0]
        assert len(second["recommendations"]) == 1  # 4 per week, 3 made already
        why = {e["product_id"]: e["reason"] for e in second["excluded"]}
        assert why[declined] == "contact policy: declined by this client within the last 30 days"
        assert declined not in [o["product_id"] for o in second["recommendations"]]
        third = batch(live, world, [customer], "branch", k=3)[0]
        assert third["recommendations"] == []
        assert {e["reason"] for e in third["excluded"]} == {
            "contact policy: 4 offers made to this client in the last 7 days (limit 4)"
        }
        other = batch(live, world, ["C0000901"], "branch", k=3)[0]
        assert len(other["recommendations"]) == 3  # per client


# -- rehearsals ----------------------------------------------------------------------------


def test_a_rehearsal_detects_the_better_variant_and_the_holdout(
    server: LiveServer, world: World
) -> None:
    """Hybrid champion against the popularity policy, 10% holdout, 6,000 clients shown
    their top offer (seed fixed, as every test here)."""
    create(server, world, {
        "name": "hybrid-vs-popularity", "channel": "rehearsal", "holdout": 0.1,
        "variants": [{"name": "popularity", "policy": "popularity"},
                     {"name": "champion", "model": "champion"}],
    })  # fmt: skip
    out = world.home / "rehearsal"
    counts = simulate(server.url, world.keys["officer"], world.bank_dir, "rehearsal", 6000,
                      seed=1, out_dir=out / "outcomes", behaviour=Behaviour(3.0), k=1)  # fmt: skip
    assert counts["requests"] == 6000 and counts["errors"] == 0
    report = experiment_report("hybrid-vs-popularity", events_url(world), out / "outcomes",
                               30, out, world.tracking_uri)  # fmt: skip

    (vs_control,) = [c for c in report["comparisons"] if c["metric"] == "conversion"]
    assert vs_control["variant"] == "champion" and vs_control["control"] == "popularity"
    assert vs_control["difference"] > 0
    assert vs_control["p_value"] < 0.05 and vs_control["significant"]
    assert vs_control["clients"]["champion"] > 2000  # the sample size it was detected at
    holdout = report["treated_vs_holdout"]
    assert holdout["variant_rate"] > holdout["control_rate"]
    assert holdout["p_value"] < 0.05
    assert report["arms"]["holdout"]["exposures"] == 0
    assert not report["sample_ratio"]["mismatch"]
    assert sum(a["clients"] for a in report["arms"].values()) == 6000
    assert Path(report["files"]["json"]).exists() and Path(report["files"]["png"]).exists()

    configure(world.tracking_uri)
    run = MlflowClient().get_run(report["mlflow_run_id"])
    assert run.data.tags["ab.model.champion"] == "models:/cross-sell-recommender/1"
    assert run.data.tags["ab.source_run.champion"]  # the training run of v1
    assert run.data.metrics["champion_vs_popularity.conversion.p_value"] == pytest.approx(
        vs_control["p_value"]
    )
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"hybrid-vs-popularity.json", "hybrid-vs-popularity.png"}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`recommender ...` as the console script runs it: (exit status, stdout + stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_an_a_a_rehearsal_finds_no_difference_through_the_cli(
    server: LiveServer, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two identical arms: no significant difference (fixed seed; the false-positive
    rate of the test itself is checked in test_abtest_core)."""
    create(server, world, {"name": "a-a", "channel": "aa",
                           "variants": [{"name": "a"}, {"name": "b"}]})  # fmt: skip
    key_file = tmp_path / "officer.key"
    key_file.write_text(world.keys["officer"])
    code, output = run_cli([
        "ab", "simulate", "--experiment", "a-a", "--customers", "4000", "--seed", "3",
        "--k", "1", "--url", server.url, "--key-file", str(key_file),
        "--data", str(world.bank_dir), "--events", events_url(world),
        "--out", str(tmp_path), "--tracking-uri", world.tracking_uri,
    ], capsys)  # fmt: skip
    assert code == 0, output
    assert "b vs a on conversion" in output
    assert "sample ratio OK" in output
    report = json.loads((tmp_path / "a-a.json").read_text())
    for comparison in report["comparisons"]:
        assert comparison["p_value"] > 0.05, comparison
        assert not comparison["significant"]

    code, output = run_cli([
        "ab", "report", "--experiment", "a-a", "--events", events_url(world),
        "--out", str(tmp_path / "again"), "--no-mlflow",
    ], capsys)  # fmt: skip
    assert code == 0, output
    assert "outcomes from snapshots: no (feedback only)" in output
    code, output = run_cli([
        "ab", "report", "--experiment", "nope", "--events", events_url(world), "--no-mlflow",
        "--out", str(tmp_path / "x"),
    ], capsys)  # fmt: skip
    assert code == 2
    assert output.startswith("error: no experiment named 'nope'")
    assert "Traceback" not in output


def test_a_variant_model_that_cannot_load_is_one_holder_not_a_leak(
    server: LiveServer, world: World
) -> None:
    """An experiment stored with an alias nobody registered (as another worker might
    hold it): every refresh reuses one holder (no new polling thread each time), clients
    get the main model outside the experiment, and stopping it lets the holder go."""
    import threading

    book = server.services.experiments
    ghost = Experiment.from_dict({"name": "ghost", "channel": "ghost",
                                  "variants": [{"name": "g", "model": "ghost-alias"}]})  # fmt: skip
    store = EventStore(events_url(world))
    try:
        store.create_experiment(ghost)
    finally:
        store.close()
    book.refresh()
    threads = threading.active_count()
    for _ in range(5):
        book.refresh()
    ghosts = [uri for uri in book.holders if uri.endswith("@ghost-alias")]
    assert len(ghosts) == 1
    assert threading.active_count() <= threads
    assert "variant 'g' not loaded" in (book.last_error or "")
    (answer,) = batch(server, world, ["C0000001"], "ghost")
    assert answer["experiment"] is None and answer["recommendations"]
    stopped = call(server, world, "admin", "POST", "/v1/experiments/ghost/stop")
    assert stopped.status_code == 200
    assert not [uri for uri in book.holders if uri.endswith("@ghost-alias")]
