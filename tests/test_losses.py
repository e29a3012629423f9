"""models/losses.py: the fast regulariser (hand-written backward) against the plain reference, and its edge cases."""
import torch

from models.losses import element_regularization, element_regularization_reference as pair_loop


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
