"""Corrupt or hostile training data through the real command line.

Every bad input must end `recommender train` (or `import-wide`) with exit status 2 and one
`error: ...` line naming the file, the line or row, the value and the fix; never a
traceback; and it must leave the MLflow registry, its aliases, its runs and the stored
model artifacts exactly as they were. One small synthetic bank is trained once into a
temporary store (the champion); each test then copies the bank, breaks one thing, and
runs the CLI against that store.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from recommender import columns as C
from recommender.cli import main
from recommender.dataset import FUTURE_DAYS, load_bank_data
from recommender.synthetic import generate, write_bank
from recommender.wide import ALL_HELD_MIN_ROWS
from training.tracking import DEFAULT_MODEL_NAME

FAST_HYBRID = {"epochs": 2, "no_components": 8, "ensemble": 1, "num_threads": 1}
N_CUSTOMERS = 150


@dataclass(frozen=True)
class Store:
    """A temporary MLflow store with a trained champion, and the bank it was trained on."""

    home: Path  # working directory of every CLI call: MLflow's ./mlruns lands here
    uri: str
    config: Path
    csv_bank: Path
    parquet_bank: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("hostile")
    bank = generate(N_CUSTOMERS, 3, seed=11)
    write_bank(bank, root / "csv_bank", "csv")
    write_bank(bank, root / "parquet_bank", "parquet")
    home = root / "store"
    home.mkdir()
    config = root / "fast.json"
    config.write_text(json.dumps(FAST_HYBRID))
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        # MLflow's pip-requirement inference is a subprocess of several seconds.
        patch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, **kw: ["mlflow"])
        patch.delenv("RECOMMENDER_DEBUG", raising=False)
        argv = ["train", str(root / "parquet_bank"), "--tracking-uri", uri]
        assert exit_code([*argv, "--config", str(config)]) == 0
        yield Store(home, uri, config, root / "csv_bank", root / "parquet_bank")


def exit_code(argv: list[str]) -> int | str | None:
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code
    return 0


def registry(uri: str, directories: list[Path]) -> dict[str, Any]:
    """Everything a failed command must leave alone: versions, aliases, runs, artifacts."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name='{DEFAULT_MODEL_NAME}'")
    experiments = [e.experiment_id for e in client.search_experiments()]
    files = {
        str(p): p.stat().st_size
        for directory in directories
        for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith("mlflow.db")
    }
    return {
        "versions": sorted((v.version, v.run_id, v.source) for v in versions),
        "aliases": dict(client.get_registered_model(DEFAULT_MODEL_NAME).aliases),
        "runs": sorted(r.info.run_id for r in client.search_runs(experiments)),
        "files": files,
    }


@dataclass(frozen=True)
class Cli:
    """The real CLI against a copy of the module's store (a bad input that got through
    cannot spoil the other tests)."""

    uri: str
    config: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str) -> str:
        """Exit status 2, one clean `error:` line (returned), nothing on stdout."""
        code = exit_code(list(argv))
        out, err = self.capsys.readouterr()
        assert code == 2, err
        assert "Traceback" not in out + err and "internal error" not in err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        others = [line for line in err.splitlines() if line and not line.startswith("error: ")]
        assert len(errors) == 1, err
        assert all(line.startswith("hybrid options: ") for line in others), err
        assert out == ""
        return errors[0]

    def train(self, bank: Path) -> str:
        return self.run(
            "train", str(bank), "--tracking-uri", self.uri, "--config", str(self.config)
        )


@pytest.fixture
def cli(
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cli]:
    """The CLI; afterwards the registry and the stored models must be as they were."""
    home = tmp_path / "store"
    home.mkdir()
    shutil.copyfile(store.home / "mlflow.db", home / "mlflow.db")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.chdir(home)
    monkeypatch.delenv("RECOMMENDER_DEBUG", raising=False)
    before = registry(uri, [store.home, home])
    assert before["aliases"] == {"champion": 1}
    capsys.readouterr()
    yield Cli(uri, store.config, capsys)
    assert registry(uri, [store.home, home]) == before


