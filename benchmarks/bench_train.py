"""Training speed: the seed notebook against modadd's train.py, each run as its own process.

    python benchmarks/bench_train.py                 # seed notebook vs train.py: start-up and ms/epoch
    python benchmarks/bench_train.py --end-to-end    # + whole commands: 2000 epochs each, and the user's sweep
    python benchmarks/bench_train.py --sweep         # only the user's sweep: side by side, one after the other, stacked
    python benchmarks/bench_train.py --fitstats      # in one process: what each callback costs per epoch
    python benchmarks/bench_train.py --scaling       # in one process: ms/epoch over p, hidden and members
    python benchmarks/bench_train.py --transformer   # the transformer's epoch and its statistics' cost

Side by side, as a user compares them: `python benchmarks/seed_notebook.py E` (the notebook's
cells as written) and `python train.py epochs=E` (W&B offline, every callback, figures at the
end), each a fresh process timed from launch to exit, at E = --short and E = --long epochs.
Per epoch is (T(long) - T(short)) / (long - short); start-up is T(short) less its epochs, so it
holds imports, data, W&B's start and end and everything else a run pays once. Rounds alternate
the sides (the VM's speed drifts); the figures are medians over the rounds, with their range.
The in-process modes (--fitstats, --scaling, --transformer) time modadd alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from modadd.job import build
from modadd.tracking import finish_run

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
WARMUP = 3
SWEEP = ["-m", "hidden=64,100,256", "weight_decay=0.1,0.5"]  # the README's example sweep
SEQUENTIAL = "sweep, hydra/launcher=basic"  # its jobs one after the other, as before modadd.sweep
STACKED = "sweep, hydra/launcher=stacked"  # its jobs of one hidden size as one stacked model (modadd.stack)
LAUNCHERS = {"sweep": [], SEQUENTIAL: ["hydra/launcher=basic"], STACKED: ["hydra/launcher=stacked"]}


# --- each side as its own process ----------------------------------------------------------
def command(side: str, epochs: int | None, out: Path) -> list[str]:
    """The command line a user types (`epochs=None`: the default, 2000 for both)."""
    if side == "seed notebook":
        return [sys.executable, str(ROOT / "benchmarks" / "seed_notebook.py"), *([str(epochs)] if epochs else [])]
    if side == "train.py":
        return [sys.executable, str(ROOT / "train.py"), *([f"epochs={epochs}"] if epochs else []), f"hydra.run.dir={out}"]
    return [sys.executable, str(ROOT / "train.py"), *SWEEP, *LAUNCHERS[side], f"hydra.sweep.dir={out}"]


def wall(side: str, epochs: int | None = None) -> float:
    """Seconds from launch to exit of one run, its outputs in a temporary dir."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
        start = time.perf_counter()
        subprocess.run(command(side, epochs, Path(tmp) / "run"), cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """`median (min-max)` of the values times `scale`."""
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"


def compare(rounds: int, short: int, long: int) -> None:
    """Start-up and ms/epoch of the seed notebook and train.py, each a process, alternating."""
    sides = ("seed notebook", "train.py")
    for side in sides:
        wall(side, short)  # warm-up, not counted: file caches, and the fused kernel's one-time build
    walls = {(side, e): [] for side in sides for e in (short, long)}
    for r in range(rounds):
        for side in sides:
            for e in (short, long):
                walls[side, e].append(wall(side, e))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{s} {e} epochs {walls[s, e][-1]:.2f} s" for s in sides for e in (short, long)),
              flush=True)
    per_epoch = {s: [(b - a) / (long - short) for a, b in zip(walls[s, short], walls[s, long])] for s in sides}
    startup = {s: [a - short * pe for a, pe in zip(walls[s, short], per_epoch[s])] for s in sides}
    ratios = [a / b for a, b in zip(per_epoch["seed notebook"], per_epoch["train.py"])]
    print(f"\nreference config (p=113, hidden=100, batch 128), {rounds} rounds, each side a process at {short} and {long} epochs; "
          f"medians (min-max) over the rounds; torch {torch.__version__}, {os.cpu_count()} cores")
    print("| command | start-up, s | ms/epoch |\n|---|---|---|")
    for s, typed in zip(sides, ("python benchmarks/seed_notebook.py E", "python train.py epochs=E")):
        print(f"| {typed} | {spread(startup[s])} | {spread(per_epoch[s], 1000)} |")
    print(f"speed-up per epoch (seed / train.py, per round): {spread(ratios, digits=2)}x")


