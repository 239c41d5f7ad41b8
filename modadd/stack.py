"""A stack of jobs: a sweep's jobs that differ only in their AdamW settings train as the members of
one model, and each is still a job of its own (`hydra/launcher=stacked`).

Why: a model of this size uses a sliver of a GPU, and a GPU runs hundreds of them in the time
of one; a job per process would queue hundreds of processes (each ~1 GB of CUDA context) on it.
Here the jobs of one shape (everything equal but `lr`, `weight_decay`, `betas` and `members`;
the seed too, which fixes the split and the initialisation) are the members of one
`GrokModule` (`stack`), trained by one Lightning loop whose every step is one set of batched
kernels for all of them: the forward and backward as batched matmuls over the member dim, each
member's AdamW with its own settings as one fused kernel call per distinct setting (on the CPU,
the fused C++ epoch, which takes a setting per member). Up to `max_members` jobs share a stack;
more make further stacks, trained one after another.

What each job writes is what it writes alone: its own dir and lock, `.hydra/`, its lines in
`train.log`, `metrics.csv`, `freq_counts.csv`, `neurons.csv`, `checkpoints/last.ckpt` (its own
members' weights and AdamW state, with its own settings: it resumes alone), `model.pt`,
`summary.json` and W&B run. Each job's callbacks see a view of the trainer and the module that
holds only its members (`JobView`). A member whose loss diverges ends its job as a lone run
would (its last row, checkpoint and summary), while the others train on.

A job trains alone (as the basic launcher runs it) where it cannot join a stack: another family
than the MLP, `model.fast=false`, a job that already has a checkpoint (it resumes alone) or is
finished (skipped), or no other job of its shape.
"""

from __future__ import annotations

import contextvars
import copy
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, env_override, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.utils import instantiate
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from modadd import rundir, signals
from modadd.callbacks import StopOnSignal
from modadd.config import validate
from modadd.family import family_of
from modadd.job import (callback_rank, checkpoint_path, disk_error, end_job, finished_summary, quiet_libraries,
                        start_fresh, torch_threads)
from modadd.module import STACKED_KNOBS, GrokModule, warn_diverged

log = logging.getLogger("modadd")

STACKED = tuple(k for k in STACKED_KNOBS if k != "seed")  # what the jobs of one stack may differ in: the seed fixes the split
_JOB: contextvars.ContextVar[int | None] = contextvars.ContextVar("stack_job", default=None)


def stack_key(cfg: DictConfig) -> str | None:
    """What the jobs of one stack share (the resolved job config without `STACKED`), None for a
    job that trains alone."""
    HydraConfig.instance().set_config(cfg)  # for ${hydra:runtime.output_dir}
    task = OmegaConf.to_container(cfg, resolve=True)
    task.pop("hydra", None)
    out = cfg.hydra.runtime.output_dir
    if family_of(task) != "mlp" or not task["model"].get("fast", True):
        return None
    if checkpoint_path(Path(out)).exists() or finished_summary(Path(out), cfg.epochs) is not None:
        return None
    for knob in STACKED:
        task.pop(knob, None)
        task["model"].pop(knob, None)
    return json.dumps(task, sort_keys=True, default=str, ensure_ascii=False).replace(out, "<the job's dir>")


def launch(launcher: Launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """The stacked launcher's `launch`: each stack trained as one, every other job as the basic
    launcher runs it; one `JobReturn` per job, in order."""
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    configs = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = idx
        HydraConfig.instance().set_config(cfg)  # for the sweep subdir's interpolations
        out = os.path.abspath(os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir)))
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = out
        configs.append(cfg)
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(stack_key(cfg) or f"alone {i}", []).append(i)
    log.info("Launching %d jobs, those of one shape as one stack (at most %d members each)", len(configs),
             launcher.max_members)
    returns: list[JobReturn | None] = [None] * len(configs)
    for indices in groups.values():
        for chunk in _chunks(indices, [configs[i].members for i in indices], launcher.max_members):
            if len(chunk) == 1:
                returns[chunk[0]] = _alone(launcher, configs[chunk[0]])
            else:
                for i, ret in zip(chunk, train_stack([configs[i] for i in chunk], launcher)):
                    returns[i] = ret
            configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return returns


def _chunks(indices: list[int], members: list[int], size: int) -> list[list[int]]:
    """`indices` cut in order into stacks of at most `size` members (a job of more trains alone)."""
    chunks, count = [[]], 0
    for i, m in zip(indices, members):
        if chunks[-1] and count + m > size:
            chunks.append([])
            count = 0
        chunks[-1].append(i)
        count += m
    return chunks


