"""The prior over a product VQ-VAE's codes: seven code streams, compound-word style.

A product VQ-VAE (--quantizer product) has one codebook per element slice, so each step
holds S = 7 codes. One causal transformer runs over the steps; its input at a step is the
concatenation of the S code embeddings, projected to d_model (the compound-word
transformer's input; a sum of per-stream tables after the projection, each stream kept in
its own subspace before it). The layout is the joint prior's, per stream: input
[emotion, c_0 .. c_{T-1}] -> target [c_0 .. c_{T-1}, 0], where stream k's tokens are its
compact codes 0..n_k-1 and then its emotion tokens n_k + quadrant (and "no emotion").

S heads then draw a step's codes in slice order 0..S-1, head k reading the transformer
state plus the embeddings of the codes drawn before it at this step (codes 0..k-1), as
the compound-word transformer's element heads read the type drawn first:

    u_0 = h,    u_{k+1} = u_k + condition_k(e_k),    logits_k = head_k(u_k)

with e_k the (input) embedding of code k: the compound-word transformer's linear
projection of [state, embedding], its state block folded into each head. Training feeds
the true codes of the step (teacher forcing). Being linear in the codes drawn, it steps
at little cost: each drawn code adds one row of a precomputed table to the later heads'
logits (RecurrentProductPrior). Temperature, emotion dropout and classifier-free guidance
(applied to each head's logits) are the joint prior's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import PriorConfig
from models.packed import PackedLinear, int8_weights
from models.prior import Prior, RecurrentPrior, emotion_token


def prior_for(config: PriorConfig) -> Prior:
    """The prior a config describes: over one joint codebook's codes, or one stream per slice."""
    return ProductPrior(config) if config.quantizer == "product" else Prior(config)


