"""MusER VQ-VAE: variants, losses against plain loops, recurrent decoding, generation."""
import dataclasses
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.config import PRESETS, MusERConfig, PriorConfig, apply_preset
from models.generation import RecurrentDecoder
from models.losses import (element_regularization, element_regularization_reference,
                           reconstruction_losses, value_tables)
from models.muser import MusER
from tests.conftest import shared_path
from tests.stepping import ModuleStepDecoder

VOCAB = [56, 135, 18, 4, 87, 18, 42, 5]
TYPE_IDS = {"EOS": 0, "Emotion": 1, "Metrical": 2, "Note": 3}
VARIANTS = [("TRANS", "CA", "GE"), ("MEAN", "CA", "GE"), ("TRANS", "CONCAT", "GE"),
            ("MEAN", "CONCAT", "GE"), ("TRANS", "CA", "G"), ("TRANS", "CONCAT", "G"),
            ("TRANS", "NONE", "E"), ("MEAN", "NONE", "E")]


def slice_of(config, element: int) -> slice:
    """Latent dimensions of element `element` (its word column)."""
    return slice(element * config.slice_dim, (element + 1) * config.slice_dim)


def tiny(reduction="TRANS", conditioning="CA", decoding="GE", **kw):
    config = MusERConfig(VOCAB, reduction=reduction, conditioning=conditioning,
                         decoding=decoding, type_ids=TYPE_IDS)
    return dataclasses.replace(apply_preset(config, "tiny"), **kw)


def random_words(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (batch, length), generator=g) for v in VOCAB], -1)


def batch_for(config, batch=3, seed=0):
    y = random_words(batch, config.max_len, seed)
    x = torch.cat([random_words(batch, 1, seed + 1), y[:, :-1]], dim=1)
    seq_len = torch.tensor([config.max_len, 20, 5, 33][:batch])
    mask = (torch.arange(config.max_len) < seq_len[:, None]).float()
    return x, y, mask, seq_len


# -- configuration ---------------------------------------------------------------------

def test_names_follow_switches():
    assert MusERConfig(VOCAB).name == "MusER_TRANS_CA_GE"
    assert MusERConfig(VOCAB, reduction="MEAN", conditioning="CONCAT").name == "MusER_MEAN_CONCAT_GE"
    assert MusERConfig(VOCAB, conditioning="NONE", decoding="E").name == "MusER_TRANS_NONE_E"
    assert MusERConfig(VOCAB, decoding="G", reg_weight=0).name == "VQVAE_TRANS_CA_G"


def test_invalid_switches_are_rejected():
    for bad in (dict(conditioning="NONE", decoding="GE"), dict(conditioning="CA", decoding="E"),
                dict(reduction="MAX"), dict(latent_dim=100), dict(vocab_sizes=[3] * 7)):
        with pytest.raises(ValueError):
            MusERConfig(**{"vocab_sizes": VOCAB, **bad})


def test_config_round_trip_and_presets():
    config = tiny(type_ids=TYPE_IDS, value_tables=None)
    assert MusERConfig.from_dict(config.to_dict()) == config
    assert MusERConfig(VOCAB).max_len == 1024 and MusERConfig(VOCAB).latent_dim == 112
    assert apply_preset(MusERConfig(VOCAB), "paper") == MusERConfig(VOCAB)
    prior = apply_preset(PriorConfig(10), "tiny")
    assert prior.d_model == PRESETS["tiny"]["prior"]["d_model"]
    assert PriorConfig.from_dict(prior.to_dict()) == prior
    with pytest.raises(ValueError):
        apply_preset(prior, "huge")
    with pytest.raises(ValueError):
        MusERConfig.from_dict({**config.to_dict(), "surprise": 1})


