"""MusER: a transformer VQ-VAE whose latent is disentangled by musical element.

Data flow (DESIGN.md section 4), for words x (decoder input) and y (targets, x shifted):

    y -> element embeddings -> encoder -> 112-dim latent per step -> EMA vector quantiser
    quantised latent -> seven 16-dim slices -> DR module -> one value per step and element
                     -> regularisation: each slice orders the batch like its element's tokens
    x + latent -> global decoder -> per element: + slice -> element decoder -> heads

The heads predict the type first; every other element's head also sees the embedding of
the next word's type (ground truth in training, the sampled type in generation: the same
function serves both). The ablation switches of the config choose the latent reduction
(TRANS/MEAN), the conditioning of the global decoder (CA/CONCAT/NONE) and the decoding
(GE/G/E).
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import (ELEMENTS, EMOTION_FIELD, FIELDS, N_ELEMENTS, TYPE_FIELD,
                           MusERConfig)
from models.quantizer import EMAVectorQuantizer
from models.transformer import (PackedLinear, PackedStacks, PositionalEncoding,
                                TransformerStack, select_state)
from utils.sampling import SamplingParams, row_settings, sample_tokens

# Elements whose head is conditioned on the type (all but the type itself).
CONDITIONED = tuple(k for k in range(N_ELEMENTS) if k != TYPE_FIELD)
# Elements whose tokens carry a number that orders them musically (for reg_target='value').
NUMERIC_ELEMENTS = ("tempo", "bar-beat", "pitch", "duration", "velocity")


# ---------------------------------------------------------------------------------------
# Pieces that are also used (and tested) on their own.

def value_tables(word2event: dict) -> list[list[float]]:
    """Per element, the musical value of each token index, for reg_target='value'.

    Token names such as 'Note_Pitch_60', 'Tempo_120', 'Beat_3' give their number. Tokens
    without one (0, 'CONTI', 'Bar') are placed below every number, in index order. Chord
    and type have no musical order, so their index is kept. Only the order matters: the
    regulariser looks at the sign of differences.
    """
    tables = []
    for field in ELEMENTS:
        events = word2event[field]
        size = len(events)
        if sorted(events) != list(range(size)):
            raise ValueError(f"word2event[{field!r}] indices are not 0..{size - 1}")
        if field not in NUMERIC_ELEMENTS:
            tables.append([float(i) for i in range(size)])
            continue
        numbers = {i: _token_number(events[i]) for i in range(size)}
        without = [i for i in range(size) if numbers[i] is None]
        table = [0.0] * size
        for rank, i in enumerate(without):
            table[i] = float(rank - len(without))
        for i, number in numbers.items():
            if number is not None:
                table[i] = number
        tables.append(table)
    return tables


def _token_number(event) -> float | None:
    if not isinstance(event, str):
        return None                     # the integer 0 marks an unused field
    try:
        return float(int(event.rsplit("_", 1)[-1]))
    except ValueError:
        return None


def element_regularization(reduced: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-element regularisation loss [7], all batch pairs at once.

    reduced, targets: [7, B, T]. Targets are real values, or integers (token indices) in
    a type wide enough for their differences (int16 below 2**14 takes the least memory).
    For element k:
        L_k = mean over (i, j, t) of |tanh(z[i,t] - z[j,t]) - sign(x[i,t] - x[j,t])|.
    The term is symmetric in (i, j) and zero for i = j, so only the pairs i < j are
    computed, and counted twice. All latent pair differences come from one product with a
    [pairs, B] matrix of +1/-1 (exact: a single rounding, as z[i] - z[j]), and
    tanh(d) = 2 sigmoid(2d) - 1 (the same function; much cheaper than tanh on CPU).
    """
    dtype = torch.promote_types(reduced.dtype, torch.float32)
    batch, length = reduced.shape[1:]
    with torch.autocast(reduced.device.type, enabled=False):
        pairs = _pair_matrix(batch, reduced.device, dtype)
        with torch.no_grad():
            if targets.is_floating_point():
                target_diff = torch.matmul(pairs, targets.to(dtype))
            else:               # integers: differences in their own (e.g. 16-bit) type
                i, j = torch.triu_indices(batch, batch, 1, device=targets.device)
                target_diff = targets.index_select(1, i) - targets.index_select(1, j)
            offset = target_diff.sign_().add_(1).to(dtype)                     # 1 + sign(dx)
        losses = _PairwiseRankLoss.apply(reduced.to(dtype), pairs, offset)
    return losses * (2.0 / (batch * batch * length))


