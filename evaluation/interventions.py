"""Interventions on the latent: does swapping slice k change element k, and only element k?

A swap-effect matrix [slices, elements]: piece A is decoded with its own latent and with
slice k taken from piece B; entry (k, e) is how much more often element e's tokens change
than they do between two decodes of A's own latent with independent sampling seeds (the
noise floor, so an intervention that does nothing reads 0, not the sampler's variability).
A latent disentangled by element gives a diagonal matrix.

Tokens are compared step by step over the steps both decodes have, where the element is in
use in the first one (evaluation.ordering.IN_USE): a step-aligned change rate. An inserted
or dropped word shifts what follows, so the rate also counts changes of structure; the floor
carries the same effect, which is why effects are read against it.
"""
from __future__ import annotations

import numpy as np

from evaluation.ordering import in_use_steps
from music.elements import ELEMENTS, N_ELEMENTS


def change_rates(words_a, words_b, event2word) -> np.ndarray:
    """[7] share of the aligned steps (element in use in `words_a`) whose token differs in
    `words_b`; NaN for an element never in use. words_*: [T, 8] token indices, valid steps only."""
    a, b = np.asarray(words_a), np.asarray(words_b)
    n = min(len(a), len(b))
    used = in_use_steps(a[None, :n], np.ones((1, n)), event2word)[:, 0]        # [7, n]
    differs = (a[:n, :N_ELEMENTS] != b[:n, :N_ELEMENTS]).T                      # [7, n]
    counts = used.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (differs & used).sum(axis=1) / counts, np.nan)


def swap_effect_matrix(swapped_rates, floor_rates) -> dict:
    """Effects of swapping each slice, from change rates measured over pairs of pieces.

    swapped_rates: [pairs, slices, elements] change rates of A decoded with slice k from B
    against A decoded as is; floor_rates: [pairs, elements] of two independent decodes of A.
    Returns the mean effect matrix (rates minus floor), the floor, and per slice the share of
    its positive effect that falls on its own element (1 for a diagonal matrix).
    """
    swapped, floor = np.asarray(swapped_rates, float), np.asarray(floor_rates, float)
    if swapped.ndim != 3 or floor.shape != (swapped.shape[0], swapped.shape[2]):
        raise ValueError(f"expected [pairs, slices, elements] and [pairs, elements], got "
                         f"{swapped.shape} and {floor.shape}")
    effect = np.nanmean(swapped - floor[:, None, :], axis=0)
    positive = np.clip(effect, 0, None)
    own = np.array([positive[k, k] if k < positive.shape[1] else np.nan for k in range(positive.shape[0])])
    with np.errstate(invalid="ignore", divide="ignore"):
        own_share = np.where(positive.sum(axis=1) > 0, own / positive.sum(axis=1), np.nan)
    return {"effect": effect, "floor": np.nanmean(floor, axis=0), "own_share": own_share,
            "elements": list(ELEMENTS[:effect.shape[1]])}
