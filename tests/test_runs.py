"""modadd.runs on real job dirs from train.py, and on damaged copies of them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from modadd.runs import Run, RunError, find_jobs, load_run, load_weights, unstarted_jobs

from conftest import ROOT, run_script

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


@contextmanager
def holding(run_dir: Path) -> Iterator[int]:
    """A live process that holds the job's lock, as a training job does; yields its PID and kills it."""
    code = f"from modadd.lock import acquire; import time; l = acquire({str(run_dir)!r}); print('ok', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ok\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def transformer_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "transformer"
    run_script("train.py", "model=transformer", "p=7", "d_model=8", "n_heads=2", "d_head=4", "d_mlp=16", "epochs=2",
               "logger=csv", f"hydra.run.dir={path}")
    return path


def write_summary(job: Path, summary: dict) -> None:
    (job / "summary.json").write_text(json.dumps(summary))


def ended(job: Path, tmp_path: Path, **fields: object) -> Path:
    """A copy of the finished job whose summary.json says it ended otherwise (`fields` replace its own)."""
    run_dir = copy(job, tmp_path)
    write_summary(run_dir, {**json.loads((job / "summary.json").read_text()), **fields})
    return run_dir


def edit_config(job: Path, edit: Callable[[dict], object]) -> None:
    """Apply `edit` to the job's recorded config (.hydra/config.yaml)."""
    path = job / ".hydra" / "config.yaml"
    config = OmegaConf.to_container(OmegaConf.load(path))
    edit(config)
    OmegaConf.save(OmegaConf.create(config), path)


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


def test_killed_job_without_summary_is_incomplete_and_analysed_from_its_checkpoint(job, tmp_path):
    run_dir = copy(job, tmp_path)
    (run_dir / "summary.json").unlink()
    run = load_run(run_dir)
    assert (run.status, run.summary, run.analysable) == ("incomplete", {}, True)
    assert run.reason == "no summary.json: stopped after 3 epochs (killed?): resumes with the same command"
    (run_dir / "model.pt").unlink()  # killed before the end: only the checkpoint
    assert load_run(run_dir).reason.endswith("resumes with the same command; analysed from checkpoints/last.ckpt (epoch 2)")
    assert load_weights(run)[0].shape == (1, 8, 14)


def test_interrupted_job_is_analysed_from_its_checkpoint(job, tmp_path):
    run_dir = ended(job, tmp_path, status="interrupted", signal="SIGTERM")
    (run_dir / "model.pt").unlink()
    run = load_run(run_dir)
    assert (run.status, run.analysable) == ("interrupted", True)
    assert run.reason == ("interrupted by SIGTERM after 3 epochs: resumes with the same command; "
                          "analysed from checkpoints/last.ckpt (epoch 2)")
    (run_dir / "checkpoints" / "last.ckpt").unlink()  # stopped before its first checkpoint
    run = load_run(run_dir)
    assert (run.status, run.analysable) == ("interrupted", False) and run.reason.endswith("no checkpoint yet, nothing to analyse")


def test_job_whose_wandb_run_failed_is_analysable_but_not_ok(job, tmp_path):
    run = load_run(ended(job, tmp_path, status="wandb_failed", wandb_error="CommError: network is unreachable\n  retry"))
    assert (run.status, run.analysable) == ("wandb_failed", True)
    assert run.reason == ("the W&B run did not close cleanly (CommError: network is unreachable): the model is complete; "
                          "rerunning the same command logs it again")


@pytest.mark.parametrize("content", ["", "epoch,train/loss,train/acc,val/loss,val/acc\n"])
def test_killed_job_with_no_epochs_is_incomplete(job, tmp_path, content):
    run_dir = copy(job, tmp_path)
    for name in ("summary.json", "model.pt", "checkpoints/last.ckpt"):
        (run_dir / name).unlink()
    (run_dir / "metrics.csv").write_text(content)
    run = load_run(run_dir)
    assert (run.status, run.reason, run.metrics, run.analysable) == ("incomplete", "no epochs recorded", [], False)


