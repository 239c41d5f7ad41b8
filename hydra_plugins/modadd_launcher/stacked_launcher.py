"""`hydra/launcher=stacked`: a sweep's jobs that differ only in their AdamW settings train as
the members of one stacked model (`modadd.stack`); every other job runs as the basic launcher
runs it. Hydra finds launchers only in the `hydra_plugins` package, hence this shim."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class StackedLauncher(Launcher):
    def __init__(self, max_members: int = 256) -> None:
        self.max_members = max_members
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from modadd.stack import launch  # torch and Lightning load once the sweep starts

        return launch(self, job_overrides, initial_job_idx)
