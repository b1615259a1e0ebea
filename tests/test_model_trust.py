"""What the service may unpickle, attacked over real HTTP (issue 11, findings 5, 6 and 12).

Loading a model means unpickling it, which runs whatever code the pickle names. Every
attack here plants a pickle whose `__reduce__` creates a marker file, points the service at
it the way an attacker could (a crafted experiment variant with an admin key, a bundle
changed in the MLflow artifact store after registration, a changed local copy), and checks
that the service refuses it and that the marker never appears: refusing after unpickling
would be too late.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from recommender.errors import ConfigError
from recommender.experiment import Variant
from serving.app import create_app
from serving.model_holder import ModelHolder
from tests.serving_fixtures import (
    MODEL_NAME,
    UNREACHABLE_MLFLOW,
    LiveServer,
    World,
    live_server,
    make_world,
    promote_to_champion,
    train_into,
)
from training.tracking import configure


class Plant:
    """A pickle that creates `marker` when it is loaded: stands for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def plant(folder: Path, marker: Path, *, meta: dict[str, Any] | None = None) -> bytes:
    """A malicious bundle.pkl in `folder` (and a meta.json like the local copy's, whose
    digest matches, so that only the service's own rules can refuse it)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = pickle.dumps(Plant(marker))
    (folder / "bundle.pkl").write_bytes(data)
    values = {"name": MODEL_NAME, "version": "1", "alias": "champion",
              "bundle_sha256": hashlib.sha256(data).hexdigest(), **(meta or {})}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(values))
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("trust"))


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[LiveServer]:
    with live_server(create_app(world.settings("trust"))) as live:
        yield live


def admin(server: LiveServer, world: World, method: str, path: str, **kwargs: Any) -> Any:
    with server.client(world.keys["admin"]) as client:
        return client.request(method, path, **kwargs)


def readiness(server: LiveServer, world: World) -> tuple[int, dict[str, Any]]:
    """/readyz as an admin sees it (details may be kept from callers without a key)."""
    response = admin(server, world, "GET", "/readyz")
    return response.status_code, response.json()


def last_error(server: LiveServer, world: World) -> str:
    payload = readiness(server, world)[1]
    return str(payload.get("last_error") or server.services.holder.last_error)


def serving_version(server: LiveServer, world: World) -> str:
    return str(readiness(server, world)[1]["model"]["version"])


def artifact_dir(world: World, version: str) -> Path:
    """Where the artifact store keeps a registered version's files."""
    configure(world.tracking_uri)
    client = MlflowClient()
    source = client.get_model_version(MODEL_NAME, version).source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    return Path(str(location).removeprefix("file://"))


# -- finding 5: a variant's model reference ----------------------------------------------------


CRAFTED = [
    "models:/{evil}@x",  # models://ABS/PATH@x: an absolute path
    "models:/../../x@y",  # up out of the local model directory
    "models:/../x/../../x@y",
    "models:/..@x",
    "models:/" + MODEL_NAME + "/../../x@y",  # the served name, then a path
    "models:/" + MODEL_NAME + "@../../x",
    "models:/" + MODEL_NAME + "/1/../../x",
    "models:/other-model@champion",  # another registered model
    "../../x",
    "champion/../../x",
    "champion\nINFO: forged log line",
    "champion\n",
    "7\n",
    "1e3",
    "models:/" + MODEL_NAME + "@champion\n",
    "runs:/0123456789abcdef/model",
    "/abs/path",
]


def test_crafted_model_references_are_refused_before_anything_is_unpickled(
    server: LiveServer, world: World, tmp_path: Path
) -> None:
    """The attack of finding 5: a variant `model` that the local-copy fallback turned into
    a path. Malicious copies wait where each reference used to lead; every POST is a 422
    naming the field and the allowed forms, and no marker appears."""
    evil = tmp_path / "evil"
    local = world.home / "trust-models"
    markers = {
        "absolute": (evil, tmp_path / "ran-absolute"),
        "up two": (local / "x", tmp_path / "ran-up-two"),
        "variants": (local / "variants", tmp_path / "ran-variants"),
        "served name": (local / "variants" / "x", tmp_path / "ran-served-name"),
    }
    for folder, marker in markers.values():
        plant(folder, marker)
    for template in CRAFTED:
        reference = template.format(evil=evil)
        body = {"name": "crafted", "variants": [{"name": "a", "model": reference}]}
        response = admin(server, world, "POST", "/v1/experiments", json=body)
        ran = [name for name, (_, marker) in markers.items() if marker.exists()]
        assert ran == [], f"{reference!r} ran the pickle planted for {ran}"
        assert response.status_code == 422, (reference, response.text)
        text = json.dumps(response.json())
        assert "model" in text and "alias" in text and "version" in text, text
    listed = admin(server, world, "GET", "/v1/experiments").json()
    assert [e["name"] for e in listed] == []


