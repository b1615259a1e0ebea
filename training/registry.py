"""Model registry: register a trained version, set aliases, and the promotion gate.

The registry is also the trust anchor of every bundle: each version is created with the
SHA-256 of its bundle file as a tag (`bundle_sha256`), and a bundle is unpickled only if
its bytes still have that digest. The artifact store can then be less trusted than the
registry: a file changed there is refused, not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from recommender.errors import RecommenderError, first_line

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_METRIC = "map_at_k"
TAG_FINGERPRINT = "data_fingerprint"
TAG_PROTOCOL = "protocol"
TAG_BUNDLE = "bundle_sha256"
_DIGEST = re.compile(r"[0-9a-f]{64}")
# What a registry answers for a name, alias or version it does not have (the SQL store
# says INVALID_PARAMETER_VALUE for an unknown alias); anything else means it did not answer.
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


class PromotionRefused(RecommenderError):
    """The challenger did not earn the champion alias."""


class ModelNotRegistered(RecommenderError):
    """The registry answered that the model, alias or version does not exist (as opposed
    to not answering at all): nothing may be loaded for it, not even a local copy."""


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    previous: str | None
    challenger_map: float
    champion_map: float | None


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def alias_version(name: str, alias: str) -> Any | None:
    """The model version behind an alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def model_version(name: str, *, alias: str | None = None, version: str | None = None) -> Any:
    """The registry's record of one version, by alias or number: ModelNotRegistered when
    the registry says it does not exist, MlflowException when it cannot be asked."""
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return _client().get_model_version_by_alias(name, alias)
        return _client().get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            raise ModelNotRegistered(first_line(exc)) from exc
        raise


def recorded_digest(record: Any) -> str:
    """The bundle SHA-256 recorded when `record` (a model version) was registered."""
    digest = str(record.tags.get(TAG_BUNDLE, ""))
    if not _DIGEST.fullmatch(digest):
        raise RecommenderError(
            f"model {record.name!r} version {record.version} has no valid {TAG_BUNDLE} tag "
            "(registered before bundles were verified, or the tag was changed), so its bundle "
            "cannot be checked and is not loaded; retrain it with `recommender train`, or, once "
            f"you have checked its artifacts/bundle.pkl, set the {TAG_BUNDLE} tag to its SHA-256"
        )
    return digest


def register(
    model_uri: str, name: str, tags: dict[str, str], *, bundle_sha256: str
) -> tuple[str, str]:
    """Register `model_uri` as a new version of `name`, with its bundle's SHA-256 as the
    `bundle_sha256` tag (what loading checks); the first becomes champion, later ones
    challenger. If setting the alias fails the new version is deleted again."""
    from mlflow.exceptions import MlflowException

    if not _DIGEST.fullmatch(bundle_sha256):
        raise RecommenderError(f"bundle_sha256 {bundle_sha256!r} is not a SHA-256 hex digest")
    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    run_id = tags.get("run_id")
    tags = {**tags, TAG_BUNDLE: bundle_sha256}
    version = client.create_model_version(name, model_uri, run_id=run_id, tags=tags).version
    alias = CHAMPION if alias_version(name, CHAMPION) is None else CHALLENGER
    try:
        _client().set_registered_model_alias(name, alias, version)
    except Exception:
        _client().delete_model_version(name, version)
        raise
    return str(version), alias


def promote(name: str, version: str | None = None, force: bool = False) -> Promotion:
    """Move `champion` to the challenger (or `version`) if its MAP@k on the same data
    and protocol is at least the champion's; `force` skips the comparison."""
    client = _client()
    challenger = (
        client.get_model_version(name, version) if version else alias_version(name, CHALLENGER)
    )
    if challenger is None:
        raise RecommenderError(f"model {name!r} has no challenger; train one or pass --version")
    champion = alias_version(name, CHAMPION)
    new_map = float(challenger.tags.get(TAG_METRIC, "nan"))
    old_map = float(champion.tags.get(TAG_METRIC, "nan")) if champion else None
    if champion is not None and champion.version == challenger.version:
        raise RecommenderError(f"version {challenger.version} is already the champion")
    if champion is not None and not force:
        _check_comparable(champion, challenger)
        if old_map is None or not new_map >= old_map:  # also refuses NaN
            raise PromotionRefused(
                f"refused: challenger v{challenger.version} MAP@k {new_map:.4f} is below "
                f"champion v{champion.version} {old_map:.4f} on the same data; "
                "use --force to promote anyway"
            )
    client.set_registered_model_alias(name, CHAMPION, challenger.version)
    if alias_version(name, CHALLENGER) is not None:
        current = alias_version(name, CHALLENGER)
        if current is not None and current.version == challenger.version:
            client.delete_registered_model_alias(name, CHALLENGER)
    previous = str(champion.version) if champion else None
    return Promotion(name, str(challenger.version), previous, new_map, old_map)


def _check_comparable(champion: Any, challenger: Any) -> None:
    for tag, what in ((TAG_FINGERPRINT, "data"), (TAG_PROTOCOL, "protocol")):
        a, b = champion.tags.get(tag), challenger.tags.get(tag)
        if a != b:
            raise PromotionRefused(
                f"refused: champion v{champion.version} and challenger v{challenger.version} "
                f"were evaluated on different {what} ({a} vs {b}); their MAP@k are not "
                "comparable. Retrain both on the same data, or use --force"
            )
