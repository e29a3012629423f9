"""Element transfer: swap the latent slices of chosen musical elements between pieces.

MusER's latent has one slice of `slice_dim` dimensions per element, in the order of
music.elements.ELEMENTS (slice k = dims [k * slice_dim, (k + 1) * slice_dim)). Replacing
piece A's slice of an element with piece B's should move that element of the decoded music
towards B and leave the rest.

Measured with controls: decode_transfer samples A and B twice each, the transferred latent,
and A's own latent under the transferred piece's tag; moved_fraction reads 0 for a statistic
the transfer does not reach and 1 for one that ends up distributed like B's, and
emotion_shift compares the transferred pieces with that same-tag control.
"""
from __future__ import annotations

import math

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


# ---------------------------------------------------------------------------------------
# Transfer measured with controls
# ---------------------------------------------------------------------------------------
# Every decode is a sample, so one decode of A against one of B cannot tell a move from
# noise: each reference is decoded twice, independently, and the tag's own effect is
# decoded apart from the latent's.
TRANSFER_ROLES = ("A", "A again", "B", "B again", "transferred", "control")


def _tags(tag, n: int) -> list[int]:
    tags = [int(t) for t in np.broadcast_to(np.asarray(tag), (n,))]
    bad = [t for t in tags if t not in QUADRANTS]
    if bad:
        raise ValueError(f"emotion tags must be quadrants 1..4, got {bad[0]}")
    return tags


def decode_transfer(model, latent_a, latent_b, elements, source_tag, target_tag, seed: int,
                    sampling=None, max_steps=None, on_step=None) -> dict[str, list]:
    """Decode every role of a transfer of `elements` from B into A, in one batch.

    latent_a, latent_b: tensors [n, T, latent_dim], pair i = (latent_a[i], latent_b[i]).
    source_tag, target_tag: quadrant (1..4), one for all pairs or one per pair.
    Roles (TRANSFER_ROLES), n pieces each:
      "A", "A again"  A's latent with the source tag, two independent samples;
      "B", "B again"  B's latent with the target tag, likewise;
      "transferred"   A's latent with B's slices of `elements`, target tag;
      "control"       A's own latent with the target tag (what the tag alone does).
    All 6n rows go through one model.generate call with a torch.Generator seeded `seed`
    on the latents' device, so every row is an independent sample and the result depends
    only on the inputs and the seed. Only model.generate and model.config.slice_dim are
    used. Returns {role: list of n int arrays [T_i, 8]}.
    """
    import torch

    n = int(latent_a.shape[0])
    if n == 0:
        raise ValueError("no pairs to decode")
    mixed = swap_elements(latent_a, latent_b, elements, model.config.slice_dim)
    source, target = _tags(source_tag, n), _tags(target_tag, n)
    batch = {"A": (latent_a, source), "A again": (latent_a, source), "B": (latent_b, target),
             "B again": (latent_b, target), "transferred": (mixed, target),
             "control": (latent_a, target)}
    latent = torch.cat([batch[role][0] for role in TRANSFER_ROLES])
    emotion = torch.tensor([t for role in TRANSFER_ROLES for t in batch[role][1]],
                           dtype=torch.long, device=latent.device)
    generator = torch.Generator(device=latent.device).manual_seed(int(seed))
    with torch.no_grad():
        words = model.generate(latent, emotion, sampling, generator=generator,
                               max_steps=max_steps, on_step=on_step)
    return {role: list(words[k * n:(k + 1) * n]) for k, role in enumerate(TRANSFER_ROLES)}


