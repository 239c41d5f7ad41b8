"""Publication figures of runs and sweeps, drawn from plain data (numpy / torch arrays, dicts).

Every function returns a `matplotlib.figure.Figure` built without pyplot, so nothing is left
open in pyplot's registry and no GUI backend is needed; the caller saves it (`fig.savefig`) or
embeds it (`modadd.report`). Weights use the seed's layout, `fc1: (hidden, 2p)` and
`fc2: (p, hidden)`; `fits` are one network's `modadd.fourier.NeuronFits` (fields `(hidden,)`).
A neuron's frequency, where one is needed, is the dominant frequency of its output weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, MultipleLocator, NullLocator, PercentFormatter

from modadd.fourier import NeuronFits, clean_neurons, fit_neurons
from modadd.grokking import PHASES, grokking_epochs
from modadd.mlp.model import activate

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

METRIC_LABELS = {
    "train/loss": "training loss",
    "val/loss": "validation loss",
    "train/acc": "training accuracy",
    "val/acc": "validation accuracy",
}
HEATMAP_LEVELS = 100  # a heatmap's colour scale: two, the greys of its text and the blends at its edges fit one PNG palette
PI_TICKS = ([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi], ["$-\\pi$", "$-\\pi/2$", "0", "$\\pi/2$", "$\\pi$"])


# ---------------------------------------------------------------------------- helpers


def _np(x: ArrayLike) -> np.ndarray:
    """A numpy view of a numpy array, torch tensor (any device) or sequence."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _weights(fc1: ArrayLike, fc2: ArrayLike) -> tuple[np.ndarray, np.ndarray, int]:
    """`fc1`, `fc2` as float arrays and p, after checking the shapes match."""
    w1, w2 = _np(fc1).astype(float), _np(fc2).astype(float)
    if w1.ndim != 2 or w2.ndim != 2 or w1.shape != (w2.shape[1], 2 * w2.shape[0]):
        raise ValueError(f"need fc1 (hidden, 2p) and fc2 (p, hidden), got {w1.shape} and {w2.shape}")
    return w1, w2, w2.shape[0]


def _fit_arrays(fits: NeuronFits) -> dict[str, dict[str, np.ndarray]]:
    """`{"a"|"b"|"out": {"freq"|"phase"|"scale"|"offset"|"r2": (hidden,)}}` as numpy arrays."""
    out = {}
    for kind in ("a", "b", "out"):
        fit = getattr(fits, kind)
        if fit.freq.dim() != 1:
            raise ValueError(f"plots take one network's fits, got freq of shape {tuple(fit.freq.shape)}")
        out[kind] = {name: _np(getattr(fit, name)) for name in ("freq", "phase", "scale", "offset", "r2")}
    return out


def _wrap(x: np.ndarray) -> np.ndarray:
    """Angles wrapped into (-pi, pi]."""
    return np.angle(np.exp(1j * x))


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """`rows[i][key]` as floats, NaN where missing or None."""
    return np.array([math.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)


def _sorted_rows(rows: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    """Rows that have `key`, sorted by it."""
    return sorted((r for r in rows if r.get(key) is not None), key=lambda r: r[key])


def _scale(name: str) -> Colormap:
    """The colour map `name` in `HEATMAP_LEVELS` levels: to the eye the same as its 256, and the
    report keeps every one of them exactly (`report.png_bytes`)."""
    return colormaps[name].resampled(HEATMAP_LEVELS)


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    """n distinct colours: tab10 / tab20 while they last, then evenly spaced turbo."""
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](v) for v in np.linspace(0.05, 0.95, n)]


def _categorical_scatter(ax: Axes, x: np.ndarray, y: np.ndarray, labels: np.ndarray, title: str) -> None:
    """Scatter coloured by a discrete label, one legend entry per value, legend outside right."""
    values = np.unique(labels)
    for value, color in zip(values, _palette(len(values))):
        sel = labels == value
        ax.scatter(x[sel], y[sel], s=22, color=color, edgecolors="white", linewidths=0.4, label=str(value))
    ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
              title_fontsize="small", ncols=1 + (len(values) - 1) // 16, frameon=False, handletextpad=0.2)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _key(v: Any) -> Any:
    """A hashable stand-in for a swept value (lists such as betas become tuples)."""
    return tuple(v) if isinstance(v, list) else v


def _label(v: Any) -> str:
    return f"{v:g}" if _is_number(v) else str(v)


