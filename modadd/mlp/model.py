"""The MLP in the seed's layout, and the same network stacked K times for fast training.

`MLP` is the seed's class (its `state_dict` loads into the seed notebook's `MLP`): analysis and
saved models use it. `MLPStack` holds K independent members as one pair of tensors with a
leading member dimension, so K models train with one set of kernels. Its parameters are laid
out for the gather and the batched matmul (`W_in: (K, 2p, hidden)`, `W_out: (K, hidden, p)`),
the transposes of the seed's `fc1.weight` / `fc2.weight`.

`MLPStack.backward` is a hand-written backward pass: on this tiny model the cost of a step is
the number of small ops, and autograd's graph doubles it. Autograd (`MLPStack.forward` +
`loss.backward()`) stays the reference it is tested against.

The hidden activation is `relu` (the seed's), `quadratic` (x^2: Gromov's, for which an exact
analytic solution is known) or `gelu`. It is not part of the weights: a saved model's
activation lives in its job's config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modadd.config import ACTIVATIONS
from modadd.family import pair_bytes


def activate(pre: Tensor, activation: str = "relu", inplace: bool = False) -> Tensor:
    """The hidden activation by name (see `ACTIVATIONS`); `inplace` overwrites `pre` where the
    activation allows it (relu, quadratic)."""
    if activation == "relu":
        return F.relu(pre, inplace=inplace)
    if activation == "quadratic":
        return pre.square_() if inplace else pre.square()
    if activation == "gelu":
        return F.gelu(pre)
    raise ValueError(f"activation={activation!r} is invalid: must be one of {', '.join(ACTIVATIONS)}")


def activation_backward(d_h: Tensor, pre: Tensor, h: Tensor, activation: str) -> Tensor:
    """d loss / d pre from d loss / d h, for `h = activate(pre, activation)` (one kernel each)."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(d_h, h, 0)
    if activation == "quadratic":
        return d_h.mul_(pre).mul_(2)
    return torch.ops.aten.gelu_backward(d_h, pre)


