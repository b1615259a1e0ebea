"""The wide-CSV importer: real Zimnat and Santander files, cleaning rules, errors, atomicity."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from recommender import columns as C
from recommender.dataset import BankData, load_bank_data
from recommender.errors import DataError
from recommender.wide import (
    ImportSummary,
    import_wide,
    select_columns,
    to_iso_dates,
    typed_attribute,
)
from tests.helpers import shared_data

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ZIMNAT = DATA / "zimnat" / "train.csv"
SANTANDER = DATA / "santander-sample" / "train_ver2_head9999.csv"
needs_data = pytest.mark.usefixtures("real_data")


@pytest.fixture
def real_data() -> Path:
    return shared_data()


def expected_counts(
    path: Path, customer: str, is_product: Callable[[int, str], bool]
) -> tuple[int, int, int]:
    """Distinct customers, held cells and product columns, counted with the csv module."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    products = [i for i, name in enumerate(header) if is_product(i, name)]
    held = sum(row[i].strip() in ("1", "1.0") for row in rows[1:] for i in products)
    customers = {row[header.index(customer)].strip() for row in rows[1:]}
    return len(customers), held, len(products)


def write_csv(tmp_path: Path, text: str, name: str = "wide.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def small(tmp_path: Path, text: str, **options: Any) -> ImportSummary:
    settings: dict[str, Any] = {
        "customer_col": "id",
        "product_cols": "P*",
        "snapshot_date": "2020-01-01",
    }
    settings.update(options)
    return import_wide(write_csv(tmp_path, text), tmp_path / "out", **settings)


# --- real files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zimnat(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImportSummary, BankData]:
    shared_data()  # skipped locally without the real data, a failure on CI
    out = tmp_path_factory.mktemp("zimnat") / "bank"
    summary = import_wide(ZIMNAT, out, "ID", "P5DA:ECY3", snapshot_date="2020-01-01")
    return summary, load_bank_data(out)


@pytest.fixture(scope="module")
def santander(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImportSummary, BankData]:
    shared_data()  # skipped locally without the real data, a failure on CI
    out = tmp_path_factory.mktemp("santander") / "bank"
    summary = import_wide(SANTANDER, out, "ncodpers", "ind_*_ult1", date_col="fecha_dato")
    return summary, load_bank_data(out)


@needs_data
def test_zimnat_counts_match_an_independent_count(zimnat: tuple[ImportSummary, BankData]) -> None:
    summary, bank = zimnat
    header = ZIMNAT.read_text(encoding="utf-8").splitlines()[0].split(",")
    first, last = header.index("P5DA"), header.index("ECY3")
    customers, held, products = expected_counts(ZIMNAT, "ID", lambda i, _: first <= i <= last)
    assert (customers, products) == (29_132, 21)  # as documented in shared/data/README.md
    assert (summary.customers, summary.holdings, summary.products) == (customers, held, products)
    assert (len(bank.customers), len(bank.holdings), len(bank.products)) == (customers, held, 21)
    assert bank.holdings[C.CUSTOMER_ID].nunique() == customers  # everyone holds something
    assert summary.snapshots == ["2020-01-01"]
    assert [p.name for p in summary.files] == [
        "customers.parquet",
        "holdings.parquet",
        "products.parquet",
    ]


@needs_data
def test_zimnat_attribute_types(zimnat: tuple[ImportSummary, BankData]) -> None:
    _, bank = zimnat
    customers = bank.customers.set_index(C.CUSTOMER_ID)
    assert C.SNAPSHOT_DATE not in customers.columns
    assert pd.api.types.is_datetime64_any_dtype(customers["join_date"])
    # "1/2/2019" is day-first: some join dates have a first part above 12.
    assert customers.loc["4WKQSBB", "join_date"] == pd.Timestamp("2019-02-01")
    assert int(customers["join_date"].isna().sum()) == 2  # two blank join dates in the file
    assert pd.api.types.is_numeric_dtype(customers["birth_year"])
    assert customers.loc["4WKQSBB", "birth_year"] == 1987
    assert customers.loc["4WKQSBB", "branch_code"] == "1X1H"
    held = bank.holdings[bank.holdings[C.CUSTOMER_ID] == "4WKQSBB"][C.PRODUCT_ID]
    assert sorted(held.astype(str)) == ["K6QO", "RVSZ"]


@needs_data
def test_santander_counts_match_an_independent_count(
    santander: tuple[ImportSummary, BankData],
) -> None:
    summary, bank = santander
    customers, held, products = expected_counts(
        SANTANDER, "ncodpers", lambda _, name: name.startswith("ind_") and name.endswith("_ult1")
    )
    assert (customers, products) == (9_999, 24)
    assert (summary.customers, summary.holdings, summary.products) == (customers, held, products)
    assert (len(bank.customers), len(bank.holdings), len(bank.products)) == (customers, held, 24)
    assert summary.snapshots == ["2015-01-28"]
    assert bank.snapshots == [pd.Timestamp("2015-01-28")]


@needs_data
def test_santander_attribute_types(santander: tuple[ImportSummary, BankData]) -> None:
    _, bank = santander
    customers = bank.customers.set_index(C.CUSTOMER_ID)
    first = customers.loc["1375586"]  # ncodpers is numeric in the file, a string id here
    assert first[C.SNAPSHOT_DATE] == pd.Timestamp("2015-01-28")
    assert pd.api.types.is_numeric_dtype(customers["age"])
    assert first["age"] == 35  # " 35" in the file
    assert first["antiguedad"] == 6  # "      6" in the file
    assert pd.api.types.is_numeric_dtype(customers["renta"])
    assert first["renta"] == pytest.approx(87218.1)
    with SANTANDER.open(newline="", encoding="utf-8") as handle:
        blank_renta = sum(row["renta"].strip() in ("", "NA") for row in csv.DictReader(handle))
    assert blank_renta > 0
    assert int(customers["renta"].isna().sum()) == blank_renta
    assert pd.api.types.is_numeric_dtype(customers["indrel_1mes"])  # "1" and "1.0" mixed
    assert pd.api.types.is_datetime64_any_dtype(customers["fecha_alta"])
    assert first["fecha_alta"] == pd.Timestamp("2015-01-12")
    assert first["segmento"] == "02 - PARTICULARES"
    assert first["nomprov"] == "MALAGA"


@needs_data
def test_santander_as_csv_loads_the_same(tmp_path: Path) -> None:
    out = tmp_path / "bank"
    summary = import_wide(
        SANTANDER, out, "ncodpers", "ind_*_ult1", date_col="fecha_dato", fmt="csv"
    )
    bank = load_bank_data(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "customers.csv",
        "holdings.csv",
        "products.csv",
    ]
    assert len(bank.holdings) == summary.holdings
    assert pd.api.types.is_datetime64_any_dtype(bank.customers["fecha_alta"])
    assert "1375586" in set(bank.customers[C.CUSTOMER_ID])


# --- selection and cleaning ---------------------------------------------------------------

COLUMNS = ["id", "age", "P1", "P2", "P3", "Q1", "date"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("P2", ["P2"]),
        ("P*", ["P1", "P2", "P3"]),
        ("P2:Q1", ["P2", "P3", "Q1"]),
        ("Q1, P1:P2, P*", ["Q1", "P1", "P2", "P3"]),
    ],
)
def test_select_columns(spec: str, expected: list[str]) -> None:
    assert select_columns(COLUMNS, spec, Path("wide.csv")) == expected


