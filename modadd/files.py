"""The job's files on disk: atomic writes, CSV tables and metrics.csv, in one place.

A kill or a full disk at any moment must leave every file either as it was or as it is meant
to be, so whole files are written to a temporary file beside them and renamed over them
(`save_atomic`); files that grow by a row per epoch are appended to instead, and their readers
skip a row torn by a kill (`read_metrics`). A failed write raises `WriteError`, one line naming
the file.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class WriteError(OSError):
    """A write that failed (a full or read-only disk): one line naming the file and what it held."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextmanager
def writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn an OSError within into a `WriteError` naming `path` and `what` was being written
    (a write to a full disk raises with no file name)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(err.errno, f"{err.strerror or err}: could not write {path} ({what})") from None


def make_output_dir(out: Path, what: str) -> None:
    """Create the output dir `out` of `what` and check that it takes a file, or raise `WriteError`
    (one line): before the work, so a bad output path fails in a second, not after it."""
    if out.exists() and not out.is_dir():
        raise WriteError(errno.EEXIST, f"{out} is a file, not a directory: give the output a directory (--out)")
    with writing(out, what):
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()


def save_atomic(write: Callable[[Path], object], path: str | os.PathLike, what: str) -> Path:
    """`write(tmp)` to `.<name>.tmp` beside `path`, sync it, then rename it over `path`: a kill
    or a full disk mid-write leaves `path` as it was and no temporary file (`WriteError`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path, what):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def write_atomic(path: str | os.PathLike, text: str, newline: str | None = None, what: str = "its new contents") -> Path:
    """Write `text` to `path` with `save_atomic`."""
    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline=newline) as f:
            f.write(text)

    return save_atomic(write, path, what)


def plain(value: Any) -> Any:
    """numpy / torch scalars as plain Python values; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
              what: str = "a table") -> Path:
    """Write rows as CSV, atomically: `columns` (other keys dropped), or the union of the rows'
    keys in order of first appearance; missing cells empty; numpy / torch scalars as plain
    numbers at full precision. `what` the table holds, for a `WriteError`."""
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: plain(v) for k, v in r.items()} for r in rows)
    return write_atomic(path, buffer.getvalue(), newline="", what=what)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file as written (strings), [] if it does not exist. Bytes a kill left
    torn decode as U+FFFD, so only their row is damaged; a file that cannot be read at all
    raises (a writer resuming from it must not take it for empty)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        return list(csv.DictReader(f))


def row_epoch(row: Mapping[str, Any]) -> int | None:
    """A row's `epoch` as an int, None if it has none (a row torn by a kill)."""
    try:
        return int(row["epoch"])
    except (KeyError, TypeError, ValueError):
        return None


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """metrics.csv rows as floats (`epoch` as int, empty cells NaN); a row torn by a kill or a
    concurrent write is skipped, and a missing or unreadable file is []. A torn row may still
    parse: a kill mid-row leaves fewer fields than the header (the reader fills them with None,
    not an empty cell), two rows run together more (under the key None)."""
    try:
        records = read_csv(path)
    except (OSError, csv.Error):
        return []
    rows = []
    for record in records:
        if None in record or None in record.values():
            continue
        try:
            row = {k: float(v) if v != "" else math.nan for k, v in record.items()}
            row["epoch"] = int(row["epoch"])
        except (KeyError, TypeError, ValueError):
            continue
        rows.append(row)
    return rows
