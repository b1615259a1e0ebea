"""The bank data contract: load a data directory into a validated, frozen `BankData`.

A bank data directory holds `customers`, `holdings` and optionally `products`, each as
`.csv` or `.parquet`. Everything is checked here, once; code behind `BankData` trusts it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.errors import DataError
from recommender.tablefile import find_table, read_table

ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"
_EXAMPLES = 3
FUTURE_DAYS = 366  # a snapshot later than this many days after today is a typo
EARLIEST_DATE = pd.Timestamp("1678-01-01")  # the range of datetime64[ns]
LATEST_DATE = pd.Timestamp("2261-12-31")


@dataclass(frozen=True)
class BankData:
    """Validated tables of one bank data directory.

    `holdings` has categorical `customer_id`/`product_id` and a datetime64 `snapshot_date`;
    `customers` has string `customer_id`, optional `snapshot_date`, and attribute columns;
    `products` always has `product_id` and `name`, in catalog order.
    """

    customers: pd.DataFrame
    holdings: pd.DataFrame
    products: pd.DataFrame
    directory: Path | None = None

    @property
    def snapshots(self) -> list[pd.Timestamp]:
        return sorted(pd.to_datetime(self.holdings[C.SNAPSHOT_DATE].unique()))

    @property
    def product_ids(self) -> list[str]:
        return [str(p) for p in self.products[C.PRODUCT_ID]]

    @property
    def attribute_columns(self) -> list[str]:
        return [c for c in self.customers.columns if c not in (C.CUSTOMER_ID, C.SNAPSHOT_DATE)]

    def until(self, date: pd.Timestamp) -> BankData:
        """The data as it was known at `date`: no snapshot after it."""
        holdings = self.holdings[self.holdings[C.SNAPSHOT_DATE] <= date]
        customers = self.customers
        if C.SNAPSHOT_DATE in customers.columns:
            customers = customers[customers[C.SNAPSHOT_DATE] <= date]
        return BankData(customers, holdings, self.products, self.directory)


def _row_label(path: Path, index: int) -> str:
    return f"line {index + 2}" if path.suffix == ".csv" else f"row {index + 1}"


def require_columns(frame: pd.DataFrame, path: Path, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path.name}: missing column {missing[0]!r} "
            f"(found: {', '.join(map(str, frame.columns))}); "
            f"required columns are {', '.join(required)}"
        )


def clean_ids(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Ids as stripped strings; a blank id is an error naming its row."""
    values = frame[column].astype("string").str.strip()
    blank = values.isna() | (values == "")
    if blank.any():
        first = int(np.flatnonzero(blank.to_numpy())[0])
        raise DataError(
            f"{path.name} {_row_label(path, first)}: {column} is empty "
            f"({int(blank.sum())} rows); every row needs a {column}"
        )
    return values


