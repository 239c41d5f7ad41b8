"""Tests of modadd.fourier against independent (numpy / dense / direct) computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from modadd.fourier import (
    CosineFit,
    NeuronFits,
    all_pairs_logits,
    fit_cosines,
    fit_neurons,
    fit_statistics,
    fourier_norms,
    freq_counts,
    gini,
    ipr,
    key_frequencies,
    key_frequency_ablation,
    logit_chunks,
    restricted_excluded_loss,
    weight_norms,
    wrap_phase,
)

DT = torch.float64


def seed_find_cosine(x_data: np.ndarray, y_data: np.ndarray):
    """Copy of the seed notebook's `MLP.find_cosine`."""
    yf = np.fft.fft(y_data)
    xf = np.fft.fftfreq(x_data.size, d=(x_data[1] - x_data[0]))
    idx = np.argmax(np.abs(yf[1 : yf.size // 2]))
    freq = np.abs(xf[idx + 1])
    phase_shift = -np.angle(yf[idx + 1])
    scale = 2 * np.abs(yf[idx + 1]) / x_data.size
    offset = np.mean(y_data)
    return freq, phase_shift, scale, offset


def cosines(n: int, freq: Tensor, phase: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """Direct evaluation `(..., n)` of scale*cos(2*pi*freq*x/n + phase) + offset."""
    x = torch.arange(n, dtype=DT)
    angle = 2 * math.pi * freq[..., None].to(DT) * x / n
    return scale[..., None] * torch.cos(angle + phase[..., None]) + offset[..., None]



def random_params(shape: tuple[int, ...], n: int, gen: torch.Generator):
    freq = torch.randint(1, n // 2 + 1, shape, generator=gen)
    phase = (torch.rand(shape, generator=gen, dtype=DT) * 2 - 1) * math.pi
    scale = 0.5 + torch.rand(shape, generator=gen, dtype=DT)
    offset = torch.randn(shape, generator=gen, dtype=DT)
    return freq, phase, scale, offset


def assert_same_angle(x: Tensor, y: Tensor, atol: float = 1e-9) -> None:
    assert wrap_phase(x - y).abs().max().item() < atol


@pytest.mark.parametrize("n", [23, 113])
def test_exact_recovery_batched(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    freq, phase, scale, offset = random_params((3, 4, 5), n, gen)
    # phases at and near +-pi
    phase[0, 0, :] = torch.tensor([math.pi, -math.pi, math.pi - 1e-6, -math.pi + 1e-6, 0.0], dtype=DT)
    y = cosines(n, freq, phase, scale, offset)
    fit = fit_cosines(y)
    assert fit.freq.shape == (3, 4, 5) and fit.freq.dtype == torch.long
    assert torch.equal(fit.freq, freq)
    assert_same_angle(fit.phase, phase)
    torch.testing.assert_close(fit.scale, scale)
    torch.testing.assert_close(fit.offset, offset)
    torch.testing.assert_close(fit.r2, torch.ones_like(fit.r2))
    assert ((fit.phase > -math.pi) & (fit.phase <= math.pi)).all()
    torch.testing.assert_close(fit.evaluate(n), y)


def test_even_n_and_nyquist() -> None:
    n = 24
    x = torch.arange(n, dtype=DT)
    nyq = torch.stack([2 * torch.cos(math.pi * x) + 0.3, -1.5 * torch.cos(math.pi * x) - 1.0])
    other = 0.4 * torch.cos(2 * math.pi * 5 * x / n + 1.0)  # smaller, so the Nyquist bin wins
    y = torch.cat([nyq + other, cosines(n, torch.tensor([7]), torch.tensor([-2.0], dtype=DT),
                                        torch.tensor([1.2], dtype=DT), torch.tensor([0.0], dtype=DT))])
    fit = fit_cosines(y)
    assert fit.freq.tolist() == [12, 12, 7]
    torch.testing.assert_close(fit.scale, torch.tensor([2.0, 1.5, 1.2], dtype=DT))
    assert_same_angle(fit.phase, torch.tensor([0.0, math.pi, -2.0], dtype=DT))
    torch.testing.assert_close(fit.offset, torch.tensor([0.3, -1.0, 0.0], dtype=DT))
    # Nyquist: variance 4 (cos(pi x)^2 = 1) against 0.4^2/2 for the other wave
    torch.testing.assert_close(fit.r2[:2], torch.tensor([4 / (4 + 0.08), 2.25 / (2.25 + 0.08)], dtype=DT))
    torch.testing.assert_close(fit.evaluate(n)[:2], nyq)


def test_seed_convention_is_mirror_image() -> None:
    n = 23
    gen = torch.Generator().manual_seed(0)
    x_np = np.arange(n)
    for _ in range(10):
        freq, phase, scale, offset = random_params((), n - 2, gen)  # k <= 10: the seed never tries k = 11
        y = cosines(n, freq, phase, scale, offset)
        ours = fit_cosines(y)
        f_s, s_s, u_s, o_s = seed_find_cosine(x_np, y.numpy())
        assert f_s == pytest.approx(ours.freq.item() / n)
        assert_same_angle(torch.tensor(s_s, dtype=DT), -ours.phase)
        assert u_s == pytest.approx(ours.scale.item()) and o_s == pytest.approx(ours.offset.item())
        seed_curve = u_s * np.cos(x_np * f_s * 2 * np.pi + s_s) + o_s  # the seed's `cosine`
        np.testing.assert_allclose(seed_curve, y.numpy()[(-x_np) % n], atol=1e-9)


def test_noise() -> None:
    n, batch, sigma, amp = 113, 400, 0.5, 1.0
    gen = torch.Generator().manual_seed(1)
    freq, phase, _, offset = random_params((batch,), n, gen)
    signal = cosines(n, freq, phase, torch.full((batch,), amp, dtype=DT), offset)
    y = signal + sigma * torch.randn(batch, n, generator=gen, dtype=DT)
    fit = fit_cosines(y)
    assert torch.equal(fit.freq, freq)
    assert wrap_phase(fit.phase - phase).abs().max() < 0.25
    assert (fit.scale - amp).abs().max() < 0.25
    expected = (amp**2 / 2) / (amp**2 / 2 + sigma**2)
    assert fit.r2.mean().item() == pytest.approx(expected, abs=0.02)


def test_r2_matches_direct_residuals() -> None:
    gen = torch.Generator().manual_seed(2)
    for n in (23, 24):
        y = torch.randn(50, n, generator=gen, dtype=DT)
        fit = fit_cosines(y)
        ss_res = (y - fit.evaluate(n)).square().sum(-1)
        ss_tot = (y - y.mean(-1, keepdim=True)).square().sum(-1)
        torch.testing.assert_close(fit.r2, 1 - ss_res / ss_tot)


def test_frequency_is_the_largest_bin() -> None:
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(200, 31, generator=gen, dtype=DT)
    mags = np.abs(np.fft.rfft(y.numpy(), axis=-1))[:, 1:]
    assert fit_cosines(y).freq.tolist() == (mags.argmax(-1) + 1).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_vector(dtype: torch.dtype) -> None:
    y = torch.stack([torch.full((23,), 0.1, dtype=dtype), torch.zeros(23, dtype=dtype)])
    fit = fit_cosines(y)
    assert fit.r2.tolist() == [0.0, 0.0]
    for value in (fit.phase, fit.scale, fit.offset, fit.r2):
        assert not value.isnan().any()
    assert fit.scale.abs().max() < 1e-6
    torch.testing.assert_close(fit.evaluate(23), y)


def test_wrap_phase() -> None:
    pi = math.pi
    w = wrap_phase(torch.tensor([pi, -pi, 3 * pi, -3 * pi, 0.0, 2 * pi + 0.5, -1e-300], dtype=DT))
    assert ((w > -pi) & (w <= pi)).all()
    torch.testing.assert_close(w, torch.tensor([pi, pi, pi, pi, 0.0, 0.5, -1e-300], dtype=DT))


def hand_built(p: int, hidden: int, lead: tuple[int, ...], seed: int):
    """A network whose neurons are exact cosines obeying phase_out = phase_a + phase_b."""
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, hidden)
    freq = torch.randint(1, p // 2 + 1, shape, generator=gen)
    pa = (torch.rand(shape, generator=gen, dtype=DT) * 2 - 1) * math.pi
    pb = (torch.rand(shape, generator=gen, dtype=DT) * 2 - 1) * math.pi
    sa, sb, so = (0.5 + torch.rand(shape, generator=gen, dtype=DT) for _ in range(3))
    zero = torch.zeros(shape, dtype=DT)
    a = cosines(p, freq, pa, sa, zero)
    b = cosines(p, freq, pb, sb, zero)
    out = cosines(p, freq, pa + pb, so, zero)
    fc1 = torch.cat([a, b], dim=-1)
    fc2 = out.transpose(-1, -2)
    return fc1, fc2, dict(freq=freq, pa=pa, pb=pb, sa=sa, sb=sb, so=so)


def test_fit_neurons_hand_built() -> None:
    p, hidden = 23, 40
    fc1, fc2, truth = hand_built(p, hidden, (), seed=4)
    fits = fit_neurons(fc1, fc2)
    assert fits.p == p
    for fit in (fits.a, fits.b, fits.out):
        assert torch.equal(fit.freq, truth["freq"])
        torch.testing.assert_close(fit.r2, torch.ones(hidden, dtype=DT))
    assert_same_angle(fits.a.phase, truth["pa"])
    assert_same_angle(fits.b.phase, truth["pb"])
    assert_same_angle(fits.out.phase, truth["pa"] + truth["pb"])
    torch.testing.assert_close(fits.a.scale, truth["sa"])
    torch.testing.assert_close(fits.out.scale, truth["so"])

    stats = fit_statistics(fits)
    assert stats["frac_same_freq"].item() == 1.0
    assert stats["phase_sum_error_median"].item() == pytest.approx(0.0, abs=1e-9)
    for kind in ("a", "b", "out"):
        assert stats[f"r2_mean_{kind}"].item() == pytest.approx(1.0)
    assert stats["scale_ratio_mean"].item() == pytest.approx((truth["sa"] / truth["sb"]).mean().item())
    assert stats["distinct_freqs"].item() == len(set(truth["freq"].tolist()))

    new_fc1, new_fc2 = fits.to_weights()
    torch.testing.assert_close(new_fc1, fc1)
    torch.testing.assert_close(new_fc2, fc2)
    counts = freq_counts(fits.out.freq, p)
    assert counts.shape == (p // 2 + 1,)
    assert counts.tolist() == np.bincount(truth["freq"].numpy(), minlength=p // 2 + 1).tolist()

    table = fits.table()
    names = [f"{f}_{k}" for k in ("a", "b", "out") for f in ("freq", "phase", "scale", "offset", "r2")]
    assert sorted(table) == sorted(names)
    assert all(v.shape == (hidden,) for v in table.values())
    assert torch.equal(table["freq_out"], fits.out.freq)


def test_to_weights_is_the_fit_of_each_vector() -> None:
    gen = torch.Generator().manual_seed(5)
    fc1 = torch.randn(2, 7, 2 * 11, generator=gen, dtype=DT)
    fc2 = torch.randn(2, 11, 7, generator=gen, dtype=DT)
    fits = fit_neurons(fc1, fc2)
    new_fc1, new_fc2 = fits.to_weights()
    assert new_fc1.shape == fc1.shape and new_fc2.shape == fc2.shape
    torch.testing.assert_close(new_fc1[1, 3, 11:], fit_cosines(fc1[1, 3, 11:]).evaluate(11))
    torch.testing.assert_close(new_fc2[0, :, 6], fit_cosines(fc2[0, :, 6]).evaluate(11))


def test_fit_neurons_shape_check() -> None:
    with pytest.raises(ValueError):
        fit_neurons(torch.zeros(5, 20), torch.zeros(11, 5))
    with pytest.raises(ValueError):
        fit_neurons(torch.zeros(5, 22), torch.zeros(11, 4))


def test_statistics_batched_and_degenerate() -> None:
    p, hidden = 23, 30
    fc1, fc2, truth = hand_built(p, hidden, (3,), seed=6)
    # member 1: every out frequency shifted, so no neuron agrees
    shifted = truth["freq"][1] % (p // 2) + 1
    fc2[1] = cosines(p, shifted, truth["pa"][1], truth["so"][1], torch.zeros(hidden, dtype=DT)).T
    fits = fit_neurons(fc1, fc2)
    stats = fit_statistics(fits)
    assert all(v.shape == (3,) for v in stats.values())
    for k in (0, 2):
        single = fit_statistics(fit_neurons(fc1[k], fc2[k]))
        for name, value in single.items():
            torch.testing.assert_close(stats[name][k], value, equal_nan=True)
    assert torch.equal(fits.out.freq[1], shifted)
    assert stats["frac_same_freq"][1].item() == 0.0
    assert stats["phase_sum_error_median"][1].isnan()
    assert stats["distinct_freqs"][1].item() == shifted.unique().numel()


def test_fit_statistics_mixed_clean_neurons() -> None:
    p, hidden = 23, 12
    fc1, fc2, truth = hand_built(p, hidden, (), seed=7)
    fc2[:, :4] = torch.roll(fc2[:, :4], 1, dims=-1)  # neurons 0..3 get another neuron's out vector
    fits = fit_neurons(fc1, fc2)
    same = (fits.a.freq == fits.b.freq) & (fits.b.freq == fits.out.freq)
    assert 0 < same.sum() < hidden
    stats = fit_statistics(fits)
    assert stats["frac_same_freq"].item() == pytest.approx(same.double().mean().item())
    assert stats["distinct_freqs"].item() == fits.out.freq[same].unique().numel()
    err = wrap_phase(fits.out.phase - fits.a.phase - fits.b.phase).abs()[same]
    assert stats["phase_sum_error_median"].item() == pytest.approx(float(np.median(err.numpy())), abs=1e-12)


def test_fit_statistics_on_given_fits() -> None:
    def fit(freq: list[int], phase: list[float], scale: list[float]) -> CosineFit:
        zeros, ones = torch.zeros(len(freq), dtype=DT), torch.ones(len(freq), dtype=DT)
        return CosineFit(torch.tensor(freq), torch.tensor(phase, dtype=DT), torch.tensor(scale, dtype=DT), zeros, ones)

    # neurons 0-3 clean with phase-sum errors 0.1, -0.2, 0.3 (wrapping), 0.4; neuron 4 not clean
    a = fit([3, 3, 5, 5, 2], [0.0, 1.0, 3.0, -1.0, 0.0], [1.0, 2.0, 1.0, 1.0, 1.0])
    b = fit([3, 3, 5, 5, 2], [0.5, 1.0, 3.0, 0.0, 0.0], [2.0, 1.0, 1.0, 1.0, 4.0])
    out = fit([3, 3, 5, 5, 4], [0.6, 1.8, 6.3 - 2 * math.pi, -0.6, 3.0], [1.0] * 5)
    stats = fit_statistics(NeuronFits(a=a, b=b, out=out, p=11))
    assert stats["frac_same_freq"].item() == pytest.approx(0.8)
    assert stats["phase_sum_error_median"].item() == pytest.approx(0.25)  # midpoint of 0.2 and 0.3
    assert stats["scale_ratio_mean"].item() == pytest.approx((0.5 + 2 + 1 + 1 + 0.25) / 5)
    assert stats["distinct_freqs"].item() == 2


def test_key_frequencies() -> None:
    p = 23
    freq = torch.tensor([3] * 10 + [5] * 5 + [7] * 4 + [9] * 1)  # 20 neurons: shares .5 .25 .2 .05
    fit = CosineFit(freq, *(torch.zeros(20, dtype=DT) for _ in range(4)))
    fits = NeuronFits(a=fit, b=fit, out=fit, p=p)
    assert key_frequencies(fits).tolist() == [3, 5, 7, 9]
    assert key_frequencies(fits, min_share=0.2).tolist() == [3, 5, 7]
    assert key_frequencies(fits, min_share=0.0).tolist() == [3, 5, 7, 9]
    batched = CosineFit(freq[None], *(torch.zeros(1, 20, dtype=DT) for _ in range(4)))
    with pytest.raises(ValueError):
        key_frequencies(NeuronFits(a=batched, b=batched, out=batched, p=p))


def test_weight_and_fourier_norms() -> None:
    p, hidden = 23, 9
    gen = torch.Generator().manual_seed(8)
    fc1 = torch.randn(2, hidden, 2 * p, generator=gen, dtype=DT)
    fc2 = torch.randn(2, p, hidden, generator=gen, dtype=DT)
    norms = weight_norms(fc1, fc2)
    torch.testing.assert_close(norms["fc1"], fc1.square().sum((-1, -2)).sqrt())
    torch.testing.assert_close(norms["fc2"], fc2.square().sum((-1, -2)).sqrt())
    total_sq = fc1.square().sum((-1, -2)) + fc2.square().sum((-1, -2))
    torch.testing.assert_close(norms["total"], total_sq.sqrt())

    fn = fourier_norms(fc1, fc2)
    assert fn.shape == (2, p // 2 + 1)
    torch.testing.assert_close(fn.square().sum(-1), norms["total"].square())
    # independent: full numpy FFT, k and p-k together
    vecs = np.concatenate([fc1[0, :, :p].numpy(), fc1[0, :, p:].numpy(), fc2[0].T.numpy()])
    power = (np.abs(np.fft.fft(vecs, axis=-1)) ** 2).sum(0) / p
    expected = [power[0]] + [power[k] + power[p - k] for k in range(1, p // 2 + 1)]
    np.testing.assert_allclose(fn[0].numpy() ** 2, expected)

    # a hand-built network lives on its frequencies only (no offsets)
    fc1h, fc2h, truth = hand_built(p, hidden, (), seed=9)
    fnh = fourier_norms(fc1h, fc2h)
    used = torch.zeros(p // 2 + 1, dtype=torch.bool)
    used[truth["freq"]] = True
    assert fnh[~used].max() < 1e-9 and (fnh[used] > 0.1).all()


def test_fourier_norms_even_p_parseval() -> None:
    gen = torch.Generator().manual_seed(10)
    fc1 = torch.randn(5, 2 * 12, generator=gen, dtype=DT)
    fc2 = torch.randn(12, 5, generator=gen, dtype=DT)
    total = weight_norms(fc1, fc2)["total"]
    torch.testing.assert_close(fourier_norms(fc1, fc2).square().sum(), total.square())


def test_gini_and_ipr() -> None:
    m = 10
    uniform = torch.full((m,), 0.3, dtype=DT)
    one_hot = torch.zeros(m, dtype=DT)
    one_hot[4] = 2.0
    assert gini(uniform).item() == pytest.approx(0.0, abs=1e-12)
    assert gini(one_hot).item() == pytest.approx(1 - 1 / m)
    assert ipr(one_hot).item() == pytest.approx(1.0)
    assert ipr(uniform).item() == pytest.approx(1 / m)
    zero = torch.zeros(m, dtype=DT)
    assert gini(zero).item() == 0.0 and ipr(zero).item() == 0.0

    gen = torch.Generator().manual_seed(11)
    x = torch.rand(4, 3, m, generator=gen, dtype=DT)
    pairwise = (x[..., :, None] - x[..., None, :]).abs().sum((-1, -2)) / (2 * m * x.sum(-1))
    torch.testing.assert_close(gini(x), pairwise)
    v = x / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(ipr(x), v.pow(4).sum(-1))


def one_hot_inputs(p: int) -> Tensor:
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=-1).to(DT)


@pytest.mark.parametrize(
    "activation, f", [("relu", torch.relu), ("quadratic", torch.square), ("gelu", torch.nn.functional.gelu)]
)
def test_all_pairs_logits_matches_one_hot_forward(activation, f) -> None:
    p, hidden = 11, 13
    gen = torch.Generator().manual_seed(12)
    fc1 = torch.randn(3, hidden, 2 * p, generator=gen, dtype=DT)
    fc2 = torch.randn(3, p, hidden, generator=gen, dtype=DT)
    X = one_hot_inputs(p)
    expected = f(X @ fc1.transpose(-1, -2)) @ fc2.transpose(-1, -2)
    logits = all_pairs_logits(fc1, fc2, activation)
    assert logits.shape == (3, p * p, p)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(all_pairs_logits(fc1[1], fc2[1], activation), expected[1])
    torch.testing.assert_close(all_pairs_logits(fc1, fc2, activation, slice(40, 97)), expected[:, 40:97])


def whole(logits: Tensor):
    """All pairs' logits as one chunk, the unchunked computation the chunked ones must equal."""
    return lambda: [(slice(None), logits)]


@pytest.mark.parametrize("max_bytes", [1, 5000, 2**27])  # a pair per slice, a few pairs, all at once
def test_logit_chunks_cover_the_pairs_and_the_losses_equal_the_unchunked(max_bytes) -> None:
    p, hidden = 13, 20
    fc1, fc2, truth = hand_built(p, hidden, (2,), seed=21)
    full = all_pairs_logits(fc1, fc2)
    source = logit_chunks(fc1, fc2, max_bytes=max_bytes)
    for _ in range(2):  # re-iterable: every pass sees every row once, in order
        parts = list(source())
        assert torch.cat([torch.arange(p * p)[s] for s, _ in parts]).equal(torch.arange(p * p))
        torch.testing.assert_close(torch.cat([chunk for _, chunk in parts], dim=-2), full)
    if max_bytes == 1:
        assert len(parts) == p * p
    keys = torch.tensor(sorted(set(truth["freq"][0].tolist())))
    rows = torch.randperm(p * p, generator=torch.Generator().manual_seed(3))[:50]
    expected = restricted_excluded_loss(whole(full), p, keys, rows)
    for got, want in zip(restricted_excluded_loss(source, p, keys, rows), expected):
        torch.testing.assert_close(got, want)
    got = key_frequency_ablation(logit_chunks(fc1[0], fc2[0], max_bytes=max_bytes), p, keys)
    want = key_frequency_ablation(whole(full[0]), p, keys)
    assert [r["ablation"] for r in got] == [r["ablation"] for r in want]
    assert [r[k] for r in got for k in ("acc", "loss")] == pytest.approx([r[k] for r in want for k in ("acc", "loss")])


def grid_directions(p: int, keys: list[int]) -> Tensor:
    """Dense basis `(p*p*p, 2K)` of cos/sin(w_k(a+b-c)) on the (a, b, c) grid, row (a*p+b)*p+c."""
    a, b, c = torch.meshgrid(*(torch.arange(p, dtype=DT),) * 3, indexing="ij")
    d = (a + b - c).flatten()
    cols = []
    for k in keys:
        cols += [torch.cos(2 * math.pi * k * d / p), torch.sin(2 * math.pi * k * d / p)]
    return torch.stack(cols, dim=-1)


def pair_loss(logits: Tensor, p: int) -> Tensor:
    labels = (torch.arange(p)[:, None] + torch.arange(p)[None, :]).flatten() % p
    return F.cross_entropy(logits, labels)


@pytest.mark.parametrize("p", [7, 8])
def test_restricted_matches_dense_projection(p: int) -> None:
    keys = [1, 3] if p == 7 else [1, 4]  # p = 8: k = 4 is the Nyquist frequency (sin vanishes)
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(p * p, p, generator=gen, dtype=DT)
    U = grid_directions(p, keys)
    U = U[:, U.norm(dim=0) > 1e-9]
    coef = torch.linalg.lstsq(U, logits.flatten()[:, None]).solution
    restricted = (U @ coef).reshape(p * p, p)
    r_loss, e_loss, _ = restricted_excluded_loss(whole(logits), p, torch.tensor(keys))
    torch.testing.assert_close(r_loss, pair_loss(restricted, p))
    torch.testing.assert_close(e_loss, pair_loss(logits - restricted, p))
    rows = torch.randperm(p * p, generator=gen)[: p * p // 3]  # the excluded loss over some pairs only (training pairs)
    labels = (torch.arange(p)[:, None] + torch.arange(p)[None, :]).flatten() % p
    _, _, e_rows = restricted_excluded_loss(whole(logits), p, torch.tensor(keys), rows)
    torch.testing.assert_close(e_rows, F.cross_entropy((logits - restricted)[rows], labels[rows]))


def test_restricted_on_functions_of_a_plus_b_minus_c() -> None:
    p = 11
    gen = torch.Generator().manual_seed(14)
    a, b, c = torch.meshgrid(*(torch.arange(p),) * 3, indexing="ij")
    d = ((a + b - c) % p).reshape(p * p, p)
    # an exact combination of cos/sin(w_k(a+b-c)) for k in {2, 5}
    w = 2 * math.pi * d.to(DT) / p
    logits = 3 * torch.cos(2 * w + 0.4) - 1.5 * torch.sin(5 * w) + 0.7 * torch.cos(5 * w)
    full = pair_loss(logits, p)
    r_loss, e_loss, _ = restricted_excluded_loss(whole(logits), p, torch.tensor([5, 2]))
    torch.testing.assert_close(r_loss, full)
    assert e_loss.item() == pytest.approx(math.log(p))
    # any function of (a+b-c) mod p: with all of 1..p//2 only the mean is lost, which CE ignores
    g = torch.randn(p, generator=gen, dtype=DT)
    r_loss, e_loss, _ = restricted_excluded_loss(whole(g[d]), p, torch.arange(1, p // 2 + 1))
    torch.testing.assert_close(r_loss, pair_loss(g[d], p))
    assert e_loss.item() == pytest.approx(math.log(p))


def test_restricted_on_network_logits() -> None:
    p, hidden = 11, 20
    fc1, fc2, truth = hand_built(p, hidden, (2,), seed=15)
    logits = all_pairs_logits(fc1, fc2)
    keys = torch.tensor(sorted(set(truth["freq"][0].tolist())))
    r_loss, e_loss, _ = restricted_excluded_loss(whole(logits), p, keys)
    assert r_loss.shape == (2,)
    r0, e0, _ = restricted_excluded_loss(whole(logits[0]), p, keys)
    torch.testing.assert_close(r_loss[0], r0)
    torch.testing.assert_close(e_loss[0], e0)
    # dense check of the decomposition on member 0
    U = grid_directions(p, keys.tolist())
    coef = torch.linalg.lstsq(U, logits[0].flatten()[:, None]).solution
    restricted = (U @ coef).reshape(p * p, p)
    torch.testing.assert_close(r0, pair_loss(restricted, p))
    torch.testing.assert_close(e0, pair_loss(logits[0] - restricted, p))
    # no key frequencies: nothing restricted (uniform prediction), everything excluded
    r_none, e_none, _ = restricted_excluded_loss(whole(logits[0]), p, torch.tensor([], dtype=torch.long))
    assert r_none.item() == pytest.approx(math.log(p))
    torch.testing.assert_close(e_none, pair_loss(logits[0], p))


def test_restricted_rejects_bad_keys() -> None:
    logits = torch.zeros(49, 7)
    for keys in ([0], [4], [1, 1]):
        with pytest.raises(ValueError):
            restricted_excluded_loss(whole(logits), 7, torch.tensor(keys))
    with pytest.raises(ValueError):
        restricted_excluded_loss(whole(torch.zeros(49, 8)), 7, torch.tensor([1]))


def test_float32_runs() -> None:
    fc1, fc2, truth = hand_built(23, 16, (), seed=16)
    fits = fit_neurons(fc1.float(), fc2.float())
    assert torch.equal(fits.out.freq, truth["freq"])
    stats = fit_statistics(fits)
    assert stats["phase_sum_error_median"].item() < 1e-4
    assert stats["frac_same_freq"].dtype == torch.float32


def test_member_of_a_stacked_fit_equals_fitting_that_member_alone():
    from modadd.fourier import fit_neurons

    g = torch.Generator().manual_seed(3)
    fc1, fc2 = torch.randn(3, 8, 22, generator=g), torch.randn(3, 11, 8, generator=g)
    stacked = fit_neurons(fc1, fc2)
    for k in range(3):
        alone, picked = fit_neurons(fc1[k], fc2[k]), stacked.member(k)
        for kind in ("a", "b", "out"):
            for name in ("freq", "phase", "scale", "offset", "r2"):
                torch.testing.assert_close(getattr(getattr(picked, kind), name), getattr(getattr(alone, kind), name))
