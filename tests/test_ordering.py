"""evaluation.ordering on constructed readouts and latents whose answer is known."""
import numpy as np
import pytest

from evaluation.ordering import (bootstrap_ordering, fit_linear_readout, in_use_steps, musical_values,
                                 ordering_counts, ordering_matrix, own_slice_gap)
from music.elements import ELEMENTS, EVENT_TYPES


def constructed(n=48, t=20, seed=0, noise=0.0):
    """Tokens of 3 elements; readout 0 follows element 0, readout 1 reverses element 1,
    readout 2 ignores everything."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 6, size=(3, n, t)).astype(float)
    readouts = np.stack([targets[0] + noise * rng.standard_normal((n, t)),
                         -targets[1] + noise * rng.standard_normal((n, t)),
                         rng.standard_normal((n, t))])
    return readouts, targets, np.ones((3, n, t), dtype=bool)


def test_an_ordering_slice_scores_one_a_reversed_one_zero_and_noise_the_null():
    readouts, targets, used = constructed()
    m = ordering_matrix(*ordering_counts(readouts, targets, used))
    assert m[0, 0] == 1.0 and m[1, 1] == 0.0
    assert abs(m[2, 2] - 0.5) < 0.03 and abs(m[0, 1] - 0.5) < 0.03       # the null is 0.5
    summary = own_slice_gap(m)
    assert summary["own"][0] == 1.0 and summary["gap"][0] == pytest.approx(1.0 - max(m[1, 0], m[2, 0]))


def test_only_pairs_inside_a_group_where_the_element_is_in_use_and_tokens_differ_count():
    targets = np.array([[[1.0, 2.0], [1.0, 3.0], [5.0, 0.0]]])           # one element, 3 pieces, 2 steps
    readouts = np.array([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])
    used = np.array([[[True, True], [True, True], [True, False]]])
    agree, pairs = ordering_counts(readouts, targets, used, group=2)    # groups {0, 1} and {2}
    # pieces 0 and 1: step 0 has equal tokens (no pair), step 1 counts and agrees.
    assert pairs.tolist() == [[1, 1, 0]] and agree[0, 0].tolist() == [1, 1, 0]
    agree, pairs = ordering_counts(readouts, targets, used, group=3)
    # (0, 2) and (1, 2) at step 0: tokens 1 < 5 and 1 < 5, readouts 0 < 2 and 1 < 2; step 1 unused at 2.
    assert pairs.tolist() == [[2, 2, 2]] and ordering_matrix(agree, pairs)[0, 0] == 1.0


def test_readout_ties_count_one_half():
    targets = np.array([[[1.0], [2.0]]])
    agree, pairs = ordering_counts(np.zeros((1, 2, 1)), targets, np.ones((1, 2, 1), bool))
    assert ordering_matrix(agree, pairs)[0, 0] == 0.5


def test_bootstrap_intervals_cover_the_estimate_and_narrow_with_more_songs():
    readouts, targets, used = constructed(n=64, noise=4.0)
    agree, pairs = ordering_counts(readouts, targets, used)
    m = ordering_matrix(agree, pairs)
    songs = np.repeat(np.arange(32), 2)
    ci = bootstrap_ordering(agree, pairs, songs, draws=300)
    assert (ci["matrix"][0] <= m + 1e-12).all() and (m <= ci["matrix"][1] + 1e-12).all()
    assert ci["gap"][0, 0] > 0                                      # slice 0 clearly orders element 0
    few = bootstrap_ordering(agree, pairs, np.repeat(np.arange(4), 16), draws=300)
    assert (few["gap"][1, 0] - few["gap"][0, 0]) > (ci["gap"][1, 0] - ci["gap"][0, 0])


def test_fitted_readout_finds_an_ordering_along_any_direction():
    rng = np.random.default_rng(1)
    n, t, d = 32, 30, 6
    tokens = rng.integers(0, 8, size=(n, t)).astype(float)
    direction = rng.standard_normal(d)
    slice_values = tokens[..., None] * direction + 0.3 * rng.standard_normal((n, t, d))
    used = np.ones((n, t), bool)
    mean_readout = slice_values.mean(-1)
    w = fit_linear_readout(slice_values[:16], tokens[:16], used[:16])
    fitted = slice_values[16:] @ w
    score = lambda r: ordering_matrix(*ordering_counts(r[None], tokens[None, 16:], used[None, 16:]))[0, 0]
    assert score(fitted) > 0.9                                   # held-out pieces
    assert score(fitted) > score(mean_readout[16:])
    noise = rng.standard_normal((n, t, d))
    w = fit_linear_readout(noise[:16], tokens[:16], used[:16])
    assert abs(score(noise[16:] @ w) - 0.5) < 0.05                # nothing to find: the null


def test_in_use_masks_and_musical_values_follow_the_words():
    event2word = {"type": {t: k for k, t in enumerate(EVENT_TYPES)}, "bar-beat": {0: 0, "Bar": 1, "Beat_0": 2},
                  **{e: {0: 0} for e in ELEMENTS if e not in ("type", "bar-beat")}}
    t = event2word["type"]
    # words: Bar, Beat with tempo, Note, padding
    tokens = np.zeros((1, 4, 8), dtype=int)
    tokens[0, :, 3] = [t["Metrical"], t["Metrical"], t["Note"], t["EOS"]]
    tokens[0, :, 2] = [1, 2, 0, 0]
    used = in_use_steps(tokens, np.array([[1, 1, 1, 0]]), event2word)
    col = {e: used[k, 0].tolist() for k, e in enumerate(ELEMENTS)}
    assert col["tempo"] == col["chord"] == [False, True, False, False]
    assert col["bar-beat"] == [True, True, False, False] and col["pitch"] == [False, False, True, False]
    assert col["type"] == [True, True, True, False]
    word2event = {e: {0: 0, 1: f"{'Note_Pitch' if e == 'pitch' else 'X'}_64", 2: "CONTI"} for e in ELEMENTS}
    values = musical_values(np.array([[[0, 1, 2, 0, 1, 1, 1, 0]]]), word2event)
    assert values[ELEMENTS.index("pitch"), 0, 0] == 64 and np.isnan(values[ELEMENTS.index("chord"), 0, 0])
    assert np.isnan(values[ELEMENTS.index("bar-beat"), 0, 0])          # CONTI has no number
