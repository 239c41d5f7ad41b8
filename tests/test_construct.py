"""Hand-built networks (modadd.mlp.construct): checked against the formulas they implement, by
exhaustive accuracy over all p*p pairs, and through analyze.py --construct and train.py init=."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import Tensor

from modadd.mlp.construct import CONSTRUCTIONS, gromov_network, random_cosine_network, to_mlp
from modadd.data import all_pairs, one_hot
from modadd.mlp.experiments import accuracy_all_pairs, construction_curve
from modadd.fourier import all_pairs_logits, fit_neurons, wrap_phase

from conftest import run_script

DT = torch.float64


def one_hot_logits(fc1: Tensor, fc2: Tensor, activation) -> Tensor:
    """The seed's forward on one-hot inputs, rows a*p + b: `(..., p*p, p)`."""
    p = fc2.shape[-2]
    x = one_hot(*all_pairs(p), p).to(fc1.dtype)
    return activation(x @ fc1.transpose(-1, -2)) @ fc2.transpose(-1, -2)


def test_gromov_weights_are_gromovs_formula():
    """fc1[n] = (cos(2 pi s(n) a/p + psi1), cos(2 pi s(n) b/p + psi2)), fc2[q, n] =
    cos(-2 pi s(n) q/p - psi1 - psi2), written out from the documented draws: s = a random
    permutation of the neurons mod p (every residue equally often), psi ~ uniform[-pi, pi)."""
    p, N = 11, 30
    fc1, fc2 = gromov_network(p, N, torch.Generator().manual_seed(0), DT)
    gen = torch.Generator().manual_seed(0)
    s = torch.randperm(N, generator=gen) % p
    psi1, psi2 = (2 * torch.rand(2, N, generator=gen, dtype=DT) - 1) * math.pi
    x = torch.arange(p, dtype=DT)
    w = 2 * math.pi * s[:, None].to(DT) / p  # (N, 1)
    torch.testing.assert_close(fc1[:, :p], torch.cos(w * x + psi1[:, None]))
    torch.testing.assert_close(fc1[:, p:], torch.cos(w * x + psi2[:, None]))
    torch.testing.assert_close(fc2, torch.cos(-w * x - psi1[:, None] - psi2[:, None]).T)


def test_gromov_logits_average_to_a_scaled_indicator_of_the_answer():
    """Over random phases, E[logit(a, b, q)] = (N/p) * (p/2) * [q == a+b mod p] for N a multiple
    of p (product-to-sum over all residues); all other terms carry a random phase."""
    p, draws = 7, 4000
    gen = torch.Generator().manual_seed(1)
    nets = [gromov_network(p, p, gen, DT) for _ in range(draws)]
    fc1, fc2 = torch.stack([n[0] for n in nets]), torch.stack([n[1] for n in nets])
    mean = all_pairs_logits(fc1, fc2, "quadratic").mean(0).view(p, p, p)
    a, b, q = torch.meshgrid(*(torch.arange(p),) * 3, indexing="ij")
    expected = (p / 2) * ((a + b) % p == q).to(DT)
    assert (mean - expected).abs().max() < 0.25


@pytest.mark.parametrize("p", [23, 31])
def test_wide_gromov_network_is_exact_on_all_pairs(p):
    fc1, fc2 = gromov_network(p, 8 * p, torch.Generator().manual_seed(2), DT)
    logits = one_hot_logits(fc1, fc2, torch.square)  # independent of all_pairs_logits
    a, b = all_pairs(p)
    assert torch.equal(logits.argmax(-1), (a + b) % p)
    assert accuracy_all_pairs(fc1, fc2, "quadratic").item() == 1.0


def test_fits_recover_gromov_frequencies_and_the_phase_sum_rule():
    p, N = 23, 64
    fc1, fc2 = gromov_network(p, N, torch.Generator().manual_seed(3), DT)
    fits = fit_neurons(fc1, fc2)
    s = torch.randperm(N, generator=torch.Generator().manual_seed(3)) % p  # the draw's own frequencies
    live = s != 0  # frequency 0: constant neurons, nothing to fit
    assert torch.equal(fits.a.freq[live], torch.minimum(s, p - s)[live])  # s and p - s are one frequency
    assert (fits.a.r2[live] > 1 - 1e-9).all() and (fits.a.r2[~live] == 0).all()
    err = wrap_phase(fits.out.phase - fits.a.phase - fits.b.phase)[live].abs()
    assert err.max() < 1e-6


