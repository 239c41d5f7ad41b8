"""Bussmann's experiments on the cosine algorithm, as plain functions on weight tensors.

The post hypothesises that neuron n computes relu(cos(w a + phi_a) + cos(w b + phi_b)) with
w = 2*pi*k/p and writes cos(w c + phi_a + phi_b) to output c: the product-to-sum term
cos(w (a+b) + phi_a + phi_b) of the activation lines up with the output weights exactly when
c = a + b. Experiment 2 (`replacement_curve`) swaps trained neurons for their cosine fits,
experiment 3 (`construction_curve("cosine", ...)`) builds networks from random cosine neurons
alone (`"gromov"`: Gromov's analytic solution for x^2), and
`frequency_ablation` removes the neurons of one frequency at a time. The networks themselves
are built in `modadd.mlp.construct`; every experiment takes the hidden `activation` by name.

Weight layout (the seed's), leading dims `...` allowed everywhere: `fc1: (..., hidden, 2p)`,
`fc2: (..., p, hidden)`. Phases follow `modadd.fourier`'s convention (the fitted cosine
reproduces the weights); the phase-sum rule holds in the seed's mirrored convention too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from modadd.mlp.construct import CONSTRUCTIONS
from modadd.chunks import MAX_BYTES
from modadd.fourier import NeuronFits, fit_neurons, logit_chunks, logit_row_bytes, sum_labels

FRACTIONS = tuple(i / 10 for i in range(11))
NEURONS = (16, 32, 64, 128, 256, 512)


@torch.no_grad()
def accuracy_all_pairs(fc1: Tensor, fc2: Tensor, activation: str = "relu", max_bytes: int = MAX_BYTES) -> Tensor:
    """Accuracy `(...)` over all p*p pairs against the label (a + b) mod p.

    The networks are evaluated in groups of the flattened leading dims, over the pairs in slices,
    each holding at most `max_bytes` of activations (`fourier.logit_chunks`), so a stack of
    thousands of variants, or one network at a large p, needs no more memory than that. A
    prediction is `argmax` (ties go to the smallest class), so constant logits score exactly 1/p.
    """
    p, hidden = fc2.shape[-2:]
    batch = fc2.shape[:-2]
    if fc1.shape != (*batch, hidden, 2 * p):
        raise ValueError(f"fc1 {tuple(fc1.shape)} must be (..., hidden, 2p) for fc2 {tuple(fc2.shape)}")
    labels = sum_labels(p, fc2.device)  # (p*p,), row a*p + b
    group = max(1, max_bytes // (p * p * logit_row_bytes(p, hidden)))  # networks whose pairs fit in one slice
    correct = []
    for w1, w2 in zip(fc1.reshape(-1, hidden, 2 * p).split(group), fc2.reshape(-1, p, hidden).split(group)):
        right = [(logits.argmax(dim=-1) == labels[s]).sum(dim=-1) for s, logits in logit_chunks(w1, w2, activation, max_bytes)()]
        correct.append(torch.stack(right).sum(dim=0))
    return (torch.cat(correct) / (p * p)).reshape(batch)


def replace_with_fits(fc1: Tensor, fc2: Tensor, fits: NeuronFits, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The seed's `forward_with_replaced_weights` as weights: neurons where `mask` is True get
    their a-, b- and out-weights replaced by the fitted cosines (offsets included). Unlike the
    seed's, these cosines reproduce the weights, not their mirror image x -> -x.

    `mask: (..., hidden)` bool broadcasts against the networks' `(..., hidden)`, so a stack of
    masks `(V, 1, ..., 1, hidden)` gives V variants of every network at once:
    `fc1: (V, ..., hidden, 2p)`, `fc2: (V, ..., p, hidden)`.
    """
    fit1, fit2 = fits.to_weights()
    return torch.where(mask[..., None], fit1, fc1), torch.where(mask[..., None, :], fit2, fc2)