def parse_dates(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Strict ISO dates (YYYY-MM-DD); the first bad value is named with its row.

    Snapshot dates more than `FUTURE_DAYS` after today are typos (2999-01-31) and refused.
    """
    raw = frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = pd.to_datetime(raw)
        bad = parsed.isna()
    else:
        text = raw.astype("string").str.strip()
        parsed = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
        bad = parsed.isna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path.name} {_row_label(path, first)}: {column} {str(raw.iloc[first])!r} "
            f"is not a date (expected YYYY-MM-DD); {int(bad.sum())} rows affected"
        )
    latest = latest_snapshot_date()
    check_date_range(parsed, raw, path, latest, too_late(), "fix the date or remove the row")
    return parsed.astype("datetime64[ns]").dt.normalize()


def latest_snapshot_date() -> pd.Timestamp:
    """The latest snapshot date accepted: `FUTURE_DAYS` after today."""
    return pd.Timestamp.today().normalize() + pd.Timedelta(days=FUTURE_DAYS)


def too_late() -> str:
    today = pd.Timestamp.today().date().isoformat()
    return f"is more than {FUTURE_DAYS} days after today ({today})"


def check_date_range(
    parsed: pd.Series, raw: pd.Series, path: Path, latest: pd.Timestamp, too_late: str, fix: str
) -> None:
    """Dates before `EARLIEST_DATE` or after `latest` are an error naming the first one."""
    early = (parsed < EARLIEST_DATE).to_numpy()
    bad = early | (parsed > latest).to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        why = f"is before {EARLIEST_DATE.date().isoformat()}" if early[first] else too_late
        raise DataError(
            f"{path.name} {_row_label(path, first)}: {raw.name} {_plain(raw.iloc[first])!r} "
            f"{why}; {fix}; {int(bad.sum())} rows affected"
        )


def _plain(value: object) -> str:
    return value.date().isoformat() if isinstance(value, pd.Timestamp) else str(value)


def _examples(values: object) -> str:
    shown = [str(v) for v in list(values)[:_EXAMPLES]]  # type: ignore[call-overload]
    return ", ".join(repr(v) for v in shown)


def check_unique(frame: pd.DataFrame, keys: list[str], path: Path) -> None:
    duplicated = frame.duplicated(subset=keys, keep="first").to_numpy()
    if duplicated.any():
        first = int(np.flatnonzero(duplicated)[0])
        row = frame.iloc[first]
        what = ", ".join(f"{k}={_plain(row[k])}" for k in keys)
        raise DataError(
            f"{path.name} {_row_label(path, first)}: duplicate row for ({what}); "
            f"{int(duplicated.sum())} duplicates in all; keep one row per {' + '.join(keys)}"
        )


def check_known(values: pd.Series, known: pd.Index, path: Path, what: str, fix: str) -> None:
    unknown = ~values.isin(known)
    if unknown.any():
        distinct = pd.unique(values[unknown])
        raise DataError(
            f"{path.name}: {len(distinct)} {what} not found ({int(unknown.sum())} rows), "
            f"e.g. {_examples(distinct)}; {fix}"
        )


def load_holdings(path: Path) -> pd.DataFrame:
    frame = read_table(path, string_columns=(C.CUSTOMER_ID, C.PRODUCT_ID, C.SNAPSHOT_DATE))
    require_columns(frame, path, (C.CUSTOMER_ID, C.PRODUCT_ID, C.SNAPSHOT_DATE))
    holdings = pd.DataFrame(
        {
            C.CUSTOMER_ID: clean_ids(frame, C.CUSTOMER_ID, path),
            C.PRODUCT_ID: clean_ids(frame, C.PRODUCT_ID, path),
            C.SNAPSHOT_DATE: parse_dates(frame, C.SNAPSHOT_DATE, path),
        }
    )
    check_unique(holdings, [C.CUSTOMER_ID, C.PRODUCT_ID, C.SNAPSHOT_DATE], path)
    holdings[C.CUSTOMER_ID] = holdings[C.CUSTOMER_ID].astype("category")
    holdings[C.PRODUCT_ID] = holdings[C.PRODUCT_ID].astype("category")
    return holdings


def _parse_date_attributes(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Attribute columns whose every value is an ISO date become datetimes."""
    for column in frame.columns:
        if column in (C.CUSTOMER_ID, C.SNAPSHOT_DATE):
            continue
        series = frame[column]
        if pd.api.types.is_datetime64_any_dtype(series):
            frame[column] = _date_attribute(pd.to_datetime(series), series, path)
            continue
        if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
            continue
        text = series.dropna().astype("string").str.strip()
        if len(text) and bool(text.str.fullmatch(ISO_DATE).all()):
            parsed = pd.to_datetime(series, format="%Y-%m-%d", errors="coerce")
            bad = series.notna() & parsed.isna()
            if bad.any():
                first = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{path.name} {_row_label(path, first)}: {column} {series.iloc[first]!r} "
                    "is not a valid date (expected YYYY-MM-DD)"
                )
            frame[column] = _date_attribute(parsed, series, path)
    return frame


def _date_attribute(parsed: pd.Series, raw: pd.Series, path: Path) -> pd.Series:
    too_late = f"is after {LATEST_DATE.date().isoformat()}"
    check_date_range(parsed, raw, path, LATEST_DATE, too_late, "leave it blank if unknown")
    return parsed.astype("datetime64[ns]")


