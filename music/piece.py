"""A piece as the metrics and the evaluator see it: its notes, tempi and chord names.

The one MIDI reader of the project (`music.midi_io`) loads the file; times are rescaled
to the CP grid of 480 ticks per beat, 1920 per 4/4 bar, 16 positions per bar.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import miditoolkit
import numpy as np

from music.chords import chords_per_beat, parse_chord
from music.cp import words_to_midi
from music.elements import EMOTION_FIELD
from music.errors import UserError
from music.midi_io import TICKS_PER_BAR, TICKS_PER_BEAT, load_midi, rescale, source_name



@dataclass
class Piece:
    """What the metrics and the emotion evaluator need from one piece of music.

    notes: int64 [N, 4] (pitch, start, end, velocity) in ticks at 480 ticks per beat.
    tempos: bpm of every tempo change. chords: chord names (`C_M`, `A#_m7`, ...).
    emotion: quadrant 1..4, or 0 when unknown.
    """
    notes: np.ndarray
    tempos: np.ndarray = field(default_factory=lambda: np.zeros(0))
    chords: list = field(default_factory=list)
    emotion: int = 0
    name: str = ""

    @property
    def n_bars(self) -> int:
        """Bars spanned by the note onsets (at least 1)."""
        if len(self.notes) == 0:
            return 1
        return int(self.notes[:, 1].max() // TICKS_PER_BAR) + 1


def piece_from_midi(midi, emotion: int = 0, name: str = "", analyse_chords: bool = False) -> Piece:
    """A `Piece` from a MIDI path or a miditoolkit MidiFile (first non-drum track).

    Times are rescaled to 480 ticks per beat; chords are read from the markers the CP
    decoder writes (any marker whose text parses as a chord name). With `analyse_chords`,
    a file without such markers (e.g. a raw EMOPIA clip) gets the per-beat chord analysis
    of the CP encoding instead, so its chord statistics compare with the CP data's.
    """
    where = name or source_name(midi)
    if not isinstance(midi, miditoolkit.MidiFile):
        path = Path(midi)
        name, where = name or path.name, str(path)
        midi = load_midi(path)
    tpb = midi.ticks_per_beat
    if tpb <= 0:  # 0, or a negative SMPTE time division: no beats to rescale by
        raise UserError(f"{where}: unsupported time division ({tpb} ticks per beat)")
    tracks = [inst for inst in midi.instruments if not inst.is_drum]
    track = tracks[0].notes if tracks else []
    notes = np.stack([np.asarray([n.pitch for n in track], dtype=np.int64),
                      rescale([n.start for n in track], tpb), rescale([n.end for n in track], tpb),
                      np.asarray([n.velocity for n in track], dtype=np.int64)], axis=1).reshape(-1, 4)
    if len(notes):
        notes = notes[np.lexsort((-notes[:, 0], notes[:, 1]))]
    tempos = np.asarray([t.tempo for t in midi.tempo_changes], dtype=np.float64)
    chords = [m.text for m in midi.markers if chord_quality(m.text) is not None]
    if analyse_chords and not chords and len(notes):
        chords = analysed_chords(notes)
    return Piece(notes=notes, tempos=tempos, chords=chords, emotion=int(emotion), name=name)


def piece_from_words(words, word2event, emotion: int | None = None, name: str = "",
                     close_empty_bars: bool = False) -> Piece:
    """A `Piece` from CP words [T, 8] via the CP decoder (`music.cp.words_to_midi`).

    The emotion defaults to the emotion field of the first word (the Emotion word).
    """
    words = np.asarray(words)
    if emotion is None:
        emotion = int(words[0, EMOTION_FIELD]) if len(words) else 0
    midi = words_to_midi(words, word2event, close_empty_bars=close_empty_bars)
    return piece_from_midi(midi, emotion=emotion, name=name)


def analysed_chords(notes) -> list[str]:
    """Chord names at every change of the per-beat chord analysis (as the CP encoding keeps)."""
    arr = np.asarray(notes, dtype=np.int64).reshape(-1, 4)
    per_beat = chords_per_beat(arr[:, 1], arr[:, 2], arr[:, 0], int(arr[:, 2].max()),
                               TICKS_PER_BEAT)
    changes = [c for i, c in enumerate(per_beat) if i == 0 or c != per_beat[i - 1]]
    return [c for c in changes if chord_quality(c) is not None]


def chord_quality(name: str) -> str | None:
    """Quality of a chord name like `C_M`, `A#_m7` or `C_M_E`; None for `N`/`CONTI`/other."""
    parsed = parse_chord(str(name))
    return None if parsed is None else parsed[1]
