"""Batched temperature + nucleus (top-p) sampling, torch-native and seedable.

`sample_tokens` draws one token per row: softmax(logits / temperature), then keeps the
smallest set of most probable tokens whose total probability reaches `top_p` (the nucleus
of Holtzman et al. 2020), renormalises and samples from it by inverse CDF with one uniform
number per row from `generator`. The same generator state and the same logits give the
same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from music.elements import IDENTIFIERS


@dataclass
class FieldSampling:
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class SamplingParams:
    """Per-element sampling settings, one attribute per element (music.elements.IDENTIFIERS);
    defaults are the paper's."""
    tempo: FieldSampling = field(default_factory=lambda: FieldSampling(1.2, 0.9))
    chord: FieldSampling = field(default_factory=lambda: FieldSampling(1.0, 0.99))
    bar_beat: FieldSampling = field(default_factory=lambda: FieldSampling(1.2, 1.0))
    type: FieldSampling = field(default_factory=lambda: FieldSampling(1.0, 0.9))
    pitch: FieldSampling = field(default_factory=lambda: FieldSampling(1.0, 0.9))
    duration: FieldSampling = field(default_factory=lambda: FieldSampling(2.0, 0.9))
    velocity: FieldSampling = field(default_factory=lambda: FieldSampling(5.0, 1.0))

    def for_element(self, element: int) -> FieldSampling:
        """Settings of element `element` (its word column)."""
        return getattr(self, IDENTIFIERS[element])


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask [B, V] of the smallest set of most probable tokens with mass >= top_p.

    A token is kept when the mass of the tokens ranked strictly above it is below top_p,
    so the most probable token is always kept. Ties are broken by token index.
    """
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_above = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    keep_sorted = mass_above < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def row_settings(settings, rows: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row temperature and top_p columns [len(settings) * rows, 1] (float64) for
    sampling several fields in one `sample_tokens` call: field-major, `rows` rows each.
    Checks the values once here, so the sampling loop needs no host round trip."""
    for fs in settings:
        if not fs.temperature > 0 or not fs.top_p > 0:
            raise ValueError(f"per-row sampling needs temperature > 0 and top_p > 0 "
                             f"(got {fs.temperature}, {fs.top_p})")
    def column(values):
        return torch.tensor(values, dtype=torch.float64, device=device).repeat_interleave(rows)[:, None]
    return column([fs.temperature for fs in settings]), column([fs.top_p for fs in settings])


def sample_tokens(logits: torch.Tensor, temperature=1.0, top_p=1.0,
                  generator: torch.Generator | None = None) -> torch.LongTensor:
    """Sample one token per row of logits [B, V] (log-probabilities work too).

    temperature 0 means greedy (argmax). top_p >= 1 disables the nucleus. Both may also
    be per-row float64 columns [B, 1] from `row_settings` (temperatures > 0): then rows of
    several fields, their vocabularies padded with -inf logits, are sampled in one call,
    and draw exactly what one call per field would draw with the same generator.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
    per_row = isinstance(temperature, torch.Tensor)
    if not per_row:
        if temperature < 0 or not 0 < top_p:
            raise ValueError(f"need temperature >= 0 and top_p > 0 (got {temperature}, {top_p})")
        if temperature == 0:
            return logits.argmax(dim=-1)
    # float64 keeps the cumulative sums exact enough that tiny differences in the logits
    # (e.g. recurrent vs parallel decoding) practically never change a draw.
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if per_row:
        probs = probs * (nucleus_mask(probs, top_p) | (top_p >= 1.0))
    elif top_p < 1.0:
        probs = probs * nucleus_mask(probs, top_p)
    cdf = torch.cumsum(probs, dim=-1)
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape[0], 1, generator=generator, device=device,
                   dtype=torch.float64).to(logits.device)
    # First index whose cumulative mass exceeds u * total: zero-probability tokens are
    # never chosen.
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    # Rounding can push u * total onto the total; fall back to the last possible token.
    last_possible = probs.shape[-1] - 1 - torch.argmax((probs.flip(-1) > 0).int(), dim=-1,
                                                        keepdim=True)
    return torch.minimum(index, last_possible).squeeze(-1)
