"""The transformer's figures (Nanda et al.'s), drawn from plain data like `modadd.plots`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from modadd.plots import _column, _np, _scale, _sorted_rows
from modadd.transformer.progress import NeuronSpectrum

PHASES = (("memorisation_end", "memorisation ends"), ("circuit_formation_end", "circuit formation ends"),
          ("cleanup_end", "cleanup ends"))


def embedding_norms(norms: Tensor, keys: Tensor) -> Figure:
    """The embedding's Fourier norm at each frequency k = 1..p//2, key frequencies in colour."""
    values = _np(norms)[1:]
    k = np.arange(1, len(values) + 1)
    key = np.isin(k, _np(keys))
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.bar(k[~key], values[~key], color="0.7", label="other frequencies")
    ax.bar(k[key], values[key], color="C3", label="key frequencies (from the neurons)")
    for x in k[key]:
        ax.annotate(str(x), (x, values[x - 1]), ha="center", va="bottom", fontsize="small")
    ax.set(xlabel="frequency $k$", ylabel="norm of $W_E$'s cos/sin components", title="Embedding in the Fourier basis")
    ax.legend(loc="upper right", fontsize="small")
    return fig


def neuron_clusters(spectrum: NeuronSpectrum, keys: Tensor, member: int = 0) -> Figure:
    """Each neuron's largest share of variance at one frequency, neurons grouped by that
    frequency (key frequencies in colour), beside how many neurons each key frequency has."""
    freq, explained = _np(spectrum.freq[member]), _np(spectrum.explained[member])
    keys = [int(k) for k in _np(keys)]
    order = np.lexsort((-explained, [keys.index(f) if f in keys else len(keys) for f in freq]))
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax, ax_count = fig.subplots(1, 2, width_ratios=(3, 1))
    colors = [f"C{keys.index(f) % 10}" if f in keys else "0.7" for f in freq[order]]
    ax.bar(np.arange(len(order)), explained[order], width=1.0, color=colors)
    ax.axhline(0.5, color="k", ls=":", lw=0.8)
    ax.set(xlabel="neuron (grouped by frequency)", ylabel="share of variance at its frequency", ylim=(0, 1),
           title="MLP neurons clustered by frequency")
    counts = [int(((freq == k) & (explained > 0.5)).sum()) for k in keys]
    ax_count.bar([str(k) for k in keys], counts, color=[f"C{i % 10}" for i in range(len(keys))])
    ax_count.set(xlabel="key frequency $k$", ylabel="neurons (share > 0.5)", title="Neurons per key frequency")
    return fig


def progress_curves(rows: Sequence[Mapping[str, Any]], phases: Mapping[str, int | None]) -> Figure:
    """Training, validation, restricted and excluded loss against epoch, phase boundaries marked."""
    rows = _sorted_rows(rows, "epoch")
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax = fig.subplots()
    for key, label, color in (("train/loss", "training loss", "C0"), ("val/loss", "validation loss", "C1"),
                              ("fit/restricted_loss", "restricted loss", "C2"), ("fit/excluded_loss_train", "excluded loss (training pairs)", "C3")):
        logged = [r for r in rows if r.get(key) is not None and r[key] == r[key]]
        ax.plot(_column(logged, "epoch"), np.maximum(_column(logged, key), 1e-8), color=color, label=label)
    for i, (name, label) in enumerate(PHASES):
        if phases.get(name) is not None:
            ax.axvline(phases[name], color="k", ls=(0, (1, 1 + i)), lw=1, label=f"{label} (epoch {phases[name]})")
    ax.set(yscale="log", xlabel="epoch", ylabel="cross-entropy loss", title="Progress measures and the three phases")
    ax.legend(loc="lower left", fontsize="small", ncols=2)
    ax.grid(True, alpha=0.3)
    return fig


def attention(pattern: Tensor) -> Figure:
    """Per head, the attention from "=" to a over all pairs (a, b), and its mean to a, b and "="."""
    pattern = _np(pattern)
    heads = pattern.shape[0]
    fig = Figure(figsize=(2.6 * heads + 2.6, 2.8), layout="constrained")
    axes = fig.subplots(1, heads + 1)
    for h in range(heads):
        image = axes[h].imshow(pattern[h, 0], origin="lower", cmap=_scale("viridis"), vmin=0, vmax=1)
        axes[h].set(title=f"head {h}: to a", xlabel="b", ylabel="a" if h == 0 else None)
    fig.colorbar(image, ax=axes[heads - 1], shrink=0.8)
    means = pattern.mean(axis=(2, 3))  # (heads, 3)
    for j, (name, color) in enumerate((("a", "C0"), ("b", "C1"), ("=", "C2"))):
        axes[heads].bar(np.arange(heads) + (j - 1) * 0.27, means[:, j], width=0.27, color=color, label=name)
    axes[heads].set(xticks=np.arange(heads), xlabel="head", ylim=(0, 1), title='mean attention from "="')
    axes[heads].legend(fontsize="small")
    return fig
