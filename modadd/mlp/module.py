"""The MLP's LightningModule: the shared training loop (`modadd.module`) with the MLP's fast paths.

`fast=True` uses the hand-written backward and the fused AdamW kernel; `fast=False` is the
shared plain autograd + `torch.optim.AdamW` step, the reference the fast path is tested against.
On the CPU, `fused=True` runs each epoch after the first (which creates AdamW's state) as one
call of the C++ kernel in `modadd.mlp.fused`, where it builds, and validation as another.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from modadd.mlp import fused
from modadd.mlp.model import MLPStack
from modadd.module import GrokModule, count_step
from modadd.runs import load_weights

log = logging.getLogger("modadd")


class MLPModule(GrokModule):
    """K members of `2p -> hidden -> p` (see `modadd.module.GrokModule` for the shared knobs).

    `init` (a weights file or job dir, see `runs.load_weights`) replaces the random initial
    weights: one network for all members, or one per member.
    """

    def __init__(self, hidden: int, activation: str = "relu", init: str | None = None, fast: bool = True,
                 fused: bool = True, **shared):
        super().__init__(**shared)
        p, members = shared["p"], len(self.member_seeds)
        self.fused_adamw = fast
        if self.member_groups is not None and not fast:
            raise ValueError("a stack of jobs with their own AdamW settings needs model.fast=true (torch's fused AdamW)")
        if init is None:
            self.net = MLPStack.init(p, hidden, self.member_seeds, activation)
        else:  # every member starts from the given network(s): a construction, another run; each job of a stack alike
            fc1, fc2 = load_weights(init)
            W_in, W_out = (w.transpose(1, 2).repeat(members // w.shape[0], 1, 1) for w in (fc1, fc2))
            self.net = MLPStack(W_in, W_out, activation)
            if members > fc1.shape[0] and len(self.job_members) == 1:
                log.warning("the %d members all start from %s: they differ only through their batch orders "
                            "(not at all with shuffle=false or a full batch)", members, init)

    def train_epoch(self, opt: LightningOptimizer, a: Tensor, b: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not (opt.optimizer.state and self._fused_cpu()):  # the kernel needs AdamW's state (and EMAs) from epoch 0
            return super().train_epoch(opt, a, b, y)
        hp = self.hparams
        sums = fused.train_epoch(
            self.net.W_in.detach(), self.net.W_out.detach(), [opt.optimizer.state[q] for q in self.net.parameters()],
            a, b, y, self.batch_size(y.shape[1]), self._kernel_groups() or opt.optimizer.param_groups[0], hp.activation,
            hp.loss, (hp.grokfast_alpha, hp.grokfast_lambda) if hp.grokfast else None)
        count_step(opt)
        return sums

    def _kernel_groups(self) -> list[dict] | None:
        """A stack's AdamW settings, member by member, as the kernel takes them."""
        if self.member_groups is None:
            return None
        per_member = [{}] * len(self.member_seeds)
        for group, members in self.member_groups:
            for k in members:
                per_member[k] = group
        return per_member

    def _fused_cpu(self) -> bool:
        hp = self.hparams
        return hp.fast and hp.fused and self.device.type == "cpu" and fused.available()

    def update(self, opt: LightningOptimizer, a: Tensor, b: Tensor, y: Tensor, last: bool,
               collapsed: Tensor) -> tuple[Tensor, Tensor]:
        if not self.hparams.fast:
            return super().update(opt, a, b, y, last, collapsed)
        loss, correct = self.net.backward(a, b, y, self.hparams.loss, collapsed)
        self.adamw_step(opt, last, partial(fused_adamw_step, opt.optimizer))
        return loss, correct

    @torch.no_grad()
    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        if not self._fused_cpu():
            return super().validation_step(batch, batch_idx)
        a, b, y = batch
        hp = self.hparams
        loss, correct = fused.evaluate(self.net.W_in.detach(), self.net.W_out.detach(), a, b, y, hp.activation, hp.loss)
        self._record("val", loss=loss.float(), acc=correct / len(y))


def fused_adamw_step(opt: torch.optim.AdamW) -> None:
    """`opt.step()` for a `fused=True` AdamW without its ~65 us of Python per call.

    Calls the same kernel on the same state as `torch.optim.adamw._fused_adamw` (so checkpoints
    and results are those of `opt.step()`); the first call goes through `opt.step()` to create
    the state.
    """
    group = opt.param_groups[0]
    params = group["params"]
    states = [opt.state[p] for p in params]
    if not states[0]:
        opt.step()
        return
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adamw_(
        params,
        [p.grad for p in params],
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        [],
        steps,
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        amsgrad=False,
        maximize=False,
    )