@pytest.mark.parametrize("spec", ["P9", "X*", "P1:P9", "P3:P1", "P1,,P2"])
def test_select_columns_names_what_matched_nothing(spec: str) -> None:
    with pytest.raises(DataError, match=r"matches no column \(available: id, age, P1"):
        select_columns(COLUMNS, spec, Path("wide.csv"))


def test_to_iso_dates_detects_the_day_first_or_month_first_order() -> None:
    def iso(values: list[str | None]) -> list[object]:
        return to_iso_dates(pd.Series(values, dtype=str)).tolist()

    assert iso(["1/2/2019", "13/1/2019"]) == ["2019-02-01", "2019-01-13"]
    assert iso(["1/2/2019", "12/31/2019"]) == ["2019-01-02", "2019-12-31"]
    assert iso(["1/2/2019", "2015-01-28"]) == ["2019-02-01", "2015-01-28"]  # ambiguous: d/m/Y
    assert (
        to_iso_dates(pd.Series(["32/1/2019", "2019-02-30", "1/2/19", None], dtype=str)).isna().all()
    )


def test_typed_attribute_needs_95_percent_numbers() -> None:
    mostly = typed_attribute(pd.Series([str(i) for i in range(19)] + ["x"], dtype=str))
    assert pd.api.types.is_numeric_dtype(mostly) and int(mostly.isna().sum()) == 1
    mixed = typed_attribute(pd.Series([str(i) for i in range(18)] + ["x", "y"], dtype=str))
    assert mixed.tolist()[-2:] == ["x", "y"]


def test_cleaning_of_a_small_file(tmp_path: Path) -> None:
    text = "id,age,joined,P1,P2,P3\n 7 , 35,1/2/2019,1.0,NA,0\n8,NA,,0, ,1\n"
    summary = small(tmp_path, text)
    bank = load_bank_data(tmp_path / "out")
    assert (summary.customers, summary.holdings, summary.products) == (2, 2, 3)
    held = bank.holdings.astype(str).values.tolist()
    assert held == [["7", "P1", "2020-01-01"], ["8", "P3", "2020-01-01"]]
    assert bank.customers["age"].tolist()[0] == 35 and pd.isna(bank.customers["age"].iloc[1])
    assert bank.customers["joined"].iloc[0] == pd.Timestamp("2019-02-01")
    assert bank.product_ids == ["P1", "P2", "P3"]  # P2 is held by nobody but still a product


def test_byte_order_mark_and_spaced_header_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "wide.csv").write_bytes(b"\xef\xbb\xbfid , P1\r\na,1\r\n")
    summary = import_wide(
        tmp_path / "wide.csv", tmp_path / "out", "id", "P1", snapshot_date="2020-1-2"
    )
    assert (summary.customers, summary.holdings, summary.snapshots) == (1, 1, ["2020-01-02"])


