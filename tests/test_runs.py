"""modadd.runs on real job dirs from train.py, and on damaged copies of them."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from modadd.runs import Run, RunError, find_jobs, load_run, load_weights

from conftest import run_script

SMALL = ["p=7", "hidden=8", "epochs=3", "logger=csv"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep of two jobs: members=1 and members=2 (one train.py call for both)."""
    path = tmp_path_factory.mktemp("runs") / "sweep"
    run_script("train.py", "-m", *SMALL, "members=1,2", f"hydra.sweep.dir={path}")
    return path


@pytest.fixture(scope="module")
def job(sweep: Path) -> Path:
    return next(d for d in find_jobs(sweep) if "members=1" in d.name)


@pytest.fixture(scope="module")
def job2(sweep: Path) -> Path:
    return next(d for d in find_jobs(sweep) if "members=2" in d.name)


def copy(job: Path, tmp_path: Path) -> Path:
    """A copy of the job to damage (same mtimes as the original)."""
    return Path(shutil.copytree(job, tmp_path / job.name))


def set_age(job: Path, seconds: float) -> None:
    """Make every file of the job last written `seconds` ago."""
    t = time.time() - seconds
    for f in job.rglob("*"):
        os.utime(f, (t, t))


def write_summary(job: Path, summary: dict) -> None:
    (job / "summary.json").write_text(json.dumps(summary))


def assert_one_line_error(path: Path, *words: str) -> None:
    with pytest.raises(RunError) as info:
        load_weights(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert all(w in message for w in words), message
    assert isinstance(info.value, ValueError)


# ---- find_jobs


def test_find_jobs_on_a_sweep_lists_its_job_dirs_sorted_and_skips_other_dirs(sweep, tmp_path):
    assert [d.name for d in find_jobs(sweep)] == ["epochs=3,hidden=8,members=1,p=7", "epochs=3,hidden=8,members=2,p=7"]
    other = Path(shutil.copytree(sweep, tmp_path / "sweep"))
    for extra in ("analysis/.hydra", ".submitit/1/.hydra", "plots"):
        (other / extra).mkdir(parents=True)
    assert [d.name for d in find_jobs(other)] == [d.name for d in find_jobs(sweep)]
    (tmp_path / "empty_sweep").mkdir()
    (tmp_path / "empty_sweep" / "multirun.yaml").write_text("{}\n")
    assert find_jobs(tmp_path / "empty_sweep") == []  # started, no job yet


def test_find_jobs_on_a_job_or_a_weights_file_is_itself(job):
    assert find_jobs(job) == [job]
    assert find_jobs(str(job)) == [job]
    assert find_jobs(job / "checkpoints" / "last.ckpt") == [job / "checkpoints" / "last.ckpt"]
    assert find_jobs(job / "model.pt") == [job / "model.pt"]


def test_find_jobs_rejects_anything_else(job, tmp_path):
    (tmp_path / "notes.txt").write_text("not a run\n")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "notes.txt", tmp_path / "empty", tmp_path / "missing", job / "metrics.csv"):
        with pytest.raises(RunError, match="is not a run, a sweep or a checkpoint"):
            find_jobs(path)


# ---- statuses


def test_finished_job_is_ok_with_its_config_overrides_metrics_and_summary(job):
    run = load_run(job)
    assert (run.status, run.reason) == ("ok", "")
    assert (run.p, run.hidden, run.members) == (7, 8, 1)
    assert run.config["train_fraction"] == 0.8 and run.config["model"]["p"] == "${p}"  # left unresolved
    assert run.overrides == {"p": "7", "hidden": "8", "epochs": "3", "logger": "csv", "members": "1"}
    assert [r["epoch"] for r in run.metrics] == [0, 1, 2]
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(run.metrics[0])
    assert run.summary["status"] == "ok" and run.summary["epochs_run"] == 3


