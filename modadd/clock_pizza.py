"""Clock or pizza (Zhong et al. 2023): which of two algorithms for modular addition a network runs.

Both put a and b on circles, E(x) ~ (cos kx, sin kx). The clock multiplies the two (angle
addition), so the logit of the right answer does not care how far apart a and b are; the pizza
adds them, E(a) + E(b), whose length is |cos(k(a - b)/2)|, so it does. Two measures of the paper
(its notebook `eval-main.ipynb`, github.com/fjzzq2002/pizza) tell them apart:

- gradient symmetricity: the mean cosine similarity between d logit_c / d E(a) and
  d logit_c / d E(b) over random triples (a, b, c). A network that sees only E(a) + E(b) (every
  MLP here: its neurons' input is W_a + W_b) has equal gradients: 1. The clock's are rotated by
  k(a - b): near 0 on average.
- distance irrelevance: over the distances d = (a - b) mod p, the mean of the standard deviation
  of the right answer's logit among the pairs at distance d, over the standard deviation of all
  of them. Near 1 when the distance explains none of it (clock), small when it explains most (pizza).

The paper's 1-layer runs (its result/1l_fixedwidth.csv) spread over both measures: with no
attention (pizzas) the medians are 0.99 symmetricity and 0.65 distance irrelevance, with full
attention (clocks) 0.50 and 0.86. `algorithm` names the corners (README: clock or pizza):
`clock` below `SYMMETRIC` and at or above `IRRELEVANT`, `pizza` the opposite, `neither` between.
Every MLP here sees W_a + W_b, so its symmetricity is 1 by construction: whether it is a pizza
is told by the distance irrelevance alone. Plain functions on logits and embeddings: a family
provides its `logits_from_embeddings`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from modadd.fourier import LogitChunks

SYMMETRIC = 0.9  # gradient symmetricity at or above: the embeddings of a and b are added, as in a pizza
IRRELEVANT = 0.5  # distance irrelevance at or above: the distance a - b does not set the right logit, as in a clock
SAMPLES = 1000  # triples (a, b, c) of the gradient symmetricity (the paper's notebook: 100)


@torch.no_grad()  # a transformer's parameters require grad: no graph may chain the chunks together
def correct_logits(logits: LogitChunks, p: int) -> Tensor:
    """`(p, p)`: the logit of the right answer (a + b) mod p for every pair [a, b], from the
    all-pairs logits in chunks (`(n, p)` per slice of the rows a*p + b)."""
    out = torch.empty(p * p)
    for s, chunk in logits():
        rows = torch.arange(s.start, s.stop)
        out[s] = chunk.reshape(-1, p).gather(1, ((rows // p + rows % p) % p)[:, None]).squeeze(1).float()
    return out.view(p, p)


def distance_irrelevance(correct: Tensor) -> float:
    """Mean over d of the std of `correct[a, (a - d) mod p]` over a, over the std of all of
    `correct: (p, p)` (population stds, as numpy's in the paper's notebook)."""
    p = correct.shape[0]
    a = torch.arange(p)[:, None]
    by_distance = correct[a, (a - torch.arange(p)[None]) % p].double()  # (a, d)
    return (by_distance.std(0, correction=0).mean() / by_distance.std(correction=0)).item()


def gradient_symmetricity(logits_from_embeddings: Callable[[Tensor, Tensor], Tensor], E_a: Tensor, E_b: Tensor,
                          samples: int = SAMPLES, seed: int = 0) -> float:
    """Mean cosine similarity of d logit_c / d E_a[a] and d logit_c / d E_b[b] over `samples`
    random triples, leaving out those where either gradient is zero (no direction: the paper's
    notebook would give NaN); `E_a, E_b: (p, d)` are the embeddings of a and of b, and
    `logits_from_embeddings(e_a, e_b)` maps `(n, d)` rows of them to logits `(n, p)`. NaN if
    every triple has a zero gradient. The network's own parameters get no `.grad`."""
    p = E_a.shape[0]
    a, b, c = torch.randint(p, (3, samples), generator=torch.Generator().manual_seed(seed))
    e_a, e_b = (E[i].detach().clone().requires_grad_() for E, i in ((E_a, a), (E_b, b)))
    with torch.enable_grad():
        right = logits_from_embeddings(e_a, e_b).gather(1, c[:, None]).sum()
        g_a, g_b = (g.double() for g in torch.autograd.grad(right, (e_a, e_b)))
    directed = (g_a.norm(dim=1) > 0) & (g_b.norm(dim=1) > 0)
    return F.cosine_similarity(g_a[directed], g_b[directed], dim=1).mean().item()


def clock_or_pizza(logits: LogitChunks, logits_from_embeddings: Callable[[Tensor, Tensor], Tensor],
                   E_a: Tensor, E_b: Tensor) -> dict:
    """Both measures of one network and the algorithm they name (analysis.json's `clock_pizza`):
    `logits` over all pairs in chunks, the rest as `gradient_symmetricity` takes them."""
    irrelevance = distance_irrelevance(correct_logits(logits, E_a.shape[0]))
    symmetricity = gradient_symmetricity(logits_from_embeddings, E_a, E_b)
    return {"gradient_symmetricity": symmetricity, "distance_irrelevance": irrelevance,
            "algorithm": algorithm(symmetricity, irrelevance)}


def algorithm(symmetricity: float, irrelevance: float) -> str:
    """`clock`, `pizza` or `neither` (see the module docstring)."""
    symmetric, irrelevant = symmetricity >= SYMMETRIC, irrelevance >= IRRELEVANT
    return "clock" if irrelevant and not symmetric else "pizza" if symmetric and not irrelevant else "neither"
