"""How a sweep's jobs share a CPU-only machine: side by side, one per core, not one after another.

Hydra's default launcher runs a sweep's jobs one after the other in one process. On a CPU a
job of these small models cannot keep several cores busy (splitting each minibatch step across
threads gains 1.1-1.5x at hidden 64-256 on two cores), but jobs in parallel processes gain nearly one
core each. So a CPU sweep that names no launcher runs on the joblib launcher (`hydra/launcher=local`)
with one job per core, and each job gets `cores // n_jobs` torch threads (`modadd.job.torch_threads`).
The fused kernel's weights do not depend on its thread count, so a job computes the same
numbers in a sweep as alone. Where a GPU is visible the jobs stay one after the other, each
with the whole device: parallel processes would only queue on it.
This module imports nothing heavy: `train.py` calls it before torch is loaded.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from omegaconf import DictConfig


def parallel_overrides(argv: Sequence[str], jobs: Sequence[DictConfig]) -> list[str]:
    """The Hydra overrides that run the sweep `argv` of these composed `jobs` side by side, or
    none: not a sweep, a launcher already chosen, a GPU visible, or too few cores or jobs."""
    if not any(a in ("-m", "--multirun") for a in argv) or any(a.startswith("hydra/launcher=") for a in argv):
        return []
    if gpu_visible():
        return []
    threads = max((job.get("threads") or 1 for job in jobs), default=1)
    n_jobs = min(len(jobs), len(os.sched_getaffinity(0)) // threads)
    return ["hydra/launcher=local", f"hydra.launcher.n_jobs={n_jobs}"] if n_jobs >= 2 else []


def gpu_visible() -> bool:
    """Whether Lightning's `accelerator=auto` may pick a GPU (an NVIDIA or AMD device node
    that `CUDA_VISIBLE_DEVICES` does not hide), told without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))
