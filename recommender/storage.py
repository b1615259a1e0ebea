"""Atomic writing of a set of tables: a reader sees all new files or none."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TypeAlias

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recommender import columns as C
from recommender.errors import DataError

Table: TypeAlias = pa.Table | pd.DataFrame


def _plain(table: pa.Table) -> pa.Table:
    """For CSV: dictionary columns decoded, and timestamps that are whole days written as
    dates (YYYY-MM-DD, what the data contract reads) instead of `1989-07-09 00:00:00.000000`."""
    fields = [
        pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
        for f in table.schema
    ]
    table = table.cast(pa.schema(fields))
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            with contextlib.suppress(pa.ArrowInvalid):  # refused if a value has a time of day
                table = table.set_column(i, f.name, table.column(i).cast(pa.date32()))
    return table


# A spreadsheet runs a cell that starts with one of these as a formula (`=HYPERLINK(...)`,
# `+1+cmd|' /C calc'!A0`, `@SUM(1,1)`); tab and carriage return can hide such a start.
_FORMULA_PATTERN = "^([=+\\-@\t\r])"  # = + - @ tab carriage-return, first in a cell


def neutralise_formulas(table: pa.Table) -> pa.Table:
    """Text cells that a spreadsheet would run as a formula get a leading `'` (OWASP's
    advice for CSV injection): ids and names come from bank data and from API callers,
    and officers open these files in spreadsheets. Numeric columns are left alone, so a
    negative number stays a number; text such as `-2+3` does become `'-2+3`. Read back,
    such a value keeps its quote: a bank whose ids start with these characters should
    keep its data in Parquet (the default), which is written as it is."""
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            column = pc.replace_substring_regex(
                table.column(i), pattern=_FORMULA_PATTERN, replacement="'\\1"
            )
            table = table.set_column(i, field, column)
    return table


def _write(table: Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if path.suffix == ".csv":
        pacsv.write_csv(neutralise_formulas(_plain(table)), path)
    else:
        pq.write_table(table, path)


def _staging_for(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory; choose another output")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot create it ({exc}); check the path") from exc


def _move_into(staging: Path, out_dir: Path, names: list[str], other_formats: bool) -> list[Path]:
    """One rename per file; with `other_formats`, the same table in the other format
    (a stale customers.csv beside a new customers.parquet) is removed."""
    out_dir.mkdir(exist_ok=True)
    written = []
    for name in names:
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        for ext in C.TABLE_EXTENSIONS if other_formats else ():
            if ext != target.suffix:
                target.with_suffix(ext).unlink(missing_ok=True)
        os.replace(staging / name, target)
        written.append(target)
    return written


def write_tables_atomically(
    tables: dict[str, Table], out_dir: Path, other_formats: bool = True
) -> list[Path]:
    """Write `{relative file name: table}` under `out_dir`.

    Everything is written into a staging folder beside `out_dir` first and moved into
    place only when all files were written, so a failure leaves `out_dir` as it was.
    """
    staging = _staging_for(out_dir)
    try:
        for name, table in tables.items():
            _write(table, staging / name)
        return _move_into(staging, out_dir, list(tables), other_formats)
    except OSError as exc:
        raise DataError(
            f"{out_dir}: cannot write the data ({exc}); check space and rights"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
