"""Chord analysis, one chord per beat: a vectorised equivalent of chorder 0.1.4's `Dechorder.dechord`.

The EMOPIA pipeline names one chord per beat with `chorder`. chorder rebuilds a Python list
of every onset time inside a binary search for every beat, so it is quadratic in the length
of the piece and dominates the cost of preparing a corpus (and stalls on huge files). This
module computes exactly the same chords with numpy; tests compare it with chorder itself.

chorder's behaviour that is reproduced on purpose:
- a window [a, b) sees the notes whose onset lies in [K[max(i - 10, 0)], b), where K are the
  distinct onset times and K[i] is the first one >= a, and whose end is >= a. A note held
  from more than ten onsets before the window is therefore ignored;
- each note weighs min(b, end) - max(a, start) ticks for its pitch class;
- the best (root, quality) is the first strict maximum over roots 0..11 and qualities
  M, m, o, +, sus2, sus4 among roots present in the window; it must reach 10 x the window
  length, else the window has no chord (score -1);
- the bass is the lowest pitch sounding at least 1/8 of the window, and renames some chords
  (o -> 7/o7, M -> m7, m -> M7//o7, sus2 <-> sus4); then M becomes M7 or 7 and m becomes m7
  when the seventh is present;
- `dechord` keeps the two one-beat chords of a two-beat span when both score at least half
  the two-beat score, otherwise the two-beat chord for both beats (an odd last beat keeps
  its own chord only when strictly better).
"""
import re

import numpy as np

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
NO_CHORD = "N_N_N"

# Template weights in chorder's order; a window's score for (root, quality) is the dot product
# of its pitch-class weights, rotated to the root, with the template.
_TEMPLATE_NAMES = ("M", "m", "o", "+", "sus2", "sus4")
_TEMPLATES = np.array([
    [10, -2, -1, -2, 10, -5, -2, 10, -2, -1, -2, 0],    # M
    [10, -2, -1, 10, -2, -5, -2, 10, -1, -2, 0, -2],    # m
    [10, -2, -1, 10, -2, -1, 10, -2, -2, 1, -1, -2],    # o
    [10, -2, -1, -2, 10, -1, -2, -2, 10, -1, -2, 0],    # +
    [10, -2, 5, -2, -1, -5, -2, 5, -2, -1, -2, 0],      # sus2
    [10, -2, -1, -2, -5, 5, -2, 5, -2, -1, -2, 0],      # sus4
], dtype=np.int64)
# Every quality a chord can end up with; codes 0..5 are the templates above.
CHORD_QUALITIES = _TEMPLATE_NAMES + ("7", "M7", "m7", "o7", "/o7")
_Q = {name: code for code, name in enumerate(CHORD_QUALITIES)}
_ROTATIONS = (np.arange(12)[:, None] + np.arange(12)[None, :]) % 12
LOOKBACK_ONSETS = 10

# A chord name: `{root}_{quality}`, as the CP encoding writes chords ('A#_m7'), optionally
# followed by `_{bass}` ('C_M_E', as the analysis above names them) and preceded by `Chord_`.
# 'N_N' (no chord), CONTI and the integer 0 of an unused field are no chord names.
CHORD_PREFIX = "Chord_"
_CHORD_NAME = re.compile(r"^(?:%s)?(%s)_([^_]+)(?:_(.*))?$" % (CHORD_PREFIX, "|".join(
    re.escape(name) for name in sorted(PITCH_CLASSES, key=len, reverse=True))))


def parse_chord(name):
    """(root pitch class 0..11, quality, what follows the quality or None) of a chord name:
    'A#_m7' -> (10, 'm7', None), 'C_M_E' -> (0, 'M', 'E'); None for anything that is not a
    chord (no-chord 'N_N', 'CONTI', 0, a quality outside CHORD_QUALITIES)."""
    match = _CHORD_NAME.match(name) if isinstance(name, str) else None
    if match is None or match.group(2) not in CHORD_QUALITIES:
        return None
    return PITCH_CLASSES.index(match.group(1)), match.group(2), match.group(3)


