"""The fused CPU epoch (modadd/mlp/fused.cpp) against the torch fast path it replaces on the CPU."""

import copy

import pytest
import torch

from conftest import run_script
from modadd.mlp import fused
from modadd.mlp.model import MLPStack
from modadd.mlp.module import fused_adamw_step
from modadd.runs import load_weights

P, HIDDEN, BATCH, N = 23, 40, 32, 150  # 150 rows: the epoch's last minibatch is partial


def test_kernel_builds_here():
    assert fused.available()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("activation", ["relu", "quadratic", "gelu"])
def test_epoch_equals_torch_fast_path(activation, members, threads):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, P, (2, members, N), generator=g)
    y = (a + b) % P
    net = MLPStack.init(P, HIDDEN, list(range(members)), activation)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.5, fused=True)
    net.backward(a[:, :BATCH], b[:, :BATCH], y[:, :BATCH])
    opt.step()  # AdamW's state exists from the first step on, as in training
    ref_net = copy.deepcopy(net)
    ref_opt = torch.optim.AdamW(ref_net.parameters(), lr=3e-3, weight_decay=0.5, fused=True)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    ref_loss, ref_correct = 0, 0
    for s in range(0, N, BATCH):
        loss, correct = ref_net.backward(a[:, s : s + BATCH], b[:, s : s + BATCH], y[:, s : s + BATCH])
        fused_adamw_step(ref_opt)
        ref_loss, ref_correct = ref_loss + loss, ref_correct + correct
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        states = [opt.state[q] for q in net.parameters()]
        loss, correct, _ = fused.train_epoch(net.W_in.detach(), net.W_out.detach(), states, a, b, y, BATCH,
                                             opt.param_groups[0], activation)
    finally:
        torch.set_num_threads(previous)

    torch.testing.assert_close(loss.float(), ref_loss)
    assert torch.equal(correct, ref_correct)
    for param, ref in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(param, ref, rtol=1e-5, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt.state[param][key], ref_opt.state[ref][key], rtol=1e-5, atol=1e-9)


def test_a_nan_weight_gives_a_nan_loss():  # what the module's divergence check looks for
    a, b = torch.randint(0, P, (2, 1, N))
    net = MLPStack.init(P, HIDDEN, [0])
    opt = torch.optim.AdamW(net.parameters(), fused=True)
    net.backward(a[:, :BATCH], b[:, :BATCH], (a + b)[:, :BATCH] % P)
    opt.step()
    with torch.no_grad():
        net.W_out[0, 0, 0] = float("nan")
    loss, *_ = fused.train_epoch(net.W_in.detach(), net.W_out.detach(), [opt.state[q] for q in net.parameters()],
                                 a, b, (a + b) % P, BATCH, opt.param_groups[0], "relu")
    assert loss.isnan().all()


@pytest.mark.slow
def test_without_a_compiler_train_py_falls_back_to_the_torch_path(tmp_path):
    args = ["p=11", "hidden=16", "epochs=3", "logger=csv"]
    no_compiler = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CXX": str(tmp_path / "no-compiler")}
    proc = run_script("train.py", *args, f"hydra.run.dir={tmp_path / 'fallback'}", env=no_compiler)
    assert "the fused CPU kernel could not be built" in proc.stdout + proc.stderr
    run_script("train.py", *args, f"hydra.run.dir={tmp_path / 'kernel'}")
    for got, expected in zip(load_weights(tmp_path / "fallback"), load_weights(tmp_path / "kernel")):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("activation", ["relu", "quadratic", "gelu"])
def test_validation_equals_the_torch_forward(activation, members, threads):
    from modadd.mlp.module import MLPModule

    module = MLPModule(p=P, hidden=HIDDEN, lr=1e-3, weight_decay=0.5, batch_size=BATCH, seed=5, members=members,
                        activation=activation)
    a, b = torch.randint(0, P, (2, 300), generator=torch.Generator().manual_seed(1))  # 300: a partial block of rows
    batch = (a, b, (a + b) % P)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module.validation_step(batch, 0)
    finally:
        torch.set_num_threads(previous)
    got, module.epoch_metrics = module.epoch_metrics, {}
    module.hparams.fused = False  # the torch forward over the whole (K, n, p) logits
    module.validation_step(batch, 0)
    whole, module.epoch_metrics = module.epoch_metrics, {}
    module.net.row_bytes = lambda: 2**20  # the torch forward in slices of 128 rows (as at a large p)
    module.validation_step(batch, 0)
    for metrics in (got, module.epoch_metrics):
        assert metrics.keys() == whole.keys()
        for key, value in whole.items():
            assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key  # float32 sums of ~3.0


def test_validation_counts_ties_as_argmax_does():
    net = MLPStack.init(P, HIDDEN, [0, 1])
    with torch.no_grad():
        net.W_out.zero_()  # every logit equal: argmax is class 0
    a, b = torch.randint(0, P, (2, 200), generator=torch.Generator().manual_seed(2))
    y = (a + b) % P
    loss, correct = fused.evaluate(net.W_in.detach(), net.W_out.detach(), a, b, y, "relu")
    assert correct.tolist() == [int((y == 0).sum())] * 2
    torch.testing.assert_close(loss, torch.full((2,), torch.tensor(P, dtype=torch.float64).log().item(), dtype=torch.float64))
