"""The disentanglement probe on latents with a known answer, its controls, and the per-piece statistics."""
import math

import numpy as np
import pytest

from evaluation import probe as P
from evaluation.ordering import in_use_steps
from music.elements import ELEMENTS

N, S = 120, 12         # pieces, slice width
TEMPO, CHORD, BAR_BEAT, TYPE, PITCH, DURATION, VELOCITY = range(7)


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
    in_use = np.ones((7, n, t), dtype=bool)
    for order, diagonal in (([0, 1, 2, 3, 4, 5, 6], True), ([6, 0, 1, 2, 3, 4, 5], False)):
        latent = np.concatenate([table[k][tokens[..., order[k]]] for k in range(7)], axis=-1)
        matrix = P.step_probe(latent, tokens, in_use, _groups(n), max_steps=1500)
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
    assert stats["chord"].tolist() == [0.0]          # one major, one minor chord
    assert stats["bar-beat"][0] == 3 / 2            # onsets at (1,0), (1,4), (2,0) over 2 bars
    assert stats["type"][0] == pytest.approx(4 / 11)
    np.testing.assert_allclose(stats["pitch"], [66.0, 12.0])
    assert stats["duration"][0] == 1.5
    np.testing.assert_allclose(stats["velocity"], [60.0, 20.0])


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


# ---------------------------------------------------------------------------------------
# The chord summary
# ---------------------------------------------------------------------------------------
def _chord_piece(chords, word2event):
    """Bar, then one Beat_0 Metrical word per chord name (and a note after each)."""
    index = {name: i for i, name in word2event["chord"].items()}
    words = [[0, 0, 1, 2, 0, 0, 0, 0]]
    for chord in chords:
        words += [[2, index[chord], 2, 2, 0, 0, 0, 0], [0, 0, 0, 3, 1, 1, 1, 0]]
    return np.array(words)


def test_chord_summary_is_major_like_minus_minor_like_share():
    assert set(P.MAJOR_LIKE) <= set(P.CHORD_QUALITIES) and set(P.MINOR_LIKE) <= set(P.CHORD_QUALITIES)
    assert not set(P.MAJOR_LIKE) & set(P.MINOR_LIKE)
    assert {"M", "7", "M7"} <= set(P.MAJOR_LIKE) and {"m", "m7", "o"} <= set(P.MINOR_LIKE)
    assert P.STATISTICS["chord"] == ("major-like minus minor-like share",)
    w2e = _word2event()
    w2e["chord"] = {0: 0, 1: "CONTI", 2: "C_M", 3: "G_7", 4: "A_m", 5: "D_sus4", 6: "N_N",
                    7: "B_/o7", 8: "F_M7"}

    def summary(chords):
        return P.piece_statistics(_chord_piece(chords, w2e), w2e)["chord"]

    # Chords with a quality: C_M, G_7, F_M7 (major-like), A_m (minor-like), D_sus4 (neither);
    # CONTI and N_N have no quality and do not count.
    stats = summary(["C_M", "G_7", "CONTI", "A_m", "D_sus4", "N_N", "F_M7"])
    assert stats.shape == (1,) and stats[0] == pytest.approx((3 - 1) / 5)
    assert summary(["A_m", "B_/o7", "C_M"])[0] == pytest.approx(-1 / 3)
    assert summary(["C_M", "C_M"])[0] == 1.0 and summary(["D_sus4"])[0] == 0.0
    assert math.isnan(summary(["CONTI", "N_N"])[0]) and math.isnan(summary([])[0])


# ---------------------------------------------------------------------------------------
# Per step: tempo and chord are not scored on Bar words
# ---------------------------------------------------------------------------------------
EVENT2WORD = {"bar-beat": {"Bar": 1, "Beat_0": 2, "Beat_4": 3},
              "type": {"EOS": 0, "Emotion": 1, "Metrical": 2, "Note": 3}}


