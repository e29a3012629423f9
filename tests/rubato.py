"""A synthetic piano piece with a known beat: a slow 4/4 with rubato and a one-beat pickup,
written at a nominal 120 BPM the way EMOPIA's transcriptions are (times in seconds, not beats)."""
import io

import miditoolkit
import numpy as np
from miditoolkit.midi.containers import Instrument, Note, TempoChange

CHORDS = ((48, 64, 67, 72), (45, 64, 69, 72), (41, 65, 69, 72), (43, 62, 67, 71))   # C Am F G


def rubato_beats(n_beats=40, bpm=84.0, depth=0.05, start=0.3, period=12):
    """Times in seconds of n_beats + 1 beats: `bpm` with a +-`depth` sinusoidal rubato."""
    k = np.arange(n_beats)
    intervals = 60.0 / bpm * (1 + depth * np.sin(2 * np.pi * k / period))
    return start + np.concatenate([[0.0], np.cumsum(intervals)])


def rubato_piece(beat_times, pickup=1, ticks_per_beat=384) -> miditoolkit.MidiFile:
    """Bass and chord on every downbeat, softer chords on the other beats, a melody note
    between beats; `pickup` beats before the first downbeat. Nominal 120 BPM."""
    to_tick = lambda t: int(round(t * 2 * ticks_per_beat))
    notes = []
    for i, (t0, t1) in enumerate(zip(beat_times[:-1], beat_times[1:])):
        in_bar, bar = (i - pickup) % 4, (i - pickup) // 4
        bass, *upper = CHORDS[bar % 4]
        if in_bar == 0:
            notes.append(Note(100, bass - 12, to_tick(t0), to_tick(t0 + 3.8 * (t1 - t0))))
            notes.append(Note(95, bass, to_tick(t0), to_tick(t1)))
        notes += [Note(85 if in_bar == 0 else 60, p, to_tick(t0), to_tick(t0 + 0.9 * (t1 - t0))) for p in upper]
        notes.append(Note(70, upper[-1] + 12 - 2 * (in_bar % 2), to_tick((t0 + t1) / 2), to_tick(t1)))
    midi = miditoolkit.MidiFile(ticks_per_beat=ticks_per_beat)
    piano = Instrument(program=0, is_drum=False, name="piano")
    piano.notes = notes
    midi.instruments = [piano]
    midi.tempo_changes = [TempoChange(tempo=120.0, time=0)]
    return midi


def midi_bytes(midi: miditoolkit.MidiFile) -> bytes:
    buffer = io.BytesIO()
    midi.dump(file=buffer)
    return buffer.getvalue()