def _pair_matrix(batch: int, device, dtype) -> torch.Tensor:
    """[B(B-1)/2, B]: row p has +1 at i and -1 at j for the p-th pair i < j."""
    i, j = torch.triu_indices(batch, batch, 1, device=device)
    rows = torch.arange(len(i), device=device)
    pairs = torch.zeros(len(i), batch, device=device, dtype=dtype)
    pairs[rows, i] = 1.0
    pairs[rows, j] = -1.0
    return pairs


class _PairwiseRankLoss(torch.autograd.Function):
    """sum over pairs p and steps t of |tanh(d[k,p,t]) - sign[k,p,t]|, d = pairs @ z[k],
    given offset = 1 + sign (overwritten). Forward and backward take a few in-place
    passes over the [7, pairs, T] tensor; autograd's own graph would keep and re-read
    several such tensors."""

    @staticmethod
    def forward(ctx, reduced, pairs, offset):
        s = torch.matmul(pairs, reduced * 2).sigmoid_()             # tanh(d) = 2 s - 1
        residual = offset.addcmul_(s, s.new_tensor(2.0), value=-1)    # sign - tanh(d)
        # d|tanh(d) - sign| / dd = -4 s (1 - s) sign(residual): kept without the -4.
        slope = s.addcmul_(s, s, value=-1).copysign_(residual)
        ctx.save_for_backward(slope, pairs)
        return residual.abs_().sum(dim=(1, 2))

    @staticmethod
    def backward(ctx, grad):
        slope, pairs = ctx.saved_tensors
        # pairs^T @ slope: on CPU two index_add passes are about twice as fast as the
        # product (whose inner dimension is tiny); elsewhere the product is deterministic.
        if slope.device.type == "cpu":
            first, second = torch.triu_indices(pairs.shape[1], pairs.shape[1], 1)
            out = slope.new_zeros(slope.shape[0], pairs.shape[1], slope.shape[2])
            out.index_add_(1, first, slope).index_add_(1, second, slope, alpha=-1)
        else:
            out = torch.matmul(pairs.t(), slope)
        return out.mul_((-4 * grad)[:, None, None]), None, None


def reconstruction_losses(log_probs, y, mask, seq_len):
    """Per-element NLL and accuracy over each piece's first seq_len steps.

    log_probs: 7 tensors [B, T, V_k]; y [B, T, 8]; mask [B, T]; seq_len [B].
    Loss of element k: per sample, the mean NLL over its valid steps, averaged over the
    batch. Accuracy: correct / valid over the whole batch. Returns ([7], [7]).
    """
    batch, length = y.shape[:2]
    dtype = log_probs[0].dtype
    steps = torch.arange(length, device=y.device)
    valid = (steps < seq_len.to(y.device).view(-1, 1)).to(dtype) * mask.to(dtype)
    per_sample_count = valid.sum(1).clamp_min(1)
    total_count = valid.sum().clamp_min(1)
    losses, accuracies = [], []
    for k in range(N_ELEMENTS):
        target = y[..., k]
        nll = -log_probs[k].gather(-1, target.unsqueeze(-1)).squeeze(-1)
        losses.append(((nll * valid).sum(1) / per_sample_count).mean())
        correct = (log_probs[k].argmax(-1) == target).to(dtype)
        accuracies.append((correct * valid).sum() / total_count)
    return torch.stack(losses), torch.stack(accuracies)


class ElementEmbeddings(nn.Module):
    """One table per word field, each output scaled by sqrt(its width)."""

    def __init__(self, vocab_sizes, emb_sizes):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, e) for v, e in zip(vocab_sizes, emb_sizes))
        self.scales = [math.sqrt(e) for e in emb_sizes]

    def embed(self, field: int, tokens):
        return self.tables[field](tokens) * self.scales[field]

    def forward(self, words, fields):
        """words [..., 8] -> concatenated embeddings of `fields`."""
        return torch.cat([self.embed(f, words[..., f]) for f in fields], dim=-1)


# ---------------------------------------------------------------------------------------

