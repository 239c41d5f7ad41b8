"""Grokking read off a run's per-epoch curve: when it fitted, when it generalised, which phase it is in."""

from __future__ import annotations

import math
from collections.abc import Sequence


def first_epoch(rows: Sequence[dict[str, float]], key: str, threshold: float = 0.99) -> int | None:
    """The first epoch whose `key` reaches `threshold`, or None if it never does."""
    return next((int(r["epoch"]) for r in rows if r.get(key, float("nan")) >= threshold), None)


def grokking_epochs(rows: Sequence[dict[str, float]], threshold: float = 0.99) -> dict[str, int | None]:
    """`train_epoch` / `val_epoch`: first epochs at which train / validation accuracy reach
    `threshold`; `delay`: how many epochs generalisation lagged memorisation."""
    train, val = first_epoch(rows, "train/acc", threshold), first_epoch(rows, "val/acc", threshold)
    delay = val - train if train is not None and val is not None else None
    return {"train_epoch": train, "val_epoch": val, "delay": delay}


# Liu et al. (2022)'s four learning phases, read off a finished run's curves (README: "Phase diagrams").
PHASES = ("comprehension", "grokking", "memorisation", "confusion")
GROKKING_RATIO = 5  # generalising at least this many times as late as memorising is grokking ...
GROKKING_MIN_DELAY = 10  # ... if it is also at least this many epochs later


def learning_phase(rows: Sequence[dict[str, float]], status: str = "ok", threshold: float = 0.99) -> str | None:
    """The run's phase, from its final accuracies (the last finite ones) and the epochs at which
    they first reached `threshold`:

    - `confusion`: the final training accuracy is below `threshold` (it never fitted its training set);
    - `memorisation`: training fitted, the final validation accuracy is below `threshold`;
    - `grokking`: both fitted, validation first reached `threshold` at least `GROKKING_RATIO` times
      as late as training did (epochs counted from 1) and at least `GROKKING_MIN_DELAY` epochs later;
    - `comprehension`: both fitted, validation not that late.

    `diverged` for a run whose loss became non-finite; None for a run that has not finished
    training (running, stopped, failed: `status` other than ok / wandb_failed / diverged) or has no rows.
    """
    if status == "diverged":
        return "diverged"
    if status not in ("ok", "wandb_failed") or not rows:
        return None
    if not _last(rows, "train/acc") >= threshold:
        return "confusion"
    if not _last(rows, "val/acc") >= threshold:
        return "memorisation"
    epochs = grokking_epochs(rows, threshold)
    train, val = epochs["train_epoch"] + 1, epochs["val_epoch"] + 1  # epochs counted from 1: a ratio to epoch 0 means nothing
    late = val >= GROKKING_RATIO * train and val - train >= GROKKING_MIN_DELAY
    return "grokking" if late else "comprehension"


def _last(rows: Sequence[dict[str, float]], key: str) -> float:
    """The last finite value of `key` (validation may not run every epoch), NaN if none."""
    return next((r[key] for r in reversed(rows) if math.isfinite(r.get(key, math.nan))), math.nan)
