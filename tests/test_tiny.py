"""modadd.tiny: the background article's tiny networks, checked against plain Python."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_script

from modadd import tiny
from modadd.files import WriteError


def sigmoid(z: float) -> float:
    return 0.5 * (1 + math.tanh(z / 2))  # no overflow at |z| = 3000


# ---------------------------------------------------------------------------- hand-built: exact


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_hand_built_less_than_10_classifies_every_integer_and_real(scale):
    params = tiny.hand_built_less_than_10(scale)
    xs = [float(x) for x in range(-20, 40)] + [x / 100 for x in range(-2000, 3901)]
    out = tiny.less_than_10(params, torch.tensor(xs, dtype=torch.float64))
    assert [o > 0.5 for o in out.tolist()] == [x < 10 for x in xs]
    m = tiny.check_less_than_10(params)
    assert m["accuracy"] == m["accuracy_reals"] == 1.0
    # sigmoid(0) = 0.5 at x = 10, the largest error on the integers; F(9.5) as the article computes it
    assert m["max_error"] == max(abs(sigmoid(scale * (10 - x)) - (x < 10)) for x in range(-20, 40)) == 0.5
    assert m["f_9_5"] == pytest.approx(sigmoid(scale * 0.5))
    assert round(tiny.check_less_than_10(tiny.hand_built_less_than_10(1.0))["f_9_5"], 2) == 0.62  # the article's number


@pytest.mark.parametrize("name", list(tiny.HAND_BUILT_MIN))
def test_hand_built_min_on_every_pair(name):
    params = tiny.HAND_BUILT_MIN[name]
    pairs = [(a, b) for a in range(-50, 50) for b in range(-50, 50)]
    out = tiny.min_model(params, torch.tensor(pairs, dtype=torch.float64)).tolist()
    errors = [abs(o - min(a, b)) for o, (a, b) in zip(out, pairs)]
    m = tiny.check_min(params)
    assert m["domain_size"] == len(pairs) and m["accuracy"] == 1.0 and m["max_error"] == pytest.approx(max(errors))
    if "printed" in name:  # 0.71 * 1.41 = 1.0011: off by 0.0011 |a - b|, at most 0.1089
        assert max(errors) == pytest.approx(0.0011 * 99)
    else:
        assert max(errors) == 0.0


def test_hand_built_is_even_is_the_articles_chain():
    params = tiny.hand_built_is_even()
    xs = list(range(64))
    out = tiny.is_even_model(params, torch.tensor(xs, dtype=torch.float64)).tolist()
    chain = [abs(abs(abs(abs(abs(x - 8) - 4) - 2) - 1) - 1) for x in xs]  # f_1 . f_1 . f_2 . f_4 . f_8
    assert out == chain
    assert out[:16] == [x % 2 for x in range(16)]  # exact on its domain
    m = tiny.check_is_even(params)
    assert m["accuracy"] == 1.0 and m["max_error"] == 0.0 and m["loss"] == 0.0
    assert m["accuracy_beyond"] == np.mean([(c > 0.5) == (x % 2) for x, c in zip(xs[16:], chain[16:])]) < 0.6


def test_describe_min_reads_each_form():
    eq1, article = (tiny.describe_min(tiny.HAND_BUILT_MIN[k]) for k in list(tiny.HAND_BUILT_MIN)[:2])
    assert eq1["verdict"] == "Equation 1, two neurons"
    assert eq1["roles"] == {"fc1": "-0.50 ReLU(a - b)", "fc2": "-0.50 ReLU(b - a)"}
    assert eq1["coefficients"] == {"a": 0.5, "b": 0.5, "ReLU(a - b)": -0.5, "ReLU(b - a)": -0.5, "bias": 0.0}
    assert article["roles"] == {"fc1": "unused", "fc2": "-1.00 ReLU(a - b)"} and article["neurons_used"] == 1
    assert article["verdict"] == "a - ReLU(a - b) (the article's form), one neuron" and article["form_residual"] == 0.0
    zero = {k: torch.zeros_like(v) for k, v in tiny.HAND_BUILT_MIN["a - ReLU(a - b)"].items()}
    assert tiny.describe_min(zero)["verdict"] == "does not compute min"


# ---------------------------------------------------------------------------- gradients and Adam


def _autograd(loss_of, params):
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss = loss_of(p)
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in p.items()}


def test_hand_written_gradients_equal_autograd():
    g = torch.Generator().manual_seed(1)
    x1 = torch.arange(-20, 40, dtype=torch.float64)
    y1 = (x1 < 10).double()
    cases = [
        (tiny._initial({"0": (1, 1)}, 1), tiny.less_than_10_grads, (x1, y1),
         lambda p: torch.nn.functional.binary_cross_entropy_with_logits(x1 * p["0.weight"][0, 0] + p["0.bias"][0], y1)),
    ]
    x2 = torch.randint(-50, 50, (64, 2), generator=g).double()
    y2 = x2.min(1).values
    cases.append((tiny._initial(tiny.MIN_LAYERS, 1), tiny.min_grads, (x2, y2),
                  lambda p: ((tiny.min_model(p, x2) - y2) ** 2).mean()))
    x3 = tiny.IS_EVEN_X
    y3 = x3 % 2
    for seed in range(5):  # some seeds leave units dead: both must agree there too
        cases.append((tiny._initial(tiny.IS_EVEN_LAYERS, seed), tiny.is_even_grads, (x3, y3),
                      lambda p: ((tiny.is_even_model(p, x3) - y3) ** 2).mean()))
    for params, grads, (x, y), loss_of in cases:
        want_loss, want = _autograd(loss_of, params)
        loss, got = grads({k: v.numpy() for k, v in params.items()}, (x.numpy(), y.numpy()))
        assert loss == pytest.approx(want_loss, rel=1e-12)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_adam_steps_as_torch_optim_adam():
    params = tiny._initial(tiny.MIN_LAYERS, 2)
    x = tiny.MIN_GRID[::37]
    y = x.min(1).values
    got, losses = tiny._adam(params, tiny.min_grads, [(x.numpy(), y.numpy())] * 50, lr=0.01)
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    opt = torch.optim.Adam(p.values(), lr=0.01)
    want_losses = []
    for _ in range(50):
        loss = ((tiny.min_model(p, x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        want_losses.append(loss.item())
    np.testing.assert_allclose(losses, want_losses, rtol=1e-9)
    for k in p:
        torch.testing.assert_close(got[k], p[k].detach(), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- trained: as measured


@pytest.fixture(scope="module")
def trained():
    return {"x < 10": tiny.train_less_than_10(0), "min": tiny.train_min(0), "is_even": tiny.train_is_even(0)}


def test_trained_less_than_10_reports_its_weights(trained):
    t = trained["x < 10"]
    w, b = t.params["0.weight"].item(), t.params["0.bias"].item()
    out = [sigmoid(w * x + b) for x in range(-20, 40)]
    m = t.measured
    assert m["M"] == -w and m["threshold"] == -b / w
    assert m["accuracy"] == np.mean([(o > 0.5) == (x < 10) for o, x in zip(out, range(-20, 40))])
    assert m["max_error"] == pytest.approx(max(abs(o - (x < 10)) for o, x in zip(out, range(-20, 40))))
    assert [h["step"] for h in m["history"]] == [10, 100, 300, 1000, 3000] and m["history"][-1]["M"] == m["M"]
    assert len(t.losses) == t.setup["steps"] == 3000


def test_trained_min_computes_min(trained):
    t = trained["min"]
    p = {k: v.numpy() for k, v in t.params.items()}
    pairs = np.array([(a, b) for a in range(-50, 50) for b in range(-50, 50)], dtype=float)
    r1 = np.maximum(pairs @ p["fc1.weight"][0] + p["fc1.bias"][0], 0)
    r2 = np.maximum(pairs @ p["fc2.weight"][0] + p["fc2.bias"][0], 0)
    out = np.stack([pairs[:, 0], pairs[:, 1], r1, r2], 1) @ p["output_layer.weight"][0] + p["output_layer.bias"][0]
    a, b = pairs[:, 0], pairs[:, 1]
    m = t.measured
    assert m["accuracy"] == np.mean(np.round(out) == np.minimum(a, b)) == 1.0
    assert m["max_error"] == pytest.approx(np.abs(out - np.minimum(a, b)).max()) and m["max_error"] < 0.5
    assert m["diff_a_minus_relu"] == pytest.approx(np.abs(out - (a - np.maximum(a - b, 0))).max())
    alpha, beta = p["output_layer.weight"][0, :2]
    assert (m["alpha"], m["beta"]) == (alpha, beta) and alpha + beta == pytest.approx(1, abs=1e-3)
    form = alpha * (a - np.maximum(a - b, 0)) + beta * (b - np.maximum(b - a, 0))
    assert m["form_residual"] == pytest.approx(np.abs(out - form).max()) and m["form_residual"] < 0.5
    # seed 0, as measured: the article's a - ReLU(a - b), one neuron left unused
    assert m["verdict"] == "a - ReLU(a - b) (the article's form), one neuron" and m["neurons_used"] == 1
    assert t.setup["steps"] == 300 * 32 == len(t.losses)  # 1000 pairs in batches of 32: 32 steps an epoch


def test_trained_is_even_reports_its_weights(trained):
    t = trained["is_even"]
    p = {k: v.numpy() for k, v in t.params.items()}
    out = []
    for x in range(16):
        h = np.array([float(x)])
        for name in ("0", "2", "4", "6", "8", "10"):
            h = np.maximum(p[f"{name}.weight"] @ h + p[f"{name}.bias"], 0)
        out.append(h[0])
    out, target = np.array(out), np.arange(16) % 2
    m = t.measured
    assert m["out_min"] == pytest.approx(out.min()) and m["out_max"] == pytest.approx(out.max())
    assert m["spread"] == pytest.approx(out.max() - out.min(), abs=1e-12) and m["mean"] == pytest.approx(out.mean())
    assert m["accuracy"] == np.mean((out > 0.5) == target)
    assert m["loss"] == pytest.approx(np.mean((out - target) ** 2))
    flat = out.max() - out.min() < 0.05
    assert (m["verdict"] == "predicts the mean") == (flat and abs(out.mean() - 0.5) < 0.05)
    assert t.losses[-1] == pytest.approx(m["loss"], abs=1e-6)


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = tiny.train_is_even(3, steps=50), tiny.train_is_even(3, steps=50)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params) and a.losses == b.losses
    c = tiny.train_is_even(4, steps=50)
    assert not torch.equal(a.params["0.weight"], c.params["0.weight"])


# ---------------------------------------------------------------------------- analyze.py --tiny


def test_analyze_tiny_writes_the_table_and_figures(tmp_out):
    proc = run_script("analyze.py", "--tiny", "--out", str(tmp_out / "tiny"), "--seed", "0")
    out = tmp_out / "tiny"
    for name in ("tiny.csv", "tiny.json", "tiny_less_than_10.png", "tiny_min.png", "tiny_is_even.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))
    with (out / "tiny.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["function"], r["kind"]) for r in rows] == [
        ("x < 10", "hand-built"), ("x < 10", "hand-built"), ("x < 10", "trained"),
        ("min(a, b)", "hand-built"), ("min(a, b)", "hand-built"), ("min(a, b)", "hand-built"), ("min(a, b)", "trained"),
        ("is_even", "hand-built"), ("is_even", "trained")]
    assert list(rows[0]) == tiny.COLUMNS and all(r["claim"] and r["measured"] and r["weights"] for r in rows)
    assert rows[7]["accuracy"] == "1.0" and rows[6]["accuracy"] == "1.0"
    saved = json.loads((out / "tiny.json").read_text())
    assert saved["seed"] == 0 and len(saved["networks"]) == len(rows)
    names = {f"{n}.{k}" for n in tiny.IS_EVEN_LAYERS for k in ("weight", "bias")}
    assert saved["networks"][-1]["params"].keys() == names
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 + len(rows) + 1 and lines[1].startswith("x < 10") and lines[-1].startswith("wrote")


@pytest.mark.parametrize("args", [["--tiny", "some/dir"], ["--tiny", "--construct", "gromov"]])
def test_analyze_tiny_with_a_path_or_construct_is_refused(args):
    proc = run_script("analyze.py", *args, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == \
        "analyze.py: error: give either a path to analyse or --construct or --tiny (one of them)"


def test_write_tiny_to_a_file_is_one_line_error_before_any_work(tmp_out):
    (tmp_out / "file").write_text("x")
    with pytest.raises(WriteError, match="is a file, not a directory") as err:
        tiny.write_tiny(tmp_out / "file")
    assert "\n" not in str(err.value) and (tmp_out / "file").read_text() == "x"
