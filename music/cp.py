"""EMOPIA's compound-word (CP) representation: MIDI -> events -> words -> 1024-row windows -> MIDI.

A piece becomes a list of events; each event is a tuple of eight values in FIELDS order
(unused fields are the integer 0). The dictionary numbers the values of each field; a word
is the tuple of eight indices. Everything here reproduces the EMOPIA release token for
token (see tests/test_cp.py):

- rescale to 480 ticks per beat (music.midi_io), chord analysis per beat (music.chords);
- drop the whole empty bars before the first note, span ceil(last onset / 1920) bars;
- quantise onsets and durations to 120 ticks, velocities and tempi to EMOPIA's bins;
- emit Emotion, then per bar a Bar event and per position a Metrical event and Note events,
  then a closing Bar and EOS;
- truncate to 1022 words and pad to 1024 rows with the piece's EOS word.

Two EMOPIA details worth knowing: notes that share a quantised position keep the order of
their unquantised onsets (descending pitch only among equal onsets), and notes whose onset
rounds onto or past the end of the span (e.g. a last onset exactly on a downbeat) are not
encoded.
"""
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import miditoolkit
import numpy as np
from miditoolkit.midi.containers import Instrument, Marker, Note, TempoChange

from music.atomic import atomic_write, read_pickle
from music.chords import CHORD_QUALITIES, PITCH_CLASSES, chords_per_beat
from music.elements import EMOTION, EVENT_TYPES, FIELDS, IDENTIFIERS, TYPE_FIELD, token_number
from music.errors import UserError
from music.midi_io import (TICKS_PER_BAR, TICKS_PER_BEAT, TICKS_PER_POSITION, ClipError, read_piano_part,
                           source_name)

EMOTIONS = (0, 1, 2, 3, 4)     # emotion field: 0 unlabeled, 1..4 quadrants Q1..Q4

MAX_DURATION = TICKS_PER_BAR
MIN_VELOCITY = 40
VELOCITY_BINS = np.linspace(0, 128, 65).astype(np.int64)
TEMPO_BINS = np.linspace(32, 224, 65).astype(np.int64)

WINDOW = 1024                  # rows per compiled piece
MAX_WORDS = WINDOW - 2         # words kept per piece before x/y shift (EMOPIA's "2 for room")
GROUP_SIZE = 512               # num_groups = ceil(seq_len / GROUP_SIZE)

CONTI = "CONTI"
PITCH_TOKEN = "Note_Pitch_"    # a note's pitch token: PITCH_TOKEN + MIDI pitch ('Note_Pitch_60')
# Keyword of each field in `make_event` ('bar-beat' is `bar_beat`).
_FIELD_OF_KEYWORD = dict(zip(IDENTIFIERS + (EMOTION,), FIELDS))


def make_event(**values) -> tuple:
    """An event tuple in FIELDS order from named fields (`bar_beat` for 'bar-beat'); every
    field not named is the integer 0, EMOPIA's value of an unused field."""
    unknown = set(values) - set(_FIELD_OF_KEYWORD)
    if unknown:
        raise TypeError(f"make_event: no field {', '.join(sorted(unknown))}")
    named = {_FIELD_OF_KEYWORD[key]: value for key, value in values.items()}
    return tuple(named.get(name, 0) for name in FIELDS)


BAR_EVENT = make_event(bar_beat="Bar", type="Metrical")
EOS_EVENT = make_event(type="EOS")

# Velocity bin of every MIDI velocity: nearest bin (the lower one on ties), at least MIN_VELOCITY.
_VELOCITY_OF = np.maximum(
    VELOCITY_BINS[np.argmin(np.abs(VELOCITY_BINS[None, :] - np.arange(128)[:, None]), axis=1)],
    MIN_VELOCITY)
_CHORD_TEXT = re.compile(
    r"^(?:(?:%s)_(?:%s)(?:_(?:%s))?|N_N(?:_N)?)$" % (
        "|".join(map(re.escape, PITCH_CLASSES)), "|".join(map(re.escape, CHORD_QUALITIES)),
        "|".join(map(re.escape, PITCH_CLASSES))))


