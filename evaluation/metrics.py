"""Objective metrics of symbolic music, per piece and aggregated per emotion quadrant.

Everything here works on a plain note array: one row per note, columns
(pitch, start, end[, velocity]) in ticks, on the CP time grid (480 ticks per beat,
1920 ticks per 4/4 bar). `as_note_array` also accepts miditoolkit notes.

Song-level metrics are those of muspy 0.5 (`muspy.pitch_range`, `n_pitch_classes_used`,
`polyphony`) and equal them exactly, float bits included, on the same notes; the tests check
this on every EMOPIA clip (muspy is a test-only dependency):
- pitch range: highest minus lowest pitch;
- pitch classes: number of distinct pitch classes (pitch mod 12) used;
- polyphony: mean number of distinct pitches sounding, over the time steps (ticks)
  where at least one pitch sounds. A note sounds on [start, end); two overlapping notes
  of the same pitch count once (muspy's piano roll is binary); a zero-length note never
  sounds.
Polyphony depends on the time grid: `piece_from_midi` rounds times to 480 ticks per beat
(as `muspy.Music.adjust_resolution(480)` does, with which it agrees exactly); on EMOPIA's
384-tick files that moves polyphony by less than 0.1% from muspy's value at the native
resolution. muspy evaluates all non-drum tracks, a `Piece` holds the first one only (every
EMOPIA clip and every decoded piece has exactly one).
Bar-level metrics (no muspy counterpart) compute, for every bar that holds at least one
note onset (a note belongs to the bar its onset falls in), the pitch range, the number of
pitch classes, and notes / distinct onset times; the song value is the mean over those bars.

Empty pieces: a piece with no notes (or, for polyphony, no note of positive length)
has no defined value; every metric then returns NaN, and `summarize` leaves NaNs out
of means and standard deviations (and counts only the pieces it used). muspy returns NaN
for the polyphony of such a piece too, but 0 for its pitch range and pitch classes; we
return NaN for all three so that the metrics agree with each other and an empty generated
piece cannot pull a quadrant's mean down (compute_metrics.py reports how many were empty).

Element distributions (`element_values`) list, for one `Piece`, every value an element
takes: tempo (bpm of each tempo change), chord quality (of each chord marker), beat
position (the 16th-note position in the bar of each note onset), pitch, duration (ticks)
and velocity (of each note).
"""
from __future__ import annotations

import math

import numpy as np

from music.chords import CHORD_QUALITIES
from music.elements import ELEMENTS, QUADRANTS, per_element
from music.midi_io import TICKS_PER_BAR, TICKS_PER_POSITION
from music.piece import Piece, chord_quality


ALIASES_OUT = {"bar-beat": "beat"}      # the column names of the distribution tables
SONG_METRICS = ("pitch_range", "pitch_classes", "polyphony")
BAR_METRICS = ("bar_pitch_range", "bar_pitch_classes", "bar_polyphony")
METRICS = SONG_METRICS + BAR_METRICS
METRIC_LABELS = {
    "pitch_range": "pitch range",
    "pitch_classes": "pitch classes",
    "polyphony": "polyphony",
    "bar_pitch_range": "bar pitch range",
    "bar_pitch_classes": "bar pitch classes",
    "bar_polyphony": "bar notes/onset",
}

# Every element but the type, whose values are word kinds, not music; bar-beat is "beat" here.
DISTRIBUTION_ELEMENTS = tuple(ALIASES_OUT.get(e, e) for e in ELEMENTS if e != "type")
DISTRIBUTION_LABELS = per_element({
    "tempo": "tempo (bpm)",
    "chord": "chord quality",
    "beat": "beat position (16ths)",
    "pitch": "pitch (MIDI)",
    "duration": "duration (ticks)",
    "velocity": "velocity",
}, DISTRIBUTION_ELEMENTS)


# --------------------------------------------------------------------------- notes

def as_note_array(notes) -> np.ndarray:
    """Notes as an int64 array [N, 4] of (pitch, start, end, velocity).

    Accepts an array-like [N, 3] or [N, 4] (velocity 0 when missing) or an iterable of
    objects with `pitch`, `start`, `end` (and optionally `velocity`) attributes.
    """
    if isinstance(notes, np.ndarray) or (isinstance(notes, (list, tuple)) and notes
                                          and isinstance(notes[0], (list, tuple, np.ndarray))):
        arr = np.asarray(notes, dtype=np.int64)
        if arr.size == 0:
            return np.zeros((0, 4), dtype=np.int64)
        if arr.ndim != 2 or arr.shape[1] not in (3, 4):
            raise ValueError(f"note array must be [N, 3] or [N, 4], got shape {arr.shape}")
        if arr.shape[1] == 3:
            arr = np.concatenate([arr, np.zeros((len(arr), 1), dtype=np.int64)], axis=1)
        return arr
    rows = [(n.pitch, n.start, n.end, getattr(n, "velocity", 0)) for n in notes]
    if not rows:
        return np.zeros((0, 4), dtype=np.int64)
    return np.asarray(rows, dtype=np.int64)