def _axis_values(rows: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    """Distinct values of `key` over the rows that have it, sorted (numerically when all numbers)."""
    values = list(dict.fromkeys(_key(r[key]) for r in rows if r.get(key) is not None))
    if not values:
        raise ValueError(f"no row has a value for {key!r}")
    return sorted(values) if all(_is_number(v) for v in values) else sorted(values, key=str)


def _mean_std_count(values: list[float]) -> tuple[float, float, int]:
    """Mean and standard deviation of the finite values, and how many there were."""
    finite = np.array([v for v in values if math.isfinite(v)])
    if finite.size == 0:
        return math.nan, math.nan, 0
    return float(finite.mean()), float(finite.std()), int(finite.size)


def _value_norm(values: np.ndarray, log: bool) -> Normalize:
    """A colour norm over the finite (and, if `log`, positive) values; 1..10 if there are none."""
    finite = values[np.isfinite(values) & ((values > 0) if log else True)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (1.0, 10.0)
    if hi == lo:
        lo, hi = (lo / 2, hi * 2) if log else (lo - 0.5, hi + 0.5)
    return LogNorm(lo, hi) if log else Normalize(lo, hi)


def _contrast_text(cmap: Colormap, norm: Normalize, value: float) -> str:
    """Black or white, whichever reads better on the colour of `value`."""
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


class _StepPercent(PercentFormatter):
    """Percent tick labels with the fewest decimals that write every tick exactly (99.95 %: two),
    not the three `PercentFormatter` picks for a span of tenths of a percent. Known only when the
    ticks are drawn (their number follows the axis' final size)."""

    def __init__(self) -> None:
        super().__init__(xmax=1)

    def set_locs(self, locs: Sequence[float]) -> None:
        super().set_locs(locs)
        percent = 100 * np.asarray(locs, dtype=float)
        self.decimals = next((d for d in range(8) if np.allclose(np.round(percent, d), percent, rtol=0, atol=1e-9)), None)


def _mean_std_band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """Mean line with markers and a shaded +-1 std band clipped to [0, 1]."""
    ax.plot(x, mean, "o-", ms=4, label="mean")
    ax.fill_between(x, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), alpha=0.25, label="$\\pm$1 std")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")


# ---------------------------------------------------------------------------- one run


def grokking_curves(rows: Sequence[Mapping[str, Any]], threshold: float = 0.99) -> Figure:
    """Loss (log y) and accuracy against epoch + 1 (log x), training and validation, with the
    first epochs at which each accuracy reaches `threshold` marked (the seed's figure)."""
    rows = _sorted_rows(rows, "epoch")
    x = _column(rows, "epoch") + 1
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, color in (("train", "C0"), ("val", "C1")):
        ax_loss.plot(x, _column(rows, f"{split}/loss"), color=color, label=METRIC_LABELS[f"{split}/loss"])
        ax_acc.plot(x, _column(rows, f"{split}/acc"), color=color, label=METRIC_LABELS[f"{split}/acc"])
    plain_rows = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows]
    epochs = grokking_epochs(plain_rows, threshold)
    for name, color in (("train_epoch", "C0"), ("val_epoch", "C1")):
        if epochs[name] is not None:
            for ax in (ax_loss, ax_acc):
                ax.axvline(epochs[name] + 1, color=color, ls=":", lw=1)
            split = "training" if name == "train_epoch" else "validation"
            label = f"{split} acc $\\geq$ {threshold:g} (epoch {epochs[name]})"
            ax_acc.plot([], [], color=color, ls=":", label=label)
    ax_loss.set(xscale="log", yscale="log", xlabel="epoch + 1", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xscale="log", xlabel="epoch + 1", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy")
    ax_loss.legend(loc="lower left")
    ax_acc.legend(loc="upper left", fontsize="small")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, which="major", alpha=0.3)
    return fig


