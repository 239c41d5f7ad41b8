"""analyze.py on a sweep with every kind of broken job, and with an output it cannot write.

One bad job never stops the others: each job gets a status and a one-line reason in
summary.csv, and the rest are analysed. An output that cannot be written (a file in the way,
a read-only or full disk) is one line on stderr and exit 1, with no half-written file left.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from modadd.analysis import Settings, analyze
from modadd.files import WriteError

from conftest import run_script

pytestmark = pytest.mark.slow  # each test runs analyze.py on jobs train.py made
QUICK = ["--orders", "1", "--draws", "1", "--neurons", "16"]
JOB = "epochs=2,hidden={},p=7"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "sweep"
    run_script("train.py", "-m", "p=7", "hidden=8,9,10", "epochs=2", "logger=csv", f"hydra.sweep.dir={root}")
    return root


@pytest.fixture
def job(sweep: Path) -> Path:
    return sweep / JOB.format(8)


def edit_config(job: Path, **knobs: object) -> None:
    """Set top-level knobs of the job's recorded config; a knob set to None is removed."""
    path = job / ".hydra" / "config.yaml"
    config = OmegaConf.to_container(OmegaConf.load(path))
    config.update(knobs)
    OmegaConf.save(OmegaConf.create({k: v for k, v in config.items() if v is not None}), path)


def edit_summary(job: Path, **fields: object) -> None:
    path = job / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def break_jobs(root: Path) -> None:
    """One fault per job: the sweep's three jobs, and copies of its first job named by their fault."""
    def fault(name: str) -> Path:
        return Path(shutil.copytree(root / JOB.format(8), root / name))

    edit_config(fault("no_p"), p=None)
    edit_config(fault("p_abc"), p="abc")
    (fault("empty_metrics") / "metrics.csv").write_text("")
    model = fault("corrupt_model") / "model.pt"
    model.write_bytes(model.read_bytes()[:100])
    interrupted = fault("interrupted")
    (interrupted / "model.pt").unlink()
    edit_summary(interrupted, status="interrupted", signal="SIGTERM")
    edit_summary(fault("wandb_failed"), status="wandb_failed", wandb_error="CommError: network is unreachable")
    with (root / JOB.format(8) / "metrics.csv").open("a") as f:
        f.write("2,1.9")  # killed mid-row
    shutil.rmtree(root / JOB.format(9))  # the sweep "stopped" before it
    edit_config(root / JOB.format(10), p=11)  # weights of p=7


def test_sweep_with_broken_jobs_lists_every_job_with_its_reason_and_analyses_the_rest(sweep, tmp_path):
    root = Path(shutil.copytree(sweep, tmp_path / "sweep"))
    break_jobs(root)
    proc = run_script("analyze.py", str(root), *QUICK)
    assert "9 job(s) under" in proc.stdout and "analysing 5, skipping 3 unreadable, 1 not started" in proc.stdout
    with open(root / "analysis" / "summary.csv") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    got = {job: (r["status"], r["analysed"], r["reason"]) for job, r in rows.items()}
    assert got == {
        JOB.format(8): ("ok", "True", ""),
        JOB.format(9): ("not started", "False", "no job dir: the sweep stopped before this job"),
        JOB.format(10): ("unreadable", "False",
                         "weights do not match the config: model.pt holds p=7, .hydra/config.yaml says p=11"),
        "no_p": ("unreadable", "False", "config invalid: .hydra/config.yaml: ConfigAttributeError: Missing key p"),
        "p_abc": ("unreadable", "False", "config invalid: .hydra/config.yaml: p='abc' is invalid: p must be an integer >= 2"),
        "empty_metrics": ("ok", "True", "metrics.csv has no rows (summary.json: 2 epochs run): no curves"),
        "corrupt_model": ("ok", "True", "model.pt: truncated or not a torch file (no complete zip archive, which torch.save "
                                        "writes); analysed from checkpoints/last.ckpt (epoch 1) instead"),
        "interrupted": ("interrupted", "True", "interrupted by SIGTERM after 2 epochs: resumes with the same command; "
                                               "analysed from checkpoints/last.ckpt (epoch 1)"),
        "wandb_failed": ("wandb_failed", "True", "the W&B run did not close cleanly (CommError: network is unreachable): "
                                                 "the model is complete; rerunning the same command logs it again"),
    }
    assert rows[JOB.format(8)]["epochs"] == "2" and rows[JOB.format(9)]["hidden"] == "9"  # the torn row dropped
    for job in (JOB.format(8), "empty_metrics", "corrupt_model", "interrupted", "wandb_failed"):
        assert json.loads((root / "analysis" / job / "analysis.json").read_text())["status"] == rows[job]["status"]