def _alone(launcher: Launcher, cfg: DictConfig) -> JobReturn:
    return run_job(hydra_context=launcher.hydra_context, task_function=launcher.task_function, config=cfg,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def _name(cfg: DictConfig) -> str:
    return cfg.hydra.job.override_dirname or str(cfg.hydra.job.num)


class Job:
    """One job of a stack: its config (with `hydra`), dir, callbacks and loggers."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.out = Path(cfg.hydra.runtime.output_dir)
        self.task = copy.deepcopy(cfg)  # what run_job gives a job: its config without `hydra`
        with read_write(self.task), open_dict(self.task):
            del self.task["hydra"]
        self.callbacks: list[Callback] = []
        self.loggers: list = []
        self.error: BaseException | None = None
        self.result = float("nan")  # the final validation accuracy (mean over its members)
        self.stacked: dict = {}  # what it gives its members of the stack (STACKED_KNOBS)
        self.ended = False

    def set_hydra(self) -> None:
        """Makes this job's Hydra config the current one (`${hydra:runtime.output_dir}`, W&B's run name)."""
        HydraConfig.instance().set_config(self.cfg)

    def end(self, j: int, view: JobView | None, error: BaseException | None) -> None:
        """What a lone job does when its training ends (`modadd.job.end_job`: its models, summary and
        W&B run), with `view` the job's trainer (None if the stack was never built). A failure is
        kept as the job's `error`, for its `JobReturn`."""
        self.set_hydra()
        token = _JOB.set(j)
        try:
            summary = end_job(self.task, self.out, error, view, view and view.module, self.loggers)
            self.result = summary["final"].get("val/acc", float("nan"))
        except BaseException as err:  # noqa: BLE001 - the other jobs still end
            self.error = err
        finally:
            _JOB.reset(token)
            self.ended = True


def train_stack(cfgs: list[DictConfig], launcher: Launcher) -> list[JobReturn]:
    """Train the jobs `cfgs` (composed sweep configs, each with its `hydra.runtime.output_dir`) as
    one stack; returns their `JobReturn`s. Raises SystemExit as a lone job does (a failed disk
    write, a signal), once every job's files are written."""
    jobs = [Job(cfg) for cfg in cfgs]
    signals.install()
    logging.raiseExceptions = False  # a full disk fails the log files too: one line per job, not a traceback per record
    callbacks = launcher.hydra_context.callbacks
    with ExitStack() as held:
        try:
            for job in jobs:
                job.set_hydra()
                job.out.mkdir(parents=True, exist_ok=True)
                held.enter_context(rundir.claim(job.out, job.task, job.cfg.hydra))
        except (rundir.RunDirError, OSError) as err:  # another writer, a full or read-only disk: as a lone job
            print(f"error: {(disk_error(err) or err) if isinstance(err, OSError) else err}", file=sys.stderr)
            raise SystemExit(1) from None
        held.callback(_close_job_logs)
        _log_to_every_job(jobs)
        quiet_libraries()
        for job in jobs:
            validate(job.task)
            start_fresh(job.out)
        torch.set_num_threads(torch_threads(jobs[0].task))
        log.info("a stack of %d jobs in %s: %s; %d torch thread(s)", len(jobs), jobs[0].out.parent,
                 ", ".join(job.out.name for job in jobs), torch.get_num_threads())
        with env_override(jobs[0].cfg.hydra.job.env_set), signals.deferred():  # the endings too, as a lone job's
            for job in jobs:
                job.set_hydra()
                callbacks.on_job_start(config=job.cfg, task_function=launcher.task_function)
            _fit(jobs)
        returns = [_job_return(job) for job in jobs]
        for job, ret in zip(jobs, returns):
            job.set_hydra()
            callbacks.on_job_end(config=job.cfg, job_return=ret)
        exit_error = next((job.error for job in jobs if isinstance(job.error, SystemExit)), None)
        if exit_error is not None:
            raise exit_error
    if signals.received() is not None:
        signals.stop(signals.received())
    return returns