def frequency_agreement(fits: NeuronFits) -> Figure:
    """Dominant frequency of each neuron's a-weights against its b- and out-weights as a 2-D
    histogram: one bubble per occurring pair, area by neuron count (counts > 1 written next to
    it); the agreement fractions are in the titles."""
    f = _fit_arrays(fits)
    ka, kb, ko = f["a"]["freq"], f["b"]["freq"], f["out"]["freq"]
    kmax, n = fits.p // 2, ka.size
    fig = Figure(figsize=(8.5, 4.6), layout="constrained")
    for ax, (name, k) in zip(fig.subplots(1, 2), (("b", kb), ("out", ko))):
        pairs, counts = np.unique(np.stack([ka, k], axis=1), axis=0, return_counts=True)
        ax.plot([0.5, kmax + 0.5], [0.5, kmax + 0.5], "k--", lw=0.8, label="equal frequencies")
        ax.scatter(pairs[:, 0], pairs[:, 1], s=15 + 600 * counts / n, alpha=0.6, label="neurons (area: count)")
        for (u, v), c in zip(pairs, counts):
            if c > 1:
                ax.annotate(str(c), (u, v), xytext=(5, 3), textcoords="offset points", fontsize="x-small")
        ax.set(xlim=(0.5, kmax + 0.5), ylim=(0.5, kmax + 0.5), aspect="equal",
               xlabel="frequency of a-weights $k_a$", ylabel=f"frequency of {name}-weights $k_{{{name}}}$",
               title=f"$k_a$ vs $k_{{{name}}}$: {np.mean(ka == k):.0%} agree")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize="small", markerscale=0.6)
    same = _np(clean_neurons(fits)).mean()
    fig.suptitle(f"Dominant frequencies of {n} neurons (p = {fits.p}): $k_a = k_b = k_{{out}}$ for {same:.0%}")
    return fig


def phase_sum(fits: NeuronFits) -> Figure:
    """phase_out against wrap(phase_a + phase_b) for the clean neurons (`fourier.clean_neurons`),
    coloured by frequency, with the diagonal of the phase-sum rule and the median |error|."""
    f = _fit_arrays(fits)
    clean = _np(clean_neurons(fits))
    x = _wrap(f["a"]["phase"] + f["b"]["phase"])[clean]
    y = f["out"]["phase"][clean]
    fig = Figure(figsize=(6.2, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot([-math.pi, math.pi], [-math.pi, math.pi], "k--", lw=0.8)
    if clean.any():
        _categorical_scatter(ax, x, y, f["out"]["freq"][clean], "frequency $k$")
        median = f"{np.median(np.abs(_wrap(y - x))):.3f} rad"
    else:
        ax.text(0, 0, "no neuron has $k_a = k_b = k_{out}$", ha="center", va="center")
        median = "n/a"
    ax.set(xlim=(-math.pi, math.pi), ylim=(-math.pi, math.pi), aspect="equal",
           xlabel="$\\phi_a + \\phi_b$ (wrapped, rad)", ylabel="$\\phi_{out}$ (rad)",
           title=f"Phase-sum rule $\\phi_{{out}} = \\phi_a + \\phi_b$: {int(clean.sum())} of {clean.size} "
                 f"neurons\nmedian |error| = {median}")
    ax.set_xticks(*PI_TICKS)
    ax.set_yticks(*PI_TICKS)
    ax.grid(True, alpha=0.3)
    return fig


def replacement_curve(results: Sequence[Mapping[str, float]]) -> Figure:
    """Accuracy against the fraction of neurons whose weights were replaced by their cosine
    fits (keys fraction, acc_mean, acc_std: mean and std over random choices of neurons)."""
    results = _sorted_rows(results, "fraction")
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    _mean_std_band(ax, _column(results, "fraction"), _column(results, "acc_mean"), _column(results, "acc_std"))
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set(xlabel="neurons replaced by their cosine fits", title="Accuracy with cosine-replaced neurons")
    return fig


def random_cosine_curve(results: Sequence[Mapping[str, float]], name: str = "random cosine") -> Figure:
    """Accuracy of networks of N hand-built (by default random cosine) neurons against N (log2
    axis); keys neurons, acc_mean, acc_std (over random draws)."""
    results = _sorted_rows(results, "neurons")
    n = _column(results, "neurons")
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    _mean_std_band(ax, n, _column(results, "acc_mean"), _column(results, "acc_std"))
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [f"{v:g}" for v in n])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel=f"{name} neurons $N$", title=f"Accuracy of {name} networks")
    return fig


