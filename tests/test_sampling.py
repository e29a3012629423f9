"""Temperature + nucleus sampling: support, frequencies, determinism, batching."""
import torch

from models.sampling import FieldSampling, SamplingParams, nucleus_mask, sample_tokens


def draw(logits_row, n, temperature=1.0, top_p=1.0, seed=0):
    logits = torch.as_tensor(logits_row, dtype=torch.float32).repeat(n, 1)
    g = torch.Generator().manual_seed(seed)
    return sample_tokens(logits, temperature, top_p, g)


def frequencies(tokens, vocab):
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


def test_nucleus_is_smallest_set_reaching_top_p():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]], dtype=torch.float64)
    assert nucleus_mask(probs, 0.45).tolist() == [[False, True, False, False]]
    assert nucleus_mask(probs, 0.75).tolist() == [[False, True, False, True]]
    assert nucleus_mask(probs, 0.85).tolist() == [[True, True, False, True]]
    assert nucleus_mask(probs, 0.99).tolist() == [[True, True, True, True]]
    assert nucleus_mask(probs, 1e-9).tolist() == [[False, True, False, False]]


def test_top_p_samples_only_inside_nucleus_with_renormalised_frequencies():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    tokens = draw(probs.log(), 40000, top_p=0.75)
    freq = frequencies(tokens, 4)
    assert freq[0] == 0 and freq[2] == 0
    assert abs(freq[1] - 0.5 / 0.8) < 0.01 and abs(freq[3] - 0.3 / 0.8) < 0.01


def test_temperature_scales_logits():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    for temperature in (0.5, 2.0, 5.0):
        freq = frequencies(draw(logits, 40000, temperature=temperature), 4)
        expected = torch.softmax(logits.double() / temperature, -1)
        assert torch.allclose(freq, expected, atol=0.012), temperature
    assert torch.equal(draw(logits, 5, temperature=0.0), torch.zeros(5, dtype=torch.long))


def test_same_seed_same_tokens_different_seed_different_tokens():
    logits = torch.randn(64, 30, generator=torch.Generator().manual_seed(3))
    a = sample_tokens(logits, 1.3, 0.9, torch.Generator().manual_seed(7))
    b = sample_tokens(logits, 1.3, 0.9, torch.Generator().manual_seed(7))
    c = sample_tokens(logits, 1.3, 0.9, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rows_are_sampled_from_their_own_distribution():
    logits = torch.full((5, 6), -1e4)
    targets = torch.tensor([4, 0, 5, 2, 2])
    logits[torch.arange(5), targets] = 0.0
    for top_p in (1.0, 0.9):
        assert torch.equal(sample_tokens(logits, 1.0, top_p, torch.Generator().manual_seed(0)),
                           targets)


def test_zero_probability_tokens_are_never_drawn():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).repeat(2000, 1)
    tokens = sample_tokens(logits, 1.0, 1.0, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 2}


def test_paper_defaults():
    s = SamplingParams()
    assert s.type == FieldSampling(1.0, 0.9)
    assert s.tempo == FieldSampling(1.2, 0.9)
    assert s.bar_beat == FieldSampling(1.2, 1.0)
    assert s.chord == FieldSampling(1.0, 0.99)
    assert s.pitch == FieldSampling(1.0, 0.9)
    assert s.duration == FieldSampling(2.0, 0.9)
    assert s.velocity == FieldSampling(5.0, 1.0)
    assert [s.for_element(k) for k in range(7)] == [s.tempo, s.chord, s.bar_beat, s.type,
                                                     s.pitch, s.duration, s.velocity]