def copy_bank(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bank"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(C.TRUTH_DIR))
    return target


def last_line_start(data: bytes) -> int:
    return data.rstrip(b"\n").rfind(b"\n") + 1


# --- truncated files ------------------------------------------------------------------------


def test_csv_cut_off_mid_line(store: Store, cli: Cli, tmp_path: Path) -> None:
    bank = copy_bank(store.csv_bank, tmp_path)
    path = bank / "customers.csv"
    data = path.read_bytes()
    start = last_line_start(data)
    four_fields = b",".join(data[start:].split(b",")[:4])
    path.write_bytes(data[: start + len(four_fields) + 4])  # into the 5th of 9 fields
    line = cli.train(bank)
    assert f"customers.csv line {N_CUSTOMERS + 1}: has 5 of 9 fields" in line
    assert "the file ends without a line break; it looks truncated" in line
    assert "export or copy it again" in line


def test_csv_cut_off_inside_a_quoted_value(store: Store, cli: Cli, tmp_path: Path) -> None:
    bank = copy_bank(store.csv_bank, tmp_path)
    path = bank / "holdings.csv"
    pd.read_csv(path, dtype=str).to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    data = path.read_bytes()
    start = last_line_start(data)
    path.write_bytes(data[: start + len('"C0000150","ind_')])
    n_lines = data.count(b"\n")
    line = cli.train(bank)
    assert (
        f"holdings.csv: cannot be read as csv (line {n_lines} opens a quoted value that is "
        "never closed); the file looks truncated or has a stray quote"
    ) in line


@pytest.mark.parametrize("table", ["holdings", "customers", "products"])
def test_parquet_with_bytes_cut_off(store: Store, cli: Cli, tmp_path: Path, table: str) -> None:
    bank = copy_bank(store.parquet_bank, tmp_path)
    path = bank / f"{table}.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    line = cli.train(bank)
    assert line.startswith(f"error: {table}.parquet: cannot be read as parquet (")
    assert "check that the file is complete (not cut off while copying)" in line
    assert str(tmp_path) not in line  # pyarrow's absolute path is dropped


# --- wrong types and encodings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("risk_level", "high", "risk_level 'high' must be a number between 1 and 5"),
        ("margin", "ten", "margin 'ten' must be a number between 0 and inf"),
        ("min_income", "-5", "min_income '-5' must be a number between 0 and inf"),
    ],
)
def test_text_in_a_numeric_catalog_column(
    store: Store, cli: Cli, tmp_path: Path, column: str, value: str, expected: str
) -> None:
    bank = copy_bank(store.csv_bank, tmp_path)
    products = pd.read_csv(bank / "products.csv", dtype=str)
    products.loc[2, column] = value
    products.to_csv(bank / "products.csv", index=False)
    assert f"products.csv line 4: {expected}" in cli.train(bank)


def test_latin1_csv(store: Store, cli: Cli, tmp_path: Path) -> None:
    bank = copy_bank(store.csv_bank, tmp_path)
    customers = pd.read_csv(bank / "customers.csv", dtype=str)
    customers.loc[4, "region"] = "CORUÑA"
    customers.to_csv(bank / "customers.csv", index=False, encoding="latin-1")
    line = cli.train(bank)
    assert "customers.csv: cannot be read as csv (line 6 is not UTF-8: byte 0xd1 in '" in line
    assert "CORUÑA" in line
    assert "save it as UTF-8 encoded text (it may be Latin-1 or Windows-1252)" in line


@pytest.mark.parametrize("table", ["holdings", "customers"])
def test_utf16_csv(store: Store, cli: Cli, tmp_path: Path, table: str) -> None:
    bank = copy_bank(store.csv_bank, tmp_path)
    path = bank / f"{table}.csv"
    path.write_text(path.read_text(encoding="utf-8"), encoding="utf-16")
    line = cli.train(bank)
    assert f"{table}.csv: cannot be read as csv (it looks UTF-16 encoded" in line
    assert "save it as UTF-8 encoded CSV" in line


