"""The analysis of one trained transformer: Nanda et al.'s algorithm, read off its weights.

Plain functions on a `TransformerStack` and a run's metrics rows (no Lightning, no files but
the figures `analyze_member` saves): the key frequencies (from the neurons) beside the
embedding's Fourier norms, the neurons clustered by frequency, the key-frequency ablation, the
attention from "=", and the three phases read off the curves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from modadd import clock_pizza, fourier
from modadd.data import all_pairs
from modadd.grokking import first_epoch
from modadd.transformer.model import TransformerStack
from modadd.chunks import MAX_BYTES, chunks
from modadd.transformer.progress import NeuronSpectrum, embedding_fourier_norms, progress_measures

CIRCUIT_LOSS = 0.1  # restricted loss below which the key-frequency circuit alone solves the task


def logit_chunks(net: TransformerStack, max_bytes: int = MAX_BYTES) -> fourier.LogitChunks:
    """Member 0's logits over all pairs in chunks, as `fourier.logit_chunks` gives an MLP's."""
    a, b = all_pairs(net.p)
    return lambda: ((s, net(a[s], b[s])[0]) for s in chunks(net.p**2, net.row_bytes(), max_bytes))


def key_frequency_ablation(net: TransformerStack, keys: Tensor, max_bytes: int = MAX_BYTES) -> list[dict]:
    """`fourier.key_frequency_ablation` of member 0's logits over all pairs, computed in chunks."""
    return fourier.key_frequency_ablation(logit_chunks(net, max_bytes), net.p, keys)


def clock_or_pizza(net: TransformerStack) -> dict:
    """`modadd.clock_pizza`'s measures of member 0, gradients taken at the token embeddings."""
    W_E = net.W_E[0, : net.p]  # (p, d_model): a and b share the embedding
    return clock_pizza.clock_or_pizza(logit_chunks(net), lambda e_a, e_b: net.logits_from_embeddings(e_a[None], e_b[None])[0],
                                      W_E, W_E)


@torch.no_grad()
def attention_from_equals(net: TransformerStack, max_bytes: int = MAX_BYTES) -> Tensor:
    """`(n_heads, 3, p, p)`: member 0's attention from "=" to a, b and "=" for every pair (a, b)."""
    p = net.p
    a, b = all_pairs(p)
    parts = [net.run(a[s], b[s])[1].attn[0] for s in chunks(p * p, net.row_bytes(), max_bytes)]
    return torch.cat(parts).permute(1, 2, 0).reshape(-1, 3, p, p)


def neuron_clusters(spectrum: NeuronSpectrum, keys: Tensor, member: int = 0, min_fraction: float = 0.5) -> list[dict]:
    """The neurons grouped by the frequency that explains most of their variance: for each key
    frequency (and "other" for the rest), how many, and the mean share of variance it explains."""
    freq, explained = spectrum.freq[member], spectrum.explained[member]
    rows = []
    clustered = torch.zeros_like(freq, dtype=torch.bool)
    for k in keys.tolist():
        mine = (freq == k) & (explained > min_fraction)
        clustered |= mine
        rows.append({"freq": k, "neurons": int(mine.sum()), "explained_mean": explained[mine].mean().item() if mine.any() else None})
    rest = ~clustered
    rows.append({"freq": "other", "neurons": int(rest.sum()), "explained_mean": explained[rest].mean().item() if rest.any() else None})
    return rows


def phases(rows: Sequence[dict], threshold: float = 0.99) -> dict[str, int | None]:
    """The three phases' boundaries read off a run's curves (None where a curve never gets there):

    - `memorisation_end`: the first epoch with training accuracy >= `threshold`;
    - `circuit_formation_end`: the first epoch after it whose restricted loss (logged every N
      epochs) is below `CIRCUIT_LOSS`: the key frequencies alone then give the right answers;
    - `cleanup_end`: the first epoch with validation accuracy >= `threshold`: what memorised
      the training set no longer gets in the way.
    Also the first epochs at which the restricted and the validation loss fall below 1, which
    say whether the circuit formed before the test loss fell (the paper's signature). Under
    `loss=stablemax` the validation loss is StableMax's and the restricted loss softmax's: the
    two thresholds then do not measure the same thing (the report says so)."""
    memorised = first_epoch(rows, "train/acc", threshold)
    after = [r for r in rows if memorised is not None and r["epoch"] >= memorised]
    circuit = next((int(r["epoch"]) for r in after if r.get("fit/restricted_loss", float("nan")) < CIRCUIT_LOSS), None)
    below = {key: next((int(r["epoch"]) for r in rows if r.get(key, float("nan")) < 1.0), None)
             for key in ("fit/restricted_loss", "val/loss")}
    return {"memorisation_end": memorised, "circuit_formation_end": circuit,
            "cleanup_end": first_epoch(rows, "val/acc", threshold),
            "restricted_loss_below_1": below["fit/restricted_loss"], "val_loss_below_1": below["val/loss"]}


def curve(rows: Sequence[dict], key: str) -> list[list[float]]:
    """`[[epoch, value], ...]` of a metric logged every N epochs."""
    return [[int(r["epoch"]), r[key]] for r in rows if r.get(key) is not None and r[key] == r[key]]


def analyze_transformer(net: TransformerStack, rows: Sequence[dict], operation: str = "add") -> tuple[dict, dict]:
    """Everything about member 0 of `net` (a one-member stack): the result dict (analysis.json's
    transformer part) and the figures by name."""
    from modadd import plots as shared_plots
    from modadd.transformer import plots

    measures, spectrum, keys = progress_measures(net, None, operation)
    key = keys[0]
    norms = embedding_fourier_norms(net.W_E.detach(), net.p)[0]
    clusters = neuron_clusters(spectrum, key)
    attention = attention_from_equals(net)
    result = {
        "family": "transformer",
        "key_frequencies": key.tolist(),
        "embedding_fourier_norms": norms.tolist(),
        "fourier_gini": measures["fourier_gini"][0].item(),
        "neuron_clusters": clusters,
        "neurons_in_key_frequencies": sum(c["neurons"] for c in clusters if c["freq"] != "other") / spectrum.fraction.shape[1],
        "attention_from_equals": {"a": attention[:, 0].mean().item(), "b": attention[:, 1].mean().item(),
                                  "=": attention[:, 2].mean().item()},
        "restricted_loss": curve(rows, "fit/restricted_loss"),
        "excluded_loss": curve(rows, "fit/excluded_loss_train"),  # the paper's: on the training pairs
        "excluded_loss_all_pairs": curve(rows, "fit/excluded_loss"),
        "phases": phases(rows),
    }
    figures = {
        "embedding_fourier_norms": plots.embedding_norms(norms, key),
        "neuron_clusters": plots.neuron_clusters(spectrum, key),
        "attention_from_equals": plots.attention(attention),
    }
    if operation == "add":
        result["clock_pizza"] = clock_or_pizza(net)
        result["key_frequency_ablation"] = key_frequency_ablation(net, key)
        figures["key_frequency_ablation"] = shared_plots.key_frequency_ablation(result["key_frequency_ablation"])
    if result["restricted_loss"]:
        figures["progress_measures"] = plots.progress_curves(rows, result["phases"])
    return result, figures
