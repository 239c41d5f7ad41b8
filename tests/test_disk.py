"""A full disk stops a job with one line, leaves every earlier file whole, and the same command
continues once there is space again; a W&B log the disk cut short is never reported as ok."""

import json
import subprocess

import pytest
import torch

from conftest import run_script, wandb_inspect

pytestmark = pytest.mark.slow
CONFIG = ["p=23", "hidden=32", "epochs=300", "progress_every=1000"]


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mount point and a function that sets its size (mounting needs root, as in CI)."""
    disk = tmp_path / "disk"
    disk.mkdir()

    def size(kib: int, remount: bool = False) -> None:
        options = f"{'remount,' if remount else ''}size={kib}k"
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()})")

    yield disk, size
    subprocess.run(["umount", str(disk)], capture_output=True)


def test_full_disk_mid_run_is_one_line_and_the_same_command_continues(small_disk):
    """It used to be 155 lines of chained tracebacks, a `last.tmp` left behind and no summary."""
    disk, size = small_disk
    size(100)
    run = disk / "run"
    proc = run_script("train.py", *CONFIG, "logger=csv", f"hydra.run.dir={run}", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert lines[0].startswith("error: No space left on device: could not write ") and str(run) in lines[0]
    assert "run the same command to continue from the checkpoint of epoch" in lines[0]
    assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
    torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)  # the last good one, whole
    if (run / "summary.json").exists():
        assert json.loads((run / "summary.json").read_text())["status"] == "failed"

    size(20000, remount=True)
    run_script("train.py", *CONFIG, "logger=csv", f"hydra.run.dir={run}")
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(300))
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"


def test_wandb_log_cut_short_by_a_full_disk_is_recorded_and_a_rerun_logs_it_again(small_disk, tmp_path):
    """W&B's service drops what a full disk refuses without a word: the job used to exit 0 with
    status ok and a W&B run stuck 'running' part way, and a rerun said 'already finished'."""
    disk, size = small_disk
    size(120)
    run = tmp_path / "run"
    run.mkdir()
    (run / "wandb").symlink_to(disk)  # only W&B's log is on the small disk
    args = [*CONFIG, "~callbacks.fit_stats", f"hydra.run.dir={run}"]  # no media: their failing write would raise
    proc = run_script("train.py", *args, check=False)
    assert proc.returncode == 1 and "the W&B run did not close cleanly" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "wandb_failed" and "did not close cleanly" in summary["wandb_error"]
    assert (run / "model.pt").exists()

    size(20000, remount=True)
    run_script("train.py", *args)
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"
    newest = max((run / "wandb").glob("offline-run-*"), key=lambda d: d.stat().st_mtime)
    w = wandb_inspect(run, newest)
    assert w["state"] == "finished" and w["step"] == 299  # every epoch, those before the rerun too


def test_read_only_run_dir_is_one_line_and_leaves_it_as_it_was(small_disk):
    disk, size = small_disk
    size(2000)
    run = disk / "run"
    tiny = ["p=7", "hidden=8", "logger=csv", f"hydra.run.dir={run}"]
    run_script("train.py", *tiny, "epochs=2")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    proc = run_script("train.py", *tiny, "epochs=4", check=False)  # train it longer: it must write
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert lines[0] == f"error: Read-only file system: could not write {run / '.lock'}"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
