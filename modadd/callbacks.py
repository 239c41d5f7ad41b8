"""Lightning callbacks that turn each epoch into one row of metrics, written everywhere at once."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("modadd")


class EpochLog(Callback):
    """Writes the epoch's row (`epoch` + `module.epoch_metrics`) to metrics.csv and every logger.

    The CSV is flushed every epoch so a killed run keeps its curve; on resume the rows of
    epochs the checkpoint does not cover are dropped, so no epoch appears twice or is missing.
    Must run after every callback that adds metrics to the row (`train.py` puts it last).
    """

    def __init__(self, path: str | Path, print_every: int = 100):
        self.path = Path(path)
        self.print_every = print_every
        self.rows: list[dict[str, float]] = []
        self.columns: list[str] = []

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.rows = [r for r in read_metrics(self.path) if r["epoch"] < trainer.current_epoch]
        self.columns = list(dict.fromkeys(k for r in self.rows for k in r))
        self._rewrite()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        row = {"epoch": epoch, **module.epoch_metrics}
        module.epoch_metrics = {}
        self.rows.append(row)
        if set(row) - set(self.columns):
            self.columns += [k for k in row if k not in self.columns]
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)
        for logger in trainer.loggers:
            logger.log_metrics(row, step=epoch)
        if (epoch + 1) % self.print_every == 0 or epoch + 1 == trainer.max_epochs or epoch == 0:
            log.info(progress_line(row, trainer.max_epochs))

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


def progress_line(row: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {row['epoch'] + 1}/{epochs}"]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        if key in row:
            parts.append(f"{key} {row[key]:.4g}")
    return " | ".join(parts)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as floats (`epoch` as int); [] if the file is missing or empty."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        r["epoch"] = int(r["epoch"])
    return rows
