"""Tests of modadd.mlp.experiments against direct computations (one-hot forwards, explicit cosines)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from modadd.data import all_pairs, labels, one_hot
from modadd.mlp.construct import cosine_network, random_cosine_network
from modadd.mlp.experiments import (
    accuracy_all_pairs,
    construction_curve,
    frequency_ablation,
    replace_with_fits,
    replacement_curve,
)
from modadd.fourier import fit_neurons, logit_row_bytes, wrap_phase
from modadd.mlp.model import MLP

DT = torch.float64


def direct_accuracy(fc1: Tensor, fc2: Tensor) -> float:
    """The seed's evaluation: one-hot inputs through fc1, ReLU, fc2; argmax against (a+b) mod p."""
    p = fc2.shape[0]
    a, b = all_pairs(p)
    logits = torch.relu(one_hot(a, b, p).to(fc1.dtype) @ fc1.T) @ fc2.T
    return (logits.argmax(dim=-1) == labels(a, b, p)).double().mean().item()


def noisy_cosine_network(p: int, hidden: int, noise: float, seed: int) -> tuple[Tensor, Tensor]:
    """A cosine network plus Gaussian noise: imperfect fits and an accuracy well inside (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    fc1, fc2 = random_cosine_network(p, hidden, gen, dtype=DT)
    fc1 = fc1 + noise * torch.randn(fc1.shape, generator=gen, dtype=DT)
    return fc1, fc2 + noise * torch.randn(fc2.shape, generator=gen, dtype=DT)


def test_accuracy_matches_one_hot_forward():
    torch.manual_seed(0)
    mlps = [MLP(13, 24).double() for _ in range(6)]
    fc1 = torch.stack([m.fc1.weight.detach() for m in mlps]).view(2, 3, 24, 26)
    fc2 = torch.stack([m.fc2.weight.detach() for m in mlps]).view(2, 3, 13, 24)
    expected = torch.tensor(
        [direct_accuracy(w1, w2) for w1, w2 in zip(fc1.flatten(0, 1), fc2.flatten(0, 1))], dtype=DT
    )
    # slices of one pair, of a network's pairs, of 3 networks' pairs, of all
    for max_bytes in (1, 13 * 13 * logit_row_bytes(13, 24), 3 * 13 * 13 * logit_row_bytes(13, 24), 2**27):
        acc = accuracy_all_pairs(fc1, fc2, max_bytes=max_bytes)
        assert acc.shape == (2, 3)
        torch.testing.assert_close(acc.double().flatten(), expected, atol=1e-7, rtol=0)
    # a network that actually computes addition, unbatched
    fc1, fc2 = noisy_cosine_network(23, 128, 0.2, seed=1)
    assert 0.3 < direct_accuracy(fc1, fc2) < 1
    assert accuracy_all_pairs(fc1, fc2).item() == pytest.approx(direct_accuracy(fc1, fc2), abs=1e-7)


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        accuracy_all_pairs(torch.zeros(2, 8, 14), torch.zeros(3, 7, 8))


def test_constant_logits_score_chance():
    assert accuracy_all_pairs(torch.zeros(5, 22), torch.zeros(11, 5)).item() == pytest.approx(1 / 11)


def test_replace_with_fits_swaps_only_masked_neurons():
    fc1, fc2 = noisy_cosine_network(17, 10, 0.3, seed=2)
    fits = fit_neurons(fc1, fc2)
    fit1, fit2 = fits.to_weights()
    mask = torch.zeros(3, 10, dtype=torch.bool)  # three variants of one network
    mask[1, [0, 4]] = True
    mask[2] = True
    new1, new2 = replace_with_fits(fc1, fc2, fits, mask)
    assert new1.shape == (3, 10, 34) and new2.shape == (3, 17, 10)
    for v in range(3):
        for n in range(10):
            src1, src2 = (fit1, fit2) if mask[v, n] else (fc1, fc2)
            assert torch.equal(new1[v, n], src1[n]) and torch.equal(new2[v, :, n], src2[:, n])
    # the fitted cosines are the seed's cosine(x, u, w, s, o) with our phase sign
    x = torch.arange(17, dtype=DT)
    for n in (0, 4):
        for fit, row in ((fits.a, new1[1, n, :17]), (fits.b, new1[1, n, 17:]), (fits.out, new2[1, :, n])):
            angle = 2 * math.pi * fit.freq[n].item() * x / 17 + fit.phase[n]
            direct = fit.scale[n] * torch.cos(angle) + fit.offset[n]
            torch.testing.assert_close(row, direct)


def test_replacement_curve_endpoints():
    fc1, fc2 = noisy_cosine_network(19, 40, 0.4, seed=3)
    own = accuracy_all_pairs(fc1, fc2).item()
    all_fitted = accuracy_all_pairs(*fit_neurons(fc1, fc2).to_weights()).item()
    assert own != all_fitted  # the noise makes the fits matter
    rows = replacement_curve(fc1, fc2, fractions=(0.0, 0.26, 1.0), orders=4, seed=0)
    assert [r["fraction"] for r in rows] == [0.0, 0.26, 1.0]
    assert [r["replaced"] for r in rows] == [0, 10, 40]
    assert rows[0]["accs"] == [own] * 4 and rows[0]["acc_mean"] == pytest.approx(own) and rows[0]["acc_std"] == 0
    assert rows[2]["accs"] == pytest.approx([all_fitted] * 4, abs=1e-7)
    middle = rows[1]["accs"]
    assert len(set(middle)) > 1  # different orders replace different neurons
    assert rows[1]["acc_mean"] == pytest.approx(sum(middle) / 4)
    assert rows[1]["acc_std"] == pytest.approx(torch.tensor(middle, dtype=DT).std(correction=0).item())
    assert replacement_curve(fc1, fc2, fractions=(0.26,), orders=4, seed=0)[0]["accs"] == middle  # seeded


def test_replacement_curve_on_exact_cosines_is_flat():
    gen = torch.Generator().manual_seed(4)
    fc1, fc2 = random_cosine_network(23, 64, gen, dtype=DT)
    own = accuracy_all_pairs(fc1, fc2).item()
    assert 0.3 < own < 1
    for row in replacement_curve(fc1, fc2, fractions=(0.0, 0.5, 1.0), orders=3):
        assert row["accs"] == [own] * 3  # the fits reproduce the weights


def test_replacement_curve_batched_matches_single():
    nets = [noisy_cosine_network(13, 20, 0.5, seed=s) for s in (5, 6)]
    fc1, fc2 = torch.stack([n[0] for n in nets]), torch.stack([n[1] for n in nets])
    batched = replacement_curve(fc1, fc2, fractions=(0.0, 0.5), orders=3, seed=7)
    for i, (w1, w2) in enumerate(nets):
        single = replacement_curve(w1, w2, fractions=(0.0, 0.5), orders=3, seed=7)
        for b, s in zip(batched, single):
            assert [accs[i] for accs in b["accs"]] == s["accs"]
            assert b["acc_mean"][i] == pytest.approx(s["acc_mean"])


def test_random_cosine_network_fits_back_to_its_draws():
    p, hidden = 31, 200
    fc1, fc2 = random_cosine_network(p, hidden, torch.Generator().manual_seed(8), dtype=DT)
    gen = torch.Generator().manual_seed(8)  # replay the documented draws
    k = torch.randint(1, p // 2 + 1, (hidden,), generator=gen)
    phase_a, phase_b = (2 * torch.rand(2, hidden, generator=gen, dtype=DT) - 1) * math.pi
    assert set(k.tolist()) == set(range(1, p // 2 + 1))
    assert phase_a.min() < -3 and phase_a.max() > 3
    x = torch.arange(p, dtype=DT)
    for n in range(0, hidden, 17):  # weights against the post's formulas, written out
        w = 2 * math.pi * k[n].item() / p
        torch.testing.assert_close(fc1[n, :p], torch.cos(w * x + phase_a[n]))
        torch.testing.assert_close(fc1[n, p:], torch.cos(w * x + phase_b[n]))
        torch.testing.assert_close(fc2[:, n], torch.cos(w * x + phase_a[n] + phase_b[n]))
    fits = fit_neurons(fc1, fc2)
    for fit in (fits.a, fits.b, fits.out):
        assert torch.equal(fit.freq, k)
        torch.testing.assert_close(fit.scale, torch.ones(hidden, dtype=DT))
        torch.testing.assert_close(fit.offset, torch.zeros(hidden, dtype=DT), atol=1e-12, rtol=0)
    assert wrap_phase(fits.a.phase - phase_a).abs().max() < 1e-9
    assert wrap_phase(fits.b.phase - phase_b).abs().max() < 1e-9
    assert wrap_phase(fits.out.phase - fits.a.phase - fits.b.phase).abs().max() < 1e-9  # phase-sum rule


def test_wide_random_cosine_network_is_perfect():
    gen = torch.Generator().manual_seed(0)
    fc1, fc2 = random_cosine_network(23, 512, gen)
    assert accuracy_all_pairs(fc1, fc2).item() == 1.0
    assert direct_accuracy(fc1, fc2) == 1.0


def test_random_cosine_accuracy_grows_with_width():
    rows = construction_curve("cosine", 23, neurons=(4, 16, 64, 256), draws=4, seed=0)
    means = [r["acc_mean"] for r in rows]
    assert [r["neurons"] for r in rows] == [4, 16, 64, 256] and all(len(r["accs"]) == 4 for r in rows)
    assert means == sorted(means) and means[0] < 0.15 and means[-1] > 0.95
    assert construction_curve("cosine", 23, neurons=(4, 16, 64, 256), draws=4, seed=0) == rows  # seeded


def test_frequency_ablation_counts_and_unused_frequencies():
    p, hidden = 23, 60
    gen = torch.Generator().manual_seed(9)
    k = torch.tensor([2, 5, 7]).repeat_interleave(torch.tensor([30, 20, 10]))  # 1, 3, 4, ... unused
    phases = (2 * torch.rand(2, hidden, generator=gen, dtype=DT) - 1) * math.pi
    fc1, fc2 = cosine_network(p, k, *phases)
    rows = frequency_ablation(fc1, fc2, fit_neurons(fc1, fc2))
    assert [r["freq"] for r in rows] == [2, 5, 7]
    assert [r["neurons"] for r in rows] == [30, 20, 10] and sum(r["neurons"] for r in rows) == hidden
    for row in rows:  # ablation equals the network with those neurons removed
        keep = k != row["freq"]
        assert row["acc"] == pytest.approx(direct_accuracy(fc1[keep], fc2[:, keep]), abs=1e-7)


def test_ablating_the_only_frequency_gives_chance():
    p, hidden = 23, 256
    gen = torch.Generator().manual_seed(10)
    phases = (2 * torch.rand(2, hidden, generator=gen) - 1) * math.pi
    fc1, fc2 = cosine_network(p, torch.full((hidden,), 3), *phases)
    assert accuracy_all_pairs(fc1, fc2).item() > 5 / p  # one frequency alone computes addition
    rows = frequency_ablation(fc1, fc2, fit_neurons(fc1, fc2))
    assert rows == [{"freq": 3, "neurons": hidden, "acc": pytest.approx(1 / p)}]


def test_frequency_ablation_batched():
    gen = torch.Generator().manual_seed(11)
    nets = [random_cosine_network(11, 12, gen) for _ in range(2)]
    fc1, fc2 = torch.stack([n[0] for n in nets]), torch.stack([n[1] for n in nets])
    rows = frequency_ablation(fc1, fc2, fit_neurons(fc1, fc2))
    for i, (w1, w2) in enumerate(nets):
        single = {r["freq"]: r for r in frequency_ablation(w1, w2, fit_neurons(w1, w2))}
        for row in rows:  # the union of frequencies; absent ones ablate nothing
            if row["freq"] in single:
                assert row["neurons"][i] == single[row["freq"]]["neurons"]
                assert row["acc"][i] == single[row["freq"]]["acc"]
            else:
                assert row["neurons"][i] == 0 and row["acc"][i] == accuracy_all_pairs(w1, w2).item()
        assert sum(row["neurons"][i] for row in rows) == 12


def test_post_claim_at_p113():
    """The post: > 95% at 256 random cosine neurons, (near) perfect at 512, for p = 113."""
    rows = construction_curve("cosine", 113, neurons=(256, 512), draws=2, seed=0)
    assert min(rows[0]["accs"]) > 0.95 and min(rows[1]["accs"]) > 0.999
