"""Train one model, or sweep many with `-m`: `python train.py -m hidden=64,100,256 weight_decay=0.1,0.5`."""

import os
import sys

# MKL may otherwise use fewer threads when the machine is busy, which changes the order of
# float sums: the same config must give bit-identical metrics, whatever else is running.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

from modadd import signals  # noqa: E402

signals.install()  # Ctrl-C before training: one line, not a traceback

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from modadd.config import ConfigError, apply_resume, preflight  # noqa: E402
from modadd.sweep import parallel_overrides  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from modadd.job import train  # heavy imports (torch, Lightning, W&B) after the preflight

    return train(cfg)


if __name__ == "__main__":
    try:
        argv = apply_resume(sys.argv[1:])
        jobs = preflight(argv)  # every job's config and dir, before any directory or W&B run exists
        sys.argv[1:] = [*argv, *parallel_overrides(argv, jobs)]  # a CPU sweep: a job per core
        main()
        if signals.received() is not None:  # a sweep whose workers stopped on it
            sys.exit(signals.exit_code(signals.received()))
    except ConfigError as err:
        sys.exit(f"error: {err}")
    except signals.Interrupted as stop:
        print(f"interrupted by {stop} before training started: run the same command to start again", file=sys.stderr)
        sys.exit(signals.exit_code(stop.signum))