def load_customers(path: Path) -> pd.DataFrame:
    frame = read_table(path, string_columns=(C.CUSTOMER_ID, C.SNAPSHOT_DATE))
    require_columns(frame, path, (C.CUSTOMER_ID,))
    frame[C.CUSTOMER_ID] = clean_ids(frame, C.CUSTOMER_ID, path).astype(object)
    keys = [C.CUSTOMER_ID]
    if C.SNAPSHOT_DATE in frame.columns:
        frame[C.SNAPSHOT_DATE] = parse_dates(frame, C.SNAPSHOT_DATE, path)
        keys.append(C.SNAPSHOT_DATE)
    check_unique(frame, keys, path)
    return _parse_date_attributes(frame, path).reset_index(drop=True)


def _numeric_column(frame: pd.DataFrame, column: str, path: Path, low: float, high: float) -> None:
    if column not in frame.columns:
        return
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = (raw.notna() & values.isna()) | (values < low) | (values > high)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path.name} {_row_label(path, first)}: {column} {str(raw.iloc[first])!r} "
            f"must be a number between {low:g} and {high:g}"
        )
    frame[column] = values


def load_products(path: Path) -> pd.DataFrame:
    frame = read_table(path, string_columns=(C.PRODUCT_ID,))
    require_columns(frame, path, (C.PRODUCT_ID,))
    frame[C.PRODUCT_ID] = clean_ids(frame, C.PRODUCT_ID, path).astype(object)
    check_unique(frame, [C.PRODUCT_ID], path)
    _numeric_column(frame, C.RISK_LEVEL, path, 1, 5)
    _numeric_column(frame, C.MARGIN, path, 0, np.inf)
    _numeric_column(frame, C.MIN_AGE, path, 0, 150)
    _numeric_column(frame, C.MAX_AGE, path, 0, 150)
    _numeric_column(frame, C.MIN_INCOME, path, 0, np.inf)
    if C.NAME not in frame.columns:
        frame[C.NAME] = frame[C.PRODUCT_ID]
    frame[C.NAME] = frame[C.NAME].fillna(frame[C.PRODUCT_ID]).astype(object)
    return frame.reset_index(drop=True)


def infer_products(holdings: pd.DataFrame) -> pd.DataFrame:
    ids = sorted(str(p) for p in holdings[C.PRODUCT_ID].unique())
    return pd.DataFrame({C.PRODUCT_ID: ids, C.NAME: ids}, dtype=object)


def load_bank_data(directory: str | Path) -> BankData:
    """Load and validate a bank data directory (see README, 'Data contract')."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"{directory}: no such data directory; create one with "
            "`recommender demo-data` or `recommender import-wide`"
        )
    customers_path = find_table(directory, C.CUSTOMERS)
    holdings_path = find_table(directory, C.HOLDINGS)
    products_path = find_table(directory, C.PRODUCTS, required=False)
    assert customers_path is not None and holdings_path is not None
    customers = load_customers(customers_path)
    holdings = load_holdings(holdings_path)
    if products_path is None:
        products = infer_products(holdings)
    else:
        products = load_products(products_path)
        check_known(
            holdings[C.PRODUCT_ID].astype(object),
            pd.Index(products[C.PRODUCT_ID]),
            holdings_path,
            "product_id values",
            f"add them to {products_path.name} or remove those holdings",
        )
    check_known(
        holdings[C.CUSTOMER_ID].astype(object),
        pd.Index(customers[C.CUSTOMER_ID]),
        holdings_path,
        "customer_id values",
        f"add those customers to {customers_path.name} or remove their holdings",
    )
    return BankData(customers, holdings, products, directory)


def fingerprint(data: BankData) -> dict[str, object]:
    """What identifies the data a model was trained on: file hashes, counts, snapshots.

    `id` is one hash over all of it; two runs with the same `id` saw the same data.
    """
    files: dict[str, str] = {}
    if data.directory is not None:
        for stem in (C.CUSTOMERS, C.HOLDINGS, C.PRODUCTS):
            path = find_table(data.directory, stem, required=False)
            if path is not None:
                files[path.name] = _sha256(path)
    facts: dict[str, object] = {
        "files": files,
        "rows": {
            C.CUSTOMERS: len(data.customers),
            C.HOLDINGS: len(data.holdings),
            C.PRODUCTS: len(data.products),
        },
        "snapshots": [d.date().isoformat() for d in data.snapshots],
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    return {"id": digest[:16], **facts}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
