"""Emotion-conditioned autoregressive prior over compact codebook indices.

Input `[emotion_token, c_0, ..., c_{n-1}]`, target `[c_0, ..., c_{n-1}, ...]`, where the
compact codes are 0..n_codes-1 and emotion_token = n_codes + quadrant (1..4). A causal
linear transformer predicts log-softmax(logits / temperature); the temperature is part of
the model (applied in training too, as the authors do).

Beyond the paper, off by default: classifier-free guidance. A prior whose config has
emotion_dropout > 0 has one more input token, "no emotion" (n_codes + 5), which replaces the
emotion token of a piece with that probability in training; generation with guidance S
then samples from uncond + S * (cond - uncond) of the raw logits, both passes in one batch.

The prior over a product VQ-VAE's seven code streams (models/product_prior.py) subclasses
Prior and shares its generation loop through three hooks: the recurrent stepper, the
parallel outputs it equals, and how a step's output becomes the next codes.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.config import PriorConfig
from models.packed import PackedLinear, int8_weights, packed_stacks, step_stacks
from models.transformer import PositionalEncoding, TransformerStack
from models.sampling import sample_tokens


# The "no emotion" token takes the slot after the four quadrants' (config.null_token).
NO_EMOTION = 5


def emotion_token(quadrant, n_codes):
    """Input token of emotion quadrant 1..4 (0: unlabeled, NO_EMOTION: none): the tokens
    after the codes (n_codes: an int, or a tensor of per-stream counts)."""
    return n_codes + quadrant


def training_sequences(codes: torch.Tensor, emotion: torch.Tensor, n_codes) -> dict[str, torch.Tensor]:
    """What the prior learns from compact codes [N, T] and quadrants [N]: input
    [emotion_token, c_0 .. c_{T-1}] -> target [c_0 .. c_{T-1}, 0] (the authors' layout).
    A product prior's codes [N, T, S] with n_codes a list of S counts: the same per stream."""
    streams = codes.shape[2:]
    token = emotion_token(emotion.view(-1, 1, *[1] * len(streams)), torch.as_tensor(n_codes))
    token = token.expand(-1, 1, *streams)
    return {"inp": torch.cat([token, codes], dim=1), "target": torch.cat([codes, torch.zeros_like(token)], dim=1)}


def drop_emotion(inp: torch.Tensor, probability: float, null_token) -> torch.Tensor:
    """Training inputs [B, L] (or [B, L, S]) with each row's emotion token(s) at position 0
    replaced by the "no emotion" token(s) with `probability`. Draws from torch's global
    generator, as dropout does, so the training seed and the checkpointed RNG state
    (--resume) cover it."""
    dropped = torch.rand(inp.shape[0], device=inp.device) < probability
    inp = inp.clone()
    null = torch.as_tensor(null_token, device=inp.device).expand_as(inp[:, 0])
    inp[:, 0] = torch.where(dropped.view(-1, *[1] * (inp.dim() - 2)), null, inp[:, 0])
    return inp


def guided_logits(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Rows [cond; uncond] of raw logits [2b, V] -> uncond + scale * (cond - uncond) [b, V],
    in float32 at least (a 16-bit model's difference would lose the small gaps)."""
    cond, uncond = logits.to(torch.promote_types(logits.dtype, torch.float32)).chunk(2)
    return uncond + scale * (cond - uncond)


def prior_step(model, batch) -> dict[str, torch.Tensor]:
    """Training loss (negative log-likelihood of the next code) and accuracy of one batch, for
    either prior (a product prior's heads read the batch's true codes: teacher forcing)."""
    return next_code_loss(model(batch["inp"], batch["target"]), batch["target"])


def next_code_loss(logp, target) -> dict[str, torch.Tensor]:
    """Mean negative log-likelihood and accuracy of log-probabilities [..., V] for targets [...]."""
    loss = F.nll_loss(logp.reshape(-1, logp.shape[-1]).float(), target.reshape(-1))
    accuracy = (logp.argmax(-1) == target).float().mean()
    return {"loss": loss, "acc_mean": accuracy}


class Prior(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.emb_size)
        self.embedding_scale = math.sqrt(c.emb_size)
        # One embedding per code stream, concatenated (a product prior has several).
        self.input_projection = nn.Linear(c.streams * c.emb_size, c.d_model)
        self.position = PositionalEncoding(c.d_model, c.dropout, c.max_len)
        self.transformer = TransformerStack(c.d_model, c.layers, c.heads, c.decoder_attention,
                                            None, c.dropout, c.chunk_size)
        self._build_heads()

    def _build_heads(self):
        self.head = nn.Linear(self.config.d_model, self.config.n_codes)

    def emotion_token(self, quadrant):
        """Input token of emotion quadrant 1..4."""
        return emotion_token(quadrant, self.config.n_codes)

    def _embed(self, tokens):
        return self.input_projection(self.embedding(tokens) * self.embedding_scale)

    def states(self, inp):
        """inp [B, L] long -> transformer outputs [B, L, d_model]."""
        return self.transformer(self.position(self._embed(inp)))

    def logits(self, inp):
        """inp [B, L] long -> raw logits [B, L, n_codes] (before the temperature)."""
        return self.head(self.states(inp))

    def forward(self, inp, target=None):
        """inp [B, L] long -> log-probabilities [B, L, n_codes] at the model's temperature.
        In training with emotion_dropout > 0, some rows' emotion tokens become "no emotion".
        `target` (the next codes) is read by a product prior's heads only; one head needs none."""
        return F.log_softmax(self.logits(self._dropped(inp)) / self.config.temperature, dim=-1)

    def _dropped(self, inp):
        if self.training and self.config.emotion_dropout > 0:
            return drop_emotion(inp, self.config.emotion_dropout, self.emotion_token(NO_EMOTION))
        return inp

    def generate(self, emotion, n_steps: int, temperature: float = 0.3, top_p: float = 0.9,
                 generator: torch.Generator | None = None, recurrent: bool = True,
                 recompute: str = "window", on_step: Callable[[], None] | None = None,
                 guidance: float = 1.0):
        """Sample compact codes [B, n_steps] after the emotion tokens of emotion [B] (1..4)
        ([B, n_steps, S] from a product prior, models/product_prior.py).

        recurrent=True carries the attention state step to step (constant work per step);
        recurrent=False re-runs the transformer every step (reference path): over the
        whole n_steps window, zeros after the current step, as the authors do
        (recompute="window"), or over the tokens so far (recompute="prefix"). on_step,
        when given, is called before every step (see MusER.generate).

        guidance S != 1 (a prior with the "no emotion" token only): every step runs 2B rows,
        the emotion tokens and "no emotion", each with its own state, and samples once from
        uncond + S * (cond - uncond); both rows of a piece read the sampled code. S = 1 runs
        the B conditional rows alone, as without guidance.
        """
        if not math.isfinite(guidance):
            raise ValueError(f"guidance must be a finite number, got {guidance}")
        if guidance != 1 and not self.config.null_emotion:
            raise ValueError("guidance needs a prior trained with emotion_dropout > 0 "
                             "(this one has no 'no emotion' token)")
        if recompute not in ("window", "prefix"):
            raise ValueError(f"recompute must be 'window' or 'prefix', got {recompute!r}")
        if n_steps > self.config.max_len:
            raise ValueError(f"n_steps {n_steps} exceeds the prior's max_len {self.config.max_len}")
        # inference_mode has less per-op bookkeeping than no_grad; the clone outside it
        # makes the codes an ordinary tensor again, usable anywhere.
        with torch.inference_mode():
            codes = self._sample(emotion, n_steps, temperature, top_p, generator, recurrent,
                                 recompute, on_step, guidance)
        return codes.clone()

    def _sample(self, emotion, n_steps, temperature, top_p, generator, recurrent, recompute,
                on_step, guidance=1.0):
        was_training = self.training
        self.eval()
        device = self.input_projection.weight.device
        emotion = torch.as_tensor(emotion, device=device).long().reshape(-1)
        batch = emotion.shape[0]
        guided = guidance != 1
        groups = 2 if guided else 1             # rows [cond; uncond] when guided
        first = self.emotion_token(emotion)     # [B], or [B, S] for S code streams
        tokens = torch.zeros(groups * batch, n_steps + 1, *first.shape[1:], dtype=torch.long, device=device)
        tokens[:batch, 0] = first
        if guided:
            tokens[batch:, 0] = self.emotion_token(NO_EMOTION)

        def draw(logits):
            """Codes from raw logits [rows, V], guided when asked; the same for both rows of a piece."""
            if guided:
                logits = guided_logits(logits, guidance)
            return sample_tokens(logits, temperature, top_p, generator).repeat(groups)

        stepper = self._recurrent(groups * batch) if recurrent else None
        try:
            for t in range(n_steps):
                if on_step is not None:
                    on_step()
                if recurrent:
                    out = stepper.step(tokens[:, t], t)
                else:
                    window = n_steps if recompute == "window" else t + 1
                    out = self._step_outputs(tokens[:, :window])[:, t]
                tokens[:, t + 1] = self._next_codes(stepper or self, out, draw)
        finally:
            self.train(was_training)
        return tokens[:batch, 1:]

    # What generation steps: the recurrent stepper, the parallel outputs it equals, and
    # how a step's output becomes the next codes (a product prior has several heads).
    def _recurrent(self, rows: int):
        return RecurrentPrior(self, rows)

    def _step_outputs(self, inp):
        return self.logits(inp)

    def _next_codes(self, heads, logits, draw):
        return draw(logits)


class RecurrentPrior:
    """The prior one step at a time with recurrent attention state (constant work per
    step): raw next-code logits from the token at position t. Eval mode only (no dropout).
    Per-step work without modules: the embedding and input projection as one table, the
    positions added directly, the transformer and head packed."""

    @torch.no_grad()
    def __init__(self, prior: Prior, batch: int):
        self._start(prior, batch)
        self.inputs = prior._embed(torch.arange(prior.config.vocab_size, device=self.device))
        self.head = PackedLinear(prior.head.weight[None], prior.head.bias[None])
        if getattr(prior, "generation_int8", False):
            self.head = int8_weights(self.head)

    def _start(self, prior: Prior, batch: int):
        """The packed transformer, its recurrent state for `batch` rows and the positions."""
        weight = prior.input_projection.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.stack, self.traces = packed_stacks(prior, "prior", [prior.transformer])
        self.state = self.stack.init_state(batch, self.device, self.dtype)
        self.positions = prior.position.pe.to(self.dtype)

    def _states(self, x, t: int):
        """Input vectors x [b, d] at position t -> transformer outputs [1, b, d]."""
        h, self.state = step_stacks(self.stack, self.traces, (x + self.positions[t]).unsqueeze(0), self.state)
        return h

    def step(self, token, t: int):
        """token [b] at position t -> logits [b, n_codes] for position t + 1's code (call
        under torch.inference_mode or no_grad, as Prior.generate does)."""
        return self.head(self._states(self.inputs[token], t))[0]
