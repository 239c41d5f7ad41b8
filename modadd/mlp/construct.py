"""Networks built by hand from cosines: ordinary seed-layout MLP weights, no training.

Two constructions of the same idea, neuron n reading cos(w a + phi_a) and cos(w b + phi_b)
(w = 2*pi*k_n/p) and writing cos(w c + phi_a + phi_b) to output c:

- `random_cosine_network`: Bussmann's experiment 3, for the ReLU network. k ~ uniform{1..p//2},
  phases ~ uniform[-pi, pi). The ReLU of the sum has a product-to-sum term
  cos(w (a+b) + phi_a + phi_b) that lines up with the output weights exactly when c = a + b.
- `gromov_network`: Gromov's (2023) analytic solution for the quadratic activation. Neuron n
  has frequency sigma(n) mod p for a random permutation sigma of the N neurons (the frequencies
  0..N-1 mod p: every residue equally often when p divides N; frequency 0 gives constant
  neurons, which `fourier.fit_statistics` does not count as clean), input weights
  cos(w a + psi1), cos(w b + psi2) and output weights cos(-w q - psi1 - psi2)
  (= cos(w q + psi1 + psi2)). (x + y)^2 holds 2xy, whose product-to-sum term summed over all
  residues is (N/p) * (p/2) * [q = a+b]; the other terms carry random phases and cancel as N
  grows, so the network is exact for large N.

Both return `fc1: (..., hidden, 2p)`, `fc2: (..., p, hidden)` as `fourier.NeuronFits.to_weights`
builds them (unit scale, zero offset); `fourier.fit_neurons` recovers their frequencies and
phases, `to_mlp` wraps them as an `MLP` that saves, trains and analyses like a trained one.
`CONSTRUCTIONS` names each with the activation it is built for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from modadd.fourier import CosineFit, NeuronFits
from modadd.mlp.model import MLP


def cosine_network(p: int, freq: Tensor, phase_a: Tensor, phase_b: Tensor) -> tuple[Tensor, Tensor]:
    """Neuron n: a-weights cos(2*pi*k a/p + phi_a), b-weights cos(2*pi*k b/p + phi_b),
    out-weights cos(2*pi*k c/p + phi_a + phi_b).

    `freq` (long; any integer, taken mod p) and the phases are `(..., hidden)`; returns
    `fc1: (..., hidden, 2p)`, `fc2: (..., p, hidden)` in the phases' dtype.
    """
    ones, zeros = torch.ones_like(phase_a), torch.zeros_like(phase_a)

    def cosine(phase: Tensor) -> CosineFit:
        return CosineFit(freq=freq, phase=phase, scale=ones, offset=zeros, r2=ones)

    return NeuronFits(a=cosine(phase_a), b=cosine(phase_b), out=cosine(phase_a + phase_b), p=p).to_weights()


def _phases(neurons: int, generator: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(phi_a, phi_b) ~ uniform[-pi, pi), each `(neurons,)`, from one `rand` `(2, neurons)`."""
    u = torch.rand(2, neurons, generator=generator, device=generator.device, dtype=dtype)
    phase_a, phase_b = (2 * u - 1) * math.pi
    return phase_a, phase_b


def random_cosine_network(
    p: int, neurons: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Bussmann's experiment 3: k ~ uniform{1..p//2} (`randint` `(neurons,)`), then the phases."""
    freq = torch.randint(1, p // 2 + 1, (neurons,), generator=generator, device=generator.device)
    return cosine_network(p, freq, *_phases(neurons, generator, dtype))


def gromov_network(
    p: int, neurons: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Gromov's solution for x^2: frequency sigma(n) mod p (`randperm` `(neurons,)`), then the
    phases psi1, psi2; the output phase -(psi1 + psi2) of cos(-w q - psi1 - psi2) is written as
    cos(w q + psi1 + psi2), the same function."""
    freq = torch.randperm(neurons, generator=generator, device=generator.device) % p
    return cosine_network(p, freq, *_phases(neurons, generator, dtype))


Construction = Callable[[int, int, torch.Generator, torch.dtype], tuple[Tensor, Tensor]]

# name -> (builder, the activation it is built for)
CONSTRUCTIONS: dict[str, tuple[Construction, str]] = {
    "cosine": (random_cosine_network, "relu"),
    "gromov": (gromov_network, "quadratic"),
}


def to_mlp(fc1: Tensor, fc2: Tensor, activation: str) -> MLP:
    """One network's weights `fc1: (hidden, 2p)`, `fc2: (p, hidden)` as an `MLP` (float32, CPU)."""
    p, hidden = fc2.shape
    mlp = MLP(p, hidden, activation)
    with torch.no_grad():
        mlp.fc1.weight.copy_(fc1)
        mlp.fc2.weight.copy_(fc2)
    return mlp
