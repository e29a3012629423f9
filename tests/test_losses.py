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


def test_16_bit_index_targets_equal_the_reference():
    """Default training hands the loss token indices as int16 (MusER.regularization_targets),
    which take the integer branch: its values and gradients must be the reference's too."""
    g = torch.Generator().manual_seed(2)
    reduced = torch.randn(7, 6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 2 ** 14, (7, 6, 11), generator=g)
    tokens[:, 3] = tokens[:, 1]                              # ties
    tokens[:, 0, 0], tokens[:, 5, 0] = 0, 2 ** 14 - 1        # the widest difference int16 takes
    targets = tokens.to(torch.int16)
    fast = element_regularization(reduced, targets)
    slow = pair_loop(reduced, tokens.double())
    assert torch.allclose(fast, slow, atol=1e-12)
    weights = torch.randn(7, generator=g, dtype=torch.float64)
    grad_fast, = torch.autograd.grad((fast * weights).sum(), reduced)
    grad_slow, = torch.autograd.grad((slow * weights).sum(), reduced)
    assert torch.allclose(grad_fast, grad_slow, atol=1e-12)


def test_muser_regularises_on_16_bit_indices_by_default():
    """The targets the model builds are the words' token indices, as int16: the branch above."""
    from models.config import MusERConfig, apply_preset
    from models.muser import MusER

    vocab = [56, 135, 18, 4, 87, 18, 42, 5]
    config = apply_preset(MusERConfig(vocab, type_ids={"EOS": 0, "Emotion": 1, "Metrical": 2, "Note": 3}),
                          "tiny")
    assert config.reg_target != "value"
    g = torch.Generator().manual_seed(3)
    y = torch.stack([torch.randint(0, v, (3, 64), generator=g) for v in vocab], -1)
    targets = MusER(config).regularization_targets(y)
    assert targets.dtype == torch.int16
    assert torch.equal(targets.long(), y[..., :7].permute(2, 0, 1))
