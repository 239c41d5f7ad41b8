"""Cosine fits of the MLP's neurons and Fourier progress measures (Nanda et al.), in torch.

Every weight vector of a grokked network is close to one cosine over Z_p: neuron n's input
weights from a (`fc1[..., n, :p]`), from b (`fc1[..., n, p:]`) and its output weights
(`fc2[..., :, n]`). `fit_cosines` fits `scale * cos(2*pi*freq*x/n + phase) + offset` to the
last dim of any tensor with one DFT (`dft`: a matmul), so a whole stack of K networks is fitted at once.

Phase convention. Here `phase = +angle(Y_k)` (Y = DFT of the vector), so `CosineFit.evaluate`
reproduces the vector. The seed's `find_cosine` returns `-angle(Y_k)` and then evaluates
`cos(2*pi*k*x/n + s)`, which reconstructs the mirror image x -> -x (mod n) of the weights:
its phases are the negatives of ours. The phase-sum rule `phase_out = phase_a + phase_b` holds
in both conventions, because x -> -x is an automorphism of addition mod p. (The seed also
searches only k = 1..n//2 - 1, so for odd p it never finds the top frequency (p-1)/2; here
k ranges over 1..n//2.)

Weight layout (the seed's; leading dims `...`, e.g. a member dim K, are allowed everywhere):
`fc1: (..., hidden, 2p)`, `fc2: (..., p, hidden)`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from modadd.chunks import MAX_BYTES, chunks
from modadd.mlp.model import activate


def wrap_phase(x: Tensor) -> Tensor:
    """Angles wrapped into (-pi, pi]."""
    r = math.pi - torch.remainder(math.pi - x, 2 * math.pi)
    # remainder can round up to exactly 2*pi for tiny negative arguments
    return torch.where(r <= -math.pi, r + 2 * math.pi, r)


@dataclass
class CosineFit:
    """Best single cosine `scale * cos(2*pi*freq*x/n + phase) + offset` of vectors of length n.

    All fields have shape `(...)`; `freq` is long in 1..n//2, `phase` in (-pi, pi], and `r2` is
    the fraction of the variance about the mean that the cosine explains (0 for a constant
    vector, whose `freq` and `phase` mean nothing).
    """

    freq: Tensor
    phase: Tensor
    scale: Tensor
    offset: Tensor
    r2: Tensor

    def evaluate(self, n: int) -> Tensor:
        """The fitted cosines sampled at x = 0..n-1: `(..., n)`."""
        x = torch.arange(n, device=self.freq.device)
        # reduce k*x mod n in integers so the angle stays exact for large k*x
        angle = (2 * math.pi / n) * ((self.freq[..., None] * x) % n).to(self.scale.dtype)
        return self.scale[..., None] * torch.cos(angle + self.phase[..., None]) + self.offset[..., None]

    def unbind(self) -> list[CosineFit]:
        """Splits a fit of stacked vector types `(..., m, hidden)` along dim -2 (views)."""
        return [CosineFit(*parts) for parts in zip(*(getattr(self, f.name).unbind(-2) for f in fields(self)))]


@functools.lru_cache(maxsize=16)
def _dft_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`(n, 2 (n//2 + 1))`: cos(2 pi k x/n) for k = 0..n//2, then -sin(2 pi k x/n)."""
    with torch.inference_mode(False), torch.no_grad():  # cached: must serve later autograd calls too
        x = torch.arange(n, dtype=torch.float64)
        angle = (2 * math.pi / n) * ((x[:, None] * x[None, : n // 2 + 1]) % n)  # k*x reduced mod n: exact
        return torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1).to(dtype=dtype, device=device)


def dft(y: Tensor) -> Tensor:
    """`torch.fft.rfft(y, dim=-1)` as real numbers `(..., 2, n//2 + 1)` (real parts, then
    imaginary), as one matmul with a cached DFT matrix: for the prime lengths (n = p) of this
    package it is 2-4x faster than the FFT, which falls back to Bluestein's algorithm there."""
    n = y.shape[-1]
    return (y @ _dft_matrix(n, y.dtype, y.device)).unflatten(-1, (2, n // 2 + 1))


def fit_cosines(y: Tensor) -> CosineFit:
    """Fit one cosine along the last dim of `y: (..., n)` (real, n >= 2), all vectors at once.

    The frequency is the k in 1..n//2 with the largest |Y_k| (ties: smallest k); the fitted
    cosine is the vector's orthogonal projection onto frequency k, so by Parseval
    r2 = w_k |Y_k|^2 / sum_{j>=1} w_j |Y_j|^2 exactly (= 1 - SS_res/SS_tot), with w = 2 for
    ordinary bins and w = 1 for the real Nyquist bin k = n/2 (even n), where
    scale = |Y_k|/n and phase is 0 or pi instead of scale = 2|Y_k|/n and phase = angle(Y_k).
    """
    n = y.shape[-1]
    if n < 2:
        raise ValueError(f"need vectors of length >= 2, got {n}")
    re, im = dft(y).unbind(-2)  # (..., n//2 + 1) each
    power = re.square() + im.square()  # |Y_k|^2 (elementwise ops: a reduction over re/im is 5x slower)
    # n * SS_tot by Parseval: bins 0 < k < n/2 also stand for bin n-k (weight 2), Nyquist does not
    ss_tot = 2 * power[..., 1:].sum(dim=-1)
    freq = power[..., 1:].max(dim=-1).indices + 1  # the first maximum
    re_k = re.gather(-1, freq[..., None]).squeeze(-1)  # contiguous, unlike views of one gather:
    im_k = im.gather(-1, freq[..., None]).squeeze(-1)  # atan2 on strided views is 10x slower
    magnitude = torch.hypot(re_k, im_k)
    phase = torch.atan2(im_k, re_k)  # in [-pi, pi]
    phase = torch.where(phase == -math.pi, math.pi, phase)  # (-pi, pi], as `wrap_phase` gives
    if n % 2 == 0:  # the Nyquist bin k = n/2 is real and counts once
        ss_tot = ss_tot - power[..., -1]
        at_nyquist = 2 * freq == n
        weight = 2 - at_nyquist.to(power.dtype)
        phase = torch.where(at_nyquist, (re_k < 0).to(power.dtype) * math.pi, phase)
    else:
        weight = 2
    constant = y.amax(dim=-1) == y.amin(dim=-1)
    r2 = torch.where(constant, 0.0, weight * magnitude.square() / ss_tot)  # ss_tot = 0 only if constant
    return CosineFit(freq=freq, phase=phase, scale=weight * magnitude / n, offset=y.mean(dim=-1), r2=r2)


def _check_weights(fc1: Tensor, fc2: Tensor) -> int:
    """p from `fc2: (..., p, hidden)`, after checking `fc1: (..., hidden, 2p)` matches it."""
    p, hidden = fc2.shape[-2:]
    if fc1.shape[-2:] != (hidden, 2 * p) or fc1.shape[:-2] != fc2.shape[:-2]:
        raise ValueError(
            f"fc1 {tuple(fc1.shape)} must be (..., hidden, 2p) for fc2 {tuple(fc2.shape)} = (..., p, hidden)"
        )
    return p


def _neuron_vectors(fc1: Tensor, fc2: Tensor, p: int) -> Tensor:
    """Each neuron's a, b and out weight vectors stacked: `(..., 3, hidden, p)`."""
    return torch.stack([fc1[..., :p], fc1[..., p:], fc2.transpose(-1, -2)], dim=-3)


@dataclass
class NeuronFits:
    """Cosine fits of every neuron's a-, b- and out-weights (fields `(..., hidden)`) over Z_p."""

    a: CosineFit
    b: CosineFit
    out: CosineFit
    p: int

    def member(self, k: int) -> NeuronFits:
        """The fits of member k of a stack (leading dim), without fitting again."""
        pick = lambda fit: CosineFit(*(getattr(fit, f.name)[k] for f in fields(fit)))  # noqa: E731
        return NeuronFits(a=pick(self.a), b=pick(self.b), out=pick(self.out), p=self.p)

    def to_weights(self) -> tuple[Tensor, Tensor]:
        """The network with every weight vector replaced by its cosine: `fc1: (..., hidden, 2p)`,
        `fc2: (..., p, hidden)` (the seed's `forward_with_replaced_weights` for all neurons)."""
        fc1 = torch.cat([self.a.evaluate(self.p), self.b.evaluate(self.p)], dim=-1)
        return fc1, self.out.evaluate(self.p).transpose(-1, -2)

    def table(self) -> dict[str, Tensor]:
        """Per-neuron columns `(..., hidden)` named `<field>_<a|b|out>`, e.g. for a CSV file."""
        return {
            f"{f.name}_{kind}": getattr(fit, f.name)
            for kind, fit in (("a", self.a), ("b", self.b), ("out", self.out))
            for f in fields(fit)
        }


def fit_neurons(fc1: Tensor, fc2: Tensor) -> NeuronFits:
    """Fit all neurons' three weight vectors with a single `fit_cosines` call."""
    p = _check_weights(fc1, fc2)
    a, b, out = fit_cosines(_neuron_vectors(fc1, fc2, p)).unbind()
    return NeuronFits(a=a, b=b, out=out, p=p)


def _weighted_counts(freq: Tensor, bins: int, weight: Tensor) -> Tensor:
    """Sum of `weight` per value of `freq: (..., hidden)` -> `(..., bins)`, a batched bincount."""
    counts = torch.zeros(*freq.shape[:-1], bins, dtype=weight.dtype, device=freq.device)
    return counts.scatter_add_(-1, freq, weight)


def freq_counts(freq: Tensor, p: int) -> Tensor:
    """Number of neurons at each frequency: `freq: (..., hidden)` -> `(..., p//2 + 1)`, index k."""
    return _weighted_counts(freq, p // 2 + 1, torch.ones_like(freq))


def clean_neurons(fits: NeuronFits) -> Tensor:
    """`(..., hidden)` bool: the neurons whose a, b and out frequencies agree and none of whose
    vectors is constant (r2 = 0: a constant vector has no frequency)."""
    a, b, out = fits.a, fits.b, fits.out
    return (a.freq == b.freq) & (b.freq == out.freq) & (a.r2 > 0) & (b.r2 > 0) & (out.r2 > 0)


def fit_statistics(fits: NeuronFits) -> dict[str, Tensor]:
    """Summaries over the hidden dim, each of shape `(...)`.

    `frac_same_freq`: share of the clean neurons (`clean_neurons`). `phase_sum_error_median`: median over clean neurons of
    |wrap(phase_out - phase_a - phase_b)| (NaN if none is clean). `r2_mean_{a,b,out}`: mean
    r2. `scale_ratio_mean`: mean of scale_a / scale_b. `distinct_freqs`: number of distinct
    out-frequencies among clean neurons, or among all neurons if none is clean.
    """
    a, b, out = fits.a, fits.b, fits.out
    same = clean_neurons(fits)
    error = wrap_phase(out.phase - a.phase - b.phase).abs()
    error = torch.where(same, error, torch.nan)
    counted = same | ~same.any(dim=-1, keepdim=True)  # the clean neurons, or all if none is
    counts = _weighted_counts(out.freq, fits.p // 2 + 1, counted.long())
    return {
        "frac_same_freq": same.to(a.phase.dtype).mean(dim=-1),
        # the mean of the lower and upper median (torch.nanmedian gives the lower): nanquantile's
        # value at a tenth of its cost
        "phase_sum_error_median": (error.nanmedian(dim=-1).values - (-error).nanmedian(dim=-1).values) / 2,
        "r2_mean_a": a.r2.mean(dim=-1),
        "r2_mean_b": b.r2.mean(dim=-1),
        "r2_mean_out": out.r2.mean(dim=-1),
        "scale_ratio_mean": (a.scale / b.scale).mean(dim=-1),
        "distinct_freqs": (counts > 0).sum(dim=-1),
    }


def key_frequencies(fits: NeuronFits, min_share: float = 0.05) -> Tensor:
    """Sorted out-frequencies (long, 1-D) of at least `min_share` of all neurons.

    Only for one network (fields `(hidden,)`): a stack would give ragged results, so it raises;
    fit or index the members one at a time.
    """
    freq = fits.out.freq
    if freq.dim() != 1:
        raise ValueError(f"key_frequencies takes one network's fits, got freq {tuple(freq.shape)}")
    counts = freq_counts(freq, fits.p)
    share = counts.double() / freq.numel()
    return torch.nonzero((counts > 0) & (share >= min_share)).squeeze(-1)


def weight_norms(fc1: Tensor, fc2: Tensor) -> dict[str, Tensor]:
    """Frobenius norms `(...)` of `fc1`, `fc2` and both together (`total`)."""
    n1 = torch.linalg.matrix_norm(fc1)
    n2 = torch.linalg.matrix_norm(fc2)
    return {"total": torch.hypot(n1, n2), "fc1": n1, "fc2": n2}


def fourier_norms(fc1: Tensor, fc2: Tensor) -> Tensor:
    """Norm of all weights at each frequency over Z_p: `(..., p//2 + 1)`, index k.

    Entry k is the norm of the projection of all neurons' a, b and out vectors onto frequency
    k (cos and sin together): sqrt(w_k sum |Y_k|^2 / p) over neurons and vector types, with
    w = 2 except w = 1 at k = 0 (and k = p/2 for even p). So by Parseval the squares sum to
    `weight_norms(...)["total"]**2`. For sparsity use `gini` / `ipr` of `[..., 1:]` (k = 0 is
    the constant, not a wave).
    """
    p = _check_weights(fc1, fc2)
    power = dft(_neuron_vectors(fc1, fc2, p)).square().sum(dim=(-4, -3, -2))  # over re/im, hidden, a/b/out
    k = torch.arange(power.shape[-1], device=power.device)
    weight = torch.where((k == 0) | (2 * k == p), 1.0, 2.0).to(power.dtype)
    return (weight * power / p).sqrt()


def gini(x: Tensor) -> Tensor:
    """Gini coefficient `(...)` of non-negative `x: (..., m)`: sum_ij |x_i - x_j| / (2 m sum x).

    0 for a uniform vector, (m-1)/m for a one-hot one; 0 for an all-zero vector.
    """
    m = x.shape[-1]
    xs = x.sort(dim=-1).values
    rank = torch.arange(1, m + 1, device=x.device, dtype=x.dtype)
    total = xs.sum(dim=-1)
    g = 2 * (rank * xs).sum(dim=-1) / (m * torch.where(total > 0, total, 1.0)) - (m + 1) / m
    return torch.where(total > 0, g, 0.0)


def ipr(x: Tensor) -> Tensor:
    """Inverse participation ratio `(...)` of amplitudes `x: (..., m)`.

    The values are normalised to unit L2 norm, v = x / ||x||_2 (so v^2 is a distribution over
    the m entries), and IPR = sum v^4 = sum x^4 / (sum x^2)^2: 1/m when uniform, 1 when one-hot;
    1/IPR is the effective number of active entries. 0 for an all-zero vector.
    """
    sq = x.square()
    total = sq.sum(dim=-1)
    positive = total > 0
    return torch.where(positive, sq.square().sum(dim=-1) / torch.where(positive, total, 1.0).square(), 0.0)


LogitChunks = Callable[[], Iterable[tuple[slice, Tensor]]]
"""A network's logits over all p*p pairs, re-iterable: each call yields `(rows, logits (..., n, p))`
for slices of the rows a*p + b that cover them all, so a computation of several passes never
holds the `(p*p, p)` logits at once."""


def all_pairs_logits(fc1: Tensor, fc2: Tensor, activation: str = "relu", rows: slice = slice(None)) -> Tensor:
    """Logits `(..., n, p)` for the input pairs of `rows` (default: all p*p), row a*p + b, with
    the hidden `activation`.

    A one-hot input selects fc1 column a and column p + b, so the hidden pre-activation of pair
    (a, b) is their sum: two gathers and an add build it without a one-hot matmul.
    """
    p = _check_weights(fc1, fc2)
    r = torch.arange(*rows.indices(p * p), device=fc1.device)
    w_a = fc1[..., :p].transpose(-1, -2)  # (..., p, hidden)
    w_b = fc1[..., p:].transpose(-1, -2)
    return logits_from_embeddings(w_a[..., r // p, :], w_b[..., r % p, :], fc2, activation)


def logits_from_embeddings(e_a: Tensor, e_b: Tensor, fc2: Tensor, activation: str = "relu") -> Tensor:
    """Logits `(..., n, p)` from the columns of fc1 that n pairs' one-hot inputs select,
    `e_a, e_b: (..., n, hidden)` (the embeddings of a and b, which gradients can be taken at)."""
    needs_grad = e_a.requires_grad or e_b.requires_grad  # an in-place x^2 would lose the x its gradient needs
    return activate(e_a + e_b, activation, inplace=not needs_grad) @ fc2.transpose(-1, -2)


def logit_row_bytes(p: int, hidden: int) -> int:
    """Bytes per pair and network that `logit_chunks` budgets for: the activations and logits,
    and the float64 copies of the logits that the measures over them make."""
    return 4 * hidden + 28 * p


def logit_chunks(fc1: Tensor, fc2: Tensor, activation: str = "relu", max_bytes: int = MAX_BYTES) -> LogitChunks:
    """The logits over all pairs (`all_pairs_logits`) in slices of at most `max_bytes`: computed
    once and kept when they fit in one slice, else computed again on every pass."""
    p, hidden = fc2.shape[-2:]
    slices = list(chunks(p * p, math.prod(fc2.shape[:-2]) * logit_row_bytes(p, hidden), max_bytes))
    if len(slices) == 1:
        kept = [(slices[0], all_pairs_logits(fc1, fc2, activation))]
        return lambda: kept
    return lambda: ((s, all_pairs_logits(fc1, fc2, activation, s)) for s in slices)


def restricted_excluded_loss(logits: LogitChunks, p: int, key_freqs: Tensor,
                             rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Nanda et al.'s restricted and excluded losses `(...)` over all p*p pairs, and the excluded
    loss over `rows` (a*p + b) if given (the paper's: the training pairs), in two passes over the
    `logits` (`(..., n, p)` chunks, as from `logit_chunks`); `key_freqs`: distinct k in 1..p//2.

    Restricted keeps only the logits' components along cos(w_k(a+b-c)) and sin(w_k(a+b-c)),
    w_k = 2*pi*k/p, for the key k (the orthogonal projection over the full (a, b, c) grid);
    excluded is the logits minus those components. Labels are (a+b) mod p. The parts
    (`sum_by_label`, `restricted_logits`, `restricted_loss`, `excluded_logits`) also serve other
    passes over the pairs (the transformer's).
    """
    labels = sum_labels(p)
    by_label: Tensor | None = None
    for s, chunk in logits():
        if chunk.shape[-1] != p:
            raise ValueError(f"logits {tuple(chunk.shape)} must be (..., n, p) with p={p}")
        labels = labels.to(chunk.device)
        part = sum_by_label(chunk, labels[s])
        by_label = part if by_label is None else by_label + part
    table = restricted_logits(by_label, key_freqs)
    return restricted_loss(table), *excluded_loss(logits, table, rows)


def excluded_loss(logits: LogitChunks, table: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The mean cross-entropy `(...)` of the excluded logits (the logits less the key frequencies'
    components, `table: (..., s, c)` from `restricted_logits`) over all p*p pairs, and over `rows`
    (a*p + b) if given, in one pass over the `logits` chunks `(..., n, p)`."""
    p = table.shape[-1]
    labels = sum_labels(p, table.device)
    chosen = torch.zeros(p * p, dtype=torch.bool, device=table.device)
    if rows is not None:
        chosen[rows.to(table.device)] = True
    total = torch.zeros(2, *table.shape[:-2], dtype=torch.float64, device=table.device)  # over all pairs, over `rows`
    for s, chunk in logits():
        logp = F.log_softmax(excluded_logits(chunk, table, labels[s]), dim=-1)
        loss = -logp.gather(-1, labels[s, None].expand(*chunk.shape[:-1], 1)).squeeze(-1)  # (..., n)
        total += torch.stack([loss.sum(-1), (loss * chosen[s]).sum(-1)]).double()
    over_rows = (total[1] / chosen.sum()).to(table.dtype) if rows is not None else None
    return (total[0] / p**2).to(table.dtype), over_rows


def sum_labels(p: int, device: torch.device | None = None) -> Tensor:
    """`(p*p,)` the label s = (a+b) mod p of row a*p + b."""
    x = torch.arange(p, device=device)
    return ((x[:, None] + x[None, :]) % p).flatten()


def sum_by_label(logits: Tensor, labels: Tensor) -> Tensor:
    """`(..., p, p)`: the logits `(..., n, p)` of rows whose label s = (a+b) mod p is the same,
    summed (rows s, columns c). Sums of chunks of the pairs add up to the sum over all of them."""
    p = logits.shape[-1]
    return logits.new_zeros(*logits.shape[:-2], p, p).index_add_(-2, labels, logits)


def restricted_logits(by_sum: Tensor, key_freqs: Tensor) -> Tensor:
    """The restricted logits `(..., s, c)` from `sum_by_label` over all p*p pairs: the pair's
    logits along the key frequencies' directions depend on it only through s = (a+b) mod p.

    The directions depend on d = (s-c) mod p only, so <L, u> = sum_d N[d] u(d) with N[d] the
    sum of L over the class d, and all inner products come from one rfft of N. The directions
    are orthogonal with squared norm p^3/2 (p^3 for cos at k = p/2, even p). The constant
    (k = 0) is never included: cross-entropy is invariant to adding a constant per (a, b) row,
    so a mean term would not change either loss.
    """
    p = by_sum.shape[-1]
    keys = key_freqs.to(device=by_sum.device, dtype=torch.long)
    out_of_range = ((keys < 1) | (keys > p // 2)).any()
    if keys.dim() != 1 or out_of_range or keys.unique().numel() != keys.numel():
        raise ValueError(f"key_freqs must be distinct frequencies in 1..{p // 2}, got {key_freqs}")
    x = torch.arange(p, device=by_sum.device)
    diff = (x[:, None] - x[None, :]) % p  # (p, p): d = (s - c) mod p
    N = by_sum.new_zeros(*by_sum.shape[:-2], p).index_add_(-1, diff.flatten(), by_sum.flatten(-2))
    C = torch.fft.rfft(N, dim=-1)[..., keys]  # (..., K): sum_d N[d] exp(-i w_k d)
    inv_norm = (2 - (2 * keys == p).to(N.dtype)) / p**3
    angle = (2 * math.pi / p) * ((keys[:, None] * x) % p).to(N.dtype)  # (K, p)
    # component along cos + along sin = Re(C_k exp(i w_k d)) / |u|^2
    r = (C.real * inv_norm) @ torch.cos(angle) - (C.imag * inv_norm) @ torch.sin(angle)  # (..., d)
    return r[..., diff]


def restricted_loss(table: Tensor) -> Tensor:
    """Mean cross-entropy `(...)` of the restricted logits over all pairs: each s is the label of
    exactly p pairs, so it is the mean over the table's rows."""
    return -F.log_softmax(table, dim=-1).diagonal(dim1=-2, dim2=-1).mean(dim=-1)


def excluded_logits(logits: Tensor, table: Tensor, labels: Tensor) -> Tensor:
    """The logits `(..., n, p)` of pairs with labels s `(n,)` less their key-frequency components."""
    return logits - table[..., labels, :]


@torch.no_grad()
def key_frequency_ablation(logit_chunks: LogitChunks, p: int, keys: Tensor) -> list[dict]:
    """Accuracy and loss over all p*p pairs (addition) of a network's logits: as they are, with
    each key frequency's components removed, with all of them removed (the excluded logits) and
    with only them kept (the restricted logits). `logit_chunks()` yields `(rows, logits (n, p))`
    for slices of the rows a*p + b that cover them all; it is called twice (two passes, so the
    (p*p, p) logits never need to be held at once). Rows of the result: `ablation`, `acc`, `loss`."""
    labels = sum_labels(p)
    by_label = torch.zeros(p, p, dtype=torch.float64)
    for rows, logits in logit_chunks():
        by_label += sum_by_label(logits.double().cpu(), labels[rows])
    variants = {"none (the model)": None, **{f"remove k={int(k)}": keys[i : i + 1] for i, k in enumerate(keys)}}
    if len(keys):
        variants["remove all key frequencies"] = keys
    tables = {name: restricted_logits(by_label, k) if k is not None else torch.zeros_like(by_label) for name, k in variants.items()}
    loss, right = dict.fromkeys(tables, 0.0), dict.fromkeys(tables, 0)
    for rows, logits in logit_chunks():
        logits = logits.double().cpu()
        for name, table in tables.items():
            ablated = excluded_logits(logits, table, labels[rows])
            loss[name] += F.cross_entropy(ablated, labels[rows], reduction="sum").item()
            right[name] += (ablated.argmax(-1) == labels[rows]).sum().item()
    result = [{"ablation": name, "acc": right[name] / p**2, "loss": loss[name] / p**2} for name in tables]
    if len(keys):  # the restricted logits depend on (a, b) only through s: the table's rows are the answers
        kept = tables["remove all key frequencies"]
        result.append({"ablation": "keep only the key frequencies", "acc": (kept.argmax(-1) == torch.arange(p)).double().mean().item(),
                       "loss": restricted_loss(kept).item()})
    return result


def primitive_root(p: int) -> int:
    """The smallest generator g of the multiplicative group mod a prime p (every x != 0 is g^i)."""
    factors = {q for q in range(2, p) if (p - 1) % q == 0 and all(q % d for d in range(2, int(q**0.5) + 1))}
    return next(g for g in range(1, p) if all(pow(g, (p - 1) // q, p) != 1 for q in factors))


def addition_basis(fc1: Tensor, fc2: Tensor, operation: str) -> tuple[Tensor, Tensor, str]:
    """Re-index the weights so that the network's task becomes addition, for fits and losses.

    `sub`: b -> -b. `mul`: every non-zero residue x = g^i is indexed by its discrete log i, so
    multiplication mod p becomes addition mod p-1 (the zero residue is dropped); `div`: the
    same with b -> b^-1. `add` and `x2xyy2` (no additive structure) are left as they are.
    Returns `fc1: (..., hidden, 2n)`, `fc2: (..., n, hidden)` with n = p or p-1, and the basis
    in words (for the outputs to say which basis a fit used).
    """
    p = _check_weights(fc1, fc2)
    if operation in ("add", "x2xyy2"):
        return fc1, fc2, "residues"
    if operation == "sub":
        neg = (-torch.arange(p, device=fc1.device)) % p
        return torch.cat([fc1[..., :p], fc1[..., p:][..., neg]], dim=-1), fc2, "residues, b negated"
    g = primitive_root(p)
    powers = torch.tensor([pow(g, i, p) for i in range(p - 1)], device=fc1.device)
    b_index = torch.tensor([pow(g, -i % (p - 1), p) for i in range(p - 1)], device=fc1.device) if operation == "div" else powers
    basis = f"discrete log base {g}" + (", b inverted" if operation == "div" else "")
    return torch.cat([fc1[..., powers], fc1[..., p + b_index]], dim=-1), fc2[..., powers, :], basis
