"""The pieces that make step-by-step generation fast compute what the modules compute."""
import dataclasses
import time

import pytest
import torch
import torch.nn.functional as F

from models.config import MusERConfig, apply_preset
import copy

import numpy as np

from models.generation import GenerationHeads, _fused_input_table
from models.packed import GENERATION_DTYPES, cast_for_generation
from tests.stepping import prior_teacher_forced_distributions as prior_teacher_forced
from tests.stepping import teacher_forced_distributions
from music.elements import TYPE_FIELD
from models.muser import MusER
from music.elements import CONDITIONED
from models import packed as packed_module
from models.packed import PackedLinear
from models.sampling import FieldSampling, SamplingParams, row_settings, sample_tokens

VOCAB = [56, 135, 18, 4, 87, 18, 42, 5]
TYPE_IDS = {"EOS": 0, "Emotion": 1, "Metrical": 2, "Note": 3}


def tiny_model(**kw):
    config = apply_preset(MusERConfig(VOCAB, type_ids=TYPE_IDS), "tiny")
    torch.manual_seed(0)
    return MusER(dataclasses.replace(config, **kw)).double().eval()


@pytest.mark.parametrize("layout", ["rows", "cols", ""])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_packed_linear_equals_each_linear_in_every_layout(groups, rows, layout, monkeypatch):
    """Fixed layouts and the timed choice ('') all compute each Linear."""
    monkeypatch.setenv(packed_module.ONE_ROW_LAYOUT_ENV, layout)
    torch.manual_seed(0)
    linears = [torch.nn.Linear(12, 10).double() for _ in range(groups)]
    packed = PackedLinear.from_linears(linears)
    x = torch.randn(groups, rows, 12, dtype=torch.float64)
    out = packed(x)
    assert out.shape == (groups, rows, 10)
    for g, linear in enumerate(linears):
        assert torch.allclose(out[g], linear(x[g]), atol=1e-12)


def test_one_row_layout_is_the_faster_one_and_is_timed_once(monkeypatch):
    """The timing keeps 'cols' only when it is clearly faster, caches the choice per shape,
    dtype and thread count, and the environment variable overrides it."""
    monkeypatch.delenv(packed_module.ONE_ROW_LAYOUT_ENV, raising=False)
    monkeypatch.setattr(packed_module, "_one_row_layout_cache", {})
    calls = []
    slow_rows = PackedLinear._rows

    def rows_made_slow(self, x):
        calls.append(1)
        time.sleep(0.002)
        return slow_rows(self, x)
    monkeypatch.setattr(PackedLinear, "_rows", rows_made_slow)
    torch.manual_seed(0)
    packed = PackedLinear.from_linears([torch.nn.Linear(16, 8) for _ in range(2)])
    x = torch.randn(2, 1, 16)
    expected = torch.stack([torch.nn.functional.linear(x[g], packed.weight_cols[g].T,
                                                       packed.bias[g, 0]) for g in range(2)])
    assert torch.allclose(packed(x), expected, atol=1e-6)
    assert packed.one_row_layout() == "cols"
    timed = len(calls)
    assert timed > 0
    other = PackedLinear.from_linears([torch.nn.Linear(16, 8) for _ in range(2)])
    other(x)
    assert len(calls) == timed, "the same shape was timed twice"
    assert list(packed_module.one_row_layout_choices().values()) == ["cols"]
    monkeypatch.setenv(packed_module.ONE_ROW_LAYOUT_ENV, "rows")
    assert PackedLinear.from_linears([torch.nn.Linear(16, 8)]).one_row_layout() == "rows"
    monkeypatch.setenv(packed_module.ONE_ROW_LAYOUT_ENV, "diagonal")
    with pytest.raises(ValueError, match="MUSER_ONE_ROW_LAYOUT"):
        PackedLinear.from_linears([torch.nn.Linear(16, 8)]).one_row_layout()


def test_a_near_tie_keeps_rows(monkeypatch):
    """Equal speeds keep 'rows' (the margin), so the choice does not flip from run to run."""
    monkeypatch.delenv(packed_module.ONE_ROW_LAYOUT_ENV, raising=False)
    packed = PackedLinear.from_linears([torch.nn.Linear(16, 8)])
    monkeypatch.setattr(PackedLinear, "_rows", lambda self, x: time.sleep(0.001))
    monkeypatch.setattr(torch, "baddbmm", lambda *a: time.sleep(0.001))
    assert packed._time_layouts() == "rows"


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


