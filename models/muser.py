"""MusER: a transformer VQ-VAE whose latent is disentangled by musical element.

Data flow, for words x (decoder input) and y (targets, x shifted):

    y -> element embeddings -> encoder -> 112-dim latent per step -> EMA vector quantiser
    quantised latent -> seven 16-dim slices -> DR module -> one value per step and element
                     -> regularisation: each slice orders the batch like its element's tokens
    x + latent -> global decoder -> per element: + slice -> element decoder -> heads

Read top to bottom: the element embeddings, then the model (encoding, regularisation,
parallel decoding, heads, the training forward pass, generation). The losses are in
models/losses.py, the generation engines in models/generation.py.

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

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import MusERConfig
from models.generation import generate_words
from models.losses import element_regularization, reconstruction_losses
from models.quantizer import EMAVectorQuantizer, ProductQuantizer
from models.sampling import SamplingParams
from models.transformer import PositionalEncoding, TransformerStack
from music.elements import CONDITIONED, N_ELEMENTS, N_FIELDS, TYPE_FIELD


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
        if c.quantizer == "product":
            self.quantizer = ProductQuantizer(c.slice_codebook_size, N_ELEMENTS, c.slice_dim, c.commitment,
                                              c.ema_decay, c.ema_eps, c.dead_code_threshold)
        else:
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
        """Quantised latent [B, T, latent_dim] and codes ([B, T], or [B, T, 7] with one codebook
        per slice); never moves the codebook."""
        z = self._encoder_output(y)
        codes = self.quantizer.code_indices(z.reshape(-1, z.shape[-1]).float())
        codes = codes.view(*z.shape[:-1], *codes.shape[1:])
        return self.latent_from_codes(codes).to(z.dtype), codes

    def latent_from_codes(self, codes):
        """Codebook vectors for codes [B, T] (or [B, T, 7]) -> [B, T, latent_dim]."""
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
        h = self.decoder_input(self.embeddings(x, range(N_FIELDS)))
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
                "code_slots": self.quantizer.slot_indices(codes),
                "perplexity": perplexity, "log_probs": log_probs}

    # -- generation ----------------------------------------------------------------------

    def generate(self, latent, emotion, sampling: SamplingParams | None = None,
                 generator: torch.Generator | None = None, max_steps: int | None = None,
                 recurrent: bool = True, recompute: str = "window",
                 on_step: Callable[[], None] | None = None) -> list[np.ndarray]:
        """Decode latents [B, T, latent_dim] into words, all pieces as one batch.

        Each piece starts from an Emotion word with emotion[b] (1..4) and stops at EOS or
        after max_steps new words (default T - 1, at most T). Returns per piece an int array
        [T_b, 8]: the Emotion word, the generated words, and the EOS word if reached.
        recurrent=False re-runs the parallel decoder every step (reference path, O(T^2)):
        over the whole T-step window as the authors do (recompute="window"), or over the
        words so far (recompute="prefix"). All paths give the same words for the same seed.
        on_step, when given, is called before every step (the scripts adapt their CPU
        threads there: run.threads.adapt_threads).
        """
        return generate_words(self, latent, emotion, sampling, generator, max_steps, recurrent,
                              recompute, on_step)
