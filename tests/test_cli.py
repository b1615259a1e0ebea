"""The real `recommender` command in a subprocess: exit codes, one-line errors, a report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "recommender"]
METRICS = {"map@7", "ndcg@7", "hit@1", "hit@3", "mrr", "coverage"}
MODELS = {"popularity", "segment_popularity", "cooccurrence", "oracle"}
CUSTOMERS = "customer_id,age\nc1,30\nc2,41\nc3,25\n"
HOLDINGS = (
    "customer_id,product_id,snapshot_date\n"
    "c1,p1,2016-01-28\n"
    "c2,p1,2016-01-28\n"
    "c2,p2,2016-01-28\n"
    "c3,p1,2016-01-28\n"
)


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RECOMMENDER_DEBUG", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> str:
    """Exit status 2 and exactly one non-empty `error: ...` line on stderr, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error: ")
    for part in parts:
        assert part in line
    return line


def write_bank(directory: Path, holdings: str = HOLDINGS) -> Path:
    directory.mkdir()
    (directory / "customers.csv").write_text(CUSTOMERS, encoding="utf-8")
    (directory / "holdings.csv").write_text(holdings, encoding="utf-8")
    return directory


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("demo-data", "import-wide", "evaluate"):
        assert command in result.stdout


def test_data_error_is_one_line_with_exit_status_2(tmp_path: Path) -> None:
    bad = HOLDINGS.replace("c3,p1,2016-01-28", "c3,p1,2016-13-28")
    write_bank(tmp_path / "bank", bad)
    result = run(tmp_path, "evaluate", "bank")
    assert_one_line_error(
        result,
        "holdings.csv line 5: snapshot_date '2016-13-28' is not a date (expected YYYY-MM-DD)",
    )
    assert result.stdout == ""


def test_missing_data_directory_is_one_line(tmp_path: Path) -> None:
    result = run(tmp_path, "evaluate", "nowhere")
    assert_one_line_error(result, "nowhere: no such data directory")


def test_unknown_protocol_is_one_line(tmp_path: Path) -> None:
    write_bank(tmp_path / "bank")
    result = run(tmp_path, "evaluate", "bank", "--protocol", "bogus")
    assert_one_line_error(
        result, "unknown protocol 'bogus'; use one of auto, temporal, leave-one-out"
    )


def test_bad_demo_format_is_one_line(tmp_path: Path) -> None:
    result = run(
        tmp_path, "demo-data", "out", "--customers", "100", "--months", "1", "--format", "xml"
    )
    assert_one_line_error(result, "--format 'xml': use parquet or csv")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def demo_bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("demo")
    args = ("demo-data", "bank", "--customers", "2000", "--months", "4", "--seed", "1")
    result = run(cwd, *args)
    assert result.returncode == 0, result.stderr
    assert "wrote 4 files to bank: 2,000 customers, 4 snapshots" in result.stdout
    return cwd / "bank"


def test_demo_data_writes_a_bank_directory(demo_bank: Path) -> None:
    names = sorted(p.relative_to(demo_bank).as_posix() for p in demo_bank.rglob("*.parquet"))
    assert names == [
        "customers.parquet",
        "holdings.parquet",
        "products.parquet",
        "truth/acquisition_probability.parquet",
    ]


def test_evaluate_writes_the_report(demo_bank: Path, tmp_path: Path) -> None:
    result = run(tmp_path, "evaluate", str(demo_bank), "--report", "r.json")
    assert result.returncode == 0, result.stderr
    assert "report written to r.json" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"protocol", "k", "n_customers_evaluated", "models", "tiers"} <= report.keys()
    assert report["protocol"] == "temporal"  # 4 snapshots: auto picks temporal
    assert report["k"] == 7
    assert report["n_customers_evaluated"] > 0
    assert set(report["models"]) == MODELS
    for name, metrics in report["models"].items():
        assert set(metrics) == METRICS, name
        assert all(0.0 <= value <= 1.0 for value in metrics.values()), name
    assert set(report["tiers"]) <= {"A", "B", "C"}
    assert report["tiers"]


def test_evaluate_is_deterministic(demo_bank: Path, tmp_path: Path) -> None:
    first = run(tmp_path, "evaluate", str(demo_bank), "--report", "a.json")
    second = run(tmp_path, "evaluate", str(demo_bank), "--report", "b.json")
    assert first.returncode == second.returncode == 0
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads(
        (tmp_path / "b.json").read_text()
    )
