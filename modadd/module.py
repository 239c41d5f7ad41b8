"""The LightningModule: AdamW on cross-entropy, one Lightning step per epoch.

Lightning costs about as much per step as this model's whole forward and backward pass, so
`training_step` receives the whole training split (already on the device) and runs the
epoch's minibatches itself (manual optimisation): same semantics as the seed's loop (one
AdamW update per minibatch of `batch_size`, last batch partial), Lightning's overhead paid
once per epoch. Each member of the stack draws its own fresh order every epoch, seeded by
(seed, member, epoch) so a resumed run replays the same order.

The epoch's metrics go to `self.epoch_metrics`; callbacks add their own and the `EpochLog`
callback writes the row to metrics.csv and to every logger once (no per-step `self.log`).
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from modadd import fused
from modadd.model import MLPStack
from modadd.runs import load_weights

log = logging.getLogger("modadd")


class GrokModule(L.LightningModule):
    """K members (`members`, seeds seed..seed+K-1) of `2p -> hidden -> p` trained side by side.

    `init` (a weights file or job dir, see `runs.load_weights`) replaces the random initial
    weights: one network for all members, or one per member.

    `fast=True` uses the hand-written backward and the fused AdamW kernel; `fast=False` is
    plain autograd + `torch.optim.AdamW`, the reference the fast path is tested against. On the
    CPU, `fused=True` runs each epoch after the first (which creates AdamW's state) as one call
    of the C++ kernel in `modadd.fused`, where it builds, and validation as another.
    """

    def __init__(
        self,
        p: int,
        hidden: int,
        lr: float,
        weight_decay: float,
        batch_size: int,
        seed: int,
        betas: tuple[float, float] = (0.9, 0.999),
        members: int = 1,
        shuffle: bool = True,
        fast: bool = True,
        fused: bool = True,
        activation: str = "relu",
        init: str | None = None,
    ):
        super().__init__()
        betas = tuple(float(b) for b in betas)  # plain types: checkpoints load with weights_only=True
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        if init is None:
            self.net = MLPStack.init(p, hidden, [seed + k for k in range(members)], activation)
        else:  # every member starts from the given network(s): a construction, another run
            fc1, fc2 = load_weights(init)
            W_in, W_out = (w.transpose(1, 2).expand(members, -1, -1).contiguous() for w in (fc1, fc2))
            self.net = MLPStack(W_in, W_out, activation)
            if members > fc1.shape[0]:
                log.warning("the %d members all start from %s: they differ only through their batch orders "
                            "(not at all with shuffle=false or a full batch)", members, init)
        self.epoch_metrics: dict[str, float] = {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.AdamW(
            self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas), fused=hp.fast
        )

    def epoch_order(self, n: int, epoch: int) -> Tensor:
        """`(K, n)` permutations of the training rows for this epoch (identity if not shuffling)."""
        K = self.net.members
        if not self.hparams.shuffle:
            return torch.arange(n, device=self.device).expand(K, n)
        orders = []
        for k in range(K):
            g = torch.Generator().manual_seed((self.hparams.seed + k) * 1_000_003 + epoch)
            orders.append(torch.randperm(n, generator=g))
        return torch.stack(orders).to(self.device)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        a, b, y = batch
        n = len(y)
        order = self.epoch_order(n, self.current_epoch)
        a, b, y = a[order], b[order], y[order]  # (K, n)
        starts = range(0, n, self.hparams.batch_size)
        opt = self.optimizers()
        if self._fused_ready(opt.optimizer):
            loss_sum, correct = fused.train_epoch(
                self.net.W_in.detach(), self.net.W_out.detach(), [opt.optimizer.state[q] for q in self.net.parameters()],
                a, b, y, self.hparams.batch_size, opt.optimizer.param_groups[0], self.hparams.activation)
            _count_step(opt)
            self._record("train", (loss_sum / len(starts)).float(), correct / n)
            self._stop_if_diverged()
            return
        losses, corrects = [], []  # summed once per epoch: two fewer small ops per step
        for i, start in enumerate(starts):
            s = slice(start, start + self.hparams.batch_size)
            loss, right = self._update(opt, a[:, s], b[:, s], y[:, s], last=i == len(starts) - 1)
            losses.append(loss)
            corrects.append(right)
        loss_sum, correct = torch.stack(losses).sum(0), torch.stack(corrects).sum(0)
        self._record("train", loss_sum / len(starts), correct / n)
        self._stop_if_diverged()

    def _fused_ready(self, opt: torch.optim.Optimizer) -> bool:
        return bool(opt.state) and self._fused_cpu()

    def _fused_cpu(self) -> bool:
        hp = self.hparams
        return hp.fast and hp.fused and self.device.type == "cpu" and fused.available()

    def _stop_if_diverged(self) -> None:
        if not math.isfinite(self.epoch_metrics["train/loss"]):
            log.warning("training loss is %s at epoch %d: stopping (diverged)", self.epoch_metrics["train/loss"], self.current_epoch)
            self.trainer.should_stop = True

    def _update(self, opt: LightningOptimizer, a: Tensor, b: Tensor, y: Tensor, last: bool) -> tuple[Tensor, Tensor]:
        """One AdamW update on one minibatch per member. The epoch's last update goes through
        Lightning's optimizer wrapper, so `trainer.global_step` counts epochs (checkpointing
        keys on it); the others skip the wrapper's per-call overhead."""
        if self.hparams.fast:
            loss, correct = self.net.backward(a, b, y)
            opt.step() if last else fused_adamw_step(opt.optimizer)
            return loss, correct
        opt.zero_grad()
        logits = self.net(a, b)
        loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
        loss.sum().backward()  # members are independent: the sum's gradient is each one's own
        opt.step() if last else opt.optimizer.step()
        return loss.detach(), (logits.argmax(-1) == y).sum(1)

    @torch.no_grad()
    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        a, b, y = batch
        if self._fused_cpu():
            loss, correct = fused.evaluate(self.net.W_in.detach(), self.net.W_out.detach(), a, b, y, self.hparams.activation)
            self._record("val", loss.float(), correct / len(y))
            return
        logits = self.net(a, b)  # (K, n, p)
        # cross-entropy along the contiguous last dim: F.cross_entropy wants classes in dim 1,
        # and on the transposed (K, p, n) view it is 3x slower
        target = y.view(1, -1, 1).expand(self.net.members, -1, 1)
        loss = -logits.log_softmax(-1).gather(-1, target).mean((1, 2))
        self._record("val", loss, (logits.argmax(-1) == y).float().mean(1))

    def _record(self, split: str, loss: Tensor, acc: Tensor) -> None:
        values = torch.stack([loss, acc.float()]).tolist()  # one device sync per split and epoch
        for name, per_member in zip(("loss", "acc"), values):
            self.epoch_metrics.update(member_metrics(f"{split}/{name}", per_member))


def member_metrics(key: str, per_member: list[float]) -> dict[str, float]:
    """`{key: value}` for one model; for K members their mean under `key`, the std under
    `{key}_std` and each one under `{key}_m{k}`."""
    if len(per_member) == 1:
        return {key: per_member[0]}
    t = torch.tensor(per_member, dtype=torch.float64)
    return {key: t.mean().item(), f"{key}_std": t.std().item(), **{f"{key}_m{k}": v for k, v in enumerate(per_member)}}


def _count_step(opt: LightningOptimizer) -> None:
    """Counts an epoch whose updates the fused kernel made as one Lightning optimizer step
    (`trainer.global_step` counts epochs; checkpointing keys on it): torch's optimizers skip
    parameters without gradients, so this `opt.step()` changes nothing."""
    for param in opt.optimizer.param_groups[0]["params"]:
        param.grad = None
    opt.step()


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
