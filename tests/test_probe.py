"""The disentanglement probe on latents with a known answer, and the per-piece statistics."""
import math

import numpy as np
import pytest

from evaluation import probe as P
from music.elements import ELEMENTS

N, S = 120, 12         # pieces, slice width (>= the 11 chord statistics)


def _groups(n):
    return np.array([f"song{i // 2}" for i in range(n)])   # two clips per song


def _statistics(rng):
    return {e: rng.normal(size=(N, len(P.STATISTICS[e]))) for e in ELEMENTS}


def _latent_from(statistics, order, rng):
    """Slice k holds a random linear image of element order[k]'s statistics."""
    slices = []
    for k in range(len(ELEMENTS)):
        stats = statistics[ELEMENTS[order[k]]]
        slices.append(stats @ rng.normal(size=(stats.shape[1], S)))
    return np.stack(slices, axis=1)       # [N, 7, S]


def test_piece_probe_is_diagonal_when_each_slice_is_its_elements_statistic():
    rng = np.random.default_rng(0)
    stats = _statistics(rng)
    matrix = P.piece_probe(_latent_from(stats, range(7), rng), stats, _groups(N))
    assert np.all(np.diag(matrix) > 0.95)
    off = matrix[~np.eye(7, dtype=bool)]
    assert np.all(off < 0.1)
    assert P.diagonal_share(matrix) > 0.9


def test_piece_probe_is_not_diagonal_when_slices_are_shuffled():
    rng = np.random.default_rng(1)
    stats = _statistics(rng)
    order = [1, 2, 3, 4, 5, 6, 0]        # slice k holds element k+1
    matrix = P.piece_probe(_latent_from(stats, order, rng), stats, _groups(N))
    assert np.all(np.diag(matrix) < 0.1)
    assert all(matrix[k, order[k]] > 0.95 for k in range(7))
    assert P.diagonal_share(matrix) < 0.1


def test_step_probe_diagonal_and_shuffled():
    rng = np.random.default_rng(2)
    n, t, vocab = 60, 40, 6
    tokens = rng.integers(0, vocab, size=(n, t, 8))
    table = rng.normal(size=(7, vocab, S)) * 3
    active = np.ones((n, t, 7), dtype=bool)
    for order, diagonal in (([0, 1, 2, 3, 4, 5, 6], True), ([6, 0, 1, 2, 3, 4, 5], False)):
        latent = np.concatenate([table[k][tokens[..., order[k]]] for k in range(7)], axis=-1)
        matrix = P.step_probe(latent, tokens, active, _groups(n), max_steps=1500)
        share = P.diagonal_share(matrix)
        if diagonal:
            assert np.all(np.diag(matrix) > 0.9) and share > 0.9
        else:
            assert np.all(np.diag(matrix) < 0.1) and share < 0.1


def test_diagonal_share_bounds_and_constant_columns():
    assert P.diagonal_share(np.eye(7)) == 1.0
    assert P.diagonal_share(np.ones((7, 7))) == pytest.approx(1 / 7)
    m = np.eye(7)
    m[:, 0] = np.nan                      # a constant statistic: no column score
    assert P.diagonal_share(m) == 1.0
    assert math.isnan(P.diagonal_share(np.full((7, 7), np.nan)))


def _word2event():
    return {
        "tempo": {0: 0, 1: "CONTI", 2: "Tempo_120", 3: "Tempo_60"},
        "chord": {0: 0, 1: "C_M", 2: "CONTI", 3: "A_m"},
        "bar-beat": {0: 0, 1: "Bar", 2: "Beat_0", 3: "Beat_4"},
        "type": {0: "EOS", 1: "Emotion", 2: "Metrical", 3: "Note"},
        "pitch": {0: 0, 1: "Note_Pitch_60", 2: "Note_Pitch_72"},
        "duration": {0: 0, 1: "Note_Duration_480", 2: "Note_Duration_960"},
        "velocity": {0: 0, 1: "Note_Velocity_40", 2: "Note_Velocity_80"},
        "emotion": {0: 0, 1: 1},
    }


def test_piece_statistics_of_a_known_piece():
    # Emotion; Bar; Beat_0 Tempo_120 C_M; two notes; Beat_4 Tempo_60 A_m; one note; Bar; Beat_0; note; EOS
    words = np.array([
        [0, 0, 0, 1, 0, 0, 0, 1],
        [0, 0, 1, 2, 0, 0, 0, 0],
        [2, 1, 2, 2, 0, 0, 0, 0],
        [0, 0, 0, 3, 1, 1, 1, 0],
        [0, 0, 0, 3, 2, 2, 2, 0],
        [3, 3, 3, 2, 0, 0, 0, 0],
        [0, 0, 0, 3, 1, 1, 1, 0],
        [0, 0, 1, 2, 0, 0, 0, 0],
        [1, 2, 2, 2, 0, 0, 0, 0],
        [0, 0, 0, 3, 2, 2, 2, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ])
    stats = P.piece_statistics(words, _word2event())
    assert stats["tempo"][0] == 90.0
    chord = dict(zip(P.CHORD_QUALITIES, stats["chord"]))
    assert chord["M"] == 0.5 and chord["m"] == 0.5 and sum(stats["chord"]) == 1.0
    assert stats["bar-beat"][0] == 3 / 2            # onsets at (1,0), (1,4), (2,0) over 2 bars
    assert stats["type"][0] == pytest.approx(4 / 11)
    np.testing.assert_allclose(stats["pitch"], [66.0, 12.0])
    assert stats["duration"][0] == 1.5
    np.testing.assert_allclose(stats["velocity"], [60.0, 20.0])


def test_active_steps_follow_the_word_type():
    tokens = np.zeros((1, 4, 8), dtype=int)
    tokens[0, :, 3] = [1, 2, 3, 0]                  # Emotion, Metrical, Note, EOS
    mask = np.array([[1, 1, 1, 0]])
    active = P.active_steps(tokens, mask, {"EOS": 0, "Emotion": 1, "Metrical": 2, "Note": 3})
    assert active[0, :, ELEMENTS.index("pitch")].tolist() == [False, False, True, False]
    assert active[0, :, ELEMENTS.index("chord")].tolist() == [False, True, False, False]
    assert active[0, :, ELEMENTS.index("type")].tolist() == [True, True, True, False]


def test_piece_statistics_skip_tokens_without_a_number():
    words = np.array([
        [0, 0, 1, 2, 0, 0, 0, 0],          # Bar
        [0, 0, 2, 2, 0, 0, 0, 0],          # Beat_0
        [0, 0, 0, 3, 1, 1, 1, 0],          # a note
        [0, 0, 0, 3, 2, 0, 0, 0],          # a generated note with unused duration and velocity
    ])
    stats = P.piece_statistics(words, _word2event())
    np.testing.assert_allclose(stats["pitch"], [66.0, 12.0])
    assert stats["duration"][0] == 1.0
    np.testing.assert_allclose(stats["velocity"], [40.0, 0.0])
