"""evaluation.key: Krumhansl-Schmuckler keys of pieces whose key is known."""
import numpy as np
import pytest

from evaluation.key import estimate_key, key_correlations, mode_shares, pitch_class_histogram

# Scale degrees (semitones above the tonic) and the chords of a I-IV-V-I / i-iv-V-i cadence.
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)
MAJOR_CADENCE = ((0, 4, 7), (5, 9, 0), (7, 11, 2), (0, 4, 7))
MINOR_CADENCE = ((0, 3, 7), (5, 8, 0), (7, 11, 2), (0, 3, 7))


def piece(tonic, scale, cadence, beat=480):
    """Notes [N, 4]: the scale up and down in quarters, then the cadence in whole notes."""
    notes, t = [], 0
    for degree in scale + scale[::-1]:
        notes.append((60 + tonic + degree, t, t + beat, 80))
        t += beat
    for chord in cadence:
        notes += [(48 + tonic + d, t, t + 4 * beat, 70) for d in chord]
        t += 4 * beat
    return np.array(notes)


@pytest.mark.parametrize("tonic, mode", [(0, "major"), (7, "major"), (2, "major"), (9, "minor"),
                                         (4, "minor"), (0, "minor")])
def test_known_keys_are_found(tonic, mode):
    scale, cadence = (MAJOR_SCALE, MAJOR_CADENCE) if mode == "major" else (HARMONIC_MINOR, MINOR_CADENCE)
    key = estimate_key(piece(tonic, scale, cadence))
    assert (key.tonic, key.mode) == (tonic, mode), key.name
    assert key.correlation > 0.7


def test_relative_keys_are_told_apart_by_weight():
    """C major and A minor share their notes; which one sounds as home decides."""
    c_major = piece(0, MAJOR_SCALE, MAJOR_CADENCE)
    a_minor = piece(9, (0, 2, 3, 5, 7, 8, 10), ((0, 3, 7), (5, 8, 0), (7, 10, 2), (0, 3, 7)))   # natural minor
    assert estimate_key(c_major).name == "C major"
    assert estimate_key(a_minor).name == "A minor"


def test_histogram_weights_durations_and_transposition_rotates_the_correlations():
    notes = np.array([(60, 0, 960, 80), (64, 0, 480, 80), (67, 480, 482, 80), (72, 960, 960, 80)])
    hist = pitch_class_histogram(notes)
    assert hist[0] == 960 + 1 and hist[4] == 480 and hist[7] == 2      # zero length counts one tick
    up = piece(3, MAJOR_SCALE, MAJOR_CADENCE)
    base = piece(0, MAJOR_SCALE, MAJOR_CADENCE)
    for a, b in zip(key_correlations(pitch_class_histogram(up)), key_correlations(pitch_class_histogram(base))):
        np.testing.assert_allclose(a, np.roll(b, 3))


def test_no_key_without_notes_or_with_a_flat_histogram():
    assert estimate_key(np.zeros((0, 4))) is None
    chromatic = np.array([(60 + k, 480 * k, 480 * k + 480, 80) for k in range(12)])
    assert estimate_key(chromatic) is None
    shares = mode_shares([estimate_key(piece(0, MAJOR_SCALE, MAJOR_CADENCE)), None,
                          estimate_key(piece(9, HARMONIC_MINOR, MINOR_CADENCE))])
    assert shares == {"major": 0.5, "minor": 0.5, "pieces": 2}