# -- narrower weights for generation: do they sample what float32 samples? ----------------
#
# A tiny MusER and prior are trained for a few seconds on the shipped sample, so that their
# distributions are peaked like a trained model's (random weights give near-uniform ones,
# where rounding shows nothing). Then, teacher-forced on the real pieces through the
# recurrent generation path, each field's sampling distribution (softmax of logits over
# the field's temperature, as generation draws it) of a narrower copy is compared with
# float32's:
# - total variation (TV), the probability that one draw from each, coupled optimally,
#   differs. Mean TV <= 0.01 means that at most 1 token in 100 of a piece would differ,
#   and no histogram of a field (the metrics are such histograms and their spreads) can
#   move by more than 1 percentage point;
# - |log p16 - log p32| over the tokens float32 gives p >= 0.01: <= 0.1, a 10% relative
#   change at worst, where sampling noise of a 64-note histogram bin of p = 0.1 is 37%.
# Then pieces sampled from the two over 48 seeds must have the same mean metrics within
# 3 standard errors of their difference.

NARROW = ["bfloat16", "float16", "int8"]
TV_MEAN, TV_MAX, LOGP_MAX, P_MIN = 0.01, 0.1, 0.1, 0.01
STEPS = 30          # Adam steps of each tiny model: peaked distributions in a few seconds