def test_failed_summary_is_failed_with_the_error_on_one_line(job, tmp_path):
    run_dir = copy(job, tmp_path)
    write_summary(run_dir, {"status": "failed", "error": "RuntimeError: boom\n  at line 3"})
    run = load_run(run_dir)
    assert run.status == "failed" and run.reason == "failed: RuntimeError: boom"
    (run_dir / "model.pt").unlink()  # a job that failed before saving anything is still "failed"
    shutil.rmtree(run_dir / "checkpoints")
    assert load_run(run_dir).status == "failed"


def test_diverged_summary_is_diverged(job, tmp_path):
    run_dir = copy(job, tmp_path)
    summary = json.loads((job / "summary.json").read_text())
    summary["status"], summary["final"]["val/loss"] = "diverged", float("nan")
    write_summary(run_dir, summary)
    run = load_run(run_dir)
    assert (run.status, run.reason) == ("diverged", "diverged: final val/loss nan")
    write_summary(run_dir, {"status": "diverged", "final": None})  # hand-edited: still no exception
    assert load_run(run_dir).reason == "diverged: final loss not finite"


def test_killed_job_without_summary_is_incomplete(job, tmp_path):
    run_dir = copy(job, tmp_path)
    (run_dir / "summary.json").unlink()
    set_age(run_dir, 600)
    run = load_run(run_dir)
    assert run.status == "incomplete" and run.summary == {}
    assert run.reason == "no summary.json: stopped after 3 epochs, last write 10 min ago"
    assert load_weights(run)[0].shape == (1, 8, 14)


@pytest.mark.parametrize("content", ["", "epoch,train/loss,train/acc,val/loss,val/acc\n"])
def test_killed_job_with_no_epochs_is_incomplete(job, tmp_path, content):
    run_dir = copy(job, tmp_path)
    for name in ("summary.json", "model.pt", "checkpoints/last.ckpt"):
        (run_dir / name).unlink()
    (run_dir / "metrics.csv").write_text(content)
    set_age(run_dir, 600)
    run = load_run(run_dir)
    assert (run.status, run.reason, run.metrics) == ("incomplete", "no epochs recorded", [])


def test_job_without_summary_written_to_recently_is_running(job, tmp_path):
    run_dir = copy(job, tmp_path)
    (run_dir / "summary.json").unlink()
    set_age(run_dir, 600)
    os.utime(run_dir / "checkpoints" / "last.ckpt")  # the epoch just saved
    run = load_run(run_dir)
    assert run.status == "running" and run.reason.startswith("running: 3 epochs so far, last write ")
    assert load_run(run_dir, running_window=0).status == "incomplete"
    assert load_run(run_dir, running_window=1200).status == "running"


def test_resumed_job_writing_after_its_old_summary_is_running(job, tmp_path):
    run_dir = copy(job, tmp_path)
    write_summary(run_dir, {"status": "failed", "error": "KeyboardInterrupt: "})
    set_age(run_dir, 600)
    assert load_run(run_dir).status == "failed"
    os.utime(run_dir / "metrics.csv")  # relaunched into the same dir: a new epoch row
    assert load_run(run_dir).status == "running"


def test_fresh_finished_job_is_not_running(job, tmp_path):
    run_dir = copy(job, tmp_path)
    set_age(run_dir, 0)  # all written this second; summary.json is not older than the rest
    assert load_run(run_dir).status == "ok"


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / ".hydra" / "config.yaml").unlink(), "no .hydra/config.yaml"),
        (lambda d: (d / ".hydra" / "config.yaml").write_text("p: [7\nhidden: 8\n"), "config unreadable: .hydra/config.yaml: "),
        (lambda d: (d / ".hydra" / "config.yaml").write_text("- p\n"), "config unreadable: .hydra/config.yaml is not a mapping"),
        (lambda d: (d / "summary.json").write_text('{"status": "ok", "fin'), "summary.json unreadable: "),
        (lambda d: (d / "summary.json").write_text('{"status": "done"}'), "summary.json unreadable: no status among"),
    ],
)
def test_corrupt_config_or_summary_is_unreadable(job, tmp_path, damage, reason):
    run_dir = copy(job, tmp_path)
    damage(run_dir)
    run = load_run(run_dir)
    assert run.status == "unreadable" and run.reason.startswith(reason) and "\n" not in run.reason
    assert len(run.metrics) == 3  # what could be read is still there


