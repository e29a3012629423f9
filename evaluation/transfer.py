"""Element transfer: swap the latent slices of chosen musical elements between pieces.

MusER's latent has one slice of `slice_dim` dimensions per element, in the order of
music.elements.ELEMENTS (slice k = dims [k * slice_dim, (k + 1) * slice_dim)). Replacing
piece A's slice of an element with piece B's should move that element of the decoded music towards B and leave the rest.
"""
from __future__ import annotations

import numpy as np

from music.elements import ELEMENTS, QUADRANTS, element_slice


def swap_elements(latent_a, latent_b, elements, slice_dim: int):
    """A copy of `latent_a` whose slices of `elements` come from `latent_b`.

    latent_a, latent_b: tensors or arrays of one shape [..., T, latent_dim]
    (latent_dim = N_ELEMENTS * slice_dim). Every other dimension is left bit-for-bit unchanged.
    """
    if tuple(latent_a.shape) != tuple(latent_b.shape):
        raise ValueError(f"latents differ in shape: {tuple(latent_a.shape)} vs {tuple(latent_b.shape)}")
    if latent_a.shape[-1] != len(ELEMENTS) * slice_dim:
        raise ValueError(f"latent width {latent_a.shape[-1]} is not "
                         f"{len(ELEMENTS)} x slice_dim {slice_dim}")
    mixed = latent_a.clone() if hasattr(latent_a, "clone") else latent_a.copy()
    for name in elements:
        dims = element_slice(name, slice_dim)
        mixed[..., dims] = latent_b[..., dims]
    return mixed


PAIR_MODES = ("first", "random")
# The authors' six demo transfers: (elements, from quadrant A, to quadrant B).
PAPER_TRANSFERS = ((("velocity",), 4, 1), (("tempo",), 4, 1), (("pitch",), 3, 1),
                   (("pitch", "duration", "velocity"), 3, 1), (("duration",), 3, 2),
                   (("chord",), 4, 2))


def quadrant_rows(emotion) -> dict:
    """{quadrant 1..4: its rows in data order} from per-piece labels (e.g. CPDataset.emotion);
    the same as the cls_{q}_idx arrays prepare_data.py writes to {name}_idx.npz."""
    emotion = np.asarray(emotion)
    return {q: np.flatnonzero(emotion == q) for q in QUADRANTS}


def transfer_pairs(class_indices, source: int, target: int, n: int, mode: str = "first",
                   seed: int = 13):
    """Rows (A, B) of the pieces paired for a transfer from quadrant `source` to `target`.

    class_indices: {quadrant: rows of that quadrant in data order} (music.data.load_class_indices,
    or {q: np.flatnonzero(emotion == q)}). mode="first": the first n rows of each quadrant,
    pair i = (i-th A, i-th B), as the authors do (their n is 20); a quadrant with fewer than
    n rows starts again from its first (`seed` is unused). mode="random": n rows of each
    drawn with numpy's default_rng(seed), A first, without replacement unless the quadrant
    has fewer than n. Returns two int64 arrays of length n.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if mode not in PAIR_MODES:
        raise ValueError(f"mode must be one of {PAIR_MODES}, got {mode!r}")
    rows = {}
    for q in (source, target):
        rows[q] = np.asarray(class_indices.get(q, ()), dtype=np.int64).reshape(-1)
        if len(rows[q]) == 0:
            raise ValueError(f"no pieces of quadrant Q{q}")
    if mode == "first":
        return np.resize(rows[source], n), np.resize(rows[target], n)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(rows[q], size=n, replace=len(rows[q]) < n) for q in (source, target)]
    return chosen[0].astype(np.int64), chosen[1].astype(np.int64)
