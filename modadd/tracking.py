"""Weights & Biases, the way a sweep needs it: offline unless asked, one finished run per job.

Two Lightning + Hydra pitfalls are handled here: `WandbLogger` reuses a live `wandb.run` (so
in a multirun every job after the first would log into the first job's run) and never calls
`wandb.finish()`; and `WandbLogger(offline=True)` flips `WANDB_MODE` process-wide. So the mode
is chosen once from the environment (offline by default, `WANDB_MODE=online` to sync live),
the job's run is opened here (falling back to offline, with a message, when online mode
cannot start: no network, no API key), and `finish_run` closes it, marking it failed when the
job raised.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger("modadd")


def wandb_logger(project: str, save_dir: str, init_timeout: float = 60, **kwargs) -> WandbLogger:
    """A WandbLogger on a fresh run named by the job's overrides, grouped by its sweep dir."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        kwargs.setdefault("name", hc.job.override_dirname or None)
        if hc.mode == RunMode.MULTIRUN:
            kwargs.setdefault("group", str(Path(hc.sweep.dir)))
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    finish_run()  # never inherit a run left open by an earlier job in this process
    init = dict(project=project, dir=save_dir, job_type="train", **kwargs)
    try:
        wandb.init(**init, settings=wandb.Settings(init_timeout=init_timeout))
    except Exception as err:  # noqa: BLE001 - any failure to go online must not stop training
        if os.environ["WANDB_MODE"] in ("offline", "dryrun", "disabled"):
            raise
        reason = " ".join(str(err).split())[:200]
        log.warning("W&B online mode could not start (%s): logging offline; upload later with "
                    "`wandb sync %s/wandb/offline-run-*`", reason, save_dir)
        wandb.init(**init, mode="offline")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*wandb run already in progress.*")
        logger = WandbLogger(project=project, save_dir=save_dir, **kwargs)
        logger.experiment  # adopt the run opened above
    return logger


def finish_run(exit_code: int = 0) -> None:
    """Finish the live W&B run, if any, so the next job in this process starts its own."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