# ---------------------------------------------------------------------------------------
# Dictionary
# ---------------------------------------------------------------------------------------
def _dictionary_order(value):
    """EMOPIA's ordering: integers first (numerically), then strings (lexicographically)."""
    return (not isinstance(value, int), value)


def build_dictionary(values_per_field: dict):
    """(event2word, word2event) numbering each field's values in EMOPIA's order."""
    event2word, word2event = {}, {}
    for name in FIELDS:
        ordered = sorted(values_per_field.get(name, ()), key=_dictionary_order)
        event2word[name] = {value: i for i, value in enumerate(ordered)}
        word2event[name] = {i: value for i, value in enumerate(ordered)}
    return event2word, word2event


def save_dictionary(path, event2word, word2event):
    """Pickle (event2word, word2event) atomically (temporary file + rename)."""
    atomic_write(path, lambda f: pickle.dump((event2word, word2event), f))


def load_dictionary(path):
    """Load and check a `(event2word, word2event)` pickle; UserError naming the path if unusable."""
    path = Path(path)
    data = read_pickle(path, "dictionary file not found", "not a readable dictionary pickle")
    if not (isinstance(data, tuple) and len(data) == 2 and all(isinstance(d, dict) for d in data)):
        raise UserError(f"{path}: expected a pickled (event2word, word2event) pair of dicts")
    event2word, word2event = data
    for name in FIELDS:
        if name not in event2word or name not in word2event:
            raise UserError(f"{path}: dictionary has no field {name!r} (fields: {', '.join(map(str, event2word))})")
        e2w, w2e = event2word[name], word2event[name]
        if sorted(e2w.values()) != list(range(len(e2w))) or any(w2e.get(i) != v for v, i in e2w.items()):
            raise UserError(f"{path}: field {name!r} is not numbered 0..{len(e2w) - 1} consistently "
                            f"in event2word and word2event")
    missing_types = [t for t in EVENT_TYPES if t not in event2word["type"]]
    if missing_types:
        raise UserError(f"{path}: field 'type' lacks {', '.join(missing_types)}")
    return event2word, word2event


def vocab_sizes(event2word) -> list:
    """Vocabulary size of each field, in FIELDS order."""
    return [len(event2word[name]) for name in FIELDS]


def type_index(event2word, name: str) -> int:
    """Index of event type `name` ('EOS', 'Emotion', 'Metrical' or 'Note')."""
    try:
        return event2word["type"][name]
    except KeyError:
        raise UserError(f"the dictionary has no event type {name!r}") from None


# ---------------------------------------------------------------------------------------
# MIDI -> quantised corpus
# ---------------------------------------------------------------------------------------
def _to_grid(ticks):
    """Round to the 120-tick grid, half to even (numpy's round, as EMOPIA)."""
    return (np.round(np.asarray(ticks, dtype=np.int64) / TICKS_PER_POSITION) * TICKS_PER_POSITION).astype(np.int64)


def _tempo_bin(bpm: float) -> int:
    return int(TEMPO_BINS[np.argmin(np.abs(TEMPO_BINS - bpm))])


@dataclass
class Corpus:
    """One piece on the 120-tick grid, shifted left by its leading empty bars."""

    n_bars: int                 # bars spanned by the piece
    times: np.ndarray           # note onsets (grid ticks), non-decreasing, encoding order
    pitches: np.ndarray
    durations: np.ndarray       # grid ticks, 0..1920
    velocities: np.ndarray      # velocity bins
    chords: dict                # grid tick -> chord name with bass ('C_M_E'), last one wins
    tempos: dict                # grid tick -> tempo bin
    offset_bars: int            # empty bars removed before the first note
    warnings: list = field(default_factory=list)


