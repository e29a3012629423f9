"""Emotion-conditioned autoregressive prior over compact codebook indices.

Input `[emotion_token, c_0, ..., c_{n-1}]`, target `[c_0, ..., c_{n-1}, ...]`, where the
compact codes are 0..n_codes-1 and emotion_token = n_codes + quadrant (1..4). A causal
linear transformer predicts log-softmax(logits / temperature); the temperature is part of
the model (applied in training too, as the authors do).

Beyond the paper, off by default: classifier-free guidance. A prior whose config has
emotion_dropout > 0 has one more input token, "no emotion" (n_codes + 5), which replaces the
emotion token of a piece with that probability in training; generation with guidance S
then samples from uncond + S * (cond - uncond) of the raw logits, both passes in one batch.
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


def emotion_token(quadrant, n_codes: int):
    """Input token of emotion quadrant 1..4 (0: unlabeled): the tokens after the codes."""
    return n_codes + quadrant


def training_sequences(codes: torch.Tensor, emotion: torch.Tensor, n_codes: int) -> dict[str, torch.Tensor]:
    """What the prior learns from compact codes [N, T] and quadrants [N]: input
    [emotion_token, c_0 .. c_{T-1}] -> target [c_0 .. c_{T-1}, 0] (the authors' layout)."""
    token = emotion_token(emotion, n_codes).unsqueeze(1)
    return {"inp": torch.cat([token, codes], dim=1), "target": torch.cat([codes, torch.zeros_like(token)], dim=1)}


def drop_emotion(inp: torch.Tensor, probability: float, null_token: int) -> torch.Tensor:
    """Training inputs [B, L] with each row's emotion token (position 0) replaced by the
    "no emotion" token with `probability`. Draws from torch's global generator, as dropout
    does, so the training seed and the checkpointed RNG state (--resume) cover it."""
    dropped = torch.rand(inp.shape[0], device=inp.device) < probability
    inp = inp.clone()
    inp[:, 0] = torch.where(dropped, torch.full_like(inp[:, 0], null_token), inp[:, 0])
    return inp


def guided_logits(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Rows [cond; uncond] of raw logits [2b, V] -> uncond + scale * (cond - uncond) [b, V],
    in float32 at least (a 16-bit model's difference would lose the small gaps)."""
    cond, uncond = logits.to(torch.promote_types(logits.dtype, torch.float32)).chunk(2)
    return uncond + scale * (cond - uncond)


def prior_step(model, batch) -> dict[str, torch.Tensor]:
    """Training loss (negative log-likelihood of the next code) and accuracy of one batch."""
    logp = model(batch["inp"])
    loss = F.nll_loss(logp.reshape(-1, logp.shape[-1]).float(), batch["target"].reshape(-1))
    accuracy = (logp.argmax(-1) == batch["target"]).float().mean()
    return {"loss": loss, "acc_mean": accuracy}


class Prior(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.emb_size)
        self.embedding_scale = math.sqrt(c.emb_size)
        self.input_projection = nn.Linear(c.emb_size, c.d_model)
        self.position = PositionalEncoding(c.d_model, c.dropout, c.max_len)
        self.transformer = TransformerStack(c.d_model, c.layers, c.heads, c.decoder_attention,
                                            None, c.dropout, c.chunk_size)
        self.head = nn.Linear(c.d_model, c.n_codes)

    def emotion_token(self, quadrant):
        """Input token of emotion quadrant 1..4."""
        return emotion_token(quadrant, self.config.n_codes)

    def _embed(self, tokens):
        return self.input_projection(self.embedding(tokens) * self.embedding_scale)

    def logits(self, inp):
        """inp [B, L] long -> raw logits [B, L, n_codes] (before the temperature)."""
        h = self.transformer(self.position(self._embed(inp)))
        return self.head(h)

    def forward(self, inp):
        """inp [B, L] long -> log-probabilities [B, L, n_codes] at the model's temperature.
        In training with emotion_dropout > 0, some rows' emotion tokens become "no emotion"."""
        if self.training and self.config.emotion_dropout > 0:
            inp = drop_emotion(inp, self.config.emotion_dropout, self.config.null_token)
        return F.log_softmax(self.logits(inp) / self.config.temperature, dim=-1)

    def generate(self, emotion, n_steps: int, temperature: float = 0.3, top_p: float = 0.9,
                 generator: torch.Generator | None = None, recurrent: bool = True,
                 recompute: str = "window", on_step: Callable[[], None] | None = None,
                 guidance: float = 1.0):
        """Sample compact codes [B, n_steps] after the emotion tokens of emotion [B] (1..4).

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
        device = self.head.weight.device
        emotion = torch.as_tensor(emotion, device=device).long().reshape(-1)
        batch = emotion.shape[0]
        guided = guidance != 1
        groups = 2 if guided else 1             # rows [cond; uncond] when guided
        tokens = torch.zeros(groups * batch, n_steps + 1, dtype=torch.long, device=device)
        tokens[:batch, 0] = self.emotion_token(emotion)
        if guided:
            tokens[batch:, 0] = self.config.null_token
        stepper = RecurrentPrior(self, groups * batch) if recurrent else None
        try:
            for t in range(n_steps):
                if on_step is not None:
                    on_step()
                if recurrent:
                    logits = stepper.step(tokens[:, t], t)
                else:
                    window = n_steps if recompute == "window" else t + 1
                    logits = self.logits(tokens[:, :window])[:, t]
                if guided:
                    logits = guided_logits(logits, guidance)
                tokens[:, t + 1] = sample_tokens(logits, temperature, top_p, generator).repeat(groups)
        finally:
            self.train(was_training)
        return tokens[:batch, 1:]


class RecurrentPrior:
    """The prior one step at a time with recurrent attention state (constant work per
    step): raw next-code logits from the token at position t. Eval mode only (no dropout).
    Per-step work without modules: the embedding and input projection as one table, the
    positions added directly, the transformer and head packed."""

    @torch.no_grad()
    def __init__(self, prior: Prior, batch: int):
        device, dtype = prior.head.weight.device, prior.head.weight.dtype
        self.stack, self.traces = packed_stacks(prior, "prior", [prior.transformer])
        self.state = self.stack.init_state(batch, device, dtype)
        self.inputs = prior._embed(torch.arange(prior.config.vocab_size, device=device))
        self.positions = prior.position.pe.to(dtype)
        self.head = PackedLinear(prior.head.weight[None], prior.head.bias[None])
        if getattr(prior, "generation_int8", False):
            self.head = int8_weights(self.head)

    def step(self, token, t: int):
        """token [b] at position t -> logits [b, n_codes] for position t + 1's code (call
        under torch.inference_mode or no_grad, as Prior.generate does)."""
        h, self.state = step_stacks(self.stack, self.traces,
                                    (self.inputs[token] + self.positions[t]).unsqueeze(0), self.state)
        return self.head(h)[0]