# -- every variant trains --------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_forward_backward(variant):
    torch.manual_seed(0)
    config = tiny(*variant)
    model = MusER(config).train()
    out = model(*batch_for(config))
    assert out["element_losses"].shape == (7,) and out["element_acc"].shape == (7,)
    assert out["codes"].shape == (3, config.max_len)
    expected = out["recon"] + out["vq"] + config.reg_weight * out["reg"]
    assert torch.allclose(out["loss"], expected)
    assert torch.allclose(out["recon"], out["element_losses"].mean())
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.encoder_input.weight.grad.abs().sum() > 0     # straight-through reaches the encoder
    if variant[0] == "TRANS":
        assert model.dr.layers[0].linear1.weight.grad.abs().sum() > 0


def test_plain_vqvae_baseline_has_no_regulariser():
    config = tiny(reg_weight=0.0)
    model = MusER(config)
    assert config.name == "VQVAE_TRANS_CA_GE" and model.dr is None
    out = model(*batch_for(config))
    assert out["reg"].item() == 0.0
    assert torch.allclose(out["loss"], out["recon"] + out["vq"])


def test_trans_reduction_requires_full_length():
    config = tiny()
    x, y, mask, seq_len = batch_for(config)
    with pytest.raises(ValueError, match="max_len"):
        MusER(config)(x[:, :10], y[:, :10], mask[:, :10], seq_len)


# -- losses against plain loops -----------------------------------------------------------

def test_regularization_equals_double_loop_over_pairs():
    g = torch.Generator().manual_seed(0)
    reduced = torch.randn(7, 5, 9, generator=g)
    targets = torch.randint(0, 4, (7, 5, 9), generator=g).float()
    expected = element_regularization_reference(reduced, targets)
    assert torch.allclose(element_regularization(reduced, targets), expected, atol=1e-6)


def test_reconstruction_loss_equals_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    batch, length = 4, 12
    y = random_words(batch, length)
    log_probs = [torch.randn(batch, length, v, generator=g).log_softmax(-1) for v in VOCAB[:7]]
    seq_len = torch.tensor([12, 7, 1, 5])
    mask = (torch.arange(length) < seq_len[:, None]).float()
    losses, accs = reconstruction_losses(log_probs, y, mask, seq_len)
    for k in range(7):
        per_sample = [F.nll_loss(log_probs[k][b, : seq_len[b]], y[b, : seq_len[b], k])
                      for b in range(batch)]
        assert torch.allclose(losses[k], torch.stack(per_sample).mean(), atol=1e-6)
        correct = sum((log_probs[k][b, : seq_len[b]].argmax(-1) == y[b, : seq_len[b], k]).sum()
                      for b in range(batch))
        assert torch.allclose(accs[k], correct / seq_len.sum())


def test_forward_uses_element_losses_of_its_log_probs():
    torch.manual_seed(0)
    config = tiny()
    model = MusER(config).eval()
    x, y, mask, seq_len = batch_for(config)
    out = model(x, y, mask, seq_len)
    manual = []
    for k in range(7):
        manual.append(torch.stack([F.nll_loss(out["log_probs"][k][b, : seq_len[b]],
                                              y[b, : seq_len[b], k]) for b in range(3)]).mean())
    assert torch.allclose(out["element_losses"], torch.stack(manual), atol=1e-6)


