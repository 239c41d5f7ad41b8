"""One training job: build the configured objects, fit, save the model and the run's summary.

Every output goes to the job's Hydra directory (Hydra does not chdir): `metrics.csv`,
`checkpoints/last.ckpt`, `model.pt` (the seed's state_dict layout), `summary.json`, the W&B
run under `wandb/`, Hydra's `.hydra/` and the log.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from modadd.callbacks import EpochLog, LastCheckpoint
from modadd.config import validate
from modadd.files import read_metrics, write_atomic
from modadd.grokking import grokking_epochs
from modadd.module import GrokModule
from modadd.tracking import finish_run

log = logging.getLogger("modadd")


def train(cfg: DictConfig) -> float:
    """Run the job described by `cfg`; returns the final validation accuracy (mean over members)."""
    out = Path(HydraConfig.get().runtime.output_dir)
    quiet_libraries()
    validate(cfg, check_init=not _checkpoint(out).exists())  # a resumed job starts from its checkpoint
    torch.set_num_threads(torch_threads(cfg))
    log.info("job %s: %d torch thread(s)", out, torch.get_num_threads())
    done = _finished(out, cfg.epochs)
    if done is not None:
        log.info("%s already finished (%s): skipped", out, done["status"])
        return done["final"].get("val/acc", math.nan)
    try:
        summary = _fit(cfg, out)
    except BaseException as err:
        _write_summary(out, {"status": "failed", "error": f"{type(err).__name__}: {err}"})
        finish_run(exit_code=1)
        raise
    finish_run(exit_code=0)
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
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    callbacks.sort(key=callback_rank)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    return trainer, module, data


def callback_rank(callback: L.Callback) -> int:
    """Sort key: the metrics row is written after every callback added to it (EpochLog after
    the others), and a checkpoint only covers epochs whose row is written (LastCheckpoint last)."""
    return 2 if isinstance(callback, LastCheckpoint) else 1 if isinstance(callback, EpochLog) else 0


def _checkpoint(out: Path) -> Path:
    return out / "checkpoints" / "last.ckpt"


def _fit(cfg: DictConfig, out: Path) -> dict:
    last = _checkpoint(out)
    resume = last if last.exists() else None
    trainer, module, data = build(cfg, resuming=resume is not None)
    loggers = trainer.loggers
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(module, datamodule=data, ckpt_path=resume)

    _save_models(module, out)
    rows = read_metrics(out / "metrics.csv")
    final = {k: v for k, v in rows[-1].items()} if rows else {}
    diverged = not all(math.isfinite(final.get(k, 0.0)) for k in ("train/loss", "val/loss"))
    summary = {
        "status": "diverged" if diverged else "ok",
        "epochs_run": len(rows),
        "final": final,
        "grokking": grokking_epochs(rows),
    }
    _write_summary(out, summary)
    for logger in loggers:
        if hasattr(logger.experiment, "summary"):
            logger.experiment.summary.update({"status": summary["status"], "grokking": summary["grokking"]})
    log.info("done: %s", json.dumps({k: summary[k] for k in ("status", "grokking")}))
    return summary


def _finished(out: Path, epochs: int) -> dict | None:
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
    if net.members == 1:
        torch.save(net.member_state_dict(0), out / "model.pt")
    else:
        for k in range(net.members):
            torch.save(net.member_state_dict(k), out / f"model_m{k}.pt")


def _write_summary(out: Path, summary: dict) -> None:
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str, allow_nan=True))
