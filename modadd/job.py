"""One training job: build the configured objects, fit, save the model and the run's summary.

Every output goes to the job's Hydra directory (Hydra does not chdir): `metrics.csv`,
`checkpoints/last.ckpt`, `model.pt` (the seed's state_dict layout), `summary.json`, the W&B
run under `wandb/`, `.hydra/` (written by `modadd.rundir` once the dir is this job's) and the log.
`summary.json` says how the job ended: `ok`, `diverged`, `interrupted` (by a signal: the
checkpoint holds its last epoch), `failed` (with the error) or `wandb_failed` (trained, but
its W&B run did not close cleanly).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from modadd import rundir, signals
from modadd.callbacks import EpochLog, LastCheckpoint, StopOnSignal
from modadd.config import validate
from modadd.files import WriteError, read_metrics, save_atomic, write_atomic
from modadd.grokking import grokking_epochs
from modadd.module import GrokModule
from modadd.tracking import finish_run

log = logging.getLogger("modadd")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def train(cfg: DictConfig) -> float:
    """Run the job described by `cfg`; returns the final validation accuracy (mean over members).

    Ends the process (SystemExit) with one line when the run dir cannot take the job (1), when
    a disk write fails (1), or when a signal stopped it (130 / 143, after its checkpoint).
    """
    hydra = HydraConfig.get()
    out = Path(hydra.runtime.output_dir)
    quiet_libraries()
    logging.raiseExceptions = False  # a full disk fails the log file too: one line from us, not a traceback per record
    signals.install()  # also in a launcher's worker process
    if signals.received() is not None:  # an earlier job of this worker process was stopped by it
        log.warning("not started: this worker received %s (the sweep is stopping)", signals.name(signals.received()))
        return math.nan
    try:
        with rundir.claim(out, cfg, hydra):
            return _run(cfg, out)
    except rundir.RunDirError as err:
        print(f"error: {err}", file=sys.stderr)  # not logged: this dir's train.log is its holder's
        raise SystemExit(1) from None
    except OSError as err:  # before training: the lock, .hydra/ on a full or read-only disk
        if disk_error(err) is None:
            raise
        print(f"error: {disk_error(err)}", file=sys.stderr)
        raise SystemExit(1) from None


def _run(cfg: DictConfig, out: Path) -> float:
    validate(cfg, check_init=not checkpoint_path(out).exists())  # a resumed job starts from its checkpoint
    torch.set_num_threads(torch_threads(cfg))
    log.info("job %s: %d torch thread(s)", out, torch.get_num_threads())
    done = finished_summary(out, cfg.epochs)
    if done is not None:
        log.info("%s already finished (%s): skipped", out, done["status"])
        return done["final"].get("val/acc", math.nan)
    start_fresh(out)
    with signals.deferred():
        summary = _fit(cfg, out)
    if signals.received() is not None and "joblib" not in str(HydraConfig.get().launcher.get("_target_", "")):
        signals.stop(signals.received())  # and the sweep with it; a joblib worker returns, lest its siblings be killed mid-write
    return summary["final"].get("val/acc", math.nan)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return "Tip:" not in record.getMessage()


def quiet_libraries() -> None:
    """Each library line once, through Hydra's handlers (the console and train.log): the
    `lightning` logger's own console handler printed every Lightning line a second time, raw.
    Lightning's advertising tips and its notice about torch's pytree API say nothing about the run."""
    if logging.getLogger().handlers:  # Hydra's: without them, Lightning's handler is the only output
        logging.getLogger("lightning").handlers.clear()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_a_tip not in rank_zero.filters:
        rank_zero.addFilter(_not_a_tip)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def torch_threads(cfg: DictConfig) -> int:
    """`cfg.threads`, or (when null) the cores shared out among the jobs that run at once, so
    that parallel jobs x threads <= cores (oversubscribed OpenMP threads spin and crawl)."""
    if cfg.get("threads"):
        return int(cfg.threads)
    cores = len(os.sched_getaffinity(0))
    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs", 1) if "joblib" in str(launcher.get("_target_", "")).lower() else 1
    n_jobs = cores if n_jobs is None or n_jobs < 1 else n_jobs
    return max(1, cores // n_jobs)


def build(cfg: DictConfig, resuming: bool = False) -> tuple[L.Trainer, GrokModule, L.LightningDataModule]:
    """The configured trainer (with its loggers and callbacks), module and data.

    The loggers come first and get the config at once, so a job that fails later (a bad
    trainer setting, say) is still a W&B run, marked failed. `resuming`: the checkpoint will
    replace the weights, so `init` is not loaded.
    """
    loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)
    data: L.LightningDataModule = instantiate(cfg.data)
    module: GrokModule = instantiate(cfg.model, **({"init": None} if resuming and "init" in cfg.model else {}))
    callbacks = [StopOnSignal(), *(instantiate(c) for c in (cfg.callbacks or {}).values())]
    callbacks.sort(key=callback_rank)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    return trainer, module, data


def callback_rank(callback: L.Callback) -> int:
    """Sort key: a signal's stop is decided first (so this epoch's row and checkpoint are
    written), the metrics row after every callback added to it (EpochLog after the others), and
    a checkpoint only covers epochs whose row is written (LastCheckpoint last)."""
    order = (StopOnSignal, EpochLog, LastCheckpoint)
    return next((i for i, kind in enumerate(order) if isinstance(callback, kind)), 0.5)


def checkpoint_path(out: Path) -> Path:
    return out / "checkpoints" / "last.ckpt"


def _fit(cfg: DictConfig, out: Path) -> dict:
    """Train, then record how it ended (see `end_job`)."""
    trainer, module, error = None, None, None
    try:
        last = checkpoint_path(out)
        resume = last if last.exists() else None
        trainer, module, data = build(cfg, resuming=resume is not None)
        if resume:
            log.info("resuming from %s", resume)
        trainer.fit(module, datamodule=data, ckpt_path=resume)
    except BaseException as err:  # noqa: BLE001 - every ending is recorded
        error = err
    return end_job(cfg, out, error, trainer, module)


def start_fresh(out: Path) -> None:
    """Remove what told how an earlier attempt in `out` ended (its summary, its models)."""
    for stale in [out / "summary.json", *out.glob("model*.pt")]:
        stale.unlink(missing_ok=True)


def end_job(cfg: DictConfig, out: Path, error: BaseException | None, trainer: L.Trainer | None,
            module: GrokModule | None, loggers: list | None = None) -> dict:
    """Save the models of a job that trained to its end (or to a stop for divergence), write
    its summary.json and close its W&B run (of `loggers`, by default the trainer's). A failed
    disk write ends the process with one line (exit 1); any other error is recorded and raised."""
    if error is None and trainer is not None and (signals.received() is None or trainer.current_epoch >= cfg.epochs):
        try:
            _save_models(module, out)
        except BaseException as err:  # noqa: BLE001 - recorded as the job's ending
            error = err
    summary = _ending(cfg, out, error, trainer)
    _close_tracking(summary, loggers if loggers is not None else trainer.loggers if trainer is not None else [])
    try:
        _write_summary(out, summary)
    except (OSError, WriteError) as err:
        summary.update(status="failed", error=f"{disk_error(err) or _one_line(err)} (so the job has no summary.json)")
    if summary["status"] == "failed" and error is not None and disk_error(error) is None:
        raise error
    if summary["status"] in ("failed", "wandb_failed"):
        print(f"error: {summary.get('error') or summary['wandb_error']}{_next_step(summary, trainer)}", file=sys.stderr)
        raise SystemExit(1)
    if summary["status"] != "interrupted":
        log.info("done: %s", json.dumps({k: summary.get(k) for k in ("status", "grokking")}))
    return summary


def _close_tracking(summary: dict, loggers: list) -> None:
    """Give the job's W&B run its ending and close it; a run that did not close cleanly turns
    an `ok` or `diverged` job into `wandb_failed` (its model and metrics are whole)."""
    runs = []
    try:
        runs = [logger.experiment for logger in loggers if hasattr(logger.experiment, "summary")]
        for run in runs:
            run.summary.update({k: summary.get(k) for k in ("status", "grokking")})
    except Exception as err:  # noqa: BLE001 - judged with the close below
        summary["wandb_error"] = _one_line(err)
    code = signals.exit_code(signals.received()) if signals.received() else int(summary["status"] not in ("ok", "diverged"))
    last = summary.get("final", {}).get("epoch")
    closes = [finish_run(exit_code=code, last_step=last, run=run) for run in runs] or [finish_run(exit_code=code, last_step=last)]
    unclosed = next((why for why in closes if why), None)
    if unclosed or "wandb_error" in summary:
        summary["wandb_error"] = summary.get("wandb_error") or f"the W&B run did not close cleanly: {unclosed}"
        if summary["status"] in ("ok", "diverged"):
            summary["status"] = "wandb_failed"


def _next_step(summary: dict, trainer: L.Trainer | None) -> str:
    if summary["status"] == "wandb_failed":
        return ("; the model and metrics are saved: run the same command again (with space for W&B) to log "
                "the run to a new W&B run")
    return f"; free some space, then run the same command to continue{_continue_from(trainer)}"


def _ending(cfg: DictConfig, out: Path, error: BaseException | None, trainer: L.Trainer | None) -> dict:
    """summary.json's record of how the training ended."""
    rows = read_metrics(out / "metrics.csv")
    final = dict(rows[-1]) if rows else {}
    summary = {"status": "ok", "epochs_run": len(rows), "final": final, "grokking": grokking_epochs(rows)}
    if disk_error(error) is not None:
        return {**summary, "status": "failed", "error": disk_error(error)}
    if signals.received() is not None and (error is not None or len(rows) < cfg.epochs):
        name = signals.name(signals.received())
        log.warning("interrupted by %s after %d of %d epochs: run the same command to continue%s",
                    signals.describe(signals.received()), len(rows), cfg.epochs, _continue_from(trainer))
        return {**summary, "status": "interrupted", "signal": name}
    if error is not None:
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    if not all(math.isfinite(final.get(k, 0.0)) for k in ("train/loss", "val/loss")):
        return {**summary, "status": "diverged"}
    return summary


def _continue_from(trainer: L.Trainer | None) -> str:
    saved = next((c.saved_epochs for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None) if trainer else None
    return f" from the checkpoint of epoch {saved}" if saved else ""


def disk_error(error: BaseException | None) -> str | None:
    """The one line for a write that failed for lack of space or permission, None for any other error."""
    if isinstance(error, WriteError):
        return str(error)
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        return f"{error.strerror}: could not write {error.filename or 'a file of the run'}"
    return None


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]


def finished_summary(out: Path, epochs: int) -> dict | None:
    """The summary of a job that already ran to completion in `out` (resuming a sweep skips it)."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    finished = summary.get("status") == "ok" and summary.get("epochs_run") == epochs
    return summary if finished or summary.get("status") == "diverged" else None  # NaN weights stay NaN


def _save_models(module: GrokModule, out: Path) -> None:
    """Each member's final weights in its family's documented layout: the seed's state_dict
    (`fc1.weight`, `fc2.weight`) for the MLP, a `HookedTransformer` state dict for the transformer."""
    net = module.net
    names = ["model.pt"] if net.members == 1 else [f"model_m{k}.pt" for k in range(net.members)]
    for k, name in enumerate(names):
        save_atomic(partial(torch.save, net.member_state_dict(k)), out / name, "the final weights")


def _write_summary(out: Path, summary: dict) -> None:
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str, allow_nan=True), what="how the job ended")