# --- duplicates and empty tables ----------------------------------------------------------------


def test_duplicate_customer_ids(store: Store, cli: Cli, tmp_path: Path) -> None:
    bank = copy_bank(store.csv_bank, tmp_path)
    customers = pd.read_csv(bank / "customers.csv", dtype=str)
    customers = pd.concat([customers, customers.iloc[[9]]], ignore_index=True)
    customers.to_csv(bank / "customers.csv", index=False)
    line = cli.train(bank)
    assert (
        f"customers.csv line {N_CUSTOMERS + 2}: duplicate row for (customer_id=C0000010); "
        "1 duplicates in all; keep one row per customer_id"
    ) in line


def test_duplicate_holdings_rows(store: Store, cli: Cli, tmp_path: Path) -> None:
    bank = copy_bank(store.parquet_bank, tmp_path)
    holdings = pd.read_parquet(bank / "holdings.parquet")
    holdings = pd.concat([holdings.iloc[:5], holdings.iloc[[2, 3]], holdings.iloc[5:]])
    holdings.to_parquet(bank / "holdings.parquet", index=False)
    row = holdings.iloc[2]
    line = cli.train(bank)
    assert (
        f"holdings.parquet row 6: duplicate row for (customer_id={row[C.CUSTOMER_ID]}, "
        f"product_id={row[C.PRODUCT_ID]}, snapshot_date={row[C.SNAPSHOT_DATE]}); "
        "2 duplicates in all; keep one row per customer_id + product_id + snapshot_date"
    ) in line