def _bars_needed(times, n_bars, max_events):
    """Fewest leading bars whose events (>= Emotion + Bars + Notes) reach `max_events`."""
    counts = np.bincount(times // TICKS_PER_BAR, minlength=n_bars)[:n_bars]
    events_through_bar = 1 + np.arange(1, n_bars + 1) + np.cumsum(counts)
    return min(n_bars, int(np.searchsorted(events_through_bar, max_events, side="left")) + 1)


def _marker_chords(markers):
    """Chord names of markers written like the decoder writes them ('C_M', 'C_M_E', 'N_N')."""
    return [(tick, text) for tick, text in markers if _CHORD_TEXT.match(text)]


def midi_to_corpus(source, chords: str = "analyse", max_events=None, name=None) -> Corpus:
    """Read `source` (path or MidiFile) and quantise it (EMOPIA's midi2corpus).

    chords: 'analyse' runs the per-beat chord analysis (EMOPIA); 'markers' reads chord names
    from markers instead (as written by `words_to_midi`, for exact round trips).
    max_events: when given, only the leading bars needed for that many events are kept
    (and analysed), so huge files cost no more than the words that will be used.
    """
    if chords not in ("analyse", "markers"):
        raise ValueError(f"chords must be 'analyse' or 'markers', not {chords!r}")
    name = source_name(source)
    part = read_piano_part(source)

    # Encoding order: unquantised onset, then descending pitch (stable otherwise).
    order = np.lexsort((-part.pitches, part.starts))
    starts = part.starts[order]
    offset_bars = int(_to_grid(starts[0])) // TICKS_PER_BAR
    n_bars = -(-int(starts[-1]) // TICKS_PER_BAR) - offset_bars
    shift = offset_bars * TICKS_PER_BAR

    times = _to_grid(starts - shift)
    inside = times < n_bars * TICKS_PER_BAR  # onsets rounded onto/past the span's end are dropped
    if not inside.any():
        raise ClipError(f"{name}: no note inside the encoded span (every onset rounds to the end of the piece)",
                        "no notes")
    if max_events is not None:
        n_bars = _bars_needed(times[inside], n_bars, max_events)
        inside = times < n_bars * TICKS_PER_BAR
    keep = order[inside]
    durations = _to_grid(np.minimum(part.ends[keep] - part.starts[keep], MAX_DURATION))
    velocities = _VELOCITY_OF[np.clip(part.velocities[keep], 0, 127)]

    if chords == "analyse":
        per_beat = chords_per_beat(part.starts, part.ends, part.pitches, part.max_tick,
                                   n_beats=(offset_bars + n_bars) * 4)
        changes, previous = [], None
        for beat, chord in enumerate(per_beat):
            if chord != previous:
                changes.append((beat * TICKS_PER_BEAT, chord))
                previous = chord
    else:
        changes = _marker_chords(part.markers)
    chord_grid = {}
    for tick, chord in changes:
        chord_grid[int(_to_grid(max(tick - shift, 0)))] = chord
    tempo_grid = {}
    for tick, bpm in part.tempos:
        tempo_grid[int(_to_grid(max(tick - shift, 0)))] = _tempo_bin(bpm)

    return Corpus(n_bars, times[inside], part.pitches[keep], durations, velocities,
                  chord_grid, tempo_grid, offset_bars, list(part.warnings))


# ---------------------------------------------------------------------------------------
# Corpus -> events -> words
# ---------------------------------------------------------------------------------------
def emotion_event(emotion: int):
    return make_event(type="Emotion", emotion=int(emotion))


def corpus_to_events(corpus: Corpus, emotion: int, max_events=None) -> list:
    """EMOPIA's corpus2events: the event tuples of one piece (cut to `max_events` if given)."""
    end = corpus.n_bars * TICKS_PER_BAR
    events = [emotion_event(emotion)]
    note_positions, first_note = np.unique(corpus.times, return_index=True)
    note_slices = dict(zip(note_positions.tolist(),
                           zip(first_note.tolist(), first_note[1:].tolist() + [len(corpus.times)])))
    positions = sorted(set(note_slices)
                       | {t for t in corpus.chords if t < end}
                       | {t for t in corpus.tempos if t < end})
    pitches = corpus.pitches.tolist()
    durations = corpus.durations.tolist()
    velocities = corpus.velocities.tolist()

    bars_open = 0
    for pos in positions:
        bar = pos // TICKS_PER_BAR
        if bar >= bars_open:
            events.extend([BAR_EVENT] * (bar + 1 - bars_open))
            bars_open = bar + 1
        beat = f"Beat_{(pos - bar * TICKS_PER_BAR) // TICKS_PER_POSITION}"
        chord, tempo = corpus.chords.get(pos), corpus.tempos.get(pos)
        if chord is not None or tempo is not None:
            chord_text = "_".join(chord.split("_")[:2]) if chord is not None else CONTI
            tempo_text = f"Tempo_{tempo}" if tempo is not None else CONTI
            events.append(make_event(tempo=tempo_text, chord=chord_text, bar_beat=beat, type="Metrical"))
        elif pos in note_slices:
            events.append(make_event(tempo=CONTI, chord=CONTI, bar_beat=beat, type="Metrical"))
        if pos in note_slices:
            lo, hi = note_slices[pos]
            events.extend(
                make_event(type="Note", pitch=f"{PITCH_TOKEN}{pitches[i]}", duration=f"Note_Duration_{durations[i]}",
                           velocity=f"Note_Velocity_{velocities[i]}")
                for i in range(lo, hi))
        if max_events is not None and len(events) >= max_events:
            return events[:max_events]
    events.extend([BAR_EVENT] * (corpus.n_bars - bars_open))
    events.append(BAR_EVENT)  # closing bar
    events.append(EOS_EVENT)
    return events if max_events is None else events[:max_events]


def events_to_words(events, event2word, name="<events>") -> np.ndarray:
    """Map event tuples to an int64 [T, 8] word array; UserError on a value the dictionary lacks."""
    words = np.empty((len(events), len(FIELDS)), dtype=np.int64)
    for k, field_name in enumerate(FIELDS):
        lookup = event2word[field_name]
        try:
            words[:, k] = [lookup[event[k]] for event in events]
        except KeyError as exc:
            raise ClipError(f"{name}: {field_name} value {exc.args[0]!r} is not in the dictionary",
                            "token not in the dictionary") from None
    return words


def eos_word(event2word) -> np.ndarray:
    return events_to_words([EOS_EVENT], event2word, "EOS")[0]


@dataclass
class EncodedPiece:
    events: list
    warnings: list


def encode_midi(source, emotion: int, chords: str = "analyse", max_events=None, name=None) -> EncodedPiece:
    """MIDI -> event tuples (Emotion first; EOS last unless cut by `max_events`) + warnings.
    `name` names the piece in messages (default: its path)."""
    corpus = midi_to_corpus(source, chords=chords, max_events=max_events, name=name)
    return EncodedPiece(corpus_to_events(corpus, emotion, max_events), corpus.warnings)


# ---------------------------------------------------------------------------------------
# Words -> fixed windows
# ---------------------------------------------------------------------------------------
def compile_words(words, eos, window: int = WINDOW):
    """EMOPIA's compile step: (x, y, mask, seq_len) of one piece, padded with its EOS word."""
    words = np.asarray(words, dtype=np.int64)[: window - 2]
    x, y = words[:-1], words[1:]
    seq_len = len(x)
    pad = np.tile(np.asarray(eos, dtype=np.int64)[None, :], (window - seq_len, 1))
    mask = np.concatenate([np.ones(seq_len), np.zeros(window - seq_len)])
    return np.concatenate([x, pad]), np.concatenate([y, pad]), mask, seq_len


def compile_dataset(names, words_list, eos, window: int = WINDOW):
    """Stack pieces into the npz arrays, rows sorted by descending seq_len, ties by name.

    Returns (arrays, order): the npz arrays and, for each row, the index of its piece in
    `names` / `words_list`.
    """
    if not words_list:
        raise ValueError("compile_dataset needs at least one piece")
    rows = [compile_words(words, eos, window) for words in words_list]
    order = sorted(range(len(rows)), key=lambda i: (-rows[i][3], names[i]))
    seq_len = np.array([rows[i][3] for i in order], dtype=np.int64)
    arrays = {
        "x": np.stack([rows[i][0] for i in order]).reshape(len(order), window, len(FIELDS)),
        "y": np.stack([rows[i][1] for i in order]).reshape(len(order), window, len(FIELDS)),
        "mask": np.stack([rows[i][2] for i in order]).reshape(len(order), window),
        "seq_len": seq_len,
        "num_groups": -(-seq_len // GROUP_SIZE),
        "names": np.array([names[i] for i in order], dtype=str),
    }
    return arrays, order


# ---------------------------------------------------------------------------------------
# Words -> MIDI
# ---------------------------------------------------------------------------------------
def words_to_midi(words, word2event, path=None, close_empty_bars=False) -> miditoolkit.MidiFile:
    """Decode words to a one-track piano MIDI at 480 tpb (EMOPIA's write_midi).

    Stops at the first EOS word; Emotion words are skipped. `Bar` advances the bar counter
    (the first bar starts at tick 0), `Beat_k` sets the position, a chord becomes a marker
    and a tempo a tempo change there, a Note a note at the position (duration 0 -> 60 ticks).
    Words that do not decode (an index outside the dictionary, a Note without a pitch) are
    skipped. With `close_empty_bars` (MusER's generation writer), a note starting one or more
    whole bars after the previous note ended is pulled back by those bars, together with the
    rest of the piece. Writes `path` atomically when given.
    """
    types = word2event["type"]
    midi = miditoolkit.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
    notes = []
    bar, pos = -1, 0
    at_position = []          # markers / tempo changes placed at the current position
    previous_end = None
    for word in np.asarray(words, dtype=np.int64).tolist():
        kind = types.get(word[TYPE_FIELD])
        if kind == "EOS":
            break
        values = {name: word2event[name].get(index) for name, index in zip(FIELDS, word)}
        if kind == "Metrical":
            bar_beat = values["bar-beat"]
            if bar_beat == "Bar":
                bar += 1
                continue
            beat = token_number(bar_beat, "Beat_")
            if beat is None:
                continue
            pos = max(bar, 0) * TICKS_PER_BAR + beat * TICKS_PER_POSITION
            at_position = []
            if values["chord"] not in (CONTI, 0, None):
                at_position.append(Marker(text=str(values["chord"]), time=pos))
                midi.markers.append(at_position[-1])
            bpm = token_number(values["tempo"], "Tempo_")
            if bpm is not None:
                at_position.append(TempoChange(tempo=bpm, time=pos))
                midi.tempo_changes.append(at_position[-1])
        elif kind == "Note":
            pitch = token_number(values["pitch"], PITCH_TOKEN)
            duration = token_number(values["duration"], "Note_Duration_")
            velocity = token_number(values["velocity"], "Note_Velocity_")
            if pitch is None or duration is None or velocity is None:
                continue
            if close_empty_bars and previous_end is not None and pos > previous_end:
                gap_bars = (pos - previous_end) // TICKS_PER_BAR
                if gap_bars:
                    bar -= gap_bars
                    pos -= gap_bars * TICKS_PER_BAR
                    for item in at_position:
                        item.time -= gap_bars * TICKS_PER_BAR
            end = pos + (duration if duration > 0 else TICKS_PER_POSITION // 2)
            notes.append(Note(velocity=velocity, pitch=pitch, start=pos, end=end))
            previous_end = end
    piano = Instrument(program=0, is_drum=False, name="piano")
    piano.notes = notes
    midi.instruments = [piano]
    if path is not None:
        atomic_write(path, lambda f: midi.dump(file=f))
    return midi
