"""A run killed mid-way and resumed ends bit-identical to one that was never interrupted."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_script

pytestmark = pytest.mark.slow
CONFIG = ["p=23", "hidden=32", "epochs=300", "logger=csv", "progress_every=1000"]
TRANSFORMER = ["model=transformer", "p=23", "d_model=32", "d_mlp=64", "epochs=300", "logger=csv", "progress_every=1000",
               "callbacks.fit_stats.every_n_epochs=7"]


def _rows(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("config, files", [(CONFIG, ("metrics.csv", "freq_counts.csv", "neurons.csv")),
                                           (TRANSFORMER, ("metrics.csv",))], ids=["mlp", "transformer"])
def test_killed_run_resumes_bit_identical(tmp_out, config, files):
    whole, killed = tmp_out / "whole", tmp_out / "killed"
    run_script("train.py", *config, f"hydra.run.dir={whole}")

    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *config, f"hydra.run.dir={killed}"],
                            cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_rows(killed / "metrics.csv")) < 100 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(_rows(killed / "metrics.csv")) - 1
    assert 0 < written < 300, "the kill must land mid-run"
    assert not (killed / "summary.json").exists()

    assert (killed / "checkpoints" / "last.ckpt").exists()
    run_script("train.py", *config, f"resume={killed}")
    assert "resuming from" in (killed / "train.log").read_text()
    for name in files:  # no epoch missing or twice, same bytes
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    a, b = torch.load(whole / "model.pt"), torch.load(killed / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    again = run_script("train.py", *config, f"resume={killed}")  # a finished job is not run again
    assert "already finished" in again.stdout + again.stderr


def test_same_seed_same_config_gives_identical_metrics(tmp_out):
    for name in ("one", "two"):
        run_script("train.py", "p=11", "hidden=16", "epochs=20", "logger=csv", f"hydra.run.dir={tmp_out / name}")
    assert _rows(tmp_out / "one" / "metrics.csv") == _rows(tmp_out / "two" / "metrics.csv")


def test_resume_needs_an_existing_directory(tmp_out):
    proc = run_script("train.py", f"resume={tmp_out / 'nope'}", check=False)
    assert proc.returncode != 0 and "resume must be an existing run or sweep directory" in proc.stderr


def test_resume_with_other_overrides_is_refused(tmp_out):
    run = tmp_out / "run"
    run_script("train.py", "p=7", "hidden=8", "epochs=2", "logger=csv", f"hydra.run.dir={run}")
    before = (run / "metrics.csv").read_text()
    proc = run_script("train.py", "p=7", "hidden=9", "epochs=2", "logger=csv", f"resume={run}", check=False)
    assert proc.returncode != 0 and "was started with overrides" in proc.stderr
    assert (run / "metrics.csv").read_text() == before and "hidden: 8" in (run / ".hydra" / "config.yaml").read_text()