def test_quadratic_construction_beats_relu_at_the_same_width():
    """Measured at p=97: Gromov's network with x^2 is exact from N = 256 (0.953 at N = 64);
    the same neurons under ReLU need N = 512."""
    quad = construction_curve("gromov", 31, neurons=(16, 32, 64, 256), draws=3, seed=0)
    relu = construction_curve("gromov", 31, neurons=(16, 32, 64, 256), draws=3, seed=0, activation="relu")
    means = [r["acc_mean"] for r in quad]
    assert means == sorted(means) and means[-1] == 1.0
    assert all(q["acc_mean"] >= r["acc_mean"] for q, r in zip(quad, relu)) and quad[1]["acc_mean"] > relu[1]["acc_mean"] + 0.1
    assert construction_curve("gromov", 31, neurons=(16, 32, 64, 256), draws=3, seed=0) == quad  # seeded


def test_to_mlp_is_the_same_network():
    for build, activation in CONSTRUCTIONS.values():
        fc1, fc2 = build(13, 40, torch.Generator().manual_seed(4), torch.float32)
        mlp = to_mlp(fc1, fc2, activation)
        a, b = all_pairs(13)
        torch.testing.assert_close(mlp.forward_pairs(a, b), all_pairs_logits(fc1, fc2, activation))
        assert mlp.activation == activation and set(mlp.state_dict()) == {"fc1.weight", "fc2.weight"}
    assert random_cosine_network is CONSTRUCTIONS["cosine"][0]


def test_analyze_construct_then_analyse_and_train_from_the_model(tmp_out):
    out = tmp_out / "gromov"
    proc = run_script("analyze.py", "--construct", "gromov", "--neurons", "8,104", "--p", "13", "--draws", "3", "--out", str(out))
    assert "gromov construction, p=13, quadratic activation" in proc.stdout
    with (out / "construction.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["neurons"]) for r in rows] == [8, 104] and rows[1]["activation"] == "quadratic"
    assert float(rows[0]["acc_mean"]) < float(rows[1]["acc_mean"]) == 1.0
    assert (out / "accuracy_vs_neurons.png").stat().st_size > 0
    for r in rows:  # the table line printed for each N
        assert f"{int(r['neurons']):>6} {float(r['acc_mean']):>9.4f}" in proc.stdout

    # the saved model is the first draw: analyze.py reads it back with its activation
    model = out / "model_N104.pt"
    run_script("analyze.py", str(model), "--orders", "2", "--draws", "2", "--neurons", "16")
    result = json.loads((out / "analysis" / "analysis.json").read_text())
    assert result["activation"] == "quadratic" and result["full_acc"] == 1.0
    assert result["fit"]["phase_sum_error_median"] < 1e-5

    # ... and train.py starts from it (a learning rate too small to move it: it stays exact)
    job = tmp_out / "job"
    run_script("train.py", f"init={model}", "p=13", "hidden=104", "activation=quadratic", "lr=1e-12", "weight_decay=0",
               "epochs=2", "logger=csv", f"hydra.run.dir={job}")
    summary = json.loads((job / "summary.json").read_text())
    assert summary["final"]["train/acc"] == 1.0 and summary["final"]["val/acc"] == 1.0
    trained = torch.load(job / "model.pt")
    torch.testing.assert_close(trained["fc1.weight"], torch.load(model)["state_dict"]["fc1.weight"])


def test_init_of_the_wrong_shape_is_refused_before_any_output(tmp_out):
    run_script("analyze.py", "--construct", "gromov", "--neurons", "8", "--p", "13", "--draws", "1", "--out", str(tmp_out))
    run = tmp_out / "run"
    proc = run_script("train.py", f"init={tmp_out / 'model_N8.pt'}", "p=13", "hidden=9", f"hydra.run.dir={run}", check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "init must match p=13, hidden=9" in proc.stderr and not run.exists()
    proc = run_script("train.py", f"init={tmp_out / 'model_N8.pt'}", "p=13", "hidden=8", f"hydra.run.dir={run}", check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1 and not run.exists()
    assert "was built for activation=quadratic, this run has activation=relu" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--construct", "gromov", "some/dir"], "give either a path to analyse or --construct"),
    ([], "give either a path to analyse or --construct"),
    (["--construct", "gromov", "--p", "1"], "--p=1 is invalid: must be an integer >= 2"),
    (["--construct", "bussmann"], "invalid choice: 'bussmann'"),
])
def test_bad_construct_arguments(args, message):
    proc = run_script("analyze.py", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr
