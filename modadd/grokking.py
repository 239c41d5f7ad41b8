"""Grokking phases read off a run's per-epoch curve."""

from __future__ import annotations

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
