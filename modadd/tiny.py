"""The three tiny networks of the background article, "How tiny neural networks represent basic
functions": each built by hand, checked on its whole domain, then trained to see whether
gradient descent finds the same algorithm.

The article's point is the one modadd makes for modular addition at a larger scale: a
network's weights can be read as an algorithm. Built by hand, a network is exactly as right as
its algorithm; trained, it may find the same algorithm, a different one, or none:

- x < 10 (one sigmoid neuron, the article's `nn.Sequential(nn.Linear(1, 1), nn.Sigmoid())`):
  sigmoid(10 - x), sharpened to sigmoid(100 (10 - x)). Claim: training converges to
  sigmoid(M (10 - x)) with M growing without end.
- min(a, b) (the article's `MinModel`: two ReLU neurons beside the inputs): its Equation 1,
  min = 0.5 (a + b - ReLU(b - a) - ReLU(a - b)). Claim: the trained network becomes
  a - ReLU(a - b) instead, with one neuron zeroed out.
- is_even on 0..15 (x mod 2; the article's `create_sequential_model([1, 2, 2, 2, 2, 2, 1])`,
  a ReLU after every layer, the last included): |x - 8|, |. - 4|, |. - 2|, |. - 1|, |. - 1|, each
  |y - c| = ReLU(c - y) + ReLU(y - c) from a pair of ReLUs (the article's "6 neurons" count a
  pair as one: 11 ReLUs in all). Claim: exact on 0..15, wrong beyond it; trained, gradient
  descent gets stuck at a local minimum, predicting the mean.

Domains are the article's: x < 10 on the integers -20..39 (`range(-20, 40)`), plus reals on a
0.01 grid of the same interval, since the article evaluates F(9.5); min on all 100 x 100 pairs
of integers in -50..49 (its data is 1000 pairs drawn from `random.randrange(-50, 50)`, which
the trained network is fitted to); is_even on 0..15, and 16..63 for "does not generalise".
A classifier's output counts as 1 where it is > 0.5; min's where it rounds to the minimum.

The article leaves its training code to a notebook; where it is silent (loss, optimiser, lr,
steps, batch size, initialisation) the trainers' docstrings say what is used here. All work is
float64 on the CPU, seeded (PyTorch's default `nn.Linear` initialisation drawn under the seed,
the global RNG left as it was); training is Adam with hand-written gradients in numpy (tested
against autograd and `torch.optim.Adam`), the three networks in about a second. Weights are
dicts of tensors named like the article's `state_dict` keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from modadd.files import make_output_dir, write_atomic, write_csv

Params = dict[str, Tensor]
Arrays = dict[str, np.ndarray]  # the same weights as numpy arrays, as the trainers step them
F64 = torch.float64


@dataclass
class Trained:
    """A trained network: its `params`, the training loss at every step, the setup it was
    trained with, and `measured` (its check and description on the whole domain)."""

    params: Params
    losses: list[float]
    setup: dict[str, Any]
    measured: dict[str, Any] = field(default_factory=dict)


def _initial(layers: dict[str, tuple[int, int]], seed: int) -> Params:
    """PyTorch's default initialisation of `nn.Linear(in, out)` for each layer `name: (in, out)`,
    in order, float64, under `torch.manual_seed(seed)` (the global RNG restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        made = {name: nn.Linear(i, o, dtype=F64) for name, (i, o) in layers.items()}
    return {f"{name}.{k}": v.detach().clone() for name, layer in made.items() for k, v in layer.state_dict().items()}


def _adam(params: Params, grads: Callable[[Arrays, Any], tuple[float, Arrays]], batches: Iterable[Any], lr: float,
          after: Callable[[int, Arrays], None] | None = None,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> tuple[Params, list[float]]:
    """Adam as `torch.optim.Adam` computes it, in numpy: one step per batch, `grads(params,
    batch)` giving (loss, gradients) by a hand-written backward pass (tested against autograd;
    at these sizes ten times faster than autograd and `torch.optim`), `after(step, params)`
    after each step (counted from 1). Returns the trained params and the loss before each step."""
    p = {k: v.detach().numpy().copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    s = {k: np.zeros_like(v) for k, v in p.items()}
    (b1, b2), losses = betas, []
    for step, batch in enumerate(batches, 1):
        loss, g = grads(p, batch)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            s[k] = b2 * s[k] + (1 - b2) * g[k] ** 2
            p[k] -= lr / (1 - b1**step) * m[k] / (np.sqrt(s[k] / (1 - b2**step)) + eps)
        losses.append(float(loss))
        if after is not None:
            after(step, p)
    return {k: torch.from_numpy(v) for k, v in p.items()}, losses


def _t(rows: Any) -> Tensor:
    return torch.tensor(rows, dtype=F64)


# ---------------------------------------------------------------------------- x < 10

LESS_THAN_X = torch.arange(-20, 40, dtype=F64)  # the article's X = range(-20, 40)
LESS_THAN_GRID = torch.arange(-2000, 3901, dtype=F64) / 100  # reals: -20..39 in steps of 0.01 (10.0 exact)


def less_than_10(params: Params, x: Tensor) -> Tensor:
    """sigmoid(w x + b): x (n,) -> (n,). `0.weight` (1, 1), `0.bias` (1,)."""
    return torch.sigmoid(x[:, None] @ params["0.weight"].T + params["0.bias"])[:, 0]


def hand_built_less_than_10(scale: float = 1.0) -> Params:
    """The article's sigmoid(scale (10 - x)): a = -1, b = 10 (scale 1), then 100 for a tighter step."""
    return {"0.weight": _t([[-scale]]), "0.bias": _t([10 * scale])}


def check_less_than_10(params: Params) -> dict[str, Any]:
    """Accuracy on the integers and on the 0.01 grid of reals; on the integers the largest
    |output - [x < 10]| and the binary cross-entropy (from the logit); F(9.5) (the article's
    probe), F(10) and the network as sigmoid(M (threshold - x))."""
    with torch.no_grad():
        out, grid = less_than_10(params, LESS_THAN_X), less_than_10(params, LESS_THAN_GRID)
        target = (LESS_THAN_X < 10).to(F64)
        w, b = params["0.weight"].item(), params["0.bias"].item()
        return {
            "domain": "integers -20..39", "domain_size": len(LESS_THAN_X),
            "accuracy": ((out > 0.5) == (LESS_THAN_X < 10)).to(F64).mean().item(),
            "accuracy_reals": ((grid > 0.5) == (LESS_THAN_GRID < 10)).to(F64).mean().item(),
            "max_error": (out - target).abs().max().item(),
            "loss": nn.functional.binary_cross_entropy_with_logits(w * LESS_THAN_X + b, target).item(),
            "f_9_5": less_than_10(params, _t([9.5])).item(), "f_10": less_than_10(params, _t([10.0])).item(),
            "M": -w, "threshold": -b / w if w != 0 else math.nan,
        }


def less_than_10_grads(p: Arrays, data: tuple[np.ndarray, np.ndarray]) -> tuple[float, Arrays]:
    """Binary cross-entropy of `less_than_10` on `data` = (x (n,), y (n,)) and its gradients,
    in numpy, from the logit z = w x + b: bce = mean(log(1 + e^z) - y z), dbce/dz =
    (sigmoid(z) - y) / n (exact where the sigmoid rounds to 0 or 1, unlike `nn.BCELoss` of a
    sigmoid, which clamps log(0) to -100)."""
    x, y = data
    z = x * p["0.weight"][0, 0] + p["0.bias"][0]
    dz = (1 / (1 + np.exp(-z)) - y) / len(y)
    return np.mean(np.logaddexp(0, z) - y * z), {"0.weight": np.array([[dz @ x]]), "0.bias": np.array([dz.sum()])}


def train_less_than_10(seed: int = 0, steps: int = 3000, lr: float = 0.1,
                       checkpoints: Sequence[int] = (10, 100, 300, 1000, 3000)) -> Trained:
    """One sigmoid neuron fitted to the article's 60 integers. The article says only that it
    converges to sigmoid(M (10 - x)) with M growing; used here: binary cross-entropy (its
    "logistic regression"), full batch, Adam at lr 0.1, 3000 steps. `measured["history"]` has
    M and the threshold at each of `checkpoints`."""
    data = (LESS_THAN_X.numpy(), (LESS_THAN_X < 10).to(F64).numpy())
    history = []

    def record(step: int, p: Arrays) -> None:
        if step in checkpoints:
            w, b = p["0.weight"].item(), p["0.bias"].item()
            history.append({"step": step, "M": -w, "threshold": -b / w if w != 0 else math.nan})

    params, losses = _adam(_initial({"0": (1, 1)}, seed), less_than_10_grads, [data] * steps, lr, record)
    setup = {"loss": "binary cross-entropy", "optimiser": "Adam", "lr": lr, "steps": steps, "batch": "full (60)",
             "data": "integers -20..39", "seed": seed}
    return Trained(params, losses, setup, {**check_less_than_10(params), "history": history})


# ---------------------------------------------------------------------------- min(a, b)

MIN_VALUES = torch.arange(-50, 50, dtype=F64)  # random.randrange(-50, 50)
MIN_GRID = torch.cartesian_prod(MIN_VALUES, MIN_VALUES)  # (10000, 2): every pair (a, b)
MIN_LAYERS = {"fc1": (2, 1), "fc2": (2, 1), "output_layer": (4, 1)}


def min_model(params: Params, x: Tensor) -> Tensor:
    """The article's MinModel: x (n, 2) = (a, b) -> (n,), output_layer over [a, b, ReLU(fc1 x),
    ReLU(fc2 x)]. `fc1.weight`, `fc2.weight` (1, 2), `fc1.bias`, `fc2.bias` (1,),
    `output_layer.weight` (1, 4), `output_layer.bias` (1,)."""
    r1 = torch.relu(x @ params["fc1.weight"].T + params["fc1.bias"])
    r2 = torch.relu(x @ params["fc2.weight"].T + params["fc2.bias"])
    return (torch.cat((x, r1, r2), -1) @ params["output_layer.weight"].T + params["output_layer.bias"])[:, 0]


def _min_params(fc1: list[float], fc2: list[float], out: list[float]) -> Params:
    return {"fc1.weight": _t([fc1]), "fc1.bias": _t([0.0]), "fc2.weight": _t([fc2]), "fc2.bias": _t([0.0]),
            "output_layer.weight": _t([out]), "output_layer.bias": _t([0.0])}


HAND_BUILT_MIN: dict[str, Params] = {
    # Equation 1: fc1 = ReLU(a - b), fc2 = ReLU(b - a), as the article's MinModel comments them
    "Equation 1: 0.5 (a + b - ReLU(b - a) - ReLU(a - b))": _min_params([1, -1], [-1, 1], [0.5, 0.5, -0.5, -0.5]),
    # the form the article reads off its trained network, with exact weights
    "a - ReLU(a - b)": _min_params([0, 0], [1, -1], [1, 0, 0, -1]),
    # the article's printout of its trained network, as rounded there (0.71 * 1.41 = 1.0011)
    "the article's printed trained weights (2 decimals)": _min_params([0, 0], [0.71, -0.71], [1, 0, 0, -1.41]),
}


def check_min(params: Params) -> dict[str, Any]:
    """On all 10000 pairs: accuracy (output rounds to min(a, b)), largest |output - min| and MSE."""
    with torch.no_grad():
        error = min_model(params, MIN_GRID) - MIN_GRID.min(1).values
        return {"domain": "a, b in -50..49 (all pairs)", "domain_size": len(MIN_GRID),
                "accuracy": (error.abs() < 0.5).to(F64).mean().item(), "max_error": error.abs().max().item(),
                "loss": (error**2).mean().item()}


def describe_min(params: Params, unused: float = 0.05, aligned: float = 0.999) -> dict[str, Any]:
    """What each neuron does and which exact form of min the network is (`verdict`: the form and
    how many neurons carry it, or "does not compute min").

    Every network of this shape computing min is alpha (a - ReLU(a - b)) + beta (b - ReLU(b - a))
    with alpha + beta = 1 (alpha = 1: the article's a - ReLU(a - b); 0: its mirror; 0.5:
    Equation 1); alpha and beta are the output layer's direct weights on a and b, and
    `form_residual` is the largest |output - that form| over the grid. `diff_a_minus_relu` is the
    largest |output - (a - ReLU(a - b))| (a - ReLU(a - b) is min itself, so this is the max
    error). A neuron is "unused" where it changes the output by less than `unused` anywhere on
    the grid, "k ReLU(a - b)" (or b - a) where its weights are within cos >= `aligned` of that
    direction; `coefficients` sums the neurons' k onto ReLU(a - b) and ReLU(b - a) beside the
    direct weights (a neuron of neither direction is left out of them, its role says what it is).
    """
    with torch.no_grad():
        a, b = MIN_GRID[:, 0], MIN_GRID[:, 1]
        out = min_model(params, MIN_GRID)
        alpha, beta = params["output_layer.weight"][0, :2].tolist()
        coefficients = {"a": alpha, "b": beta, "ReLU(a - b)": 0.0, "ReLU(b - a)": 0.0,
                        "bias": params["output_layer.bias"].item()}
        roles, used = {}, 0
        for k, name in enumerate(("fc1", "fc2")):
            w, c = params[f"{name}.weight"][0], params[f"{name}.bias"][0].item()
            v = params["output_layer.weight"][0, 2 + k].item()
            if (v * torch.relu(MIN_GRID @ w + c)).abs().max().item() < unused:
                roles[name] = "unused"
                continue
            used += 1
            norm = w.norm().item()  # 0: a constant neuron (its bias alone), of no direction
            cos = (w @ _t([1, -1])).item() / (math.sqrt(2) * norm) if norm else 0.0
            if abs(cos) >= aligned:
                scale, arg = (w[0].item(), "a - b") if cos > 0 else (w[1].item(), "b - a")
                coefficients[f"ReLU({arg})"] += v * scale
                offset = f" {'+' if c > 0 else '-'} {abs(c / scale):.2f}" if abs(c / scale) >= 0.005 else ""
                roles[name] = f"{v * scale:+.2f} ReLU({arg}{offset})"
            else:
                roles[name] = f"{v:+.2f} ReLU({w[0].item():.2f} a {w[1].item():+.2f} b {c:+.2f})"
        if abs(alpha - 1) < 0.01:
            verdict = "a - ReLU(a - b) (the article's form)"
        elif abs(beta - 1) < 0.01:
            verdict = "b - ReLU(b - a) (the article's form, mirrored)"
        elif abs(alpha - 0.5) < 0.01 and abs(beta - 0.5) < 0.01:
            verdict = "Equation 1"
        else:
            verdict = f"{alpha:.2f} (a - ReLU(a - b)) + {beta:.2f} (b - ReLU(b - a))"
        verdict += ", " + ("no neuron", "one neuron", "two neurons")[used]
        if (out - MIN_GRID.min(1).values).abs().max() >= 0.5:
            verdict = "does not compute min"
        form = alpha * (a - torch.relu(a - b)) + beta * (b - torch.relu(b - a))
        return {"alpha": alpha, "beta": beta, "form_residual": (out - form).abs().max().item(),
                "diff_a_minus_relu": (out - (a - torch.relu(a - b))).abs().max().item(),
                "coefficients": coefficients, "neurons_used": used, "roles": roles, "verdict": verdict}


def min_grads(p: Arrays, data: tuple[np.ndarray, np.ndarray]) -> tuple[float, Arrays]:
    """MSE of `min_model` on `data` = (x (n, 2), y (n,)) and its gradients, in numpy."""
    x, y = data
    w = np.concatenate([p["fc1.weight"], p["fc2.weight"]])  # (2 neurons, 2 inputs)
    h = x @ w.T + np.concatenate([p["fc1.bias"], p["fc2.bias"]])  # (n, 2 neurons)
    r = np.maximum(h, 0)
    direct, through = p["output_layer.weight"][0, :2], p["output_layer.weight"][0, 2:]
    error = x @ direct + r @ through + p["output_layer.bias"][0] - y
    d_out = 2 * error / len(y)
    d_h = d_out[:, None] * through * (h > 0)
    d_w, d_b = d_h.T @ x, d_h.sum(0)
    return np.mean(error**2), {"fc1.weight": d_w[:1], "fc1.bias": d_b[:1], "fc2.weight": d_w[1:], "fc2.bias": d_b[1:],
                               "output_layer.weight": np.concatenate([x.T @ d_out, r.T @ d_out])[None],
                               "output_layer.bias": d_out.sum(keepdims=True)}


def train_min(seed: int = 0, epochs: int = 300, batch: int = 32, lr: float = 0.01, pairs: int = 1000) -> Trained:
    """The article's MinModel fitted to `pairs` random pairs from -50..49 for its 300 epochs.
    The article gives only the data and the epochs; used here: MSE, Adam at lr 0.01, minibatches
    of 32 in a fresh order each epoch (9 600 steps). Measured on the whole grid."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(-50, 50, (pairs, 2), generator=generator).to(F64)
    x, y = x.numpy(), x.min(1).values.numpy()
    order = ((x[idx], y[idx]) for _ in range(epochs)
             for idx in torch.randperm(pairs, generator=generator).split(batch))
    params, losses = _adam(_initial(MIN_LAYERS, seed), min_grads, order, lr)
    setup = {"loss": "MSE", "optimiser": "Adam", "lr": lr, "epochs": epochs, "batch": batch,
             "steps": len(losses), "data": f"{pairs} random pairs from -50..49", "seed": seed}
    return Trained(params, losses, setup, {**check_min(params), **describe_min(params)})


# ---------------------------------------------------------------------------- is_even

IS_EVEN_X = torch.arange(0, 16, dtype=F64)  # the article's X = range(0, 16)
IS_EVEN_BEYOND = torch.arange(16, 64, dtype=F64)  # "it doesn't generalise to new data points"
IS_EVEN_WIDTHS = (1, 2, 2, 2, 2, 2, 1)  # the article's create_sequential_model(layers_list)
IS_EVEN_LAYERS = {str(2 * i): (IS_EVEN_WIDTHS[i], IS_EVEN_WIDTHS[i + 1]) for i in range(len(IS_EVEN_WIDTHS) - 1)}


def is_even_model(params: Params, x: Tensor) -> Tensor:
    """The article's network: x (n,) -> (n,), Linear then ReLU six times (the output's too).
    `0.weight` (2, 1), `2.weight` .. `8.weight` (2, 2), `10.weight` (1, 2), biases (out,)."""
    h = x[:, None]
    for name in IS_EVEN_LAYERS:
        h = torch.relu(h @ params[f"{name}.weight"].T + params[f"{name}.bias"])
    return h[:, 0]


def hand_built_is_even() -> Params:
    """The article's hand-wired weights: f_1 . f_1 . f_2 . f_4 . f_8 (x), f_c(y) = |y - c| as
    ReLU(c - y) + ReLU(y - c); each layer reads the sum of the last pair (`abs_weight_matrix`)."""
    params = {"0.weight": _t([[-1], [1]]), "0.bias": _t([8, -8])}
    for name, c in zip(("2", "4", "6", "8"), (4, 2, 1, 1)):
        params[f"{name}.weight"], params[f"{name}.bias"] = _t([[-1, -1], [1, 1]]), _t([c, -c])
    params["10.weight"], params["10.bias"] = _t([[1, 1]]), _t([0])
    return params


def check_is_even(params: Params) -> dict[str, Any]:
    """On 0..15: accuracy (output > 0.5 read as odd, the target being x mod 2), largest
    |output - x mod 2|, MSE; and the accuracy on 16..63, beyond the domain."""
    with torch.no_grad():
        out, beyond = is_even_model(params, IS_EVEN_X), is_even_model(params, IS_EVEN_BEYOND)
        target = IS_EVEN_X % 2
        return {"domain": "integers 0..15", "domain_size": len(IS_EVEN_X),
                "accuracy": ((out > 0.5).to(F64) == target).to(F64).mean().item(),
                "max_error": (out - target).abs().max().item(), "loss": ((out - target) ** 2).mean().item(),
                "accuracy_beyond": ((beyond > 0.5).to(F64) == IS_EVEN_BEYOND % 2).to(F64).mean().item()}


def describe_is_even(params: Params, flat: float = 0.05) -> dict[str, Any]:
    """The output's range, spread (max - min) and mean over 0..15 against the target's mean
    0.5 (the best constant, MSE 0.25), and a verdict: "predicts the mean" (spread and |mean -
    0.5| both under `flat`), "constant" (another constant, e.g. a dead ReLU's 0), or "varies"."""
    with torch.no_grad():
        out = is_even_model(params, IS_EVEN_X)
        lo, hi, mean = out.min().item(), out.max().item(), out.mean().item()
        if hi - lo < flat:
            verdict = "predicts the mean" if abs(mean - 0.5) < flat else f"constant {mean:.2f}"
        else:
            verdict = "varies"
        return {"out_min": lo, "out_max": hi, "spread": hi - lo, "mean": mean, "verdict": verdict}


def is_even_grads(p: Arrays, data: tuple[np.ndarray, np.ndarray]) -> tuple[float, Arrays]:
    """MSE of `is_even_model` on `data` = (x (n,), y (n,)) and its gradients, in numpy."""
    x, y = data
    inputs, pre = [], []  # each layer's input (n, in) and pre-activation (n, out)
    h = x[:, None]
    for name in IS_EVEN_LAYERS:
        inputs.append(h)
        pre.append(h @ p[f"{name}.weight"].T + p[f"{name}.bias"])
        h = np.maximum(pre[-1], 0)
    error = h[:, 0] - y
    grads, d_h = {}, 2 * error[:, None] / len(y)
    for name, h_in, z in reversed(list(zip(IS_EVEN_LAYERS, inputs, pre))):
        d_z = d_h * (z > 0)
        grads[f"{name}.weight"], grads[f"{name}.bias"] = d_z.T @ h_in, d_z.sum(0)
        d_h = d_z @ p[f"{name}.weight"]
    return np.mean(error**2), grads


def train_is_even(seed: int = 0, steps: int = 2000, lr: float = 0.01) -> Trained:
    """The article's network, PyTorch's default initialisation, fitted to x mod 2 on 0..15. The
    article says only that it gets stuck predicting the mean; used here: MSE (whose best
    constant is the mean), full batch, Adam at lr 0.01, 2000 steps."""
    data = (IS_EVEN_X.numpy(), (IS_EVEN_X % 2).numpy())
    params, losses = _adam(_initial(IS_EVEN_LAYERS, seed), is_even_grads, [data] * steps, lr)
    setup = {"loss": "MSE", "optimiser": "Adam", "lr": lr, "steps": steps, "batch": "full (16)",
             "data": "integers 0..15", "seed": seed}
    return Trained(params, losses, setup, {**check_is_even(params), **describe_is_even(params)})


# ---------------------------------------------------------------------------- figures


def _less_than_figure(nets: dict[str, Params]) -> Figure:
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (lo, hi) in zip(axes, ((-20, 39), (7, 13))):
        grid = LESS_THAN_GRID[(LESS_THAN_GRID >= lo) & (LESS_THAN_GRID <= hi)]
        ints = LESS_THAN_X[(LESS_THAN_X >= lo) & (LESS_THAN_X <= hi)]
        ax.plot(grid, (grid < 10).to(F64), color="black", lw=1, ls="--", label="target x < 10")
        for name, params in nets.items():
            with torch.no_grad():
                line, = ax.plot(grid, less_than_10(params, grid), lw=1.5, label=name)
                ax.plot(ints, less_than_10(params, ints), "o", ms=3, color=line.get_color())
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set(xlabel="x", ylabel="output", xlim=(lo, hi), title="integers -20..39" if lo == -20 else "near the step")
    axes[0].legend(fontsize=8, loc="center left")
    fig.suptitle("x < 10: one sigmoid neuron (dots: the article's integers)")
    return fig


def _min_figure(nets: dict[str, Params], trained: Params) -> Figure:
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, middle, right = fig.subplots(1, 3, width_ratios=(1, 1.1, 1.2))
    b0 = 10.0
    x = torch.stack((MIN_VALUES, torch.full_like(MIN_VALUES, b0)), 1)
    left.plot(MIN_VALUES, x.min(1).values, color="black", lw=5, alpha=0.25, label="min(a, b)")
    with torch.no_grad():
        for (name, params), style in zip(nets.items(), ("-", "--", ":")):
            left.plot(MIN_VALUES, min_model(params, x), lw=1.5, ls=style, label=name)
        error = (min_model(trained, MIN_GRID) - MIN_GRID.min(1).values).reshape(len(MIN_VALUES), len(MIN_VALUES))
    left.set(xlabel="a", ylabel="output", title=f"along b = {b0:g}")
    left.legend(fontsize=7, loc="lower right")
    bound = max(error.abs().max().item(), 1e-12)
    image = middle.imshow(error.T, origin="lower", extent=(-50.5, 49.5, -50.5, 49.5), cmap="RdBu_r",
                          vmin=-bound, vmax=bound)
    fig.colorbar(image, ax=middle, shrink=0.8, format="%.1e")
    middle.set(xlabel="a", ylabel="b", title="trained: output - min(a, b)")
    terms = ["a", "b", "ReLU(a - b)", "ReLU(b - a)"]
    width = 0.8 / len(nets)
    for k, (name, params) in enumerate(nets.items()):
        coefficients = describe_min(params)["coefficients"]
        right.bar([i + (k - (len(nets) - 1) / 2) * width for i in range(len(terms))],
                  [coefficients[t] for t in terms], width, label=name)
    right.set_xticks(range(len(terms)), [t.replace("(", "\n(") for t in terms], fontsize=8)
    right.axhline(0, color="black", lw=0.5)
    right.set(title="coefficient of each term", ylim=(-1.15, 1.45))
    right.legend(fontsize=7, loc="upper right")
    fig.suptitle("min(a, b): the article's MinModel on all pairs of -50..49")
    return fig


def _is_even_figure(nets: dict[str, Params], losses: list[float]) -> Figure:
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    x = torch.arange(0, 32, dtype=F64)
    left.axvspan(-0.5, 15.5, color="0.92", label="domain 0..15")
    left.plot(x, x % 2, "s", color="black", ms=7, mfc="none", label="target x mod 2")
    with torch.no_grad():
        for (name, params), marker in zip(nets.items(), ("o", "^")):
            left.plot(x, is_even_model(params, x), marker, ms=4, ls="-", lw=0.8, label=name)
        beyond = is_even_model(nets["hand-built"], x)
    left.set(xlabel="x", ylabel="output", title="output against x mod 2", ylim=(-0.15, 1.9))
    top = int(x[beyond > 1.9][0].item()) if (beyond > 1.9).any() else None
    if top is not None:
        left.annotate(f"hand-built: x - 16, {beyond[-1].item():g} at x = {x[-1].item():g}", (top, 1.85), (19, 1.45),
                      fontsize=7, arrowprops={"arrowstyle": "->", "lw": 0.6})
    left.legend(fontsize=7, loc="upper left", framealpha=0.9, ncols=2)
    right.plot(range(1, len(losses) + 1), losses, lw=1, label="trained")
    right.axhline(0.25, color="grey", ls="--", lw=1, label="0.25: predicting the mean 0.5")
    right.axhline(0.5, color="grey", ls=":", lw=1, label="0.5: predicting 0")
    right.set(xscale="log", xlabel="step", ylabel="MSE", title="training loss (full batch)",
              ylim=(0, max(0.6, *losses[:1])))
    right.legend(fontsize=7)
    fig.suptitle("is_even: the article's 1-2-2-2-2-2-1 ReLU chain")
    return fig


# ---------------------------------------------------------------------------- the table

COLUMNS = ["function", "kind", "network", "domain", "domain_size", "accuracy", "max_error", "loss", "weights",
           "claim", "measured"]


def weights_text(params: Params) -> str:
    """Each tensor rounded to 2 decimals, as the article prints its state_dict."""
    def short(v: Tensor) -> str:
        rounded = (torch.round(v, decimals=2) + 0.0).tolist()  # + 0.0: no "-0"
        return json.dumps(rounded).replace(".0,", ",").replace(".0]", "]")

    return "; ".join(f"{k}: {short(v)}" for k, v in params.items())


def _row(function: str, kind: str, network: str, params: Params, measured: dict[str, Any], claim: str,
         outcome: str, **extra: Any) -> dict[str, Any]:
    return {"function": function, "kind": kind, "network": network,
            **{k: measured[k] for k in ("domain", "domain_size", "accuracy", "max_error", "loss")},
            "weights": weights_text(params), "claim": claim, "measured": outcome,
            "details": {k: v for k, v in measured.items() if k not in COLUMNS}, **extra,
            "params": {k: v.tolist() for k, v in params.items()}}


def _setup_text(setup: dict[str, Any]) -> str:
    epochs = f"{setup['epochs']} epochs = " if "epochs" in setup else ""
    return (f"{setup['optimiser']} lr {setup['lr']:g}, {setup['loss']}, {epochs}{setup['steps']} steps, "
            f"batch {setup['batch']}, seed {setup['seed']}")


def tiny_rows(seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Trained], dict[str, Params]]:
    """Every network checked and trained (with `seed`): the rows of `write_tiny`, the trained
    networks and the hand-built ones."""
    rows = []
    built = {"sigmoid(10 - x)": hand_built_less_than_10(1.0), "sigmoid(100 (10 - x))": hand_built_less_than_10(100.0)}
    for (name, params), claim in zip(built.items(), ("F(9.5) = 0.62", "F(9.5) ~ 1")):
        m = check_less_than_10(params)
        rows.append(_row("x < 10", "hand-built", name, params, m, claim,
                         f"F(9.5) = {m['f_9_5']:.3f}, F(10) = {m['f_10']:.3f}; "
                         f"accuracy on the 0.01 grid {m['accuracy_reals']:.4f}"))
    trained = {"x < 10": train_less_than_10(seed), "min(a, b)": train_min(seed), "is_even": train_is_even(seed)}
    t = trained["x < 10"]
    m = t.measured
    growth = ", ".join(f"{h['M']:.2f}" for h in m["history"])
    steps = ", ".join(str(h["step"]) for h in m["history"])
    between = " (between the integers 9 and 10)" if 9 < m["threshold"] < 10 else ""
    rows.append(_row("x < 10", "trained", _setup_text(t.setup), t.params, m,
                     "converges to sigmoid(M (10 - x)), M keeps growing",
                     f"sigmoid(M (t - x)), M = {m['M']:.2f}, t = {m['threshold']:.3f}{between}; "
                     f"M at steps {steps}: {growth}; F(9.5) = {m['f_9_5']:.3f}, F(10) = {m['f_10']:.3f}; "
                     f"accuracy on the 0.01 grid {m['accuracy_reals']:.4f}",
                     setup=t.setup))
    for name, params in HAND_BUILT_MIN.items():
        m = {**check_min(params), **describe_min(params)}
        claim = "computes min (printed: fc1 zeroed, fc2 [0.71, -0.71], output [1, 0, 0, -1.41])" \
            if "printed" in name else "computes min exactly"
        rows.append(_row("min(a, b)", "hand-built", name, params, m, claim,
                         f"max |output - min| = {m['max_error']:.3g}; {m['verdict']}"))
    t = trained["min(a, b)"]
    m = t.measured
    roles = ", ".join(f"{k}: {v}" for k, v in m["roles"].items())
    rows.append(_row("min(a, b)", "trained", _setup_text(t.setup), t.params, m,
                     "becomes a - ReLU(a - b) (one neuron zeroed)",
                     f"{m['verdict']}; alpha = {m['alpha']:.3f}, beta = {m['beta']:.3f}; {roles}; "
                     f"max |output - (a - ReLU(a - b))| = {m['diff_a_minus_relu']:.3g}", setup=t.setup))
    params = hand_built_is_even()
    m = {**check_is_even(params), **describe_is_even(params)}
    rows.append(_row("is_even", "hand-built", "f_1 . f_1 . f_2 . f_4 . f_8 (x), |y - c| from ReLU pairs", params, m,
                     "perfect on 0..15, does not generalise",
                     f"accuracy {m['accuracy']:.3f} on 0..15, {m['accuracy_beyond']:.3f} on 16..63"))
    t = trained["is_even"]
    m = t.measured
    rows.append(_row("is_even", "trained", _setup_text(t.setup), t.params, m,
                     "stuck at a local minimum, predicting the mean",
                     f"{m['verdict']}: output in [{m['out_min']:.3f}, {m['out_max']:.3f}] (spread {m['spread']:.3g}), "
                     f"mean {m['mean']:.3f}; accuracy {m['accuracy']:.3f}; MSE {m['loss']:.4f} (0.25 at the mean)",
                     setup=t.setup))
    return rows, trained, {**built, **HAND_BUILT_MIN, "is_even": hand_built_is_even()}


def write_tiny(out: str | Path, seed: int = 0) -> list[dict[str, Any]]:
    """Check the hand-built networks, train the others (`seed`) and write to `out`: tiny.csv
    (one row per network: `COLUMNS`), tiny.json (the rows plus full weights, the measures and the
    training setups and loss curves), tiny_less_than_10.png, tiny_min.png, tiny_is_even.png; all
    atomically. Returns the rows as in tiny.json (`WriteError` where `out` cannot be written)."""
    from modadd.report import save_figure  # PIL, scipy: only when figures are drawn

    out = Path(out)
    make_output_dir(out, "the tiny networks")
    rows, trained, built = tiny_rows(seed)
    write_csv(out / "tiny.csv", rows, COLUMNS, what="the tiny networks")
    curves = {name: {"every": max(1, len(t.losses) // 500), "loss": t.losses[:: max(1, len(t.losses) // 500)]}
              for name, t in trained.items()}  # the loss before step 1, 1 + every, ...
    write_atomic(out / "tiny.json", json.dumps({"seed": seed, "networks": rows, "loss_curves": curves}, indent=1),
                 what="the tiny networks")
    save_figure(_less_than_figure({**{n: built[n] for n in ("sigmoid(10 - x)", "sigmoid(100 (10 - x))")},
                                    "trained": trained["x < 10"].params}), out / "tiny_less_than_10.png")
    min_nets = {"Equation 1": built[next(iter(HAND_BUILT_MIN))], "a - ReLU(a - b)": built["a - ReLU(a - b)"],
                "trained": trained["min(a, b)"].params}
    save_figure(_min_figure(min_nets, trained["min(a, b)"].params), out / "tiny_min.png")
    save_figure(_is_even_figure({"hand-built": built["is_even"], "trained": trained["is_even"].params},
                                 trained["is_even"].losses), out / "tiny_is_even.png")
    return rows


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rows as text lines for a terminal, a header first."""
    lines = [f"{'function':<10} {'kind':<10} {'accuracy':>8} {'max err':>9} {'loss':>9}  network: measured"]
    for r in rows:
        lines.append(f"{r['function']:<10} {r['kind']:<10} {r['accuracy']:>8.4f} {r['max_error']:>9.3g} "
                     f"{r['loss']:>9.3g}  {r['network']}: {r['measured']}")
    return lines