def _pair_columns(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[:, None] if x.ndim == 1 else x


def moved_fraction_per_pair(a, a_again, b, b_again, moved, scale=1.0):
    """Per-pair terms of `moved_fraction`: (numerator [pairs], denominator [pairs]).

    numerator_i = <moved_i - a_again_i, b_i - a_i>, denominator_i = <b_again_i - a_again_i,
    b_i - a_i> over the columns of the standardised statistics (each array [pairs, columns],
    or [pairs] for one column, divided by `scale`, [columns] or a number). A column whose
    value is undefined (NaN) in any role is left out of that pair's terms. Sums over a
    bootstrap sample of pairs give its moved fraction.
    """
    roles = [_pair_columns(x) / np.asarray(scale, dtype=float) for x in (a, a_again, b, b_again, moved)]
    if len({r.shape for r in roles}) != 1:
        raise ValueError(f"role statistics differ in shape: {[r.shape for r in roles]}")
    a, a_again, b, b_again, moved = roles
    ok = np.all([np.isfinite(r) for r in roles], axis=0)
    direction = np.where(ok, b - a, 0.0)
    numerator = (np.where(ok, moved - a_again, 0.0) * direction).sum(axis=1)
    denominator = (np.where(ok, b_again - a_again, 0.0) * direction).sum(axis=1)
    return numerator, denominator


def moved_fraction(a, a_again, b, b_again, moved, scale=1.0) -> float:
    """How far `moved` went from A towards B: sum <moved - a_again, b - a> /
    sum <b_again - a_again, b - a> over pairs and columns of the standardised statistics.

    Every role is an independent decode (decode_transfer), so numerator and denominator
    estimate <mu_moved - mu_A, mu_B - mu_A> and |mu_B - mu_A|^2 without the sampling noise
    that a difference of single decodes brings into both: 0 when `moved` is distributed
    like A (a statistic the transfer does not reach), 1 when it is distributed like B.
    (Projecting single decodes, <moved - a, b - a> / |b - a|^2, reads 1/2 for pure noise.)
    When the statistic does not tell B from A at all, the denominator is itself noise
    around 0 and the ratio means nothing: read the denominator's interval first
    (moved_fraction_per_pair). NaN when the denominator is not positive.
    """
    numerator, denominator = moved_fraction_per_pair(a, a_again, b, b_again, moved, scale)
    total = float(denominator.sum())
    return float(numerator.sum()) / total if total > 1e-12 else math.nan


def emotion_shift_per_pair(predicted_transferred, predicted_control, target) -> np.ndarray:
    """Per pair: 1 if the transferred piece is predicted as `target` (a quadrant, or one per
    pair), minus 1 if the control (same A latent, same tag) is: values -1, 0, 1."""
    transferred = np.asarray(predicted_transferred).reshape(-1)
    control = np.asarray(predicted_control).reshape(-1)
    if transferred.shape != control.shape:
        raise ValueError(f"{len(transferred)} transferred predictions but {len(control)} controls")
    target = np.broadcast_to(np.asarray(target), transferred.shape)
    return (transferred == target).astype(float) - (control == target).astype(float)


def emotion_shift(predicted_transferred, predicted_control, target) -> float:
    """Share of transferred pieces predicted as the target quadrant minus the control's share.

    The control carries the same tag, so what the tag alone does cancels: 0 when the
    swapped slices change nothing the classifier sees. NaN for no pairs."""
    shift = emotion_shift_per_pair(predicted_transferred, predicted_control, target)
    return float(shift.mean()) if len(shift) else math.nan


def distinct_song_pairs(rows_a_pool, rows_b_pool, songs, n: int, seed: int,
                        quadrants: tuple | None = None):
    """n random pairs (A, B) of rows whose pieces come from different songs.

    rows_a_pool, rows_b_pool: candidate rows (e.g. a source and a target quadrant's rows);
    songs: one song id per data row (music.elements.song_of_name of each clip name), indexed
    by row. A is drawn from the A rows that have a B of another song, without replacement
    unless there are fewer than n; each B is drawn from the B rows of another song than its
    A, unused ones first. numpy default_rng(seed) draws everything. quadrants: (source,
    target), named in the error. Returns two int64 arrays of length n. ValueError when no
    pair from different songs exists.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    pool_a = np.asarray(rows_a_pool, dtype=np.int64).reshape(-1)
    pool_b = np.asarray(rows_b_pool, dtype=np.int64).reshape(-1)
    songs = np.asarray(songs)
    song_b = songs[pool_b]
    eligible = np.array([r for r in pool_a if np.any(song_b != songs[r])], dtype=np.int64)
    if len(eligible) == 0:
        where = (f"Q{quadrants[0]} and Q{quadrants[1]}" if quadrants is not None
                 else "the A and B rows")
        raise ValueError(f"no pair of pieces from different songs in {where} "
                         f"({len(pool_a)} and {len(pool_b)} pieces)")
    rng = np.random.default_rng(seed)
    rows_a = rng.choice(eligible, size=n, replace=len(eligible) < n)
    rows_b, used = np.empty(n, dtype=np.int64), np.zeros(len(pool_b), dtype=bool)
    for i, row in enumerate(rows_a):
        other = song_b != songs[row]
        fresh = other & ~used
        pick = rng.choice(np.flatnonzero(fresh if fresh.any() else other))
        used[pick] = True
        rows_b[i] = pool_b[pick]
    return rows_a.astype(np.int64), rows_b
