"""Lightning callbacks that turn each epoch into one row of metrics, written everywhere at once."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from modadd import fourier
from modadd.files import read_csv, row_epoch, write_csv
from modadd.module import member_metrics

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
        self.rows: list[dict] = []
        self.columns: list[str] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # after a checkpoint's loop state is restored: current_epoch is the first epoch to run
        kept = [r for r in read_csv(self.path) if (e := row_epoch(r)) is not None and e < trainer.current_epoch]
        self.rows = [{k: v for k, v in r.items() if k is not None} for r in kept]  # as written; torn rows dropped
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
                csv.DictWriter(f, self.columns, lineterminator="\n").writerow(row)
        for logger in trainer.loggers:
            logger.log_metrics(row, step=epoch)
        if (epoch + 1) % self.print_every == 0 or epoch + 1 == trainer.max_epochs or epoch == 0:
            log.info(progress_line(row, trainer.max_epochs))

    def _rewrite(self) -> None:
        write_csv(self.path, self.rows, self.columns)


def progress_line(row: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {row['epoch'] + 1}/{epochs}"]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        if key in row:
            parts.append(f"{key} {row[key]:.4g}")
    return " | ".join(parts)


class LastCheckpoint(Callback):
    """`checkpoints/last.ckpt` every `every_n_epochs` epochs and at the last epoch, for resuming.

    Written to a temporary file and renamed, so a kill mid-write leaves the previous
    checkpoint whole (Lightning's ModelCheckpoint truncates the file in place). Runs after
    EpochLog, so every epoch a checkpoint covers is already in metrics.csv.
    """

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 10):
        self.path = Path(dirpath) / "last.ckpt"
        self.every = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every == 0 or epoch + 1 == trainer.max_epochs or trainer.should_stop:
            tmp = self.path.with_suffix(".tmp")
            trainer.save_checkpoint(tmp, weights_only=False)  # the optimiser and loops too, to resume
            tmp.replace(self.path)


class FitStats(Callback):
    """Cosine fits of every neuron and Nanda-style progress measures, logged as the run goes.

    Every `every_n_epochs` (and at the last epoch): the fit statistics (`fit/...`), the weight
    norms, and the counts per frequency in `freq_counts.csv`. Every `progress_every_n_epochs`:
    the Fourier sparsity of the weights (a second FFT), the restricted and excluded losses over
    all p*p pairs (a full forward pass, ~10 ms at p=113) and the frequency histogram to W&B (a
    media log costs ~1 ms); together they would cost more than the 5 % of an epoch this
    callback is allowed every epoch.
    Every `images_every_n_epochs` and at the end: figures to W&B. At the end: the per-neuron
    table as `neurons.csv` and a W&B table. With K members, each statistic is their mean (plus
    std and per-member values, as for the losses). For `sub`, `mul` and `div` the weights are
    first re-indexed so that the task is addition (`fourier.addition_basis`: discrete logs for
    mul/div); neurons.csv names the basis. `x2xyy2` has no such basis: fits only, no losses.
    """

    def __init__(
        self,
        out_dir: str | Path,
        every_n_epochs: int = 1,
        progress_every_n_epochs: int = 50,
        images_every_n_epochs: int = 1000,
        key_freq_share: float = 0.05,
        operation: str = "add",
    ):
        self.out_dir = Path(out_dir)
        self.operation = operation
        self.every = every_n_epochs
        self.progress_every = progress_every_n_epochs
        self.images_every = images_every_n_epochs
        self.key_freq_share = key_freq_share
        self.counts_file = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.counts_path = self.out_dir / "freq_counts.csv"
        rows = read_csv(self.counts_path)
        kept = [r for r in rows if (e := row_epoch(r)) is not None and e < trainer.current_epoch]
        if len(kept) != len(rows) or not rows:
            p = module.hparams.p
            write_csv(self.counts_path, kept, ["epoch", "member", *[f"k{k}" for k in range(1, p // 2 + 1)]])
        self.counts_file = self.counts_path.open("a", newline="")  # kept open: an open() per epoch costs ~0.1 ms

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch, last = trainer.current_epoch, trainer.current_epoch + 1 == trainer.max_epochs or trainer.should_stop
        if not (epoch % self.every == 0 or last):
            return
        fc1, fc2 = self._weights(module)
        fits = fourier.fit_neurons(fc1, fc2)
        stats = {f"fit/{k}": v for k, v in fourier.fit_statistics(fits).items()}
        norms = fourier.weight_norms(*module.net.seed_weights())  # of the weights as they are
        stats.update({"fit/weight_norm": norms["total"], "fit/weight_norm_fc1": norms["fc1"], "fit/weight_norm_fc2": norms["fc2"]})
        if (epoch % self.progress_every == 0 or last) and self.operation != "x2xyy2":
            spectrum = fourier.fourier_norms(fc1, fc2)[..., 1:]
            stats.update({"fit/fourier_gini": fourier.gini(spectrum), "fit/fourier_ipr": fourier.ipr(spectrum)})
            stats.update(self._progress_measures(fc1, fc2, fits, module.net.activation))
        counts = fourier.freq_counts(fits.out.freq, fits.p)[:, 1:]  # (K, p//2)
        names = list(stats)
        values = torch.stack([stats[n].double() for n in names], dim=1).tolist()  # one sync
        for j, name in enumerate(names):
            module.epoch_metrics.update(member_metrics(name, [row[j] for row in values]))
        csv.writer(self.counts_file, lineterminator="\n").writerows([[epoch, k, *c] for k, c in enumerate(counts.tolist())])
        self.counts_file.flush()  # a killed run keeps every finished epoch's row
        wandb_runs = [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        media = {}
        if wandb_runs and (epoch % self.progress_every == 0 or last):
            media["fit/freq_hist"] = _histogram(fits.out.freq)
        if wandb_runs and ((epoch + 1) % self.images_every == 0 or last):
            media.update(_figures(fc1[0], fc2[0], fits.member(0)))
        for run in wandb_runs if media else []:
            run.log(media, commit=False)  # joins the epoch's row, logged next by EpochLog

    def _weights(self, module: L.LightningModule) -> tuple[Tensor, Tensor]:
        """`fc1: (K, hidden, 2n)`, `fc2: (K, n, hidden)` in the basis where the task is addition."""
        fc1, fc2, self.basis = fourier.addition_basis(*module.net.seed_weights(), self.operation)
        return fc1, fc2

    def _progress_measures(self, fc1: Tensor, fc2: Tensor, fits: fourier.NeuronFits, activation: str) -> dict[str, Tensor]:
        """Restricted / excluded loss over all pairs, for each member's key frequencies."""
        restricted, excluded = [], []
        for k in range(fc1.shape[0]):
            key = fourier.key_frequencies(fits.member(k), self.key_freq_share)
            r, e = fourier.restricted_excluded_loss(fourier.all_pairs_logits(fc1[k], fc2[k], activation), key)
            restricted.append(r)
            excluded.append(e)
        return {"fit/restricted_loss": torch.stack(restricted), "fit/excluded_loss": torch.stack(excluded)}

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.counts_file is not None:
            self.counts_file.close()
            self.counts_file = None

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        fc1, fc2 = self._weights(module)
        table = fourier.fit_neurons(fc1, fc2).table()  # columns (K, hidden)
        K, hidden = fc1.shape[0], fc1.shape[1]
        columns = ["member", "neuron", *table, "basis"]
        cells = [c.tolist() for c in table.values()]  # per column (K, hidden); frequencies stay ints
        rows = [[k, n, *(c[k][n] for c in cells), self.basis] for k in range(K) for n in range(hidden)]
        write_csv(self.out_dir / "neurons.csv", [dict(zip(columns, r)) for r in rows], columns)
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_table("fit/neuron_table", columns=columns, data=rows)


def _histogram(freq: Tensor):
    import wandb

    values = freq.flatten().cpu().numpy()
    return wandb.Histogram(np_histogram=np.histogram(values, bins=np.arange(0.5, values.max() + 1.5)))


def _figures(fc1: Tensor, fc2: Tensor, fits: fourier.NeuronFits) -> dict:
    """A few neurons with their fitted cosines, the frequency histogram, the phase-sum plot."""
    import matplotlib.pyplot as plt
    import wandb

    from modadd import plots

    fc1, fc2 = fc1.detach().cpu(), fc2.detach().cpu()
    figures = {
        "fit/neurons": plots.neuron_weights(fc1, fc2, fits, list(range(min(2, fc1.shape[0])))),  # 0.4 s each
        "fit/freq_histogram": plots.frequency_histogram(fits.out.freq, fits.p),
        "fit/phase_sum": plots.phase_sum(fits),
    }
    media = {k: wandb.Image(fig) for k, fig in figures.items()}
    for fig in figures.values():
        plt.close(fig)
    return media
