"""`hydra/launcher=stacked`: the jobs of one shape train as one stacked model, and each job writes
what it writes alone (modadd/stack.py)."""

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from conftest import ROOT, as_in_a_terminal, run_script, wandb_inspect
from modadd.mlp.model import MLPStack
from modadd.module import member_adamw_step
from modadd.stack import stack_key

SHAPE = ["p=23", "hidden=16", "epochs=20", "progress_every=10"]


def _jobs(sweep):
    return sorted(d for d in sweep.iterdir() if (d / ".hydra").is_dir())


def _rows(job):
    with (job / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def assert_same_files(got, want):
    """Job dir `got` holds what `want` holds, bit for bit: its metrics rows, weights, checkpoint
    (weights, AdamW state and settings, loop state), fits and how it ended."""
    rows = [_rows(got), _rows(want)]
    assert rows[0] == rows[1]
    names = sorted(p.name for p in want.glob("model*.pt"))  # model.pt, or model_m<k>.pt for each of its members
    assert names and sorted(p.name for p in got.glob("model*.pt")) == names
    for name in names:
        models = [torch.load(d / name) for d in (got, want)]
        assert models[0].keys() == models[1].keys() and all(torch.equal(models[0][k], models[1][k]) for k in models[1])
    ckpts = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (got, want)]
    assert ckpts[0].keys() == ckpts[1].keys()
    for key in ("hyper_parameters", "loops", "global_step", "epoch"):
        assert ckpts[0][key] == ckpts[1][key], key
    assert all(torch.equal(ckpts[0]["state_dict"][k], ckpts[1]["state_dict"][k]) for k in ckpts[1]["state_dict"])
    for a, b in zip(ckpts[0]["optimizer_states"], ckpts[1]["optimizer_states"]):
        assert a["param_groups"] == b["param_groups"]
        for i in b["state"]:
            for key in b["state"][i]:
                assert torch.equal(a["state"][i][key], b["state"][i][key]), key
    for name in ("freq_counts.csv", "neurons.csv"):
        assert (got / name).read_text() == (want / name).read_text(), name
    summaries = [json.loads((d / "summary.json").read_text()) for d in (got, want)]
    assert summaries[0]["status"] == summaries[1]["status"] and summaries[0]["final"] == summaries[1]["final"]
    assert summaries[0]["epochs_run"] == summaries[1]["epochs_run"] and summaries[0]["grokking"] == summaries[1]["grokking"]


@pytest.mark.slow
def test_stacked_jobs_write_what_they_write_alone(tmp_out):
    """Four jobs of two members (two weight decays x two learning rates) as one stack of 8 members,
    against the same sweep run job after job: every file of every job the same, bit for bit."""
    grid = ["weight_decay=0.1,0.5", "lr=0.003,0.01", "members=2"]
    stacked, alone = tmp_out / "stacked", tmp_out / "alone"
    proc = run_script("train.py", "-m", *SHAPE, *grid, "hydra/launcher=stacked", f"hydra.sweep.dir={stacked}")
    run_script("train.py", "-m", *SHAPE, *grid, "hydra/launcher=basic", "logger=csv", f"hydra.sweep.dir={alone}")
    assert "a stack of 4 jobs" in proc.stdout
    jobs = _jobs(stacked)
    assert [j.name for j in jobs] == [j.name for j in _jobs(alone)] and len(jobs) == 4
    runs = set()
    for job in jobs:
        assert_same_files(job, alone / job.name)
        log = (job / "train.log").read_text()
        assert f"[{job.name}] epoch 20/20" in log  # its own progress lines, named
        assert all(f"[{other.name}]" not in log for other in jobs if other != job)
        w = wandb_inspect(job)
        assert w["state"] == "finished" and w["name"] == job.name and w["summary"]["status"] == "ok"
        assert w["summary"]["val/acc"] == pytest.approx(float(_rows(job)[-1]["val/acc"]))
        runs.add(w["run_id"])
    assert len(runs) == 4


@pytest.mark.slow
def test_a_diverging_member_ends_its_own_job_as_alone_and_the_others_train_on(tmp_out):
    sweep, alone = tmp_out / "sweep", tmp_out / "alone"
    run_script("train.py", "-m", "p=11", "lr=100,0.003", "epochs=200", "hydra/launcher=stacked", "logger=csv",
               f"hydra.sweep.dir={sweep}")
    run_script("train.py", "p=11", "lr=100", "epochs=200", "logger=csv", f"hydra.run.dir={alone}")
    job, healthy = sweep / "epochs=200,lr=100,p=11", sweep / "epochs=200,lr=0.003,p=11"
    diverged = json.loads((job / "summary.json").read_text())
    assert diverged["status"] == "diverged" and 0 < diverged["epochs_run"] < 200
    assert _rows(job) == _rows(alone)  # the same last row
    got, want = torch.load(job / "model.pt"), torch.load(alone / "model.pt")  # its weights at that epoch
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, equal_nan=True)
    assert "stopping (diverged)" in (job / "train.log").read_text()
    assert "diverged" not in (healthy / "train.log").read_text()
    ok = json.loads((healthy / "summary.json").read_text())
    assert ok["status"] == "ok" and ok["epochs_run"] == 200