@pytest.mark.parametrize("keep_summary", [True, False])
def test_truncated_checkpoint_and_no_model_pt_is_unreadable(job, tmp_path, keep_summary):
    run_dir = copy(job, tmp_path)
    (run_dir / "model.pt").unlink()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    if not keep_summary:
        (run_dir / "summary.json").unlink()
    set_age(run_dir, 600)
    run = load_run(run_dir)
    assert run.status == "unreadable" and "\n" not in run.reason
    assert run.reason.startswith(f"no usable weights in {run_dir}: no model.pt or model_m*.pt; ")
    assert "last.ckpt: truncated or not a torch file" in run.reason


def test_missing_path_is_unreadable_not_an_exception(tmp_path):
    run = load_run(tmp_path / "nowhere")
    assert (run.status, run.reason, run.config, run.p) == ("unreadable", "no .hydra/config.yaml", {}, None)


def test_torn_last_metrics_row_is_skipped(job, tmp_path):
    run_dir = copy(job, tmp_path)
    with (run_dir / "metrics.csv").open("a") as f:
        f.write("3,1.9e")
    assert [r["epoch"] for r in load_run(run_dir).metrics] == [0, 1, 2]


# ---- weights


def test_weights_are_model_pt_and_the_checkpoint_in_seed_layout(job):
    fc1, fc2 = load_weights(job)
    model = torch.load(job / "model.pt", weights_only=True)
    assert fc1.shape == (1, 8, 14) and fc2.shape == (1, 7, 8)
    assert torch.equal(fc1[0], model["fc1.weight"]) and torch.equal(fc2[0], model["fc2.weight"])
    ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(fc1, ckpt["net.W_in"].transpose(1, 2)) and torch.equal(fc2, ckpt["net.W_out"].transpose(1, 2))
    for source in (load_run(job), str(job), job / "model.pt", job / "checkpoints" / "last.ckpt"):
        w1, w2 = load_weights(source)
        assert torch.equal(w1, fc1) and torch.equal(w2, fc2) and w1.is_contiguous()


def test_members_are_stacked_in_order(job2):
    run = load_run(job2)
    assert (run.status, run.members) == ("ok", 2)
    fc1, fc2 = load_weights(run)
    assert fc1.shape == (2, 8, 14) and fc2.shape == (2, 7, 8)
    for k in range(2):
        model = torch.load(job2 / f"model_m{k}.pt", weights_only=True)
        assert torch.equal(fc1[k], model["fc1.weight"]) and torch.equal(fc2[k], model["fc2.weight"])
    ck1, ck2 = load_weights(job2 / "checkpoints" / "last.ckpt")
    assert torch.equal(ck1, fc1) and torch.equal(ck2, fc2)
    assert not torch.equal(fc1[0], fc1[1])  # two seeds, two models


def test_missing_or_corrupt_final_files_fall_back_to_the_checkpoint(job, job2, tmp_path):
    half = copy(job2, tmp_path)
    (half / "model_m1.pt").unlink()  # killed while saving: m0 alone must not pass for the job
    assert [torch.equal(a, b) for a, b in zip(load_weights(half), load_weights(job2))] == [True, True]
    broken = copy(job, tmp_path)
    (broken / "model.pt").write_bytes(b"garbage")
    assert [torch.equal(a, b) for a, b in zip(load_weights(broken), load_weights(job))] == [True, True]
    mixed = copy(job2, tmp_path / "mixed")
    torch.save({"fc1.weight": torch.zeros(4, 14), "fc2.weight": torch.zeros(7, 4)}, mixed / "model_m1.pt")
    assert [torch.equal(a, b) for a, b in zip(load_weights(mixed), load_weights(job2))] == [True, True]
    (mixed / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(RunError, match="members have different shapes.*; no checkpoints/last.ckpt$"):
        load_weights(mixed)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda src: src.read_bytes()[: src.stat().st_size // 2], ["truncated or not a torch file"]),
        (lambda src: src.read_bytes()[:-20], ["truncated or not a torch file"]),
        (lambda src: b"", ["empty file"]),
        (lambda src: b"hello, not a checkpoint\n" * 10, ["truncated or not a torch file"]),
        (lambda src: os.urandom(4096), ["truncated or not a torch file"]),
    ],
)
def test_damaged_weight_files_raise_a_one_line_run_error(job, tmp_path, make, words):
    for name in ("checkpoints/last.ckpt", "model.pt"):
        src = job / name
        bad = tmp_path / src.name
        bad.write_bytes(make(src))
        assert_one_line_error(bad, *words)