def transpose_chord(name, semitones: int):
    """A chord name with its root (and its bass, when it names one) moved by `semitones`,
    modulo the octave; the quality is kept. Anything that is not a chord comes back as it is.
    'A_m' +3 -> 'C_m', 'C_M_E' +2 -> 'D_M_F#'. ValueError for a chord whose text after the
    quality is not a pitch class (nothing to move it by)."""
    parsed = parse_chord(name)
    if parsed is None:
        return name
    root, quality, bass = parsed
    moved = f"{PITCH_CLASSES[(root + semitones) % 12]}_{quality}"
    if bass is not None:
        if bass not in PITCH_CLASSES:
            raise ValueError(f"cannot transpose chord {name!r}: its bass {bass!r} is not a pitch class")
        moved += f"_{PITCH_CLASSES[(PITCH_CLASSES.index(bass) + semitones) % 12]}"
    return moved if not name.startswith(CHORD_PREFIX) else CHORD_PREFIX + moved


def _analyse_windows(starts, ends, pitches, onsets, width, n_windows):
    """Best chord of each window [i*width, (i+1)*width): (root, quality code, bass, score, complete)."""
    lo = np.arange(n_windows, dtype=np.int64) * width
    hi = lo + width
    if n_windows == 0 or len(starts) == 0:
        return (np.zeros(n_windows, dtype=np.int64),) * 3 + (
            np.full(n_windows, -1, dtype=np.int64), np.zeros(n_windows, dtype=bool))

    # Candidate notes of each window are a contiguous run of the onset-sorted notes. Only
    # windows where some note sounds are analysed (the others have no chord).
    first_onset = np.maximum(np.searchsorted(onsets, lo, side="left") - LOOKBACK_ONSETS, 0)
    first = np.searchsorted(starts, onsets[first_onset], side="left")
    last = np.searchsorted(starts, hi, side="left")
    active = np.flatnonzero(last > first)
    first, counts = first[active], (last - first)[active]
    slot = np.repeat(np.arange(len(active)), counts)
    run_start = np.repeat(np.cumsum(counts) - counts, counts)
    note = np.repeat(first, counts) + (np.arange(len(slot)) - run_start)
    keep = ends[note] >= lo[active][slot]
    used, slot = np.unique(slot[keep], return_inverse=True)
    active, note = active[used], note[keep]
    a, b = lo[active][slot], hi[active][slot]
    weight = np.minimum(b, ends[note]) - np.maximum(a, starts[note])

    # Exact integer sums (the weights are small integers, float64 accumulates them exactly).
    n_active = len(active)
    pc_map = np.bincount(slot * 12 + pitches[note] % 12, weights=weight,
                         minlength=n_active * 12).reshape(n_active, 12).astype(np.int64)
    pitch_span = np.bincount(slot * 128 + pitches[note], weights=weight,
                             minlength=n_active * 128).reshape(n_active, 128)

    bass_ok = pitch_span >= width / 8
    has_bass = bass_ok.any(axis=1)
    bass = np.argmax(bass_ok, axis=1) % 12   # lowest qualifying pitch, as a pitch class

    # scores[w, r, q]: template q on the map rotated to root r; roots absent from the window
    # are not candidates. The first strict maximum in (root, quality) order wins, as in chorder.
    scores = pc_map[:, _ROTATIONS] @ _TEMPLATES.T
    scores[pc_map == 0] = 0
    flat = scores.reshape(n_active, 12 * len(_TEMPLATE_NAMES))
    best = np.argmax(flat, axis=1)
    best_score = flat[np.arange(n_active), best]
    root = best // len(_TEMPLATE_NAMES)
    quality = best % len(_TEMPLATE_NAMES)
    found = best_score >= width * 10
    score = np.where(found, best_score, -1)

    # Bass-driven renaming (only when a bass exists).
    interval = (root - bass) % 12
    renames = [  # (quality before, interval root-bass, quality after)
        ("o", 4, "7"), ("o", 3, "o7"), ("M", 3, "m7"), ("m", 4, "M7"), ("m", 3, "/o7"),
        ("sus2", 5, "sus4"), ("sus4", 7, "sus2"),
    ]
    new_quality = quality.copy()
    renamed = np.zeros(n_active, dtype=bool)
    for before, step, after in renames:
        hit = has_bass & ~renamed & (quality == _Q[before]) & (interval == step)
        new_quality[hit] = _Q[after]
        renamed |= hit
    root = np.where(renamed, bass, root)
    quality = new_quality

    # Sevenths, read from the unrotated map at the (possibly new) root.
    rows = np.arange(n_active)
    major_7th = pc_map[rows, (root + 11) % 12]
    minor_7th = pc_map[rows, (root + 10) % 12]
    is_major = quality == _Q["M"]
    quality = np.where(is_major & (major_7th > 0) & (major_7th > minor_7th), _Q["M7"],
                       np.where(is_major & (minor_7th > 0) & (minor_7th > major_7th), _Q["7"], quality))
    quality = np.where((quality == _Q["m"]) & (minor_7th > 0), _Q["m7"], quality)

    out_root, out_quality, out_bass = np.zeros((3, n_windows), dtype=np.int64)
    out_score = np.full(n_windows, -1, dtype=np.int64)
    out_complete = np.zeros(n_windows, dtype=bool)
    out_root[active], out_quality[active], out_bass[active] = root, quality, bass
    out_score[active], out_complete[active] = score, found & has_bass
    return out_root, out_quality, out_bass, out_score, out_complete


