"""A run stopped mid-way (killed, Ctrl-C, SIGTERM) and resumed ends bit-identical to one that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, as_in_a_terminal, run_script, wandb_inspect

pytestmark = pytest.mark.slow
CONFIG = ["p=23", "hidden=32", "epochs=300", "logger=csv", "progress_every=1000"]
TRANSFORMER = ["model=transformer", "p=23", "d_model=32", "d_mlp=64", "epochs=300", "logger=csv", "progress_every=1000",
               "callbacks.fit_stats.every_n_epochs=7"]


def _rows(path):
    return path.read_text().splitlines() if path.exists() else []


FILES = {"mlp": ("metrics.csv", "freq_counts.csv", "neurons.csv"), "transformer": ("metrics.csv",)}
CONFIGS = {"mlp": CONFIG, "transformer": TRANSFORMER}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Each family's run, never interrupted, made once for the module."""
    runs = {}
    for family, config in CONFIGS.items():
        runs[family] = tmp_path_factory.mktemp("whole") / family
        run_script("train.py", *config, f"hydra.run.dir={runs[family]}")
    return runs


def _stop_mid_run(config, run_dir, signum):
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *config, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)
    deadline = time.time() + 120
    while len(_rows(run_dir / "metrics.csv")) < 100 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signum)
    return proc.wait(), proc.stderr.read()


@pytest.mark.parametrize("family, signum", [("mlp", signal.SIGKILL), ("mlp", signal.SIGTERM), ("mlp", signal.SIGINT),
                                            ("transformer", signal.SIGTERM)], ids=["mlp-kill", "mlp-term", "mlp-int", "transformer-term"])
def test_stopped_run_resumes_bit_identical(tmp_out, whole, family, signum):
    """SIGKILL stops anywhere; SIGINT (Ctrl-C) and SIGTERM (Slurm) stop at the end of an epoch,
    with its checkpoint, say so in summary.json and exit 128 + the signal's number."""
    config, stopped = CONFIGS[family], tmp_out / "stopped"
    code, _ = _stop_mid_run(config, stopped, signum)
    written = len(_rows(stopped / "metrics.csv")) - 1
    assert 0 < written < 300, "the signal must land mid-run"
    assert (stopped / "checkpoints" / "last.ckpt").exists() and not list(stopped.glob("model*.pt"))
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL and not (stopped / "summary.json").exists()
    else:
        assert code == 128 + signum
        summary = json.loads((stopped / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["signal"] == signal.Signals(signum).name
        assert summary["epochs_run"] == written  # the checkpoint covers every row written
        assert f"interrupted by {signal.Signals(signum).name} after {written} of 300 epochs" in (stopped / "train.log").read_text()

    run_script("train.py", f"resume={stopped}")  # the overrides are the dir's own
    assert "resuming from" in (stopped / "train.log").read_text()
    for name in FILES[family]:  # no epoch missing or twice, same bytes
        assert (stopped / name).read_bytes() == (whole[family] / name).read_bytes(), name
    a, b = torch.load(whole[family] / "model.pt"), torch.load(stopped / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((stopped / "summary.json").read_text())["status"] == "ok"

    again = run_script("train.py", *config, f"resume={stopped}")  # a finished job is not run again
    assert "already finished" in again.stdout + again.stderr


def test_sigterm_marks_the_wandb_run_failed_with_its_exit_code(tmp_out):
    run_dir = tmp_out / "run"
    code, _ = _stop_mid_run([c for c in CONFIG if c != "logger=csv"], run_dir, signal.SIGTERM)
    assert code == 143
    w = wandb_inspect(run_dir)
    assert w["exit_code"] == 143 and w["summary"]["status"] == "interrupted"


def test_same_seed_same_config_gives_identical_metrics(tmp_out):
    for name in ("one", "two"):
        run_script("train.py", "p=11", "hidden=16", "epochs=20", "logger=csv", f"hydra.run.dir={tmp_out / name}")
    assert _rows(tmp_out / "one" / "metrics.csv") == _rows(tmp_out / "two" / "metrics.csv")


def test_resume_needs_an_existing_directory(tmp_out):
    proc = run_script("train.py", f"resume={tmp_out / 'nope'}", check=False)
    assert proc.returncode != 0 and "resume must be an existing run or sweep directory" in proc.stderr
