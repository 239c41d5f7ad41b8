"""Bad input fails fast and cleanly; failures and divergence are recorded, not lost."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_script, wandb_inspect

BAD = [
    ("p=1", "p must be an integer >= 2"),
    ("hidden=0", "hidden must be an integer >= 1"),
    ("train_fraction=1", "train_fraction must be a number in (0, 1)"),
    ("train_fraction=0", "train_fraction must be a number in (0, 1)"),
    ("lr=0", "lr must be a number > 0"),
    ("weight_decay=-0.1", "weight_decay must be a number >= 0"),
    ("batch_size=0", "batch_size must be null (full batch) or an integer >= 1"),
    ("epochs=0", "epochs must be an integer >= 1"),
    ("hidden=abc", "hidden must be an integer >= 1"),
    ("lr=fast", "lr must be a number > 0"),
    ("nonsense=3", "It is not a config key"),
    ("activation=tanh", "activation must be one of relu, quadratic, gelu"),
    ("init=no/such/model.pt", "init=no/such/model.pt is invalid: init must be null or a model .pt / .ckpt file or a job dir"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_value_is_one_line_error_before_any_output(tmp_out, override, message):
    run = tmp_out / "run"
    proc = run_script("train.py", override, f"hydra.run.dir={run}", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not run.exists()


def test_bad_combination_in_a_sweep_is_reported_before_the_first_job(tmp_out):
    sweep = tmp_out / "sweep"
    proc = run_script("train.py", "-m", "hidden=64,0", "weight_decay=0.1,0.5", f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode != 0
    assert "hidden=0 is invalid" in proc.stderr and "in job hidden=0,weight_decay=0.1" in proc.stderr
    assert not sweep.exists()


@pytest.mark.slow
def test_diverging_run_stops_and_is_marked_diverged(tmp_out):
    run = tmp_out / "run"
    run_script("train.py", "p=11", "lr=100", "epochs=200", f"hydra.run.dir={run}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_run"] < 200
    assert wandb_inspect(run)["summary"]["status"] == "diverged"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU to make one job fail")
def test_one_failing_job_does_not_lose_the_others(tmp_out):
    sweep = tmp_out / "sweep"
    proc = run_script("train.py", "-m", "trainer.accelerator=gpu,cpu", "p=7", "hidden=8", "epochs=2",
                      f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode != 0  # the sweep reports the failure
    ok = sweep / "epochs=2,hidden=8,p=7,trainer.accelerator=cpu"
    bad = sweep / "epochs=2,hidden=8,p=7,trainer.accelerator=gpu"
    assert json.loads((ok / "summary.json").read_text())["status"] == "ok" and (ok / "model.pt").exists()
    failed = json.loads((bad / "summary.json").read_text())
    assert failed["status"] == "failed" and "gpu" in failed["error"]
    w = wandb_inspect(bad)
    assert w["state"] == "failed" and w["exit_code"] == 1
    assert wandb_inspect(ok)["state"] == "finished"


@pytest.mark.slow
def test_wandb_online_without_an_account_falls_back_to_offline_and_trains(tmp_out, monkeypatch):
    run = tmp_out / "run"
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_out))  # no ~/.netrc: no credentials
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "p=7", "hidden=8", "epochs=2", f"hydra.run.dir={run}"],
                          cwd=ROOT, env={**os.environ, "WANDB_MODE": "online"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "W&B online mode could not start" in proc.stdout + proc.stderr and "wandb sync" in proc.stdout + proc.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"
    assert wandb_inspect(run)["state"] == "finished"


@pytest.mark.slow
def test_wandb_unreachable_server_gives_the_reason_and_leaves_no_orphan_run(tmp_out):
    run = tmp_out / "run"
    env = {**os.environ, "WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
           "HOME": str(tmp_out), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "p=7", "hidden=8", "epochs=2", "+logger.wandb.init_timeout=5",
                           f"hydra.run.dir={run}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warning = next(line for line in (proc.stdout + proc.stderr).splitlines() if "could not start" in line)
    assert "CommError" in warning and "127.0.0.1:9" in warning and "<no message>" not in warning
    assert not list((run / "wandb").glob("run-*"))  # the online run that never started
    assert wandb_inspect(run)["state"] == "finished"


def test_no_library_log_lines_on_the_console_with_home_unset(tmp_out):
    """W&B's service printed ~20 of its own log lines when it found no cache dir."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME")}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "p=7", "hidden=8", "epochs=2", f"hydra.run.dir={tmp_out / 'run'}"],
                          cwd=ROOT, env={**env, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    foreign = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip() and not line.startswith("[")]
    assert not foreign, foreign  # every console line is one of Hydra's log records
