"""The pieces that make step-by-step generation fast compute what the modules compute."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from models.config import MusERConfig, apply_preset
from models.generation import GenerationHeads, _fused_input_table
from models.muser import MusER
from music.elements import CONDITIONED
from models.transformer import PackedLinear
from models.sampling import FieldSampling, SamplingParams, row_settings, sample_tokens

VOCAB = [56, 135, 18, 4, 87, 18, 42, 5]
TYPE_IDS = {"EOS": 0, "Emotion": 1, "Metrical": 2, "Note": 3}


def tiny_model(**kw):
    config = apply_preset(MusERConfig(VOCAB, type_ids=TYPE_IDS), "tiny")
    torch.manual_seed(0)
    return MusER(dataclasses.replace(config, **kw)).double().eval()


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_packed_linear_equals_each_linear_in_both_layouts(groups, rows):
    torch.manual_seed(0)
    linears = [torch.nn.Linear(12, 10).double() for _ in range(groups)]
    packed = PackedLinear.from_linears(linears)
    x = torch.randn(groups, rows, 12, dtype=torch.float64)
    out = packed(x)
    assert out.shape == (groups, rows, 10)
    for g, linear in enumerate(linears):
        assert torch.allclose(out[g], linear(x[g]), atol=1e-12)


def test_fused_input_table_equals_embeddings_and_projection():
    model = tiny_model()
    table, offsets = _fused_input_table(model)
    g = torch.Generator().manual_seed(1)
    words = torch.stack([torch.randint(0, v, (9,), generator=g) for v in VOCAB], -1)
    expected = model.decoder_input(model.embeddings(words, range(8)))
    fused = table[words + offsets].sum(1) + model.decoder_input.bias
    assert torch.allclose(fused, expected, atol=1e-10)


@pytest.mark.parametrize("decoding,conditioning", [("GE", "CA"), ("G", "CA"), ("E", "NONE")])
@pytest.mark.parametrize("batch", [1, 4])
def test_generation_heads_draw_what_the_model_heads_give(decoding, conditioning, batch):
    """GenerationHeads' logits equal MusER.conditioned_logits, and its single per-row
    draw equals one sample_tokens call per field with the same generator."""
    model = tiny_model(decoding=decoding, conditioning=conditioning)
    sampling = SamplingParams()
    heads = GenerationHeads(model, sampling)
    torch.manual_seed(2)
    d = model.config.dec_d_model
    states = torch.randn(batch, d, dtype=torch.float64) if decoding == "G" else \
        torch.randn(batch, 7, d, dtype=torch.float64)
    z = torch.randn(batch, 7, d, dtype=torch.float64)
    next_type = torch.randint(0, 4, (batch,))
    reference = model.conditioned_logits(states, z, next_type)
    for seed in range(20):
        fast = heads.sample_conditioned(states, z, next_type, torch.Generator().manual_seed(seed))
        generator = torch.Generator().manual_seed(seed)
        slow = torch.stack([sample_tokens(reference[k], sampling.for_element(k).temperature,
                                          sampling.for_element(k).top_p, generator)
                            for k in CONDITIONED], 1)
        assert torch.equal(fast, slow)


def test_per_row_sampling_equals_one_call_per_field():
    torch.manual_seed(3)
    settings = [FieldSampling(1.2, 0.9), FieldSampling(1.0, 1.0), FieldSampling(5.0, 0.5)]
    widths = [7, 30, 12]
    logits = [torch.randn(6, w) * 3 for w in widths]
    padded = torch.cat([F.pad(l, (0, 30 - l.shape[1]), value=float("-inf")) for l in logits])
    for seed in range(50):
        generator = torch.Generator().manual_seed(seed)
        one_by_one = torch.cat([sample_tokens(l, fs.temperature, fs.top_p, generator)
                                for l, fs in zip(logits, settings)])
        together = sample_tokens(padded, *row_settings(settings, 6),
                                 torch.Generator().manual_seed(seed))
        assert torch.equal(one_by_one, together)


def test_row_settings_reject_greedy_and_bad_values():
    with pytest.raises(ValueError):
        row_settings([FieldSampling(0.0, 0.9)], 2)
    with pytest.raises(ValueError):
        row_settings([FieldSampling(1.0, 0.0)], 2)


def test_greedy_fields_still_generate():
    """A temperature of 0 takes the one-call-per-field path; the words stay valid."""
    model = tiny_model()
    latent = model.latent_from_codes(torch.randint(0, model.config.codebook_size, (2, 64)))
    sampling = SamplingParams(pitch=FieldSampling(0.0, 1.0))
    pieces = model.generate(latent, [1, 2], sampling, torch.Generator().manual_seed(0),
                            max_steps=12)
    for piece in pieces:
        assert all((piece[:, k] < VOCAB[k]).all() for k in range(8))
