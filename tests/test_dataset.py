"""The bank data contract: one test per validation error, and small known-answer loads."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from recommender import columns as C
from recommender.dataset import BankData, load_bank_data
from recommender.errors import DataError

CUSTOMERS = "customer_id,age,segment\nc1,30,top\nc2,41,student\nc3,25,individual\n"
HOLDINGS = (
    "customer_id,product_id,snapshot_date\nc1,p1,2016-01-28\nc2,p2,2016-01-28\nc1,p1,2016-02-28\n"
)
PRODUCTS = "product_id,name,risk_level\np1,Current account,1\np2,Pension plan,3\n"

Table = str | bytes | pd.DataFrame


def bank_dir(tmp_path: Path, tables: dict[str, Table], name: str = "bank") -> Path:
    """A data directory holding `tables` (file name -> CSV text, raw bytes or a frame)."""
    directory = tmp_path / name
    directory.mkdir()
    for file_name, content in tables.items():
        path = directory / file_name
        if isinstance(content, pd.DataFrame):
            content.to_parquet(path, index=False)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return directory


def valid(**replace: Table | None) -> dict[str, Table]:
    """The valid CSV bank, with some files replaced (`holdings_csv=...`) or removed (None)."""
    tables: dict[str, Table] = {
        "customers.csv": CUSTOMERS,
        "holdings.csv": HOLDINGS,
        "products.csv": PRODUCTS,
    }
    for key, content in replace.items():
        file_name = key.replace("_", ".")
        if content is None:
            tables.pop(file_name)
        else:
            tables[file_name] = content
    return tables


def load(tmp_path: Path, **replace: Table | None) -> BankData:
    return load_bank_data(bank_dir(tmp_path, valid(**replace)))


def literal(text: str) -> str:
    return re.escape(text)


# --- the directory and its files ---------------------------------------------------------


def test_missing_directory_names_it_and_how_to_create_one(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=literal(f"{missing}: no such data directory")) as info:
        load_bank_data(missing)
    assert "recommender demo-data" in str(info.value)
    assert "recommender import-wide" in str(info.value)


def test_a_file_is_not_a_data_directory(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(CUSTOMERS, encoding="utf-8")
    with pytest.raises(DataError, match=literal(f"{path}: no such data directory")):
        load_bank_data(path)


@pytest.mark.parametrize("stem", ["customers", "holdings"])
def test_missing_required_file(tmp_path: Path, stem: str) -> None:
    directory = bank_dir(tmp_path, valid(**{f"{stem}_csv": None}))
    expected = f"{directory}: missing {stem}.csv or {stem}.parquet"
    with pytest.raises(DataError, match=literal(expected)) as info:
        load_bank_data(directory)
    assert "Data contract" in str(info.value)


def test_both_csv_and_parquet_of_one_table(tmp_path: Path) -> None:
    frame = pd.DataFrame({C.CUSTOMER_ID: ["c1", "c2", "c3"]})
    directory = bank_dir(tmp_path, valid(customers_parquet=frame))
    expected = f"{directory}: both customers.parquet and customers.csv exist; keep only one"
    with pytest.raises(DataError, match=literal(expected)):
        load_bank_data(directory)


# --- reading ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        (
            {"holdings_csv": "customer_id,product,snapshot_date\nc1,p1,2016-01-28\n"},
            "holdings.csv: missing column 'product_id' "
            "(found: customer_id, product, snapshot_date); "
            "required columns are customer_id, product_id, snapshot_date",
        ),
        (
            {"holdings_csv": "customer_id,product_id\nc1,p1\n"},
            "holdings.csv: missing column 'snapshot_date'",
        ),
        (
            {"customers_csv": "client,age\nc1,30\n"},
            "customers.csv: missing column 'customer_id' (found: client, age)",
        ),
        (
            {"products_csv": "id,name\np1,Current account\n"},
            "products.csv: missing column 'product_id' (found: id, name)",
        ),
    ],
    ids=["holdings-product_id", "holdings-snapshot_date", "customers", "products"],
)
def test_missing_required_column_is_named(
    tmp_path: Path, replace: dict[str, Table | None], expected: str
) -> None:
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, **replace)


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        ({"customers_csv": "customer_id,age\n"}, "customers.csv: has no rows"),
        ({"holdings_csv": "customer_id,product_id,snapshot_date\n"}, "holdings.csv: has no rows"),
        (
            {
                "customers_csv": None,
                "customers_parquet": pd.DataFrame({C.CUSTOMER_ID: pd.Series([], dtype=str)}),
            },
            "customers.parquet: has no rows",
        ),
    ],
    ids=["customers-csv", "holdings-csv", "customers-parquet"],
)
def test_table_without_rows(
    tmp_path: Path, replace: dict[str, Table | None], expected: str
) -> None:
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, **replace)


def test_random_bytes_as_parquet_cannot_be_read(tmp_path: Path) -> None:
    garbage = os.urandom(512)
    with pytest.raises(DataError, match=literal("holdings.parquet: cannot be read as parquet (")):
        load(tmp_path, holdings_csv=None, holdings_parquet=garbage)


def test_truncated_parquet_cannot_be_read(tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    pd.read_csv(bank_dir(tmp_path, valid(), "source") / "holdings.csv").to_parquet(whole)
    truncated = whole.read_bytes()[: whole.stat().st_size // 2]
    with pytest.raises(
        DataError, match=literal("holdings.parquet: cannot be read as parquet")
    ) as info:
        load(tmp_path, holdings_csv=None, holdings_parquet=truncated)
    assert "check that the file is complete" in str(info.value)


def test_latin1_csv_is_a_data_error_not_a_decode_error(tmp_path: Path) -> None:
    latin1 = "customer_id,name\nc1,José\nc2,Zoë\nc3,Ana\n".encode("latin-1")
    with pytest.raises(DataError, match=literal("customers.csv: cannot be read as csv (")) as info:
        load(tmp_path, customers_csv=latin1)
    assert "UTF-8 encoded" in str(info.value)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


# --- values -------------------------------------------------------------------------------


def test_unparsable_date_names_csv_line_value_and_format(tmp_path: Path) -> None:
    holdings = "customer_id,product_id,snapshot_date\nc1,p1,2016-01-28\nc2,p2,2016-13-28\n"
    expected = (
        "holdings.csv line 3: snapshot_date '2016-13-28' is not a date (expected YYYY-MM-DD); "
        "1 rows affected"
    )
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, holdings_csv=holdings)


def test_unparsable_date_names_parquet_row(tmp_path: Path) -> None:
    holdings = pd.DataFrame(
        {
            C.CUSTOMER_ID: ["c1", "c2", "c3"],
            C.PRODUCT_ID: ["p1", "p2", "p2"],
            C.SNAPSHOT_DATE: ["2016-01-28", "2016-13-28", "28/01/2016"],
        }
    )
    expected = (
        "holdings.parquet row 2: snapshot_date '2016-13-28' is not a date "
        "(expected YYYY-MM-DD); 2 rows affected"
    )
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, holdings_csv=None, holdings_parquet=holdings)


@pytest.mark.parametrize("blank", ["", "   "], ids=["empty", "spaces"])
def test_blank_customer_id_names_its_line(tmp_path: Path, blank: str) -> None:
    customers = f"customer_id,age\nc1,30\n{blank},41\nc3,25\n"
    expected = "customers.csv line 3: customer_id is empty (1 rows); every row needs a customer_id"
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, customers_csv=customers)


def test_blank_customer_id_in_parquet_names_its_row(tmp_path: Path) -> None:
    holdings = pd.DataFrame(
        {
            C.CUSTOMER_ID: ["c1", None, " "],
            C.PRODUCT_ID: ["p1", "p1", "p2"],
            C.SNAPSHOT_DATE: ["2016-01-28"] * 3,
        }
    )
    expected = "holdings.parquet row 2: customer_id is empty (2 rows)"
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, holdings_csv=None, holdings_parquet=holdings)


def test_duplicate_holding_row(tmp_path: Path) -> None:
    holdings = HOLDINGS + "c2, p2 ,2016-01-28\n"  # the same row as line 3 once stripped
    expected = (
        "holdings.csv line 5: duplicate row for (customer_id=c2, product_id=p2, "
        "snapshot_date=2016-01-28"
    )
    with pytest.raises(DataError, match=literal(expected)) as info:
        load(tmp_path, holdings_csv=holdings)
    assert str(info.value).endswith(
        "1 duplicates in all; keep one row per customer_id + product_id + snapshot_date"
    )


def test_duplicate_customer(tmp_path: Path) -> None:
    customers = CUSTOMERS + "c4,50,top\nc1,31,top\n"
    expected = (
        "customers.csv line 6: duplicate row for (customer_id=c1); 1 duplicates in all; "
        "keep one row per customer_id"
    )
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, customers_csv=customers)


def test_duplicate_customer_snapshot(tmp_path: Path) -> None:
    customers = (
        "customer_id,snapshot_date,income\n"
        "c1,2016-01-28,10\nc1,2016-02-28,12\nc2,2016-01-28,5\nc3,2016-01-28,7\nc1,2016-02-28,13\n"
    )
    expected = "customers.csv line 6: duplicate row for (customer_id=c1, snapshot_date=2016-02-28"
    with pytest.raises(DataError, match=literal(expected)) as info:
        load(tmp_path, customers_csv=customers)
    assert "keep one row per customer_id + snapshot_date" in str(info.value)


def test_holdings_product_missing_from_catalog(tmp_path: Path) -> None:
    holdings = HOLDINGS + "c1,p8,2016-01-28\nc2,p9,2016-01-28\nc3,p9,2016-02-28\n"
    expected = (
        "holdings.csv: 2 product_id values not found (3 rows), e.g. 'p8', 'p9'; "
        "add them to products.csv or remove those holdings"
    )
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, holdings_csv=holdings)


def test_holdings_product_examples_are_capped_at_three(tmp_path: Path) -> None:
    extra = "".join(f"c1,x{i},2016-01-28\n" for i in range(5))
    expected = "holdings.csv: 5 product_id values not found (5 rows), e.g. 'x0', 'x1', 'x2';"
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, holdings_csv=HOLDINGS + extra)


def test_holdings_customer_missing_from_customers(tmp_path: Path) -> None:
    holdings = HOLDINGS + "c7,p1,2016-01-28\nc8,p1,2016-01-28\nc8,p2,2016-02-28\n"
    expected = (
        "holdings.csv: 2 customer_id values not found (3 rows), e.g. 'c7', 'c8'; "
        "add those customers to customers.csv or remove their holdings"
    )
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, holdings_csv=holdings)


@pytest.mark.parametrize(
    ("value", "line"),
    [("7", 3), ("0", 3), ("high", 3)],
    ids=["above", "below", "not-a-number"],
)
def test_risk_level_outside_one_to_five(tmp_path: Path, value: str, line: int) -> None:
    products = f"product_id,name,risk_level\np1,Current account,1\np2,Pension plan,{value}\n"
    expected = f"products.csv line {line}: risk_level '{value}' must be a number between 1 and 5"
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, products_csv=products)


def test_negative_margin(tmp_path: Path) -> None:
    products = "product_id,name,margin\np1,Current account,-0.5\np2,Pension plan,2\n"
    expected = "products.csv line 2: margin '-0.5' must be a number between 0 and"
    with pytest.raises(DataError, match=literal(expected)):
        load(tmp_path, products_csv=products)


# --- happy paths --------------------------------------------------------------------------


def literal_frames() -> dict[str, pd.DataFrame]:
    return {
        "customers": pd.DataFrame(
            {
                C.CUSTOMER_ID: ["c1", "c2", "c3"],
                "age": [30, 41, 25],
                "segment": ["top", "student", "individual"],
            }
        ),
        "holdings": pd.DataFrame(
            {
                C.CUSTOMER_ID: ["c1", "c2", "c1", "c3"],
                C.PRODUCT_ID: ["p1", "p2", "p1", "p2"],
                C.SNAPSHOT_DATE: pd.to_datetime(
                    ["2016-01-28", "2016-01-28", "2016-02-28", "2016-02-28"]
                ),
            }
        ),
        "products": pd.DataFrame(
            {
                C.PRODUCT_ID: ["p2", "p1"],
                C.NAME: ["Pension plan", "Current account"],
                C.CATEGORY: ["savings", "accounts"],
                C.RISK_LEVEL: [3, 1],
                C.MARGIN: [2.5, 0.0],
                C.MIN_AGE: [18, 0],
                C.MAX_AGE: [67, 150],
                C.MIN_INCOME: [0, 0],
                C.SEGMENTS: ["top|individual", "top|individual|student"],
            }
        ),
    }


def test_csv_and_parquet_load_to_the_same_content(tmp_path: Path) -> None:
    frames = literal_frames()
    csv_tables: dict[str, Table] = {
        f"{stem}.csv": frame.to_csv(index=False, date_format="%Y-%m-%d")
        for stem, frame in frames.items()
    }
    parquet_tables: dict[str, Table] = {f"{stem}.parquet": f for stem, f in frames.items()}
    from_csv = load_bank_data(bank_dir(tmp_path, csv_tables, "csv"))
    from_parquet = load_bank_data(bank_dir(tmp_path, parquet_tables, "parquet"))
    pd.testing.assert_frame_equal(from_csv.customers, from_parquet.customers)
    pd.testing.assert_frame_equal(from_csv.holdings, from_parquet.holdings)
    pd.testing.assert_frame_equal(from_csv.products, from_parquet.products)


def test_loaded_tables_hold_the_literal_values(tmp_path: Path) -> None:
    data = load(tmp_path)
    holdings = [
        (str(c), str(p), d.date().isoformat())
        for c, p, d in data.holdings[[C.CUSTOMER_ID, C.PRODUCT_ID, C.SNAPSHOT_DATE]].itertuples(
            index=False
        )
    ]
    assert holdings == [
        ("c1", "p1", "2016-01-28"),
        ("c2", "p2", "2016-01-28"),
        ("c1", "p1", "2016-02-28"),
    ]
    assert isinstance(data.holdings[C.CUSTOMER_ID].dtype, pd.CategoricalDtype)
    assert isinstance(data.holdings[C.PRODUCT_ID].dtype, pd.CategoricalDtype)
    assert data.holdings[C.SNAPSHOT_DATE].dtype == "datetime64[ns]"
    assert data.customers[C.CUSTOMER_ID].tolist() == ["c1", "c2", "c3"]
    assert data.attribute_columns == ["age", "segment"]
    assert data.product_ids == ["p1", "p2"]
    assert data.products[C.RISK_LEVEL].tolist() == [1, 3]
    assert data.snapshots == [pd.Timestamp("2016-01-28"), pd.Timestamp("2016-02-28")]
    assert data.directory == tmp_path / "bank"


def test_products_keep_catalog_order(tmp_path: Path) -> None:
    products = "product_id,name\np2,Pension plan\np1,Current account\np3,Unheld fund\n"
    data = load(tmp_path, products_csv=products)
    assert data.product_ids == ["p2", "p1", "p3"]


def test_products_are_inferred_from_holdings_without_a_catalog(tmp_path: Path) -> None:
    holdings = HOLDINGS + "c3,p0,2016-02-28\n"
    data = load(tmp_path, products_csv=None, holdings_csv=holdings)
    assert data.product_ids == ["p0", "p1", "p2"]
    assert data.products[C.NAME].tolist() == ["p0", "p1", "p2"]
    assert list(data.products.columns) == [C.PRODUCT_ID, C.NAME]


def test_product_name_defaults_to_its_id(tmp_path: Path) -> None:
    products = "product_id,name\np1,Current account\np2,\n"
    data = load(tmp_path, products_csv=products)
    assert data.products[C.NAME].tolist() == ["Current account", "p2"]


def test_iso_date_attributes_become_datetimes(tmp_path: Path) -> None:
    customers = (
        "customer_id,birth_date,joined,segment\n"
        "c1,1980-05-01,2010-01-01,top\n"
        "c2,1990-12-31,,student\n"
        "c3,2001-02-03,not known,individual\n"
    )
    data = load(tmp_path, customers_csv=customers)
    assert data.customers["birth_date"].dtype == "datetime64[ns]"
    assert data.customers["birth_date"].tolist() == [
        pd.Timestamp("1980-05-01"),
        pd.Timestamp("1990-12-31"),
        pd.Timestamp("2001-02-03"),
    ]
    assert not pd.api.types.is_datetime64_any_dtype(data.customers["joined"])
    assert not pd.api.types.is_datetime64_any_dtype(data.customers["segment"])


def test_iso_date_attribute_with_blanks_keeps_them_missing(tmp_path: Path) -> None:
    customers = "customer_id,birth_date\nc1,1980-05-01\nc2,\nc3,2001-02-03\n"
    data = load(tmp_path, customers_csv=customers)
    births = data.customers["birth_date"]
    assert births.dtype == "datetime64[ns]"
    assert births.isna().tolist() == [False, True, False]


TIME_VARYING = (
    "customer_id,snapshot_date,income\n"
    "c1,2016-01-28,10\n"
    "c1,2016-02-28,12\n"
    "c2,2016-01-28,5\n"
    "c3,2016-02-28,7\n"
)


def test_time_varying_customers_load(tmp_path: Path) -> None:
    data = load(tmp_path, customers_csv=TIME_VARYING)
    assert data.customers[C.SNAPSHOT_DATE].dtype == "datetime64[ns]"
    assert data.customers[C.CUSTOMER_ID].tolist() == ["c1", "c1", "c2", "c3"]
    assert data.customers["income"].tolist() == [10, 12, 5, 7]
    assert data.attribute_columns == ["income"]


def test_until_drops_later_snapshots(tmp_path: Path) -> None:
    data = load(tmp_path, customers_csv=TIME_VARYING)
    first = pd.Timestamp("2016-01-28")
    earlier = data.until(first)
    assert earlier.snapshots == [first]
    assert earlier.holdings[C.CUSTOMER_ID].astype(str).tolist() == ["c1", "c2"]
    assert earlier.customers[C.CUSTOMER_ID].tolist() == ["c1", "c2"]
    assert earlier.customers["income"].tolist() == [10, 5]
    assert earlier.product_ids == data.product_ids
    assert len(data.holdings) == 3  # the original is untouched


def test_until_keeps_static_customers(tmp_path: Path) -> None:
    data = load(tmp_path)
    earlier = data.until(pd.Timestamp("2016-01-31"))
    assert earlier.snapshots == [pd.Timestamp("2016-01-28")]
    assert earlier.customers[C.CUSTOMER_ID].tolist() == ["c1", "c2", "c3"]