def test_date_column_gives_time_varying_attributes(tmp_path: Path) -> None:
    text = "id,month,tier,P1\na,2020-01-31,A,1\na,2020-02-29,B,0\nb,2020-02-29,A,1\n"
    summary = small(tmp_path, text, date_col="month", snapshot_date=None)
    bank = load_bank_data(tmp_path / "out")
    assert summary.snapshots == ["2020-01-31", "2020-02-29"]
    assert (summary.customers, summary.holdings, len(bank.customers)) == (2, 2, 3)
    assert bank.customers["tier"].tolist() == ["A", "B", "A"]


def test_existing_output_in_the_other_format_is_replaced(tmp_path: Path) -> None:
    small(tmp_path, "id,P1\na,1\n", fmt="csv")
    small(tmp_path, "id,P1,P2\na,1,1\n", fmt="parquet")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["customers.parquet", "holdings.parquet", "products.parquet"]
    assert len(load_bank_data(tmp_path / "out").holdings) == 2


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"snapshot_date": None}, "exactly one of date_col .* or snapshot_date"),
        ({"date_col": "d"}, "exactly one of date_col .* or snapshot_date"),
        ({"snapshot_date": "2020-13-01"}, "snapshot_date '2020-13-01' is not a date"),
        ({"fmt": "xlsx"}, "format 'xlsx' is not supported; use one of parquet, csv"),
        ({"product_cols": "P1,NOPE"}, r"'NOPE' matches no column \(available: id, d, P1"),
        ({"customer_col": "ID"}, r"customer column 'ID' not found \(available: id, d, P1"),
        (
            {"product_cols": "d:P1", "date_col": "d", "snapshot_date": None},
            "date column 'd' is also a product column",
        ),
    ],
)
def test_option_errors(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        small(tmp_path, "id,d,P1\na,2020-01-01,1\n", **options)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,P1\na,1\nb,2\n", r"wide.csv line 3: product column 'P1' has value '2'; .* fix"),
        ("id,P1\na,1\nb,yes\n", r"line 3: product column 'P1' has value 'yes'"),
        ("id,P1\na,1\n  ,1\n", r"wide.csv line 3: customer column 'id' is blank"),
        ("id,P1\na,1\nb,0\na,1\n", r"line 4: duplicate row for customer 'a' .* on line 2"),
        ("id,P1\na,1\n\n,\nb,2\n", r"line 5: product column 'P1' has value '2'"),
        ("id,customer_id,P1\na,x,1\n", "attribute column 'customer_id' would clash"),
    ],
)
def test_bad_rows_are_named_with_their_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        small(tmp_path, text)
    assert not (tmp_path / "out").exists()


def test_bad_date_in_the_date_column(tmp_path: Path) -> None:
    text = "id,d,P1\na,2020-01-01,1\nb,2020-02-30,1\n"
    with pytest.raises(DataError, match=r"line 3: date column 'd' value '2020-02-30' is not"):
        small(tmp_path, text, date_col="d", snapshot_date=None)


def test_same_customer_twice_on_one_date(tmp_path: Path) -> None:
    text = "id,d,P1\na,2020-01-01,1\na,2020-02-01,1\na,2020-01-01,0\n"
    with pytest.raises(DataError, match="line 4: duplicate row for customer 'a' on 2020-01-01"):
        small(tmp_path, text, date_col="d", snapshot_date=None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "cannot be read as CSV"),
        (b"id,P1\n", "has a header but no rows"),
        (b"id,P1\n\n , \n", "has a header but no rows"),
        (b"id,P1\na,1\nb,1,extra,fields\n", "cannot be read as CSV"),
        (b"id,name,P1\na,Coru\xf1a,1\n", "cannot be read as CSV .*UTF-8"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "wide.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=f"wide.csv: {message}"):
        import_wide(path, tmp_path / "out", "id", "P1", snapshot_date="2020-01-01")
    assert not (tmp_path / "out").exists()


# --- atomicity -----------------------------------------------------------------------------


def fail_on_holdings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the second table write fail, as a full disk would."""
    import recommender.storage as storage

    write = storage.pq.write_table

    def flaky(table: Any, path: Path, **kwargs: Any) -> None:
        if Path(path).name.startswith(C.HOLDINGS):
            raise OSError("No space left on device")
        write(table, path, **kwargs)

    monkeypatch.setattr(storage.pq, "write_table", flaky)


def test_failed_write_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on_holdings(monkeypatch)
    with pytest.raises(DataError, match=r"cannot write the data .*No space left"):
        small(tmp_path, "id,P1\na,1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.csv"]  # no out, no staging


def test_failed_import_keeps_the_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small(tmp_path, "id,P1\na,1\n")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(DataError, match="has value '7'"):
        small(tmp_path, "id,P1,P2\na,1,1\nb,7,0\n")
    fail_on_holdings(monkeypatch)
    with pytest.raises(DataError, match="cannot write the data"):
        small(tmp_path, "id,P1,P2\na,1,1\nb,1,0\n")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "wide.csv"]
