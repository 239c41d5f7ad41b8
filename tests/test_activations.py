"""activation=relu|quadratic|gelu end to end: training, the logged fit statistics, analyze.py."""

import csv
import json

import pytest
import torch

from modadd.data import all_pairs, one_hot

from conftest import FAST_GROK, run_script

FUNCTIONS = {"relu": torch.relu, "quadratic": torch.square, "gelu": torch.nn.functional.gelu}


@pytest.mark.slow
def test_a_sweep_over_activations_trains_and_is_analysed_with_each_activation(tmp_out):
    sweep = tmp_out / "sweep"
    run_script("train.py", "-m", "activation=relu,quadratic,gelu", *FAST_GROK[:-1], "epochs=120", "logger=csv",
               f"hydra.sweep.dir={sweep}")
    run_script("analyze.py", str(sweep), "--orders", "1", "--draws", "1", "--neurons", "16")
    with open(sweep / "analysis" / "summary.csv") as f:
        rows = {r["activation"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(FUNCTIONS) and all(r["analysed"] == "True" for r in rows.values())
    for name, f in FUNCTIONS.items():
        (job,) = sweep.glob(f"activation={name},*")
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["final"]["val/acc"] > 0.9, (name, summary["final"])
        assert summary["final"]["fit/restricted_loss"] > 0  # the all-pairs forward ran with it
        result = json.loads((sweep / "analysis" / job.name / "analysis.json").read_text())
        assert result["activation"] == name
        state = torch.load(job / "model.pt")
        p = 31
        a, b = all_pairs(p)
        logits = f(one_hot(a, b, p) @ state["fc1.weight"].T) @ state["fc2.weight"].T  # the seed's forward
        assert result["full_acc"] == pytest.approx((logits.argmax(-1) == (a + b) % p).float().mean().item(), abs=1e-6)
