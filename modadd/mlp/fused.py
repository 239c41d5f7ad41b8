"""The fused CPU training epoch (`fused.cpp`), compiled on first use and cached.

`train_epoch` runs a whole epoch's minibatches of an `MLPStack` (forward, loss, hand-written
backward, Grokfast's filter, AdamW) in one C++ call, and `evaluate` a split's loss and accuracy.
They are the CPU's fast path; `MLPStack.backward` with torch's fused AdamW stays the path on a
GPU, and the one used where this kernel cannot be built (no C++ compiler): `available()` says
which.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from modadd.config import ACTIVATIONS, LOSSES
from modadd.module import GROKFAST_EMA

log = logging.getLogger("modadd")

FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]


@cache
def available() -> bool:
    """Builds (once per machine, ~30 s; then cached by torch) and loads the kernel."""
    from torch.utils.cpp_extension import load

    try:
        load("modadd_fused", [str(Path(__file__).with_name("fused.cpp"))], extra_cflags=FLAGS,
             extra_ldflags=["-fopenmp"], is_python_module=False)
    except Exception as error:  # no compiler, no headers: the torch path still works, slower
        lines = str(error).splitlines() or [type(error).__name__]
        reason = next((line for line in lines if "error:" in line), lines[0])[:300]
        log.warning("the fused CPU kernel could not be built (%s); training uses the slower torch path", reason)
        return False
    return True


def train_epoch(W_in: Tensor, W_out: Tensor, states: list[dict], a: Tensor, b: Tensor, y: Tensor,
                batch_size: int, groups: Mapping | Sequence[Mapping], activation: str, loss: str = "cross_entropy",
                grokfast: tuple[float, float] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One epoch for `a, b, y: (K, n)` (the epoch's order) in minibatches of `batch_size`;
    updates the weights and the AdamW `states` (torch's, for W_in and W_out) in place.
    `groups`: the AdamW settings (a torch param group's `lr`, `weight_decay`, `betas`, `eps`) of
    every member, or a sequence of K, one per member, so that jobs that differ only in those
    train as one stack (each member's result is what it would be alone).
    `grokfast`: Grokfast's (alpha, lambda), its EMAs in the `states` (`modadd.module.GROKFAST_EMA`).
    Returns the sum over minibatches of the mean loss `(K,)`, the count of right answers `(K,)`
    and of rows whose softmax collapsed `(K,)`."""
    K = W_in.shape[0]
    if isinstance(groups, Mapping):
        groups = [groups] * K
    elif len(groups) != K:
        raise ValueError(f"train_epoch: {len(groups)} AdamW groups for {K} members: give one for all or one per member")
    settings = [[float(value) for value in (g["lr"], *g["betas"], g["weight_decay"], g["eps"])] for g in groups]
    lr, beta1, beta2, weight_decay, eps = torch.tensor(settings, dtype=torch.float64).T.contiguous()
    step = float(states[0]["step"])
    alpha, lamb = grokfast or (0.0, 0.0)
    emas = [state[GROKFAST_EMA] if grokfast else None for state in states]
    loss_sum, correct, collapsed = torch.ops.modadd.train_epoch(
        W_in, W_out, states[0]["exp_avg"], states[0]["exp_avg_sq"], states[1]["exp_avg"], states[1]["exp_avg_sq"],
        *emas, step, a, b, y, batch_size, lr, beta1, beta2, weight_decay, eps, alpha, lamb,
        ACTIVATIONS.index(activation), LOSSES.index(loss))
    steps = -(-a.shape[1] // batch_size)
    for state in states:
        state["step"] += steps
    return loss_sum, correct, collapsed


def evaluate(W_in: Tensor, W_out: Tensor, a: Tensor, b: Tensor, y: Tensor, activation: str,
             loss: str = "cross_entropy") -> tuple[Tensor, Tensor]:
    """Mean loss `(K,)` (float64) and count of right answers `(K,)` of every member on the pairs
    `a, b, y: (n,)`, without materialising the `(K, n, p)` logits."""
    mean_loss, correct = torch.ops.modadd.evaluate(W_in, W_out, a, b, y, ACTIVATIONS.index(activation),
                                                   LOSSES.index(loss))
    return mean_loss, correct
