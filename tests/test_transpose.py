"""Transposing compound-word pieces (music/transpose.py) and the chord names it moves
(music/chords.py parse_chord, transpose_chord)."""
import numpy as np
import pytest

from evaluation.key import estimate_key
from music.chords import CHORD_QUALITIES, PITCH_CLASSES, parse_chord, transpose_chord
from music.cp import CONTI, EOS_EVENT, build_dictionary, events_to_words, make_event, words_to_midi
from music.data import load_cp_dataset
from music.elements import COLUMN, EVENT_TYPES, FIELDS
from music.piece import chord_quality
from music.transpose import MISSING, TRANSPOSED_FIELDS, shift_table, shifts_up_to, transpose_token, \
    transpose_words, transposed_copies

# ---------------------------------------------------------------------- chord names


def test_chord_names_parse_into_root_quality_and_bass():
    assert parse_chord("A#_m7") == (10, "m7", None)
    assert parse_chord("C_M_E") == (0, "M", "E")
    assert parse_chord("B_/o7_D") == (11, "/o7", "D")
    assert parse_chord("Chord_G_sus4") == (7, "sus4", None)
    for not_a_chord in ("N_N", "N_N_N", CONTI, 0, None, "C_xyz", "H_M", "Tempo_120"):
        assert parse_chord(not_a_chord) is None, not_a_chord
    # The metrics read the quality through the same parser.
    assert [chord_quality(c) for c in ("C_M", "A#_m7", "B_/o7_D", "N_N", "CONTI")] == ["M", "m7", "/o7", None, None]


def test_transposing_a_chord_moves_its_root_and_bass_modulo_the_octave():
    assert transpose_chord("A_m", 3) == "C_m"              # wraps past B
    assert transpose_chord("C#_o7", -2) == "B_o7"          # and below C
    assert transpose_chord("B_M", 1) == "C_M"
    assert transpose_chord("C_M_E", 2) == "D_M_F#"
    assert transpose_chord("Chord_G_7", 5) == "Chord_C_7"
    assert transpose_chord("E_sus2", 12) == "E_sus2" and transpose_chord("E_sus2", 0) == "E_sus2"
    for quality in CHORD_QUALITIES:                         # the quality never changes
        assert parse_chord(transpose_chord(f"F_{quality}", 7)) == (0, quality, None)
    for not_a_chord in ("N_N", CONTI, 0):
        assert transpose_chord(not_a_chord, 4) == not_a_chord
    with pytest.raises(ValueError, match="bass"):
        transpose_chord("C_M_xyz", 1)


# ---------------------------------------------------------------------- tokens and words

PITCHES = range(55, 65)
# Major and minor chords on every root; sevenths on two roots only.
CHORDS = (*(f"{root}_{quality}" for root in PITCH_CLASSES for quality in "Mm"), "A#_7", "C_7", "N_N", CONTI)


def dictionary():
    """A made-up dictionary: pitches 55..64, CHORDS, one of each other value used."""
    values = {name: {0} for name in FIELDS}
    values["tempo"] |= {CONTI, "Tempo_120"}
    values["chord"] |= set(CHORDS)
    values["bar-beat"] |= {"Bar", "Beat_0", "Beat_4", "Beat_8"}
    values["type"] = set(EVENT_TYPES)
    values["pitch"] |= {f"Note_Pitch_{p}" for p in PITCHES}
    values["duration"] |= {"Note_Duration_480"}
    values["velocity"] |= {"Note_Velocity_80"}
    values["emotion"] |= {1, 2, 3, 4}
    return build_dictionary(values)


def note(pitch):
    return make_event(type="Note", pitch=f"Note_Pitch_{pitch}", duration="Note_Duration_480",
                      velocity="Note_Velocity_80")


def piece(chords=("C_M", "A_m"), pitches=(60, 57), emotion=2):
    """Emotion, a bar, then per beat a chord (with a tempo on the first) and a note, a beat
    that keeps its chord (CONTI), a beat with no chord (N_N), EOS."""
    events = [make_event(type="Emotion", emotion=emotion), make_event(bar_beat="Bar", type="Metrical")]
    for i, (chord, pitch) in enumerate(zip(chords, pitches)):
        events += [make_event(tempo="Tempo_120" if i == 0 else CONTI, chord=chord, bar_beat=f"Beat_{4 * i}",
                              type="Metrical"), note(pitch)]
    events += [make_event(tempo=CONTI, chord=CONTI, bar_beat="Beat_8", type="Metrical"), note(pitches[0]),
               make_event(tempo=CONTI, chord="N_N", bar_beat="Beat_8", type="Metrical"), EOS_EVENT]
    return events


def tokens(words, word2event, field):
    return [word2event[field][int(i)] for i in np.asarray(words)[..., COLUMN[field]].reshape(-1)]


