"""A run dir holds one run: one writer at a time, no other config, and resumes from any path."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, as_in_a_terminal, run_script
from modadd.files import read_csv

TINY = ["p=7", "hidden=8", "epochs=2", "logger=csv"]
LONG = ["p=23", "hidden=32", "epochs=400", "logger=csv"]


def _files(run_dir):
    """Every file of a run dir with its bytes and modification time."""
    return {p.relative_to(run_dir): (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}


def _popen(*args):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            env={**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)


def _wait_for_rows(path, n, proc):
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) > n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never got {n} rows")


@pytest.mark.parametrize("change, named", [(["lr=0.01", "weight_decay=0.1"], "lr: 0.003 -> 0.01; weight_decay: 0.5 -> 0.1"),
                                           (["hidden=16"], "hidden: 8 -> 16"),
                                           (["epochs=1"], "epochs: 2 -> 1")])
def test_another_config_into_a_used_run_dir_is_refused_and_touches_nothing(tmp_out, change, named):
    """It used to resume silently with the old optimiser state (or crash on the weights' shapes
    after overwriting the good run's config and summary)."""
    run = tmp_out / "run"
    run_script("train.py", *TINY, f"hydra.run.dir={run}")
    before = _files(run)
    keys = {c.split("=")[0] for c in change}
    proc = run_script("train.py", *[a for a in TINY if a.split("=")[0] not in keys], *change, f"hydra.run.dir={run}", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and named in lines[0] and "another config" in lines[0]
    assert _files(run) == before


def test_resume_with_a_changed_value_is_refused_by_name(tmp_out):
    run = tmp_out / "run"
    run_script("train.py", *TINY, f"hydra.run.dir={run}")
    before = _files(run)
    proc = run_script("train.py", "hidden=9", f"resume={run}", check=False)
    assert proc.returncode != 0 and "hidden: 8 -> 9" in proc.stderr and "Traceback" not in proc.stderr
    assert _files(run) == before


def test_raising_epochs_trains_on_bit_identical_to_a_longer_run(tmp_out):
    longer, grown = tmp_out / "longer", tmp_out / "grown"
    config = ["p=11", "hidden=16", "logger=csv"]
    run_script("train.py", *config, "epochs=40", f"hydra.run.dir={longer}")
    run_script("train.py", *config, "epochs=20", f"hydra.run.dir={grown}")
    run_script("train.py", *config, "epochs=40", f"hydra.run.dir={grown}")
    for name in ("freq_counts.csv", "model.pt"):
        assert (grown / name).read_bytes() == (longer / name).read_bytes(), name
    a, b = read_csv(longer / "metrics.csv"), read_csv(grown / "metrics.csv")
    assert len(a) == len(b) == 40
    for x, y in zip(a, b):  # the same, but for the progress measures taken at what was then the last epoch
        assert {k: v for k, v in x.items() if v} == {k: v for k, v in y.items() if v and (x[k] or x["epoch"] != "19")}
    summary = json.loads((grown / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_run"] == 40
    assert "epochs: 40" in (grown / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow
def test_a_second_process_on_a_run_dir_is_refused_naming_the_holder(tmp_out):
    """Two writers used to interleave their epochs in one metrics.csv (750 rows for 400 epochs)."""
    run = tmp_out / "run"
    first = _popen(*LONG, f"hydra.run.dir={run}")
    _wait_for_rows(run / "metrics.csv", 20, first)
    config = (run / ".hydra" / "config.yaml").read_bytes()
    for args in (LONG, [*LONG[:-1], "hidden=64"]):  # the same config, and another one
        second = run_script("train.py", *args, f"hydra.run.dir={run}", check=False)
        lines = second.stderr.strip().splitlines()
        assert second.returncode != 0 and len(lines) == 1, second.stderr
        assert f"in use by PID {first.pid}" in lines[0]
    assert first.wait(timeout=300) == 0
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(400))
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 400
    assert (run / ".hydra" / "config.yaml").read_bytes() == config


def test_the_lock_is_held_by_the_job_and_refuses_others(tmp_out):
    """Checked without the preflight too: a job started by a launcher gets the same refusal."""
    from modadd import lock
    from modadd.rundir import RunDirError, claim

    holder = subprocess.Popen([sys.executable, "-c", f"from modadd.lock import acquire; import time; l = acquire({str(tmp_out)!r}); "
                               "print('held', flush=True); time.sleep(60)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock.holder(tmp_out)["pid"] == holder.pid
        with pytest.raises(RunDirError, match=f"in use by PID {holder.pid}"):
            with claim(tmp_out, None, None):
                pass
        assert not (tmp_out / ".hydra").exists()
    finally:
        holder.kill()
        holder.wait()
    assert lock.holder(tmp_out) is None  # the kernel dropped the dead process's lock


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_out):
    run = tmp_out / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 999999, "since": "2026-01-01 00:00:00"}))
    run_script("train.py", *TINY, f"hydra.run.dir={run}")
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"
    assert json.loads((run / ".lock").read_text())["pid"] != 999999


def test_resume_takes_paths_with_spaces_and_one_job_of_a_sweep(tmp_out):
    """Both used to fail in Hydra's override lexer (job dir names hold `=` and `,`)."""
    sweep = tmp_out / "my sweep"
    run_script("train.py", "-m", "p=7", "hidden=8,9", "epochs=2", "logger=csv", f"hydra.sweep.dir={sweep}")
    job = sweep / "epochs=2,hidden=8,p=7"
    run_script("train.py", f"resume={job}", "epochs=3")  # its own overrides, trained one epoch longer
    assert len((job / "metrics.csv").read_text().splitlines()) == 4
    again = run_script("train.py", "-m", f"resume={sweep}", check=False)  # that job's config is no longer the sweep's
    assert again.returncode != 0 and "epochs: 3 -> 2" in again.stderr
    other = sweep / "epochs=2,hidden=9,p=7"
    proc = run_script("train.py", f"resume={other}")
    assert "already finished" in proc.stdout + proc.stderr


def test_a_used_sweep_dir_takes_only_its_own_sweep(tmp_out):
    sweep = tmp_out / "sweep"
    run_script("train.py", "-m", "p=7", "hidden=8", "epochs=2", "logger=csv", f"hydra.sweep.dir={sweep}")
    record = (sweep / "multirun.yaml").read_bytes()
    proc = run_script("train.py", "-m", "p=7", "hidden=10", "epochs=2", "logger=csv", f"hydra.sweep.dir={sweep}", check=False)
    assert proc.returncode != 0 and "holds a sweep started with overrides" in proc.stderr
    assert (sweep / "multirun.yaml").read_bytes() == record and not (sweep / "epochs=2,hidden=10,p=7").exists()


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line(tmp_out):
    # epochs enough that a late signal (a busy machine can starve this process) still lands mid-run
    proc = _popen("p=7", "hidden=8", "epochs=100000", "logger=csv", f"hydra.run.dir={tmp_out / 'run'}")
    time.sleep(1.5)  # importing torch and Lightning
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read()
    assert "Traceback" not in err and "interrupted by SIGINT" in err


@pytest.mark.slow
def test_sigterm_stops_a_sweep_and_exits_143(tmp_out):
    """Lightning's SIGTERMException is a SystemExit: a sweep killed by Slurm used to exit 0. With
    its jobs one after the other (basic launcher), a SIGTERM to the sweep's one process stops it;
    jobs side by side (the CPU default) stop when their group is signalled (test_launchers)."""
    sweep = tmp_out / "sweep"
    proc = _popen("-m", "hydra/launcher=basic", "p=23", "hidden=32", "epochs=400", "seed=1,2", "logger=csv",
                  f"hydra.sweep.dir={sweep}")
    first = sweep / "epochs=400,hidden=32,p=23,seed=1"
    _wait_for_rows(first / "metrics.csv", 20, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert json.loads((first / "summary.json").read_text())["status"] == "interrupted"
    assert not (sweep / "epochs=400,hidden=32,p=23,seed=2").exists()  # the sweep stopped with its job
    run_script("analyze.py", str(sweep), "--orders", "1", "--draws", "1", "--neurons", "16")
    rows = {r["job"]: r for r in read_csv(sweep / "analysis" / "summary.csv")}
    assert rows[first.name]["status"] == "interrupted" and rows[first.name]["analysed"] == "True"
    assert rows["epochs=400,hidden=32,p=23,seed=2"]["status"] == "not started"


def test_how_a_job_runs_is_left_out_of_job_dir_names_and_of_its_identity():
    """rundir.HOW and Hydra's exclude_keys must name the same knobs: a knob free to change in a
    run dir must not rename the dir of a sweep's job either."""
    from hydra import compose, initialize_config_dir

    from modadd.config import CONF_DIR
    from modadd.rundir import HOW

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys) - {"hydra/launcher"}
    assert excluded == set(HOW)


def test_a_run_made_before_a_knob_existed_continues_at_its_default_only():
    """Run dirs written before loss / grokfast existed have no such keys: at the defaults they compute
    what those runs computed, so resuming them is no config change; another value is one."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from modadd.config import CONF_DIR
    from modadd.rundir import ADDED, changes

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        now = OmegaConf.to_container(compose("config"), resolve=False)
        stablemax = OmegaConf.to_container(compose("config", overrides=["loss=stablemax"]), resolve=False)
    before = {k: v for k, v in now.items() if k not in ADDED}
    before["model"] = {k: v for k, v in now["model"].items() if k not in ADDED}
    assert set(ADDED) <= set(now) and set(ADDED) <= set(now["model"])
    assert changes(before, now) == []
    assert changes(before, stablemax) == ["loss: <unset> -> stablemax"]


def test_grokfasts_settings_are_no_change_while_it_is_off():
    from modadd.rundir import changes

    off = {"grokfast": None, "grokfast_alpha": 0.98, "grokfast_lambda": 2.0, "model": {"grokfast_alpha": "${grokfast_alpha}"}}
    assert changes(off, {**off, "grokfast_alpha": 0.9, "grokfast_lambda": 5.0}) == []
    on = {**off, "grokfast": "ema"}
    assert changes(on, {**on, "grokfast_alpha": 0.9}) == ["grokfast_alpha: 0.98 -> 0.9"]
    assert changes(off, {**on, "grokfast_alpha": 0.9}) == ["grokfast: None -> ema", "grokfast_alpha: 0.98 -> 0.9"]
