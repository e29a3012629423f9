"""evaluation.interventions on constructed decodes whose answer is known."""
import numpy as np
import pytest

from evaluation.interventions import change_rates, swap_effect_matrix
from music.elements import ELEMENTS, EVENT_TYPES

EVENT2WORD = {"type": {t: k for k, t in enumerate(EVENT_TYPES)}, "bar-beat": {0: 0, "Bar": 1, "Beat_0": 2},
              **{e: {0: 0} for e in ELEMENTS if e not in ("type", "bar-beat")}}
NOTE, METRICAL = EVENT2WORD["type"]["Note"], EVENT2WORD["type"]["Metrical"]
PITCH, VELOCITY, TEMPO = (ELEMENTS.index(e) for e in ("pitch", "velocity", "tempo"))


def words(n_notes=8, seed=0):
    """A Beat word, then notes: [T, 8]."""
    rng = np.random.default_rng(seed)
    w = np.zeros((1 + n_notes, 8), dtype=int)
    w[0, 3], w[0, 2], w[0, TEMPO] = METRICAL, 2, 5
    w[1:, 3] = NOTE
    w[1:, PITCH] = rng.integers(1, 40, n_notes)
    w[1:, VELOCITY] = rng.integers(1, 20, n_notes)
    return w


def test_change_rates_count_in_use_steps_only():
    a = words()
    b = a.copy()
    b[1:5, PITCH] += 1                                  # half of the 8 notes
    b[0, PITCH] = 99                                    # pitch is not in use on a Metrical word
    rates = change_rates(a, b, EVENT2WORD)
    assert rates[PITCH] == 0.5 and rates[VELOCITY] == 0.0 and rates[TEMPO] == 0.0
    assert rates[ELEMENTS.index("chord")] == 0.0                     # in use on the Beat word, unchanged
    b[0, TEMPO] = 6                                                  # the one tempo token changes
    assert change_rates(a, b, EVENT2WORD)[TEMPO] == 1.0
    bar = a.copy()
    bar[0, 2] = EVENT2WORD["bar-beat"]["Bar"]                        # a Bar word: tempo not in use
    assert np.isnan(change_rates(bar, b, EVENT2WORD)[TEMPO])
    assert change_rates(a, a[:5], EVENT2WORD)[PITCH] == 0.0          # only the steps both have


def test_a_disentangled_decoder_gives_a_diagonal_matrix_above_the_floor():
    rng = np.random.default_rng(0)
    pairs, k = 30, len(ELEMENTS)
    floor = rng.uniform(0.05, 0.15, size=(pairs, k))
    swapped = floor[:, None, :] + 0.6 * np.eye(k)[None] + rng.normal(0, 0.01, size=(pairs, k, k))
    result = swap_effect_matrix(swapped, floor)
    np.testing.assert_allclose(np.diag(result["effect"]), 0.6, atol=0.01)
    assert np.abs(result["effect"] - np.diag(np.diag(result["effect"]))).max() < 0.01
    assert (result["own_share"] > 0.9).all()


def test_an_intervention_that_does_nothing_reads_zero_and_an_entangled_one_spreads():
    floor = np.full((10, 7), 0.2)
    nothing = swap_effect_matrix(np.repeat(floor[:, None, :], 7, axis=1), floor)
    assert np.allclose(nothing["effect"], 0) and np.isnan(nothing["own_share"]).all()
    entangled = swap_effect_matrix(floor[:, None, :] + 0.3, floor)
    np.testing.assert_allclose(entangled["own_share"], 1 / 7)
    with pytest.raises(ValueError):
        swap_effect_matrix(floor, floor)