def frequency_ablation(results: Sequence[Mapping[str, float]], baseline: float | None = None) -> Figure:
    """Accuracy after zeroing all neurons of each frequency (keys freq, neurons, acc; top, a stem
    down from `baseline`, the unablated accuracy, so the loss is the stem's length) and how many
    neurons that removed (bottom), at their frequency k. One width whatever the number of
    frequencies, so the labels keep their size in the report; the accuracy axis spans the data, as
    a network with ~50 frequencies loses tenths of a percent to any one of them."""
    results = _sorted_rows(results, "freq")
    k, acc = _column(results, "freq"), _column(results, "acc")
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax_acc, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(2.2, 1))
    if baseline is not None:
        ax_acc.vlines(k, acc, baseline, color="C0", lw=1.2, alpha=0.5)
        ax_acc.axhline(baseline, color="k", ls="--", lw=0.8, label=f"no ablation ({baseline:.2%})")
    label = "ablating the neurons of frequency $k$"
    if np.isfinite(acc).any():
        worst = int(np.nanargmin(acc))
        label += f" (lowest: {acc[worst]:.2%} at k = {_label(results[worst]['freq'])})"
    ax_acc.plot(k, acc, "o", color="C0", ms=4, label=label)
    shown = np.append(acc, math.nan if baseline is None else baseline)
    shown = shown[np.isfinite(shown)]
    if shown.size:  # the data's span (0.2 % at least: all may be 100 %), and no tick above 100 %
        pad = max(0.1 * np.ptp(shown), 1e-3)
        ax_acc.set_ylim(shown.min() - pad, shown.max() + pad)
        ax_acc.set_yticks([t for t in ax_acc.get_yticks() if t <= 1 + 1e-9])
    ax_acc.yaxis.set_major_formatter(_StepPercent())
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=2, fontsize="small", frameon=False, borderaxespad=0.1)
    ax_n.bar(k, _column(results, "neurons"), width=0.8, color="C1")
    ax_n.set(xlabel="ablated frequency $k$", ylabel="neurons\nablated", xlim=(0.5, k.max(initial=1) + 0.5))
    ax_n.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_n.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True, steps=[1, 2, 5, 10]))
    ax_n.xaxis.set_minor_locator(MultipleLocator(1))
    for ax in (ax_acc, ax_n):
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Accuracy after ablating the neurons of one frequency")
    return fig


