"""The regulariser's own measure: how often a latent slice orders pairs of pieces the way
an element's tokens do (a slice x element ordering matrix).

MusER's regulariser reduces each slice to one value per step and pushes, for every pair of
pieces of a batch at the same step, tanh(z_i - z_j) towards sign(x_i - x_j), x being the
element's token. This module scores exactly that: pairs of pieces taken inside groups of
`group` pieces (a training batch), at the same step, where the element is in use at both
steps and the tokens differ; a pair agrees when the readout difference has the sign of the
token difference (a readout tie counts one half). A readout that ignores the element scores
0.5 (the null); one that orders it perfectly, 1.

Readouts are given as values [slices, N, T]: MusER's own frozen DR (the regularised quantity,
computed by the model), or `fit_linear_readout`, fitted with the same pairwise loss on other
pieces (so a model trained without the regulariser can be read the same way). Pair counts are
kept per piece, so intervals can resample songs (`bootstrap_ordering`).
"""
from __future__ import annotations

import numpy as np

from music.elements import ELEMENTS, N_ELEMENTS, NUMERIC_ELEMENTS, TYPE_FIELD, per_element, token_number

# Where each element is in use: the word type, and whether Bar words are left out (tempo and
# chord are never set on a Bar word, whose 0 would only give the word kind away).
IN_USE = per_element({"tempo": ("Metrical", False), "chord": ("Metrical", False),
                      "bar-beat": ("Metrical", True), "type": (None, True),
                      "pitch": ("Note", True), "duration": ("Note", True), "velocity": ("Note", True)})


def in_use_steps(tokens, mask, event2word) -> np.ndarray:
    """[7, N, T] bool: the valid steps at which each element is in use (see IN_USE)."""
    tokens = np.asarray(tokens)
    valid = np.asarray(mask) > 0
    types = tokens[..., TYPE_FIELD]
    is_bar = tokens[..., ELEMENTS.index("bar-beat")] == event2word["bar-beat"].get("Bar", -1)
    used = np.zeros((N_ELEMENTS,) + types.shape, dtype=bool)
    for j, element in enumerate(ELEMENTS):
        kind, with_bars = IN_USE[element]
        used[j] = valid if kind is None else valid & (types == event2word["type"][kind])
        if not with_bars:
            used[j] &= ~is_bar
    return used


def musical_values(tokens, word2event) -> np.ndarray:
    """[7, N, T] float: each token's number ('Note_Pitch_60' -> 60) for the elements with a
    musical order; NaN for chord and type, and for tokens without a number."""
    tokens = np.asarray(tokens)
    values = np.full((N_ELEMENTS,) + tokens.shape[:-1], np.nan)
    for j, element in enumerate(ELEMENTS):
        if element not in NUMERIC_ELEMENTS:
            continue
        table = np.array([np.nan if token_number(word2event[element].get(i)) is None
                          else float(token_number(word2event[element][i]))
                          for i in range(max(word2event[element]) + 1)])
        values[j] = table[tokens[..., j]]
    return values


def _pairs(n: int, group: int):
    for start in range(0, n - 1, group):
        members = range(start, min(start + group, n))
        for i in members:
            for j in members:
                if i < j:
                    yield i, j


def ordering_counts(readouts, targets, in_use, group: int = 16):
    """(agree [S, E, N], pairs [E, N]): per piece, the pairs it is part of and how many of
    them each slice's readout orders as each element's targets do.

    readouts [S, N, T]; targets [E, N, T] (token indices or musical values; NaN = unordered);
    in_use [E, N, T] bool. Pieces are paired inside consecutive groups of `group`.
    """
    readouts, targets, in_use = np.asarray(readouts, float), np.asarray(targets, float), np.asarray(in_use)
    slices, n = readouts.shape[:2]
    elements = targets.shape[0]
    agree = np.zeros((slices, elements, n))
    pairs = np.zeros((elements, n))
    for i, j in _pairs(n, group):
        token_sign = np.sign(targets[:, i] - targets[:, j])                     # [E, T]
        counted = in_use[:, i] & in_use[:, j] & (token_sign != 0) & ~np.isnan(token_sign)
        readout_sign = np.sign(readouts[:, i] - readouts[:, j])                 # [S, T]
        score = np.where(readout_sign[:, None] == 0, 0.5,
                         readout_sign[:, None] == token_sign[None])             # [S, E, T]
        agreed = (score * counted[None]).sum(-1)
        total = counted.sum(-1)
        agree[:, :, i] += agreed
        agree[:, :, j] += agreed
        pairs[:, i] += total
        pairs[:, j] += total
    return agree, pairs


