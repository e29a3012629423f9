"""EMA vector quantiser: nearest codes, bias-corrected EMA, train/eval behaviour, reload."""
import io

import pytest
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
    # The perplexity of this batch's code usage, exp(entropy), from the codes themselves.
    usage = torch.bincount(codes.flatten(), minlength=vq.num_codes).double() / codes.numel()
    used = usage[usage > 0]
    assert perplexity.item() == pytest.approx(torch.exp(-(used * used.log()).sum()).item(), rel=1e-5)


# -- dead-code restart (beyond the paper) ----------------------------------------------



def test_threshold_zero_is_the_paper_update_and_draws_nothing():
    plain, off = make(seed=3).train(), make(seed=3).train()
    off.dead_code_threshold = 0.0
    torch.manual_seed(7)
    data = [torch.randn(2, 9, 4) for _ in range(4)]
    rng = torch.get_rng_state()
    for x in data:
        a, b = plain(x), off(x)
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert torch.equal(torch.get_rng_state(), rng)         # no random draw when off
    for k, v in plain.state_dict().items():
        assert torch.equal(v, off.state_dict()[k]), k


def far_codebook(threshold=1.0):
    """8 codes, the first two near the data (around +-1 on dim 0), six far away."""
    vq = EMAVectorQuantizer(8, 4, decay=0.9, dead_code_threshold=threshold).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.full((8, 4), 100.0))
        vq.codebook[0] = torch.tensor([1.0, 0, 0, 0])
        vq.codebook[1] = torch.tensor([-1.0, 0, 0, 0])
    return vq


def test_far_codes_are_reseeded_onto_encoder_outputs():
    torch.manual_seed(0)
    vq = far_codebook()
    sign = torch.randint(0, 2, (4, 16, 1)) * 2.0 - 1.0       # two clusters, at +-1 on dim 0
    x = torch.randn(4, 16, 4) * 0.1 + sign * torch.tensor([1.0, 0, 0, 0])
    flat = x.reshape(-1, 4)
    _, _, codes, _ = vq(x)
    assert set(codes.unique().tolist()) == {0, 1}           # this step used the old codebook
    for i in range(2, 8):                                   # each far code now is a data row
        assert (vq.codebook[i] == flat).all(1).any(), i
    assert (vq.codebook[2:] < 10).all()
    # The used codes follow the paper's update, and every code's state is consistent: the
    # EMA formula gives back the codebook, restarted counts equal the threshold.
    correction = 1 - 0.9 ** vq.ema_steps.item()
    count = vq.ema_count_hidden / correction
    assert torch.allclose(count[2:], torch.ones(6))
    total = count.sum()
    smoothed = (count + vq.eps) / (total + 8 * vq.eps) * total
    assert torch.allclose(vq.ema_sum_hidden / correction / smoothed[:, None], vq.codebook, atol=1e-5)
    x2 = torch.randn(4, 16, 4)
    _, _, codes2, _ = vq(x2)
    assert len(codes2.unique()) > 2                         # the restarted codes attract data


def test_restart_never_happens_in_eval_mode():
    vq = far_codebook().eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(2, 8, 4))
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_restart_reload_continues_exactly():
    torch.manual_seed(1)
    vq = far_codebook()
    for _ in range(3):
        vq(torch.randn(2, 8, 4))
    buffer = io.BytesIO()
    torch.save(vq.state_dict(), buffer)
    buffer.seek(0)
    rng = torch.get_rng_state()
    x = torch.randn(2, 8, 4)
    expected = [vq(x)[2] for _ in range(2)]
    fresh = EMAVectorQuantizer(8, 4, decay=0.9, dead_code_threshold=1.0).train()
    fresh.load_state_dict(torch.load(buffer))
    torch.set_rng_state(rng)
    torch.randn(2, 8, 4)
    assert all(torch.equal(fresh(x)[2], codes) for codes in expected)
    for k, v in vq.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