def chords_per_beat(starts, ends, pitches, max_tick, ticks_per_beat=480, n_beats=None):
    """Chord names `{root}_{quality}_{bass}` (or 'N_N_N') for the beats of range(0, max_tick, tpb).

    `starts`, `ends`, `pitches`: int arrays of the notes analysed (any order). `n_beats`
    limits the analysis to the first beats (rounded up to whole two-beat spans, so the
    result for those beats is the same as for the whole piece).
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    pitches = np.asarray(pitches, dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends, pitches = starts[order], ends[order], pitches[order]
    onsets = np.unique(starts)

    total_beats = max(0, -(-int(max_tick) // ticks_per_beat))
    if n_beats is not None and n_beats < total_beats:
        total_beats = min(total_beats, 2 * (-(-int(n_beats) // 2)))
    n_pairs = -(-total_beats // 2)
    one = _analyse_windows(starts, ends, pitches, onsets, ticks_per_beat, total_beats)
    two = _analyse_windows(starts, ends, pitches, onsets, 2 * ticks_per_beat, n_pairs)

    # Per beat, use the one-beat chord or the chord of its two-beat span. Two-beat scores are
    # halved in chorder; compare 2 * one-beat score with the two-beat score to stay in integers.
    one_score = one[3]
    pair = np.arange(total_beats) // 2
    two_score = two[3][pair]
    partner = np.arange(total_beats) ^ 1
    has_partner = partner < total_beats
    partner_score = one_score[np.minimum(partner, max(total_beats - 1, 0))] if total_beats else one_score
    use_one = np.where(
        has_partner,
        (2 * one_score >= two_score) & (2 * partner_score >= two_score),
        2 * one_score > two_score,
    )
    root = np.where(use_one, one[0], two[0][pair])
    quality = np.where(use_one, one[1], two[1][pair])
    bass = np.where(use_one, one[2], two[2][pair])
    complete = np.where(use_one, one[4], two[4][pair])
    return [
        f"{PITCH_CLASSES[r]}_{CHORD_QUALITIES[q]}_{PITCH_CLASSES[b]}" if c else NO_CHORD
        for r, q, b, c in zip(root.tolist(), quality.tolist(), bass.tolist(), complete.tolist())
    ]


def chorder_chords_per_beat(midi_obj):
    """The same names computed by chorder itself (slow; the reference the tests compare with)."""
    from chorder import Dechorder

    names = []
    for chord in Dechorder.dechord(midi_obj):
        if chord.is_complete():
            names.append(f"{PITCH_CLASSES[chord.root_pc]}_{chord.quality}_{PITCH_CLASSES[chord.bass_pc]}")
        else:
            names.append(NO_CHORD)
    return names