def test_step_probe_leaves_bar_words_out_for_tempo_and_chord():
    rng = np.random.default_rng(3)
    n, t = 60, 40
    tokens = np.zeros((n, t, 8), dtype=int)
    tokens[..., TYPE] = 2                                              # every word Metrical
    bar = rng.random((n, t)) < 0.5
    tokens[..., BAR_BEAT] = np.where(bar, 1, rng.integers(2, 4, (n, t)))
    # Tempo and chord: "unused" 0 on Bar words, random otherwise, so only the word kind
    # (Bar or not) tells anything about them.
    for j in (TEMPO, CHORD):
        tokens[..., j] = np.where(bar, 0, rng.integers(1, 4, (n, t)))
    # Slice k holds element k's token, but the tempo and chord slices hold only noise.
    table = rng.normal(size=(7, 8, S)) * 3
    latent = np.concatenate([rng.normal(size=(n, t, S)) if k in (TEMPO, CHORD) else table[k][tokens[..., k]]
                             for k in range(7)], axis=-1)
    in_use = in_use_steps(tokens, np.ones((n, t)), EVENT2WORD)
    assert in_use.shape == (7, n, t) and not in_use[TEMPO][bar].any() and in_use[BAR_BEAT][bar].all()

    matrix = P.step_probe(latent, tokens, in_use, _groups(n), max_steps=1500)
    for j in (TEMPO, CHORD):
        column = matrix[:, j]
        assert np.all(np.isnan(column) | (np.abs(column) < 0.1)), column
    assert matrix[BAR_BEAT, BAR_BEAT] > 0.9
    # The same tokens scored on Bar words too: the bar-beat slice gives the 0 away.
    with_bars = in_use.copy()
    with_bars[TEMPO] = with_bars[CHORD] = True
    leaky = P.step_probe(latent, tokens, with_bars, _groups(n), max_steps=1500)
    assert leaky[BAR_BEAT, TEMPO] > 0.2 and leaky[BAR_BEAT, CHORD] > 0.2


def test_step_probe_wants_the_element_first_layout():
    tokens = np.zeros((4, 5, 8), dtype=int)
    with pytest.raises(ValueError, match=r"\[7, N, T\]"):
        P.step_probe(np.zeros((4, 5, 7 * S)), tokens, np.ones((4, 5, 7), dtype=bool), _groups(4))


# ---------------------------------------------------------------------------------------
# The word-composition control
# ---------------------------------------------------------------------------------------
def _random_piece(rng, w2e):
    """Emotion, then 1-4 bars of Bar + 1-3 beats with 0-4 notes each, then EOS; tempo and
    note tokens drawn independently of the word mix."""
    words = [[0, 0, 0, 1, 0, 0, 0, 1]]
    for _ in range(rng.integers(1, 5)):
        words.append([0, 0, 1, 2, 0, 0, 0, 0])
        for _ in range(rng.integers(1, 4)):
            words.append([rng.integers(2, 4), 1, rng.integers(2, 4), 2, 0, 0, 0, 0])
            for _ in range(rng.integers(0, 5)):
                words.append([0, 0, 0, 3, rng.integers(1, 3), rng.integers(1, 3), rng.integers(1, 3), 0])
    words.append([0, 0, 0, 0, 0, 0, 0, 0])
    return np.array(words)


def test_word_composition_of_a_known_piece():
    # Emotion; Bar; Beat_0; note; note; Beat_4; note; Bar; Beat_0; note; EOS
    types = [1, 2, 2, 3, 3, 2, 3, 2, 2, 3, 0]
    bar_beat = [0, 1, 2, 0, 0, 3, 0, 1, 2, 0, 0]
    words = np.zeros((11, 8), dtype=int)
    words[:, TYPE], words[:, BAR_BEAT] = types, bar_beat
    np.testing.assert_allclose(P.word_composition(words, _word2event()), [4 / 11, 2 / 11, 3 / 11])
    assert np.isnan(P.word_composition(np.zeros((0, 8), dtype=int), _word2event())).all()
    table = P.composition_table([words, words[:3]], _word2event())
    np.testing.assert_allclose(table, [[4 / 11, 2 / 11, 3 / 11], [0, 1 / 3, 1 / 3]])


