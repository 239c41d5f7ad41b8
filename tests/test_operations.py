"""Other group operations: exhaustive labels, the data they are defined on, the basis of the fits."""

import csv
import itertools
import json

import pytest
import torch

from modadd.data import ModAddData, labels, operation_pairs, split
from modadd.fourier import addition_basis, all_pairs_logits, primitive_root

from conftest import run_script

P = 13


@pytest.mark.parametrize("operation,answer", [
    ("add", lambda a, b: (a + b) % P),
    ("sub", lambda a, b: (a - b) % P),
    ("mul", lambda a, b: (a * b) % P),
    ("div", lambda a, b: next(c for c in range(P) if (c * b) % P == a)),
    ("x2xyy2", lambda a, b: (a * a + a * b + b * b) % P),
])
def test_labels_of_every_pair(operation, answer):
    a, b = operation_pairs(P, operation)
    expected = [(i, j) for i in range(P) for j in range(P) if operation != "div" or j != 0]
    assert list(zip(a.tolist(), b.tolist())) == expected
    assert labels(a, b, P, operation).tolist() == [answer(i, j) for i, j in expected]


def test_div_data_has_no_zero_divisor_and_a_complete_split():
    data = ModAddData(P, 0.5, seed=0, operation="div")
    data.setup()
    a, b, y = (torch.cat(t) for t in zip(data.train, data.val))
    assert len(a) == P * (P - 1) and (b != 0).all()
    assert torch.equal((y * b) % P, a)
    train, val = split(P, 0.5, 0, "div")
    assert len(train) == int(0.5 * P * (P - 1))


@pytest.mark.parametrize("operation", ["sub", "mul", "div"])
def test_addition_basis_turns_the_task_into_addition(operation):
    """In the new basis, logit (i, j) -> k is the original network's logit for the mapped pair,
    and the true answer maps to (i + j) mod n: checked pair by pair."""
    torch.manual_seed(0)
    fc1, fc2 = torch.randn(6, 2 * P), torch.randn(P, 6)
    f1, f2, basis = addition_basis(fc1, fc2, operation)
    n = f2.shape[0]
    assert n == (P if operation == "sub" else P - 1) and basis
    g = primitive_root(P)
    to_residue = (lambda i: i) if operation == "sub" else (lambda i: pow(g, i, P))
    b_residue = {"sub": lambda j: (-j) % P, "mul": lambda j: pow(g, j, P), "div": lambda j: pow(g, -j % (P - 1), P)}[operation]
    original = all_pairs_logits(fc1, fc2).view(P, P, P)
    rebased = all_pairs_logits(f1, f2).view(n, n, n)
    outputs = [to_residue(k) for k in range(n)]
    for i, j in itertools.product(range(n), repeat=2):
        a, b = to_residue(i), b_residue(j)
        torch.testing.assert_close(rebased[i, j], original[a, b][outputs])
        assert labels(torch.tensor([a]), torch.tensor([b]), P, operation).item() == outputs[(i + j) % n]


@pytest.mark.slow
def test_multiplication_trains_and_its_fits_use_the_discrete_log_basis(tmp_out):
    run = tmp_out / "run"
    run_script("train.py", "operation=mul", "p=31", "train_fraction=0.9", "hidden=128", "lr=0.01",
               "weight_decay=1", "epochs=250", "logger=csv", f"hydra.run.dir={run}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["final"]["val/acc"] > 0.9
    neurons = (run / "neurons.csv").read_text().splitlines()
    assert neurons[0].endswith(",basis") and "discrete log base 3" in neurons[1]
    assert summary["final"]["fit/frac_same_freq"] > 0.5  # cosine neurons in log space
    run_script("analyze.py", str(run), "--orders", "2", "--draws", "2", "--neurons", "16,64")
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert analysis["operation"] == "mul" and analysis["basis"] == "discrete log base 3"
    assert analysis["fit"]["frac_same_freq"] > 0.5 and analysis["val_acc"] > 0.9
    assert analysis["replacement"][0]["acc_mean"] == analysis["basis_acc"]  # the non-zero pairs, in log space


def test_mul_needs_a_prime():
    proc = run_script("train.py", "operation=mul", "p=12", check=False)
    assert proc.returncode != 0 and "p must be a prime" in proc.stderr


@pytest.mark.slow
def test_analysis_skips_an_operation_without_an_addition_basis(tmp_out):
    run = tmp_out / "run"
    run_script("train.py", "operation=x2xyy2", "p=7", "hidden=8", "epochs=2", "logger=csv", f"hydra.run.dir={run}")
    assert "residues" in (run / "neurons.csv").read_text().splitlines()[1]
    proc = run_script("analyze.py", str(run), check=False)
    assert proc.returncode != 0 and "x2xyy2 has no basis in which it is addition" in proc.stderr


@pytest.mark.slow
def test_a_sweep_over_operations_is_analysed_and_compared(tmp_out):
    sweep = tmp_out / "sweep"
    run_script("train.py", "-m", "operation=add,sub,mul,div", "p=7", "hidden=8", "epochs=3", "logger=csv",
               f"hydra.sweep.dir={sweep}")
    run_script("analyze.py", str(sweep), "--orders", "1", "--draws", "1", "--neurons", "8")
    with open(sweep / "analysis" / "summary.csv") as f:
        rows = {r["operation"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"add", "sub", "mul", "div"} and all(r["analysed"] == "True" for r in rows.values())
    assert all(r["distinct_freqs"] and r["val/acc"] for r in rows.values())
    assert len(list((sweep / "analysis").glob("sweep_*.png"))) >= 2