def _fit(jobs: list[Job]) -> None:
    """Build the stack and train it, then end every job. A job whose loggers or callbacks cannot
    be made ends at once, failed, and the others train without it (each job's loggers come
    first: a job that fails later is still a W&B run)."""
    for j, job in enumerate(jobs):
        job.set_hydra()
        try:
            job.loggers = [instantiate(c, alongside=True) for c in (job.task.logger or {}).values()]
            config = OmegaConf.to_container(job.task, resolve=True)
            for logger in job.loggers:
                logger.log_hyperparams(config)
            job.callbacks = sorted((instantiate(c) for c in (job.task.callbacks or {}).values()), key=callback_rank)
            job.stacked = {knob: config[knob] for knob in STACKED_KNOBS}
        except Exception as err:  # noqa: BLE001 - this job's failure, not the stack's
            job.end(j, None, err)
    live = [job for job in jobs if not job.ended]
    if not live:
        return
    trainer = module = error = None
    try:
        first = live[0].task
        module = instantiate(first.model, stack=[job.stacked for job in live])
        data = instantiate(first.data)
        trainer = instantiate(first.trainer, logger=False, callbacks=[StopOnSignal(), StackCallbacks(live)])
        trainer.fit(module, datamodule=data)
    except BaseException as err:  # noqa: BLE001 - every job's ending is recorded
        error = err
    for j, job in enumerate(live):
        if not job.ended:
            job.end(j, JobView(trainer, module, j, job) if trainer is not None else None, error)


def _job_return(job: Job) -> JobReturn:
    ret = JobReturn(overrides=OmegaConf.to_container(job.cfg.hydra.overrides.task), cfg=job.task,
                    hydra_cfg=OmegaConf.create({"hydra": job.cfg.hydra}), working_dir=os.getcwd(), task_name="train")
    failed = job.error is not None
    ret.status = JobStatus.FAILED if failed else JobStatus.COMPLETED
    ret.return_value = job.error if failed else job.result
    return ret


class _JobLines(logging.Filter):
    """A job's train.log takes the stack's own lines and its job's; every line of a job says
    which job it is of."""

    def __init__(self, job: int | None, names: list[str]):
        super().__init__()
        self.job, self.names = job, names

    def filter(self, record: logging.LogRecord) -> bool:
        j = _JOB.get()
        if j is not None and not getattr(record, "stack_job_named", False):
            record.msg, record.stack_job_named = f"[{self.names[j]}] {record.msg}", True
        return self.job is None or j is None or j == self.job


def _close_job_logs() -> None:
    for handler in list(logging.getLogger().handlers):
        if any(isinstance(f, _JobLines) for f in handler.filters):
            logging.getLogger().removeHandler(handler)
            try:
                handler.close()
            except OSError:
                pass  # a full disk: the job's summary says so


def _log_to_every_job(jobs: list[Job]) -> None:
    """Hydra's job logging (console and the first job's train.log), plus each other job's train.log."""
    names = [_name(job.cfg) for job in jobs]
    jobs[0].set_hydra()
    configure_log(jobs[0].cfg.hydra.job_logging, jobs[0].cfg.hydra.verbose)
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    for handler in root.handlers:
        handler.addFilter(_JobLines(0 if handler in files else None, names))
    for j, job in enumerate(jobs[1:], start=1):
        for template in files:
            handler = logging.FileHandler(job.out / Path(template.baseFilename).name, delay=True)
            handler.setFormatter(template.formatter)
            handler.setLevel(template.level)
            handler.addFilter(_JobLines(j, names))
            root.addHandler(handler)


class JobView:
    """The trainer as job `j`'s callbacks and ending see it: its own loggers and callbacks, its
    own stop (the stack's, or its member's divergence), its own checkpoint (`save_checkpoint`);
    everything else is the stack trainer's. `module` is the module as they see it (`ModuleView`)."""

    def __init__(self, trainer: L.Trainer, module: GrokModule, j: int, job: Job):
        self._trainer, self._j, self._job = trainer, j, job
        self.module = ModuleView(module, j, job)
        self.loggers, self.callbacks = job.loggers, job.callbacks

    def __getattr__(self, name: str):
        return getattr(self._trainer, name)

    @property
    def should_stop(self) -> bool:
        return self._trainer.should_stop or self.module.diverged

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._trainer.should_stop = value

    def save_checkpoint(self, filepath: str | Path, weights_only: bool = False) -> None:
        """This job's checkpoint: what its lone run's would hold (its members' weights and AdamW
        state, its settings), so that it resumes alone."""
        checkpoint = self._trainer._checkpoint_connector.dump_checkpoint(weights_only)
        members = self.module.members
        checkpoint["state_dict"] = {k: v[members].clone() for k, v in checkpoint["state_dict"].items()}
        checkpoint["hyper_parameters"] = dict(self.module.hparams)  # plain types: it loads with weights_only=True
        for optimizer in checkpoint.get("optimizer_states", []):
            optimizer["state"] = {i: {k: v if k == "step" else v[members].clone() for k, v in state.items()}
                                  for i, state in optimizer["state"].items()}
            for group in optimizer["param_groups"]:
                group.update(lr=self.module.hparams["lr"], weight_decay=self.module.hparams["weight_decay"],
                             betas=tuple(self.module.hparams["betas"]))
        self._trainer.strategy.save_checkpoint(checkpoint, filepath)


