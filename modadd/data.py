"""The mod-p dataset: every pair (a, b) once, a seeded split, tensors that live on the device.

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


def labels(a: Tensor, b: Tensor, p: int) -> Tensor:
    """`(a + b) mod p`, shape of `a`."""
    return (a + b) % p


def one_hot(a: Tensor, b: Tensor, p: int) -> Tensor:
    """The seed's input encoding `x: (n, 2p)`, x[a] = x[p + b] = 1."""
    x = torch.zeros(a.shape[0], 2 * p)
    rows = torch.arange(a.shape[0])
    x[rows, a] = 1.0
    x[rows, p + b] = 1.0
    return x


def split(p: int, train_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the train and validation pairs into `all_pairs(p)`.

    numpy's legacy `RandomState(seed).permutation` is the seed notebook's shuffle
    (`np.random.seed(1337); np.random.permutation(p*p)`), so seed 1337 gives its exact split.
    """
    order = torch.from_numpy(np.random.RandomState(seed).permutation(p * p))
    n_train = int(train_fraction * p * p)
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

    def __init__(self, p: int, train_fraction: float, seed: int):
        super().__init__()
        self.p, self.train_fraction, self.seed = p, train_fraction, seed

    def setup(self, stage: str | None = None) -> None:
        a, b = all_pairs(self.p)
        y = labels(a, b, self.p)
        train_idx, val_idx = split(self.p, self.train_fraction, self.seed)
        self.train = (a[train_idx], b[train_idx], y[train_idx])
        self.val = (a[val_idx], b[val_idx], y[val_idx])

    def train_dataloader(self) -> _Once:
        return _Once(self.train)

    def val_dataloader(self) -> _Once:
        return _Once(self.val)
