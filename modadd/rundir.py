"""A run dir's identity and its one writer: what may run in an existing dir, and who may write it.

A run dir is one run: the config in its `.hydra/config.yaml` is what its checkpoint, metrics
and W&B run were made with. So a job may only continue in a dir whose config it shares, except
for the knobs that change how it runs and not what it computes (`HOW`), and `epochs`, which may
be raised to train longer. Hydra's own writing of `.hydra/` is switched off (`hydra.output_subdir:
null`) because it happens before the job can look: `claim` takes the dir's lock, compares, and
only then writes the records, so a refused job leaves every file as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from modadd import lock
from modadd.files import write_atomic

log = logging.getLogger("modadd")

# how a job runs, not what it computes: free to differ between the runs of one dir (they are
# also left out of the job dir names, conf/hydra/default.yaml)
HOW = ("logger", "trainer", "progress_every", "threads", "init")
# knobs added after runs were first written, at the value that computes what those runs computed:
# a run dir made before a knob existed continues at that value (also as `model.<knob>: ${<knob>}`)
ADDED = {"loss": "cross_entropy", "grokfast": None, "grokfast_alpha": 0.98, "grokfast_lambda": 2.0}
GROKFAST_KNOBS = ("grokfast_alpha", "grokfast_lambda")  # they change nothing while grokfast is null


class RunDirError(RuntimeError):
    """The run dir cannot take this job (another config, another writer); the message is one line."""


def changes(before: Mapping, after: Mapping) -> list[str]:
    """How config `after` differs from `before` as `key: old -> new`, leaving out `HOW`, a raised
    `epochs`, knobs added since `before` at their `ADDED` value, and Grokfast's settings while it is off."""
    old, new = _flat(before), _flat(after)
    found = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a == b or key.split(".")[0] in (*HOW, "hydra"):
            continue
        if key == "epochs" and isinstance(a, int) and isinstance(b, int) and b > a:
            continue  # training longer continues from the checkpoint
        name = key.removeprefix("model.")
        if key not in old and name in ADDED and b in (ADDED[name], f"${{{name}}}"):
            continue  # a run made before the knob existed
        if name in GROKFAST_KNOBS and old.get("grokfast") is None and new.get("grokfast") is None:
            continue  # Grokfast's settings while it is off
        found.append(f"{key}: {a} -> {b}")
    return found


def recorded_config(run_dir: Path) -> dict | None:
    """The config a run dir was made with (interpolations as written), None if it has none."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return config if isinstance(config, dict) else None


def check(run_dir: Path, config: Mapping) -> None:
    """Raise `RunDirError` if a live process holds `run_dir` or it holds a run of another config
    (the preflight's look, from a process that holds no lock)."""
    who = lock.holder(run_dir)
    if who is not None:
        raise RunDirError(lock.in_use(run_dir, who))
    refuse_changes(run_dir, config)


def refuse_changes(run_dir: Path, config: Mapping) -> None:
    """Raise `RunDirError` naming the differences if `run_dir` holds a run of another config."""
    try:
        before = recorded_config(run_dir)
    except Exception as err:  # noqa: BLE001 - a damaged record is a reason to refuse, not to crash
        raise RunDirError(f"{run_dir}/.hydra/config.yaml is unreadable ({' '.join(str(err).split())[:200]}): "
                          f"give this job a new directory") from None
    found = changes(before, config) if before is not None else []
    if found:
        raise RunDirError(
            f"{run_dir} holds a run with another config ({'; '.join(found)}): give a new directory for a new "
            f"config, or the same config to continue it (raising epochs alone trains it longer)")


@contextmanager
def claim(run_dir: Path, cfg: DictConfig, hydra: DictConfig | None) -> Iterator[None]:
    """Hold `run_dir` for this job: lock it, refuse another config, then write `.hydra/`
    (config.yaml, hydra.yaml, overrides.yaml, as Hydra would have). Raises `RunDirError`."""
    try:
        held = lock.acquire(run_dir)
    except lock.Locked as err:
        raise RunDirError(str(err)) from None
    except lock.NoLocks as err:
        log.warning("%s: running without a lock, so make sure no other process writes this dir", err)
        held = None
    try:
        refuse_changes(run_dir, OmegaConf.to_container(cfg, resolve=False))
        records = run_dir / ".hydra"
        write_atomic(records / "config.yaml", OmegaConf.to_yaml(cfg))
        write_atomic(records / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})))
        write_atomic(records / "overrides.yaml", OmegaConf.to_yaml(hydra.overrides.task))
        yield
    finally:
        if held is not None:
            held.release()


def _flat(tree: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value
    return flat