@pytest.mark.parametrize("content", ["", "epoch,train/loss,train/acc,val/loss,val/acc\n"])
def test_finished_job_with_empty_metrics_says_so(job, tmp_path, content):
    run_dir = copy(job, tmp_path)
    (run_dir / "metrics.csv").write_text(content)
    run = load_run(run_dir)
    assert (run.status, run.analysable) == ("ok", True)  # the weights are complete
    assert run.reason == "metrics.csv has no rows (summary.json: 3 epochs run): no curves"


@pytest.mark.parametrize("summary", [None, {"status": "failed", "error": "KeyboardInterrupt: "}], ids=["first run", "resumed"])
def test_job_whose_lock_a_live_process_holds_is_running_whatever_its_files_say(job, tmp_path, summary):
    run_dir = copy(job, tmp_path)
    if summary is None:
        (run_dir / "summary.json").unlink()
    else:
        write_summary(run_dir, summary)  # an earlier attempt's: the dir's new holder is running it again
    with holding(run_dir) as pid:
        run = load_run(run_dir)
        assert (run.status, run.analysable) == ("running", False)
        assert run.reason.startswith(f"running: PID {pid} on {socket.gethostname()} (since ") and run.reason.endswith(", 3 epochs so far")
    assert load_run(run_dir).status == ("incomplete" if summary is None else "failed")  # its holder is gone, however recent its files


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


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda c: c.update(p="abc"), "config invalid: .hydra/config.yaml: p='abc' is invalid: p must be an integer >= 2"),
        (lambda c: c.update(hidden=0), "config invalid: .hydra/config.yaml: hidden=0 is invalid: hidden must be an integer >= 1"),
        (lambda c: c.update(train_fraction=1.5), "config invalid: .hydra/config.yaml: train_fraction=1.5 is invalid: "),
        (lambda c: c.pop("p"), "config invalid: .hydra/config.yaml: ConfigAttributeError: Missing key p"),
    ],
    ids=["p=abc", "hidden=0", "train_fraction=1.5", "no p"],
)
def test_config_out_of_range_is_unreadable_with_the_check_train_py_makes(job, tmp_path, edit, reason):
    run_dir = copy(job, tmp_path)
    edit_config(run_dir, edit)
    run = load_run(run_dir)
    assert (run.status, run.analysable) == ("unreadable", False) and run.reason.startswith(reason) and "\n" not in run.reason


@pytest.mark.parametrize(
    "knob, value, reason",
    [
        ("p", 11, "weights do not match the config: model.pt holds p=7, .hydra/config.yaml says p=11"),
        ("hidden", 9, "weights do not match the config: model.pt holds hidden=8, .hydra/config.yaml says hidden=9"),
        ("members", 2, "weights do not match the config: checkpoints/last.ckpt (epoch 2) holds members=1, "
                       ".hydra/config.yaml says members=2"),
    ],
)
def test_weights_of_another_shape_than_the_config_are_unreadable(job, tmp_path, knob, value, reason):
    run_dir = copy(job, tmp_path)
    edit_config(run_dir, lambda c: c.update({knob: value}))
    run = load_run(run_dir)
    assert (run.status, run.reason, run.analysable) == ("unreadable", reason, False)


@pytest.mark.slow  # trains a transformer
def test_transformer_weights_of_another_width_than_the_config_are_unreadable(transformer_job, tmp_path):
    assert (load_run(transformer_job).status, load_run(transformer_job).analysable) == ("ok", True)
    run_dir = copy(transformer_job, tmp_path)
    edit_config(run_dir, lambda c: c.update(d_model=16))
    run = load_run(run_dir)
    assert (run.status, run.reason) == ("unreadable", "weights do not match the config: model.pt holds d_model=8, "
                                                      ".hydra/config.yaml says d_model=16")