def test_value_targets_order_by_musical_value():
    word2event = {
        "tempo": {0: 0, 1: "CONTI", 2: "Tempo_120", 3: "Tempo_64"},
        "chord": {0: 0, 1: "A_m", 2: "C_M"},
        "bar-beat": {0: 0, 1: "Bar", 2: "Beat_0", 3: "Beat_10", 4: "Beat_2"},
        "type": {0: "EOS", 1: "Emotion", 2: "Metrical", 3: "Note"},
        "pitch": {0: 0, 1: "Note_Pitch_100", 2: "Note_Pitch_21", 3: "Note_Pitch_9"},
        "duration": {0: 0, 1: "Note_Duration_0", 2: "Note_Duration_1080", 3: "Note_Duration_120"},
        "velocity": {0: 0, 1: "Note_Velocity_100", 2: "Note_Velocity_40"},
        "emotion": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
    }
    tables = value_tables(word2event)
    assert tables[0] == [-2.0, -1.0, 120.0, 64.0]
    assert tables[1] == [0.0, 1.0, 2.0]
    assert tables[2] == [-2.0, -1.0, 0.0, 10.0, 2.0]
    assert tables[4] == [-1.0, 100.0, 21.0, 9.0]
    assert tables[5] == [-1.0, 0.0, 1080.0, 120.0]
    vocab = [len(word2event[f]) for f in word2event]
    config = dataclasses.replace(tiny(), vocab_sizes=vocab, reg_target="value",
                                 value_tables=tables)
    model = MusER(config)
    y = torch.zeros(2, 1, 8, dtype=torch.long)
    y[0, 0, 4], y[1, 0, 4] = 1, 2                      # pitch 100 vs 21: index order disagrees
    targets = model.regularization_targets(y)
    assert targets[4, 0, 0] == 100.0 and targets[4, 1, 0] == 21.0


def test_value_tables_of_reference_dictionary():
    path = shared_path("reference_cp", "dictionary.pkl")
    _, word2event = pickle.load(open(path, "rb"))
    tables = value_tables(word2event)
    pitch_names = word2event["pitch"]
    numeric = {i: v for i, v in enumerate(tables[4]) if v >= 0}
    assert all(int(pitch_names[i].rsplit("_", 1)[1]) == v for i, v in numeric.items())


# -- wiring ------------------------------------------------------------------------------

def test_dr_reduces_each_slice_independently():
    torch.manual_seed(0)
    config = tiny()
    model = MusER(config).eval()
    latent = torch.randn(2, config.max_len, config.latent_dim)
    reduced = model.reduce_latent(latent)
    changed = latent.clone()
    changed[..., slice_of(config, 4)] += 1.0
    reduced2 = model.reduce_latent(changed)
    for k in range(7):
        assert torch.allclose(reduced[k], reduced2[k]) == (k != 4)
    # Reference: one element at a time, as the authors write it.
    s = latent[..., slice_of(config, 2)].transpose(1, 2)
    alone = model.dr(model.dr_position(s))[:, 0]
    assert torch.allclose(reduced[2], alone, atol=1e-5)
    mean = MusER(tiny("MEAN")).reduce_latent(latent)
    assert torch.allclose(mean[6], latent[..., slice_of(config, 6)].mean(-1))


def test_element_decoders_read_only_their_slice_without_global_decoder():
    torch.manual_seed(0)
    config = tiny("TRANS", "NONE", "E")
    model = MusER(config).eval()
    x, y, _, _ = batch_for(config)
    latent = torch.randn(3, config.max_len, config.latent_dim)
    base = model.element_log_probs(x, y, latent)
    changed = latent.clone()
    changed[..., slice_of(config, 5)] += 1.0
    moved = model.element_log_probs(x, y, changed)
    for k in range(7):
        assert torch.allclose(base[k], moved[k]) == (k != 5)


