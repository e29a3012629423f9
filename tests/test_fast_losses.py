"""The vectorised regulariser's hand-written backward and its edge cases."""
import torch

from models.muser import element_regularization


def pair_loop(reduced, targets):
    """|tanh(z_i - z_j) - sign(x_i - x_j)| over every pair (i, j), with autograd."""
    batch = reduced.shape[1]
    terms = [(torch.tanh(reduced[:, i] - reduced[:, j])
              - torch.sign(targets[:, i] - targets[:, j])).abs().mean(-1)
             for i in range(batch) for j in range(batch)]
    return torch.stack(terms, -1).mean(-1)


def test_gradient_equals_autograd_of_the_pair_loop():
    g = torch.Generator().manual_seed(0)
    reduced = torch.randn(7, 6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 3, (7, 6, 11), generator=g).double()   # ties included
    fast = element_regularization(reduced, targets)
    slow = pair_loop(reduced, targets)
    assert torch.allclose(fast, slow, atol=1e-12)
    weights = torch.randn(7, generator=g, dtype=torch.float64)
    grad_fast, = torch.autograd.grad((fast * weights).sum(), reduced)
    grad_slow, = torch.autograd.grad((slow * weights).sum(), reduced)
    assert torch.allclose(grad_fast, grad_slow, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: element_regularization(z, targets), (reduced,))


def test_single_piece_batch_and_autocast():
    reduced = torch.randn(7, 1, 5, requires_grad=True)
    assert torch.equal(element_regularization(reduced, torch.zeros(7, 1, 5)), torch.zeros(7))
    g = torch.Generator().manual_seed(1)
    reduced = torch.randn(7, 4, 9, generator=g)
    targets = torch.randint(0, 50, (7, 4, 9), generator=g).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = element_regularization(reduced, targets)
    assert under_autocast.dtype == torch.float32
    assert torch.allclose(under_autocast, element_regularization(reduced, targets))
