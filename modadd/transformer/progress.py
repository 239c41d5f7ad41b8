"""Nanda et al.'s progress measures of the transformer, from its weights and all p*p pairs.

Plain functions on a `TransformerStack` (no Lightning): the training callback logs them every N
epochs and the analysis reads them for the final model. Every pass over the pairs runs in chunks
of at most `max_bytes` of activations, so any p fits in memory; what is kept between chunks is
O(p^2) (logits summed by label) and O(p * d_mlp) (neuron sums), never the (p^2, p) logits.

- Key frequencies come from the MLP neurons (the paper code's criterion, which was the robust
  one here): the fraction of a neuron's variance over the (a, b) grid that lies in the 2D Fourier
  components of frequency k (the 3x3 block {0, k, -k}^2 less the constant). Those eight
  coefficients need only the neuron's sums over a, over b, over (a+b) mod p and over (a-b) mod p,
  so the spectrum is exact without the (p, p, d_mlp) grid. A frequency is key when at least
  `min_share` of the neurons have more than `min_fraction` of their variance in it.
- Restricted and excluded loss over all pairs (as for the MLP), and the excluded loss over the
  training pairs (the paper's), from the shared `fourier` parts. Their second pass reuses the
  first pass's logits when all (p^2, p) of them fit in `max_bytes`, else recomputes them.
- The embedding's Fourier norms: the norm over d_model of W_E's cos / sin components at each
  frequency over the p number tokens; their Gini coefficient measures its sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from modadd import fourier
from modadd.chunks import MAX_BYTES, chunks
from modadd.data import all_pairs
from modadd.data import labels as task_labels
from modadd.transformer.model import TransformerStack


@dataclass
class NeuronSpectrum:
    """`fraction: (K, d_mlp, p//2)`: the share of each neuron's variance at frequency k = 1..p//2
    (0 for a constant neuron); `freq: (K, d_mlp)` its largest, `explained: (K, d_mlp)` that share."""

    fraction: Tensor

    @property
    def freq(self) -> Tensor:
        return self.fraction.argmax(-1) + 1

    @property
    def explained(self) -> Tensor:
        return self.fraction.amax(-1)


def neuron_spectrum(sums: dict[str, Tensor], p: int) -> NeuronSpectrum:
    """The spectrum from the neurons' sums over the grid: `by_a, by_b, by_sum, by_diff: (K, p, d_mlp)`
    (sums over the other index, over a+b = s, over a-b = d, all mod p) and `sq: (K, d_mlp)` (sum of squares)."""
    total = sums["by_a"].sum(1)  # (K, d_mlp)
    variance = sums["sq"] - total.square() / p**2  # sum over the grid of (x - mean)^2
    k = torch.arange(1, p // 2 + 1, device=total.device)
    # |F(k, 0)|^2 + |F(-k, 0)|^2 = 2 |DFT_a(by_a)[k]|^2 (real input); the same for (0, k), (k, k), (k, -k)
    power = {name: torch.fft.rfft(sums[name].double(), dim=1)[:, k].abs().square()  # (K, p//2, d_mlp)
             for name in ("by_a", "by_b", "by_sum", "by_diff")}
    half = (2 * k == p).double()[:, None]  # k = p/2 (even p) is its own mirror, and there (k, k) = (k, -k)
    power = power["by_a"] + power["by_b"] + power["by_sum"] + power["by_diff"] * (1 - half)
    mirrored = 2 - half
    energy = power * mirrored / p**2  # Parseval: sum x^2 = |F|^2 / p^2
    positive = variance > 1e-12 * sums["sq"].clamp_min(1e-30)
    fraction = torch.where(positive[:, None], energy / variance.double().clamp_min(1e-30)[:, None], 0.0)
    return NeuronSpectrum(fraction.transpose(1, 2).float())


def key_frequencies(spectrum: NeuronSpectrum, min_fraction: float = 0.5, min_share: float = 0.01) -> list[Tensor]:
    """Per member, the sorted frequencies that at least `min_share` of the neurons (and at least
    one) put more than `min_fraction` of their variance in."""
    keys = []
    for fraction in spectrum.fraction:  # (d_mlp, p//2)
        counts = (fraction > min_fraction).sum(0)
        keys.append((counts >= max(1, min_share * fraction.shape[0])).nonzero().flatten() + 1)
    return keys


def embedding_fourier_norms(W_E: Tensor, p: int) -> Tensor:
    """`(K, p//2 + 1)`: the norm over d_model of the embedding's component at each frequency k
    (cos and sin together) over the number tokens 0..p-1 (k = 0: the mean)."""
    spectrum = torch.fft.rfft(W_E[:, :p].double(), dim=1)  # (K, p//2 + 1, d_model)
    return spectrum.abs().square().sum(-1).sqrt().float()


@torch.no_grad()
def progress_measures(net: TransformerStack, train: Tensor | None = None, operation: str = "add",
                      max_bytes: int = MAX_BYTES) -> tuple[dict[str, Tensor], NeuronSpectrum, list[Tensor]]:
    """The measures `{name: (K,)}` at the current weights, the neurons' spectrum and the key
    frequencies per member. `train`: the training pairs' rows a*p + b (for the excluded loss).

    Measures: `key_freqs` (how many), `restricted_loss` and `excluded_loss` (all pairs, as the
    MLP's), `excluded_loss_train` (the training pairs: the paper's; NaN without `train`),
    `full_acc` (the operation's pairs), `fourier_gini` (of the embedding's norms at k >= 1) and
    `weight_norm` (of every parameter). The losses need addition: for other operations they are
    NaN, and the spectrum and key frequencies are those over the tokens as they are (no discrete
    logs for mul / div, unlike the MLP's fits).
    """
    p, K = net.p, net.members
    a, b = all_pairs(p)
    a, b = a.to(net.W_E.device), b.to(net.W_E.device)
    labels = fourier.sum_labels(p, a.device)  # (a + b) mod p: the restricted and excluded losses' labels
    answers = task_labels(a, b, p, operation)  # the operation's: for the accuracy
    defined = b != 0 if operation == "div" else torch.ones_like(b, dtype=torch.bool)
    d_mlp = net.shape["d_mlp"]
    sums = {name: torch.zeros(K, p, d_mlp, device=a.device, dtype=torch.float64) for name in ("by_a", "by_b", "by_sum", "by_diff")}
    sums["sq"] = torch.zeros(K, d_mlp, device=a.device, dtype=torch.float64)
    by_label = torch.zeros(K, p, p, device=a.device, dtype=torch.float64)
    correct = torch.zeros(K, device=a.device)
    kept: list[Tensor] | None = [] if K * p**3 * 8 <= max_bytes else None  # the logits, for the second pass, if they fit
    slices = list(chunks(p * p, net.row_bytes(), max_bytes))
    for s in slices:
        logits, cache = net.run(a[s], b[s])
        if kept is not None:
            kept.append(logits.double())
        neurons = cache.neurons.double()  # (K, n, d_mlp)
        for name, index in (("by_a", a[s]), ("by_b", b[s]), ("by_sum", (a[s] + b[s]) % p), ("by_diff", (a[s] - b[s]) % p)):
            sums[name].index_add_(1, index, neurons)
        sums["sq"] += neurons.square().sum(1)
        by_label += fourier.sum_by_label(logits.double(), labels[s])
        correct += ((logits.argmax(-1) == answers[s]) & defined[s]).sum(1)
    spectrum = neuron_spectrum(sums, p)
    keys = key_frequencies(spectrum)

    nan = torch.full((K,), float("nan"))
    restricted, excluded, excluded_train = nan, nan, nan
    if operation == "add":
        tables = torch.stack([fourier.restricted_logits(by_label[k], keys[k]) for k in range(K)])  # (K, s, c)
        restricted = fourier.restricted_loss(tables)
        logits = (lambda: zip(slices, kept)) if kept is not None else (lambda: ((s, net(a[s], b[s]).double()) for s in slices))
        excluded, over_train = fourier.excluded_loss(logits, tables, train)
        excluded_train = nan if over_train is None else over_train
    norms = embedding_fourier_norms(net.W_E.detach(), p)[:, 1:]
    weight_norm = torch.stack([w.detach().square().flatten(1).sum(1) for w in net.parameters()]).sum(0).sqrt()
    measures = {
        "key_freqs": torch.tensor([float(len(k)) for k in keys]),
        "restricted_loss": restricted.float().cpu(),
        "excluded_loss": excluded.float().cpu(),
        "excluded_loss_train": excluded_train.float().cpu(),
        "full_acc": (correct / defined.sum()).cpu(),
        "fourier_gini": fourier.gini(norms).cpu(),
        "weight_norm": weight_norm.cpu(),
    }
    return measures, spectrum, keys
