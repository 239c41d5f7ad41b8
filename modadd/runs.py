"""Read finished, failed, killed or still-running jobs and sweeps back from disk.

Analysis points at whatever is on disk (a job dir, a sweep dir, a bare checkpoint) while
other jobs may still be writing, so nothing here imports Lightning or needs the training
stack, and a bad job never raises in `load_run`: it comes back with a `status` and a
one-line `reason`. Weights come back in the seed's layout with a leading member dim,
`fc1: (K, hidden, 2p)`, `fc2: (K, p, hidden)`, the layout `modadd.fourier` takes.

Statuses: `ok`, `failed`, `diverged` (from summary.json); `running` (written to within
`running_window` seconds, and after summary.json if there is one: a resumed job);
`incomplete` (no summary.json and quiet: killed); `unreadable` (config missing or corrupt,
corrupt summary.json, or no usable weights where there should be some).
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode
from torch import Tensor

from modadd.family import family_of
from modadd.files import read_metrics

# What a Lightning checkpoint of a GrokModule pickles besides tensors: its hyper_parameters hold
# the OmegaConf containers Hydra instantiated it with (betas is a ListConfig). Allowlisting them
# keeps `torch.load(weights_only=True)` (no arbitrary code from a file) working on our ckpts.
_SAFE_GLOBALS = [ListConfig, DictConfig, AnyNode, Metadata, ContainerMetadata, Any, defaultdict, dict, list, int]
_SUMMARY_STATUSES = ("ok", "failed", "diverged")
# Files a live job writes: Hydra's config at start, then a row and a ckpt per epoch; all of them
# before summary.json (train.log is not one: its last line comes after summary.json).
_ACTIVITY = (".hydra/config.yaml", "metrics.csv", "checkpoints/last.ckpt")
_NOT_JOBS = {"analysis"}  # a sweep's analysis output may be a Hydra dir too


class RunError(ValueError):
    """A path holds no run, sweep or usable weights; the message is one line."""


@dataclass
class Run:
    """One job dir (or one bare weights file) as found on disk.

    `config` is the plain composed config (interpolations such as `${p}` left as written;
    the top-level knobs hold the values), {} if unreadable. For a weights file, `path` is the
    file, `config` comes from the job dir around it (else the ckpt's hyper_parameters) with
    `p`, `hidden`, `members` set from the file's weights, and metrics/summary are empty.
    Fields other than status/reason are filled as far as they could be read, whatever the status.
    """

    path: Path
    config: dict
    overrides: dict[str, str]
    metrics: list[dict]
    summary: dict
    status: str
    reason: str

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
    (sorted by name) for a sweep dir; a sweep with no job started yet gives []."""
    path = Path(path)
    if path.is_file() and path.suffix in (".ckpt", ".pt"):
        return [path]
    if (path / ".hydra").is_dir():
        return [path]
    if path.is_dir():
        jobs = sorted(
            d for d in path.iterdir()
            if d.is_dir() and not d.name.startswith(".") and d.name not in _NOT_JOBS and (d / ".hydra").is_dir()
        )
        if jobs or (path / "multirun.yaml").is_file():
            return jobs
    raise RunError(f"{path} is not a run, a sweep or a checkpoint")


def load_run(path: str | Path, running_window: float = 120.0) -> Run:
    """The job at `path` (a job dir or a weights file) with its status; never raises for a bad job."""
    path = Path(path)
    if path.is_file():
        return _load_file_run(path)
    config, config_error = _read_config(path)
    summary, summary_error = _read_summary(path)
    run = Run(path, config or {}, _read_overrides(path), read_metrics(path / "metrics.csv"), summary, "", "")
    run.status, run.reason = _status(run, config_error or summary_error, running_window)
    return run


def load_weights(run_or_path: Run | str | Path) -> tuple[Tensor, Tensor]:
    """The MLP's seed-layout stacked weights `fc1: (K, hidden, 2p)`, `fc2: (K, p, hidden)` on the CPU.

    For a job: model.pt / model_m{k}.pt (the final weights) when all are there and readable,
    else checkpoints/last.ckpt (the last finished epoch: a killed or running job). A `.ckpt` or
    `.pt` path is read directly. Raises `RunError` if no usable weights are found.
    """
    fc1, fc2 = _load_members(run_or_path, _seed_weights)
    return fc1, fc2


def load_transformer_weights(run_or_path: Run | str | Path) -> dict[str, Tensor]:
    """The transformer's weights stacked over members, `{name: (K, ...)}` with the names of
    `modadd.transformer.model.NAMES` (TransformerLens's), from the files `load_weights` reads."""
    return _load_members(run_or_path, _transformer_weights)


def _load_members(run_or_path: Run | str | Path, parse: Callable[[Any, Path], Any]) -> Any:
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
        members = (_read_config(path)[0] or {}).get("members")
    errors = []
    files = _final_files(path, members)
    if files:
        try:
            return _stack([parse(_torch_load(f), f) for f in files])
        except RunError as err:
            errors.append(str(err))
    else:
        errors.append("no model.pt or model_m*.pt")
    ckpt = path / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        try:
            return parse(_torch_load(ckpt), ckpt)
        except RunError as err:
            errors.append(str(err))
    else:
        errors.append("no checkpoints/last.ckpt")
    raise RunError(f"no usable weights in {path}: " + "; ".join(errors))


def _status(run: Run, read_error: str, window: float) -> tuple[str, str]:
    if read_error:
        return "unreadable", read_error
    epochs = len(run.metrics)
    age = _since_last_write(run.path, after=run.path / "summary.json" if run.summary else None)
    if age is not None and age < window:
        return "running", f"running: {epochs} epochs so far, last write {_duration(age)} ago"
    if not run.summary and epochs == 0:
        return "incomplete", "no epochs recorded"
    if run.summary.get("status") == "failed":
        return "failed", "failed: " + _one_line(run.summary.get("error") or "no error recorded")
    try:
        (load_transformer_weights if run.family == "transformer" else load_weights)(run)
    except RunError as err:
        return "unreadable", str(err)
    if not run.summary:
        since = f", last write {_duration(age)} ago" if age is not None else ""
        return "incomplete", f"no summary.json: stopped after {epochs} epochs{since}"
    if run.summary["status"] == "diverged":
        final = run.summary.get("final")
        final = final if isinstance(final, dict) else {}
        bad = [f"{k} {v}" for k, v in final.items() if k in ("train/loss", "val/loss") and not _finite(v)]
        return "diverged", "diverged: final " + (", ".join(bad) or "loss not finite")
    return "ok", ""


def _since_last_write(job: Path, after: Path | None) -> float | None:
    """Seconds since the job last wrote one of `_ACTIVITY`; None if none of them is newer than
    `after` (summary.json: what came before it is the finished job, not a live one)."""
    floor = _mtime(after) if after is not None else None
    mtimes = [m for f in _ACTIVITY if (m := _mtime(job / f)) is not None and (floor is None or m > floor)]
    return max(0.0, time.time() - max(mtimes)) if mtimes else None


def _mtime(path: Path) -> float | None:
    """None for a missing file (or one a live job is just replacing)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _load_file_run(path: Path) -> Run:
    job = next((d for d in (path.parent, path.parent.parent) if (d / ".hydra" / "config.yaml").is_file()), None)
    config = _read_config(job)[0] if job else None
    overrides = _read_overrides(job) if job else {}
    try:
        obj = _torch_load(path)
        if _is_transformer(obj):
            W_U = _transformer_weights(obj, path)["W_U"]
            model = (config or {}).get("model")
            shape = {"p": W_U.shape[-1], "members": W_U.shape[0],
                     "model": {**(model if isinstance(model, dict) else {}), "family": "transformer"}}
        else:
            fc1, fc2 = _seed_weights(obj, path)
            shape = {"p": fc2.shape[1], "hidden": fc1.shape[1], "members": fc1.shape[0]}
    except RunError as err:
        return Run(path, config or {}, overrides, [], {}, "unreadable", f"no usable weights: {err}")
    if config is None:
        config = _plain(obj.get("hyper_parameters", {}))
    return Run(path, {**config, **shape}, overrides, [], {}, "ok", "")


def _is_transformer(obj: Any) -> bool:
    """Whether a loaded weights file holds a transformer (its embedding is there, by either name)."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    return isinstance(state, dict) and ("net.W_E" in state or "embed.W_E" in state)


def _read_config(job: Path) -> tuple[dict | None, str]:
    """The plain config dict, or None and why not."""
    path = job / ".hydra" / "config.yaml"
    if not path.is_file():
        return None, "no .hydra/config.yaml"
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # any parse failure of a damaged file
        return None, f"config unreadable: .hydra/config.yaml: {_one_line(err)}"
    if not isinstance(config, dict):
        return None, "config unreadable: .hydra/config.yaml is not a mapping"
    return config, ""


def _read_overrides(job: Path) -> dict[str, str]:
    """`key=value` overrides as {key: value}; {} if absent or unreadable (the config has the values)."""
    try:
        items = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
    except Exception:
        return {}
    if not isinstance(items, list):
        return {}
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


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
