"""The grokking accelerators (Grokfast's EMA filter, StableMax cross-entropy) and the softmax
collapse count, in every training path, against the plain autograd reference and against
independent implementations of their papers' definitions."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from conftest import run_script
from modadd.data import ModAddData, one_hot
from modadd.files import read_metrics
from modadd.mlp.model import MLP
from modadd.mlp.module import MLPModule
from modadd.module import GROKFAST_EMA, log_probs
from modadd.transformer.module import TransformerModule
from test_reliability import test_bad_value_is_one_line_error_before_any_output as one_line_error

P, HIDDEN, BATCH, EPOCHS = 11, 24, 16, 3  # 72 training pairs: the epoch's last minibatch is partial
HP = dict(p=P, lr=3e-3, weight_decay=0.5, batch_size=BATCH, seed=7)
OPTIONS = {"grokfast": dict(grokfast="ema"), "stablemax": dict(loss="stablemax"),
           "both": dict(grokfast="ema", loss="stablemax")}
PATHS = {"fast": dict(fast=True, fused=False), "fused": dict(fast=True, fused=True)}  # against fast=False


def fit(module: L.LightningModule, epochs: int = EPOCHS, **fit_args) -> L.Trainer:
    """Train `module` as train.py does (with `fused=True`: epoch 0 on the torch path, the kernel from
    epoch 1); its `epoch_metrics` then hold the last epoch's. `fit_args`: `Trainer.fit`'s (`ckpt_path`)."""
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=ModAddData(P, 0.6, seed=HP["seed"]), **fit_args)
    return trainer


@pytest.mark.parametrize("members", [1, 2])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS)
def test_fast_path_and_fused_kernel_equal_the_autograd_reference(options, members):
    """Weights, AdamW moments, Grokfast's EMAs and the epoch's metrics after three epochs of minibatches."""
    ref = MLPModule(**HP, hidden=HIDDEN, members=members, fast=False, fused=False, **options)
    fit(ref)
    ref_state = ref.optimizers().optimizer.state
    keys = {"step", "exp_avg", "exp_avg_sq", *([GROKFAST_EMA] if "grokfast" in options else [])}
    for name, path in PATHS.items():
        module = MLPModule(**HP, hidden=HIDDEN, members=members, **path, **options)
        fit(module)
        state = module.optimizers().optimizer.state
        for param, ref_param in zip(module.net.parameters(), ref.net.parameters()):
            torch.testing.assert_close(param, ref_param, rtol=1e-4, atol=1e-5, msg=name)
            assert state[param].keys() == ref_state[ref_param].keys() == keys
            for key in state[param]:
                torch.testing.assert_close(state[param][key], ref_state[ref_param][key], rtol=1e-4, atol=1e-6, msg=name)
        assert module.epoch_metrics.keys() == ref.epoch_metrics.keys()
        for key, value in ref.epoch_metrics.items():
            assert module.epoch_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)


def gradfilter_ema(model: torch.nn.Module, grads: dict | None, alpha: float, lamb: float) -> dict:
    """Grokfast's filter as its authors wrote it (github ironjr/grokfast, grokfast.py)."""
    if grads is None:
        grads = {n: p.grad.data.detach() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    for n, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            grads[n] = grads[n] * alpha + p.grad.data.detach() * (1 - alpha)
            p.grad.data = p.grad.data + grads[n] * lamb
    return grads


def stablemax_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean StableMax cross-entropy from its formula, in float64: log sum_j s(z_j) - log s(z_y)."""
    z = logits.double()
    s = torch.where(z >= 0, z + 1, 1 / (1 - z))
    return (s.sum(-1).log() - s.gather(-1, y[:, None]).squeeze(-1).log()).mean()


@pytest.mark.parametrize("loss, criterion", [("cross_entropy", F.cross_entropy),
                                             ("stablemax", stablemax_cross_entropy)])
def test_reference_grokfast_equals_gradfilter_ema_on_a_plain_loop(loss, criterion):
    """The seed's loop (one-hot matmul, autograd, torch.optim.AdamW) with `gradfilter_ema` between
    backward and step, fed the batch order the module drew."""
    alpha, lamb = 0.9, 3.0
    module = MLPModule(**HP, hidden=HIDDEN, fast=False, fused=False, loss=loss, grokfast="ema",
                       grokfast_alpha=alpha, grokfast_lambda=lamb)
    a, b, y = fit(module).datamodule.train
    torch.manual_seed(HP["seed"])
    model = MLP(P, HIDDEN)  # member 0's initial weights
    opt = torch.optim.AdamW(model.parameters(), lr=HP["lr"], weight_decay=HP["weight_decay"])
    grads = None
    for epoch in range(EPOCHS):
        order = module.epoch_order(len(y), epoch)[0]
        x, t = one_hot(a[order], b[order], P), y[order]
        for i in range(0, len(t), BATCH):
            opt.zero_grad()
            criterion(model(x[i : i + BATCH]), t[i : i + BATCH]).backward()
            grads = gradfilter_ema(model, grads, alpha, lamb)
            opt.step()
    got = module.net.member(0)
    torch.testing.assert_close(got.fc1.weight, model.fc1.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.fc2.weight, model.fc2.weight, rtol=1e-4, atol=1e-5)


def test_stablemax_loss_equals_its_formula_where_softmax_collapses_and_where_not():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.5], [3.0, -2.0, 0.5, -0.25], [100.0, 0.0, -100.0, 5.0],
                           [-1e4, 1e4, 0.0, 1.0]])
    y = torch.tensor([1, 3, 0, 1])

    def s(x: float) -> float:
        return x + 1 if x >= 0 else 1 / (1 - x)

    expected = [math.log(sum(map(s, row))) - math.log(s(row[t])) for row, t in zip(logits.tolist(), y.tolist())]
    got = -log_probs(logits[None], "stablemax", torch.float32)[0].gather(-1, y[:, None]).squeeze(-1)
    assert got.dtype == torch.float64  # as Prieto et al. compute it, whatever the net's loss dtype
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    softmax = -log_probs(logits[None], "cross_entropy", torch.float32)[0].gather(-1, y[:, None]).squeeze(-1)
    assert softmax[:2].gt(0).all() and softmax[2:].eq(0).all()  # the last two collapsed: no gradient left
    assert got[2:].gt(1e-5).all()  # StableMax's still has one


def test_stablemax_gradient_is_finite_at_a_logit_of_exactly_one():
    """torch.where computes both branches: 1 / (1 - x) at x = 1 was inf, and its backward a NaN."""
    logits = torch.tensor([[[1.0, 0.5, -2.0]]], requires_grad=True)
    (-log_probs(logits, "stablemax", torch.float32)[0, 0, 1]).backward()  # the loss of class 1
    s = torch.tensor([2.0, 1.5, 1 / 3], dtype=torch.float64)  # s(x), and s'(x) = 1, 1, s^2 below
    expected = torch.stack([1 / s.sum(), 1 / s.sum() - 1 / s[1], s[2] ** 2 / s.sum()]).float()
    torch.testing.assert_close(logits.grad[0, 0], expected)


def collapsing_module(loss: str, **path) -> MLPModule:
    """Two members whose logits depend on `a` alone: row a is 40 on class a (member 0: for even a,
    member 1: for a % 3 == 0), where softmax collapses in float32, or 2 (it does not), 0 elsewhere.
    lr = weight_decay = 0: the weights stay, so every minibatch of an epoch sees them."""
    module = MLPModule(p=P, hidden=P, lr=0.0, weight_decay=0.0, batch_size=BATCH, seed=7, members=2, loss=loss, **path)
    a = torch.arange(P)
    with torch.no_grad():
        module.net.W_in.zero_()[:, a, a] = 1
        module.net.W_out.zero_()
        for k, high in enumerate([a % 2 == 0, a % 3 == 0]):
            module.net.W_out[k, a, a] = torch.where(high, 40.0, 2.0)
    return module


@pytest.mark.parametrize("loss", ["cross_entropy", "stablemax"])
def test_softmax_collapse_fraction_equals_an_independent_count(loss):
    """Prieto et al.'s count (their `compute_softmax_collapse`): sum exp(z - max z) == 1 in float32,
    whichever class is the largest (here mostly not the right one: a zero loss is not what it counts)."""
    counts = {}
    for name, path in {"reference": dict(fast=False, fused=False), **PATHS}.items():
        module = collapsing_module(loss, **path)
        a, b, _ = fit(module, epochs=2).datamodule.train
        counts[name] = [module.epoch_metrics[f"train/softmax_collapse_m{k}"] for k in range(2)]
    logits = module.net(a, b).detach()
    shifted = logits - logits.amax(-1, keepdim=True)
    expected = (shifted.exp().sum(-1) == 1).float().mean(1).tolist()
    assert expected == pytest.approx([(a % 2 == 0).float().mean().item(), (a % 3 == 0).float().mean().item()])
    assert 0 < min(expected) and max(expected) < 1
    for name, got in counts.items():
        assert got == pytest.approx(expected), name


def test_transformer_trains_with_both():
    module = TransformerModule(p=P, d_model=16, n_heads=2, d_head=8, d_mlp=32, lr=1e-3, weight_decay=1.0,
                               batch_size=None, seed=3, members=2, grokfast="ema", loss="stablemax")
    fit(module, epochs=2)
    assert all(math.isfinite(v) for v in module.epoch_metrics.values())
    assert "train/softmax_collapse_m1" in module.epoch_metrics
    state = module.optimizers().optimizer.state
    assert all(state[param][GROKFAST_EMA].shape == param.shape for param in module.net.parameters())


def test_a_resumed_run_equals_one_never_stopped(tmp_path):
    """The EMAs are in the checkpoint (as train.py resumes: `modadd.job`): 3 epochs, then 3 more
    from the checkpoint, are the 6-epoch run (a resumed run without its EMAs would restart them
    from the gradient)."""
    options = dict(hidden=HIDDEN, members=2, grokfast="ema", loss="stablemax")
    whole, stopped, resumed = (MLPModule(**HP, **options) for _ in range(3))
    fit(whole, epochs=6)
    fit(stopped).save_checkpoint(tmp_path / "last.ckpt")
    fit(resumed, epochs=6, ckpt_path=tmp_path / "last.ckpt")
    assert all(torch.equal(w, r) for w, r in zip(whole.net.parameters(), resumed.net.parameters()))
    assert resumed.epoch_metrics == whole.epoch_metrics


def test_train_py_with_both_logs_the_softmax_collapse(tmp_path):
    run_script("train.py", "p=11", "hidden=16", "epochs=3", "logger=csv", "grokfast=ema", "loss=stablemax",
               f"hydra.run.dir={tmp_path}")
    rows = read_metrics(tmp_path / "metrics.csv")
    assert len(rows) == 3 and all(0 <= row["train/softmax_collapse"] <= 1 for row in rows)


@pytest.mark.parametrize("override, message", [
    ("grokfast=sma", "grokfast must be null (off) or ema"),
    ("grokfast_alpha=1", "grokfast_alpha must be a number in [0, 1)"),
    ("grokfast_alpha=-0.1", "grokfast_alpha must be a number in [0, 1)"),
    ("grokfast_lambda=-1", "grokfast_lambda must be a number >= 0"),
    ("loss=mse", "loss must be one of cross_entropy, stablemax"),
])
def test_bad_value_is_one_line_error(tmp_path, override, message):
    one_line_error(tmp_path, override, message)