class MLP(nn.Module):
    """2p -> hidden -> p, no biases: `fc1.weight: (hidden, 2p)`, `fc2.weight: (p, hidden)`."""

    def __init__(self, p: int, hidden: int, activation: str = "relu"):
        super().__init__()
        self.p = p
        self.activation = activation
        self.fc1 = nn.Linear(2 * p, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, p, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(n, p)` from the seed's one-hot inputs `x: (n, 2p)`."""
        return self.fc2(activate(self.fc1(x), self.activation))

    def forward_pairs(self, a: Tensor, b: Tensor) -> Tensor:
        """Logits `(n, p)` for pairs `a, b: (n,)`: the one-hot matmul done as a column gather."""
        W = self.fc1.weight
        return self.fc2(activate(W[:, a].T + W[:, self.p + b].T, self.activation))


class MLPStack(nn.Module):
    """K independent MLPs as `W_in: (K, 2p, hidden)` and `W_out: (K, hidden, p)`."""

    loss_dtype = torch.float32

    def __init__(self, W_in: Tensor, W_out: Tensor, activation: str = "relu"):
        super().__init__()
        self.p = W_out.shape[-1]
        self.activation = activation
        self.W_in = nn.Parameter(W_in)
        self.W_out = nn.Parameter(W_out)

    @classmethod
    def init(cls, p: int, hidden: int, seeds: list[int], activation: str = "relu") -> MLPStack:
        """Member k is initialised exactly as `torch.manual_seed(seeds[k]); MLP(p, hidden)`,
        i.e. as the seed notebook initialises its model (nn.Linear's default)."""
        members = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                members.append(MLP(p, hidden, activation))
        return cls.from_mlps(members)

    @classmethod
    def from_mlps(cls, mlps: list[MLP]) -> MLPStack:
        W_in = torch.stack([m.fc1.weight.detach().T for m in mlps]).contiguous()
        W_out = torch.stack([m.fc2.weight.detach().T for m in mlps]).contiguous()
        return cls(W_in, W_out, mlps[0].activation)

    @property
    def members(self) -> int:
        return self.W_in.shape[0]

    def row_bytes(self) -> int:
        """Bytes per input pair of a pass over a batch of pairs (`family.pair_bytes`): pre- and
        post-activation, the logits, their log-softmax and gradient."""
        return pair_bytes("mlp", {"p": self.p, "hidden": self.W_in.shape[-1], "members": self.members})

    def member(self, k: int) -> MLP:
        """Member k as a seed-layout `MLP` (a copy, on the CPU)."""
        mlp = MLP(self.p, self.W_in.shape[-1], self.activation)
        with torch.no_grad():
            mlp.fc1.weight.copy_(self.W_in[k].T)
            mlp.fc2.weight.copy_(self.W_out[k].T)
        return mlp

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member k in the seed's state_dict layout (`fc1.weight`, `fc2.weight`)."""
        return self.member(k).state_dict()

    def seed_weights(self) -> tuple[Tensor, Tensor]:
        """All members in the seed's layout: `fc1: (K, hidden, 2p)`, `fc2: (K, p, hidden)`."""
        return self.W_in.detach().transpose(1, 2), self.W_out.detach().transpose(1, 2)

    def _hidden(self, a: Tensor, b: Tensor) -> Tensor:
        """Pre-activations `(K, B, hidden)` for per-member pairs `a, b: (K, B)`."""
        K, two_p, hidden = self.W_in.shape
        offset = torch.arange(K, device=a.device).unsqueeze(1) * two_p
        W = self.W_in.reshape(K * two_p, hidden)
        return (W[(a + offset).reshape(-1)] + W[(b + self.p + offset).reshape(-1)]).view(*a.shape, hidden)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Logits `(K, B, p)`; `a, b` are `(K, B)` (each member its own pairs) or `(B,)` (shared)."""
        if a.dim() == 1:
            a, b = a.expand(self.members, -1), b.expand(self.members, -1)
        return torch.bmm(activate(self._hidden(a, b), self.activation), self.W_out)

    @torch.no_grad()
    def backward(self, a: Tensor, b: Tensor, y: Tensor, loss: str = "cross_entropy",
                 collapsed: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The loss (`cross_entropy` or `stablemax`) of one minibatch per member; its exact
        gradients go to `.grad`.

        The counterpart of `loss.backward()` on `forward` (`modadd.module.log_probs`), for
        `a, b, y: (K, B)`. The gradient buffers are reused from step to step (fresh ones cost page
        faults on every step). Returns `loss: (K,)` (mean over the batch) and `correct: (K,)` (count
        of right answers); adds the count of rows whose softmax collapsed to `collapsed: (K,)`.
        """
        K, B = a.shape
        two_p, hidden = self.W_in.shape[1:]
        for param in (self.W_in, self.W_out):
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        offset = torch.arange(K, device=a.device).unsqueeze(1) * two_p
        rows_a, rows_b = (a + offset).reshape(-1), (b + self.p + offset).reshape(-1)
        W = self.W_in.reshape(K * two_p, hidden)
        pre = (W[rows_a] + W[rows_b]).view(K, B, hidden)
        h = activate(pre, self.activation)
        logits = torch.bmm(h, self.W_out)  # (K, B, p)
        target = y.unsqueeze(-1)
        # "the right logit is the largest" is argmax == y but for exact ties (measure zero once
        # trained) at a fifth of argmax's cost; all-equal logits (a dead network) count as wrong
        right = logits.gather(-1, target)
        correct = ((right >= logits.amax(-1, keepdim=True)) & (right > logits.amin(-1, keepdim=True))).sum((1, 2))
        logp = logits.log_softmax(-1) if loss != "stablemax" or collapsed is not None else None  # StableMax needs none
        if collapsed is not None:
            collapsed += (logp.amax(-1) == 0).sum(1)  # modadd.module.softmax_collapsed
        if loss == "stablemax":
            mean_loss, d_logits = _stablemax_backward(logits, target)
        else:
            mean_loss = -logp.gather(-1, target).mean((1, 2))
            d_logits = logp.exp_().scatter_add_(-1, target, torch.full_like(target, -1, dtype=logp.dtype))
            d_logits /= B
        torch.bmm(h.transpose(1, 2), d_logits, out=self.W_out.grad)
        d_pre = activation_backward(torch.bmm(d_logits, self.W_out.transpose(1, 2)), pre, h, self.activation)
        d_pre = d_pre.reshape(K * B, hidden)
        dW_in = self.W_in.grad.view(K * two_p, hidden).zero_()
        dW_in.index_add_(0, rows_a, d_pre).index_add_(0, rows_b, d_pre)
        return mean_loss, correct


def _stablemax_backward(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """StableMax cross-entropy of `logits: (K, B, p)` against `target: (K, B, 1)`, in float64 as
    `modadd.module.log_stablemax` computes it: the mean loss `(K,)` and its gradient `(K, B, p)`
    in the logits' dtype. With s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0) and S = sum s, the row's
    loss is log S - log s_y, and d/dx_c = s'(x_c) / S - [c = y] s'(x_y) / s_y with s' = s^2 (x < 0), 1."""
    x = logits.double()
    negative = x < 0
    s = torch.where(negative, 1 / (1 - x), x + 1)
    total = s.sum(-1, keepdim=True)
    s_y = s.gather(-1, target)
    ds = torch.where(negative, s * s, 1.0)
    d_logits = (ds / total).scatter_add_(-1, target, -ds.gather(-1, target) / s_y)
    return -(s_y / total).log().mean((1, 2)), d_logits.div_(x.shape[1]).to(logits.dtype)
