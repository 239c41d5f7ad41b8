"""One writer per run dir: a POSIX lock on `<dir>/.lock`, with its holder's host and PID in it.

The kernel (or, on NFS, the lock manager) drops the lock when its process dies, however it
dies, so a lock left by a killed job is simply taken over and there is no stale-lock guessing
by age; POSIX `lockf` locks also hold across the nodes of a cluster sharing an NFS home, where
an `O_EXCL` file or `flock` may not. Readers (`holder`) probe the lock instead of file ages to
tell a running job from a stopped one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

NAME = ".lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a filesystem without lock support


class Locked(RuntimeError):
    """Another live process holds the run dir; the message is one line naming it."""


class NoLocks(OSError):
    """The filesystem of the run dir cannot lock files."""


class RunLock:
    """The held lock of one run dir (released on `release()` or when the process exits)."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(run_dir: str | os.PathLike, tries: int = 5) -> RunLock:
    """Lock `run_dir` for this process and record who holds it; raise `Locked` naming the holder.

    A reader's probe holds the lock for microseconds, so a refusal is retried a few times
    before it is believed.
    """
    path = Path(run_dir) / NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for attempt in range(tries):
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno in _NO_LOCKS:
                    raise NoLocks(err.errno, f"{path}: the filesystem cannot lock files ({os.strerror(err.errno)})") from None
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if attempt == tries - 1:
                    raise Locked(in_use(Path(run_dir), _read(path))) from None
                time.sleep(0.05)
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode() + b"\n", 0)
    except BaseException:
        os.close(fd)
        raise
    return RunLock(fd, path)


def holder(run_dir: str | os.PathLike) -> dict | None:
    """Who holds `run_dir` now (`host`, `pid`, `since`), or None if no live process does.

    Never call it in the holding process: closing any descriptor of the file drops all of that
    process's POSIX locks on it."""
    path = Path(run_dir) / NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a reader's lock: refused only while a writer holds it
        except OSError as err:
            return _read(path) if err.errno in (errno.EACCES, errno.EAGAIN) else None
        return None
    finally:
        os.close(fd)  # drops the probe's lock


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def in_use(run_dir: Path, who: dict) -> str:
    pid, host, since = who.get("pid", "?"), who.get("host", "?"), who.get("since", "?")
    return (f"{run_dir} is in use by PID {pid} on {host} (since {since}): one process writes a run dir at a time; "
            f"wait for it to end (or stop it: kill -INT {pid}), then run the same command again to continue")