@pytest.mark.parametrize("table", ["holdings", "customers"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_with_a_header_and_no_rows(
    store: Store, cli: Cli, tmp_path: Path, table: str, fmt: str
) -> None:
    bank = copy_bank(store.csv_bank if fmt == "csv" else store.parquet_bank, tmp_path)
    path = bank / f"{table}.{fmt}"
    if fmt == "csv":
        path.write_text(path.read_text().splitlines()[0] + "\n")
    else:
        pd.read_parquet(path).iloc[:0].to_parquet(path, index=False)
    line = cli.train(bank)
    assert f"{table}.{fmt}: has no rows; a bank data directory needs data" in line


def test_empty_file(store: Store, cli: Cli, tmp_path: Path) -> None:
    bank = copy_bank(store.csv_bank, tmp_path)
    (bank / "holdings.csv").write_bytes(b"")
    line = cli.train(bank)
    assert "holdings.csv: cannot be read as csv (the file is empty, without even a header" in line


# --- dates ------------------------------------------------------------------------------------


def with_snapshot(bank: Path, date: str) -> int:
    """Move the last snapshot of holdings.csv to `date`; the first CSV line it is on."""
    holdings = pd.read_csv(bank / "holdings.csv", dtype=str)
    last = holdings[C.SNAPSHOT_DATE] == holdings[C.SNAPSHOT_DATE].max()
    holdings.loc[last, C.SNAPSHOT_DATE] = date
    holdings.to_csv(bank / "holdings.csv", index=False)
    return int(last.to_numpy().argmax()) + 2


@pytest.mark.parametrize("date", ["2999-01-31", "far"])
def test_snapshot_date_far_in_the_future(store: Store, cli: Cli, tmp_path: Path, date: str) -> None:
    today = pd.Timestamp.today().normalize()
    if date == "far":  # the first day refused
        date = (today + pd.Timedelta(days=FUTURE_DAYS + 1)).date().isoformat()
    bank = copy_bank(store.csv_bank, tmp_path)
    line_number = with_snapshot(bank, date)
    line = cli.train(bank)
    assert (
        f"holdings.csv line {line_number}: snapshot_date '{date}' is more than 366 days after "
        f"today ({today.date().isoformat()}); fix the date or remove the row"
    ) in line


def test_snapshots_up_to_a_year_ahead_are_accepted(tmp_path: Path, store: Store) -> None:
    """Rehearsal outcomes lie weeks after today; the last day accepted is today + 366."""
    bank = copy_bank(store.csv_bank, tmp_path)
    today = pd.Timestamp.today().normalize()
    with_snapshot(bank, (today + pd.Timedelta(days=FUTURE_DAYS)).date().isoformat())
    assert load_bank_data(bank).snapshots[-1] == today + pd.Timedelta(days=FUTURE_DAYS)
    with_snapshot(bank, (today + pd.Timedelta(days=60)).date().isoformat())
    assert load_bank_data(bank).snapshots[-1] == today + pd.Timedelta(days=60)


def test_time_varying_customers_from_the_future(store: Store, cli: Cli, tmp_path: Path) -> None:
    bank = copy_bank(store.parquet_bank, tmp_path)
    customers = pd.read_parquet(bank / "customers.parquet")
    customers[C.SNAPSHOT_DATE] = "2026-01-31"
    customers.loc[7, C.SNAPSHOT_DATE] = "3026-01-31"
    customers.to_parquet(bank / "customers.parquet", index=False)
    line = cli.train(bank)
    assert "customers.parquet row 8: snapshot_date '3026-01-31' is more than 366 days" in line


def test_snapshot_date_before_the_supported_range(store: Store, cli: Cli, tmp_path: Path) -> None:
    bank = copy_bank(store.csv_bank, tmp_path)
    line_number = with_snapshot(bank, "0001-01-31")
    line = cli.train(bank)
    assert f"holdings.csv line {line_number}: snapshot_date '0001-01-31' is before 1678" in line


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_date_attribute_outside_the_supported_range(
    store: Store, cli: Cli, tmp_path: Path, fmt: str
) -> None:
    """A '9999-12-31' "no end date" sentinel used to crash with OutOfBoundsDatetime."""
    bank = copy_bank(store.csv_bank if fmt == "csv" else store.parquet_bank, tmp_path)
    path = bank / f"customers.{fmt}"
    customers = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    customers["contract_end"] = "2030-06-30"
    customers.loc[3, "contract_end"] = "9999-12-31"
    if fmt == "csv":
        customers.to_csv(path, index=False)
    else:
        customers.to_parquet(path, index=False)
    where = "line 5" if fmt == "csv" else "row 4"
    line = cli.train(bank)
    assert (
        f"customers.{fmt} {where}: contract_end '9999-12-31' is after 2261-12-31; "
        "leave it blank if unknown"
    ) in line


# --- import-wide ------------------------------------------------------------------------------


def wide_csv(path: Path, rows: int, all_held: bool = False) -> Path:
    """A valid wide file; with `all_held`, product P3 is 1 on every row."""
    lines = ["id,month,income,P1,P2,P3"]
    for i in range(rows):
        p3 = 1 if all_held else int(i % 3 == 0)
        lines.append(f"c{i},2026-01-31,{1000 + i},{i % 2},{int(i % 5 == 0)},{p3}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def import_wide(wide: Path, out: Path, *options: str) -> list[str]:
    columns = ["--customer-col", "id", "--product-cols", "P1:P3"]
    return ["import-wide", str(wide), str(out), *columns, *(options or ("--date-col", "month"))]


def test_wide_column_held_by_every_row(cli: Cli, tmp_path: Path) -> None:
    wide = wide_csv(tmp_path / "wide.csv", ALL_HELD_MIN_ROWS, all_held=True)
    line = cli.run(*import_wide(wide, tmp_path / "out"))
    assert (
        f"wide.csv: product column 'P3' is 1 (held) on all {ALL_HELD_MIN_ROWS} rows; a product "
        "every row holds is most likely an export error"
    ) in line
    assert "fix the export, or leave the column out of the product columns (--product-cols)" in line
    assert not (tmp_path / "out").exists()


def test_wide_column_held_by_every_row_of_a_small_file_is_a_product(tmp_path: Path) -> None:
    wide = wide_csv(tmp_path / "wide.csv", ALL_HELD_MIN_ROWS - 1, all_held=True)
    assert exit_code(import_wide(wide, tmp_path / "out")) == 0
    assert "P3" in load_bank_data(tmp_path / "out").product_ids


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "id,month,income,P1,P2,P3\nc1,2026-01-31,10,1,0,0\nc2,2026-01-31,Coruña,0,1,0\n",
            "wide.csv: cannot be read as CSV (line 3 is not UTF-8: byte 0xf1 in '",
        ),
        ("utf-16", "wide.csv: cannot be read as csv (it looks UTF-16 encoded"),
        (
            "id,month,income,P1,P2,P3\nc1,2026-01-31,10,1,0,0\nc2,2026-01-31,20,0",
            "wide.csv line 3: has 4 of 6 fields and the file ends without a line break",
        ),
        (
            'id,month,income,P1,P2,P3\nc1,2026-01-31,10,1,0,0\n"c2,2026-01-31,20,0,1,0\n',
            "(line 3 opens a quoted value that is never closed)",
        ),
        (
            "id,month,income,P1,P2,P3\nc1,2026-01-31,10,1,0,0\nc2,2999-01-31,20,0,1,0\n",
            "wide.csv line 3: date column 'month' value '2999-01-31' is more than 366 days "
            "after today",
        ),
    ],
    ids=["latin-1", "utf-16", "cut-mid-line", "open-quote", "future-date"],
)
def test_hostile_wide_files(cli: Cli, tmp_path: Path, content: str, expected: str) -> None:
    wide = tmp_path / "wide.csv"
    if content == "utf-16":
        wide_csv(wide, 3)
        wide.write_text(wide.read_text(), encoding="utf-16")
    else:
        wide.write_bytes(content.encode("latin-1"))
    assert expected in cli.run(*import_wide(wide, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_wide_snapshot_date_option_in_the_future(cli: Cli, tmp_path: Path) -> None:
    wide = wide_csv(tmp_path / "wide.csv", 3)
    line = cli.run(*import_wide(wide, tmp_path / "out", "--snapshot-date", "2999-01-31"))
    assert "snapshot_date '2999-01-31' is more than 366 days after today" in line
    assert "use the date of the snapshot the file describes" in line


# --- hostile but valid: accepted, and never an internal error -------------------------------------


def evaluate_code(bank: Path, capsys: pytest.CaptureFixture[str]) -> int | str | None:
    code = exit_code(["evaluate", str(bank)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    return code


def test_product_held_by_every_customer_at_every_snapshot_is_accepted(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In long holdings a universal product (every client's current account) is legitimate
    and harmless: it is held, so it is never offered. Only the wide importer, where a
    constant column slips in through a glob or a range, treats it as an export error."""
    bank = copy_bank(store.csv_bank, tmp_path)
    holdings = pd.read_csv(bank / "holdings.csv", dtype=str)
    customers = pd.read_csv(bank / "customers.csv", dtype=str)[C.CUSTOMER_ID]
    dates = sorted(holdings[C.SNAPSHOT_DATE].unique())
    universal = "ind_cco_fin_ult1"
    everyone = pd.DataFrame(
        [(c, universal, d) for c in customers for d in dates], columns=holdings.columns
    )
    holdings = pd.concat([holdings[holdings[C.PRODUCT_ID] != universal], everyone])
    holdings.to_csv(bank / "holdings.csv", index=False)
    assert evaluate_code(bank, capsys) == 0


def test_text_in_a_numeric_customer_attribute_makes_it_categorical(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Customer attributes may be numeric or categorical, so one text income is not an
    error: the column is read as text (see the report: a candidate for a warning)."""
    bank = copy_bank(store.csv_bank, tmp_path)
    customers = pd.read_csv(bank / "customers.csv", dtype=str)
    customers.loc[3, "income"] = "unknown"
    customers.to_csv(bank / "customers.csv", index=False)
    assert not pd.api.types.is_numeric_dtype(load_bank_data(bank).customers["income"])
    assert evaluate_code(bank, capsys) == 0
