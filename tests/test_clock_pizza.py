"""Clock or pizza: the two measures of Zhong et al. on hand-built networks of each kind, against
the paper's own formulas computed independently here."""

import math
from functools import partial

import numpy as np
import torch

from modadd import clock_pizza, fourier
from modadd.data import all_pairs
from modadd.mlp import construct
from modadd.mlp.model import activate
from modadd.transformer.model import TransformerStack

P = 31
K = 3  # the hand-built networks' frequency


def _chunks(logits_fn, p: int = P):
    a, b = all_pairs(p)
    return lambda: [(slice(0, p * p), logits_fn(a, b))]


def _clock(radius: torch.Tensor):
    """The clock: E(x) = r_x (cos kx, sin kx); logit_c = the real part of E(a) E(b) e^{-ikc}
    (angle addition: a product of the two embeddings)."""
    w = 2 * math.pi * K / P
    x = torch.arange(P, dtype=torch.float64)
    E = radius[:, None] * torch.stack([torch.cos(w * x), torch.sin(w * x)], dim=1)  # (p, 2)
    c = torch.arange(P, dtype=torch.float64)

    def logits(e_a, e_b):
        re = e_a[:, 0] * e_b[:, 0] - e_a[:, 1] * e_b[:, 1]  # r_a r_b cos(w (a + b))
        im = e_a[:, 1] * e_b[:, 0] + e_a[:, 0] * e_b[:, 1]  # r_a r_b sin(w (a + b))
        return re[:, None] * torch.cos(w * c) + im[:, None] * torch.sin(w * c)

    return E, logits


def _pizza(neurons: int = 64):
    """The pizza as a quadratic MLP: neuron n reads cos(ka + phi_n) + cos(kb + phi_n) (the same
    phase for a and b, as a shared embedding gives) and writes cos(kc + 2 phi_n), phases evenly
    spaced: the right logit is ~ cos^2(k (a - b) / 2), the distance alone."""
    phase = 2 * math.pi * torch.arange(neurons, dtype=torch.float64) / neurons
    return construct.cosine_network(P, torch.full((neurons,), K), phase, phase)


