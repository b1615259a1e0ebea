"""Atomic writing of a set of tables: a reader sees all new files or none."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recommender import columns as C


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        plain = table.cast(
            pa.schema(
                [
                    pa.field(
                        f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type
                    )
                    for f in table.schema
                ]
            )
        )
        pacsv.write_csv(plain, path)
    else:
        pq.write_table(table, path)


def write_tables_atomically(tables: dict[str, pa.Table], out_dir: Path) -> list[Path]:
    """Write `{relative name: table}` under `out_dir`, replacing same-stem tables.

    Files are written into a staging folder beside `out_dir` and moved into place only
    when all of them were written, so a failure leaves `out_dir` as it was.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, table in tables.items():
            _write(table, staging / name)
        out_dir.mkdir(exist_ok=True)
        written = []
        for name in tables:
            target = out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            for ext in C.TABLE_EXTENSIONS:  # a stale customers.csv beside customers.parquet
                stale = target.with_suffix(ext)
                if stale != target and stale.exists():
                    stale.unlink()
            os.replace(staging / name, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
