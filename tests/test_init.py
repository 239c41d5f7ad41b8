"""train.py init=...: start from a job dir or a checkpoint, in sweeps, and resume without the file."""

import csv
import json
import shutil

import pytest
import torch

from conftest import run_script

pytestmark = pytest.mark.slow
SMALL = ["p=7", "hidden=8", "logger=csv"]
FROZEN = ["lr=1e-12", "weight_decay=0"]  # too small a step to move the weights: the init shows through


def weights(path):
    state = torch.load(path)
    return state.get("state_dict", state)


def test_init_from_a_job_dir_and_from_its_checkpoint_one_network_per_member(tmp_out):
    first = tmp_out / "first"
    run_script("train.py", *SMALL, "members=2", "epochs=3", f"hydra.run.dir={first}")
    for source in (first, first / "checkpoints" / "last.ckpt"):
        run = tmp_out / f"from_{source.name}"
        run_script("train.py", *SMALL, *FROZEN, "members=2", "epochs=1", f"init={source}", f"hydra.run.dir={run}")
        for k in (0, 1):  # member k starts from member k of the source
            for name, value in weights(first / f"model_m{k}.pt").items():
                torch.testing.assert_close(weights(run / f"model_m{k}.pt")[name], value)
    proc = run_script("train.py", *SMALL, "members=3", f"init={first}", f"hydra.run.dir={tmp_out / 'bad'}", check=False)
    assert proc.returncode != 0 and "hold 1 or members=3 network(s)" in proc.stderr


def test_a_sweep_from_one_init_is_analysable_and_init_cannot_be_swept(tmp_out):
    source = tmp_out / "source"
    run_script("train.py", *SMALL, "epochs=2", f"hydra.run.dir={source}")
    sweep = tmp_out / "sweep"
    run_script("train.py", "-m", *SMALL, "epochs=2", f"init={source / 'model.pt'}", "weight_decay=0.1,0.2",
               f"hydra.sweep.dir={sweep}")
    jobs = sorted(d.name for d in sweep.iterdir() if (d / ".hydra").is_dir())
    assert jobs == ["epochs=2,hidden=8,p=7,weight_decay=0.1", "epochs=2,hidden=8,p=7,weight_decay=0.2"]  # no nesting
    run_script("analyze.py", str(sweep), "--orders", "1", "--draws", "1", "--neurons", "8")
    with open(sweep / "analysis" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["analysed"] == "True" and r["init"] == str(source / "model.pt") for r in rows)

    proc = run_script("train.py", "-m", *SMALL, f"init={source / 'model.pt'},{source / 'model.pt'}", check=False)
    assert proc.returncode != 0 and "init cannot be swept" in proc.stderr


def test_a_resumed_run_needs_neither_its_init_file_nor_an_undamaged_metrics_file(tmp_out):
    source = tmp_out / "source"
    run_script("train.py", *SMALL, "epochs=2", f"hydra.run.dir={source}")
    init = tmp_out / "init.pt"
    shutil.copy(source / "model.pt", init)
    half, run = tmp_out / "half", tmp_out / "run"
    run_script("train.py", *SMALL, "epochs=2", f"init={init}", f"hydra.run.dir={half}")
    overrides = [*SMALL, "epochs=4", f"init={init}"]
    run_script("train.py", *overrides, f"hydra.run.dir={run}")
    # `run` as if killed after epoch 2 while appending the next row: the checkpoint and rows of
    # the same run's first 2 epochs, a torn row of garbage, no summary; and the init file gone
    shutil.copy(half / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    kept = (half / "metrics.csv").read_bytes()
    (run / "metrics.csv").write_bytes(kept + b"2,0.1\xff\xfe\x00")
    (run / "summary.json").unlink()
    init.unlink()
    proc = run_script("train.py", *overrides, f"resume={run}")
    assert "resuming from" in proc.stdout + proc.stderr
    text = (run / "metrics.csv").read_bytes()
    assert text.startswith(kept) and b"\xff" not in text and b"\x00" not in text  # torn row gone, the rest as written
    assert [r["epoch"] for r in csv.DictReader(text.decode().splitlines())] == ["0", "1", "2", "3"]
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 4
