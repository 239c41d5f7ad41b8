"""The transformer's LightningModule: the shared training loop (`modadd.module`) with plain
autograd and torch's fused AdamW, the loss in float64 (TransformerLens's demo).

There is no hand-written backward or C++ epoch here (the MLP's fast paths): an epoch is one
Lightning step whose minibatches (one, at the default full batch) are a forward, a backward and a
fused AdamW update each. Denormal floats are flushed to zero while it trains: late in training
the weights hold many, and the CPU's slow path for them made epochs ~2.6x slower here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modadd.module import GrokModule
from modadd.transformer.model import TransformerStack
from modadd.transformer.progress import progress_measures


class TransformerModule(GrokModule):
    """K members of Nanda et al.'s one-layer transformer (see `modadd.module.GrokModule` for the shared knobs)."""

    def __init__(self, d_model: int = 128, n_heads: int = 4, d_head: int = 32, d_mlp: int = 512, **shared):
        super().__init__(**shared)
        self.net = TransformerStack.init(shared["p"], d_model, n_heads, d_head, d_mlp, self.member_seeds)

    def on_fit_start(self) -> None:
        torch.set_flush_denormal(True)

    def teardown(self, stage: str) -> None:
        torch.set_flush_denormal(False)  # torch's default: the setting is process-wide (the next job of a sweep)

    def progress_measures(self) -> dict[str, Tensor]:
        """Nanda et al.'s progress measures `{name: (K,)}` now (`modadd.transformer.progress`),
        the excluded loss on this run's training pairs."""
        data = self.trainer.datamodule
        a, b, _ = data.train
        return progress_measures(self.net, a * self.hparams.p + b, data.operation)[0]
