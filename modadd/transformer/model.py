"""Nanda et al.'s one-layer transformer, stacked K times for training side by side.

Inputs are the three tokens `a b =` (`=` is token p, so the vocabulary has p + 1 tokens); a
learned positional embedding is added; one attention layer of `n_heads` heads of `d_head`; a
ReLU MLP of `d_mlp` neurons; no LayerNorm; the logits over the p answers are read at the last
position. As in the TransformerLens grokking demo (which this follows, not the paper's own code):
every weight matrix starts as N(0, 0.8 / sqrt(d_model)), the biases are zero and stay zero (they
are not parameters here; the demo freezes them), and the loss is computed in float64.

The weights carry a leading member dimension and TransformerLens's names and layouts:
`W_E: (K, p+1, d_model)`, `W_pos: (K, 3, d_model)`, `W_Q, W_K, W_V: (K, n_heads, d_model, d_head)`,
`W_O: (K, n_heads, d_head, d_model)`, `W_in: (K, d_model, d_mlp)`, `W_out: (K, d_mlp, d_model)`,
`W_U: (K, d_model, p)`. `member_state_dict(k)` is member k as a `HookedTransformer` state dict
(biases as zeros, the causal mask as a buffer): it loads with `load_state_dict(strict=True)`
into `HookedTransformer(HookedTransformerConfig(n_layers=1, d_vocab=p+1, d_vocab_out=p, n_ctx=3,
act_fn="relu", normalization_type=None, ...))` and gives the same logits.

Only the last position is computed: it is all the loss and the analysis read, and the query of
`=` at position 2 is the only query that position needs (the causal mask lets it see all three).
`run` says how the rest is cut down to the per-input matmuls after attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modadd.family import pair_bytes

N_CTX = 3  # a, b, =
NAMES = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U")
# parameter -> its key in a HookedTransformer state dict
TL_KEYS = {
    "W_E": "embed.W_E", "W_pos": "pos_embed.W_pos",
    "W_Q": "blocks.0.attn.W_Q", "W_K": "blocks.0.attn.W_K", "W_V": "blocks.0.attn.W_V", "W_O": "blocks.0.attn.W_O",
    "W_in": "blocks.0.mlp.W_in", "W_out": "blocks.0.mlp.W_out", "W_U": "unembed.W_U",
}


@dataclass
class Cache:
    """What the analysis reads from a forward pass at the last position, for `(K, B)` inputs:
    `attn: (K, B, n_heads, 3)` (the pattern from `=`) and `neurons: (K, B, d_mlp)` (post-ReLU)."""

    attn: Tensor
    neurons: Tensor


class TransformerStack(nn.Module):
    """K independent one-layer transformers (see the module docstring for the shapes)."""

    loss_dtype = torch.float64  # the demo's: float32 log-softmax loses the loss's last digits late in training

    def __init__(self, weights: dict[str, Tensor]):
        super().__init__()
        for name in NAMES:
            setattr(self, name, nn.Parameter(weights[name]))
        self.p = self.W_U.shape[-1]

    @classmethod
    def init(cls, p: int, d_model: int, n_heads: int, d_head: int, d_mlp: int, seeds: list[int]) -> TransformerStack:
        """Member k: every matrix N(0, 0.8 / sqrt(d_model)) from `torch.manual_seed(seeds[k])`,
        drawn in the order of `NAMES` (TransformerLens's gpt2 init; its own draw order differs)."""
        shapes = {
            "W_E": (p + 1, d_model), "W_pos": (N_CTX, d_model), "W_Q": (n_heads, d_model, d_head),
            "W_K": (n_heads, d_model, d_head), "W_V": (n_heads, d_model, d_head), "W_O": (n_heads, d_head, d_model),
            "W_in": (d_model, d_mlp), "W_out": (d_mlp, d_model), "W_U": (d_model, p),
        }
        std = 0.8 / math.sqrt(d_model)
        members = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            members.append({name: torch.randn(shape, generator=g) * std for name, shape in shapes.items()})
        return cls({name: torch.stack([m[name] for m in members]) for name in NAMES})

    @classmethod
    def from_state_dicts(cls, states: list[dict[str, Tensor]]) -> TransformerStack:
        """Members from `HookedTransformer` state dicts (as `member_state_dict` writes them)."""
        return cls({name: torch.stack([s[TL_KEYS[name]].float() for s in states]) for name in NAMES})

    @property
    def members(self) -> int:
        return self.W_E.shape[0]

    @property
    def shape(self) -> dict[str, int]:
        """The knobs of this architecture, read off the weights."""
        K, n_heads, d_model, d_head = self.W_Q.shape
        return {"p": self.p, "d_model": d_model, "n_heads": n_heads, "d_head": d_head, "d_mlp": self.W_in.shape[-1]}

    def row_bytes(self) -> int:
        """Bytes per input pair of what `run` and the measures over all pairs hold at once
        (`family.pair_bytes`): values and scores (gathered and concatenated), the weighted values,
        residuals, neurons before and after the ReLU and their float64 copy, the logits and their
        float64 copies."""
        return pair_bytes("transformer", {**self.shape, "members": self.members})

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member k as a `HookedTransformer` state dict (CPU copies; zero biases; causal mask)."""
        s = self.shape
        state = {TL_KEYS[name]: getattr(self, name)[k].detach().cpu().clone() for name in NAMES}
        zeros = {"blocks.0.attn.b_Q": (s["n_heads"], s["d_head"]), "blocks.0.attn.b_K": (s["n_heads"], s["d_head"]),
                 "blocks.0.attn.b_V": (s["n_heads"], s["d_head"]), "blocks.0.attn.b_O": (s["d_model"],),
                 "blocks.0.mlp.b_in": (s["d_mlp"],), "blocks.0.mlp.b_out": (s["d_model"],), "unembed.b_U": (self.p,)}
        state.update({key: torch.zeros(shape) for key, shape in zeros.items()})
        state["blocks.0.attn.mask"] = torch.tril(torch.ones(N_CTX, N_CTX, dtype=torch.bool))
        state["blocks.0.attn.IGNORE"] = torch.tensor(-torch.inf)
        return state

    def run(self, a: Tensor, b: Tensor) -> tuple[Tensor, Cache]:
        """Logits `(K, B, p)` at the last position and the `Cache`; `a, b`: `(K, B)` or `(B,)` (shared).

        The query (of "=" at position 2) is the same for every input, so it is folded into the
        keys: `w_qk = W_K q / sqrt(d_head)` turns a residual vector into its attention score per
        head. The residual stream at positions 0 and 1 depends only on the token there, so its
        values and scores are tables over the p + 1 tokens, gathered per input: the per-input
        matmuls are those after attention only.
        """
        if a.dim() == 1:
            a, b = a.expand(self.members, -1), b.expand(self.members, -1)
        K, B = a.shape
        x_eq, W_vs = self._query()
        x_ab = self.W_E[:, None] + self.W_pos[:, :2, None]  # (K, 2, p+1, d_model): each token at position 0, 1
        table = torch.bmm(x_ab.reshape(K, 2 * (self.p + 1), -1), W_vs)  # (K, 2 (p+1), n_heads (d_head+1))
        offset = torch.arange(K, device=a.device).unsqueeze(1) * 2 * (self.p + 1)
        rows = torch.stack([a + offset, b + offset + self.p + 1], dim=-1)  # (K, B, 2) into the flat table
        vs_ab = table.reshape(-1, table.shape[-1]).index_select(0, rows.reshape(-1)).view(K, B, 2, -1)
        return self._attend(vs_ab, x_eq, W_vs)

    def logits_from_embeddings(self, e_a: Tensor, e_b: Tensor) -> Tensor:
        """Logits `(K, B, p)` from the token embeddings of a and b, `e_a, e_b: (K, B, d_model)`
        (rows of `W_E`): what gradients with respect to the embeddings are taken through
        (`modadd.clock_pizza`). `run` is this with the rows gathered from tables."""
        K, B, d_model = e_a.shape
        x_eq, W_vs = self._query()
        x_ab = torch.stack([e_a + self.W_pos[:, None, 0], e_b + self.W_pos[:, None, 1]], dim=2)  # (K, B, 2, d_model)
        vs_ab = torch.bmm(x_ab.reshape(K, 2 * B, d_model), W_vs).view(K, B, 2, -1)
        return self._attend(vs_ab, x_eq, W_vs)[0]

    def _query(self) -> tuple[Tensor, Tensor]:
        """The residual of "=" at position 2, `x_eq: (K, d_model)`, and `W_vs: (K, d_model,
        n_heads (d_head + 1))`, which maps a residual to its values and its attention scores."""
        K, n_heads, d_model, d_head = self.W_Q.shape
        x_eq = self.W_E[:, self.p] + self.W_pos[:, 2]
        q = torch.einsum("kd,khde->khe", x_eq, self.W_Q)  # (K, n_heads, d_head)
        w_qk = torch.einsum("khde,khe->kdh", self.W_K, q) / math.sqrt(d_head)  # (K, d_model, n_heads)
        W_V = self.W_V.permute(0, 2, 1, 3).reshape(K, d_model, n_heads * d_head)
        return x_eq, torch.cat([W_V, w_qk], dim=-1)  # values, then scores

    def _attend(self, vs_ab: Tensor, x_eq: Tensor, W_vs: Tensor) -> tuple[Tensor, Cache]:
        """Logits and `Cache` from the values and scores of a and b, `vs_ab: (K, B, 2, n_heads (d_head + 1))`."""
        K, B = vs_ab.shape[:2]
        n_heads, d_model, d_head = self.W_Q.shape[1:]
        vs_eq = torch.bmm(x_eq[:, None], W_vs).unsqueeze(1).expand(K, B, 1, -1)  # (K, B, 1, ...): the same for every input
        vs = torch.cat([vs_ab, vs_eq], dim=2)  # (K, B, 3, n_heads (d_head + 1))
        v = vs[..., : n_heads * d_head].unflatten(-1, (n_heads, d_head))  # (K, B, 3, n_heads, d_head)
        attn = vs[..., n_heads * d_head :].transpose(-1, -2).softmax(dim=-1)  # (K, B, n_heads, 3)
        z = (attn.transpose(-1, -2)[..., None] * v).sum(2)  # (K, B, n_heads, d_head)
        W_O = self.W_O.reshape(K, n_heads * d_head, d_model)
        resid_mid = x_eq[:, None] + torch.bmm(z.reshape(K, B, n_heads * d_head), W_O)  # (K, B, d_model)
        neurons = F.relu(torch.bmm(resid_mid, self.W_in))  # (K, B, d_mlp)
        resid_post = resid_mid + torch.bmm(neurons, self.W_out)
        return torch.bmm(resid_post, self.W_U), Cache(attn, neurons)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Logits `(K, B, p)` for `a, b: (K, B)` or `(B,)`."""
        return self.run(a, b)[0]