def end_to_end(rounds: int, sides: tuple[str, ...] = ("seed notebook", "train.py", "sweep", SEQUENTIAL, STACKED)) -> None:
    """Whole commands as a user runs them: the notebook's 2000 epochs, `python train.py`, the
    sweep (on a CPU its jobs side by side), the same sweep with its jobs one after the other, and
    stacked."""
    walls = {s: [] for s in sides}
    for r in range(rounds):
        for s in sides:
            walls[s].append(wall(s))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{s} {walls[s][-1]:.1f} s" for s in sides), flush=True)
    print(f"\nend to end, {rounds} round(s), medians (min-max), seconds; {os.cpu_count()} cores")
    print("| command | wall time, s |\n|---|---|")
    typed = {"seed notebook": "python benchmarks/seed_notebook.py (2000 epochs)", "train.py": "python train.py (2000 epochs)",
             "sweep": f"python train.py {' '.join(SWEEP)} (6 jobs x 2000 epochs)",
             SEQUENTIAL: f"python train.py {' '.join(SWEEP)} hydra/launcher=basic",
             STACKED: f"python train.py {' '.join(SWEEP)} hydra/launcher=stacked"}
    for s in sides:
        print(f"| {typed[s]} | {spread(walls[s])} |")
    for other in (SEQUENTIAL, STACKED):
        if "sweep" in sides and other in sides:
            print(f"{other} / side by side, per round: {spread([a / b for a, b in zip(walls[other], walls['sweep'])], digits=2)}x")


# --- modadd, as train.py runs it -----------------------------------------------------------
class _EpochTimer(L.Callback):
    def __init__(self):
        self.stamps: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.stamps.append(time.perf_counter() - self.start)


def modadd_run(overrides: list[str], epochs: int) -> list[float]:
    """Epoch times of train.py's objects for `overrides` (each epoch: training, validation,
    checkpoint, metrics row; the timer runs last so every callback's work is counted)."""
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"epochs={epochs}", "progress_every=1000000"], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = out
            cfg.hydra.job.override_dirname = "bench"
        HydraConfig.instance().set_config(cfg)
        trainer, module, data = build(cfg)
        timer = _EpochTimer()
        for callback in trainer.callbacks:
            _time_hook(callback, HOOK_TIMES.setdefault(type(callback).__name__, []))
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=data)
        finish_run()
    return timer.stamps[:-1]  # the last epoch's figures are costed in fit_stats_cost


HOOK_TIMES: dict[str, list[float]] = {}  # callback -> seconds spent in on_train_epoch_end, per epoch


def _time_hook(callback: L.Callback, times: list[float]) -> None:
    hook = callback.on_train_epoch_end

    def timed(trainer, module):
        start = time.perf_counter()
        hook(trainer, module)
        times.append(time.perf_counter() - start)

    callback.on_train_epoch_end = timed


def ms(times: list[float], warmup: int = WARMUP) -> float:
    """Mean epoch time in ms, start-up epochs excluded."""
    return 1000 * statistics.mean(times[warmup:])


def fitstats(rounds: int, epochs: int) -> None:
    """train.py's objects in this process, with and without FitStats, alternating rounds: each
    callback's on_train_epoch_end per epoch, and FitStats by kind of epoch."""
    variants = {"modadd": [], "modadd without FitStats": ["~callbacks.fit_stats"]}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, overrides in variants.items():
            times[name] += modadd_run(overrides, epochs)[WARMUP:]
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {ms(t, 0):.1f} ms/epoch" for n, t in times.items()), flush=True)
    ours, bare = (ms(t, 0) for t in times.values())
    print(f"\nreference config (p=113, hidden=100, batch 128), {rounds} rounds x {epochs} epochs in one process, torch threads {torch.get_num_threads()}")
    print(f"| modadd | without FitStats | difference |\n|---|---|---|\n| {ours:.1f} ms/epoch | {bare:.1f} ms/epoch | {100 * (ours - bare) / bare:+.1f}% |")
    print("\ntime in each callback's on_train_epoch_end, ms per epoch (share of an epoch without FitStats):")
    print("| callback | median | mean |\n|---|---|---|")
    for name, t in HOOK_TIMES.items():
        stats = [1000 * statistics.median(t), 1000 * statistics.mean(t)]
        print(f"| {name} | " + " | ".join(f"{v:.2f} ({100 * v / bare:.1f}%)" for v in stats) + " |")
    fit_stats_cost(HOOK_TIMES["FitStats"], epochs, bare)


