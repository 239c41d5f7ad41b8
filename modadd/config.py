"""Config checks that run before any work: a typo in an overnight sweep fails in a second.

`preflight(argv)` composes every job of the command line (each combination of a `-m` sweep)
with Hydra's own parser and checks it, before Hydra creates a directory or a W&B run opens;
`validate(cfg)` is the check itself (also run at the start of every job, whatever launched it).
"""

from __future__ import annotations

import math
import numbers
import os
import resource
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from modadd import rundir
from modadd.family import FAMILIES, family_of, foreign_knobs, not_applicable, pair_bytes

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


ACTIVATIONS = ("relu", "quadratic", "gelu")  # the hidden activations modadd.mlp.model implements
LOSSES = ("cross_entropy", "stablemax")  # softmax's or StableMax's cross-entropy (modadd.module.log_probs)


class ConfigError(ValueError):
    """A config value outside its allowed range; the message is one line naming the field."""


def _int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _num(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


# field -> (check, allowed range as the error message states it)
RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "p": (lambda v: _int(v) and v >= 2, "an integer >= 2"),
    "hidden": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "lr": (lambda v: _num(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "batch_size": (lambda v: v is None or _int(v) and v >= 1, "null (full batch) or an integer >= 1"),
    "epochs": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "train_fraction": (lambda v: _num(v) and 0 < v < 1, "a number in (0, 1)"),
    "seed": (lambda v: _int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "members": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "betas": (lambda v: len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "shuffle": (lambda v: isinstance(v, bool), "true or false"),
    "progress_every": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "threads": (lambda v: v is None or _int(v) and v >= 1, "null or an integer >= 1"),
    "operation": (lambda v: v in ("add", "sub", "mul", "div", "x2xyy2"), "one of add, sub, mul, div, x2xyy2"),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "loss": (lambda v: v in LOSSES, f"one of {', '.join(LOSSES)}"),
    "grokfast": (lambda v: v in (None, "ema"), "null (off) or ema"),
    "grokfast_alpha": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "grokfast_lambda": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "d_model": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "n_heads": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "d_head": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "d_mlp": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
}


def validate(cfg: DictConfig, check_init: bool = True) -> None:
    """Raise `ConfigError` for the first top-level knob outside its allowed range.

    `check_init=False` skips reading the `init` weights: a resumed job starts from its
    checkpoint, so the file it was first started from may be gone.
    """
    family = family_of(cfg)
    if family not in FAMILIES:
        raise ConfigError(f"model.family={family!r} is invalid: model must be one of {', '.join(FAMILIES)}")
    for knob in foreign_knobs(family):
        if knob in cfg:  # set by a preset, or forced with +knob=...
            raise ConfigError(not_applicable(knob, family))
    for field, (ok, allowed) in RULES.items():
        if field not in cfg:
            continue
        value = cfg[field]
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{field}={value!r} is invalid: {field} must be {allowed}")
    if cfg.get("init") is not None and check_init:
        _check_init(cfg)
    operation = cfg.get("operation", "add")
    if operation in ("mul", "div") and not (_prime(cfg.p) and cfg.p >= 3):
        raise ConfigError(f"p={cfg.p} is invalid for operation={operation}: p must be a prime >= 3 (the residues must form a field)")
    n_pairs = cfg.p * (cfg.p - 1) if operation == "div" else cfg.p * cfg.p
    n_train = int(cfg.train_fraction * n_pairs)
    if not 1 <= n_train < n_pairs:
        raise ConfigError(
            f"train_fraction={cfg.train_fraction} leaves {n_train} of {n_pairs} pairs for training at "
            f"p={cfg.p}: train_fraction must leave at least one pair in each split"
        )
    _check_memory(cfg, family, n_pairs, n_train)


# bytes per pair of the data set while it is built (pairs, labels, the split's permutation, the
# splits) and per training pair and member of an epoch (its order, the pairs gathered in it, and
# the training rows the excluded loss reads)
DATA_BYTES, EPOCH_BYTES = 56, 40


def _check_memory(cfg: DictConfig, family: str, n_pairs: int, n_train: int) -> None:
    """Refuse a job whose training data or minibatch cannot fit in memory (every measure over all
    pairs runs in bounded slices, so these are what grows with p)."""
    limit, where = memory_limit()
    K = cfg.get("members", 1)
    data = DATA_BYTES * n_pairs + EPOCH_BYTES * K * n_train
    batch = min(cfg.batch_size or n_train, n_train)
    per_pair = 2 * pair_bytes(family, {**cfg, "members": K})  # a training step's activations and their gradients
    if data + per_pair > limit:
        largest = math.isqrt(int(limit / (DATA_BYTES + EPOCH_BYTES * K * n_train / n_pairs)))
        raise ConfigError(f"p={cfg.p} is too large: training holds about {_gb(data)} for its {n_pairs} pairs alone, "
                          f"{where} is {_gb(limit)}: p must be at most about {largest} here")
    if data + batch * per_pair > limit:
        largest = (limit - data) // per_pair
        given = "null (full batch)" if cfg.batch_size is None else cfg.batch_size
        raise ConfigError(f"batch_size={given} is too large at p={cfg.p}: a minibatch of {batch} pairs holds about "
                          f"{_gb(batch * per_pair)} beside the data's {_gb(data)}, {where} is {_gb(limit)}: "
                          f"batch_size must be at most {largest} here")


def memory_limit() -> tuple[int, str]:
    """The memory a job can use, and what sets it: the address-space limit (`ulimit -v`), the
    container's memory limit (cgroup v2) or the machine's RAM, whichever is smallest."""
    limits = [(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory")]
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        limits.append((soft, "the address-space limit (ulimit -v)"))
    try:
        limits.append((int(Path("/sys/fs/cgroup/memory.max").read_text()), "the container's memory limit"))
    except (OSError, ValueError):  # no cgroup v2, or "max"
        pass
    return min(limits)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _check_init(cfg: DictConfig) -> None:
    """`init` must hold weights of this p and hidden, for one member or for every member, and
    of this activation where its source records one (a construction's file, a checkpoint, a job)."""
    from modadd.runs import RunError, load_run, load_weights  # torch: only when there is a file to read

    try:
        fc1, fc2 = load_weights(str(cfg.init))
    except RunError as err:
        raise ConfigError(f"init={cfg.init} is invalid: init must be null or a model .pt / .ckpt file or a job dir ({err})") from None
    K, hidden, p = fc1.shape[0], fc1.shape[1], fc2.shape[1]
    if (p, hidden) != (cfg.p, cfg.hidden) or K not in (1, cfg.get("members", 1)):
        raise ConfigError(
            f"init={cfg.init} holds {K} network(s) with p={p}, hidden={hidden}: init must match p={cfg.p}, "
            f"hidden={cfg.hidden} and hold 1 or members={cfg.get('members', 1)} network(s)"
        )
    recorded = load_run(str(cfg.init)).config.get("activation")
    if recorded is not None and recorded != cfg.get("activation", "relu"):
        raise ConfigError(
            f"init={cfg.init} was built for activation={recorded}, this run has activation={cfg.get('activation', 'relu')}: "
            f"give activation={recorded} (or start from its plain weights, a state_dict without hyper_parameters)"
        )


def _prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _one_line(err: Exception) -> str:
    """Hydra's message, on one line, with the knobs listed when a key is unknown."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith("Could not override"):
        return f"{lines[0]} It is not a config key; the top-level keys are {', '.join(RULES)}."
    return " ".join(lines)


def preflight(argv: list[str]) -> list[DictConfig]:
    """Compose and validate every job `train.py argv` would run, and look at the dir of each one
    that exists already; raise `ConfigError` if a job is bad or its dir cannot take it. Returns
    the composed jobs (none where it left the command to Hydra).

    Leaves Hydra's own modes (`--cfg`, `--help`, ...) and a single run given sweep syntax to
    Hydra, which reports those itself. A job whose dir holds a checkpoint continues from it,
    so its `init` file is not read.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    multirun = any(a in ("-m", "--multirun") for a in argv)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return []
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except HydraException as err:
        raise ConfigError(_one_line(err)) from None
    hydra = [o.input_line for o in overrides if _is_hydra(o.key_or_group)]
    task = [o for o in overrides if not _is_hydra(o.key_or_group)]
    if not multirun and any(o.is_sweep_override() for o in task):
        return []
    if any(o.key_or_group == "init" and o.is_sweep_override() for o in task):
        raise ConfigError("init cannot be swept: run one sweep per init (its path is left out of the job dir names)")
    jobs = BasicSweeper.split_arguments(task, None)[0] if multirun else [[o.input_line for o in task]]
    composed = []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        if multirun:
            _check_sweep_dir(Path(compose("config", overrides=hydra, return_hydra_config=True).hydra.sweep.dir),
                             [o.input_line for o in task])
        for job in jobs:
            where = f" (in job {','.join(job)})" if multirun else ""
            try:
                _check_family_knobs(job, where)
                cfg = compose("config", overrides=[*hydra, *job], return_hydra_config=True)
            except HydraException as err:
                raise ConfigError(_one_line(err)) from None
            run_dir = _job_dir(cfg, multirun)
            try:
                validate(cfg, check_init=not (run_dir / "checkpoints" / "last.ckpt").exists())
                if run_dir.is_dir():
                    rundir.check(run_dir, OmegaConf.to_container(cfg, resolve=False))
            except (ConfigError, rundir.RunDirError) as err:
                raise ConfigError(f"{err}{where}") from None
            composed.append(cfg)
    return composed


def _is_hydra(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _job_dir(cfg: DictConfig, multirun: bool) -> Path:
    """Where the job composed as `cfg` (with its `hydra` node) will write."""
    if multirun:
        return Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
    return Path(cfg.hydra.run.dir)


def _check_family_knobs(job: list[str], where: str) -> None:
    """A knob of another family (`hidden=64` with `model=transformer`, or with a preset that picks
    the transformer) gets the family's own message, not Hydra's "not in struct". The family is
    that of the job composed without the family knobs it was given."""
    from hydra import compose

    knobs = {knob for own in FAMILIES.values() for knob in own}
    given = [arg for arg in job if arg.split("=", 1)[0].lstrip("+~") in knobs]
    if not given:
        return
    family = family_of(compose("config", overrides=[arg for arg in job if arg not in given]))
    foreign = foreign_knobs(family) if family in FAMILIES else {}
    for arg in given:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in foreign:
            raise ConfigError(not_applicable(key, family) + where)


def apply_resume(argv: list[str]) -> list[str]:
    """Turn `resume=<dir>` (or `resume=latest`) into Hydra's run / sweep dir override, with the
    overrides the dir was started with.

    A job whose directory already holds `checkpoints/last.ckpt` continues from it, so pointing
    the command at the old directory is all a resume needs; `latest` is the newest directory
    under `outputs/` (or `multirun/` with `-m`). Overrides given with it must leave the config
    as it was (the preflight checks; raising `epochs` trains longer).
    """
    multirun = any(a in ("-m", "--multirun") for a in argv)
    rest, target = [], None
    for arg in argv:
        if arg.startswith("resume="):
            target = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if target is None:
        return argv
    if target == "latest":
        root = Path("multirun" if multirun else "outputs")
        found = sorted(root.glob("*/*"), key=lambda d: (d.parent.name, d.name))
        if not found:
            raise ConfigError(f"resume=latest: no earlier run under {root}/")
        target = str(found[-1])
    if not Path(target).is_dir():
        raise ConfigError(f"resume={target} is invalid: resume must be an existing run or sweep directory (or latest)")
    record = Path(target) / ("multirun.yaml" if multirun else ".hydra/overrides.yaml")
    if not record.is_file():
        raise ConfigError(f"resume={target} is invalid: no {record.name} there, so it is not a {'sweep' if multirun else 'run'} directory")
    given = {_key(a) for a in rest if not a.startswith("-") and not _is_hydra(_key(a))}
    recorded = _recorded_overrides(record)
    kept = ([] if given else recorded) if multirun else [a for a in recorded if _key(a) not in given]
    return [*rest, *kept, f"hydra.{'sweep' if multirun else 'run'}.dir={_quoted(target)}"]


def _recorded_overrides(record: Path) -> list[str]:
    """The overrides in a run dir's `.hydra/overrides.yaml` or a sweep dir's `multirun.yaml`."""
    saved = OmegaConf.load(record)
    return [str(a) for a in (saved.hydra.overrides.task if record.name == "multirun.yaml" else saved)]


def _check_sweep_dir(sweep_dir: Path, task: list[str]) -> None:
    """A sweep dir holds one sweep: continuing it takes the overrides it was started with."""
    record = sweep_dir / "multirun.yaml"
    if not record.is_file():
        return
    before = sorted(a for a in _recorded_overrides(record) if _key(a) not in rundir.HOW)
    now = sorted(a for a in task if _key(a) not in rundir.HOW)
    if before != now:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} holds a sweep started with overrides {before}, this command has "
                          f"{now}: give a new sweep dir, or the same overrides (or resume={sweep_dir} -m) to continue it")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _quoted(path: str) -> str:
    """`path` as one Hydra override value, whatever it holds (spaces, `=` and `,` of job dir names)."""
    return "'" + path.replace("'", "\\'") + "'"
