"""Read finished, failed, killed or still-running jobs and sweeps back from disk.

Analysis points at whatever is on disk (a job dir, a sweep dir, a bare checkpoint) while
other jobs may still be writing, so nothing here imports Lightning or needs the training
stack, and a bad job never raises in `load_run`: it comes back with a `status` and a
one-line `reason`. Weights come back in the seed's layout with a leading member dim,
`fc1: (K, hidden, 2p)`, `fc2: (K, p, hidden)`, the layout `modadd.fourier` takes.

Statuses: `running` (a live process holds the job's lock, `modadd.lock`: file ages cannot
tell a slow job from a dead one); else from summary.json: `ok`, `failed`, `diverged`,
`interrupted` (by a signal, after its checkpoint), `wandb_failed` (the model is complete, its
W&B run did not close); `incomplete` (no summary.json and no holder: killed); `unreadable`
(config missing, corrupt or out of range, corrupt summary.json, or no usable weights, or
weights of another shape than the config's, where there should be some); `not started` (a job
of a sweep's multirun.yaml that has no job dir, `unstarted_jobs`).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode
from torch import Tensor

from modadd import lock
from modadd.config import ConfigError, validate
from modadd.family import family_of
from modadd.files import read_metrics

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

# What a Lightning checkpoint of a GrokModule pickles besides tensors: its hyper_parameters hold
# the OmegaConf containers Hydra instantiated it with (betas is a ListConfig). Allowlisting them
# keeps `torch.load(weights_only=True)` (no arbitrary code from a file) working on our ckpts.
_SAFE_GLOBALS = [ListConfig, DictConfig, AnyNode, Metadata, ContainerMetadata, Any, defaultdict, dict, list, int]
_SUMMARY_STATUSES = ("ok", "failed", "diverged", "interrupted", "wandb_failed")
_STOPPED = ("incomplete", "interrupted")  # analysed from the last checkpoint; the same command resumes them
_ANALYSABLE = ("ok", "wandb_failed", *_STOPPED)
_NOT_JOBS = {"analysis"}  # a sweep's analysis output may be a Hydra dir too
_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_FINAL = ("model.pt", "model_m*.pt")  # where a job's final weights are (one member, or several)
_Parse = Callable[[Any, Path], Any]  # (a loaded weights file, its path) -> weights in modadd's layout


class RunError(ValueError):
    """A path holds no run, sweep or usable weights; the message is one line."""


@dataclass
class Run:
    """One job dir (or one bare weights file) as found on disk.

    `config` is the plain composed config (interpolations such as `${p}` left as written;
    the top-level knobs hold the values), {} if unreadable. For a weights file, `path` is the
    file, `config` comes from the job dir around it (else the ckpt's hyper_parameters) with
    `p`, the widths and `members` set from the file's weights, and metrics/summary are empty.
    Fields other than status/reason are filled as far as they could be read, whatever the status;
    `analysable`: its weights were read and match its config, and its status is one to analyse.
    """

    path: Path
    config: dict
    overrides: dict[str, str]
    metrics: list[dict]
    summary: dict
    status: str
    reason: str
    analysable: bool = False

    @property
    def p(self) -> int | None:
        return self.config.get("p")

    @property
    def family(self) -> str:
        return family_of(self.config)

    @property
    def hidden(self) -> int | None:
        return self.config.get("hidden")

    @property
    def members(self) -> int | None:
        return self.config.get("members")


def find_jobs(path: str | Path) -> list[Path]:
    """The job dirs under `path`: itself for a job dir or a `.ckpt`/`.pt` file, its jobs
    (sorted by name) for a sweep dir; a sweep with no job started yet gives []. A job dir has
    `.hydra/`, or only the `.lock` of a job that has just started and not yet written it."""
    path = Path(path)
    if path.is_file() and path.suffix in (".ckpt", ".pt"):
        return [path]
    if _is_job(path):
        return [path]
    if path.is_dir():
        jobs = sorted(d for d in path.iterdir() if not d.name.startswith(".") and d.name not in _NOT_JOBS and _is_job(d))
        if jobs or (path / "multirun.yaml").is_file():
            return jobs
    raise RunError(f"{path} is not a run, a sweep or a checkpoint")


def _is_job(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / lock.NAME).is_file()


def load_run(path: str | Path) -> Run:
    """The job at `path` (a job dir or a weights file) with its status; never raises for a bad job."""
    path = Path(path)
    if path.is_file():
        return _load_file_run(path)
    config, config_error = _read_config(path)
    summary, summary_error = _read_summary(path)
    run = Run(path, config or {}, _read_overrides(path), read_metrics(path / "metrics.csv"), summary, "", "")
    run.status, run.reason, run.analysable = _judge(run, config_error or summary_error)
    return run


def unstarted_jobs(sweep: str | Path, runs: Sequence[Run]) -> list[Run]:
    """A `not started` run for each job of the sweep at `sweep` that is not among `runs` (the
    jobs found on disk): the sweep stopped before it, or has not got to it yet.

    The jobs are expanded from the sweep's multirun.yaml with Hydra's own code, as its basic
    sweeper expands them and names their dirs. Where `hydra.sweep.subdir` is not the override
    dirname, the dir names do not say which jobs they are: one run then says how many are missing.
    [] for a job dir, or a sweep that cannot be expanded (another sweeper, a damaged file).
    """
    sweep = Path(sweep)
    expanded = _sweep_jobs(sweep / "multirun.yaml")
    if expanded is None:
        return []
    jobs, names = expanded
    running = any(r.status == "running" for r in runs)
    if names is None:
        missing = len(jobs) - len(runs)
        why = "the sweep is still running other jobs" if running else "the sweep stopped before them"
        reason = (f"{missing} of the sweep's {len(jobs)} jobs have no job dir: {why} (hydra.sweep.subdir does not "
                  f"name the dirs by their overrides, so which ones is not known)")
        return [Run(sweep / f"{missing} of {len(jobs)} jobs", {}, {}, [], {}, "not started", reason)] if missing > 0 else []
    why = "the sweep is still running other jobs" if running else "the sweep stopped before this job"
    found = {r.path.name for r in runs}
    return [Run(sweep / name, _override_config(job), _overrides([o.input_line for o in job]), [], {}, "not started",
                "its dir holds no .hydra/config.yaml: the job stopped before it began" if (sweep / name).is_dir()
                else f"no job dir: {why}")
            for job, name in zip(jobs, names) if name and name not in found]


def _sweep_jobs(multirun: Path) -> tuple[list[list[Override]], list[str] | None] | None:
    """Each job's overrides in the sweep Hydra recorded in `multirun` (its multirun.yaml), and
    each job's dir name if the dirs are named by the overrides (else None); None if the sweep
    cannot be expanded here."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        hydra = OmegaConf.load(multirun).hydra
        if hydra.sweeper.get("_target_") != _BASIC_SWEEPER:
            return None
        parser = OverridesParser.create()
        params = [f"{k}={v}" for k, v in (hydra.sweeper.get("params") or {}).items()]  # as BasicSweeper.sweep
        lines = BasicSweeper.split_arguments(parser.parse_overrides([*params, *hydra.overrides.task]), None)[0]
        jobs = [parser.parse_overrides(job) for job in lines]
        if OmegaConf.to_container(hydra.sweep, resolve=False).get("subdir") != "${hydra.job.override_dirname}":
            return jobs, None
        naming = hydra.job.config.override_dirname
        return jobs, [get_overrides_dirname(job, exclude_keys=list(naming.exclude_keys), item_sep=naming.item_sep,
                                            kv_sep=naming.kv_sep) for job in jobs]
    except Exception:  # noqa: BLE001 - a missing or damaged multirun.yaml, or a sweep Hydra cannot expand without its configs
        return None


def _override_config(job: list[Override]) -> dict:
    """What a job's overrides say of its config, for a job never composed: the knobs they set,
    and the family `model=` picks."""
    config = {o.key_or_group: o.value() for o in job if not o.is_delete()}
    if "model" in config:
        config["model"] = {"family": config["model"]}
    return config


def load_weights(run_or_path: Run | str | Path) -> tuple[Tensor, Tensor]:
    """The MLP's seed-layout stacked weights `fc1: (K, hidden, 2p)`, `fc2: (K, p, hidden)` on the CPU.

    For a job: model.pt / model_m{k}.pt (the final weights) when all are there and readable,
    else checkpoints/last.ckpt (the last checkpointed epoch: a stopped or running job). A `.ckpt`
    or `.pt` path is read directly. Raises `RunError` if no usable weights are found.
    """
    fc1, fc2 = _load_members(run_or_path, _seed_weights)
    return fc1, fc2


def load_transformer_weights(run_or_path: Run | str | Path) -> dict[str, Tensor]:
    """The transformer's weights stacked over members, `{name: (K, ...)}` with the names of
    `modadd.transformer.model.NAMES` (TransformerLens's), from the files `load_weights` reads."""
    return _load_members(run_or_path, _transformer_weights)


def _load_members(run_or_path: Run | str | Path, parse: _Parse) -> Any:
    """Every member's weights, parsed by `parse(obj, path)` and stacked (see `load_weights`)."""
    if isinstance(run_or_path, Run):
        path, members = run_or_path.path, run_or_path.members
    else:
        path, members = Path(run_or_path), None
    if path.is_file():
        return parse(_torch_load(path), path)
    if not path.is_dir():
        raise RunError(f"{path}: no such file or directory")
    if members is None:
        config, error = _read_config(path)
        members = None if error else config.get("members")
    return _find_weights(path, members, parse)[0]


def _find_weights(job: Path, members: int | None, parse: _Parse) -> tuple[Any, str, str]:
    """`(weights, source, missed)`: the final weights when all their files are there and
    readable (`source` "model.pt" or "model_m*.pt"), else the checkpoint's (`source` names it and
    its epoch, `missed` says what was wrong with the final files: "" if there were none)."""
    errors, missed = [], ""
    files = _final_files(job, members)
    if files:
        try:
            return _stack([parse(_torch_load(f), f) for f in files]), _FINAL[len(files) > 1], ""
        except RunError as err:
            errors.append(str(err))
            missed = str(err).replace(f"{job}{os.sep}", "")
    else:
        errors.append("no model.pt or model_m*.pt")
    ckpt = job / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        try:
            obj = _torch_load(ckpt)
            return parse(obj, ckpt), f"checkpoints/last.ckpt (epoch {obj.get('epoch', '?')})", missed
        except RunError as err:
            errors.append(str(err))
    else:
        errors.append("no checkpoints/last.ckpt")
    raise RunError(f"no usable weights in {job}: " + "; ".join(errors))


def _judge(run: Run, read_error: str) -> tuple[str, str, bool]:
    """The job's status, its one-line reason, and whether it is analysable."""
    epochs = len(run.metrics)
    holder = lock.holder(run.path)
    if holder is not None:
        who = f"PID {holder.get('pid', '?')} on {holder.get('host', '?')} (since {holder.get('since', '?')})"
        return "running", f"running: {who}, {epochs} epochs so far", False
    if read_error:
        return "unreadable", read_error, False
    status = run.summary.get("status", "incomplete")
    if status == "incomplete" and epochs == 0:
        return status, "no epochs recorded", False
    if status == "failed":
        return status, "failed: " + _one_line(run.summary.get("error") or "no error recorded"), False
    ending = _ending(run, status)
    if status in _STOPPED and not (run.path / "checkpoints" / "last.ckpt").is_file() and not any(run.path.glob("model*.pt")):
        return status, f"{ending}; no checkpoint yet, nothing to analyse", False
    try:
        source = _checked_weights(run)
    except RunError as err:
        return "unreadable", str(err), False
    analysable = status in _ANALYSABLE
    empty = f"metrics.csv has no rows (summary.json: {run.summary.get('epochs_run', '?')} epochs run): no curves"
    notes = (ending, source if analysable else "", "" if epochs else empty)
    return status, "; ".join(note for note in notes if note), analysable


def _ending(run: Run, status: str) -> str:
    """How the job ended, as the reason says it ("" for a plain `ok`)."""
    summary = run.summary
    if status == "incomplete":
        return f"no summary.json: stopped after {len(run.metrics)} epochs (killed?): resumes with the same command"
    if status == "interrupted":
        return (f"interrupted by {summary.get('signal') or 'a signal'} after {summary.get('epochs_run', len(run.metrics))} "
                f"epochs: resumes with the same command")
    if status == "wandb_failed":
        return (f"the W&B run did not close cleanly ({_one_line(summary.get('wandb_error') or 'no error recorded')}): "
                f"the model is complete; rerunning the same command logs it again")
    if status == "diverged":
        final = summary.get("final")
        final = final if isinstance(final, dict) else {}
        bad = [f"{k} {v}" for k, v in final.items() if k in ("train/loss", "val/loss") and not _finite(v)]
        return "diverged: final " + (", ".join(bad) or "loss not finite")
    return ""


def _checked_weights(run: Run) -> str:
    """Read the job's weights and check their shape against its config; returns what the reason
    says of where they came from ("" for the final weights). Raises `RunError`."""
    weights, source, missed = _find_weights(
        run.path, run.members, _transformer_weights if run.family == "transformer" else _seed_weights)
    held = _shape(weights)
    said = {k: run.config.get(k, 1 if k == "members" else None) for k in held}
    wrong = [k for k in held if said[k] is not None and said[k] != held[k]]
    if wrong:
        raise RunError(f"weights do not match the config: {source} holds {_knobs(held, wrong)}, "
                       f".hydra/config.yaml says {_knobs(said, wrong)}")
    if source in _FINAL:
        return ""
    return f"{missed}; analysed from {source} instead" if missed else f"analysed from {source}"


def _shape(weights: tuple[Tensor, Tensor] | dict[str, Tensor]) -> dict[str, int]:
    """The config knobs that stacked weights fix: p, the family's widths, members."""
    if isinstance(weights, dict):  # a transformer's
        members, n_heads, d_model, d_head = weights["W_Q"].shape
        return {"p": weights["W_U"].shape[-1], "d_model": d_model, "n_heads": n_heads, "d_head": d_head,
                "d_mlp": weights["W_in"].shape[-1], "members": members}
    fc1, fc2 = weights
    return {"p": fc2.shape[1], "hidden": fc1.shape[1], "members": fc1.shape[0]}


def _knobs(values: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={values[k]}" for k in keys)


def _load_file_run(path: Path) -> Run:
    job = next((d for d in (path.parent, path.parent.parent) if (d / ".hydra" / "config.yaml").is_file()), None)
    config = _read_config(job)[0] if job else None
    overrides = _read_overrides(job) if job else {}
    try:
        obj = _torch_load(path)
        transformer = _is_transformer(obj)
        shape = _shape((_transformer_weights if transformer else _seed_weights)(obj, path))
    except RunError as err:
        return Run(path, config or {}, overrides, [], {}, "unreadable", f"no usable weights: {err}")
    if transformer:
        model = (config or {}).get("model")
        shape["model"] = {**(model if isinstance(model, dict) else {}), "family": "transformer"}
    if config is None:
        config = _plain(obj.get("hyper_parameters", {}))
    return Run(path, {**config, **shape}, overrides, [], {}, "ok", "", analysable=True)


def _is_transformer(obj: Any) -> bool:
    """Whether a loaded weights file holds a transformer (its embedding is there, by either name)."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    return isinstance(state, dict) and ("net.W_E" in state or "embed.W_E" in state)


def _read_config(job: Path) -> tuple[dict | None, str]:
    """The plain config dict and "", or why it is unusable: then None if it could not be read,
    the config if a value is out of range (`modadd.config.validate`, the check train.py makes)."""
    path = job / ".hydra" / "config.yaml"
    if not path.is_file():
        return None, "no .hydra/config.yaml"
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # any parse failure of a damaged file
        return None, f"config unreadable: .hydra/config.yaml: {_one_line(err)}"
    if not isinstance(config, dict):
        return None, "config unreadable: .hydra/config.yaml is not a mapping"
    try:
        validate(OmegaConf.create(config), check_init=False)
    except ConfigError as err:
        return config, f"config invalid: .hydra/config.yaml: {err}"
    except Exception as err:  # noqa: BLE001 - validate takes a composed config: a key missing, an interpolation broken
        return config, f"config invalid: .hydra/config.yaml: {_one_line(err)}"
    return config, ""


def _read_overrides(job: Path) -> dict[str, str]:
    """`key=value` overrides as {key: value}; {} if absent or unreadable (the config has the values)."""
    try:
        items = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
    except Exception:
        return {}
    return _overrides(items) if isinstance(items, list) else {}


def _overrides(items: Sequence[Any]) -> dict[str, str]:
    return {k: v for k, _, v in (str(item).partition("=") for item in items)}


def _read_summary(job: Path) -> tuple[dict, str]:
    """summary.json as a dict ({} if absent), or {} and why it is unusable."""
    path = job / "summary.json"
    if not path.exists():
        return {}, ""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return {}, f"summary.json unreadable: {_one_line(err)}"
    if not isinstance(summary, dict) or summary.get("status") not in _SUMMARY_STATUSES:
        return {}, "summary.json unreadable: no status among " + ", ".join(_SUMMARY_STATUSES)
    return summary, ""


def _final_files(job: Path, members: int | None) -> list[Path] | None:
    """model.pt or model_m0..m{K-1}.pt, or None unless all are there (a kill can stop the saving
    half way; `members` from the config says how many to expect)."""
    if members is None:
        if (job / "model.pt").is_file():
            return [job / "model.pt"]
        members = len(list(job.glob("model_m*.pt")))
    files = [job / "model.pt"] if members == 1 else [job / f"model_m{k}.pt" for k in range(members)]
    return files if members and all(f.is_file() for f in files) else None


def _torch_load(path: Path) -> Any:
    """torch.load (weights only, CPU) with a one-line `RunError` for a bad file: torch's own
    errors for a truncated file (OSError 22) or garbage (KeyError '101') say nothing useful."""
    try:
        size = path.stat().st_size
    except OSError:
        raise RunError(f"{path}: no such file") from None
    if size == 0:
        raise RunError(f"{path}: empty file")
    if not zipfile.is_zipfile(path):
        raise RunError(f"{path}: truncated or not a torch file (no complete zip archive, which torch.save writes)")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged archives
        raise RunError(f"{path}: unreadable torch file ({_one_line(err)})") from err


def _seed_weights(obj: Any, path: Path) -> tuple[Tensor, Tensor]:
    """`(fc1, fc2)` stacked over members from a Lightning ckpt (`net.W_in`, `net.W_out`) or a
    seed state_dict (`fc1.weight`, `fc2.weight`), with the shapes checked."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    keys = state.keys() if isinstance(state, dict) else set()
    if {"net.W_in", "net.W_out"} <= keys:
        fc1, fc2, dims = state["net.W_in"], state["net.W_out"], 3
    elif {"fc1.weight", "fc2.weight"} <= keys:
        fc1, fc2, dims = state["fc1.weight"], state["fc2.weight"], 2
    else:
        raise RunError(f"{path}: neither a modadd checkpoint (net.W_in, net.W_out) nor a model (fc1.weight, fc2.weight)")
    if not all(isinstance(w, Tensor) and w.dim() == dims for w in (fc1, fc2)):
        raise RunError(f"{path}: weights are not {dims}-d tensors")
    fc1, fc2 = (fc1.transpose(1, 2), fc2.transpose(1, 2)) if dims == 3 else (fc1[None], fc2[None])
    K, hidden, two_p = fc1.shape
    if two_p % 2 or fc2.shape != (K, two_p // 2, hidden):
        raise RunError(f"{path}: fc1 {tuple(fc1.shape)} and fc2 {tuple(fc2.shape)} are not (K, hidden, 2p), (K, p, hidden)")
    return fc1.contiguous(), fc2.contiguous()


def _stack(weights: list[tuple[Tensor, ...]] | list[dict[str, Tensor]]) -> tuple[Tensor, ...] | dict[str, Tensor]:
    """Members' weights (each stacked over its own members) concatenated along the member dim."""
    parts = [w.values() if isinstance(w, dict) else w for w in weights]
    shapes = {tuple(tuple(x.shape) for x in part) for part in parts}
    if len(shapes) > 1:
        raise RunError(f"members have different shapes: {sorted(map(str, shapes))}")
    stacked = [torch.cat(tensors) for tensors in zip(*parts)]
    return dict(zip(weights[0], stacked)) if isinstance(weights[0], dict) else tuple(stacked)


def _transformer_weights(obj: Any, path: Path) -> dict[str, Tensor]:
    """`{name: (K, ...)}` from a Lightning ckpt (`net.W_E`, ...: stacked) or a HookedTransformer
    state dict (`embed.W_E`, ...: one member), with the shapes checked."""
    from modadd.transformer.model import NAMES, TL_KEYS

    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    keys = state.keys() if isinstance(state, dict) else set()
    if {f"net.{n}" for n in NAMES} <= keys:
        weights, dims = {n: state[f"net.{n}"] for n in NAMES}, 1
    elif set(TL_KEYS.values()) <= keys:
        weights, dims = {n: state[TL_KEYS[n]] for n in NAMES}, 0
    else:
        raise RunError(f"{path}: neither a modadd transformer checkpoint (net.W_E, ...) nor a HookedTransformer state dict (embed.W_E, ...)")
    if not all(isinstance(w, Tensor) for w in weights.values()):
        raise RunError(f"{path}: weights are not tensors")
    weights = {n: w if dims else w[None] for n, w in weights.items()}
    if weights["W_E"].dim() != 3 or weights["W_Q"].dim() != 4:
        raise RunError(f"{path}: W_E {tuple(weights['W_E'].shape)} and W_Q {tuple(weights['W_Q'].shape)} are not (K, p+1, d_model), (K, n_heads, d_model, d_head)")
    K, vocab, d_model = weights["W_E"].shape
    n_heads, d_head, p = weights["W_Q"].shape[1], weights["W_Q"].shape[3], vocab - 1
    d_mlp = weights["W_in"].shape[-1]
    expected = {"W_pos": (K, 3, d_model), "W_Q": (K, n_heads, d_model, d_head), "W_K": (K, n_heads, d_model, d_head),
                "W_V": (K, n_heads, d_model, d_head), "W_O": (K, n_heads, d_head, d_model), "W_in": (K, d_model, d_mlp),
                "W_out": (K, d_mlp, d_model), "W_U": (K, d_model, p)}
    wrong = [f"{n} {tuple(weights[n].shape)} (expected {shape})" for n, shape in expected.items() if tuple(weights[n].shape) != shape]
    if wrong:
        raise RunError(f"{path}: inconsistent transformer weights: " + "; ".join(wrong))
    return {n: w.float().contiguous() for n, w in weights.items()}


def _plain(value: Any) -> Any:
    """OmegaConf containers (in a ckpt's hyper_parameters) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _one_line(err: object) -> str:
    """The informative line of an error (torch's weights-only errors bury it mid-message)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = next((x for x in lines if "WeightsUnpickler error" in x), lines[0] if lines else "")
    text = f"{type(err).__name__}: {line}" if isinstance(err, BaseException) else line
    return text[:300]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