# ---- outputs that cannot be written


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `path` (a small or read-only disk); skips the test where mounting is not allowed."""
    path.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                                   capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root, or CAP_SYS_ADMIN in a container)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr


def assert_nothing_half_written(out: Path) -> None:
    """Every PNG there is whole, and no temporary file is left."""
    assert not list(out.rglob("*.tmp"))
    for png in out.rglob("*.png"):
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), png


def test_output_path_that_is_a_file_is_a_one_line_error(job, tmp_path):
    out = tmp_path / "results"
    out.write_text("not a directory\n")
    proc = run_script("analyze.py", str(job), "--out", str(out), *QUICK, check=False)
    assert_one_line_error(proc, f"{out} is a file, not a directory")
    assert out.read_text() == "not a directory\n"


def assert_cannot_write_into(parent: Path, job: Path) -> None:
    out = parent / "analysis"
    proc = run_script("analyze.py", str(job), "--out", str(out), *QUICK, check=False)
    assert_one_line_error(proc, f"could not write {out} (the analysis)")
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only dir all the same")
def test_read_only_output_dir_is_a_one_line_error(job, tmp_path):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert_cannot_write_into(parent, job)
    finally:
        parent.chmod(0o755)


def test_read_only_disk_is_a_one_line_error(job, tmp_path):
    with tmpfs(tmp_path / "readonly", "ro,size=64k") as parent:
        assert_cannot_write_into(parent, job)


def test_read_only_output_through_the_package_api(job, tmp_path, monkeypatch):
    def read_only(path: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(WriteError) as info:
        analyze(job, tmp_path / "analysis", Settings(orders=1, neurons=[16], draws=1), progress=lambda line: None)
    assert str(info.value) == f"Read-only file system: could not write {tmp_path / 'analysis'} (the analysis)"


def test_full_disk_is_a_one_line_error_and_leaves_no_half_written_file(job, tmp_path):
    with tmpfs(tmp_path / "small", "size=160k") as disk:
        proc = run_script("analyze.py", str(job), "--out", str(disk / "analysis"), *QUICK, check=False)
        assert_one_line_error(proc, "No space left on device: could not write ", str(disk / "analysis"))
        assert_nothing_half_written(disk)


def test_full_disk_at_the_summary_through_the_package_api(job, tmp_path, monkeypatch):
    """The workers' files are written; the disk fills as the parent writes its own (ENOSPC at the sync)."""
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "analysis"
    with pytest.raises(WriteError) as info:
        analyze(job, out, Settings(orders=1, neurons=[16], draws=1), progress=lambda line: None)
    assert str(info.value) == f"No space left on device: could not write {out / 'random_cosine.png'} (the figure random cosine)"
    assert (out / "grokking_curves.png").exists() and not (out / "random_cosine.png").exists()
    assert_nothing_half_written(out)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_killing_analyze_py_ends_its_workers(sweep: Path, tmp_out: Path, signal_name: str):
    import signal
    import sys
    import time

    import psutil

    from conftest import ROOT

    proc = subprocess.Popen([sys.executable, str(ROOT / "analyze.py"), str(sweep), "--out", str(tmp_out / "out")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    def cmdline(child):  # a short-lived child (a zombie, or gone) has none to read
        try:
            return " ".join(child.cmdline())
        except psutil.Error:
            return ""

    while not (workers := [c for c in parent.children() if "spawn_main" in cmdline(c)]):
        assert time.monotonic() < deadline and proc.poll() is None, "analyze.py started no workers"
        time.sleep(0.05)
    time.sleep(1)  # past their start-up, into the work
    proc.send_signal(getattr(signal, signal_name))
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, f"workers still running after analyze.py's {signal_name}: {[w.pid for w in alive]}"
