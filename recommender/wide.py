"""Import a wide CSV (one row per customer, or per customer and month, 0/1 product columns).

The result is a bank data directory that `dataset.load_bank_data` accepts: `customers`
(customer_id, snapshot_date when a date column is given, every other column as an attribute),
`holdings` (one row per product value 1) and `products` (product_id, name = product_id).

Cleaning rules, applied to every cell read as text:
- values are stripped; blank and "NA" are missing;
- product values "1"/"1.0" are held, "0"/"0.0"/missing are not; anything else is an error;
- a product column that is 1 on every row of a file of `ALL_HELD_MIN_ROWS` rows or more is an
  export error (a constant flag, missing values filled with 1), not a product: an error;
- snapshot dates more than `dataset.FUTURE_DAYS` after today are an error (2999-01-31);
- an attribute column becomes numeric when at least 95% of its present values are numbers,
  else dates (ISO `YYYY-MM-DD` strings) when at least 95% are `Y-m-d` or `d/m/Y` dates, else
  stripped text; values that do not fit the chosen type become missing. Slash dates are read
  day-first unless some second part exceeds 12 and no first part does (then month-first):
  an ambiguous column such as Zimnat's `join_date` ("1/5/2018") is read as d/m/Y.

Writing is all-or-nothing in practice: every table is written to a staging directory next to
`out_dir` before any is moved in with one rename each, so a failure while reading, checking or
writing leaves `out_dir` as it was (or absent). Other files in `out_dir` are kept, but a table
of the same name in the other format (a stale `customers.csv` when writing Parquet) is removed,
because the loader refuses to choose between them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recommender import columns as C
from recommender.dataset import latest_snapshot_date, too_late
from recommender.errors import DataError
from recommender.storage import Table, write_tables_atomically
from recommender.tablefile import check_last_line, check_text_encoding, csv_problem

FORMATS = ("parquet", "csv")
MISSING = ("", "NA")
HELD = ("1", "1.0")
NOT_HELD = ("0", "0.0")
TYPE_SHARE = 0.95
ALL_HELD_MIN_ROWS = 100  # below this, every row holding a product can be real
_ISO = r"\d{4}-\d{1,2}-\d{1,2}"
_SLASH = r"\d{1,2}/\d{1,2}/\d{4}"
_SHOWN_COLUMNS = 12


@dataclass(frozen=True)
class ImportSummary:
    """What `import_wide` wrote: distinct customers, holding rows, products, ISO snapshots."""

    customers: int
    holdings: int
    products: int
    snapshots: list[str]
    files: list[Path]


def import_wide(
    csv_path: Path,
    out_dir: Path,
    customer_col: str,
    product_cols: str,
    date_col: str | None = None,
    snapshot_date: str | None = None,
    fmt: str = "parquet",
) -> ImportSummary:
    """Turn the wide CSV at `csv_path` into a bank data directory at `out_dir`."""
    fixed_date = _check_options(date_col, snapshot_date, fmt)
    text = _read_text(csv_path)
    products = select_columns(list(text.columns), product_cols, csv_path)
    _check_roles(list(text.columns), customer_col, date_col, products, csv_path)
    ids = _customer_ids(text, customer_col, csv_path)
    if date_col:
        dates = _row_dates(text, date_col, csv_path)
    else:
        dates = pd.Series(fixed_date, index=text.index, dtype=object)
    _check_unique(ids, dates, csv_path)
    held = _held(text, products, csv_path)
    _check_not_all_held(held, products, csv_path)
    attributes = [c for c in text.columns if c not in (customer_col, date_col, *products)]
    tables: dict[str, Table] = {
        C.CUSTOMERS: _customers(ids, dates if date_col else None, text[attributes]),
        C.HOLDINGS: _holdings(ids, dates, held, products),
        C.PRODUCTS: pd.DataFrame({C.PRODUCT_ID: products, C.NAME: products}, dtype=object),
    }
    files = write_tables_atomically({f"{k}.{fmt}": v for k, v in tables.items()}, Path(out_dir))
    snapshots = sorted(str(d) for d in dates.unique())
    return ImportSummary(
        int(ids.nunique()), len(tables[C.HOLDINGS]), len(products), snapshots, files
    )


def _check_options(date_col: str | None, snapshot_date: str | None, fmt: str) -> str:
    """The fixed snapshot date as ISO text ("" when each row's date comes from `date_col`)."""
    if (date_col is None) == (snapshot_date is None):
        raise DataError(
            "give exactly one of date_col (--date-col, a column holding each row's date) or "
            "snapshot_date (--snapshot-date YYYY-MM-DD, one date for the whole file)"
        )
    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    if snapshot_date is None:
        return ""
    iso = to_iso_dates(pd.Series([snapshot_date.strip()], dtype=str)).iloc[0]
    if pd.isna(iso):
        raise DataError(f"snapshot_date {snapshot_date!r} is not a date; use YYYY-MM-DD")
    if str(iso) > _latest_iso():
        raise DataError(
            f"snapshot_date {snapshot_date!r} {too_late()}; use the date of the snapshot the "
            "file describes (YYYY-MM-DD)"
        )
    return str(iso)


def _latest_iso() -> str:
    return latest_snapshot_date().date().isoformat()


def _customers(ids: pd.Series, dates: pd.Series | None, attributes: pd.DataFrame) -> pd.DataFrame:
    """customer_id, snapshot_date when rows are dated (time-varying attributes), attributes."""
    customers = pd.DataFrame({C.CUSTOMER_ID: ids})
    if dates is not None:
        customers[C.SNAPSHOT_DATE] = dates
    for column in attributes.columns:
        customers[column] = typed_attribute(attributes[column])
    return customers


def _holdings(
    ids: pd.Series, dates: pd.Series, held: np.ndarray, products: list[str]
) -> pd.DataFrame:
    """One row per held product, in file order."""
    rows, cols = np.nonzero(held)
    return pd.DataFrame(
        {
            C.CUSTOMER_ID: ids.to_numpy()[rows],
            C.PRODUCT_ID: np.asarray(products, dtype=object)[cols],
            C.SNAPSHOT_DATE: dates.to_numpy()[rows],
        }
    )


def _read_text(path: Path) -> pd.DataFrame:
    """Every cell as stripped text, blank and "NA" as missing; empty lines are skipped."""
    try:
        check_text_encoding(path)
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file; check the path") from exc
    # OSError: unreadable; ValueError covers UnicodeDecodeError, ParserError, EmptyDataError.
    except (OSError, ValueError) as exc:
        reason = csv_problem(path, exc)
        raise DataError(
            f"{path}: cannot be read as CSV ({reason}); "
            "check that it is a complete, UTF-8 encoded CSV file with a header row"
        ) from exc
    check_last_line(path)
    raw.columns = pd.Index([str(c).strip() for c in raw.columns])
    if raw.columns.has_duplicates:
        raise DataError(f"{path}: duplicate column names after stripping spaces; rename them")
    text = pd.DataFrame({c: raw[c].str.strip() for c in raw.columns})
    text = text.mask(text.isin(MISSING)).dropna(how="all")  # index stays the row number
    if text.empty:
        raise DataError(f"{path}: has a header but no rows; nothing to import")
    return text


def _available(columns: list[str]) -> str:
    shown = ", ".join(columns[:_SHOWN_COLUMNS])
    more = len(columns) - _SHOWN_COLUMNS
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def select_columns(columns: list[str], spec: str, path: Path) -> list[str]:
    """Columns named by `spec`: comma-separated names, globs (`ind_*_ult1`) or `FIRST:LAST`."""
    selected: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if item in columns:
            found = [item]
        elif ":" in item and all(end.strip() in columns for end in item.split(":", 1)):
            first, last = (columns.index(end.strip()) for end in item.split(":", 1))
            found = columns[first : last + 1]
        else:
            found = [c for c in columns if fnmatch.fnmatchcase(c, item)]
        if not found:
            raise DataError(
                f"{path.name}: product column {item!r} matches no column (available: "
                f"{_available(columns)}); give names, globs like ind_*_ult1 or FIRST:LAST"
            )
        selected += [c for c in found if c not in selected]
    return selected


def _check_roles(
    columns: list[str], customer_col: str, date_col: str | None, products: list[str], path: Path
) -> None:
    for option, column in (("customer", customer_col), ("date", date_col)):
        if column is not None and column not in columns:
            raise DataError(
                f"{path.name}: {option} column {column!r} not found "
                f"(available: {_available(columns)}); pass an existing column name"
            )
        if column in products:
            raise DataError(
                f"{path.name}: {option} column {column!r} is also a product column; "
                "narrow the product columns so they leave it out"
            )
    for reserved in (C.CUSTOMER_ID, C.SNAPSHOT_DATE):
        if reserved in columns and reserved not in (customer_col, date_col, *products):
            raise DataError(
                f"{path.name}: attribute column {reserved!r} would clash with the column the "
                "importer writes; rename it in the file, or pass it as the customer/date column"
            )


def _first_line(mask: pd.Series) -> tuple[int, int]:
    """Position of the first True value and its CSV line (header is line 1)."""
    first = int(np.flatnonzero(mask.to_numpy())[0])
    return first, int(mask.index[first]) + 2


def _customer_ids(text: pd.DataFrame, column: str, path: Path) -> pd.Series:
    ids = text[column]
    blank = ids.isna()
    if blank.any():
        _, line = _first_line(blank)
        raise DataError(
            f"{path.name} line {line}: customer column {column!r} is blank or NA "
            f"({int(blank.sum())} rows); every row needs a customer id"
        )
    return ids.astype(object).rename(C.CUSTOMER_ID)


def _row_dates(text: pd.DataFrame, column: str, path: Path) -> pd.Series:
    dates = to_iso_dates(text[column])
    bad = dates.isna()
    if bad.any():
        first, line = _first_line(bad)
        raise DataError(
            f"{path.name} line {line}: date column {column!r} value "
            f"{text[column].iloc[first]!r} is not a date; use YYYY-MM-DD or d/m/Y"
        )
    late = dates > _latest_iso()
    if late.any():
        first, line = _first_line(late)
        raise DataError(
            f"{path.name} line {line}: date column {column!r} value {text[column].iloc[first]!r} "
            f"{too_late()}; fix the date or remove the row ({int(late.sum())} rows affected)"
        )
    return dates.astype(object)


def _check_unique(ids: pd.Series, dates: pd.Series, path: Path) -> None:
    keys = pd.DataFrame({"id": ids, "date": dates})
    duplicated = keys.duplicated(keep="first")
    if duplicated.any():
        first, line = _first_line(duplicated)
        customer, date = ids.iloc[first], dates.iloc[first]
        _, earlier = _first_line((ids == customer) & (dates == date))
        raise DataError(
            f"{path.name} line {line}: duplicate row for customer {customer!r} on {date} "
            f"(first seen on line {earlier}); keep one row per customer and date"
        )


def _held(text: pd.DataFrame, products: list[str], path: Path) -> np.ndarray:
    """Boolean matrix rows x products; a value other than 0/1/blank is an error."""
    held = text[products].isin(HELD)
    valid = held | text[products].isin(NOT_HELD) | text[products].isna()
    for column in products:
        if not valid[column].all():
            first, line = _first_line(~valid[column])
            raise DataError(
                f"{path.name} line {line}: product column {column!r} has value "
                f"{text[column].iloc[first]!r}; product columns must hold 1 (held) or 0/blank "
                "(not held): fix the value or leave the column out of the product columns"
            )
    return held.to_numpy(dtype=bool)


def _check_not_all_held(held: np.ndarray, products: list[str], path: Path) -> None:
    """A column held on every row of a large file is an export error, not a product."""
    if len(held) < ALL_HELD_MIN_ROWS:
        return
    everywhere = [products[i] for i in np.flatnonzero(held.all(axis=0))]
    if everywhere:
        more = f" (and {len(everywhere) - 1} more columns)" if len(everywhere) > 1 else ""
        raise DataError(
            f"{path.name}: product column {everywhere[0]!r}{more} is 1 (held) on all "
            f"{len(held)} rows; a product every row holds is most likely an export error (a "
            "constant flag, or missing values filled with 1): fix the export, or leave the "
            "column out of the product columns (--product-cols)"
        )


def to_iso_dates(text: pd.Series) -> pd.Series:
    """`Y-m-d` or `d/m/Y` text as `YYYY-MM-DD` strings; anything else becomes missing."""
    iso = pd.to_datetime(
        text.where(text.str.fullmatch(_ISO, na=False)), format="%Y-%m-%d", errors="coerce"
    )
    slash = text.where(text.str.fullmatch(_SLASH, na=False))
    parts = slash.str.extract(r"^(\d+)/(\d+)/").apply(pd.to_numeric)
    day_first = bool(parts[0].gt(12).any())
    month_first = bool(parts[1].gt(12).any()) and not day_first
    slash_format = "%m/%d/%Y" if month_first else "%d/%m/%Y"
    dated = iso.fillna(pd.to_datetime(slash, format=slash_format, errors="coerce"))
    return dated.dt.strftime("%Y-%m-%d")


def typed_attribute(values: pd.Series) -> pd.Series:
    """A cleaned text column as numbers, ISO dates or text (see the module docstring)."""
    present = int(values.notna().sum())
    if present == 0:
        return values
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() >= TYPE_SHARE * present:
        return numbers
    dates = to_iso_dates(values)
    if dates.notna().sum() >= TYPE_SHARE * present:
        return dates
    return values