def fit_stats_cost(times: list[float], epochs: int, epoch_ms: float, run_epochs: int = 2000) -> None:
    """FitStats by kind of epoch (as the default callbacks config schedules them), and its mean
    over a `run_epochs` run: plain epochs (a copy of the weights), block epochs (EpochLog writes
    its rows: the block's weights fitted at once), progress epochs (+ Fourier sparsity,
    restricted / excluded loss, W&B histogram) and figure epochs (+ images to W&B)."""
    fit_stats = OmegaConf.load(CONF / "model" / "mlp.yaml").callbacks.fit_stats
    progress, images = fit_stats.progress_every_n_epochs, fit_stats.images_every_n_epochs
    block = OmegaConf.load(CONF / "callbacks" / "default.yaml").epoch_log.flush_every

    def kind(e: int, n: int) -> str:
        if (e + 1) % images == 0 or e == n - 1:
            return "figures"
        if e % progress == 0:
            return "progress"
        return "block" if (e + 1) % block == 0 else "plain"

    measured: dict[str, list[float]] = {"plain": [], "block": [], "progress": [], "figures": []}
    for i, t in enumerate(times):
        measured[kind(i % epochs, epochs)].append(1000 * t)
    scheduled = [kind(e, run_epochs) for e in range(run_epochs)]
    print(f"\nFitStats per kind of epoch (every {block} epochs: the block's fits; every {progress}: progress measures; "
          f"every {images} and the last: figures)")
    print(f"| epochs | samples | median ms | share of an epoch | epochs in a {run_epochs}-epoch run |\n|---|---|---|---|---|")
    total = 0.0
    for name, ts in measured.items():
        med = statistics.median(ts)
        count = scheduled.count(name)
        total += med * count
        print(f"| {name} | {len(ts)} | {med:.2f} | {100 * med / epoch_ms:.1f}% | {count} |")
    per_epoch = total / run_epochs
    kinds = ("plain", "block", "progress")
    without = sum(statistics.median(measured[k]) * scheduled.count(k) for k in kinds) / sum(scheduled.count(k) for k in kinds)
    print(f"mean over a {run_epochs}-epoch run: {per_epoch:.2f} ms/epoch ({100 * per_epoch / epoch_ms:.1f}%); "
          f"without the figure epochs {without:.2f} ms ({100 * without / epoch_ms:.1f}%)")


def transformer_cost(rounds: int, epochs: int) -> None:
    """The transformer at experiment=transformer_grokking: ms per epoch with and without its
    statistics callback (ProgressStats), and the callback's cost per call and per epoch at the
    preset's schedule and at the default one, interleaved rounds."""
    preset = ["experiment=transformer_grokking", "logger=csv"]
    every = {name: OmegaConf.load(CONF / path).callbacks.fit_stats.every_n_epochs
             for name, path in (("preset", "experiment/transformer_grokking.yaml"), ("default", "model/transformer.yaml"))}
    times: dict[str, list[float]] = {"with ProgressStats": [], "without": []}
    HOOK_TIMES.pop("ProgressStats", None)
    for _ in range(rounds):
        times["with ProgressStats"] += modadd_run(preset, epochs)[WARMUP:]
        times["without"] += modadd_run([*preset, "~callbacks.fit_stats"], epochs)[WARMUP:]
    calls = [1000 * t for t in HOOK_TIMES["ProgressStats"] if t > 1e-3]  # the epochs it measured (the others return at once)
    bare = statistics.median(times["without"]) * 1000
    call = statistics.median(calls)
    print(f"\ntransformer, experiment=transformer_grokking (p=59, d_model 128, d_mlp 512, full batch), {rounds} rounds x "
          f"{epochs} epochs, torch threads {torch.get_num_threads()}")
    print("| epoch without ProgressStats | one ProgressStats call | share of an epoch, every N epochs |\n|---|---|---|")
    shares = ", ".join(f"{100 * call / n / bare:.1f}% (N={n}, {name})" for name, n in every.items())
    print(f"| {bare:.1f} ms (median) | {call:.1f} ms (median of {len(calls)}) | {shares} |")
    print(f"with ProgressStats every {every['preset']} epochs, median epoch {1000 * statistics.median(times['with ProgressStats']):.1f} ms, "
          f"mean {ms(times['with ProgressStats'], 0):.1f} ms; without: mean {ms(times['without'], 0):.1f} ms")


def scaling(epochs: int) -> None:
    print("\n| p | hidden | members | ms/epoch | ms/epoch per member |\n|---|---|---|---|---|")
    grid = [(p, h, 1) for p in (31, 61, 113, 227) for h in (64, 256, 1024)] + [(113, 100, k) for k in (1, 2, 4, 8)]
    for p, hidden, k in grid:
        t = ms(modadd_run([f"p={p}", f"hidden={hidden}", f"members={k}", "logger=csv"], epochs))
        print(f"| {p} | {hidden} | {k} | {t:.1f} | {t / k:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--short", type=int, default=10, help="epochs of the short runs (default 10)")
    parser.add_argument("--long", type=int, default=310, help="epochs of the long runs (default 310)")
    parser.add_argument("--end-to-end", action="store_true", help="also time the whole commands (2000 epochs; the sweep)")
    parser.add_argument("--sweep", action="store_true", help="only the user's sweep: side by side, one job at a time, stacked")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per round of the in-process modes")
    parser.add_argument("--fitstats", action="store_true", help="only the callbacks' cost, in one process")
    parser.add_argument("--scaling", action="store_true", help="only the p x hidden and members grids, in one process")
    parser.add_argument("--transformer", action="store_true", help="only the transformer's epoch and ProgressStats' cost")
    args = parser.parse_args()
    if args.transformer:
        transformer_cost(args.rounds, max(args.epochs, 60))
    elif args.fitstats:
        fitstats(args.rounds, args.epochs)
    elif args.sweep:
        end_to_end(args.rounds, ("sweep", SEQUENTIAL, STACKED))
    elif args.scaling:
        scaling(max(args.epochs // 2, WARMUP + 5))
    else:
        compare(args.rounds, args.short, args.long)
        if args.end_to_end:
            end_to_end(max(1, args.rounds // 3))


if __name__ == "__main__":
    main()
