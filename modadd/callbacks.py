"""Lightning callbacks that turn each epoch into one row of metrics, written everywhere at once."""

from __future__ import annotations

import csv
import logging
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from modadd import fourier, signals
from modadd.files import WriteError, read_csv, row_epoch, save_atomic, write_csv, writing
from modadd.module import member_metrics

log = logging.getLogger("modadd")


class EpochLog(Callback):
    """Writes each epoch's row (`epoch` + `module.epoch_metrics`) to metrics.csv and every logger.

    Rows are written in blocks of `flush_every` epochs (and at the end, on a stop or an
    exception), so that `FitStats` can fit a block's weights in one batched call and add its
    statistics to the pending rows (`add`). They are also written whenever LastCheckpoint saves,
    so a kill loses no row a checkpoint covers; on resume the rows of epochs it does not cover
    are dropped, so no epoch appears twice or is missing. Must run after every callback that
    adds metrics to the row (`train.py` puts it last). A resumed job's W&B run is a new one: it
    is given the rows before the checkpoint first, so the newest W&B run of a job holds every epoch.
    """

    def __init__(self, path: str | Path, print_every: int = 100, flush_every: int = 10):
        self.path = Path(path)
        self.print_every = print_every
        self.flush_every = flush_every
        self.rows: list[dict] = []  # written
        self.pending: dict[int, dict] = {}  # epoch -> row not yet written
        self.media: dict[int, dict] = {}  # epoch -> W&B media logged with that epoch's row
        self.finished = -1  # the last epoch whose row is whole
        self.columns: list[str] = []
        self.started = False

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start(trainer)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.started:  # a checkpoint of the last epoch: the loop had nothing to run
            self._start(trainer)

    def _start(self, trainer: L.Trainer) -> None:
        # after a checkpoint's loop state is restored: current_epoch is the first epoch to run
        self.started = True
        kept = [r for r in read_csv(self.path) if (e := row_epoch(r)) is not None and e < trainer.current_epoch]
        self.rows = [{k: v for k, v in r.items() if k is not None} for r in kept]  # as written; torn rows dropped
        self.columns = list(dict.fromkeys(k for r in self.rows for k in r))
        self._rewrite()
        for logger in trainer.loggers:  # each start is a new W&B run: it gets the epochs before it too
            if isinstance(logger, WandbLogger):
                for row in self.rows:
                    logger.log_metrics({k: float(v) for k, v in row.items() if v != ""}, step=int(row["epoch"]))

    def flushes(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's end writes the pending rows: every `flush_every` epochs, at the
        end, and whenever a checkpoint is saved (a resume must find every row it covers)."""
        epoch = trainer.current_epoch
        return ((epoch + 1) % self.flush_every == 0 or epoch + 1 == trainer.max_epochs or trainer.should_stop
                or any(isinstance(c, LastCheckpoint) and c.saves(trainer) for c in trainer.callbacks))

    def add(self, epoch: int, metrics: dict[str, float], media: dict | None = None) -> None:
        """Adds metrics (and W&B media) to the row of `epoch`: a pending one or the current one."""
        self.pending.setdefault(epoch, {"epoch": epoch}).update(metrics)
        if media:
            self.media.setdefault(epoch, {}).update(media)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        added = self.pending.pop(epoch, {})
        self.pending[epoch] = {"epoch": epoch, **module.epoch_metrics, **added}
        self.finished = epoch
        module.epoch_metrics = {}
        if self.flushes(trainer):
            self.flush(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.flush(trainer)  # a stop that came after this epoch's on_train_epoch_end

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.pending = {e: row for e, row in self.pending.items() if e <= self.finished}  # no half-made row
        try:
            self.flush(trainer)
        except WriteError:
            pass  # the disk that failed first fails again; a resume drops the rows its checkpoint lacks

    def flush(self, trainer: L.Trainer) -> None:
        rows = [self.pending.pop(e) for e in sorted(self.pending)]
        if not rows:
            return
        self.rows += rows
        new_columns = [k for row in rows for k in row if k not in self.columns]
        if new_columns:
            self.columns += list(dict.fromkeys(new_columns))
            self._rewrite()
        else:
            with writing(self.path, f"the metrics of epochs {rows[0]['epoch']}-{rows[-1]['epoch']}"), \
                    self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.columns, lineterminator="\n").writerows(rows)
        wandb_runs = [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for row in rows:
            epoch = row["epoch"]
            media = self.media.pop(epoch, None)
            for run in wandb_runs if media else []:
                run.log(media, commit=False)  # joins the row, logged next
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
        self.saved_epochs: int | None = None  # the epochs the checkpoint on disk covers

    def saves(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every == 0 or epoch + 1 == trainer.max_epochs or trainer.should_stop

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.saved_epochs = trainer.current_epoch if self.path.exists() else None  # resumed from it

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.saves(trainer):
            save_atomic(partial(trainer.save_checkpoint, weights_only=False), self.path, f"the checkpoint of epoch {trainer.current_epoch + 1}")
            self.saved_epochs = trainer.current_epoch + 1


class StopOnSignal(Callback):
    """Turns a SIGINT / SIGTERM noted during training (`modadd.signals`) into a stop at the end
    of this epoch, before its row and checkpoint are written (train.py runs it first)."""

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if signals.received() is not None:
            trainer.should_stop = True


class FitStats(Callback):
    """Cosine fits of every neuron and Nanda-style progress measures, logged as the run goes.

    Every `every_n_epochs` (and at the last epoch): the fit statistics (`fit/...`), the weight
    norms, and the counts per frequency in `freq_counts.csv`. The weights are kept until EpochLog
    writes its next block of rows and then fitted in one batched call (a fit of one epoch's ~300
    vectors is ~60 small ops whose fixed costs dominate; a block of 10 costs little more).
    Every `progress_every_n_epochs`: the Fourier sparsity of the weights (a second DFT), the
    restricted and excluded losses over all p*p pairs (a full forward pass) and the frequency
    histogram to W&B (a media log costs ~1 ms); every epoch they would cost more than the 5 % of
    an epoch this callback is allowed.
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
        self.train_rows: Tensor | None = None
        self.snapshots: list[tuple[int, Tensor, Tensor]] = []  # (epoch, W_in, W_out) not yet fitted

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.counts_path = self.out_dir / "freq_counts.csv"
        rows = read_csv(self.counts_path)
        kept = [r for r in rows if (e := row_epoch(r)) is not None and e < trainer.current_epoch]
        if len(kept) != len(rows) or not rows:
            p = module.hparams.p
            write_csv(self.counts_path, kept, ["epoch", "member", *[f"k{k}" for k in range(1, p // 2 + 1)]])
        self.counts_file = self.counts_path.open("a", newline="")  # kept open: an open() per epoch costs ~0.1 ms
        data = getattr(trainer, "datamodule", None)
        a, b = data.train[:2] if self.operation == "add" and data is not None else (None, None)
        self.train_rows = a * module.hparams.p + b if a is not None else None  # the excluded loss's training pairs

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch, last = trainer.current_epoch, ends_run(trainer)
        if not (epoch % self.every == 0 or last):
            return
        self.snapshots.append((epoch, module.net.W_in.detach().clone(), module.net.W_out.detach().clone()))
        progress = epoch % self.progress_every == 0 or last
        images = (epoch + 1) % self.images_every == 0 or last
        epoch_log = _epoch_log(trainer)
        if not (epoch_log is None or epoch_log.flushes(trainer) or progress or images):
            return  # fitted with the rest of the block, before EpochLog writes its rows
        block_fits, block_fc1, block_fc2 = self._fit_snapshots(trainer, module, epoch_log)
        if not (progress or images):
            return
        fits, fc1, fc2 = block_fits.member(-1), block_fc1[-1], block_fc2[-1]  # this epoch's (K, ...)
        stats, media = {}, {}
        if progress and self.operation != "x2xyy2":
            spectrum = fourier.fourier_norms(fc1, fc2)[..., 1:]
            measures = {"fit/fourier_gini": fourier.gini(spectrum), "fit/fourier_ipr": fourier.ipr(spectrum)}
            measures.update(self._progress_measures(fc1, fc2, fits, module.net.activation))
            values = torch.stack([v.double() for v in measures.values()], dim=1).tolist()  # one sync
            for j, name in enumerate(measures):
                stats.update(member_metrics(name, [row[j] for row in values]))
        if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
            if progress:
                media["fit/freq_hist"] = _histogram(fits.out.freq)
            if images:
                media.update(_charts(fc1[0], fc2[0], fits.member(0)))
        self._emit(trainer, module, epoch_log, epoch, stats, media)

    def _fit_snapshots(self, trainer: L.Trainer, module: L.LightningModule,
                       epoch_log: EpochLog | None) -> tuple[fourier.NeuronFits, Tensor, Tensor]:
        """Fits the weights of every snapshot epoch at once (one batched call, leading dim B) and
        adds each epoch's statistics to its row and its counts to freq_counts.csv. Returns the
        fits and `fc1, fc2: (B, K, ...)` in the addition basis."""
        epochs = [e for e, _, _ in self.snapshots]
        W_in = torch.stack([w for _, w, _ in self.snapshots])  # (B, K, 2p, hidden)
        W_out = torch.stack([w for _, _, w in self.snapshots])
        self.snapshots = []
        fc1, fc2, self.basis = fourier.addition_basis(W_in.transpose(-1, -2), W_out.transpose(-1, -2), self.operation)
        fits = fourier.fit_neurons(fc1, fc2)
        stats = {f"fit/{k}": v for k, v in fourier.fit_statistics(fits).items()}
        norms = fourier.weight_norms(W_in.transpose(-1, -2), W_out.transpose(-1, -2))  # of the weights as they are
        stats.update({"fit/weight_norm": norms["total"], "fit/weight_norm_fc1": norms["fc1"], "fit/weight_norm_fc2": norms["fc2"]})
        counts = fourier.freq_counts(fits.out.freq, fits.p)[..., 1:]  # (B, K, p//2)
        values = torch.stack([v.double() for v in stats.values()], dim=-1).tolist()  # (B, K, stats): one sync
        for b, epoch in enumerate(epochs):
            row = {}
            for j, name in enumerate(stats):
                row.update(member_metrics(name, [member[j] for member in values[b]]))
            self._emit(trainer, module, epoch_log, epoch, row)
        rows = [[epoch, k, *c] for epoch, per_member in zip(epochs, counts.tolist()) for k, c in enumerate(per_member)]
        with writing(self.counts_path, "the frequency counts of the fits"):
            csv.writer(self.counts_file, lineterminator="\n").writerows(rows)
            self.counts_file.flush()  # a killed run keeps every fitted epoch's row
        return fits, fc1, fc2

    def _emit(self, trainer: L.Trainer, module: L.LightningModule, epoch_log: EpochLog | None, epoch: int,
              stats: dict[str, float], media: dict | None = None) -> None:
        if epoch_log is not None:
            epoch_log.add(epoch, stats, media)
            return
        module.epoch_metrics.update(stats)  # without an EpochLog: every epoch is fitted as it ends
        for run in [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)] if media else []:
            run.log(media, commit=False)

    def _weights(self, module: L.LightningModule) -> tuple[Tensor, Tensor]:
        """`fc1: (K, hidden, 2n)`, `fc2: (K, n, hidden)` in the basis where the task is addition."""
        fc1, fc2, self.basis = fourier.addition_basis(*module.net.seed_weights(), self.operation)
        return fc1, fc2

    def _progress_measures(self, fc1: Tensor, fc2: Tensor, fits: fourier.NeuronFits, activation: str) -> dict[str, Tensor]:
        """Restricted / excluded loss over all pairs, for each member's key frequencies, and (for
        addition) the excluded loss over the training pairs, the paper's."""
        names = ["fit/restricted_loss", "fit/excluded_loss"] + (["fit/excluded_loss_train"] if self.train_rows is not None else [])
        per_member = []
        for k in range(fc1.shape[0]):
            key = fourier.key_frequencies(fits.member(k), self.key_freq_share)
            logits = fourier.logit_chunks(fc1[k], fc2[k], activation)
            per_member.append(fourier.restricted_excluded_loss(logits, fits.p, key, self.train_rows)[: len(names)])
        return {name: torch.stack(values) for name, values in zip(names, zip(*per_member))}

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        try:
            if self.snapshots and self.counts_file is not None:  # their rows are still to be written
                self._fit_snapshots(trainer, module, _epoch_log(trainer))
        except WriteError:
            pass  # the disk that failed first fails again; a resume drops the rows its checkpoint lacks
        self._close()

    def _close(self) -> None:
        if self.counts_file is not None:
            try:
                self.counts_file.close()
            except OSError:
                pass  # a full disk: the rows a resume needs are re-fitted
            self.counts_file = None

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.snapshots:  # a stop after this epoch's hook: fitted before EpochLog writes the rows
            self._fit_snapshots(trainer, module, _epoch_log(trainer))
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


class ProgressStats(Callback):
    """Every `every_n_epochs` (and at the last epoch) a family's progress measures, under `fit/`
    in the epoch's row: `module.progress_measures()` gives `{name: (K,)}` (mean, std and
    per-member values with K members, as for the losses). The transformer's statistics callback;
    the MLP's is `FitStats`."""

    def __init__(self, every_n_epochs: int = 100):
        self.every = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not (epoch % self.every == 0 or ends_run(trainer)):
            return
        measures = module.progress_measures()
        values = torch.stack([v.double() for v in measures.values()], dim=1).tolist()  # (K, measures): one sync
        row = {}
        for j, name in enumerate(measures):
            row.update(member_metrics(f"fit/{name}", [member[j] for member in values]))
        epoch_log = _epoch_log(trainer)
        if epoch_log is not None:
            epoch_log.add(epoch, row)
        else:
            module.epoch_metrics.update(row)


def ends_run(trainer: L.Trainer) -> bool:
    """Whether this epoch ends the run for good, so its statistics are taken whatever their
    period: the last epoch, or a stop for divergence, not a signal's (the run resumes from it
    and must log as if it never stopped)."""
    return trainer.current_epoch + 1 == trainer.max_epochs or trainer.should_stop and signals.received() is None


def _epoch_log(trainer: L.Trainer) -> EpochLog | None:
    return next((c for c in trainer.callbacks if isinstance(c, EpochLog)), None)


def _histogram(freq: Tensor):
    import wandb

    values = freq.flatten().cpu().numpy()
    top = int(values.max())
    edges = np.linspace(0.5, top + 0.5, min(top, wandb.Histogram.MAX_LENGTH) + 1)  # a bin per frequency, up to W&B's limit
    return wandb.Histogram(np_histogram=np.histogram(values, bins=edges))


def _charts(fc1: Tensor, fc2: Tensor, fits: fourier.NeuronFits, neurons: int = 2) -> dict:
    """W&B's own charts, drawn by its UI from the logged values (~40 ms here, against ~1 s for
    the same views rendered by matplotlib; `analyze.py` draws those afterwards): the first
    `neurons` neurons' weights against their fitted cosines, neurons per frequency, and the
    phase-sum rule over the clean neurons. Each weight vector is plotted at k*x mod p (k: its
    fit's frequency), where a cosine of any frequency is one smooth period."""
    import wandb

    fc1, fc2 = fc1.detach().cpu().double(), fc2.detach().cpu().double()
    p = fits.p
    x = torch.arange(p)
    charts = {}
    for n in range(min(neurons, fc1.shape[0])):
        xs, ys, keys = [], [], []
        for name, w in {"a": fc1[n, :p], "b": fc1[n, p:], "out": fc2[:, n]}.items():
            fit = getattr(fits, name)
            k = int(fit.freq[n])
            folded = (k * x) % p
            order = folded.argsort()
            xs += [folded[order].tolist()] * 2
            ys += [w[order].tolist(), fit.evaluate(p)[n][order].tolist()]
            keys += [f"{name} (k={k})", f"{name} fit (R²={float(fit.r2[n]):.2f})"]
        charts[f"fit/neuron_{n}"] = wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=f"neuron {n}: weights at k·x mod p",
                                                           xname="k·x mod p")
    counts = fourier.freq_counts(fits.out.freq, p)[1:].tolist()
    table = wandb.Table(columns=["frequency", "neurons"], data=[[k + 1, c] for k, c in enumerate(counts)])
    charts["fit/freq_histogram"] = wandb.plot.bar(table, "frequency", "neurons", title="neurons per frequency (out)")
    clean = fourier.clean_neurons(fits)
    phase_in = fourier.wrap_phase(fits.a.phase + fits.b.phase)[clean]
    phase_out, freq = fits.out.phase[clean], fits.out.freq[clean]
    error = fourier.wrap_phase(phase_out - phase_in).abs().median().item() if clean.any() else float("nan")
    rows = [[n, float(u), float(v), int(k)] for n, u, v, k in zip(clean.nonzero().flatten().tolist(), phase_in, phase_out, freq)]
    table = wandb.Table(columns=["neuron", "phase_a + phase_b", "phase_out", "frequency"], data=rows)
    charts["fit/phase_sum"] = wandb.plot.scatter(table, "phase_a + phase_b", "phase_out",
                                                 title=f"phase-sum rule: median |error| {error:.3f} rad")
    return charts
