"""The fused CPU epoch (modadd/mlp/fused.cpp) with its own AdamW settings per member: a stack of
jobs that differ only in lr / weight_decay / betas trains as one kernel call, and each member's
result is bit for bit what the kernel gives it alone."""

import copy

import pytest
import torch

from modadd.mlp import fused
from modadd.mlp.model import MLPStack
from modadd.mlp.module import fused_adamw_step
from modadd.module import GROKFAST_EMA, grokfast_ema

P, HIDDEN, BATCH, N = 23, 40, 32, 150  # 150 rows: the epoch's last minibatch is partial
GROUPS = [dict(lr=3e-3, weight_decay=0.5, betas=(0.9, 0.98), eps=1e-8),
          dict(lr=1e-2, weight_decay=1.0, betas=(0.8, 0.99), eps=1e-8),
          dict(lr=1e-3, weight_decay=0.0, betas=(0.95, 0.999), eps=1e-6)]
K = len(GROUPS)
GROKFAST = (0.98, 2.0)


@pytest.fixture(autouse=True, scope="module")
def kernel():
    assert fused.available()  # builds and loads it (torch.ops.modadd)


def stack(activation: str = "relu", grokfast: tuple[float, float] | None = None):
    """A K-member stack, its epoch's pairs and AdamW states (with Grokfast's EMAs when `grokfast`)
    after one torch step, as training has them when the kernel takes over."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, P, (2, K, N), generator=g)
    y = (a + b) % P
    net = MLPStack.init(P, HIDDEN, list(range(K)), activation)
    opt = torch.optim.AdamW(net.parameters(), fused=True)
    net.backward(a[:, :BATCH], b[:, :BATCH], y[:, :BATCH])
    emas = grokfast_ema(opt, *grokfast) if grokfast else None
    opt.step()
    states = [opt.state[q] for q in net.parameters()]
    for state, ema in zip(states, emas or []):
        state[GROKFAST_EMA] = ema
    return net.W_in.detach(), net.W_out.detach(), states, (a, b, y)


def member(W_in, W_out, states, pairs, k):
    """Member k's own copy: slices `[k:k+1]` of the (K, ...) tensors, the (shared) step count."""
    states = [{key: value.clone() if key == "step" else value[k : k + 1].clone() for key, value in state.items()}
              for state in states]
    return W_in[k : k + 1].clone(), W_out[k : k + 1].clone(), states, [t[k : k + 1] for t in pairs]


