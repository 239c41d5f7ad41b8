"""Training speed: the seed notebook's loop against modadd, side by side, in ms per epoch.

    python benchmarks/bench_train.py                 # reference config, interleaved rounds
    python benchmarks/bench_train.py --scaling       # + ms/epoch over p, hidden and members
    python benchmarks/bench_train.py --transformer   # the transformer's epoch and its statistics' cost

modadd is timed as `train.py` runs it (config composed from conf/, Lightning trainer,
checkpoint every epoch, metrics.csv, W&B offline); the seed's loop is a faithful copy of the
notebook's `train` (one-hot float inputs, autograd, torch.optim.AdamW, `.item()` per step).
Rounds alternate between the two so that both see the same machine state; the figure is
the mean epoch time after a warm-up (a mean, not a median: FitStats' work comes in blocks
of 10 epochs, which a median would not see; the last epoch, which draws the figures, is left
out here and costed in the FitStats table).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from modadd.job import build
from modadd.tracking import finish_run

CONF = Path(__file__).resolve().parents[1] / "conf"
WARMUP = 3


# --- the seed notebook's loop (bussmann-mod-addition-code), kept as written ---------------
class SeedMLP(torch.nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.fc1 = torch.nn.Linear(input_size, hidden_size, bias=False)
        self.fc2 = torch.nn.Linear(hidden_size, output_size, bias=False)

    def forward(self, x, val=False):
        pre_relu = self.fc1(x)
        post_relu = torch.nn.functional.relu(pre_relu)
        x = self.fc2(post_relu)
        return x, pre_relu, post_relu


def seed_data(p: int, device: str):
    data_set = np.zeros((p * p, 2 * p))
    labels = np.zeros((p * p, p))
    for number1 in range(p):
        for number2 in range(p):
            data_set[number1 * p + number2][number1] = 1
            data_set[number1 * p + number2][number2 + p] = 1
            labels[number1 * p + number2][(number1 + number2) % p] = 1
    shuffle = np.random.RandomState(1337).permutation(p * p)
    data_set, labels = data_set[shuffle], labels[shuffle]
    n = int(0.8 * p * p)
    t = lambda x: torch.from_numpy(x).float().to(device)  # noqa: E731
    return t(data_set[:n]), t(labels[:n]), t(data_set[n:]), t(labels[n:])


def seed_loop(p: int, hidden: int, epochs: int, device: str) -> list[float]:
    """The notebook's `train`, timed per epoch (its per-epoch print goes to a buffer)."""
    train_data, train_labels, val_data, val_labels = seed_data(p, device)
    torch.manual_seed(1337)
    model = SeedMLP(2 * p, hidden, p).to(device)
    optimzer = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch_size, times = 128, []
    running_train_loss = 0
    with contextlib.redirect_stdout(io.StringIO()):
        for epoch in range(epochs):
            start = time.perf_counter()
            model.train()
            correct_train_preds = 0
            total_train_preds = 0
            for batch in range(0, len(train_data), batch_size):
                optimzer.zero_grad()
                output, pre_relu, post_relu = model(train_data[batch : batch + batch_size])
                loss = loss_fn(output, torch.argmax(train_labels[batch : batch + batch_size], axis=1))
                running_train_loss += loss.item()
                preds = torch.argmax(output, axis=1)
                correct_train_preds += (preds == torch.argmax(train_labels[batch : batch + batch_size], axis=1)).sum().item()
                total_train_preds += len(preds)
                loss.backward()
                optimzer.step()
            model.eval()
            output, _, _ = model(val_data, val=True)
            val_loss = loss_fn(output, torch.argmax(val_labels, axis=1)).item()
            val_preds = torch.argmax(output, axis=1)
            correct_val_preds = (val_preds == torch.argmax(val_labels, axis=1)).sum().item()
            avg_train_loss = running_train_loss / (len(train_data) / batch_size)
            print(epoch, avg_train_loss, val_loss, correct_train_preds / total_train_preds, correct_val_preds / len(val_preds))
            running_train_loss = 0
            times.append(time.perf_counter() - start)
    return times


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


def compare(rounds: int, epochs: int, device: str) -> None:
    """Seed loop, train.py as configured, and train.py without FitStats, interleaved."""
    variants = {"seed loop": lambda: seed_loop(113, 100, epochs, device),
                "modadd": lambda: modadd_run([], epochs),
                "modadd without FitStats": lambda: modadd_run(["~callbacks.fit_stats"], epochs)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, run in variants.items():
            times[name] += run()[WARMUP:]
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {ms(t, 0):.1f} ms/epoch" for n, t in times.items()), flush=True)
    seed, ours, bare = (ms(t, 0) for t in times.values())
    print(f"\nreference config (p=113, hidden=100, batch 128), {rounds} rounds x {epochs} epochs, torch threads {torch.get_num_threads()}")
    print("| seed loop | modadd train.py | speed-up | modadd without FitStats | difference |\n|---|---|---|---|---|")
    print(f"| {seed:.1f} ms/epoch | {ours:.1f} ms/epoch | {seed / ours:.2f}x | {bare:.1f} ms/epoch | {100 * (ours - bare) / bare:+.1f}% |")
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
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of seed loop / modadd")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per round")
    parser.add_argument("--scaling", action="store_true", help="also time the p x hidden and members grids")
    parser.add_argument("--transformer", action="store_true", help="only the transformer's epoch and ProgressStats' cost")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.transformer:
        transformer_cost(args.rounds, max(args.epochs, 60))
        return
    compare(args.rounds, args.epochs, args.device)
    if args.scaling:
        scaling(max(args.epochs // 2, WARMUP + 5))


if __name__ == "__main__":
    main()