@torch.no_grad()
def replacement_curve(
    fc1: Tensor, fc2: Tensor, fractions: Sequence[float] = FRACTIONS, orders: int = 5, seed: int = 0,
    activation: str = "relu",
) -> list[dict]:
    """Experiment 2: accuracy when round(fraction * hidden) neurons are replaced by their fits.

    For each of `orders` random neuron orders (a `torch.Generator` seeded with `seed`, shared
    by all networks of a stack) the first neurons of the order are replaced; all variants run
    as one batch. A fraction that replaces no neuron reports the unmodified networks'
    `accuracy_all_pairs` itself, so it equals the model's own accuracy bit for bit. One dict per
    fraction: `fraction`, `replaced` (neuron count), `accs` (`.tolist()` of `(orders, ...)`),
    `acc_mean` and `acc_std` (over the orders; population std, numpy's default), `(...)`.
    """
    hidden = fc2.shape[-1]
    batch = fc2.shape[:-2]
    counts = torch.tensor([round(f * hidden) for f in fractions], device=fc2.device)
    gen = torch.Generator().manual_seed(seed)
    # rank of every neuron in each random order: "among the first n" is rank < n
    ranks = torch.rand(orders, hidden, generator=gen).argsort(dim=-1).argsort(dim=-1).to(fc2.device)
    mask = (ranks < counts[:, None, None]).view(len(fractions), orders, *(1,) * len(batch), hidden)
    acc = accuracy_all_pairs(fc1, fc2, activation).expand(len(fractions), orders, *batch).clone()
    changed = counts > 0
    if changed.any():
        variants = replace_with_fits(fc1, fc2, fit_neurons(fc1, fc2), mask[changed])
        acc[changed] = accuracy_all_pairs(*variants, activation)
    mean, std = acc.mean(dim=1), acc.std(dim=1, correction=0)
    return [
        {"fraction": f, "replaced": int(n), "acc_mean": m.tolist(), "acc_std": s.tolist(), "accs": a.tolist()}
        for f, n, m, s, a in zip(fractions, counts, mean, std, acc)
    ]


def construction_draws(
    construction: str, p: int, neurons: Sequence[int] = NEURONS, draws: int = 5, seed: int = 0,
    activation: str | None = None, device: torch.device | str = "cpu",
) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
    """Hand-built networks (`construct.CONSTRUCTIONS`) of each width N with their all-pairs
    accuracy, using the construction's own activation unless `activation` is given: yields
    `(N, fc1: (draws, N, 2p), fc2: (draws, p, N), acc: (draws,))`. The draws come from one CPU
    generator seeded with `seed` (so they do not depend on `device`); each N runs as one batch.
    """
    build, own_activation = CONSTRUCTIONS[construction]
    gen = torch.Generator().manual_seed(seed)
    for n in neurons:
        nets = [build(p, n, gen, torch.float32) for _ in range(draws)]
        fc1, fc2 = (torch.stack(w).to(device) for w in zip(*nets))
        yield n, fc1, fc2, accuracy_all_pairs(fc1, fc2, activation or own_activation)


def construction_curve(
    construction: str, p: int, neurons: Sequence[int] = NEURONS, draws: int = 5, seed: int = 0,
    activation: str | None = None, device: torch.device | str = "cpu",
) -> list[dict]:
    """Accuracy against width N (`construction_draws`): "cosine" is the post's experiment 3
    (>95% at N = 256 and perfect at N = 512 for p = 113), "gromov" is exact as N grows. One dict
    per N: `neurons`, `accs` (list of `draws`), `acc_mean`, `acc_std` (population std)."""
    return [
        {"neurons": n, "acc_mean": acc.mean().item(), "acc_std": acc.std(correction=0).item(), "accs": acc.tolist()}
        for n, _, _, acc in construction_draws(construction, p, neurons, draws, seed, activation, device)
    ]


@torch.no_grad()
def frequency_ablation(fc1: Tensor, fc2: Tensor, fits: NeuronFits, activation: str = "relu") -> list[dict]:
    """Accuracy with all neurons of one out-frequency zeroed (in- and out-weights), per frequency.

    One dict per frequency that some neuron (of any network in the stack) has as `fits.out.freq`,
    sorted: `freq`, `neurons` (how many have it) and `acc`, both `.tolist()` of `(...)`. All
    ablations run as one batch. Constant neurons (r2 = 0) count under their nominal freq 1.
    """
    freq = fits.out.freq  # (..., hidden)
    freqs = freq.unique()  # sorted
    used = freq == freqs.view(-1, *(1,) * freq.dim())  # (F, ..., hidden)
    acc = accuracy_all_pairs(torch.where(used[..., None], 0.0, fc1), torch.where(used[..., None, :], 0.0, fc2), activation)
    return [
        {"freq": k, "neurons": n.tolist(), "acc": a.tolist()}
        for k, n, a in zip(freqs.tolist(), used.sum(dim=-1), acc)
    ]
