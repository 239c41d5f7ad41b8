"""The fast training paths against a plain PyTorch loop in the seed notebook's manner."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from modadd.data import ModAddData, one_hot
from modadd.mlp.model import MLP
from modadd.mlp.module import MLPModule

P, HIDDEN, BATCH, EPOCHS = 17, 24, 32, 3
HP = dict(p=P, hidden=HIDDEN, lr=3e-3, weight_decay=0.5, batch_size=BATCH, seed=7)


def reference_loop(module: MLPModule, data: ModAddData, member: int, activation: str = "relu") -> MLP:
    """The seed's loop: one-hot matmul, autograd, torch.optim.AdamW, one update per minibatch,
    fed the same batch order the module drew."""
    torch.manual_seed(HP["seed"] + member)
    model = MLP(P, HIDDEN, activation)  # the same initial weights as the module's member
    opt = torch.optim.AdamW(model.parameters(), lr=HP["lr"], weight_decay=HP["weight_decay"])
    a, b, y = data.train
    for epoch in range(EPOCHS):
        order = module.epoch_order(len(y), epoch)[member]
        x, t = one_hot(a[order], b[order], P), y[order]
        for i in range(0, len(t), BATCH):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + BATCH]), t[i : i + BATCH]).backward()
            opt.step()
    return model


@pytest.mark.parametrize(
    "fast, fused, members, activation",
    [(True, True, 1, "relu"), (True, False, 1, "relu"), (False, False, 1, "relu"), (True, True, 3, "relu"),
     (True, False, 3, "relu"), (False, False, 3, "relu"), (True, True, 2, "quadratic"), (True, True, 2, "gelu")],
)
def test_training_matches_plain_reference_loop(fast, fused, members, activation):
    """fast + fused: the C++ epoch (epochs 1 on); fast: hand-written backward; neither: autograd."""
    data = ModAddData(P, 0.6, seed=HP["seed"])
    module = MLPModule(**HP, members=members, fast=fast, fused=fused, activation=activation)
    trainer = L.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == EPOCHS  # one counted optimizer step per epoch, whichever path
    for k in range(members):
        ref = reference_loop(module, data, k, activation)
        got = module.net.member(k)
        torch.testing.assert_close(got.fc1.weight, ref.fc1.weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.fc2.weight, ref.fc2.weight, rtol=1e-4, atol=1e-5)


def test_members_draw_their_own_batch_order():
    module = MLPModule(**HP, members=2)
    order = module.epoch_order(100, epoch=0)
    assert not torch.equal(order[0], order[1])
    assert torch.equal(order, module.epoch_order(100, epoch=0))
    assert not torch.equal(order, module.epoch_order(100, epoch=1))
    assert torch.equal(order[0].sort().values, torch.arange(100))