def test_torch_files_without_modadd_weights_raise_a_one_line_run_error(tmp_path):
    cases = {
        "other.pt": ({"a": torch.zeros(2)}, "neither a modadd checkpoint"),
        "list.pt": ([torch.zeros(2)], "neither a modadd checkpoint"),
        "flat.pt": ({"fc1.weight": torch.zeros(8, 14, 1), "fc2.weight": torch.zeros(7, 8)}, "not 2-d tensors"),
        "shapes.pt": ({"fc1.weight": torch.zeros(8, 14), "fc2.weight": torch.zeros(6, 8)}, "are not (K, hidden, 2p)"),
    }
    for name, (obj, words) in cases.items():
        torch.save(obj, tmp_path / name)
        assert_one_line_error(tmp_path / name, words)
    assert_one_line_error(tmp_path / "missing.ckpt", "no such file")
    (tmp_path / "empty_job").mkdir()
    with pytest.raises(RunError, match="no model.pt or model_m\\*.pt; no checkpoints/last.ckpt$"):
        load_weights(tmp_path / "empty_job")


def test_checkpoint_with_unexpected_pickled_objects_is_refused(tmp_path):
    """weights_only stays on: only the OmegaConf containers Lightning ckpts hold are allowed."""
    torch.save({"state_dict": {}, "hyper_parameters": {"path": Path("/x")}}, tmp_path / "odd.ckpt")
    assert_one_line_error(tmp_path / "odd.ckpt", "Unsupported global")


# ---- bare weight files


def test_bare_checkpoint_is_a_run_configured_from_its_hyper_parameters(job, tmp_path):
    ckpt = Path(shutil.copy(job / "checkpoints" / "last.ckpt", tmp_path / "grok.ckpt"))
    run = load_run(ckpt)
    assert isinstance(run, Run) and (run.status, run.reason, run.path) == ("ok", "", ckpt)
    assert (run.p, run.hidden, run.members) == (7, 8, 1)
    assert run.config["lr"] == 0.003 and run.config["betas"] == [0.9, 0.999] and type(run.config["betas"]) is list
    assert (run.metrics, run.summary, run.overrides) == ([], {}, {})
    assert torch.equal(load_weights(run)[0], load_weights(job)[0])


def test_bare_model_file_is_a_run_configured_from_its_shapes(job2, tmp_path):
    model = Path(shutil.copy(job2 / "model_m1.pt", tmp_path / "model_m1.pt"))
    run = load_run(model)
    assert (run.status, run.config) == ("ok", {"p": 7, "hidden": 8, "members": 1})
    assert torch.equal(load_weights(run)[0][0], load_weights(job2)[0][1])


def test_weights_file_inside_a_job_takes_the_job_config(job2):
    run = load_run(job2 / "model_m1.pt")
    assert run.status == "ok" and run.config["train_fraction"] == 0.8 and run.overrides["members"] == "2"
    assert run.members == 1  # what this file holds
    assert load_run(job2 / "checkpoints" / "last.ckpt").members == 2


def test_damaged_bare_file_is_unreadable(job, tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes((job / "checkpoints" / "last.ckpt").read_bytes()[:500])
    run = load_run(bad)
    assert run.status == "unreadable" and run.reason.startswith(f"no usable weights: {bad}: truncated")
