"""Rows written in blocks: the same rows as epoch by epoch, and none lost to a crash."""

import lightning as L
import pytest

from modadd.callbacks import EpochLog, FitStats, LastCheckpoint
from modadd.data import ModAddData
from modadd.files import read_csv, read_metrics
from modadd.mlp.module import MLPModule

P = 11


class Crash(L.Callback):
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == 12:
            raise RuntimeError("crash at epoch 12")


class RowsAtCheckpoint(L.Callback):
    """After each checkpoint save: the epochs metrics.csv holds (all a kill then would leave)."""

    def __init__(self, checkpoint: LastCheckpoint, path):
        self.checkpoint, self.path, self.seen = checkpoint, path, []

    def on_train_epoch_end(self, trainer, module):
        if self.checkpoint.saves(trainer):
            self.seen.append((trainer.current_epoch, read_metrics(self.path)))


def train(out, epochs: int, flush_every: int, *first: L.Callback, last: tuple[L.Callback, ...] = ()) -> None:
    out.mkdir(exist_ok=True)
    callbacks = [*first, FitStats(out, progress_every_n_epochs=4), EpochLog(out / "metrics.csv", flush_every=flush_every), *last]
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    module = MLPModule(p=P, hidden=16, lr=1e-2, weight_decay=0.5, batch_size=32, seed=3)
    trainer.fit(module, datamodule=ModAddData(P, 0.6, seed=3))


def test_blocks_write_the_rows_of_epoch_by_epoch_logging(tmp_path):
    train(tmp_path / "each", 17, 1)
    train(tmp_path / "blocks", 17, 7)  # blocks of 7, 7 and the last 3
    each, blocks = read_metrics(tmp_path / "each" / "metrics.csv"), read_metrics(tmp_path / "blocks" / "metrics.csv")
    assert [r["epoch"] for r in blocks] == list(range(17))
    assert blocks[0].keys() == each[0].keys() and "fit/frac_same_freq" in blocks[0] and "fit/restricted_loss" in blocks[0]
    for got, expected in zip(blocks, each):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7, nan_ok=True)
    assert read_csv(tmp_path / "blocks" / "freq_counts.csv") == read_csv(tmp_path / "each" / "freq_counts.csv")


def test_a_crash_writes_every_finished_epoch_with_its_statistics(tmp_path):
    with pytest.raises(RuntimeError, match="crash at epoch 12"):
        train(tmp_path / "run", 30, 5, Crash())
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(12))  # 10 and 11 were pending; 12 never finished
    assert all(r["fit/weight_norm"] > 0 and r["train/loss"] > 0 for r in rows)
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "run" / "freq_counts.csv")] == list(range(12))


def test_every_checkpoint_finds_the_rows_it_covers_written(tmp_path):
    checkpoint = LastCheckpoint(tmp_path / "checkpoints", every_n_epochs=3)  # not a multiple of the blocks
    rows = RowsAtCheckpoint(checkpoint, tmp_path / "metrics.csv")
    train(tmp_path, 14, 10, last=(checkpoint, rows))
    assert [epoch for epoch, _ in rows.seen] == [2, 5, 8, 11, 13]
    for epoch, written in rows.seen:
        assert [r["epoch"] for r in written] == list(range(epoch + 1))
        assert all("fit/weight_norm" in r for r in written)