def _union_length(starts: np.ndarray, ends: np.ndarray) -> int:
    """Total length of the union of half-open intervals [start, end)."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if len(starts) == 0:
        return 0
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    # An interval opens a new merged block when it starts after everything before it ended.
    opens = np.ones(len(starts), dtype=bool)
    opens[1:] = starts[1:] > reach[:-1]
    block_id = np.cumsum(opens) - 1
    block_start = starts[opens]
    block_end = np.zeros(len(block_start), dtype=np.int64)
    np.maximum.at(block_end, block_id, ends)
    return int((block_end - block_start).sum())


# ------------------------------------------------------------------ song-level metrics

def pitch_range(notes) -> float:
    """Highest minus lowest pitch; NaN for a piece with no notes (muspy: 0)."""
    arr = as_note_array(notes)
    if len(arr) == 0:
        return math.nan
    return float(arr[:, 0].max() - arr[:, 0].min())


def n_pitch_classes(notes) -> float:
    """Number of distinct pitch classes (pitch mod 12) used; NaN for no notes (muspy: 0)."""
    arr = as_note_array(notes)
    if len(arr) == 0:
        return math.nan
    return float(len(np.unique(arr[:, 0] % 12)))


def polyphony(notes) -> float:
    """Mean number of distinct pitches sounding over the ticks where at least one sounds.

    Equals sum over pitches of the time that pitch sounds, divided by the time anything
    sounds (both as unions of [start, end) intervals): muspy's piano-roll sum over its
    count of non-empty time steps, without building the piano roll. NaN when nothing sounds.
    """
    arr = as_note_array(notes)
    active = _union_length(arr[:, 1], arr[:, 2])
    if active == 0:
        return math.nan
    # Each pitch's intervals moved to a stretch of the time axis of its own: one union then
    # sums the pitches' unions.
    low, span = arr[:, 1:3].min(), arr[:, 1:3].max() - arr[:, 1:3].min() + 1
    shift = (arr[:, 0] - arr[:, 0].min()) * span - low
    return _union_length(arr[:, 1] + shift, arr[:, 2] + shift) / active


# ------------------------------------------------------------------- bar-level metrics

def _bars(arr: np.ndarray, ticks_per_bar: int):
    """Yield the notes of each bar that holds at least one onset, in bar order."""
    if len(arr) == 0:
        return
    bar_of = arr[:, 1] // ticks_per_bar
    for bar in np.unique(bar_of):
        yield arr[bar_of == bar]


def _bar_mean(notes, per_bar, ticks_per_bar: int) -> float:
    values = [per_bar(bar_notes) for bar_notes in _bars(as_note_array(notes), ticks_per_bar)]
    return float(np.mean(values)) if values else math.nan


def bar_pitch_range(notes, ticks_per_bar: int = TICKS_PER_BAR) -> float:
    """Mean over non-empty bars of the bar's pitch range; NaN for no notes."""
    return _bar_mean(notes, lambda b: b[:, 0].max() - b[:, 0].min(), ticks_per_bar)


def bar_pitch_classes(notes, ticks_per_bar: int = TICKS_PER_BAR) -> float:
    """Mean over non-empty bars of the number of pitch classes used; NaN for no notes."""
    return _bar_mean(notes, lambda b: len(np.unique(b[:, 0] % 12)), ticks_per_bar)


def bar_polyphony(notes, ticks_per_bar: int = TICKS_PER_BAR) -> float:
    """Mean over non-empty bars of (notes in the bar) / (distinct onset times in the bar);
    NaN for no notes."""
    return _bar_mean(notes, lambda b: len(b) / len(np.unique(b[:, 1])), ticks_per_bar)


def song_metrics(notes, ticks_per_bar: int = TICKS_PER_BAR) -> dict[str, float]:
    """All six metrics of one piece, keyed by the names in `METRICS`."""
    arr = as_note_array(notes)
    return {
        "pitch_range": pitch_range(arr),
        "pitch_classes": n_pitch_classes(arr),
        "polyphony": polyphony(arr),
        "bar_pitch_range": bar_pitch_range(arr, ticks_per_bar),
        "bar_pitch_classes": bar_pitch_classes(arr, ticks_per_bar),
        "bar_polyphony": bar_polyphony(arr, ticks_per_bar),
    }


def element_values(piece: Piece) -> dict[str, np.ndarray]:
    """Every value each element takes in a piece (see module docstring).

    Chord quality is returned as an index into `CHORD_QUALITIES`.
    """
    notes = piece.notes
    qualities = [chord_quality(c) for c in piece.chords]
    return per_element({
        "tempo": np.asarray(piece.tempos, dtype=np.float64),
        "chord": np.asarray([CHORD_QUALITIES.index(q) for q in qualities if q is not None],
                            dtype=np.float64),
        "beat": ((notes[:, 1] % TICKS_PER_BAR) // TICKS_PER_POSITION).astype(np.float64),
        "pitch": notes[:, 0].astype(np.float64),
        "duration": (notes[:, 2] - notes[:, 1]).astype(np.float64),
        "velocity": notes[:, 3].astype(np.float64),
    }, DISTRIBUTION_ELEMENTS)


# ----------------------------------------------------------------------- aggregation

def summarize(rows: list[dict[str, float]], quadrants, metrics=METRICS) -> dict:
    """Mean, standard deviation (ddof 0) and count per quadrant and overall.

    rows: one dict of metric values per piece; quadrants: the piece's quadrant (1..4).
    Returns {group: {metric: (mean, std, n)}} with groups "Q1".."Q4" (those present)
    and "all"; NaN values are left out, a group with no finite value gives (nan, nan, 0).
    """
    quadrants = np.asarray(list(quadrants), dtype=np.int64)
    groups = [(f"Q{q}", quadrants == q) for q in QUADRANTS if (quadrants == q).any()]
    groups.append(("all", np.ones(len(quadrants), dtype=bool)))
    out = {}
    for group, selected in groups:
        out[group] = {}
        for metric in metrics:
            values = np.asarray([r[metric] for r, s in zip(rows, selected) if s], dtype=float)
            values = values[np.isfinite(values)]
            if len(values) == 0:
                out[group][metric] = (math.nan, math.nan, 0)
            else:
                out[group][metric] = (float(values.mean()), float(values.std()), len(values))
    return out


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """`mean ± std`, or `n/a` when undefined."""
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
