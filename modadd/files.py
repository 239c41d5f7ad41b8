"""The job's files on disk: atomic writes, CSV tables and metrics.csv, in one place.

A kill at any moment must leave every file either as it was or as it is meant to be, so whole
files are written to a temporary file beside them and renamed over them (`write_atomic`);
files that grow by a row per epoch are appended to instead, and their readers skip a row torn
by a kill (`read_metrics`).
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, text: str, newline: str | None = None) -> Path:
    """Write `text` to a temporary file beside `path`, sync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plain(value: Any) -> Any:
    """numpy / torch scalars as plain Python values; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write rows as CSV, atomically: `columns`, or the union of the rows' keys in order of first
    appearance; missing cells empty; numpy / torch scalars as plain numbers at full precision."""
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: plain(v) for k, v in r.items()} for r in rows)
    return write_atomic(path, buffer.getvalue(), newline="")


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file as written (strings); [] if it is missing or unreadable."""
    try:
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """metrics.csv rows as floats (`epoch` as int, empty cells NaN); a row torn by a kill or a
    concurrent write is skipped, and a missing or unreadable file is []."""
    rows = []
    for record in read_csv(path):
        try:
            row = {k: float(v) if v not in ("", None) else math.nan for k, v in record.items() if k is not None}
            row["epoch"] = int(row["epoch"])
        except (KeyError, ValueError):
            continue
        rows.append(row)
    return rows
