"""The LightningModule every model family trains with: AdamW on cross-entropy, one Lightning
step per epoch.

Lightning costs about as much per step as these models' whole forward and backward pass, so
`training_step` receives the whole training split (already on the device) and runs the
epoch's minibatches itself (manual optimisation): same semantics as the seed's loop (one
AdamW update per minibatch of `batch_size`, last batch partial; `batch_size=None` is full
batch), Lightning's overhead paid once per epoch. Each member of the stack draws its own fresh
order every epoch, seeded by (seed, member, epoch) so a resumed run replays the same order.

A family's module (`modadd.mlp.module.MLPModule`, `modadd.transformer.module.TransformerModule`)
builds `self.net`: K members stacked on a leading dim, `net(a, b) -> logits (K, B, p)`, with the
dtype its loss is computed in as `net.loss_dtype`. The plain autograd update here is every
family's reference; a family may replace `train_epoch`, `update` or `validation_step` with a
faster path that is tested against it.

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
from torch import Tensor, nn

from modadd.chunks import chunks

log = logging.getLogger("modadd")


class GrokModule(L.LightningModule):
    """K members (`members`, seeds seed..seed+K-1) of one family trained side by side on mod-p pairs."""

    net: nn.Module
    fused_adamw = True  # torch's fused AdamW kernel (a family's reference path may turn it off)

    def __init__(
        self,
        p: int,
        lr: float,
        weight_decay: float,
        batch_size: int | None,
        seed: int,
        betas: tuple[float, float] = (0.9, 0.999),
        members: int = 1,
        shuffle: bool = True,
        family: str | None = None,  # recorded with the checkpoint's hyper-parameters (the config's model.family)
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # this and the family's own arguments
        self.hparams.betas = tuple(float(b) for b in betas)  # plain types: checkpoints load with weights_only=True
        self.automatic_optimization = False
        self.epoch_metrics: dict[str, float] = {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.AdamW(self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                                 betas=tuple(hp.betas), fused=self.fused_adamw)

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

    def batch_size(self, n: int) -> int:
        """The minibatch size for a split of `n` rows (`batch_size=None`: the whole split)."""
        return min(self.hparams.batch_size or n, n)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        a, b, y = batch
        n = len(y)
        order = self.epoch_order(n, self.current_epoch)
        loss_sum, correct = self.train_epoch(self.optimizers(), a[order], b[order], y[order])  # (K, n) each
        steps = -(-n // self.batch_size(n))
        self._record("train", (loss_sum / steps).float(), correct / n)
        if not math.isfinite(self.epoch_metrics["train/loss"]):
            log.warning("training loss is %s at epoch %d: stopping (diverged)", self.epoch_metrics["train/loss"], self.current_epoch)
            self.trainer.should_stop = True

    def train_epoch(self, opt: LightningOptimizer, a: Tensor, b: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The epoch's updates over `a, b, y: (K, n)` in its order; returns the sum over
        minibatches of the mean loss `(K,)` and the count of right answers `(K,)`."""
        size = self.batch_size(y.shape[1])
        starts = range(0, y.shape[1], size)
        loss_sum = torch.zeros(y.shape[0], dtype=self.net.loss_dtype, device=self.device)
        correct = torch.zeros(y.shape[0], dtype=torch.long, device=self.device)
        for i, start in enumerate(starts):
            s = slice(start, start + size)
            loss, right = self.update(opt, a[:, s], b[:, s], y[:, s], last=i == len(starts) - 1)
            # summed in place: keeping every step's small tensors until the epoch's end fragments
            # glibc's heap between the steps' large buffers (6 GB after 14k steps at p=1500)
            loss_sum += loss
            correct += right
        return loss_sum, correct

    def update(self, opt: LightningOptimizer, a: Tensor, b: Tensor, y: Tensor, last: bool) -> tuple[Tensor, Tensor]:
        """One AdamW update on one minibatch per member (plain autograd). The epoch's last update
        goes through Lightning's optimizer wrapper, so `trainer.global_step` counts epochs
        (checkpointing keys on it); the others skip the wrapper's per-call overhead."""
        opt.zero_grad()
        logits = self.net(a, b)
        loss = F.cross_entropy(logits.to(self.net.loss_dtype).transpose(1, 2), y, reduction="none").mean(1)
        loss.sum().backward()  # members are independent: the sum's gradient is each one's own
        opt.step() if last else opt.optimizer.step()
        return loss.detach(), (logits.argmax(-1) == y).sum(1)

    @torch.no_grad()
    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        a, b, y = batch
        K, n = self.net.members, len(y)
        loss_sum = torch.zeros(K, dtype=self.net.loss_dtype, device=self.device)
        correct = torch.zeros(K, dtype=torch.long, device=self.device)
        for s in chunks(n, self.net.row_bytes()):  # bounded memory at any p: the (K, n, p) logits never at once
            logits = self.net(a[s], b[s]).to(self.net.loss_dtype)  # (K, m, p)
            # cross-entropy along the contiguous last dim: F.cross_entropy wants classes in dim 1,
            # and on the transposed (K, p, m) view it is 3x slower
            target = y[s].view(1, -1, 1).expand(K, -1, 1)
            loss_sum -= logits.log_softmax(-1).gather(-1, target).sum((1, 2))
            correct += (logits.argmax(-1) == y[s]).sum(1)
        self._record("val", (loss_sum / n).float(), correct / n)

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