def test_heads_condition_on_the_given_next_type():
    torch.manual_seed(0)
    config = tiny()
    model = MusER(config).eval()
    x, y, _, _ = batch_for(config)
    latent = torch.randn(3, config.max_len, config.latent_dim)
    base = model.element_log_probs(x, y, latent)
    y2 = y.clone()
    y2[:, 10, 3] = (y[:, 10, 3] + 1) % 4
    moved = model.element_log_probs(x, y2, latent)
    assert torch.equal(base[3], moved[3])
    for k in (0, 1, 2, 4, 5, 6):
        assert torch.equal(base[k][:, :10], moved[k][:, :10])
        assert not torch.allclose(base[k][:, 10], moved[k][:, 10])
        assert torch.equal(base[k][:, 11:], moved[k][:, 11:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoding_is_causal(variant):
    torch.manual_seed(0)
    config = tiny(*variant)
    model = MusER(config).eval()
    x, y, _, _ = batch_for(config)
    latent = torch.randn(3, config.max_len, config.latent_dim)
    changed = x.clone()
    changed[:, 30:] = random_words(3, config.max_len - 30, seed=9)
    a, _ = model.decode(x, latent)
    b, _ = model.decode(changed, latent)
    assert torch.allclose(a[:, :30], b[:, :30], atol=1e-6)
    assert not torch.allclose(a[:, 30:], b[:, 30:])


@pytest.mark.parametrize("packed", [False, True], ids=["module-steps", "packed"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_recurrent_steps_equal_parallel_decoding(variant, packed):
    check_recurrent_equals_parallel(tiny(*variant, max_len=72), packed)


@pytest.mark.parametrize("packed", [False, True], ids=["module-steps", "packed"])
def test_recurrent_steps_equal_parallel_with_softmax_attention(packed):
    check_recurrent_equals_parallel(tiny(max_len=72, attention="softmax",
                                         decoder_attention="causal-softmax"), packed)


def check_recurrent_equals_parallel(config, packed):
    """Global decoder, every element decoder and every head, step by step over 72 steps."""
    torch.manual_seed(0)
    model = MusER(config).double().eval()
    x, y, _, _ = batch_for(config)
    latent = torch.randn(3, config.max_len, config.latent_dim, dtype=torch.float64)
    global_parallel = model.global_decode(x, latent)
    states, z = model.decode(x, latent)
    log_probs = model.element_log_probs(x, y, latent)
    decoder = RecurrentDecoder(model, latent) if packed else ModuleStepDecoder(model, latent)
    for t in range(config.max_len):
        step_states, step_z = decoder.step(x[:, t], t)
        assert torch.allclose(decoder.global_output, global_parallel[:, t], atol=1e-9), t
        assert torch.allclose(step_states, states[:, t], atol=1e-9), t   # each element decoder
        logits = model.conditioned_logits(step_states, step_z, y[:, t, 3])
        logits[3] = model.type_logits(step_states, step_z)
        for k in range(7):
            assert torch.allclose(logits[k].log_softmax(-1), log_probs[k][:, t], atol=1e-9)


# -- encoding and generation --------------------------------------------------------------

def test_encode_never_moves_codebook_and_matches_codes():
    torch.manual_seed(0)
    config = tiny()
    model = MusER(config).train()
    _, y, _, _ = batch_for(config)
    codebook = model.quantizer.codebook.clone()
    latent, codes = model.encode(y)
    assert torch.equal(model.quantizer.codebook, codebook)
    assert torch.equal(model.latent_from_codes(codes), latent)
    model.eval()
    latent, codes = model.encode(y)
    assert torch.equal(model(*batch_for(config))["codes"], codes)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_recurrent_equals_full_recompute(variant):
    torch.manual_seed(0)
    config = tiny(*variant)
    model = MusER(config).double()
    with torch.no_grad():
        model.heads[3].bias[0] -= 2.0          # EOS rarer: pieces of varied length
    latent = model.latent_from_codes(torch.randint(0, config.codebook_size, (4, config.max_len)))
    emotion = torch.tensor([1, 2, 3, 4])
    runs = [model.generate(latent, emotion, generator=torch.Generator().manual_seed(5),
                           recurrent=recurrent, recompute=recompute)
            for recurrent, recompute in ((True, "window"), (False, "window"), (False, "prefix"))]
    assert len(runs[0]) == 4
    for a, b, c in zip(*runs):
        assert a.shape == b.shape == c.shape and np.array_equal(a, b) and np.array_equal(a, c)
    for piece, q in zip(runs[0], emotion.tolist()):
        assert piece[0, 3] == TYPE_IDS["Emotion"] and piece[0, 7] == q
        assert (piece[1:, 7] == 0).all()
        eos = np.nonzero(piece[1:, 3] == TYPE_IDS["EOS"])[0]
        assert len(piece) == config.max_len or (len(eos) == 1 and eos[0] == len(piece) - 2)
    assert model.training                     # generate restores the mode


def test_generate_stops_at_eos_and_max_steps():
    torch.manual_seed(0)
    config = tiny()
    model = MusER(config)
    latent = model.latent_from_codes(torch.randint(0, config.codebook_size, (3, config.max_len)))
    with torch.no_grad():
        model.heads[3].bias.copy_(torch.tensor([1e4, 0.0, 0.0, 0.0]))     # always EOS
    pieces = model.generate(latent, [2, 2, 2], generator=torch.Generator().manual_seed(0))
    assert [p.shape for p in pieces] == [(2, 8)] * 3
    assert all(p[1, 3] == TYPE_IDS["EOS"] for p in pieces)
    with torch.no_grad():
        model.heads[3].bias.copy_(torch.tensor([-1e4, 0.0, 0.0, 0.0]))    # never EOS
    pieces = model.generate(latent, [1, 3, 4], max_steps=10)
    assert [p.shape for p in pieces] == [(11, 8)] * 3


def test_generation_reproducible_with_seed():
    config = tiny()
    torch.manual_seed(0)
    model = MusER(config)
    latent = model.latent_from_codes(torch.randint(0, config.codebook_size, (2, config.max_len)))
    a = model.generate(latent, [1, 4], generator=torch.Generator().manual_seed(3), max_steps=20)
    b = model.generate(latent, [1, 4], generator=torch.Generator().manual_seed(3), max_steps=20)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_forward_backward_under_bf16_autocast():
    torch.manual_seed(0)
    config = tiny()
    model = MusER(config).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*batch_for(config))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_every_encoder_sees_the_whole_piece():
    """DESIGN 4: the encoder is non-causal in every variant, CONCAT included (the authors'
    MusER_TRANS_CONCAT_GE): changing later steps changes earlier latents."""
    torch.manual_seed(0)
    for conditioning in ("CONCAT", "CA"):
        config = apply_preset(MusERConfig(vocab_sizes=[3, 9, 18, 4, 12, 18, 10, 5],
                                          conditioning=conditioning), "tiny")
        model = MusER(config).eval()
        y = torch.zeros(1, config.max_len, 8, dtype=torch.long)
        later = y.clone()
        later[0, 40:, 4] = 7  # change only steps 40..
        with torch.no_grad():
            before, after = model._encoder_output(y), model._encoder_output(later)
        assert not torch.allclose(before[0, :40], after[0, :40]), conditioning
        assert all(layer.attention.kind == "linear" for layer in model.encoder.layers)


# -- variants as the authors built them ------------------------------------------------

def test_global_decoder_depth_follows_the_variant_unless_set():
    """The authors' MusER_TRANS_CA_G has 8 global decoder layers, their GE models 4; a set
    dec_layers (flag or preset) wins, and an unset one follows a later variant switch."""
    assert len(MusER(MusERConfig(VOCAB, decoding="G")).global_decoder.layers) == 8
    assert len(MusER(MusERConfig(VOCAB)).global_decoder.layers) == 4
    assert MusERConfig(VOCAB, decoding="G", dec_layers=3).global_layers == 3
    assert dataclasses.replace(MusERConfig(VOCAB), decoding="G").global_layers == 8
    config = MusERConfig(VOCAB, decoding="G")
    assert MusERConfig.from_dict(config.to_dict()).global_layers == 8
    assert tiny(decoding="G").global_layers == PRESETS["tiny"]["muser"]["dec_layers"]
    with pytest.raises(ValueError, match="dec_layers"):
        MusERConfig(VOCAB, dec_layers=0)


def test_element_decoders_start_from_identical_weights():
    """The authors deep-copy one element decoder seven times."""
    torch.manual_seed(0)
    decoders = MusER(tiny()).element_decoders
    first = decoders[0].state_dict()
    assert len(decoders) == 7
    for decoder in decoders[1:]:
        assert all(torch.equal(first[k], v) for k, v in decoder.state_dict().items())
        assert all(p is not q for p, q in zip(decoders[0].parameters(), decoder.parameters()))