def test_distance_irrelevance_is_the_papers_formula():
    correct = torch.randn(P, P, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    oo = np.zeros((P, P))  # the paper's notebook: oo[(a+b) % C][(a-b) % C], then np.std over axis 0
    for a in range(P):
        for b in range(P):
            oo[(a + b) % P][(a - b) % P] = correct[a, b]
    expected = np.mean(np.std(oo, axis=0)) / np.std(oo.flatten())
    assert math.isclose(clock_pizza.distance_irrelevance(correct), expected, rel_tol=1e-12)


def test_correct_logits_reads_the_right_answer_in_chunks():
    fc1, fc2 = construct.random_cosine_network(P, 40, torch.Generator().manual_seed(1))
    whole = fourier.all_pairs_logits(fc1, fc2).view(P, P, P)
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    expected = whole[a, b, (a + b) % P]
    chunked = clock_pizza.correct_logits(fourier.logit_chunks(fc1, fc2, max_bytes=4096), P)  # many slices
    assert torch.allclose(chunked, expected, atol=1e-5)  # matmuls of other shapes round differently


def test_a_clock_is_a_clock():
    radius = 1 + 0.3 * torch.rand(P, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    E, logits = _clock(radius)
    result = clock_pizza.clock_or_pizza(_chunks(lambda a, b: logits(E[a], E[b])), logits, E, E)
    # d logit_c / d E(a) is E(b) rotated by -kc, and d logit_c / d E(b) is E(a) rotated by -kc: their
    # cosine is cos(k (b - a)) whatever the radii and c, on the same triples the measure draws
    a, b, _ = torch.randint(P, (3, clock_pizza.SAMPLES), generator=torch.Generator().manual_seed(0))
    expected = torch.cos(2 * math.pi * K * (b - a).double() / P).mean().item()
    assert math.isclose(result["gradient_symmetricity"], expected, abs_tol=1e-9)
    assert abs(result["gradient_symmetricity"]) < 0.1
    assert result["distance_irrelevance"] > 0.9  # the right logit r_a r_b owes nothing to a - b
    assert result["algorithm"] == "clock"


def test_a_pizza_is_a_pizza():
    fc1, fc2 = _pizza()
    assert fourier.all_pairs_logits(fc1, fc2, "quadratic").argmax(-1).eq(torch.arange(P * P).div(P, rounding_mode="floor")
                                                                          .add(torch.arange(P * P) % P) % P).all()
    result = clock_pizza.clock_or_pizza(fourier.logit_chunks(fc1, fc2, "quadratic"),
                                        partial(fourier.logits_from_embeddings, fc2=fc2, activation="quadratic"), fc1[:, :P].T, fc1[:, P:].T)
    assert math.isclose(result["gradient_symmetricity"], 1, abs_tol=1e-12)  # it only ever sees E(a) + E(b)
    assert result["distance_irrelevance"] < 1e-6  # the right logit is a function of a - b alone
    assert result["algorithm"] == "pizza"


def test_an_mlp_is_symmetric_but_its_phases_decide_the_distance():
    """Bussmann's random cosine network adds W_a + W_b (symmetricity 1) but gives each neuron its own
    phase offset, which smears the distance out: neither a clock nor a pizza by the paper's measures."""
    fc1, fc2 = construct.random_cosine_network(P, 256, torch.Generator().manual_seed(3))
    result = clock_pizza.clock_or_pizza(fourier.logit_chunks(fc1, fc2), partial(fourier.logits_from_embeddings, fc2=fc2),
                                        fc1[:, :P].T, fc1[:, P:].T)
    assert math.isclose(result["gradient_symmetricity"], 1, abs_tol=1e-6)
    assert result["distance_irrelevance"] > 0.9
    assert result["algorithm"] == "neither"


def test_zero_gradients_have_no_direction_and_are_left_out():
    """A ReLU MLP whose neurons are all off at some pairs: there the gradients are zero and count for
    nothing (not as a cosine of 0, which would make an adding network look less than symmetric)."""
    fc1, fc2 = construct.random_cosine_network(P, 8, torch.Generator().manual_seed(4))
    fc1 = fc1 - 0.7  # every neuron off at 42 % of the pairs
    dead = (activate(fc1[:, :P].T[:, None] + fc1[:, P:].T[None]) == 0).all(-1)  # (a, b): every neuron off
    assert 0 < dead.float().mean() < 1
    symmetricity = clock_pizza.gradient_symmetricity(partial(fourier.logits_from_embeddings, fc2=fc2), fc1[:, :P].T, fc1[:, P:].T)
    assert math.isclose(symmetricity, 1, abs_tol=1e-6)


def test_the_measures_leave_a_transformer_without_gradients_or_graphs():
    net = TransformerStack.init(P, d_model=16, n_heads=2, d_head=4, d_mlp=32, seeds=[0])
    from modadd.transformer.analysis import clock_or_pizza, logit_chunks

    assert not clock_pizza.correct_logits(logit_chunks(net), P).requires_grad
    result = clock_or_pizza(net)
    assert all(param.grad is None for param in net.parameters())
    assert -1 <= result["gradient_symmetricity"] <= 1 and result["distance_irrelevance"] > 0


def test_transformer_logits_from_embeddings_are_its_logits():
    net = TransformerStack.init(P, d_model=32, n_heads=2, d_head=8, d_mlp=64, seeds=[0, 1])
    a, b = all_pairs(P)
    with torch.no_grad():
        via_embeddings = net.logits_from_embeddings(net.W_E[:, a], net.W_E[:, b])
        assert torch.allclose(via_embeddings, net(a, b), atol=1e-5)
