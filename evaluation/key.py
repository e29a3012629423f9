"""Key and mode of a piece: Krumhansl-Schmuckler key finding on a duration-weighted
pitch-class histogram (Krumhansl & Kessler's major and minor profiles).

The histogram is correlated with each profile rotated to every tonic; the best of the 24
keys is the estimate. Valence in EMOPIA goes with mode (most high-valence clips are in major
keys), so the share of major and minor estimates per quadrant is a check on whether
generated music keeps the data's modes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from music.chords import PITCH_CLASSES

# Krumhansl-Kessler probe-tone profiles, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MODES = ("major", "minor")


@dataclass(frozen=True)
class Key:
    tonic: int          # pitch class 0..11 (C = 0)
    mode: str           # 'major' or 'minor'
    correlation: float  # of the histogram with the key's profile

    @property
    def name(self) -> str:
        return f"{PITCH_CLASSES[self.tonic]} {self.mode}"


def pitch_class_histogram(notes) -> np.ndarray:
    """Duration-weighted pitch-class histogram [12] of notes [N, 4] (pitch, start, end, velocity)."""
    notes = np.asarray(notes)
    if len(notes) == 0:
        return np.zeros(12)
    duration = np.maximum(notes[:, 2] - notes[:, 1], 1).astype(np.float64)
    return np.bincount((notes[:, 0] % 12).astype(int), weights=duration, minlength=12)


def key_correlations(histogram) -> tuple[np.ndarray, np.ndarray]:
    """(major [12], minor [12]): correlation of the histogram rotated to each tonic with each
    profile; NaN everywhere when the histogram is flat (no key to find)."""
    histogram = np.asarray(histogram, dtype=np.float64)
    if histogram.sum() <= 0 or histogram.std() == 0:
        return np.full(12, np.nan), np.full(12, np.nan)
    rotations = np.stack([np.roll(histogram, -k) for k in range(12)])
    major = np.array([np.corrcoef(r, MAJOR_PROFILE)[0, 1] for r in rotations])
    minor = np.array([np.corrcoef(r, MINOR_PROFILE)[0, 1] for r in rotations])
    return major, minor


def estimate_key(notes) -> Key | None:
    """The best-correlated of the 24 keys (None for a piece without a key: no notes, or a flat
    histogram). A tie between the two modes goes to major."""
    major, minor = key_correlations(pitch_class_histogram(notes))
    if np.isnan(major).all():
        return None
    if major.max() >= minor.max():
        return Key(int(np.argmax(major)), "major", float(major.max()))
    return Key(int(np.argmax(minor)), "minor", float(minor.max()))


def mode_shares(keys) -> dict[str, float]:
    """Share of each mode among the estimated keys (pieces without a key left out), and how
    many pieces had one."""
    found = [k for k in keys if k is not None]
    shares = {mode: (sum(k.mode == mode for k in found) / len(found) if found else float("nan"))
              for mode in MODES}
    return {**shares, "pieces": len(found)}
