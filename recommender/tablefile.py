"""Reading one table file of a data directory (CSV or Parquet), with errors that say what
is wrong with the file itself: not found, ambiguous, empty, cut off, not UTF-8, UTF-16 or
binary, an unclosed quote. What the rows mean is checked in `recommender.dataset`."""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

import pandas as pd

from recommender import columns as C
from recommender.errors import DataError, first_line

_SNIFF_BYTES = 4096
_TAIL_BYTES = 1 << 16
_OPEN_QUOTE = "EOF inside string"  # pandas: a quoted value runs to the end of the file


def find_table(directory: Path, stem: str, required: bool = True) -> Path | None:
    """The one `stem.csv` or `stem.parquet` in `directory`."""
    found = [directory / f"{stem}{ext}" for ext in C.TABLE_EXTENSIONS]
    found = [p for p in found if p.exists()]
    if len(found) > 1:
        raise DataError(
            f"{directory}: both {found[0].name} and {found[1].name} exist; keep only one"
        )
    if not found:
        if required:
            raise DataError(
                f"{directory}: missing {stem}.csv or {stem}.parquet "
                f"(a bank data directory needs customers and holdings; see README 'Data contract')"
            )
        return None
    return found[0]


def read_table(path: Path, string_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning any parse failure into a `DataError`."""
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            check_text_encoding(path)
            dtypes = dict.fromkeys(string_columns, "string")
            frame = pd.read_csv(path, dtype=dtypes, skipinitialspace=True)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        problem = _unreadable(path, exc)
        raise DataError(f"{path.name}: cannot be read as {path.suffix[1:]} {problem}") from exc
    if frame.empty:
        raise DataError(f"{path.name}: has no rows; a bank data directory needs data")
    if path.suffix == ".csv":
        check_last_line(path)
    return frame


def check_text_encoding(path: Path) -> None:
    """UTF-16 (or binary) files decode as UTF-8 without error or with a useless one."""
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head:
        raise DataError(
            f"{path.name}: cannot be read as csv (it looks UTF-16 encoded or binary: "
            "it has a UTF-16 byte-order mark or NUL bytes); save it as UTF-8 encoded CSV"
        )


def _unreadable(path: Path, exc: BaseException) -> str:
    """'(reason); fix' for a file pandas could not read."""
    if path.suffix == ".parquet":
        reason = first_line(exc).replace(f" '{path}'", "")
        return (
            f"({reason}); check that the file is complete (not cut off while copying) "
            "and really Parquet: export or copy it again"
        )
    fix = "check that the file is complete and UTF-8 encoded"
    if isinstance(exc, UnicodeDecodeError):
        fix = "save it as UTF-8 encoded text (it may be Latin-1 or Windows-1252)"
    elif _OPEN_QUOTE in str(exc):
        fix = "the file looks truncated or has a stray quote: export or copy it again"
    return f"({csv_problem(path, exc)}); {fix}"


def csv_problem(path: Path, exc: BaseException) -> str:
    """Why pandas could not read the CSV at `path`, naming the line where it can."""
    if isinstance(exc, UnicodeDecodeError):
        return _first_non_utf8_line(path)
    if _OPEN_QUOTE in str(exc):
        return f"line {_broken_record_line(path)} opens a quoted value that is never closed"
    if isinstance(exc, pd.errors.EmptyDataError):
        return "the file is empty, without even a header line"
    return first_line(exc)


def _first_non_utf8_line(path: Path) -> str:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                near = line[max(0, exc.start - 20) : exc.start + 20].decode("latin-1").strip()
                return f"line {number} is not UTF-8: byte 0x{line[exc.start]:02x} in {near!r}"
    return "not UTF-8"


def _broken_record_line(path: Path) -> int:
    """The line where the record with an unclosed quote starts (header is line 1)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, strict=True)
        last = 0
        try:
            for _ in reader:
                last = reader.line_num
        except csv.Error:
            pass
    return last + 1


def check_last_line(path: Path) -> None:
    """A last line without a line break and with fewer fields than the header: truncated."""
    with path.open("rb") as handle:
        header = handle.readline().decode("utf-8-sig").rstrip("\r\n")
        size = handle.seek(0, 2)
        handle.seek(max(0, size - _TAIL_BYTES))
        tail = handle.read()
    last = tail.rsplit(b"\n", 1)[-1]
    whole = b"\n" in tail or len(tail) == size
    if tail.endswith((b"\n", b"\r")) or not whole or not last.strip() or last.count(b'"') % 2:
        return
    expected = len(next(csv.reader([header])))
    found = len(next(csv.reader([last.decode("utf-8", errors="replace")])))
    if found < expected:
        with path.open("rb") as handle:
            line = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
        raise DataError(
            f"{path.name} line {line + 1}: has {found} of {expected} fields and the file ends "
            "without a line break; it looks truncated (cut off mid-line): export or copy it again"
        )