def test_a_variant_never_falls_back_to_a_local_copy_the_registry_does_not_know(
    server: LiveServer, world: World, tmp_path: Path
) -> None:
    """A well-formed alias the registry does not have: the variant's holder looks for a
    local copy in its own folder, where a copy (with a matching meta.json) was planted.
    It is not loaded: the registry answered that the alias does not exist."""
    marker = tmp_path / "ran-ghost"
    uri = f"models:/{MODEL_NAME}@ghost"
    folder = world.home / "trust-models" / "variants" / re.sub(r"[^A-Za-z0-9_.-]", "_", uri)
    plant(folder / MODEL_NAME, marker, meta={"alias": "ghost", "model_uri": uri})
    body = {"name": "ghost", "variants": [{"name": "a", "model": "ghost"}]}
    response = admin(server, world, "POST", "/v1/experiments", json=body)
    assert response.status_code == 422, response.text
    assert "could not be loaded" in response.text
    assert not marker.exists()


@pytest.mark.parametrize(
    "reference",
    ["champion", "challenger", "v2-candidate", "7", f"models:/{MODEL_NAME}@champion",
     f"models:/{MODEL_NAME}/12"],
)  # fmt: skip
def test_aliases_versions_and_registry_uris_are_valid_references(reference: str) -> None:
    assert Variant("a", model=reference).model == reference


# another model's well-formed name is refused by the service, not by the pattern (tested
# over HTTP above), so it is not among the malformed references here
@pytest.mark.parametrize("template", [t for t in CRAFTED if not t.startswith("models:/other-")])
def test_a_variant_refuses_every_crafted_reference(template: str) -> None:
    reference = template.format(evil="/tmp/evil")
    with pytest.raises(ConfigError, match=r"model .*alias.*version"):
        Variant("a", model=reference)


@pytest.mark.parametrize(
    "uri", ["runs:/0123/model", "/srv/models/x", "models:/../../x@y", "models:/a b@champion",
            "models:/x@champion\n"],
)  # fmt: skip
def test_the_service_serves_registry_uris_only(uri: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="models:/<"):
        ModelHolder(uri, None, None, None, tmp_path)  # type: ignore[arg-type]


def test_a_local_copy_never_leaves_its_folder(tmp_path: Path) -> None:
    """Belt and braces behind the name check: a name that would lead elsewhere, or a
    folder that is a link to elsewhere, is refused before anything is read."""
    holder = ModelHolder(f"models:/{MODEL_NAME}@champion", None, None, None,  # type: ignore[arg-type]
                         tmp_path / "models")  # fmt: skip
    assert holder._copy_dir() == (tmp_path / "models" / MODEL_NAME).resolve()
    holder.name = "../elsewhere"
    with pytest.raises(ConfigError, match="outside"):
        holder._copy_dir()
    holder.name = MODEL_NAME
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / MODEL_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="outside"):
        holder._copy_dir()


def test_a_full_uri_must_name_the_served_model(server: LiveServer, world: World) -> None:
    body = {"name": "other", "variants": [{"name": "a", "model": "models:/other-model@x"}]}
    response = admin(server, world, "POST", "/v1/experiments", json=body)
    assert response.status_code == 422
    assert f"registered name {MODEL_NAME!r}" in response.text


# -- finding 6: bundles changed after registration -----------------------------------------------


@dataclass(frozen=True)
class Tampered:
    version: str
    original: bytes  # the bundle as registered
    marker: Path


