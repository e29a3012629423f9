"""Generation engines of MusER: the step-by-step decoders and the batched sampling heads.

`generate_words` is the loop behind `MusER.generate`; it steps a decoder (recurrent state,
or the parallel decoder re-run every step as a reference) and draws each word's type,
then the six type-conditioned elements. The recurrent decoder steps the model's stacks
packed (models/packed.py: stacked weights, traced steps, int8, narrower dtypes).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.sampling import SamplingParams, row_settings, sample_tokens
from models.packed import PackedLinear, int8_weights, packed_stacks, step_stacks
from music.elements import CONDITIONED, EMOTION_FIELD, N_FIELDS, TYPE_FIELD


@torch.inference_mode()
def generate_words(model, latent, emotion, sampling: SamplingParams | None = None,
                   generator: torch.Generator | None = None, max_steps: int | None = None,
                   recurrent: bool = True, recompute: str = "window",
                   on_step: Callable[[], None] | None = None) -> list[np.ndarray]:
    """MusER.generate (see there): decode latents [B, T, latent_dim] into words."""
    type_ids = model.config.type_ids
    if type_ids is None:
        raise ValueError("generation needs config.type_ids (EOS/Emotion/Metrical/Note)")
    sampling = sampling or SamplingParams()
    was_training = model.training
    model.eval()
    batch, length, _ = latent.shape
    device = latent.device
    steps = length - 1 if max_steps is None else max(0, min(int(max_steps), length))
    emotion = torch.as_tensor(emotion, device=device).long().reshape(-1).expand(batch)

    words = torch.zeros(batch, steps + 1, N_FIELDS, dtype=torch.long, device=device)
    words[:, 0, TYPE_FIELD] = type_ids["Emotion"]
    words[:, 0, EMOTION_FIELD] = emotion
    lengths = torch.full((batch,), steps + 1, dtype=torch.long)
    active = torch.arange(batch, device=device)
    all_active = True
    decoder = (RecurrentDecoder(model, latent) if recurrent
               else FullRecomputeDecoder(model, latent, recompute))
    heads = GenerationHeads(model, sampling)
    conditioned = torch.tensor(CONDITIONED, device=device)
    word = words[:, 0]
    try:
        for t in range(steps):
            if on_step is not None:
                on_step()
            states, z = decoder.step(word if recurrent else words[active, : t + 1], t)
            fs = sampling.type
            next_type = sample_tokens(model.type_logits(states, z), fs.temperature, fs.top_p,
                                      generator)
            word = torch.zeros(len(next_type), N_FIELDS, dtype=torch.long, device=device)
            word[:, TYPE_FIELD] = next_type
            word[:, conditioned] = heads.sample_conditioned(states, z, next_type, generator)
            if all_active:
                words[:, t + 1] = word
            else:
                words[active, t + 1] = word
            ended = next_type == type_ids["EOS"]
            if bool(ended.any()):
                lengths[active[ended].cpu()] = t + 2
                keep = torch.nonzero(~ended).squeeze(1)
                active, word, all_active = active[keep], word[keep], False
                if active.numel() == 0:
                    break
                decoder.select(keep)
    finally:
        model.train(was_training)
    words = words.cpu().numpy()
    return [words[b, : lengths[b]] for b in range(batch)]


class RecurrentDecoder:
    """Step-by-step decoding with recurrent attention state: constant work per step.

    Steps the global decoder and the seven element decoders through PackedStacks (stacked
    weights, one batched matmul per projection for all seven element decoders, traced
    steps); equal to the parallel decoder up to floating-point rounding.
    """

    def __init__(self, model, latent):
        self.model = m = model
        c = m.config
        batch = latent.shape[0]
        self.latent = latent
        self.z = m._slice_inputs(latent)                              # [B, T, 7, d]
        args = (batch, latent.device, latent.dtype)
        self.global_stack = self.element_stack = None
        self.global_state = self.memory = self.element_states = None
        # Traced steps while every piece is still running (a shrinking batch would need a
        # trace per batch size): see TracedStep.
        self.traced = True
        self.global_traces = self.element_traces = None
        if m.global_decoder is not None:
            self.global_stack, self.global_traces = packed_stacks(m, "global", [m.global_decoder])
            self.global_state = self.global_stack.init_state(*args)
            if c.conditioning == "CA":
                self.memory = self.global_stack.summarize_memory(m.memory_projection(latent))
        if m.element_decoders is not None:
            self.element_stack, self.element_traces = packed_stacks(m, "element", m.element_decoders)
            self.element_states = self.element_stack.init_state(*args)
        self.input_table, self.input_offsets = _fused_input_table(m)
        self.positions = m.decoder_position.pe.to(latent.dtype)     # eval mode: no dropout
        self.global_output = None   # last global decoder output, kept for inspection

    def _embed(self, word):
        """decoder_input(embeddings(word)): [b, 8] -> [b, d], as rows of one table."""
        return self.input_table[word + self.input_offsets].sum(1) + self.model.decoder_input.bias

    def _position(self, h, t: int):
        return h + self.positions[t]

    def _global_step(self, h):
        h, self.global_state = step_stacks(self.global_stack, self.global_traces, h.unsqueeze(0),
                                           self.global_state, self.memory, self.traced)
        return h[0]

    def _element_step(self, inputs):
        """The seven element decoders' step: inputs [b, 7, d] -> outputs [b, 7, d]."""
        states, self.element_states = step_stacks(self.element_stack, self.element_traces,
                                                  inputs.transpose(0, 1), self.element_states,
                                                  traced=self.traced)
        return states.transpose(0, 1)

    def step(self, word, t: int):
        """word [b, 8] at position t -> (element states for position t, slices [b, 7, d])."""
        m, c = self.model, self.model.config
        z = self.z[:, t]
        h = self._embed(word)
        if c.conditioning == "CA":
            h = self._global_step(self._position(h, t))
        elif c.conditioning == "CONCAT":
            h = m.concat_projection(torch.cat([h, self.latent[:, t]], dim=-1))
            h = self._global_step(self._position(h, t))
        self.global_output = h
        if c.decoding == "G":
            return h, z
        return self._element_step(self._position(h.unsqueeze(1) + z, t)), z

    def select(self, index):
        """Keep only batch rows `index` (pieces still being generated)."""
        self.traced = False
        self.latent = self.latent[index]
        self.z = self.z[index]
        if self.global_stack is not None:
            self.global_state = self.global_stack.select(self.global_state, index)
            if self.memory is not None:
                self.memory = self.global_stack.select(self.memory, index)
        if self.element_stack is not None:
            self.element_states = self.element_stack.select(self.element_states, index)