def test_a_shift_moves_pitches_and_chord_roots_and_nothing_else():
    event2word, word2event = dictionary()
    words = events_to_words(piece(), event2word)
    up = transpose_words(words, word2event, event2word, 2)
    assert tokens(up, word2event, "pitch") == [0, 0, 0, "Note_Pitch_62", 0, "Note_Pitch_59", 0, "Note_Pitch_62", 0, 0]
    assert tokens(up, word2event, "chord") == [0, 0, "D_M", 0, "B_m", 0, CONTI, 0, "N_N", 0]
    others = [COLUMN[f] for f in FIELDS if f not in TRANSPOSED_FIELDS]
    assert np.array_equal(up[:, others], words[:, others])
    assert up.dtype == np.int64 and not np.shares_memory(up, words)
    # Down again: the piece itself; a shift of 0 changes nothing.
    assert np.array_equal(transpose_words(up, word2event, event2word, -2), words)
    assert np.array_equal(transpose_words(words, word2event, event2word, 0), words)
    # The chord root wraps round the octave: A#_7 up 2 is C_7.
    wrapped = transpose_words(events_to_words(piece(("A#_7", "C_M")), event2word), word2event, event2word, 2)
    assert tokens(wrapped, word2event, "chord")[2:5] == ["C_7", 0, "D_M"]


def test_a_shift_the_dictionary_cannot_write_is_refused():
    event2word, word2event = dictionary()
    high = events_to_words(piece(pitches=(64, 57)), event2word)
    with pytest.raises(ValueError, match="Note_Pitch_66"):           # 64 + 2 is past the dictionary's pitches
        transpose_words(high, word2event, event2word, 2)
    assert tokens(transpose_words(high, word2event, event2word, -2), word2event, "pitch")[3] == "Note_Pitch_62"
    with pytest.raises(ValueError, match="'E_7'"):                   # C_7 up 4: a chord the dictionary lacks
        transpose_words(events_to_words(piece(("C_7", "A_m")), event2word), word2event, event2word, 4)
    table = shift_table(word2event, event2word, "pitch", 2)
    assert table[event2word["pitch"]["Note_Pitch_62"]] == event2word["pitch"]["Note_Pitch_64"]
    assert table[event2word["pitch"]["Note_Pitch_63"]] == MISSING and table[0] == 0
    assert transpose_token("velocity", "Note_Velocity_80", 3) == "Note_Velocity_80"
    assert transpose_token("pitch", "Note_Pitch_60", -13) == "Note_Pitch_47"


def test_copies_leave_out_the_pieces_a_shift_cannot_write():
    event2word, word2event = dictionary()
    low, high = piece(pitches=(60, 55)), piece(pitches=(64, 58))     # 55 - 1 and 64 + 1 are missing
    words = np.stack([events_to_words(p, event2word) for p in (low, high)])
    copies = transposed_copies(words, word2event, event2word, shifts_up_to(2))
    assert copies.left_out == {-2: 1, -1: 1, 1: 1, 2: 1}
    assert copies.source.tolist() == [1, 1, 0, 0] and copies.shift.tolist() == [-2, -1, 1, 2]
    for moved, row, shift in zip(copies.words, copies.source, copies.shift):
        assert np.array_equal(moved, transpose_words(words[row], word2event, event2word, int(shift)))
    none = transposed_copies(words, word2event, event2word, [5])
    assert none.words.shape == (0, *words.shape[1:]) and none.left_out == {5: 2}
    assert shifts_up_to(2) == [-2, -1, 1, 2] and shifts_up_to(0) == []
    with pytest.raises(ValueError):
        shifts_up_to(-1)


# ---------------------------------------------------------------------- the shipped sample

def notes_of(words, word2event):
    midi = words_to_midi(words, word2event)
    return np.array([(n.pitch, n.start, n.end, n.velocity) for n in midi.instruments[0].notes]).reshape(-1, 4), \
        [m.text for m in midi.markers]


@pytest.mark.parametrize("shift", [-2, 1, 3])
def test_sample_pieces_sound_transposed_in_the_same_mode(sample_npz, shift):
    """Decoded to MIDI, a transposed sample piece has every note `shift` semitones away at
    the same time, every chord's root moved with the same quality, and its key's tonic moved
    with the mode kept; the pieces left out are exactly those transpose_words refuses."""
    data = load_cp_dataset(sample_npz)
    y = data.y[:, :256]
    copies = transposed_copies(y, data.word2event, data.event2word, [shift])
    refused = 0
    for row in range(len(y)):
        try:
            transpose_words(y[row], data.word2event, data.event2word, shift)
        except ValueError:
            refused += 1
    assert copies.left_out == {shift: refused} and len(copies.source) == len(y) - refused > 0
    for moved, row in zip(copies.words, copies.source):
        assert np.array_equal(moved[:, COLUMN["emotion"]], y[row, :, COLUMN["emotion"]])
        (notes, chords), (moved_notes, moved_chords) = notes_of(y[row], data.word2event), \
            notes_of(moved, data.word2event)
        assert len(notes) > 0 and np.array_equal(moved_notes[:, 0], notes[:, 0] + shift)
        assert np.array_equal(moved_notes[:, 1:], notes[:, 1:])
        assert [transpose_chord(c, shift) for c in chords] == moved_chords
        key, moved_key = estimate_key(notes), estimate_key(moved_notes)
        assert moved_key.mode == key.mode and moved_key.tonic == (key.tonic + shift) % 12
        assert np.array_equal(transpose_words(moved, data.word2event, data.event2word, -shift), y[row])