def test_jobs_of_a_sweep_that_have_no_dir_are_not_started(sweep, tmp_path):
    root = Path(shutil.copytree(sweep, tmp_path / "sweep"))
    gone = root / "epochs=3,hidden=8,members=2,p=7"
    shutil.rmtree(gone)
    runs = [load_run(j) for j in find_jobs(root)]
    [missing] = unstarted_jobs(root, runs)
    assert (missing.path, missing.status, missing.reason, missing.analysable) == (
        gone, "not started", "no job dir: the sweep stopped before this job", False)
    assert missing.overrides == {"p": "7", "hidden": "8", "epochs": "3", "logger": "csv", "members": "2"}
    assert (missing.p, missing.hidden, missing.members) == (7, 8, 2)
    with holding(runs[0].path):  # another job of the sweep still runs: the sweep may yet get there
        assert unstarted_jobs(root, [load_run(j) for j in find_jobs(root)])[0].reason == (
            "no job dir: the sweep is still running other jobs")
    gone.mkdir()
    with holding(gone):  # just started: its lock taken, its .hydra/ not written yet
        assert find_jobs(root)[-1] == gone and load_run(gone).status == "running"
    (gone / ".lock").unlink()
    assert unstarted_jobs(root, runs)[0].reason == "its dir holds no .hydra/config.yaml: the job stopped before it began"


def test_sweep_whose_dirs_are_not_named_by_their_overrides_counts_its_missing_jobs(sweep, tmp_path):
    root = Path(shutil.copytree(sweep, tmp_path / "sweep"))
    multirun = root / "multirun.yaml"
    multirun.write_text(multirun.read_text().replace("subdir: ${hydra.job.override_dirname}", "subdir: ${hydra.job.num}"))
    runs = [load_run(root / "epochs=3,hidden=8,members=1,p=7")]
    [missing] = unstarted_jobs(root, runs)
    assert (missing.path.name, missing.status) == ("1 of 2 jobs", "not started")
    assert missing.reason.startswith("1 of the sweep's 2 jobs have no job dir: the sweep stopped before them (")
    assert unstarted_jobs(root, [load_run(j) for j in find_jobs(root)]) == []


@pytest.mark.parametrize("keep_summary", [True, False])
def test_truncated_checkpoint_and_no_model_pt_is_unreadable(job, tmp_path, keep_summary):
    run_dir = copy(job, tmp_path)
    (run_dir / "model.pt").unlink()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    if not keep_summary:
        (run_dir / "summary.json").unlink()
    run = load_run(run_dir)
    assert run.status == "unreadable" and "\n" not in run.reason
    assert run.reason.startswith(f"no usable weights in {run_dir}: no model.pt or model_m*.pt; ")
    assert "last.ckpt: truncated or not a torch file" in run.reason


def test_missing_path_is_unreadable_not_an_exception(tmp_path):
    run = load_run(tmp_path / "nowhere")
    assert (run.status, run.reason, run.config, run.p) == ("unreadable", "no .hydra/config.yaml", {}, None)


@pytest.mark.parametrize("torn", ["3,1.9e", "3,1.9", "3,1.9\n", "3,1.9,0.1,2.0,0.1,4,1.8,0.2,1.9,0.2\n"],
                         ids=["torn number", "fewer fields", "fewer fields, whole line", "two rows run together"])
def test_torn_last_metrics_row_is_skipped(job, tmp_path, torn):
    run_dir = copy(job, tmp_path)
    with (run_dir / "metrics.csv").open("a") as f:
        f.write(torn)
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
    run = load_run(broken)  # finished, so analysed, and the reason says from what
    assert (run.status, run.analysable) == ("ok", True)
    assert run.reason == ("model.pt: truncated or not a torch file (no complete zip archive, which torch.save writes); "
                          "analysed from checkpoints/last.ckpt (epoch 2) instead")
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
