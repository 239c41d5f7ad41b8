"""train.py end to end, as a user runs it (W&B offline)."""

import csv
import json

import pytest
import torch

from modadd import fourier
from modadd.files import read_metrics
from modadd.data import all_pairs, labels, one_hot, split
from modadd.mlp.model import MLP

from conftest import FAST_GROK, run_script, wandb_inspect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grokked(tmp_path_factory):
    """One run of the small config that generalises fully, shared by the tests below."""
    run = tmp_path_factory.mktemp("grokked") / "run"
    run_script("train.py", *FAST_GROK, f"hydra.run.dir={run}")
    return run


def test_small_config_trains_to_full_validation_accuracy(grokked):
    run = grokked
    for name in (".hydra/config.yaml", "metrics.csv", "checkpoints/last.ckpt", "model.pt", "summary.json", "train.log"):
        assert (run / name).exists(), name
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(250))
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["final"]["val/acc"] == 1.0
    assert summary["grokking"]["val_epoch"] is not None

    # the saved model is the seed's layout; evaluated independently on the validation pairs
    mlp = MLP(31, 128)
    mlp.load_state_dict(torch.load(run / "model.pt"))
    a, b = all_pairs(31)
    _, val = split(31, 0.9, seed=1337)
    pred = mlp(one_hot(a[val], b[val], 31)).argmax(1)
    assert torch.equal(pred, labels(a[val], b[val], 31))


def test_users_sweep_command_makes_six_jobs_with_their_files_and_wandb_runs(tmp_out):
    sweep = tmp_out / "sweep"
    run_script("train.py", "-m", "hidden=64,100,256", "weight_decay=0.1,0.5", "p=11", "epochs=3", f"hydra.sweep.dir={sweep}")
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    expected = {f"epochs=3,hidden={h},p=11,weight_decay={wd}" for h in (64, 100, 256) for wd in (0.1, 0.5)}
    assert {j.name for j in jobs} == expected
    run_ids = set()
    for job in jobs:
        for name in (".hydra/overrides.yaml", "metrics.csv", "checkpoints/last.ckpt", "model.pt", "summary.json"):
            assert (job / name).exists(), f"{job.name}/{name}"
        assert len(read_metrics(job / "metrics.csv")) == 3
        w = wandb_inspect(job)
        run_ids.add(w["run_id"])
        assert w["state"] == "finished" and w["exit_code"] == 0
        assert w["name"] == job.name
        assert w["run"]["run_group"] == str(sweep)
        assert {"train/loss", "train/acc", "val/loss", "val/acc", "epoch"} <= set(w["summary"])
        assert w["summary"]["epoch"] == 2 and w["summary"]["status"] == "ok"
        hidden = int(job.name.split("hidden=")[1].split(",")[0])
        assert w["config"]["hidden"] == hidden and w["config"]["model"]["hidden"] == hidden
    assert len(run_ids) == 6  # one W&B run per job, none reused


def test_csv_logger_choice_runs_without_wandb(tmp_out):
    run = tmp_out / "run"
    run_script("train.py", "p=7", "hidden=8", "epochs=2", "logger=csv", f"hydra.run.dir={run}")
    assert not (run / "wandb").exists()
    assert len(read_metrics(run / "metrics.csv")) == 2


def test_cfg_job_prints_the_composed_config():
    out = run_script("train.py", "--cfg", "job", "hidden=64").stdout
    assert "hidden: 64" in out and "weight_decay: 0.5" in out and "_target_: lightning.Trainer" in out


