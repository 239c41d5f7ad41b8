"""Weights & Biases, the way a sweep needs it: offline unless asked, one finished run per job.

Two Lightning + Hydra pitfalls are handled here: `WandbLogger` reuses a live `wandb.run` (so
in a multirun every job after the first would log into the first job's run) and never calls
`wandb.finish()`; and `WandbLogger(offline=True)` flips `WANDB_MODE` process-wide. So the mode
is chosen once from the environment (offline by default, `WANDB_MODE=online` to sync live),
the job's run is opened here (falling back to offline, with a message, when online mode
cannot start: no network, no API key), and `finish_run` closes it, marking it failed when the
job raised, and checks that it closed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger("modadd")


def wandb_logger(project: str, save_dir: str, init_timeout: float = 60, alongside: bool = False,
                 **kwargs) -> WandbLogger:
    """A WandbLogger on a fresh run named by the job's overrides, grouped by its sweep dir.
    `alongside`: one of several runs open at once in this process (a stack's jobs, `modadd.stack`),
    which leaves the others open and captures no console (W&B would capture every job's lines:
    the job's own are in its train.log)."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        kwargs.setdefault("name", hc.job.override_dirname or None)
        if hc.mode == RunMode.MULTIRUN:
            kwargs.setdefault("group", str(Path(hc.sweep.dir)))
    if not os.environ.get("HOME") and not os.environ.get("XDG_CACHE_HOME"):  # else W&B's service logs to the console
        os.environ["XDG_CACHE_HOME"] = str(Path(tempfile.gettempdir()) / f"modadd-cache-{os.getuid()}")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if not alongside:
        finish_run()  # never inherit a run left open by an earlier job in this process
    init = dict(project=project, dir=save_dir, job_type="train", **kwargs, **({"reinit": "create_new"} if alongside else {}))
    console = {"console": "off"} if alongside else {}
    runs = Path(save_dir) / "wandb"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    try:
        run = wandb.init(**init, settings=wandb.Settings(init_timeout=init_timeout, **console))
    except Exception as err:  # noqa: BLE001 - any failure to go online must not stop training
        if os.environ["WANDB_MODE"] in ("offline", "dryrun", "disabled"):
            raise
        for orphan in set(runs.glob("run-*")) - before:  # the online run that never started
            shutil.rmtree(orphan, ignore_errors=True)
        log.warning("W&B online mode could not start (%s): logging offline; upload later with "
                    "`wandb sync %s/wandb/offline-run-*`", _reason(err, init_timeout), save_dir)
        run = wandb.init(**init, mode="offline", settings=wandb.Settings(**console))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*wandb run already in progress.*")
        return WandbLogger(project=project, save_dir=save_dir, experiment=run, **kwargs)


def _reason(err: Exception, timeout: float) -> str:
    """Why W&B could not go online, in a line (some of its errors carry no message)."""
    text = " ".join(str(err).split()).split(" Consider ")[0]  # W&B's advice is cut mid-word otherwise
    server = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    return f"{type(err).__name__}: {text[:300]}" if text else f"{type(err).__name__}, no answer from {server} within {timeout:g} s"


def finish_run(exit_code: int = 0, last_step: int | None = None, run=None) -> str | None:
    """Finish `run` (by default the live W&B run, if any), so the next job in this process starts
    its own; returns why it did not close cleanly, None if it did.

    W&B writes its log in a service process that drops what a full disk refuses without a
    word, so the log is read back with W&B's own reader: it must end finished (failed for a
    non-zero `exit_code`) at `last_step`, the job's last epoch.
    """
    import wandb

    run = run if run is not None else wandb.run
    if run is None:
        return None
    run_dir = Path(run.dir).parent  # run.dir is its files/ folder
    try:
        run.finish(exit_code=exit_code)
    except Exception as err:  # noqa: BLE001 - reported, as the run's state
        return f"closing it raised {type(err).__name__}: {' '.join(str(err).split())[:200]}"
    inspect = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(run_dir)],
                             capture_output=True, text=True)
    try:
        record = json.loads(inspect.stdout)
    except ValueError:
        return f"its log {run_dir} cannot be read back ({(inspect.stderr.strip().splitlines() or ['no output'])[-1][:200]})"
    state, step = record.get("state"), record.get("step")
    wanted = "finished" if exit_code == 0 else "failed"
    if state != wanted or last_step is not None and (step is None or step < last_step):
        return f"its log {run_dir} ends {state} at step {step}, not {wanted} at step {last_step}"
    return None
