"""Weights & Biases, the way a sweep needs it: offline unless asked, one finished run per job.

Two Lightning + Hydra pitfalls are handled here: `WandbLogger` reuses a live `wandb.run` (so
in a multirun every job after the first would log into the first job's run) and never calls
`wandb.finish()`; and `WandbLogger(offline=True)` flips `WANDB_MODE` process-wide. So the mode
is chosen once from the environment (offline by default, `WANDB_MODE=online` to sync live),
and `finish_run` closes the job's run, marking it failed when the job raised.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger


def wandb_logger(project: str, save_dir: str, **kwargs) -> WandbLogger:
    """A WandbLogger named by the job's overrides and grouped by its sweep directory."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        kwargs.setdefault("name", hc.job.override_dirname or None)
        if hc.mode == RunMode.MULTIRUN:
            kwargs.setdefault("group", str(Path(hc.sweep.dir)))
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, save_dir=save_dir, job_type="train", **kwargs)


def finish_run(exit_code: int = 0) -> None:
    """Finish the live W&B run, if any, so the next job in this process starts its own."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