class MusER(nn.Module):
    def __init__(self, config: MusERConfig):
        super().__init__()
        self.config = c = config
        d = c.dec_d_model
        self.embeddings = ElementEmbeddings(c.vocab_sizes, c.emb_sizes)

        # Encoder over the target words (no emotion field).
        self.encoder_input = nn.Linear(sum(c.emb_sizes[:N_ELEMENTS]), c.enc_d_model)
        self.encoder_position = PositionalEncoding(c.enc_d_model, c.dropout, c.max_len)
        # Every variant's encoder sees the whole piece (CONCAT too, as in the authors'
        # MusER_TRANS_CONCAT_GE: latent t may summarise later steps).
        self.encoder = TransformerStack(c.enc_d_model, c.enc_layers, c.enc_heads, c.attention,
                                        dropout=c.dropout, chunk_size=c.chunk_size)
        self.to_latent = nn.Linear(c.enc_d_model, c.latent_dim)
        self.quantizer = EMAVectorQuantizer(c.codebook_size, c.latent_dim, c.commitment,
                                            c.ema_decay, c.ema_eps, c.dead_code_threshold)

        # DR module: the 16 dims of a slice are the tokens, the sequence is the width.
        if c.reduction == "TRANS" and c.reg_weight > 0:
            self.dr_position = PositionalEncoding(c.max_len, c.dropout, c.slice_dim)
            self.dr = TransformerStack(c.max_len, c.dr_layers, c.dr_heads, c.attention,
                                       dropout=c.dropout, chunk_size=c.chunk_size)
        else:
            self.dr = None
        if c.reg_target == "value" and c.value_tables is None and c.reg_weight > 0:
            warnings.warn("reg_target='value' without config.value_tables: "
                          "regularising on token indices")
        if c.value_tables is not None:
            width = max(len(t) for t in c.value_tables)
            table = torch.zeros(N_ELEMENTS, width)
            for k, values in enumerate(c.value_tables):
                table[k, : len(values)] = torch.tensor(values)
            self.register_buffer("value_table", table, persistent=False)
        else:
            self.value_table = None

        # Global decoder over the input words (emotion included).
        self.decoder_input = nn.Linear(sum(c.emb_sizes), d)
        self.decoder_position = PositionalEncoding(d, c.dropout, c.max_len)
        if c.conditioning == "CA":
            self.memory_projection = nn.Linear(c.latent_dim, d)
            self.global_decoder = TransformerStack(d, c.global_layers, c.dec_heads,
                                                   c.decoder_attention, c.attention,
                                                   c.dropout, c.chunk_size)
        elif c.conditioning == "CONCAT":
            self.concat_projection = nn.Linear(d + c.latent_dim, d)
            self.global_decoder = TransformerStack(d, c.global_layers, c.dec_heads,
                                                   c.decoder_attention, None,
                                                   c.dropout, c.chunk_size)
        else:
            self.global_decoder = None

        # Element decoders, one per element in FIELDS order, fed with their latent slice.
        self.slice_projection = nn.Linear(c.slice_dim, d)
        if c.decoding in ("GE", "E"):
            # Deep copies of one module, as the authors build them: identical initial weights.
            first = TransformerStack(d, c.sub_layers, c.sub_heads, c.decoder_attention, None,
                                     c.dropout, c.chunk_size)
            self.element_decoders = nn.ModuleList(
                [first] + [copy.deepcopy(first) for _ in range(N_ELEMENTS - 1)])
        else:
            self.element_decoders = None

        # Heads: the type head reads the element state; the others concatenate the type
        # embedding and go through one shared projection first.
        self.type_projection = nn.Linear(d + c.emb_sizes[TYPE_FIELD], d)
        self.heads = nn.ModuleList(nn.Linear(d, v) for v in c.vocab_sizes[:N_ELEMENTS])

    # -- encoding ------------------------------------------------------------------------

    def _encoder_output(self, y):
        h = self.encoder_input(self.embeddings(y, range(N_ELEMENTS)))
        h = self.encoder(self.encoder_position(h))
        return self.to_latent(h)

    def encode(self, y):
        """Quantised latent [B, T, latent_dim] and codes [B, T]; never moves the codebook."""
        z = self._encoder_output(y)
        codes = self.quantizer.code_indices(z.reshape(-1, z.shape[-1]).float()).view(z.shape[:-1])
        return self.latent_from_codes(codes).to(z.dtype), codes

    def latent_from_codes(self, codes):
        """Codebook vectors for codes [B, T] -> [B, T, latent_dim]."""
        return self.quantizer.lookup(codes)

    # -- regularisation ------------------------------------------------------------------

    def reduce_latent(self, latent):
        """One value per step and element: [B, T, latent_dim] -> [7, B, T]."""
        batch, length = latent.shape[:2]
        s = self.config.slice_dim
        slices = latent.view(batch, length, N_ELEMENTS, s).permute(2, 0, 3, 1)  # [7, B, s, T]
        if self.config.reduction == "MEAN":
            return slices.mean(dim=2)
        if length != self.config.max_len:
            raise ValueError(f"the DR module needs sequences of max_len={self.config.max_len} "
                             f"steps, got {length}")
        # The DR transformer is shared by the elements: run all seven as one batch.
        tokens = self.dr_position(slices.reshape(N_ELEMENTS * batch, s, length))
        return self.dr(tokens)[:, 0].view(N_ELEMENTS, batch, length)

    def regularization_targets(self, y):
        """What each slice must order the batch by: [7, B, T] token indices (integers) or
        values (floats)."""
        tokens = y[..., :N_ELEMENTS]
        if self.config.reg_target == "value" and self.value_table is not None:
            values = self.value_table[torch.arange(N_ELEMENTS, device=y.device), tokens]
            return values.permute(2, 0, 1)
        # Token indices stay integers: 16 bits when the vocabularies allow (they do).
        small = max(self.config.vocab_sizes[:N_ELEMENTS]) < 2 ** 14
        return tokens.permute(2, 0, 1).to(torch.int16 if small else torch.int64)

    # -- decoding (parallel) -------------------------------------------------------------

    def _slice_inputs(self, latent):
        """Projected latent slices: [B, L, latent_dim] -> [B, L, 7, d]."""
        s = self.config.slice_dim
        return self.slice_projection(latent.view(*latent.shape[:-1], N_ELEMENTS, s))

    def global_decode(self, x, latent):
        """Global decoder output [B, L, d] for words x [B, L, 8] and a latent [B, T, ...],
        T >= L. Without a global decoder (NONE) this is the projected input embedding."""
        c = self.config
        h = self.decoder_input(self.embeddings(x, range(len(FIELDS))))
        if c.conditioning == "CA":
            h = self.global_decoder(self.decoder_position(h), self.memory_projection(latent))
        elif c.conditioning == "CONCAT":
            h = self.concat_projection(torch.cat([h, latent[:, : x.shape[1]]], dim=-1))
            h = self.global_decoder(self.decoder_position(h))
        return h

    def decode(self, x, latent):
        """Parallel decoding of words x [B, L, 8] given a latent [B, T, latent_dim], T >= L.

        Returns (element states, projected slices [B, L, 7, d]). Element states are
        [B, L, 7, d], or the global state [B, L, d] for the G decoding.
        """
        z = self._slice_inputs(latent[:, : x.shape[1]])
        h = self.global_decode(x, latent)
        if self.config.decoding == "G":
            return h, z
        states = [decoder(self.decoder_position(h + z[..., k, :]))
                  for k, decoder in enumerate(self.element_decoders)]
        return torch.stack(states, dim=-2), z

    # -- heads (one code path for training and generation) -------------------------------

    def type_logits(self, states, z):
        if self.config.decoding == "G":
            return self.heads[TYPE_FIELD](states + z[..., TYPE_FIELD, :])
        return self.heads[TYPE_FIELD](states[..., TYPE_FIELD, :])

    def conditioned_logits(self, states, z, next_type) -> dict:
        """Logits of every element but type, given the next word's type [...] (ground truth
        in training, sampled in generation). Returns {element: logits}."""
        type_emb = self.embeddings.embed(TYPE_FIELD, next_type)
        if self.config.decoding == "G":
            u = self.type_projection(torch.cat([states, type_emb], dim=-1))
            u = u.unsqueeze(-2) + z[..., CONDITIONED, :]
        else:
            others = states[..., CONDITIONED, :]
            type_emb = type_emb.unsqueeze(-2).expand(*others.shape[:-1], type_emb.shape[-1])
            u = self.type_projection(torch.cat([others, type_emb], dim=-1))
        return {k: self.heads[k](u[..., i, :]) for i, k in enumerate(CONDITIONED)}

    def element_log_probs(self, x, y, latent):
        """Log-probabilities of the 7 elements of y, teacher-forced: list of [B, T, V_k]."""
        states, z = self.decode(x, latent)
        logits = self.conditioned_logits(states, z, y[..., TYPE_FIELD])
        logits[TYPE_FIELD] = self.type_logits(states, z)
        return [F.log_softmax(logits[k], dim=-1) for k in range(N_ELEMENTS)]

    # -- training ------------------------------------------------------------------------

    def forward(self, x, y, mask, seq_len) -> dict:
        """x, y [B, T, 8] long; mask [B, T]; seq_len [B]. Returns losses and diagnostics."""
        latent, vq_loss, codes, perplexity = self.quantizer(self._encoder_output(y))
        if self.config.reg_weight > 0:
            reg = element_regularization(self.reduce_latent(latent),
                                         self.regularization_targets(y)).sum()
        else:
            reg = latent.new_zeros(())
        log_probs = self.element_log_probs(x, y, latent)
        element_losses, element_acc = reconstruction_losses(log_probs, y, mask, seq_len)
        recon = element_losses.mean()
        loss = recon + vq_loss + self.config.reg_weight * reg
        return {"loss": loss, "recon": recon, "element_losses": element_losses,
                "element_acc": element_acc, "vq": vq_loss, "reg": reg, "codes": codes,
                "perplexity": perplexity, "log_probs": log_probs}

    # -- generation ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, latent, emotion, sampling: SamplingParams | None = None,
                 generator: torch.Generator | None = None, max_steps: int | None = None,
                 recurrent: bool = True, recompute: str = "window") -> list[np.ndarray]:
        """Decode latents [B, T, latent_dim] into words, all pieces as one batch.

        Each piece starts from an Emotion word with emotion[b] (1..4) and stops at EOS or
        after max_steps new words (default T - 1, at most T). Returns per piece an int array
        [T_b, 8]: the Emotion word, the generated words, and the EOS word if reached.
        recurrent=False re-runs the parallel decoder every step (reference path, O(T^2)):
        over the whole T-step window as the authors do (recompute="window"), or over the
        words so far (recompute="prefix"). All paths give the same words for the same seed.
        """
        type_ids = self.config.type_ids
        if type_ids is None:
            raise ValueError("generation needs config.type_ids (EOS/Emotion/Metrical/Note)")
        sampling = sampling or SamplingParams()
        was_training = self.training
        self.eval()
        batch, length, _ = latent.shape
        device = latent.device
        steps = length - 1 if max_steps is None else max(0, min(int(max_steps), length))
        emotion = torch.as_tensor(emotion, device=device).long().reshape(-1).expand(batch)

        words = torch.zeros(batch, steps + 1, len(FIELDS), dtype=torch.long, device=device)
        words[:, 0, TYPE_FIELD] = type_ids["Emotion"]
        words[:, 0, EMOTION_FIELD] = emotion
        lengths = torch.full((batch,), steps + 1, dtype=torch.long)
        active = torch.arange(batch, device=device)
        all_active = True
        decoder = (RecurrentDecoder(self, latent) if recurrent
                   else FullRecomputeDecoder(self, latent, recompute))
        heads = GenerationHeads(self, sampling)
        conditioned = torch.tensor(CONDITIONED, device=device)
        word = words[:, 0]
        try:
            for t in range(steps):
                states, z = decoder.step(word if recurrent else words[active, : t + 1], t)
                fs = sampling.type
                next_type = sample_tokens(self.type_logits(states, z), fs.temperature, fs.top_p,
                                          generator)
                word = torch.zeros(len(next_type), len(FIELDS), dtype=torch.long, device=device)
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
            self.train(was_training)
        words = words.cpu().numpy()
        return [words[b, : lengths[b]] for b in range(batch)]