@pytest.fixture(scope="module")
def tampered(world: World, tmp_path_factory: pytest.TempPathFactory) -> Tampered:
    """A second registered version whose bundle.pkl was replaced in the artifact store
    after registration (by someone who can write the store, not the registry)."""
    version = train_into(world.bank_dir, world.tracking_uri, world.home).version
    bundle = artifact_dir(world, version) / "artifacts" / "bundle.pkl"
    original = bundle.read_bytes()
    marker = tmp_path_factory.mktemp("markers") / "ran-artifact"
    bundle.write_bytes(pickle.dumps(Plant(marker)))
    return Tampered(version, original, marker)


def test_the_registry_records_each_bundle_digest(world: World, tampered: Tampered) -> None:
    configure(world.tracking_uri)
    tags = MlflowClient().get_model_version(MODEL_NAME, tampered.version).tags
    assert tags["bundle_sha256"] == hashlib.sha256(tampered.original).hexdigest()


def test_the_local_copy_is_the_registry_bundle_readable_by_the_service_only(
    server: LiveServer, world: World
) -> None:
    folder = world.home / "trust-models" / MODEL_NAME
    meta = json.loads((folder / "meta.json").read_text())
    configure(world.tracking_uri)
    tags = MlflowClient().get_model_version(MODEL_NAME, meta["version"]).tags
    data = (folder / "bundle.pkl").read_bytes()
    assert meta["bundle_sha256"] == tags["bundle_sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["model_uri"] == f"models:/{MODEL_NAME}@champion"
    assert folder.stat().st_mode & 0o777 == 0o700
    for name in ("bundle.pkl", "meta.json"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600


def test_a_bundle_changed_in_the_artifact_store_is_refused_and_the_old_model_keeps_serving(
    server: LiveServer, world: World, tampered: Tampered, caplog: pytest.LogCaptureFixture
) -> None:
    old = serving_version(server, world)
    promote_to_champion(world.tracking_uri, tampered.version)
    try:
        with caplog.at_level(logging.ERROR, logger="serving.models"):
            response = admin(server, world, "POST", "/v1/admin/reload", params={"wait": "true"})
        logged = [r.getMessage() for r in caplog.records if r.name == "serving.models"]
        assert any("SHA-256" in line and "reload failed" in line for line in logged), logged
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert result.startswith("reload failed: "), result
        assert "SHA-256" in result and "not the one recorded" in result, result
        assert not tampered.marker.exists(), "the changed bundle was unpickled"
        assert serving_version(server, world) == old
        assert "SHA-256" in last_error(server, world)
    finally:
        promote_to_champion(world.tracking_uri, old)
    admin(server, world, "POST", "/v1/admin/reload", params={"wait": "true"})
    assert serving_version(server, world) == old


def test_the_service_never_unpickles_the_pyfunc_wrapper(
    server: LiveServer, world: World, tmp_path: Path
) -> None:
    """The MLflow pyfunc wrapper (python_model.pkl) is a pickle in the same artifact store
    with no digest of its own: the service reads only the verified bundle."""
    old = serving_version(server, world)
    version = train_into(world.bank_dir, world.tracking_uri, world.home).version
    marker = tmp_path / "ran-wrapper"
    wrapper = artifact_dir(world, version) / "python_model.pkl"
    wrapper.write_bytes(pickle.dumps(Plant(marker)))
    promote_to_champion(world.tracking_uri, version)
    try:
        response = admin(server, world, "POST", "/v1/admin/reload", params={"wait": "true"})
        assert response.json()["result"] == f"now serving version {version}", response.text
        assert not marker.exists()
    finally:
        promote_to_champion(world.tracking_uri, old)
    admin(server, world, "POST", "/v1/admin/reload", params={"wait": "true"})
    assert serving_version(server, world) == old


@pytest.fixture
def offline_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_start_up_refuses_a_changed_local_copy(
    server: LiveServer, world: World, tmp_path: Path, offline_mlflow: None
) -> None:
    """MLflow unreachable; the last good model's copy was replaced (meta.json untouched):
    not unpickled, not ready, the reason in /readyz and the log."""
    local = world.home / "trust-models" / MODEL_NAME  # written by the module's server
    assert json.loads((local / "meta.json").read_text())["version"] == world.version
    copy = tmp_path / "models"
    shutil.copytree(local, copy / MODEL_NAME)
    marker = tmp_path / "ran-local"
    (copy / MODEL_NAME / "bundle.pkl").write_bytes(pickle.dumps(Plant(marker)))
    settings = world.settings("changed", tracking_uri=UNREACHABLE_MLFLOW, local_model_dir=copy)
    with live_server(create_app(settings)) as live:
        status, payload = readiness(live, world)
        assert status == 503, payload
        assert payload["ready"] is False
        error = last_error(live, world)
        assert "local copy" in error and "SHA-256" in error, error
    assert not marker.exists()


def test_an_unchanged_local_copy_still_serves_when_mlflow_is_unreachable(
    server: LiveServer, world: World, tmp_path: Path, offline_mlflow: None
) -> None:
    copy = tmp_path / "models"
    shutil.copytree(world.home / "trust-models" / MODEL_NAME, copy / MODEL_NAME)
    settings = world.settings("intact", tracking_uri=UNREACHABLE_MLFLOW, local_model_dir=copy)
    with live_server(create_app(settings)) as live:
        status, payload = readiness(live, world)
        assert status == 200, payload
        assert payload["model"]["source"] == "local copy"


def test_a_local_copy_is_checked_against_the_registry_when_it_answers(
    world: World, tampered: Tampered, tmp_path: Path
) -> None:
    """The registry answers but the artifact store's bundle was changed: the service falls
    back to its local copy only if that copy's digest is the registry's. A forged copy
    (with a meta.json that matches it) is refused; the genuine bytes are served."""
    uri = f"models:/{MODEL_NAME}/{tampered.version}"
    meta = {"version": tampered.version, "alias": None, "model_uri": uri}
    forged = tmp_path / "forged"
    marker = tmp_path / "ran-forged"
    plant(forged / MODEL_NAME, marker, meta=meta)
    settings = world.settings("forged", model_uri=uri, local_model_dir=forged)
    with live_server(create_app(settings)) as live:
        status, payload = readiness(live, world)
        assert status == 503, payload
        error = last_error(live, world)
        assert "local copy" in error and "registry" in error, error
    assert not marker.exists() and not tampered.marker.exists()

    genuine = tmp_path / "genuine" / MODEL_NAME
    genuine.mkdir(parents=True)
    (genuine / "bundle.pkl").write_bytes(tampered.original)
    digest = hashlib.sha256(tampered.original).hexdigest()
    (genuine / "meta.json").write_text(json.dumps({"name": MODEL_NAME, **meta,
                                                   "bundle_sha256": digest}))  # fmt: skip
    settings = world.settings("genuine", model_uri=uri, local_model_dir=genuine.parent)
    with live_server(create_app(settings)) as live:
        status, payload = readiness(live, world)
        assert status == 200, payload
        assert (payload["model"]["version"], payload["model"]["source"]) == (
            tampered.version,
            "local copy",
        )
    assert not tampered.marker.exists()


# -- finding 12 (part): reloads are coalesced ---------------------------------------------------


def test_a_burst_of_reloads_runs_one_check_at_a_time(server: LiveServer, world: World) -> None:
    """100 `POST /v1/admin/reload` without `wait`: at most one background check runs per
    model (one more is remembered as pending), and a check still runs after the last
    request, so none is lost."""
    holder = server.services.holder
    most = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal most
        while not done.is_set():
            running = sum(t.name == "model-reload" for t in threading.enumerate())
            most = max(most, running)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    threads_before = threading.active_count()
    sampler.start()
    try:
        with server.client(world.keys["admin"]) as client:
            for _ in range(100):
                last_request = time.time()
                assert client.post("/v1/admin/reload").status_code == 202
        end = time.monotonic() + 60
        while any(t.name == "model-reload" for t in threading.enumerate()):
            assert time.monotonic() < end, "background checks still running after 60 s"
            time.sleep(0.01)
    finally:
        done.set()
        sampler.join()
    assert most <= 1, f"{most} background checks at once"
    assert threading.active_count() <= threads_before + 1
    checked = holder.last_check
    assert checked is not None
    assert datetime.fromisoformat(checked).timestamp() >= last_request