def test_composition_control_high_for_the_word_mix_and_null_otherwise():
    rng = np.random.default_rng(4)
    w2e = _word2event()
    pieces = [_random_piece(rng, w2e) for _ in range(N)]
    composition = P.composition_table(pieces, w2e)
    statistics = P.statistics_table(pieces, w2e)
    assert np.ptp(composition, axis=0).min() > 0.1                     # the word mix varies
    control = P.composition_control(composition, statistics, _groups(N))
    assert control.shape == (7,)
    assert control[TYPE] > 0.99                      # the share of note words is part of the mix
    # Means of tokens drawn regardless of the mix. (A spread or range is not: it grows with
    # the number of notes, which the mix tells.)
    for j in (TEMPO, DURATION):
        assert control[j] < 0.1, (ELEMENTS[j], control[j])
    # The control regresses on the mix: shuffling it across pieces loses the type column.
    shuffled = P.composition_control(composition[rng.permutation(N)], statistics, _groups(N))
    assert shuffled[TYPE] < 0.1


# ---------------------------------------------------------------------------------------
# The per-step ceiling
# ---------------------------------------------------------------------------------------
def test_step_ceiling_diagonal_and_deterministic_functions():
    rng = np.random.default_rng(5)
    n, t, vocab = 60, 40, 6
    tokens = rng.integers(0, vocab, size=(n, t, 8))
    tokens[..., DURATION] = (tokens[..., PITCH] * 2) % 5            # a function of the pitch
    in_use = np.ones((7, n, t), dtype=bool)
    ceiling = P.step_ceiling(tokens, in_use, _groups(n), max_steps=1500)
    assert ceiling.shape == (7, 7)
    np.testing.assert_allclose(np.diag(ceiling), 1.0)
    assert ceiling[PITCH, DURATION] > 0.99                          # pitch predicts duration
    # ... not the other way round: pitches 0 and 5 share duration 0.
    assert 0.6 < ceiling[DURATION, PITCH] < 0.95
    assert abs(ceiling[VELOCITY, DURATION]) < 0.1 and abs(ceiling[PITCH, VELOCITY]) < 0.1
    off = ceiling[~np.eye(7, dtype=bool)]
    assert np.sum(np.abs(off) < 0.1) == 7 * 6 - 2


def test_step_ceiling_scores_the_steps_step_probe_scores():
    # A latent whose slice k is the one-hot token of element k is the ceiling itself: the
    # two matrices agree only if both draw the same songs and steps.
    rng = np.random.default_rng(6)
    n, t, vocab = 40, 30, 4
    tokens = rng.integers(0, vocab, size=(n, t, 8))
    tokens[..., CHORD] = np.where(rng.random((n, t)) < 0.3, tokens[..., TEMPO], tokens[..., CHORD])
    in_use = rng.random((7, n, t)) < 0.6
    latent = np.concatenate([np.eye(vocab)[tokens[..., k]] for k in range(7)], axis=-1)
    ceiling = P.step_ceiling(tokens, in_use, _groups(n), max_steps=500, seed=7)
    probe = P.step_probe(latent, tokens, in_use, _groups(n), max_steps=500, seed=7)
    np.testing.assert_allclose(ceiling, probe, atol=1e-6)
    assert ceiling[TEMPO, CHORD] > 0.1


# ---------------------------------------------------------------------------------------
# diagonal_share with a noise level
# ---------------------------------------------------------------------------------------
def test_diagonal_share_drops_columns_within_the_noise():
    m = np.eye(7) * 0.9
    m[:, 3] = 0.03                                    # a column that no slice predicts beyond noise
    m[3, 3] = 0.02
    assert P.diagonal_share(m) == pytest.approx((6 + 0.02 / (0.02 + 6 * 0.03)) / 7)
    assert P.diagonal_share(m, noise=0.0) == P.diagonal_share(m)
    assert P.diagonal_share(m, noise=0.05) == 1.0
    assert P.diagonal_share(m, noise=0.03) == 1.0     # at the noise level: dropped
    assert math.isnan(P.diagonal_share(m, noise=0.95))