def test_fit_statistics_per_epoch_match_an_independent_fit_of_the_final_model(grokked):
    rows = read_metrics(grokked / "metrics.csv")
    assert all(0 <= r["fit/frac_same_freq"] <= 1 and r["fit/weight_norm"] > 0 for r in rows)
    progress = [r["epoch"] for r in rows if r["fit/restricted_loss"] == r["fit/restricted_loss"]]
    assert progress[:3] == [0, 50, 100] and progress[-1] == 249
    mlp = MLP(31, 128)
    mlp.load_state_dict(torch.load(grokked / "model.pt"))
    fits = fourier.fit_neurons(mlp.fc1.weight.detach(), mlp.fc2.weight.detach())
    stats = fourier.fit_statistics(fits)
    last = rows[-1]
    for key in ("frac_same_freq", "r2_mean_a", "r2_mean_out", "distinct_freqs"):
        assert last[f"fit/{key}"] == pytest.approx(float(stats[key]), rel=1e-5), key
    assert last["fit/frac_same_freq"] > 0.5 and last["fit/r2_mean_a"] > 0.5  # the grokked net is cosine-like
    assert last["fit/restricted_loss"] < last["fit/excluded_loss"]

    with open(grokked / "neurons.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 128
    assert [int(r["freq_out"]) for r in table] == fits.out.freq.tolist()
    with open(grokked / "freq_counts.csv") as f:
        counts = list(csv.DictReader(f))
    assert len(counts) == 250 and sum(int(v) for k, v in counts[-1].items() if k.startswith("k")) == 128


def test_fit_statistics_charts_and_table_reach_wandb(grokked):
    w = wandb_inspect(grokked)
    assert {"fit/frac_same_freq", "fit/phase_sum_error_median", "fit/restricted_loss", "fit/freq_hist",
            "fit/neuron_table"} <= set(w["summary"])
    charts = {k: w["summary"][f"fit/{k}_table"] for k in ("neuron_0", "neuron_1", "freq_histogram", "phase_sum")}
    p = 31
    assert charts["neuron_0"]["nrows"] == charts["neuron_1"]["nrows"] == 6 * p  # a, b, out and their fits
    assert charts["freq_histogram"]["nrows"] == p // 2
    assert 0 < charts["phase_sum"]["nrows"] <= 128  # the clean neurons
    assert w["summary"]["grokking"]["val_epoch"] is not None


def test_grokking_preset_memorises_long_before_it_generalises(tmp_out):
    run = tmp_out / "run"
    run_script("train.py", "experiment=grokking", "epochs=200", "logger=csv", f"hydra.run.dir={run}")
    rows = read_metrics(run / "metrics.csv")
    train_epoch = next(r["epoch"] for r in rows if r["train/acc"] >= 0.99)
    assert train_epoch < 150  # memorised (the full run: epoch 116)
    assert rows[train_epoch]["val/acc"] < 0.05 and rows[-1]["val/acc"] < 0.9  # not yet generalised
    assert rows[train_epoch]["val/loss"] > rows[0]["val/loss"]  # validation loss above chance


def test_callbacks_run_in_the_order_that_keeps_checkpoints_behind_the_metrics_row():
    """FitStats adds to the row, EpochLog writes it, LastCheckpoint then covers it: a kill between
    two of them never leaves a checkpoint for an epoch missing from metrics.csv."""
    from hydra import compose, initialize_config_dir

    from modadd.callbacks import EpochLog, FitStats, LastCheckpoint
    from modadd.config import CONF_DIR
    from modadd.job import callback_rank

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config")
    names = list(cfg.callbacks)
    fake = {"epoch_log": EpochLog("x.csv"), "fit_stats": FitStats("."), "last_checkpoint": LastCheckpoint(".")}
    ordered = sorted((fake[n] for n in names), key=callback_rank)
    assert [type(c) for c in ordered] == [FitStats, EpochLog, LastCheckpoint]


def test_console_shows_each_library_line_once_without_tips_or_deprecation_notices(tmp_out):
    """Lightning's own console handler used to print each of its lines a second time (raw,
    `INFO: ...`), with an advertising tip and a deprecation notice about torch's pytree API."""
    proc = run_script("train.py", "p=7", "hidden=8", "epochs=2", "logger=csv", f"hydra.run.dir={tmp_out / 'run'}",
                      env={"PYTHONWARNINGS": "default"})
    console = proc.stdout + proc.stderr
    assert console.count("GPU available") == 1 and console.count("`Trainer.fit` stopped") == 1
    assert "Tip:" not in console and "deprecated" not in console and "INFO: " not in console
    log = (tmp_out / "run" / "train.log").read_text()
    assert log.count("GPU available") == 1 and "epoch 2/2" in log  # the job's log keeps every line, once
