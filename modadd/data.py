"""The mod-p dataset: every pair (a, b) once, a seeded split, tensors that live on the device.

The operation is addition by default; `sub`, `mul`, `div` (b != 0) and `x2xyy2`
(a^2 + ab + b^2) ask the same network other questions (universality experiments).

The model never sees a one-hot matrix: a pair is the two indices (a, b), and the first layer
gathers the matching weight columns (see `model.py`). The one-hot form is kept here only as
the definition the gather is tested against.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch import Tensor


def all_pairs(p: int) -> tuple[Tensor, Tensor]:
    """Every pair once, row a*p + b (the seed's order): `a, b: (p*p,)` long."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return a.reshape(-1), b.reshape(-1)


def _inverse(b: Tensor, p: int) -> Tensor:
    """b^-1 mod prime p (Fermat: b^(p-2)), by table; 0 maps to 0 and is never asked for."""
    table = torch.tensor([pow(x, p - 2, p) if x else 0 for x in range(p)])
    return table[b]


# operation -> label of the pair (a, b); `mul` and `div` need a prime p, `div` has b != 0
OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * _inverse(b, p)) % p,
    "x2xyy2": lambda a, b, p: (a * a + a * b + b * b) % p,
}


def labels(a: Tensor, b: Tensor, p: int, operation: str = "add") -> Tensor:
    """The answer `a o b mod p` for each pair, shape of `a` (default: `(a + b) mod p`)."""
    return OPERATIONS[operation](a, b, p)


def operation_pairs(p: int, operation: str = "add") -> tuple[Tensor, Tensor]:
    """The pairs an operation is defined on: all p*p (row a*p + b), without b = 0 for `div`."""
    a, b = all_pairs(p)
    if operation == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
    return a, b


def one_hot(a: Tensor, b: Tensor, p: int) -> Tensor:
    """The seed's input encoding `x: (n, 2p)`, x[a] = x[p + b] = 1."""
    x = torch.zeros(a.shape[0], 2 * p)
    rows = torch.arange(a.shape[0])
    x[rows, a] = 1.0
    x[rows, p + b] = 1.0
    return x


def split(p: int, train_fraction: float, seed: int, operation: str = "add") -> tuple[Tensor, Tensor]:
    """Indices of the train and validation pairs into `operation_pairs(p, operation)`.

    numpy's legacy `RandomState(seed).permutation` is the seed notebook's shuffle
    (`np.random.seed(1337); np.random.permutation(p*p)`), so seed 1337 gives its exact split.
    """
    n = len(operation_pairs(p, operation)[0])
    order = torch.from_numpy(np.random.RandomState(seed).permutation(n))
    n_train = int(train_fraction * n)
    return order[:n_train], order[n_train:]


class _Once:
    """A loader that yields one batch per epoch: the whole split, already on the device."""

    def __init__(self, batch: tuple[Tensor, Tensor, Tensor]):
        self.batch = batch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        yield self.batch

    def __len__(self) -> int:
        return 1


class ModAddData(L.LightningDataModule):
    """Train and validation splits as `(a, b, y)` tensors, one batch per epoch.

    Minibatching happens inside the training step on device-resident tensors, so an epoch
    costs no per-sample collation and Lightning's per-batch overhead is paid once.
    """

    def __init__(self, p: int, train_fraction: float, seed: int, operation: str = "add"):
        super().__init__()
        self.p, self.train_fraction, self.seed, self.operation = p, train_fraction, seed, operation

    def setup(self, stage: str | None = None) -> None:
        a, b = operation_pairs(self.p, self.operation)
        y = labels(a, b, self.p, self.operation)
        train_idx, val_idx = split(self.p, self.train_fraction, self.seed, self.operation)
        self.train = (a[train_idx], b[train_idx], y[train_idx])
        self.val = (a[val_idx], b[val_idx], y[val_idx])

    def train_dataloader(self) -> _Once:
        return _Once(self.train)

    def val_dataloader(self) -> _Once:
        return _Once(self.val)