class ProductPrior(Prior):
    """Prior over S code streams (see the module docstring); generation is Prior.generate's,
    returning codes [B, n_steps, S]."""

    def _build_heads(self):
        c = self.config
        self.streams = c.streams
        # Stream k's tokens are rows offsets[k] .. of the one embedding table.
        offsets = torch.tensor([0, *c.stream_vocab_sizes[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("stream_codes", torch.tensor(c.stream_codes), persistent=False)
        self.heads = nn.ModuleList(nn.Linear(c.d_model, n) for n in c.stream_codes)
        self.condition = nn.ModuleList(nn.Linear(c.emb_size, c.d_model) for _ in range(self.streams - 1))

    def emotion_token(self, quadrant):
        """Input tokens [..., S] of emotion quadrant(s) 1..4, one per stream."""
        quadrant = torch.as_tensor(quadrant, device=self.stream_codes.device)
        return emotion_token(quadrant.unsqueeze(-1), self.stream_codes)

    def _code_embeddings(self, tokens):
        """tokens [..., S] -> scaled embeddings [..., S, emb_size]."""
        return self.embedding(tokens + self.offsets) * self.embedding_scale

    def _conditioning(self, k: int, code):
        """What code(s) [...] of stream k add to the input of the heads after k: [..., d_model]."""
        return self.condition[k](self.embedding(code + self.offsets[k]) * self.embedding_scale)

    def _embed(self, tokens):
        return self.input_projection(self._code_embeddings(tokens).flatten(-2))

    def head_logits(self, h, codes):
        """Raw logits [..., S, max n_k] of every head (padded with -inf) from transformer
        outputs h [..., d_model], head k conditioned on codes [..., S] 0..k-1 of the same step."""
        u, logits = h, []
        for k, head in enumerate(self.heads):
            logits.append(head(u))
            if k + 1 < self.streams:
                u = u + self._conditioning(k, codes[..., k])
        width = max(self.config.stream_codes)
        return torch.stack([F.pad(l, (0, width - l.shape[-1]), value=float("-inf")) for l in logits], -2)

    def logits(self, inp, target):
        """inp [B, L, S], target [B, L, S] (the next step's codes) -> raw logits [B, L, S, max n_k]."""
        return self.head_logits(self.states(inp), target)

    def forward(self, inp, target):
        """Log-probabilities [B, L, S, max n_k] (padding -inf) at the model's temperature, the
        heads conditioned on the target codes (teacher forcing)."""
        return F.log_softmax(self.logits(self._dropped(inp), target) / self.config.temperature, dim=-1)

    def sample_heads(self, h, draw):
        """Codes [rows, S] of one step from transformer outputs h [rows, d_model], drawn head by
        head: draw(logits [rows, n_k]) -> codes [rows] (the reference for RecurrentProductPrior)."""
        u, codes = h, []
        for k, head in enumerate(self.heads):
            codes.append(draw(head(u)))
            if k + 1 < self.streams:
                u = u + self._conditioning(k, codes[k])
        return torch.stack(codes, -1)

    def _recurrent(self, rows: int):
        return RecurrentProductPrior(self, rows)

    def _step_outputs(self, inp):
        return self.states(inp)

    def _next_codes(self, heads, h, draw):
        return heads.sample_heads(h, draw)


class RecurrentProductPrior(RecurrentPrior):
    """ProductPrior one step at a time (constant work per step), as RecurrentPrior: the
    input embedding and projection as one table per stream, the transformer and the S heads
    packed (one product for all heads). Each drawn code adds its row of a precomputed table,
    condition_k(e_k) through every later head, to those heads' logits."""

    @torch.no_grad()
    def __init__(self, prior: ProductPrior, batch: int):
        self._start(prior, batch)
        self.offsets = prior.offsets
        self.inputs = _input_tables(prior)
        self.input_bias = prior.input_projection.bias.detach()
        heads = prior.heads
        self.head = PackedLinear(torch.cat([h.weight for h in heads])[None], torch.cat([h.bias for h in heads])[None])
        if getattr(prior, "generation_int8", False):
            self.head = int8_weights(self.head)
        ends = torch.tensor(prior.config.stream_codes).cumsum(0).tolist()
        self.spans = list(zip([0, *ends[:-1]], ends))
        self.later = [_later_logits(prior, k) for k in range(prior.streams - 1)]

    def step(self, token, t: int):
        """tokens [b, S] at position t -> logits [b, sum n_k] of every head before any code
        of position t + 1 is drawn (see sample_heads)."""
        x = self.inputs[token + self.offsets].sum(-2) + self.input_bias
        return self.head(self._states(x, t))[0]

    def sample_heads(self, logits, draw):
        """Codes [b, S] of one step from `step`'s logits, drawn head by head as
        ProductPrior.sample_heads draws them."""
        logits, codes = logits.clone(), []
        for k, (start, end) in enumerate(self.spans):
            codes.append(draw(logits[:, start:end]))
            if k < len(self.later):
                logits[:, end:] += self.later[k][codes[k]]
        return torch.stack(codes, -1)


def _input_tables(prior: ProductPrior):
    """input_projection(concatenated embeddings) as a sum of rows, one table block per
    stream: [vocab_size, d_model], the bias left out."""
    width = prior.config.emb_size
    rows = prior.embedding.weight * prior.embedding_scale
    blocks = prior.input_projection.weight.split(width, dim=1)
    ends = torch.tensor(prior.config.stream_vocab_sizes).cumsum(0).tolist()
    return torch.cat([rows[start:end] @ block.t() for block, start, end in zip(blocks, [0, *ends[:-1]], ends)])


def _later_logits(prior: ProductPrior, k: int):
    """What drawing code c of stream k adds to the logits of heads k+1..S-1 (their columns
    of the packed heads): [n_k, sum of their n], by linearity of the heads."""
    condition = prior._conditioning(k, torch.arange(prior.config.stream_codes[k], device=prior.offsets.device))
    weight = torch.cat([h.weight for h in prior.heads[k + 1:]])
    return condition @ weight.t()
