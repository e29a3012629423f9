"""Transposing compound-word pieces by whole semitones, in dictionary indices.

A shift of k semitones moves every note's pitch token by k ('Note_Pitch_60' -> 'Note_Pitch_62'
for k = 2) and every chord token's root by k, modulo the octave ('A_m' -> 'B_m', 'A#_7' ->
'C_7'); a chord keeps its quality, so a piece keeps its mode (major or minor) by
construction. Every other column (tempo, bar-beat, type, duration, velocity, emotion) is
unchanged, and so are the tokens of the two columns that carry no pitch: the integer 0 of an
unused field, CONTI and no-chord 'N_N'.

Words are indices into a dictionary (music.cp: event2word, word2event), which holds only the
values its corpus used. A shift is written only when the dictionary holds every shifted token
a piece uses: a piece with a pitch or chord whose shift the dictionary lacks (a pitch past
the corpus's range, a chord never seen on that root) cannot be written at that shift.
`transpose_words` refuses it (ValueError); `transposed_copies` leaves it out and counts it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from music.chords import transpose_chord
from music.cp import PITCH_TOKEN
from music.elements import COLUMN, token_number

# The fields a transposition changes; every other field is copied as it is.
TRANSPOSED_FIELDS = ("pitch", "chord")
MISSING = -1        # in a shift table: the dictionary lacks the shifted token


def transpose_token(field: str, token, semitones: int):
    """One token of `field` moved by `semitones`: a pitch token's number, a chord's root;
    any other token (and any token of another field) as it is."""
    if field == "pitch":
        pitch = token_number(token, PITCH_TOKEN)
        return token if pitch is None else f"{PITCH_TOKEN}{pitch + semitones}"
    if field == "chord":
        return transpose_chord(token, semitones)
    return token


def shift_table(word2event: dict, event2word: dict, field: str, semitones: int) -> np.ndarray:
    """[vocabulary size of `field`] int64: the index of each index's token moved by
    `semitones`, MISSING where the dictionary lacks the moved token."""
    table = np.full(len(word2event[field]), MISSING, dtype=np.int64)
    for index, token in word2event[field].items():
        table[index] = event2word[field].get(transpose_token(field, token, semitones), MISSING)
    return table


def _shifted(words: np.ndarray, word2event: dict, event2word: dict, semitones: int) -> np.ndarray:
    """words [..., 8] with the transposed columns looked up in their shift tables (MISSING
    where a token cannot be moved)."""
    out = np.array(words, dtype=np.int64, copy=True)
    for field in TRANSPOSED_FIELDS:
        column = COLUMN[field]
        out[..., column] = shift_table(word2event, event2word, field, semitones)[out[..., column]]
    return out


def transpose_words(words, word2event: dict, event2word: dict, semitones: int) -> np.ndarray:
    """Words [..., 8] (one piece [T, 8], or pieces [N, T, 8]) moved by `semitones` (down when
    negative). ValueError naming the first token whose shift the dictionary lacks."""
    out = _shifted(words, word2event, event2word, semitones)
    for field in TRANSPOSED_FIELDS:
        column = np.asarray(words)[..., COLUMN[field]]
        missing = out[..., COLUMN[field]] == MISSING
        if missing.any():
            token = word2event[field][int(column[missing][0])]
            raise ValueError(f"cannot transpose by {semitones:+d}: the dictionary has no "
                             f"{transpose_token(field, token, semitones)!r} ({field} {token!r} moved)")
    return out


@dataclass
class Transposed:
    """Copies of pieces at several shifts: `words[i]` is piece `source[i]` moved by `shift[i]`."""
    words: np.ndarray           # [M, T, 8] int64
    source: np.ndarray          # [M] int64, rows of the pieces given
    shift: np.ndarray           # [M] int64, semitones
    left_out: dict              # {shift: pieces that cannot be written at that shift}


def transposed_copies(words, word2event: dict, event2word: dict, shifts) -> Transposed:
    """Every piece of words [N, T, 8] at every shift of `shifts` that the dictionary can write,
    in order of shift, then of piece; the pieces it cannot write at a shift are left out there
    and counted."""
    words = np.asarray(words)
    parts, sources, moved, left_out = [], [], [], {}
    for semitones in shifts:
        out = _shifted(words, word2event, event2word, int(semitones))
        fits = ~(out[..., [COLUMN[field] for field in TRANSPOSED_FIELDS]] == MISSING).any(axis=(1, 2))
        rows = np.flatnonzero(fits)
        parts.append(out[rows])
        sources.append(rows)
        moved.append(np.full(len(rows), int(semitones), dtype=np.int64))
        left_out[int(semitones)] = int(len(words) - len(rows))
    empty = np.zeros((0, *words.shape[1:]), dtype=np.int64)
    return Transposed(words=np.concatenate(parts) if parts else empty,
                      source=np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64),
                      shift=np.concatenate(moved) if moved else np.zeros(0, dtype=np.int64),
                      left_out=left_out)


def shifts_up_to(max_shift: int) -> list[int]:
    """-K..K without 0: the shifts of a transposition augmentation of K semitones."""
    if max_shift < 0:
        raise ValueError(f"the largest shift must be at least 0, got {max_shift}")
    return [k for k in range(-max_shift, max_shift + 1) if k != 0]
