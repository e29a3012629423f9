"""EMA vector quantiser: nearest codes, bias-corrected EMA, train/eval behaviour, reload."""
import io

import torch

from models.quantizer import EMAVectorQuantizer


def make(seed=0, codes=8, dim=4):
    torch.manual_seed(seed)
    return EMAVectorQuantizer(codes, dim, commitment=0.25, decay=0.9, eps=1e-5)


def test_codes_are_nearest_codebook_vectors():
    vq = make().eval()
    x = torch.randn(3, 5, 4)
    _, _, codes, _ = vq(x)
    brute = torch.cdist(x.reshape(-1, 4), vq.codebook).argmin(1).view(3, 5)
    assert torch.equal(codes, brute)


def test_eval_mode_never_moves_codebook():
    vq = make().eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    for _ in range(3):
        vq(torch.randn(2, 6, 4))
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_train_mode_follows_bias_corrected_ema():
    vq = make().train()
    codebook0 = vq.codebook.clone()
    count_hidden = torch.zeros(8)
    sum_hidden = torch.zeros(8, 4)
    codebook = codebook0
    for step in range(1, 4):
        x = torch.randn(2, 10, 4)
        flat = x.reshape(-1, 4)
        expected_codes = torch.cdist(flat, codebook).argmin(1)
        quantized, _, codes, _ = vq(x)
        assert torch.equal(codes.flatten(), expected_codes)
        # The output uses the codebook from before this step's update.
        assert torch.allclose(quantized.reshape(-1, 4), codebook[expected_codes], atol=1e-6)
        one_hot = torch.nn.functional.one_hot(expected_codes, 8).float()
        count_hidden = 0.9 * count_hidden + 0.1 * one_hot.sum(0)
        sum_hidden = 0.9 * sum_hidden + 0.1 * (one_hot.t() @ flat)
        count = count_hidden / (1 - 0.9 ** step)
        n = count.sum()
        count = (count + 1e-5) / (n + 8 * 1e-5) * n
        codebook = sum_hidden / (1 - 0.9 ** step) / count[:, None]
        assert torch.allclose(vq.codebook, codebook, atol=1e-5)
        assert vq.ema_steps.item() == step
    assert not torch.allclose(vq.codebook, codebook0)


def test_reload_reproduces_next_update_exactly():
    vq = make().train()
    for _ in range(5):
        vq(torch.randn(2, 7, 4))
    state = vq.state_dict()
    assert {"codebook", "ema_count_hidden", "ema_sum_hidden", "ema_steps"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = make(seed=123).train()
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 7, 4)
    a, b = vq(x), fresh(x)
    assert torch.equal(a[2], b[2])
    for k, v in vq.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_straight_through_gradient_and_commitment_loss():
    vq = make().eval()
    x = torch.randn(2, 3, 4, requires_grad=True)
    quantized, loss, codes, perplexity = vq(x)
    target = vq.codebook[codes]
    assert torch.allclose(quantized, target, atol=1e-6)
    assert torch.allclose(loss, 0.25 * ((x - target) ** 2).mean())
    (quantized.sum() + 0 * loss).backward()
    assert torch.equal(x.grad, torch.ones_like(x))       # identity through the quantiser
    x.grad = None
    vq(x)[1].backward()
    assert torch.allclose(x.grad, 0.25 * 2 * (x - target).detach() / x.numel())
    assert 1.0 <= perplexity.item() <= 6.0
