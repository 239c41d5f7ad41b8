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

Two grokking accelerators are options of every path: `loss=stablemax` (Prieto et al. 2025,
StableMax cross-entropy in place of softmax's) and `grokfast=ema` (Lee et al. 2024, the gradients'
EMA added to them before each step, the EMA kept in the optimizer's state so checkpoints carry
it). Each epoch also records `train/softmax_collapse` (Prieto et al.): the fraction of its training
rows whose softmax rounded to exactly one-hot in the loss dtype: where the one is the right
class, that row's cross-entropy gradient is exactly zero. Whether a borderline row rounds so
depends on the order of the sum, so the paths (and the paper's code) may count it differently.

The epoch's metrics go to `self.epoch_metrics`; callbacks add their own and the `EpochLog`
callback writes the row to metrics.csv and to every logger once (no per-step `self.log`).

A stack of jobs (`stack`, `modadd.stack`): jobs that differ only in their AdamW settings and
seeds train as the members of one module, each member with its own lr, weight decay and betas
(torch's fused AdamW kernel on each member's slices, or the family's kernel), its own
initialisation and batch order; each job's metrics go to its own `job_metrics` dict.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor, nn

from modadd.chunks import chunks

log = logging.getLogger("modadd")

GROKFAST_EMA = "grokfast_ema"  # a parameter's Grokfast EMA of its gradients, in the optimizer's state
STACKED_KNOBS = ("lr", "weight_decay", "betas", "seed", "members")  # what each job of a stack gives its members


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
        loss: str = "cross_entropy",
        grokfast: str | None = None,
        grokfast_alpha: float = 0.98,
        grokfast_lambda: float = 2.0,
        family: str | None = None,  # recorded with the checkpoint's hyper-parameters (the config's model.family)
        stack: Sequence[Mapping] | None = None,
    ):
        """`stack`: the jobs of a stack, in order, each a mapping of its `lr`, `weight_decay`,
        `betas`, `seed` and `members` (`modadd.stack`); None: one job, these knobs'."""
        super().__init__()
        self.save_hyperparameters(logger=False)  # this and the family's own arguments
        self.hparams.betas = tuple(float(b) for b in betas)  # plain types: checkpoints load with weights_only=True
        self.automatic_optimization = False
        jobs = [{k: job[k] for k in STACKED_KNOBS} for job in stack] if stack else [{k: self.hparams[k] for k in STACKED_KNOBS}]
        self.member_seeds = [job["seed"] + i for job in jobs for i in range(job["members"])]
        starts = [sum(job["members"] for job in jobs[:j]) for j in range(len(jobs) + 1)]
        self.job_members = [slice(start, stop) for start, stop in zip(starts, starts[1:])]
        # a stack's AdamW settings: the members of each distinct one (None: one job, torch's optimizer step)
        self.member_groups: list[tuple[dict, list[int]]] | None = None
        if stack:
            settings: dict[tuple, list[int]] = {}
            for k, job in enumerate(job for job in jobs for _ in range(job["members"])):
                settings.setdefault((job["lr"], job["weight_decay"], *job["betas"]), []).append(k)
            self.member_groups = [({"lr": lr, "weight_decay": wd, "betas": (b1, b2), "eps": 1e-8}, members)
                                  for (lr, wd, b1, b2), members in settings.items()]
        self._adamw_views: dict = {}  # member_adamw_step's slices, kept while the tensors are the same
        self.job_metrics: list[dict[str, float]] = [{} for _ in jobs]
        self.job_diverged: list[tuple[float, int] | None] = [None] * len(jobs)  # (its loss, the epoch) once it diverged

    @property
    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's row so far, of the module's (first) job."""
        return self.job_metrics[0]

    @epoch_metrics.setter
    def epoch_metrics(self, metrics: dict[str, float]) -> None:
        self.job_metrics[0] = metrics

    @property
    def loss_dtype(self) -> torch.dtype:
        """The dtype of the loss: the net's for cross-entropy, float64 for StableMax (as Prieto et al. compute it)."""
        return torch.float64 if self.hparams.loss == "stablemax" else self.net.loss_dtype

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
            g = torch.Generator().manual_seed(self.member_seeds[k] * 1_000_003 + epoch)
            orders.append(torch.randperm(n, generator=g))
        return torch.stack(orders).to(self.device)

    def batch_size(self, n: int) -> int:
        """The minibatch size for a split of `n` rows (`batch_size=None`: the whole split)."""
        return min(self.hparams.batch_size or n, n)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        a, b, y = batch
        n = len(y)
        order = self.epoch_order(n, self.current_epoch)
        loss_sum, correct, collapsed = self.train_epoch(self.optimizers(), a[order], b[order], y[order])  # (K,) each
        steps = -(-n // self.batch_size(n))
        self._record("train", loss=(loss_sum / steps).float(), acc=correct / n, softmax_collapse=collapsed / n)
        for j, metrics in enumerate(self.job_metrics):
            if not (self.job_diverged[j] or math.isfinite(metrics["train/loss"])):
                self.job_diverged[j] = (metrics["train/loss"], self.current_epoch)
                if len(self.job_metrics) == 1:  # a stack's job is told in its own log (modadd.stack)
                    warn_diverged(*self.job_diverged[j])
        self.trainer.should_stop |= all(self.job_diverged)  # a stack's other jobs go on

    def train_epoch(self, opt: LightningOptimizer, a: Tensor, b: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The epoch's updates over `a, b, y: (K, n)` in its order; returns the sum over
        minibatches of the mean loss `(K,)`, the count of right answers `(K,)` and of rows whose
        softmax collapsed `(K,)`."""
        size = self.batch_size(y.shape[1])
        starts = range(0, y.shape[1], size)
        loss_sum = torch.zeros(y.shape[0], dtype=self.loss_dtype, device=self.device)
        correct, collapsed = torch.zeros(2, y.shape[0], dtype=torch.long, device=self.device)
        for i, start in enumerate(starts):
            s = slice(start, start + size)
            loss, right = self.update(opt, a[:, s], b[:, s], y[:, s], i == len(starts) - 1, collapsed)
            # summed in place: keeping every step's small tensors until the epoch's end fragments
            # glibc's heap between the steps' large buffers (6 GB after 14k steps at p=1500)
            loss_sum += loss
            correct += right
        return loss_sum, correct, collapsed

    def update(self, opt: LightningOptimizer, a: Tensor, b: Tensor, y: Tensor, last: bool,
               collapsed: Tensor) -> tuple[Tensor, Tensor]:
        """One AdamW update on one minibatch per member (plain autograd): returns the mean loss
        `(K,)` and the count of right answers `(K,)`, and adds the count of rows whose softmax
        collapsed to `collapsed: (K,)`."""
        opt.zero_grad()
        logits = self.net(a, b)
        if self.hparams.loss == "cross_entropy":  # F.cross_entropy: the same bits as before StableMax existed
            loss = F.cross_entropy(logits.to(self.loss_dtype).transpose(1, 2), y, reduction="none").mean(1)
        else:
            loss = -log_probs(logits, self.hparams.loss, self.loss_dtype).gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
        loss.sum().backward()  # members are independent: the sum's gradient is each one's own
        # the collapse counted is softmax's, in the net's loss dtype, whatever the loss
        collapsed += softmax_collapsed(logits.detach().to(self.net.loss_dtype).log_softmax(-1))
        self.adamw_step(opt, last, opt.optimizer.step)
        return loss.detach(), (logits.argmax(-1) == y).sum(1)

    def adamw_step(self, opt: LightningOptimizer, last: bool, inner: Callable[[], object]) -> None:
        """The AdamW step from the gradients in `.grad`, filtered first by Grokfast when it is on.
        The epoch's last step goes through Lightning's optimizer wrapper, so `trainer.global_step`
        counts epochs (checkpointing keys on it); the others call `inner` (the optimizer's step,
        or a family's faster equivalent) without the wrapper's per-call overhead."""
        hp = self.hparams
        emas = grokfast_ema(opt.optimizer, hp.grokfast_alpha, hp.grokfast_lambda) if hp.grokfast else []
        if self.member_groups is not None:
            member_adamw_step(opt.optimizer, self.member_groups, self._adamw_views)
            if last:
                count_step(opt)
        else:
            opt.step() if last else inner()
        for param, ema in zip(opt.optimizer.param_groups[0]["params"], emas):
            opt.optimizer.state[param][GROKFAST_EMA] = ema  # new at the first step: its AdamW step made the state

    @torch.no_grad()
    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        a, b, y = batch
        K, n = self.net.members, len(y)
        loss_sum = torch.zeros(K, dtype=self.loss_dtype, device=self.device)
        correct = torch.zeros(K, dtype=torch.long, device=self.device)
        for s in chunks(n, self.net.row_bytes()):  # bounded memory at any p: the (K, n, p) logits never at once
            logits = self.net(a[s], b[s])  # (K, m, p)
            # the loss along the contiguous last dim: F.cross_entropy wants classes in dim 1, and on
            # the transposed (K, p, m) view it is 3x slower
            target = y[s].view(1, -1, 1).expand(K, -1, 1)
            loss_sum -= log_probs(logits, self.hparams.loss, self.loss_dtype).gather(-1, target).sum((1, 2))
            correct += (logits.argmax(-1) == y[s]).sum(1)
        self._record("val", loss=(loss_sum / n).float(), acc=correct / n)

    def _record(self, split: str, **values: Tensor) -> None:
        """Each `(K,)` metric of `values` under `{split}/{name}` in each job's row (see `member_metrics`)."""
        per_metric = torch.stack([v.float() for v in values.values()]).tolist()  # one device sync per split and epoch
        for name, per_member in zip(values, per_metric):
            for members, metrics in zip(self.job_members, self.job_metrics):
                metrics.update(member_metrics(f"{split}/{name}", per_member[members]))


def log_probs(logits: Tensor, loss: str, dtype: torch.dtype) -> Tensor:
    """Log-probabilities `(..., p)` of the classes for `logits: (..., p)` under the loss: softmax in
    `dtype`, or StableMax (`stablemax`) in float64."""
    if loss == "stablemax":
        return log_stablemax(logits.double())
    return logits.to(dtype).log_softmax(-1)


def log_stablemax(logits: Tensor) -> Tensor:
    """StableMax's log-probabilities (Prieto et al. 2025, their `log_stablemax`): softmax with exp
    replaced by s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0), which grows linearly, so the
    probabilities do not round to one-hot where softmax's do."""
    # the branch not taken is computed too: clamped, so that a logit of exactly 1 gives no 1/0 (a NaN gradient)
    s = torch.where(logits < 0, 1 / (1 - logits.clamp(max=0)), logits + 1)
    return (s / s.sum(-1, keepdim=True)).log()


def softmax_collapsed(logp: Tensor) -> Tensor:
    """The count `(K,)` of rows of softmax log-probabilities `logp: (K, B, p)` that collapsed
    (Prieto et al.'s softmax collapse): sum exp(z - max z) is exactly 1 in their dtype, so the
    largest log-probability is 0 and every other probability underflows against it."""
    return (logp.amax(-1) == 0).sum(1)


def grokfast_ema(opt: torch.optim.Optimizer, alpha: float, lamb: float) -> list[Tensor]:
    """Grokfast's EMA filter (Lee et al. 2024, their `gradfilter_ema`) on every parameter's `.grad`
    in place: `ema = alpha * ema + (1 - alpha) * grad`, then `grad += lamb * ema`. Returns the
    EMAs, the optimizer state's (`GROKFAST_EMA`); before the first step, which makes that state,
    new ones that start at the gradient as `gradfilter_ema`'s do (the caller stores them after the
    step)."""
    params = opt.param_groups[0]["params"]
    grads = [param.grad for param in params]
    emas = [opt.state[param].get(GROKFAST_EMA) for param in params]
    if emas[0] is None:
        emas = [grad.clone() for grad in grads]
    torch._foreach_mul_(emas, alpha)
    torch._foreach_add_(emas, grads, alpha=1 - alpha)
    torch._foreach_add_(grads, emas, alpha=lamb)
    return emas


def count_step(opt: LightningOptimizer) -> None:
    """Counts an epoch whose updates were made outside Lightning's optimizer wrapper as one
    Lightning optimizer step (`trainer.global_step` counts epochs; checkpointing keys on it):
    torch's optimizers skip parameters without gradients, so this `opt.step()` changes nothing."""
    for param in opt.optimizer.param_groups[0]["params"]:
        param.grad = None
    opt.step()


def member_adamw_step(opt: torch.optim.AdamW, groups: Sequence[tuple[Mapping, list[int]]], views: dict) -> None:
    """An AdamW step of a `fused=True` optimizer whose parameters stack K members, each group of
    `groups` (settings: lr, weight_decay, betas, eps; the members that have them) one call of
    torch's fused AdamW kernel on those members' slices, so each member is updated exactly as by
    `opt.step()` on its own. The first call makes the state as `opt.step()` would. `views`: a
    cache of the slices (the caller's), rebuilt when a tensor changes (a device move, new grads)."""
    params = opt.param_groups[0]["params"]
    states = [opt.state[param] for param in params]
    if not states[0]:  # torch.optim.AdamW._init_group, fused
        for param, state in zip(params, states):
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    tensors = [params, [param.grad for param in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]]
    key = tuple(t.data_ptr() for kind in tensors for t in kind)
    if views.get("key") != key:  # per group: its members' slices of each kind of tensor
        views.clear()
        views.update(key=key, slices=[[[t[k] for t in kind for k in members] for kind in tensors] for _, members in groups])
    steps = [state["step"] for state in states]
    torch._foreach_add_(steps, 1)
    for (group, members), (param_slices, grads, exp_avgs, exp_avg_sqs) in zip(groups, views["slices"]):
        beta1, beta2 = group["betas"]
        torch._fused_adamw_(param_slices, grads, exp_avgs, exp_avg_sqs, [], [step for step in steps for _ in members],
                            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                            eps=group["eps"], amsgrad=False, maximize=False)


def warn_diverged(loss: float, epoch: int) -> None:
    """The line a job's log gets when its training loss stops being finite."""
    log.warning("training loss is %s at epoch %d: stopping (diverged)", loss, epoch)


def member_metrics(key: str, per_member: list[float]) -> dict[str, float]:
    """`{key: value}` for one model; for K members their mean under `key`, the std under
    `{key}_std` and each one under `{key}_m{k}`."""
    if len(per_member) == 1:
        return {key: per_member[0]}
    t = torch.tensor(per_member, dtype=torch.float64)
    return {key: t.mean().item(), f"{key}_std": t.std().item(), **{f"{key}_m{k}": v for k, v in enumerate(per_member)}}
