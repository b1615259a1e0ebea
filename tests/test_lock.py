"""The hashed lock files (requirements/*.lock) agree with pyproject.toml: every declared
dependency is pinned, at a version its specifier admits, with at least one SHA-256, so
`make install` and the image install exactly what was reviewed (`pip --require-hashes`).
Regenerate them with `make lock` after changing a dependency."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """name -> (version, number of hashes) of a pip-compile/uv lock file."""
    found: dict[str, tuple[Version, int]] = {}
    name = None
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            name = canonicalize_name(match.group(1))
            found[name] = (Version(match.group(3)), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
    return found


def declared(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    if extra:
        listed += project["optional-dependencies"][extra]
    return [Requirement(r) for r in listed]


@pytest.mark.parametrize(("lock", "extra"), [("runtime.lock", None), ("dev.lock", "dev")])
def test_every_declared_dependency_is_pinned_with_hashes(lock: str, extra: str | None) -> None:
    locked = pins(ROOT / "requirements" / lock)
    problems = []
    for requirement in declared(extra):
        name = canonicalize_name(requirement.name)
        if name not in locked:
            problems.append(f"{requirement.name} is not in {lock}")
            continue
        version, hashes = locked[name]
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} does not satisfy {requirement}")
        if hashes == 0:
            problems.append(f"{requirement.name} has no --hash line")
    assert not problems, "; ".join(problems) + ": run `make lock`"


def test_every_pin_has_a_hash_and_build_tools_are_locked() -> None:
    for lock in ("build.lock", "runtime.lock", "dev.lock"):
        unhashed = [n for n, (_, h) in pins(ROOT / "requirements" / lock).items() if h == 0]
        assert not unhashed, f"{lock}: pins without a hash: {unhashed}"
    build = pins(ROOT / "requirements" / "build.lock")
    assert {"pip", "setuptools", "wheel"} <= set(build)


def test_the_runtime_lock_holds_no_development_tool() -> None:
    runtime = pins(ROOT / "requirements" / "runtime.lock")
    dev_only = {canonicalize_name(r.name) for r in declared("dev")} - {
        canonicalize_name(r.name) for r in declared(None)
    }
    assert not dev_only & set(runtime)