@pytest.mark.slow
def test_one_jobs_failure_leaves_the_others_of_its_stack_whole(tmp_out):
    """A job whose W&B run cannot start (its wandb/ is a file) fails alone, as with any launcher."""
    sweep = tmp_out / "sweep"
    bad = sweep / "epochs=5,p=11,weight_decay=0.2"
    bad.mkdir(parents=True)
    (bad / "wandb").write_text("not a dir")
    proc = run_script("train.py", "-m", "p=11", "epochs=5", "weight_decay=0.1,0.2,0.3", "hydra/launcher=stacked",
                      f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode != 0 and "weight_decay=0.2" in proc.stderr  # the sweep names the failed job
    assert json.loads((bad / "summary.json").read_text())["status"] == "failed"
    for wd in ("0.1", "0.3"):
        job = sweep / f"epochs=5,p=11,weight_decay={wd}"
        assert json.loads((job / "summary.json").read_text())["status"] == "ok" and (job / "model.pt").exists()
        assert wandb_inspect(job)["state"] == "finished"


@pytest.mark.slow
def test_stacks_hold_at_most_max_members_and_hydras_job_callbacks_run_for_each_job(tmp_out):
    proc = run_script("train.py", "-m", "p=7", "hidden=8", "epochs=2", "members=2", "weight_decay=0.1,0.2,0.3,0.4",
                      "logger=csv", "hydra/launcher=stacked", "hydra.launcher.max_members=4",
                      "+hydra.callbacks.ret._target_=hydra.experimental.callbacks.LogJobReturnCallback",
                      f"hydra.sweep.dir={tmp_out / 'sweep'}")
    out = proc.stdout + proc.stderr
    assert out.count("a stack of 2 jobs") == 2
    assert out.count("Succeeded with return value") == 4


def test_a_stack_groups_the_jobs_of_one_shape():
    """Jobs that differ in lr, weight_decay, betas or members share a stack; another hidden size,
    seed or family, or the reference path (`model.fast=false`), does not."""
    def key(*overrides):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["hydra/launcher=stacked", *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = f"/nonexistent/{'_'.join(overrides)}"
        return stack_key(cfg)

    base = key("hidden=16")
    assert base is not None
    assert key("hidden=16", "weight_decay=0.1", "lr=0.01", "betas=[0.9,0.98]", "members=3") == base
    assert key("hidden=32") != base and key("hidden=16", "seed=1") != base
    assert key("model=transformer") is None and key("hidden=16", "model.fast=false") is None


def test_member_adamw_step_is_torchs_adamw_on_each_member():
    """Each member's update, with its own lr, weight decay and betas, is bit for bit what
    `torch.optim.AdamW(fused=True).step()` gives that member alone."""
    groups = [{"lr": 0.003, "weight_decay": 0.5, "betas": (0.9, 0.999), "eps": 1e-8},
              {"lr": 0.01, "weight_decay": 0.1, "betas": (0.9, 0.98), "eps": 1e-8},
              {"lr": 0.003, "weight_decay": 0.5, "betas": (0.9, 0.999), "eps": 1e-8}]
    net = MLPStack.init(13, 8, [0, 1, 2])
    alone = [MLPStack.init(13, 8, [k]) for k in range(3)]
    opt = torch.optim.AdamW(net.parameters(), fused=True)
    opts = [torch.optim.AdamW(m.parameters(), fused=True, **{k: v for k, v in g.items()}) for m, g in zip(alone, groups)]
    a, b = torch.randint(0, 13, (2, 3, 20))
    views = {}  # the slices, built at the first step (which makes the state) and the second, then kept
    for _ in range(3):
        net.backward(a, b, (a + b) % 13)
        member_adamw_step(opt, [(groups[0], [0, 2]), (groups[1], [1])], views)
        for k, (m, o) in enumerate(zip(alone, opts)):
            m.backward(a[k : k + 1], b[k : k + 1], (a[k : k + 1] + b[k : k + 1]) % 13)
            o.step()
    for k, m in enumerate(alone):
        assert torch.equal(net.W_in[k : k + 1], m.W_in) and torch.equal(net.W_out[k : k + 1], m.W_out)
        for q, q_alone in zip(net.parameters(), m.parameters()):
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(opt.state[q][key][k : k + 1], opts[k].state[q_alone][key])
            assert torch.equal(opt.state[q]["step"], opts[k].state[q_alone]["step"])
    assert copy.deepcopy(opt.state_dict())  # the state is torch's own layout


@pytest.mark.slow
def test_ctrl_c_stops_every_job_of_a_stack_with_its_checkpoint_and_the_same_command_finishes_them(tmp_out):
    """SIGINT during a stack: each job ends its epoch, writes its checkpoint and an `interrupted`
    summary, the sweep exits 130; the same command then finishes each job alone from its own
    checkpoint (a lone job's layout, its own AdamW settings), with the files of a stack never stopped."""
    config = ["p=23", "hidden=32", "epochs=300", "weight_decay=0.1,0.5", "progress_every=1000", "logger=csv",
              "hydra/launcher=stacked"]
    stopped, whole = tmp_out / "stopped", tmp_out / "whole"
    run_script("train.py", "-m", *config, f"hydra.sweep.dir={whole}")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", *config, f"hydra.sweep.dir={stopped}"],
                            cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=as_in_a_terminal)
    first = stopped / "epochs=300,hidden=32,p=23,weight_decay=0.1" / "metrics.csv"
    deadline = time.time() + 120
    while (not first.exists() or len(first.read_text().splitlines()) < 100) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait() == 130
    jobs = _jobs(stopped)
    assert len(jobs) == 2
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
        assert 0 < summary["epochs_run"] == len(_rows(job)) < 300
        assert (job / "checkpoints" / "last.ckpt").exists() and not (job / "model.pt").exists()
    run_script("train.py", "-m", *config, f"hydra.sweep.dir={stopped}")
    for job in jobs:
        assert "resuming from" in (job / "train.log").read_text()
        assert_same_files(job, whole / job.name)