@pytest.fixture(scope="module")
def trained(sample_npz):
    from music.data import load_cp_dataset
    from models.config import PriorConfig
    from models.prior import Prior

    data = load_cp_dataset(sample_npz)
    vocab = [int(max(data.x[..., k].max(), data.y[..., k].max())) + 1 for k in range(8)]
    vocab = [max(v, w) for v, w in zip(vocab, VOCAB)]
    config = apply_preset(MusERConfig(vocab, type_ids=TYPE_IDS), "tiny")
    length = config.max_len
    x, y = torch.from_numpy(data.x[:, :length]), torch.from_numpy(data.y[:, :length])
    mask = torch.from_numpy(data.mask[:, :length]).float()
    seq_len = torch.from_numpy(data.seq_len).clamp(max=length)
    torch.manual_seed(0)
    model = MusER(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(STEPS):
        loss = model(x, y, mask, seq_len)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        codes = model.encode(y)[1]
    prior = Prior(apply_preset(PriorConfig(n_codes=config.codebook_size), "tiny"))
    inp = torch.cat([prior.emotion_token(torch.from_numpy(data.emotion))[:, None], codes[:, :-1]], 1)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(STEPS):
        loss = F.nll_loss(prior(inp).transpose(1, 2), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior.eval()
    return {"model": model, "prior": prior, "x": x, "codes": codes, "prior_input": inp,
            "emotion": torch.from_numpy(data.emotion)}


def narrow_copy(module, dtype):
    return cast_for_generation(copy.deepcopy(module), dtype)


def decoder_distributions(model, x, y, codes):
    return teacher_forced_distributions(model, x, y, codes)


def prior_distributions(prior, inp):
    return {"code": prior_teacher_forced(prior, inp)}


def assert_close_distributions(reference, narrow, valid):
    for field, p in reference.items():
        q = narrow[field]
        tv = 0.5 * (p - q).abs().sum(-1)[valid]
        likely = (p >= P_MIN) & valid[..., None]
        logp = (p.log() - q.log()).abs()[likely]
        assert tv.mean() <= TV_MEAN and tv.max() <= TV_MAX and logp.max() <= LOGP_MAX, \
            (f"field {field}: mean TV {tv.mean():.4f}, max TV {tv.max():.4f}, "
             f"max |dlog p| {logp.max():.4f}")


@pytest.mark.parametrize("dtype", NARROW)
def test_narrow_decoder_gives_float32_distributions_on_real_pieces(trained, dtype):
    model, x, codes = trained["model"], trained["x"], trained["codes"]
    y = torch.cat([x[:, 1:], x[:, -1:]], 1)
    valid = torch.ones(x.shape[:2], dtype=torch.bool)
    reference = decoder_distributions(model, x, y, codes)
    narrow = decoder_distributions(narrow_copy(model, dtype), x, y, codes)
    assert_close_distributions(reference, narrow, valid)


@pytest.mark.parametrize("dtype", NARROW)
def test_narrow_prior_gives_float32_distributions_on_real_codes(trained, dtype):
    prior, inp = trained["prior"], trained["prior_input"]
    valid = torch.ones(inp.shape, dtype=torch.bool)
    assert_close_distributions(prior_distributions(prior, inp),
                               prior_distributions(narrow_copy(prior, dtype), inp), valid)


def piece_metrics(pieces):
    """Per piece: notes, mean and spread of pitch, distinct pitches, mean duration and
    velocity (dictionary indices; NaN without notes)."""
    rows = []
    for words in pieces:
        notes = words[words[:, TYPE_FIELD] == TYPE_IDS["Note"]]
        pitch, duration, velocity = (notes[:, k].astype(float) for k in (4, 5, 6))
        rows.append([len(notes)] + ([pitch.mean(), pitch.std(), len(set(pitch)), duration.mean(),
                                     velocity.mean()] if len(notes) else [np.nan] * 5))
    return np.array(rows)


def sample_pieces(model, prior, n, seed):
    generator = torch.Generator().manual_seed(seed)
    emotion = torch.arange(n) % 4 + 1
    codes = prior.generate(emotion, model.config.max_len, generator=generator)
    return model.generate(model.latent_from_codes(codes), emotion, generator=generator)


@pytest.mark.parametrize("dtype", NARROW)
def test_narrow_weights_sample_pieces_with_float32_metrics(trained, dtype):
    model, prior = trained["model"], trained["prior"]
    n = 48
    # Other seeds for each: the standard error below is that of two independent samples
    # (with one seed the draws are coupled, and most pieces come out identical).
    reference = piece_metrics(sample_pieces(model, prior, n, 5))
    narrow = piece_metrics(sample_pieces(narrow_copy(model, dtype), narrow_copy(prior, dtype), n, 6))
    for k in range(reference.shape[1]):
        a, b = reference[:, k], narrow[:, k]
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert abs(a.mean() - b.mean()) <= 3 * se + 1e-9, (k, a.mean(), b.mean(), se)


def test_generation_dtypes_are_checked():
    assert GENERATION_DTYPES[0] == "float32"
    model = tiny_model().float()
    with pytest.raises(ValueError):
        cast_for_generation(model, "float8")
    assert cast_for_generation(model, "float32").embeddings.tables[0].weight.dtype == torch.float32


def test_generate_script_keeps_float32_by_default():
    import generate
    parser = generate.build_parser()
    assert parser.parse_args([]).dtype == "float32"
    assert parser.parse_args(["--dtype", "bfloat16"]).dtype == "bfloat16"


# -- traced steps and the packed-stacks cache ----------------------------------------------

from models.prior import Prior  # noqa: E402
from models.config import PriorConfig  # noqa: E402


def eos_possible_model():
    model = tiny_model().float()
    with torch.no_grad():               # EOS likely: pieces of a batch end at different steps
        model.heads[3].bias[TYPE_IDS["EOS"]] += 3.0
    return model


def words_of(model, latent, emotion, seed, steps):
    return model.generate(latent, emotion, generator=torch.Generator().manual_seed(seed),
                          max_steps=steps)


@pytest.mark.parametrize("batch", [1, 4])
def test_traced_steps_give_the_eager_words_and_codes(batch, monkeypatch):
    """Generation through TracedStep (the default) samples exactly what eager steps sample,
    for the decoder (including a batch whose pieces end at different steps) and the prior."""
    model = eos_possible_model()
    torch.manual_seed(4)
    latent = torch.randn(batch, 24, model.config.latent_dim)
    emotion = torch.arange(batch) % 4 + 1
    prior = Prior(apply_preset(PriorConfig(n_codes=40), "tiny")).eval()
    traced = [words_of(model, latent, emotion, s, 20) for s in range(3)]
    traced_codes = prior.generate(emotion, 20, generator=torch.Generator().manual_seed(5))
    entry = packed_module._generation_packs[model]
    assert any(t is not None for _, traces in entry["stacks"].values() for t in traces.values()), \
        "no traced step was used"
    assert any(t is not None for t in packed_module._generation_packs[prior]["stacks"]["prior"][1].values())
    monkeypatch.setenv(packed_module.TRACE_STEPS_ENV, "0")
    packed_module._generation_packs.clear()
    eager = [words_of(model, latent, emotion, s, 20) for s in range(3)]
    eager_codes = prior.generate(emotion, 20, generator=torch.Generator().manual_seed(5))
    assert all(t is None for _, traces in packed_module._generation_packs[model]["stacks"].values()
               for t in traces.values())
    for a, b in zip(traced, eager):
        assert [w.tolist() for w in a] == [w.tolist() for w in b]
    if batch > 1:
        assert len({len(w) for run in eager for w in run}) > 1, "no piece ended early: test too weak"
    assert torch.equal(traced_codes, eager_codes)


def test_traced_step_outputs_equal_the_eager_step_exactly():
    """One TracedStep against PackedStacks.step, state updates included, over 12 steps."""
    model = tiny_model().float()
    stacks = packed_module.PackedStacks(list(model.element_decoders))
    x = torch.randn(len(model.element_decoders), 2, model.config.dec_d_model)
    eager_state = stacks.init_state(2, torch.device("cpu"), torch.float32)
    traced_state = stacks.init_state(2, torch.device("cpu"), torch.float32)
    traced = packed_module.TracedStep.build(stacks, x, traced_state)
    assert traced is not None
    for t in range(12):
        x = torch.randn_like(x)
        a, eager_state = stacks.step(x, eager_state)
        b, traced_state = traced(x, traced_state)
        assert torch.equal(a, b)
        for s, u in zip(eager_state, traced_state):
            assert torch.equal(s.kvz, u.kvz)


def test_packed_stacks_are_reused_until_the_weights_change():
    """The same model generates with the same PackedStacks call after call; changing a
    weight in place (as an optimizer step does) or replacing it rebuilds them, so the
    words follow the new weights exactly as a fresh eager run does."""
    model = tiny_model().float()
    latent = torch.randn(1, 16, model.config.latent_dim)
    words_of(model, latent, [1], 0, 10)
    first = packed_module._generation_packs[model]["stacks"]["element"][0]
    words_of(model, latent, [1], 0, 10)
    assert packed_module._generation_packs[model]["stacks"]["element"][0] is first
    with torch.no_grad():
        for p in model.element_decoders.parameters():
            p.mul_(1.5)
    changed = words_of(model, latent, [1], 0, 10)
    assert packed_module._generation_packs[model]["stacks"]["element"][0] is not first
    fresh = copy.deepcopy(model)
    packed_module._generation_packs.pop(fresh, None)
    reference = fresh.generate(latent, [1], generator=torch.Generator().manual_seed(0),
                               max_steps=10, recurrent=False)
    assert [w.tolist() for w in changed] == [w.tolist() for w in reference]


def test_generation_steps_eagerly_where_tracing_fails(monkeypatch):
    """A torch whose tracer fails (or lacks TorchScript) still generates, the same words,
    with a warning."""
    model = tiny_model().float()
    latent = torch.randn(1, 16, model.config.latent_dim)
    expected = words_of(model, latent, [2], 3, 10)
    packed_module._generation_packs.clear()

    def broken(*args, **kwargs):
        raise RuntimeError("no TorchScript here")
    monkeypatch.setattr(torch.jit, "trace", broken)
    with pytest.warns(UserWarning, match="stepping without a trace"):
        got = words_of(model, latent, [2], 3, 10)
    assert [w.tolist() for w in got] == [w.tolist() for w in expected]


def test_layouts_are_chosen_before_tracing(monkeypatch):
    """The one-row layouts a traced step bakes in are chosen by timing outside the tracer:
    the choices are keyed by plain integers and timed once per shape."""
    monkeypatch.delenv(packed_module.ONE_ROW_LAYOUT_ENV, raising=False)
    monkeypatch.setattr(packed_module, "_one_row_layout_cache", {})
    timed_while_tracing = []
    original = PackedLinear._time_layouts

    def record(self, *args, **kwargs):
        timed_while_tracing.append(torch.jit.is_tracing())
        return original(self, *args, **kwargs)
    monkeypatch.setattr(PackedLinear, "_time_layouts", record)
    model = tiny_model().float()
    stacks = packed_module.PackedStacks(list(model.element_decoders))
    x = torch.randn(len(model.element_decoders), 1, model.config.dec_d_model)
    state = stacks.init_state(1, torch.device("cpu"), torch.float32)
    assert packed_module.TracedStep.build(stacks, x, state) is not None
    assert timed_while_tracing and not any(timed_while_tracing)
    keys = list(packed_module.one_row_layout_choices())
    assert all(type(n) is int for key in keys for n in key[:3])
    assert len(keys) == len(set(keys)) == len(timed_while_tracing)


def test_a_new_thread_count_gets_its_own_trace():
    """Traces bake in the one-row layouts, which are chosen per thread count: when the
    count changes (run.threads.adapt_threads), the next generation traces again."""
    model = tiny_model().float()
    latent = torch.randn(1, 12, model.config.latent_dim)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            words_of(model, latent, [1], 0, 6)
    finally:
        torch.set_num_threads(before)
    traces = packed_module._generation_packs[model]["stacks"]["element"][1]
    assert sorted(key[2] for key in traces) == [1, 2]