@torch.no_grad()
def _fused_input_table(model):
    """decoder_input(embeddings(word)) as a sum of rows of one table: for each field, its
    scaled embedding table times its block of decoder_input's weight, computed once.
    Returns (table [sum of vocabularies, d], row offset of each field [8])."""
    dtype = model.decoder_input.weight.dtype
    wide = torch.promote_types(dtype, torch.float32)
    weight = model.decoder_input.weight.to(wide)                        # [d, sum of widths]
    tables, start = [], 0
    for f, embedding in enumerate(model.embeddings.tables):
        width = embedding.embedding_dim
        # In float32 at least and rounded once, so a 16-bit model's table is as exact as its dtype.
        tables.append((embedding.weight.to(wide) * model.embeddings.scales[f])
                      @ weight[:, start:start + width].t())
        start += width
    sizes = torch.tensor([0] + [len(t) for t in tables[:-1]], device=weight.device)
    return torch.cat(tables).to(dtype), sizes.cumsum(0)


class GenerationHeads:
    """The six type-conditioned heads of generation as one batched product and one draw.

    Computes what MusER.conditioned_logits computes (equal up to rounding): the half of
    type_projection that reads the type embedding becomes a table per type, the six heads
    are stacked with their vocabularies padded to the largest by -inf logits, and all six
    fields are sampled in one sample_tokens call with per-row settings, which draws the
    same tokens as one call per field. Settings with temperature 0 (greedy) fall back to
    one call per field. Both generation paths use this, so they stay comparable.
    """

    @torch.no_grad()
    def __init__(self, model, sampling: SamplingParams):
        c = model.config
        d = c.dec_d_model
        self.decoding = c.decoding
        projection = model.type_projection
        self.state_projection = PackedLinear(projection.weight[None, :, :d],
                                             projection.bias.new_zeros(1, d))
        type_embeddings = model.embeddings.embed(
            TYPE_FIELD, torch.arange(c.vocab_sizes[TYPE_FIELD], device=projection.weight.device))
        self.type_table = type_embeddings @ projection.weight[:, d:].t() + projection.bias
        self.vocab = [c.vocab_sizes[k] for k in CONDITIONED]
        weight = projection.weight.new_zeros(len(CONDITIONED), max(self.vocab), d)
        bias = projection.weight.new_full((len(CONDITIONED), max(self.vocab)), float("-inf"))
        for i, k in enumerate(CONDITIONED):
            weight[i, : self.vocab[i]] = model.heads[k].weight
            bias[i, : self.vocab[i]] = model.heads[k].bias
        self.heads = PackedLinear(weight, bias)
        if getattr(model, "generation_int8", False):
            self.state_projection = int8_weights(self.state_projection)
            self.heads = int8_weights(self.heads)
        self.index = torch.tensor(CONDITIONED, device=weight.device)
        self.settings = [sampling.for_element(k) for k in CONDITIONED]
        self.per_row = all(fs.temperature > 0 for fs in self.settings)
        self.rows = None                    # per-row settings, rebuilt when the batch shrinks

    def logits(self, states, z, next_type):
        """Logits of the six conditioned fields given the type: [6, b, V] (CONDITIONED order,
        each field's vocabulary padded to the largest with -inf)."""
        batch, d = states.shape[0], states.shape[-1]
        n = len(CONDITIONED)
        if self.decoding == "G":
            u = self.state_projection(states.unsqueeze(0))[0] + self.type_table[next_type]
            u = u.unsqueeze(1) + z.index_select(1, self.index)               # [b, 6, d]
        else:
            others = states.index_select(1, self.index).reshape(1, batch * n, d)
            u = (self.state_projection(others).view(batch, n, d)
                 + self.type_table[next_type].unsqueeze(1))
        return self.heads(u.transpose(0, 1))

    def sample_conditioned(self, states, z, next_type, generator=None):
        """Sample the six conditioned fields given the sampled type: [b, 6] (CONDITIONED order)."""
        batch, n = states.shape[0], len(CONDITIONED)
        logits = self.logits(states, z, next_type)                          # [6, b, V]
        if not self.per_row:
            return torch.stack([sample_tokens(logits[i, :, :v], fs.temperature, fs.top_p, generator)
                                for i, (v, fs) in enumerate(zip(self.vocab, self.settings))], 1)
        if self.rows is None or self.rows[0].shape[0] != n * batch:
            self.rows = row_settings(self.settings, batch, logits.device)
        tokens = sample_tokens(logits.reshape(n * batch, -1), *self.rows, generator)
        return tokens.view(n, batch).t()


class FullRecomputeDecoder:
    """Reference path: re-run the parallel decoder every step.

    window="window" decodes the whole T-step buffer (the words so far, zeros after them),
    as the authors' generation does; window="prefix" decodes only the words so far.
    Causality makes both give the same outputs; they differ only in cost.
    """

    def __init__(self, model, latent, window: str = "window"):
        if window not in ("window", "prefix"):
            raise ValueError(f"recompute must be 'window' or 'prefix', got {window!r}")
        self.model = model
        self.latent = latent
        self.window = window

    def step(self, prefix, t: int):
        if self.window == "window":
            prefix = F.pad(prefix, (0, 0, 0, self.latent.shape[1] - prefix.shape[1]))
        states, z = self.model.decode(prefix, self.latent)
        return states[:, t], z[:, t]

    def select(self, index):
        self.latent = self.latent[index]