def ordering_matrix(agree, pairs, weights=None) -> np.ndarray:
    """[S, E] share of agreeing pairs (NaN where an element has no pair); `weights` [N]
    weigh the pieces (a bootstrap draw)."""
    w = np.ones(agree.shape[-1]) if weights is None else np.asarray(weights, float)
    total = (pairs * w).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (agree * w).sum(-1) / total, np.nan)


def own_slice_gap(matrix) -> dict:
    """Per element: its own slice's score, the best other slice's, and own minus best other."""
    matrix = np.asarray(matrix)
    own = np.diag(matrix)
    others = matrix.copy()
    np.fill_diagonal(others, -np.inf)
    best_other = np.where(np.isnan(own), np.nan, np.nanmax(np.where(np.isnan(others), -np.inf, others), axis=0))
    return {"own": own, "best_other": best_other, "gap": own - best_other}


def bootstrap_ordering(agree, pairs, songs, draws: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile intervals over songs (resampled with replacement) of the ordering matrix and
    of each element's gap: {'matrix': [2, S, E], 'gap': [2, E]} (lower, upper)."""
    songs = np.asarray(songs)
    names, index = np.unique(songs, return_inverse=True)
    rng = np.random.default_rng(seed)
    matrices, gaps = [], []
    for _ in range(draws):
        counts = np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names))
        m = ordering_matrix(agree, pairs, counts[index])
        matrices.append(m)
        gaps.append(own_slice_gap(m)["gap"])
    tail = (1 - level) / 2 * 100
    return {"matrix": np.nanpercentile(matrices, [tail, 100 - tail], axis=0),
            "gap": np.nanpercentile(gaps, [tail, 100 - tail], axis=0)}


def fit_linear_readout(slice_values, targets, in_use, group: int = 16, steps: int = 300,
                       rate: float = 0.5, seed: int = 0, max_pairs: int = 20000) -> np.ndarray:
    """A readout z = w . s of one slice [N, T, d], fitted to order the pairs of `targets` [N, T]
    (where `in_use` [N, T]) with the regulariser's loss, mean |tanh(z_i - z_j) - sign(x_i - x_j)|,
    which for signs +-1 is 1 - mean sign * tanh(dz). At most `max_pairs` step-aligned pairs,
    drawn at random, are fitted. Returns w [d] (unit scale is learned)."""
    s = np.asarray(slice_values, float)
    x = np.asarray(targets, float)
    diffs, signs = [], []
    for i, j in _pairs(len(s), group):
        sign = np.sign(x[i] - x[j])
        keep = in_use[i] & in_use[j] & (sign != 0) & ~np.isnan(sign)
        diffs.append(s[i][keep] - s[j][keep])
        signs.append(sign[keep])
    d = np.concatenate(diffs) if diffs else np.zeros((0, s.shape[-1]))
    sign = np.concatenate(signs) if signs else np.zeros(0)
    rng = np.random.default_rng(seed)
    if len(sign) > max_pairs:
        keep = rng.choice(len(sign), size=max_pairs, replace=False)
        d, sign = d[keep], sign[keep]
    w = rng.standard_normal(s.shape[-1]) * 0.01
    if len(sign) == 0:
        return w
    scale = d.std() or 1.0
    for _ in range(steps):
        t = np.tanh(d @ w)
        gradient = (sign * (1 - t * t)) @ d / len(sign)     # of mean sign * tanh(d w)
        w += rate * gradient / scale ** 2
    return w