class RecurrentDecoder:
    """Step-by-step decoding with recurrent attention state: constant work per step.

    packed=True (used by generate) steps the global decoder and the seven element decoders
    through PackedStacks (stacked weights, one batched matmul per projection for all seven
    element decoders); packed=False uses each module's own step (the plain reference form).
    Both equal the parallel decoder up to floating-point rounding.
    """

    def __init__(self, model: MusER, latent, packed: bool = True):
        self.model = m = model
        c = m.config
        batch = latent.shape[0]
        self.packed = packed
        self.latent = latent
        self.z = m._slice_inputs(latent)                              # [B, T, 7, d]
        args = (batch, latent.device, latent.dtype)
        self.global_stack = self.element_stack = None
        self.global_state = self.memory = self.element_states = None
        if m.global_decoder is not None:
            self.global_stack = PackedStacks([m.global_decoder]) if packed else m.global_decoder
            self.global_state = self.global_stack.init_state(*args)
            if c.conditioning == "CA":
                self.memory = self.global_stack.summarize_memory(m.memory_projection(latent))
        if m.element_decoders is not None:
            if packed:
                self.element_stack = PackedStacks(list(m.element_decoders))
                self.element_states = self.element_stack.init_state(*args)
            else:
                self.element_states = [dec.init_state(*args) for dec in m.element_decoders]
        if packed:
            self.input_table, self.input_offsets = _fused_input_table(m)
            self.positions = m.decoder_position.pe.to(latent.dtype)
        self.global_output = None   # last global decoder output, kept for inspection

    def _embed(self, word):
        """decoder_input(embeddings(word)): [b, 8] -> [b, d]."""
        m = self.model
        if self.packed:
            return self.input_table[word + self.input_offsets].sum(1) + m.decoder_input.bias
        return m.decoder_input(m.embeddings(word, range(len(FIELDS))))

    def _position(self, h, t: int):
        if self.packed:         # eval mode: no dropout
            return h + self.positions[t]
        return self.model.decoder_position.step(h, t)

    def _global_step(self, h):
        if self.packed:
            h, self.global_state = self.global_stack.step(h.unsqueeze(0), self.global_state,
                                                          self.memory)
            return h[0]
        h, self.global_state = self.global_stack.step(h, self.global_state, self.memory)
        return h

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
        inputs = self._position(h.unsqueeze(1) + z, t)                  # [b, 7, d]
        if self.packed:
            states, self.element_states = self.element_stack.step(inputs.transpose(0, 1),
                                                                  self.element_states)
            return states.transpose(0, 1), z
        states = []
        for k, decoder in enumerate(m.element_decoders):
            e, self.element_states[k] = decoder.step(inputs[:, k], self.element_states[k])
            states.append(e)
        return torch.stack(states, dim=-2), z

    def select(self, index):
        """Keep only batch rows `index` (pieces still being generated)."""
        self.latent = self.latent[index]
        self.z = self.z[index]
        if self.packed:
            if self.global_stack is not None:
                self.global_state = self.global_stack.select(self.global_state, index)
                if self.memory is not None:
                    self.memory = self.global_stack.select(self.memory, index)
            if self.element_stack is not None:
                self.element_states = self.element_stack.select(self.element_states, index)
        else:
            self.global_state = select_state(self.global_state, index)
            self.memory = select_state(self.memory, index)
            self.element_states = select_state(self.element_states, index)


