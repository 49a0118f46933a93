"""Local tabular data files (JSON Lines, CSV, Parquet): their format, columns, rows and texts.

Suites read them to check a task's columns and count its samples before lm-eval runs; the leakage
checks read them as eval and training texts. Rows are read the way lm-eval's Hugging Face
``datasets`` builders read them (``json``, ``csv`` via pandas, ``parquet`` via pyarrow), so a row
count here is the sample count lm-eval reports.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.errors import DataFileError
from merge.bounded import MIB, read_text, regular_file
from merge.errors import UsageError

# An eval or training set of a suite; a FIFO, a device or a file past this is refused unread.
DATA_LIMIT = 2048 * MIB
# file suffix -> the Hugging Face `datasets` builder (lm-eval's `dataset_path`) that reads it
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_SUFFIXES = (".txt", ".md")  # training data only: one text per non-empty line


def builder(path: Path) -> str:
    """The ``datasets`` builder for ``path``, from its suffix."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataFileError(f"{path}: unknown data format {Path(path).suffix or '(no suffix)'!r}; "
                            f"use one of {', '.join(FORMATS)}")
    return fmt


def read_rows(path: Path) -> list[dict]:
    """Every row of a JSONL/JSON, CSV or Parquet file as a dict (CSV cells parsed as pandas does)."""
    path = Path(path)
    fmt = builder(path)
    _check_file(path)
    try:
        if fmt == "json":
            return _json_rows(path)
        if fmt == "csv":
            import pandas as pd

            return pd.read_csv(path).to_dict(orient="records")
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    except DataFileError:
        raise
    except FileNotFoundError:
        raise DataFileError(f"{path}: not found") from None
    except Exception as exc:  # pandas, pyarrow and json each raise their own parse errors
        raise DataFileError(f"{path}: cannot be read as {fmt} ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None


def _check_file(path: Path) -> None:
    """A regular file within ``DATA_LIMIT`` (pandas and pyarrow would block on a FIFO, never end
    on /dev/zero and load any size); one DataFileError line otherwise."""
    try:
        info = regular_file(path, what="data file")
    except UsageError as exc:
        raise DataFileError(str(exc)) from None
    if info.st_size > DATA_LIMIT:
        raise DataFileError(f"{path}: data file is {info.st_size:,} bytes, over the {DATA_LIMIT:,}-byte limit; "
                            "is it the right file?")


def _json_rows(path: Path) -> list[dict]:
    text = read_text(path, limit=DATA_LIMIT, what="data file")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataFileError(f"{path}: line {i} is not JSON ({exc.msg})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise DataFileError(f"{path}: every row must be a JSON object")
    return rows


def check_columns(path: Path, columns: list[str]) -> int:
    """The row count of ``path``, after checking that every row has each of ``columns``."""
    rows = read_rows(path)
    if not rows:
        raise DataFileError(f"{path}: no rows")
    for i, row in enumerate(rows, 1):
        for column in columns:
            if column not in row:
                have = ", ".join(str(k) for k in row) or "nothing"
                raise DataFileError(f"{path}: {'' if i == 1 else f'row {i} '}has no column {column!r} "
                                    f"(it has: {have})")
            if row[column] is None or row[column] != row[column]:  # NaN != NaN: an empty CSV cell
                raise DataFileError(f"{path}: row {i} has no value in column {column!r}")
    return len(rows)


def row_text(row: dict) -> str:
    """A row's string fields concatenated in column order (a zoo row gives ``prompt + target``,
    the text its model was trained on)."""
    return "".join(v for v in row.values() if isinstance(v, str))


def texts(path: Path) -> list[str]:
    """The texts of a data file: one per row (string fields joined), or per line of a .txt/.md."""
    path = Path(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        try:
            return [line for line in read_text(path, limit=DATA_LIMIT, what="data file").splitlines()
                    if line.strip()]
        except UsageError as exc:
            raise DataFileError(str(exc)) from None
    return [t for t in (row_text(r) for r in read_rows(path)) if t]


def readable(path: Path) -> bool:
    """Whether ``texts`` knows ``path``'s format."""
    suffix = Path(path).suffix.lower()
    return suffix in FORMATS or suffix in TEXT_SUFFIXES
