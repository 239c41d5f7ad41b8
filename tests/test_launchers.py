"""Sweeps on real launchers: joblib (parallel local processes) and submitit (Slurm's path)."""

import csv
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import modadd.sweep as sweep_module
from modadd.sweep import parallel_overrides
from conftest import ROOT, as_in_a_terminal, run_script, wandb_inspect

pytestmark = pytest.mark.slow
TINY = ["hidden=8,16", "p=7", "epochs=3"]


def _jobs(sweep):
    return sorted(d for d in sweep.iterdir() if (d / ".hydra").is_dir())


def test_joblib_sweep_runs_jobs_in_parallel_with_threads_shared_out(tmp_out):
    sweep = tmp_out / "sweep"
    run_script("train.py", "-m", "hydra/launcher=local", *TINY, f"hydra.sweep.dir={sweep}")
    jobs = _jobs(sweep)
    assert [j.name for j in jobs] == ["epochs=3,hidden=16,p=7", "epochs=3,hidden=8,p=7"]
    runs = set()
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "ok"
        log = (job / "train.log").read_text()
        threads = int(log.split("torch thread")[0].rsplit(" ", 2)[-2])
        assert threads == max(1, len(os.sched_getaffinity(0)) // 2)  # 2 jobs at once share the cores
        w = wandb_inspect(job)
        assert w["state"] == "finished" and w["name"] == job.name
        runs.add(w["run_id"])
    assert len(runs) == 2  # worker processes are reused: each job still gets its own W&B run


def test_a_cpu_sweep_runs_a_job_per_core_and_each_computes_what_it_computes_alone(tmp_out):
    """No launcher named, no GPU: joblib with min(jobs, cores) workers; a job's weights are those
    of the same job run alone with every core (the fused kernel's do not depend on its threads)."""
    sweep = tmp_out / "sweep"
    run_script("train.py", "-m", *TINY, "logger=csv", f"hydra.sweep.dir={sweep}")
    launcher = OmegaConf.load(sweep / "multirun.yaml").hydra.launcher
    cores = len(os.sched_getaffinity(0))
    assert ("joblib" in launcher._target_ and launcher.n_jobs == 2) if cores >= 2 else "Basic" in launcher._target_
    alone = tmp_out / "alone"
    run_script("train.py", "hidden=16", "p=7", "epochs=3", "logger=csv", f"hydra.run.dir={alone}")
    swept = sweep / "epochs=3,hidden=16,p=7"
    for name in ("fc1.weight", "fc2.weight"):
        assert torch.equal(torch.load(swept / "model.pt")[name], torch.load(alone / "model.pt")[name])
    rows = [list(csv.DictReader((d / "metrics.csv").open())) for d in (swept, alone)]
    assert [r.keys() for r in rows[0]] == [r.keys() for r in rows[1]]
    for got, want in zip(*rows):
        for key in want:  # the same text (an empty cell, a statistic's nan), or the same number to float tolerance
            assert got[key] == want[key] or math.isclose(float(got[key]), float(want[key]), rel_tol=1e-5, abs_tol=1e-6), key


def test_parallel_sweep_overrides(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    monkeypatch.setattr(sweep_module, "gpu_visible", lambda: False)
    jobs = [OmegaConf.create({"threads": None})] * 6
    assert parallel_overrides(["-m", "hidden=1,2"], jobs) == ["hydra/launcher=local", "hydra.launcher.n_jobs=4"]
    assert parallel_overrides(["-m", "hidden=1,2"], jobs[:3]) == ["hydra/launcher=local", "hydra.launcher.n_jobs=3"]
    assert parallel_overrides(["-m", "x"], [OmegaConf.create({"threads": 2})] * 6)[-1] == "hydra.launcher.n_jobs=2"
    assert parallel_overrides(["-m", "x"], [OmegaConf.create({"threads": 4})] * 6) == []  # a job fills the machine
    assert parallel_overrides(["-m", "x"], jobs[:1]) == []
    assert parallel_overrides(["hidden=1"], jobs[:1]) == []  # not a sweep
    assert parallel_overrides(["-m", "hydra/launcher=basic"], jobs) == []  # the user's choice
    monkeypatch.setattr(sweep_module, "gpu_visible", lambda: True)
    assert parallel_overrides(["-m", "hidden=1,2"], jobs) == []  # one GPU: the jobs take turns on it


def test_gpu_visible_respects_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/nvidia0"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert sweep_module.gpu_visible()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not sweep_module.gpu_visible()


def test_submitit_local_sweep_takes_the_slurm_path(tmp_out):
    sweep = tmp_out / "sweep"
    run_script("train.py", "-m", "hydra/launcher=submitit_local", *TINY, "logger=csv", f"hydra.sweep.dir={sweep}")
    jobs = _jobs(sweep)
    assert len(jobs) == 2 and (sweep / ".submitit").is_dir()
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "ok"
        assert (job / "model.pt").exists()


def test_submitit_job_preempted_is_requeued_and_resumes_from_its_checkpoint(tmp_out):
    """Slurm preempts (or nears a job's time limit) with USR2 through submitit: the job stops at
    the end of an epoch, says so, and submitit requeues it; the requeued job finishes the run."""
    sweep = tmp_out / "sweep"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=submitit_local", "p=23", "hidden=32",
                             "epochs=400", "logger=csv", f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                            env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    job = sweep / "epochs=400,hidden=32,p=23"
    deadline = time.time() + 300
    while not ((job / "metrics.csv").exists() and len((job / "metrics.csv").read_text().splitlines()) > 50):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "no rows"
        time.sleep(0.05)
    task = next(int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
                if b"submitit.core._submit" in p.read_bytes() and str(sweep).encode() in p.read_bytes())
    os.kill(task, signal.SIGUSR2)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    log = (job / "train.log").read_text()
    assert "interrupted by SIGUSR2" in log and "submitit requeues the job" in log and "resuming from" in log
    assert [int(r.split(",")[0]) for r in (job / "metrics.csv").read_text().splitlines()[1:]] == list(range(400))
    assert json.loads((job / "summary.json").read_text())["status"] == "ok"


def test_ctrl_c_stops_every_job_of_a_joblib_sweep_at_its_epoch_end(tmp_out):
    """The terminal sends Ctrl-C to every process; the parent waits for its workers (it used to
    kill them mid-write, leaving a job with no summary.json). Epochs enough that no job ends
    before the other has started, however loaded the machine (with 1000, a busy one failed)."""
    sweep = tmp_out / "sweep"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local", "p=23", "hidden=32",
                             "epochs=100000", "seed=1,2", "logger=csv", f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                            env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=as_in_a_terminal)
    deadline = time.time() + 300
    while not (len(m := list(sweep.glob("*/metrics.csv"))) == 2 and all(len(f.read_text().splitlines()) > 30 for f in m)):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    for job in _jobs(sweep):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["epochs_run"] < 100000


def test_slurm_preset_composes():
    out = run_script("train.py", "hydra/launcher=slurm", "--cfg", "hydra", "--package", "hydra.launcher").stdout
    for field in ("SlurmLauncher", "partition", "gpus_per_node: 1", "timeout_min: 240", "mem_gb: 16"):
        assert field in out, field


def test_two_sweeps_started_in_the_same_second_get_their_own_directories(tmp_out):
    env = {**os.environ, "WANDB_MODE": "offline"}
    args = [sys.executable, str(ROOT / "train.py"), "-m", "p=5", "hidden=4", "epochs=1", "logger=csv"]
    procs = [subprocess.Popen(args, cwd=tmp_out, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(2)]  # default sweep dirs, relative to the cwd
    assert all(p.wait(timeout=300) == 0 for p in procs)
    sweeps = list((tmp_out / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    assert all(len(list(s.glob("*/summary.json"))) == 1 for s in sweeps)