def key_frequency_ablation(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Accuracy and loss over all pairs with key frequencies removed from (or kept in) the logits
    (`fourier.key_frequency_ablation`), for either family."""
    fig = Figure(figsize=(max(7.0, 1.1 * len(rows) + 2), 3.6), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    names = [str(r["ablation"]).replace(" frequencies", "\nfrequencies").replace("none (the model)", "none\n(the model)")
             for r in rows]
    x = np.arange(len(rows))
    bars = ax_acc.bar(x, _column(rows, "acc"), color="C0")
    ax_acc.bar_label(bars, fmt="%.3f", fontsize="small")
    ax_loss.bar(x, _column(rows, "loss"), color="C1")
    for ax, title in ((ax_acc, "accuracy"), (ax_loss, "cross-entropy loss")):
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize="small")
        ax.set(title=f"{title} over all pairs")
    ax_acc.set_ylim(0, 1.1)
    ax_loss.set_yscale("log")
    return fig


def activation_heatmaps(fc1: ArrayLike, fc2: ArrayLike, neurons: Sequence[int], activation: str = "relu",
                        folded: bool = True) -> Figure:
    """For each chosen neuron, its activation over all inputs (a, b) (top row) and its
    contribution activation * fc2[(a+b) mod p, n] to the logit of the right answer (bottom).

    `folded` (the default) puts row a at k_a*a mod p and column b at k_b*b mod p (k_a, k_b: the
    neuron's fitted frequencies), where a neuron of any frequency shows one smooth period; in
    (a, b) order a frequency near p/2 flips sign at every step and shows at the page's width as
    moire bands that are not in the data."""
    w1, w2, p = _weights(fc1, fc2)
    idx = np.asarray(neurons, dtype=int)
    if idx.size == 0:
        raise ValueError("choose at least one neuron")
    act = activate(torch.from_numpy(w1[idx, :p, None] + w1[idx, None, p:]), activation).numpy()  # (m, a, b)
    ab = np.arange(p)
    contribution = act * w2[:, idx].T[:, (ab[:, None] + ab[None, :]) % p]
    ks = np.ones((2, idx.size), dtype=int)
    if folded:
        fits = fit_neurons(torch.from_numpy(w1[idx]), torch.from_numpy(w2[:, idx]))
        ks = np.stack([_np(fits.a.freq), _np(fits.b.freq)])
        rows, cols = (np.argsort((k[:, None] * ab) % p, axis=1, kind="stable") for k in ks)  # (m, p) each
        act, contribution = (x[np.arange(idx.size)[:, None, None], rows[:, :, None], cols[:, None, :]]
                             for x in (act, contribution))
    m = idx.size
    fig = Figure(figsize=(2.4 * m + 1.6, 5.4), layout="constrained")
    axes = fig.subplots(2, m, squeeze=False, sharex=not folded, sharey=not folded)
    lim = float(np.abs(contribution).max()) or 1.0
    panels = (
        (act, Normalize(min(0.0, float(act.min())), float(act.max()) or 1.0), _scale("magma"), f"{activation} activation"),
        (contribution, Normalize(-lim, lim), _scale("RdBu_r"), "contribution to the\nlogit of (a+b) mod p"),
    )
    for r, (data, norm, cmap, label) in enumerate(panels):
        for j, n in enumerate(idx):
            ax = axes[r, j]
            image = ax.imshow(data[j], origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_title(f"neuron {n}", fontsize="medium")
            ka, kb = ks[:, j]
            ax.set_xlabel(f"{kb}b mod {p}" if folded else ("b" if r == 1 else ""))
            ax.set_ylabel(f"{ka}a mod {p}" if folded else ("a" if j == 0 else ""))
        fig.colorbar(image, ax=axes[r, :], label=label, shrink=0.9)
    fig.suptitle(f"Neuron activations over all input pairs (p = {p})"
                 + (": a and b at k a, k b mod p (k: the fits' frequencies)" if folded else ""))
    return fig


def neuron_weights(fc1: ArrayLike, fc2: ArrayLike, fits: NeuronFits, neurons: Sequence[int],
                   folded: bool = False) -> Figure:
    """Each chosen neuron's a-, b- and out-weights (points) with their fitted cosines (lines),
    one row per neuron; the legend gives the fitted formula and its R^2. `folded` plots each
    weight at k*x mod p (k: that fit's frequency) instead of x, so any frequency shows as one
    clean period rather than k of them."""
    w1, w2, p = _weights(fc1, fc2)
    f = _fit_arrays(fits)
    idx = np.asarray(neurons, dtype=int)
    if idx.size == 0:
        raise ValueError("choose at least one neuron")
    x, fine = np.arange(p), np.linspace(0, p - 1, 12 * p)
    fig = Figure(figsize=(12, 3.1 * idx.size + 0.4), layout="constrained")
    axes = fig.subplots(idx.size, 3, squeeze=False)
    for i, n in enumerate(idx):
        vectors = {"a": w1[n, :p], "b": w1[n, p:], "c": w2[:, n]}
        titles = {"a": f"a $\\to$ neuron {n}", "b": f"b $\\to$ neuron {n}", "c": f"neuron {n} $\\to$ c"}
        for ax, (var, w) in zip(axes[i], vectors.items()):
            fit = f["out" if var == "c" else var]
            k, phase, scale, offset, r2 = (fit[name][n] for name in ("freq", "phase", "scale", "offset", "r2"))
            formula = (f"${scale:.2f}\\,\\cos(2\\pi \\cdot {k}{var}/{p} {'-' if phase < 0 else '+'} {abs(phase):.2f})"
                       f" {'-' if offset < 0 else '+'} {abs(offset):.2f}$\n$R^2$ = {r2:.3f}")
            k_line = 1 if folded else k  # cos(2 pi k x / p) = cos(2 pi (k x mod p) / p)
            ax.plot(fine, scale * np.cos(2 * np.pi * k_line * fine / p + phase) + offset, color="C1", lw=0.9,
                    label=formula)
            ax.plot((k * x) % p if folded else x, w, "o", color="C0", ms=3, label="weights")
            ax.set(xlabel=f"{k}{var} mod {p}" if folded else var, ylabel="weight" if var == "a" else "",
                   xlim=(-0.5, p - 0.5))
            ax.legend(title=titles[var], loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2,
                      fontsize="x-small", title_fontsize="medium", frameon=False, borderaxespad=0.2)
    fig.suptitle("Neuron weights and their cosine fits" + (" (folded: x at k x mod p)" if folded else ""))
    return fig


def weight_similarity(fc1: ArrayLike, fc2: ArrayLike) -> Figure:
    """Cosine similarity between neurons' input weight vectors (fc1 rows) and between their
    output weight vectors (fc2 columns), neurons sorted by frequency and then phase of their
    output weights, so same-frequency neurons form blocks (labelled by k)."""
    w1, w2, p = _weights(fc1, fc2)
    out = fit_neurons(torch.from_numpy(w1), torch.from_numpy(w2)).out
    freq, phase = _np(out.freq), _np(out.phase)
    order = np.lexsort((phase, freq))
    freq = freq[order]
    starts = np.flatnonzero(np.r_[True, freq[1:] != freq[:-1]])
    ends = np.r_[starts[1:], freq.size]
    labelled = _spaced((starts + ends - 1) / 2, ends - starts, min_gap=freq.size / 24)
    fig = Figure(figsize=(11, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (name, vectors) in zip(axes, (("Input weights (fc1 rows)", w1), ("Output weights (fc2 columns)", w2.T))):
        v = vectors[order]
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        image = ax.imshow(v @ v.T, cmap=_scale("RdBu_r"), vmin=-1, vmax=1, interpolation="nearest")
        for s in starts[1:]:
            ax.axhline(s - 0.5, color="k", lw=0.5)
            ax.axvline(s - 0.5, color="k", lw=0.5)
        centers = (starts + ends - 1) / 2
        ax.set_xticks(centers[labelled], [str(k) for k in freq[starts][labelled]], fontsize="small")
        ax.set_yticks(centers[labelled], [str(k) for k in freq[starts][labelled]], fontsize="small")
        ax.set(title=name, xlabel="neurons by frequency $k$", ylabel="neurons by frequency $k$")
    fig.colorbar(image, ax=axes, label="cosine similarity", shrink=0.85)
    fig.suptitle(f"Similarity of neuron weight vectors ({freq.size} neurons, {starts.size} frequencies)")
    return fig


def _spaced(centers: np.ndarray, sizes: np.ndarray, min_gap: float) -> np.ndarray:
    """Which blocks get a tick label: the largest first, then any other whose centre is at least
    `min_gap` from every label kept (about 24 labels fit along a heatmap's side at the report's
    size; a block of one neuron gets none)."""
    keep = np.zeros(centers.size, dtype=bool)
    for i in np.argsort(-sizes, kind="stable"):
        if sizes[i] >= 2 and not (np.abs(centers[keep] - centers[i]) < min_gap).any():
            keep[i] = True
    return keep


def tsne_kmeans(fc1: ArrayLike, fits: NeuronFits, clusters: int = 10, seed: int = 0) -> Figure:
    """t-SNE of the neurons' input weight vectors, coloured by k-means cluster (fitted on the
    vectors themselves) and by frequency; the adjusted Rand index compares the two labellings."""
    from sklearn.cluster import KMeans
    from sklearn.manifold import TSNE
    from sklearn.metrics import adjusted_rand_score

    vectors = _np(fc1).astype(float)
    n = vectors.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 neurons, got {n}")
    perplexity = min(30.0, (n - 1) / 3)  # sklearn requires perplexity < n_samples
    embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors)
    k = min(clusters, n)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors)
    freq = _fit_arrays(fits)["out"]["freq"]
    ari = adjusted_rand_score(freq, labels)
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    panels = ((labels, "cluster", f"k-means clusters (k = {k})"),
              (freq, "frequency $k$", f"Frequency (adjusted Rand index with clusters: {ari:.2f})"))
    for ax, (values, legend, title) in zip(fig.subplots(1, 2), panels):
        _categorical_scatter(ax, embedding[:, 0], embedding[:, 1], values, legend)
        ax.set(title=title, xlabel="t-SNE 1", ylabel="t-SNE 2", xticks=[], yticks=[])
    fig.suptitle(f"t-SNE of {n} input weight vectors (perplexity {perplexity:.3g})")
    return fig


def frequency_histogram(freqs: ArrayLike, p: int) -> Figure:
    """Number of neurons at each frequency k = 1..p//2; non-empty bars are labelled with k."""
    freqs = _np(freqs).astype(int).ravel()
    if freqs.size and (freqs.min() < 1 or freqs.max() > p // 2):
        raise ValueError(f"frequencies must lie in 1..{p // 2}, got {freqs.min()}..{freqs.max()}")
    counts = np.bincount(freqs, minlength=p // 2 + 1)[1:]
    k = np.arange(1, p // 2 + 1)
    fig = Figure(figsize=(7, 3.4), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(k, counts, width=0.8, color="C0")
    ax.bar_label(bars, labels=[f"{kk}" if c else "" for kk, c in zip(k, counts)], fontsize="x-small", padding=1)
    ax.set(xlim=(0.4, p // 2 + 0.6), xlabel="frequency $k$", ylabel="neurons",
           title=f"Neurons per frequency ({freqs.size} neurons, {int((counts > 0).sum())} frequencies, p = {p})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.12)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


# ---------------------------------------------------------------------------- sweeps


def sweep_heatmap(rows: Sequence[Mapping[str, Any]], x: str, y: str, value: str, log: bool = False) -> Figure:
    """`value` over two swept axes, one annotated cell per (x, y) pair: the mean over the jobs
    in the cell (their number is shown when some cell has several). Cells with no finite value
    are hatched grey and read NaN (or "no job" when no job ran there). `log`: logarithmic colour
    scale."""
    xs, ys = _axis_values(rows, x), _axis_values(rows, y)
    cells: dict[tuple[Any, Any], list[float]] = {}
    for r in rows:
        if r.get(x) is not None and r.get(y) is not None:
            v = r.get(value)
            cells.setdefault((_key(r[x]), _key(r[y])), []).append(math.nan if v is None else float(v))
    stats = {cell: _mean_std_count(vals) for cell, vals in cells.items()}
    grid = np.array([[stats.get((xv, yv), (math.nan,))[0] for xv in xs] for yv in ys])
    jobs = np.array([[len(cells.get((xv, yv), [])) for xv in xs] for yv in ys])
    show_jobs = jobs.max() > 1
    norm = _value_norm(grid, log)
    bad = ~np.isfinite(grid) | ((grid <= 0) if log else False)
    cmap = _scale("viridis").with_extremes(bad="0.88")
    fig = Figure(figsize=(1.0 * len(xs) + 3.2, 0.6 * len(ys) + 2.4), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_array(grid, bad), origin="lower", aspect="auto", cmap=cmap, norm=norm)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if bad[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="0.6", lw=0))
                text, color = ("NaN" if jobs[i, j] else "no job"), "0.3"
            else:
                text, color = f"{grid[i, j]:.3g}", _contrast_text(cmap, norm, grid[i, j])
            if show_jobs:
                text += f"\n(n={jobs[i, j]})"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize="small")
    ax.set_xticks(np.arange(len(xs)), [_label(v) for v in xs])
    ax.set_yticks(np.arange(len(ys)), [_label(v) for v in ys])
    ax.set(xlabel=x, ylabel=y, title=f"{value} over {x} and {y}" + (" (mean over n jobs)" if show_jobs else ""))
    fig.colorbar(image, ax=ax, label=value)
    return fig


PHASE_COLOURS = {"comprehension": "#1b9e77", "grokking": "#7570b3", "memorisation": "#d95f02",
                 "confusion": "#e7298a", "diverged": "#666666"}


def phase_diagram(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> Figure:
    """Liu et al.'s phase diagram: one cell per (x, y) pair, split into one bar per phase its jobs
    ended in, as wide as that phase's share of them (several seeds or members per cell), and
    labelled with it. Cells whose jobs have no phase (not finished) are hatched grey."""
    xs, ys = _axis_values(rows, x), _axis_values(rows, y)
    cells: dict[tuple[Any, Any], list[str | None]] = {}
    for r in rows:
        if r.get(x) is not None and r.get(y) is not None:
            cells.setdefault((_key(r[x]), _key(r[y])), []).append(r.get("phase"))
    order = [*PHASES, "diverged"]
    fig = Figure(figsize=(1.25 * len(xs) + 3.4, 0.75 * len(ys) + 1.8), layout="constrained")
    ax = fig.subplots()
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            phases = [ph for ph in cells.get((xv, yv), []) if ph is not None]
            if not phases:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.88", hatch="//", edgecolor="0.6", lw=0))
                ax.text(j, i, "unfinished" if cells.get((xv, yv)) else "no job", ha="center", va="center",
                        color="0.3", fontsize="small")
                continue
            left = j - 0.5
            for phase in (ph for ph in order if ph in phases):
                share = phases.count(phase) / len(phases)
                ax.add_patch(Rectangle((left, i - 0.5), share, 1, facecolor=PHASE_COLOURS[phase], edgecolor="white", lw=1))
                label = phase[:4] + ("" if share == 1 else f"\n{phases.count(phase)}/{len(phases)}")
                ax.text(left + share / 2, i, label, ha="center", va="center", color="white", fontsize="small")
                left += share
    ax.set(xlim=(-0.5, len(xs) - 0.5), ylim=(-0.5, len(ys) - 0.5), xlabel=x, ylabel=y,
           title=f"learning phase over {x} and {y}")
    ax.set_xticks(np.arange(len(xs)), [_label(v) for v in xs])
    ax.set_yticks(np.arange(len(ys)), [_label(v) for v in ys])
    present = [ph for ph in order if any(ph in c for c in cells.values())]
    ax.legend(handles=[Rectangle((0, 0), 1, 1, facecolor=PHASE_COLOURS[ph], label=ph) for ph in present],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")
    return fig


def sweep_lines(rows: Sequence[Mapping[str, Any]], x: str, value: str, hue: str | None = None,
                logx: bool | None = None) -> Figure:
    """`value` against swept `x`, one line per value of `hue`; jobs sharing (x, hue) are
    averaged, with +-1 std error bars. `logx=None` uses a log axis when x spans >= 2 decades."""
    xs = _axis_values(rows, x)
    hues = _axis_values(rows, hue) if hue is not None else [None]
    numeric = all(_is_number(v) for v in xs)
    if logx is None:
        logx = numeric and min(xs) > 0 and max(xs) / min(xs) >= 100
    position = {v: (float(v) if numeric else i) for i, v in enumerate(xs)}
    if hue is not None and all(_is_number(h) for h in hues):
        colors = [colormaps["viridis"](t) for t in np.linspace(0, 0.9, len(hues))]
    else:
        colors = _palette(len(hues))
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    averaged = False
    for h, color in zip(hues, colors):
        groups: dict[Any, list[float]] = {}
        for r in rows:
            if r.get(x) is not None and (hue is None or _key(r.get(hue)) == h):
                v = r.get(value)
                groups.setdefault(_key(r[x]), []).append(math.nan if v is None else float(v))
        keys = [v for v in xs if v in groups]
        stats = np.array([_mean_std_count(groups[v]) for v in keys]).reshape(-1, 3)
        averaged |= bool((stats[:, 2] > 1).any())
        ax.errorbar([position[v] for v in keys], stats[:, 0], yerr=np.where(stats[:, 2] > 1, stats[:, 1], 0),
                    fmt="o-", ms=4, capsize=3, color=color, label=None if hue is None else _label(h))
    if logx:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(xs)), [_label(v) for v in xs])
    title = f"{value} vs {x}" + (f" by {hue}" if hue else "") + (" (mean $\\pm$ std over jobs)" if averaged else "")
    ax.set(xlabel=x, ylabel=value, title=title)
    if hue is not None:
        ax.legend(title=hue, fontsize="small", loc="best")
    ax.grid(True, alpha=0.3)
    return fig


def overlaid_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], color_by: Mapping[str, float] | None = None,
                    key: str = "val/acc", color_label: str | None = None) -> Figure:
    """Every job's `key` against epoch + 1 (log x; log y for losses) in one panel. With
    `color_by` (job -> swept value) lines are coloured by that value, with a colorbar (log scale
    when the values are positive and span >= 10x; jobs without a value are grey); without it,
    each job gets its own colour and a legend entry."""
    fig = Figure(figsize=(6.8, 4.2), layout="constrained")
    ax = fig.subplots()
    if color_by is not None:
        values = np.array([float(color_by.get(name, math.nan)) for name in curves], dtype=float)
        finite = values[np.isfinite(values)]
        log = finite.size > 0 and finite.min() > 0 and finite.max() >= 10 * finite.min()
        norm, cmap = _value_norm(values, log), colormaps["viridis"]
        colors = [cmap(norm(v)) if math.isfinite(v) else "0.6" for v in values]
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=color_label or "swept value")
    else:
        colors = _palette(len(curves))
    for (name, rows), color in zip(curves.items(), colors):
        rows = _sorted_rows(rows, "epoch")
        ax.plot(_column(rows, "epoch") + 1, _column(rows, key), color=color, lw=1, alpha=0.85,
                label=None if color_by is not None else name)
    ax.set(xscale="log", xlabel="epoch + 1", ylabel=METRIC_LABELS.get(key, key),
           title=f"{METRIC_LABELS.get(key, key).capitalize()} of {len(curves)} jobs")
    if "loss" in key:
        ax.set_yscale("log")
    if color_by is None:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(True, alpha=0.3)
    return fig
