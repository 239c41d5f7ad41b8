"""SIGINT and SIGTERM: stop at the end of an epoch, with a checkpoint, and say so.

Ctrl-C sends SIGINT; Slurm sends SIGTERM at preemption and at a job's time limit. Either way
the job must end with files that tell the truth and a checkpoint that the same command
continues from. While a job trains (`deferred`), a signal is only noted: the training loop
stops at the next epoch boundary (`modadd.callbacks.StopOnSignal`), writes its checkpoint and
the job exits with 128 + the signal's number (130, 143). Outside training there is nothing to
save, so a signal stops the process at once (`Interrupted`), and so does a second signal.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from hydra.experimental.callback import Callback

log = logging.getLogger("modadd")

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal that stops the process at once (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    received: int | None = None  # the first signal of this process, if any
    deferring: bool = False
    sweep: bool = False  # this process waits for a sweep's workers
    requeue: tuple[int, object] | None = None  # submitit's requeue signal and its handler


STATE = _State()


def install() -> None:
    """Route SIGINT and SIGTERM through `_handle`, except one the process was started ignoring
    (as Python does for SIGINT: a shell's background job is not meant to get the terminal's Ctrl-C).

    In a job of the submitit launchers (Slurm), submitit's requeue signal (USR2: preemption, or
    the time limit near) is routed through `_handle` as well, and SIGTERM is left to submitit,
    which ignores it in favour of that signal: the job stops at the end of an epoch and then
    submitit's own handler requeues it, to resume from the checkpoint.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    requeue = _submitit_signal()
    for signum in HANDLED:
        if signal.getsignal(signum) is not signal.SIG_IGN and not (requeue and signum == signal.SIGTERM):
            signal.signal(signum, _handle)
    if requeue and signal.getsignal(requeue) is not _handle:
        STATE.requeue = (requeue, signal.getsignal(requeue))
        signal.signal(requeue, _handle)


class SweepSignals(Callback):
    """A Hydra callback: while a launcher runs a sweep's jobs in other processes (joblib,
    submitit), this process only notes a signal, so as not to kill the workers mid-write; they
    get the signal too (a terminal's Ctrl-C and Slurm signal every process of the job), stop at
    their epoch's end and the sweep ends with them. `train.py` exits 128 + its number after."""

    def on_multirun_start(self, config: object, **kwargs: object) -> None:
        target = str(config.hydra.launcher.get("_target_", ""))
        if not any(local in target for local in ("BasicLauncher", "StackedLauncher")):  # jobs in this process handle their own
            STATE.received, STATE.deferring, STATE.sweep = None, True, True


def _submitit_signal() -> int | None:
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def stop(signum: int) -> NoReturn:
    """End the job for `signum`, once its files are written: submitit's requeue signal goes on to
    submitit's handler (which requeues the job and exits), any other exits 128 + its number."""
    if STATE.requeue is not None and signum == STATE.requeue[0] and callable(STATE.requeue[1]):
        STATE.requeue[1](signum, None)
    raise SystemExit(exit_code(signum))


def received() -> int | None:
    """The signal this job received, if any."""
    return STATE.received


def name(signum: int) -> str:
    return signal.Signals(signum).name


def describe(signum: int) -> str:
    """The signal's name, and what it means where it is not plain."""
    requeued = STATE.requeue is not None and signum == STATE.requeue[0]
    return name(signum) + (" (Slurm preemption or time limit: submitit requeues the job)" if requeued else "")


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by `signum` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


@contextmanager
def deferred() -> Iterator[None]:
    """Within: a first signal is noted, for the training loop to stop at the epoch's end (a
    signal noted before, by an earlier job of this worker process, stays noted)."""
    STATE.deferring = True
    try:
        yield
    finally:
        STATE.deferring = False


def _handle(signum: int, frame: object) -> None:
    if not STATE.deferring and STATE.requeue is not None and signum == STATE.requeue[0]:
        stop(signum)  # nothing to save: requeue at once
    if STATE.deferring and STATE.received is None:
        STATE.received = signum
        if STATE.sweep:
            log.warning("%s received: the sweep's running jobs stop at the end of their epoch", name(signum))
        else:
            log.warning("%s received: stopping at the end of this epoch, after its checkpoint (send it again to "
                        "stop at once, from the last checkpoint)", name(signum))
        return
    STATE.received = STATE.received or signum
    raise Interrupted(signum)
