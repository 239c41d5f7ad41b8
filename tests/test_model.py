import pytest
import torch
import torch.nn.functional as F

from modadd.data import all_pairs, labels, one_hot
from modadd.mlp.model import ACTIVATIONS, MLP, MLPStack, activate


def test_state_dict_is_the_seeds_layout():
    sd = MLP(113, 100).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"fc1.weight": (100, 226), "fc2.weight": (113, 100)}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gather_forward_equals_one_hot_matmul_logits_and_gradients(activation):
    torch.manual_seed(0)
    p, hidden = 13, 16
    a, b = all_pairs(p)
    y = labels(a, b, p)
    mlp = MLP(p, hidden, activation)
    ref = MLP(p, hidden, activation)
    ref.load_state_dict(mlp.state_dict())
    logits = mlp.forward_pairs(a, b)
    ref_logits = ref(one_hot(a, b, p))
    torch.testing.assert_close(logits, ref_logits)
    F.cross_entropy(logits, y).backward()
    F.cross_entropy(ref_logits, y).backward()
    for name, param in mlp.named_parameters():
        torch.testing.assert_close(param.grad, dict(ref.named_parameters())[name].grad)


def test_stack_init_is_the_seed_notebooks_init_and_members_round_trip():
    torch.manual_seed(1337)
    seed_model = MLP(113, 100)  # what the notebook does: torch.manual_seed(1337); MLP(226, 100, 113)
    stack = MLPStack.init(113, 100, seeds=[1337, 5])
    assert torch.equal(stack.member(0).fc1.weight, seed_model.fc1.weight)
    assert torch.equal(stack.member(0).fc2.weight, seed_model.fc2.weight)
    assert not torch.equal(stack.member(1).fc1.weight, seed_model.fc1.weight)
    again = MLPStack.from_mlps([stack.member(0), stack.member(1)])
    assert torch.equal(again.W_in, stack.W_in) and torch.equal(again.W_out, stack.W_out)


def test_stack_forward_is_each_members_forward():
    p = 11
    a, b = all_pairs(p)
    stack = MLPStack.init(p, 8, seeds=[0, 1, 2])
    logits = stack(a, b)
    for k in range(3):
        torch.testing.assert_close(logits[k], stack.member(k).forward_pairs(a, b))


def test_activations_are_what_their_names_say():
    x = torch.linspace(-3, 3, 61)
    torch.testing.assert_close(activate(x, "relu"), x.clamp(min=0))
    torch.testing.assert_close(activate(x, "quadratic"), x * x)
    torch.testing.assert_close(activate(x, "gelu"), x * 0.5 * (1 + torch.erf(x / 2**0.5)))
    with pytest.raises(ValueError, match="activation='tanh' is invalid: must be one of relu, quadratic, gelu"):
        activate(x, "tanh")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hand_written_backward_equals_autograd(activation):
    p, hidden, K, B = 13, 16, 3, 40
    stack = MLPStack.init(p, hidden, seeds=[0, 1, 2], activation=activation)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, p, (K, B), generator=g), torch.randint(0, p, (K, B), generator=g)
    y = (a + b) % p
    loss, correct = stack.backward(a, b, y)
    fast = [stack.W_in.grad.clone(), stack.W_out.grad.clone()]
    stack.zero_grad()
    logits = stack(a, b)
    ref_loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
    ref_loss.sum().backward()
    torch.testing.assert_close(loss, ref_loss.detach())
    assert torch.equal(correct, (logits.argmax(-1) == y).sum(1))
    torch.testing.assert_close(fast[0], stack.W_in.grad)
    torch.testing.assert_close(fast[1], stack.W_out.grad)