def solo(W_in, W_out, states, pairs, group, activation="relu", grokfast=None):
    """The kernel on one member alone with its own group, on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fused.train_epoch(W_in, W_out, states, *pairs, BATCH, group, activation, grokfast=grokfast)
    finally:
        torch.set_num_threads(previous)


def assert_members_equal_their_solo_runs(activation="relu", grokfast=None):
    W_in, W_out, states, pairs = stack(activation, grokfast)
    solos = [member(W_in, W_out, states, pairs, k) for k in range(K)]
    loss, correct, collapsed = fused.train_epoch(W_in, W_out, states, *pairs, BATCH, GROUPS, activation,
                                                 grokfast=grokfast)
    keys = ["step", "exp_avg", "exp_avg_sq", *([GROKFAST_EMA] if grokfast else [])]
    for k, (w_in, w_out, solo_states, solo_pairs) in enumerate(solos):
        solo_loss, solo_correct, solo_collapsed = solo(w_in, w_out, solo_states, solo_pairs, GROUPS[k], activation,
                                                       grokfast)
        assert torch.equal(loss[k : k + 1], solo_loss), k
        assert torch.equal(correct[k : k + 1], solo_correct), k
        assert torch.equal(collapsed[k : k + 1], solo_collapsed), k
        assert torch.equal(W_in[k : k + 1], w_in) and torch.equal(W_out[k : k + 1], w_out), k
        for state, solo_state in zip(states, solo_states):
            for key in keys:
                expected = solo_state[key]
                assert torch.equal(state[key] if key == "step" else state[key][k : k + 1], expected), (k, key)
    # the settings did act: with the same group for all, the members' weights would differ from these
    again = stack(activation, grokfast)
    fused.train_epoch(*again[:3], *again[3], BATCH, GROUPS[0], activation, grokfast=grokfast)
    assert not torch.equal(again[0][1], W_in[1]) and not torch.equal(again[0][2], W_in[2])


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_each_member_equals_its_solo_run_bit_for_bit(activation):
    assert_members_equal_their_solo_runs(activation)


def test_with_grokfast_each_member_equals_its_solo_run_bit_for_bit():
    assert_members_equal_their_solo_runs(grokfast=GROKFAST)


def test_a_member_with_its_own_settings_equals_torch_adamw():
    """Member 1 of the stack (lr, weight decay and betas not torch's defaults) against
    MLPStack.backward + torch's fused AdamW with those settings, from the same state."""
    W_in, W_out, states, pairs = stack()
    k, group = 1, GROUPS[1]
    w_in, w_out, ref_states, (a, b, y) = member(W_in, W_out, states, pairs, k)
    ref_net = MLPStack(w_in, w_out)
    ref_opt = torch.optim.AdamW(ref_net.parameters(), fused=True, **group)
    for param, state in zip(ref_net.parameters(), ref_states):
        ref_opt.state[param] = state
    ref_loss, ref_correct = 0, 0
    for s in range(0, N, BATCH):
        loss, correct = ref_net.backward(a[:, s : s + BATCH], b[:, s : s + BATCH], y[:, s : s + BATCH])
        fused_adamw_step(ref_opt)
        ref_loss, ref_correct = ref_loss + loss, ref_correct + correct

    loss, correct, _ = fused.train_epoch(W_in, W_out, states, *pairs, BATCH, GROUPS, "relu")
    torch.testing.assert_close(loss[k : k + 1].float(), ref_loss)
    assert torch.equal(correct[k : k + 1], ref_correct)
    for got, param in zip((W_in, W_out), ref_net.parameters()):
        torch.testing.assert_close(got[k : k + 1], param.detach(), rtol=1e-5, atol=1e-6)
    for state, param in zip(states, ref_net.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[key][k : k + 1], ref_opt.state[param][key], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(state["step"], ref_opt.state[param]["step"])


def test_a_shared_group_equals_the_same_group_given_per_member():
    W_in, W_out, states, pairs = stack()
    shared = (W_in.clone(), W_out.clone(), copy.deepcopy(states))
    per_member = fused.train_epoch(W_in, W_out, states, *pairs, BATCH, [GROUPS[1]] * K, "relu")
    one = fused.train_epoch(*shared, *pairs, BATCH, GROUPS[1], "relu")
    assert all(torch.equal(x, z) for x, z in zip(per_member, one))
    assert torch.equal(W_in, shared[0]) and torch.equal(W_out, shared[1])
    for state, other in zip(states, shared[2]):
        assert all(torch.equal(state[key], other[key]) for key in state)


def test_a_wrong_number_of_groups_is_an_error_before_the_kernel_runs():
    W_in, W_out, states, pairs = stack()
    before = (W_in.clone(), W_out.clone(), copy.deepcopy(states))
    with pytest.raises(ValueError, match="2 AdamW groups for 3 members"):
        fused.train_epoch(W_in, W_out, states, *pairs, BATCH, GROUPS[:2], "relu")
    assert torch.equal(W_in, before[0]) and torch.equal(W_out, before[1])
    for state, other in zip(states, before[2]):
        assert all(torch.equal(state[key], other[key]) for key in state)


def test_the_kernel_checks_its_settings():
    W_in, W_out, states, (a, b, y) = stack()
    settings = [torch.ones(K, dtype=torch.float64)] * 5
    settings[0] = torch.ones(K)  # float32
    with pytest.raises(RuntimeError, match=r"\(K,\) = \(3,\) float64"):
        torch.ops.modadd.train_epoch(W_in, W_out, *(s[t] for s in states for t in ("exp_avg", "exp_avg_sq")),
                                     None, None, 1.0, a, b, y, BATCH, *settings, 0.0, 0.0, 0, 0)