@torch.no_grad()
def _fused_input_table(model: MusER):
    """decoder_input(embeddings(word)) as a sum of rows of one table: for each field, its
    scaled embedding table times its block of decoder_input's weight, computed once.
    Returns (table [sum of vocabularies, d], row offset of each field [8])."""
    weight = model.decoder_input.weight                                # [d, sum of widths]
    tables, start = [], 0
    for f, embedding in enumerate(model.embeddings.tables):
        width = embedding.embedding_dim
        tables.append((embedding.weight * model.embeddings.scales[f])
                      @ weight[:, start:start + width].t())
        start += width
    sizes = torch.tensor([0] + [len(t) for t in tables[:-1]], device=weight.device)
    return torch.cat(tables), sizes.cumsum(0)


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
    def __init__(self, model: MusER, sampling: SamplingParams):
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
        self.index = torch.tensor(CONDITIONED, device=weight.device)
        self.settings = [sampling.for_element(k) for k in CONDITIONED]
        self.per_row = all(fs.temperature > 0 for fs in self.settings)
        self.rows = None                    # per-row settings, rebuilt when the batch shrinks

    def sample_conditioned(self, states, z, next_type, generator=None):
        """Sample the six conditioned fields given the sampled type: [b, 6] (CONDITIONED order)."""
        batch, d = states.shape[0], states.shape[-1]
        n = len(CONDITIONED)
        if self.decoding == "G":
            u = self.state_projection(states.unsqueeze(0))[0] + self.type_table[next_type]
            u = u.unsqueeze(1) + z.index_select(1, self.index)               # [b, 6, d]
        else:
            others = states.index_select(1, self.index).reshape(1, batch * n, d)
            u = (self.state_projection(others).view(batch, n, d)
                 + self.type_table[next_type].unsqueeze(1))
        logits = self.heads(u.transpose(0, 1))                              # [6, b, V]
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

    def __init__(self, model: MusER, latent, window: str = "window"):
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
