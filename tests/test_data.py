import numpy as np
import torch

from modadd.data import ModAddData, all_pairs, labels, one_hot, split


def test_every_pair_exactly_once_with_right_labels():
    p = 13
    a, b = all_pairs(p)
    assert sorted(zip(a.tolist(), b.tolist())) == [(i, j) for i in range(p) for j in range(p)]
    assert all(int(c) == (int(i) + int(j)) % p for i, j, c in zip(a, b, labels(a, b, p)))


def test_split_is_disjoint_complete_and_seeded():
    p = 17
    train, val = split(p, 0.8, seed=3)
    assert len(train) == int(0.8 * p * p) and len(train) + len(val) == p * p
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(p * p))
    again, _ = split(p, 0.8, seed=3)
    other, _ = split(p, 0.8, seed=4)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_split_is_the_seed_notebooks_split():
    p = 113
    np.random.seed(1337)
    shuffle = np.random.permutation(p * p)
    train, val = split(p, 0.8, seed=1337)
    assert train.tolist() == shuffle[: int(0.8 * p * p)].tolist()
    assert val.tolist() == shuffle[int(0.8 * p * p) :].tolist()


def test_datamodule_batches_match_one_hot_semantics():
    p = 11
    dm = ModAddData(p, 0.5, seed=0)
    dm.setup()
    (a, b, y), = list(dm.train_dataloader())
    x = one_hot(a, b, p)
    assert torch.equal(x.sum(1), torch.full((len(a),), 2.0))
    assert torch.equal(x[:, :p].argmax(1), a) and torch.equal(x[:, p:].argmax(1), b)
    assert torch.equal(y, (a + b) % p)
    (va, vb, vy), = list(dm.val_dataloader())
    assert len(va) + len(a) == p * p
