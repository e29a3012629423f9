"""models.quantizer.ProductQuantizer: one codebook per slice, nothing mixing the slices."""
import torch

from models.quantizer import EMAVectorQuantizer, ProductQuantizer


def quantizer(**kw):
    torch.manual_seed(0)
    return ProductQuantizer(num_codes=8, slices=3, slice_dim=4, **kw)


def test_each_slice_is_quantised_only_by_its_own_codebook():
    q = quantizer().eval()
    x = torch.randn(5, 7, 12)
    _, _, codes, _ = q(x)
    assert codes.shape == (5, 7, 3)
    changed = x.clone()
    changed[..., 4:8] = torch.randn(5, 7, 4) * 3          # slice 1 only
    _, _, again, _ = q(changed)
    assert torch.equal(again[..., 0], codes[..., 0]) and torch.equal(again[..., 2], codes[..., 2])
    assert not torch.equal(again[..., 1], codes[..., 1])
    for k, book in enumerate(q.books):                      # code k is book k's nearest code
        assert torch.equal(codes[..., k], book.code_indices(x[..., 4 * k:4 * k + 4].reshape(-1, 4)).view(5, 7))


def test_lookup_inverts_codes_and_the_loss_equals_a_joint_commitment_on_the_same_vectors():
    q = quantizer().eval()
    x = torch.randn(2, 6, 12)
    quantized, loss, codes, perplexity = q(x)
    torch.testing.assert_close(q.lookup(codes), quantized)      # straight-through adds x - x
    torch.testing.assert_close(loss, 0.25 * torch.nn.functional.mse_loss(x, quantized))
    assert perplexity.shape == () and q.codebook.shape == (3, 8, 4) and q.slots == 24
    assert q.slot_indices(torch.tensor([[1, 1, 7]])).tolist() == [[1, 9, 23]]
    assert torch.equal(q.code_indices(x.reshape(-1, 12)), codes.reshape(-1, 3))


def test_gradient_passes_straight_through_every_slice():
    q = quantizer().train()
    x = torch.randn(4, 5, 12, requires_grad=True)
    quantized, loss, _, _ = q(x)
    (quantized.sum() + loss).backward()
    assert x.grad is not None and (x.grad.abs().sum(dim=(0, 1)) > 0).all()


def test_dead_codes_restart_per_codebook():
    torch.manual_seed(1)
    q = ProductQuantizer(num_codes=16, slices=2, slice_dim=3, dead_code_threshold=1.0).train()
    # Slice 0 sees spread-out inputs, slice 1 a single point: slice 1's codes die and restart
    # onto that point, slice 0 keeps most of its codes alive.
    for _ in range(30):
        x = torch.cat([torch.randn(64, 3) * 3, torch.full((64, 3), 5.0)], -1)
        q(x)
    _, _, codes, _ = q.eval()(torch.cat([torch.randn(256, 3) * 3, torch.full((256, 3), 5.0)], -1))
    assert len(torch.unique(codes[:, 0])) > 4
    restarted = (q.books[1].codebook - 5.0).abs().max(dim=1).values < 1e-4
    assert restarted.sum() > 8                                # dead codes of book 1 sit on its data
    assert not ((q.books[0].codebook - 5.0).abs().max(dim=1).values < 1e-4).any()


def test_a_one_slice_product_is_the_joint_quantiser():
    torch.manual_seed(2)
    joint = EMAVectorQuantizer(8, 4).train()
    torch.manual_seed(2)
    product = ProductQuantizer(8, 1, 4).train()
    for _ in range(3):
        x = torch.randn(32, 4)
        a, b = joint(x), product(x)
        torch.testing.assert_close(a[0], b[0])
        assert torch.equal(a[2], b[2][..., 0])
    torch.testing.assert_close(joint.codebook, product.codebook[0])


# ---------------------------------------------------------------------------------------
# MusER with one codebook per slice
# ---------------------------------------------------------------------------------------
def test_muser_with_product_codebooks_encodes_seven_codes_per_step():
    from models.muser import MusER
    from tests.test_muser import batch_for, tiny

    config = tiny(quantizer="product", slice_codebook_size=8, reg_weight=0.1)
    assert config.name.endswith("_PQ8") and config.code_slots == 7 * 8      # named by its size
    torch.manual_seed(0)
    model = MusER(config)
    batch = batch_for(config)
    out = model(*batch)
    out["loss"].backward()
    assert out["codes"].shape == (3, config.max_len, 7) and out["codes"].max() < 8
    assert out["code_slots"].max() < config.code_slots
    model.eval()
    latent, codes = model.encode(batch[1])
    assert codes.shape == (3, config.max_len, 7)
    torch.testing.assert_close(model.latent_from_codes(codes), latent)
    assert model.encoder_input.weight.grad is not None

# The product model through the scripts (training, VQ_explore, the prior, generation and
# element transfer): tests/test_product_prior.py.