class ModuleView:
    """The stack's module as job `j`'s callbacks see it: its members' weights (views, live),
    its metrics, its hyper-parameters."""

    def __init__(self, module: GrokModule, j: int, job: Job):
        self._module, self._j = module, j
        self.members = module.job_members[j]
        model = OmegaConf.to_container(job.task.model, resolve=True)
        self.hparams = AttributeDict({k: v for k, v in model.items() if k != "_target_"}, stack=None)  # a lone job's
        self.hparams.betas = tuple(float(b) for b in self.hparams.betas)

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    @property
    def diverged(self) -> bool:
        return self._module.job_diverged[self._j] is not None

    @property
    def net(self) -> torch.nn.Module:
        net = self._module.net
        return type(net)(net.W_in.detach()[self.members], net.W_out.detach()[self.members], net.activation)

    @property
    def epoch_metrics(self) -> dict[str, float]:
        return self._module.job_metrics[self._j]

    @epoch_metrics.setter
    def epoch_metrics(self, metrics: dict[str, float]) -> None:
        self._module.job_metrics[self._j] = metrics


class StackCallbacks(Callback):
    """Runs every job's callbacks on its `JobView`, job after job, each hook in the order a lone
    job runs them. A job whose member diverged ends at that epoch, as a lone one would (its
    `on_train_end`, then its models, summary and W&B run); a job whose callback raised ends
    failed (its `on_exception`); either way the others train on."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs
        self.views: list[JobView] = []

    def _each(self, hook: str, trainer: L.Trainer, module: GrokModule, *args, **kwargs) -> None:
        if not self.views:
            self.views = [JobView(trainer, module, j, job) for j, job in enumerate(self.jobs)]
        for j, (job, view) in enumerate(zip(self.jobs, self.views)):
            if job.ended and hook != "teardown":
                continue
            try:
                self._call(j, hook, *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - this job's failure, not the stack's
                if hook in ("on_exception", "teardown"):
                    continue  # already ending
                self._call(j, "on_exception", err, quiet=True)
                job.end(j, view, err)
        trainer.should_stop |= all(job.ended for job in self.jobs)

    def _call(self, j: int, hook: str, *args, quiet: bool = False, **kwargs) -> None:
        view = self.views[j]
        token = _JOB.set(j)
        try:
            for callback in view.callbacks:
                if getattr(type(callback), hook) is getattr(Callback, hook):
                    continue  # Lightning's no-op: not called, per job, per step
                try:
                    getattr(callback, hook)(view, view.module, *args, **kwargs)
                except Exception:  # noqa: BLE001
                    if not quiet:
                        raise
        finally:
            _JOB.reset(token)

    def on_train_epoch_end(self, trainer: L.Trainer, module: GrokModule) -> None:
        self._each("on_train_epoch_end", trainer, module)
        if trainer.should_stop:
            return  # every job ends with the stack
        for j, (job, view) in enumerate(zip(self.jobs, self.views)):
            if view.module.diverged and not job.ended:
                token = _JOB.set(j)
                warn_diverged(*module.job_diverged[j])
                _JOB.reset(token)
                self._call(j, "on_train_end")
                job.end(j, view, None)


def _forward(hook: str) -> Callable[..., None]:
    def forward(self: StackCallbacks, trainer: L.Trainer, module: GrokModule, *args, **kwargs) -> None:
        self._each(hook, trainer, module, *args, **kwargs)

    return forward


# Every other hook of Lightning's callbacks goes to each job's callbacks as it comes; a job's
# checkpoint is its own (JobView.save_checkpoint), so the checkpoint hooks are not forwarded.
for _hook in [h for h in vars(Callback) if (h.startswith("on_") or h in ("setup", "teardown"))
              and h not in ("on_train_epoch_end", "on_save_checkpoint", "on_load_checkpoint")]:
    setattr(StackCallbacks, _hook, _forward(_hook))
