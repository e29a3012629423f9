"""The compound-word representation: exactness against the EMOPIA release, round trips, details."""
import io
import pickle
import zipfile

import miditoolkit
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from miditoolkit.midi.containers import Instrument, Marker, Note, TempoChange

from tests.conftest import SAMPLE_MIDI_DIR
from music import cp
from music.chords import chorder_chords_per_beat, chords_per_beat
from music.errors import UserError
from music.midi_io import ClipError

SAMPLE_FILES = sorted(SAMPLE_MIDI_DIR.glob("*.mid"))


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def make_midi(notes, ticks_per_beat=480, tempos=((120.0, 0),), markers=(), extra_instruments=()):
    """An in-memory MidiFile; notes are (pitch, start, end, velocity)."""
    midi = miditoolkit.MidiFile(ticks_per_beat=ticks_per_beat)
    piano = Instrument(program=0, is_drum=False, name="piano")
    piano.notes = [Note(velocity=v, pitch=p, start=s, end=e) for p, s, e, v in notes]
    midi.instruments = [piano, *extra_instruments]
    midi.tempo_changes = [TempoChange(tempo=bpm, time=t) for bpm, t in tempos]
    midi.markers = [Marker(text=text, time=t) for text, t in markers]
    return midi


def reparse(midi):
    """Write a MidiFile to bytes and read it back."""
    buffer = io.BytesIO()
    midi.dump(file=buffer)
    buffer.seek(0)
    return miditoolkit.MidiFile(file=buffer)


def collect_values(events) -> dict:
    """The set of values each field takes in `events`."""
    columns = list(zip(*events)) if events else [()] * len(cp.FIELDS)
    return {name: set(column) for name, column in zip(cp.FIELDS, columns)}


def midi_to_words(source, event2word, emotion, max_words=None) -> np.ndarray:
    """Words [T, 8] of a MIDI file: the full event list (or its first `max_words`)."""
    return cp.events_to_words(cp.encode_midi(source, emotion, max_events=max_words).events, event2word)


def dictionary_for(*event_lists):
    return cp.build_dictionary(collect_values([e for events in event_lists for e in events]))


def note_pitch(event):
    return int(event[4].rsplit("_", 1)[1])


def note_duration(event):
    return int(event[5].rsplit("_", 1)[1])


def canonical(events, by_duration=False):
    """Events with each run of Note events sorted by descending pitch (stable): the order a
    quantised MIDI file encodes to (the first encoding keeps the unquantised onset order).

    A MIDI file read back lists equal notes (same onset and pitch) by when they end, so
    `by_duration` also orders those by duration."""
    key = (lambda e: (-note_pitch(e), note_duration(e))) if by_duration else (lambda e: -note_pitch(e))
    out, run = [], []
    for event in list(events) + [None]:
        if event is not None and event[3] == "Note":
            run.append(event)
            continue
        out.extend(sorted(run, key=key))
        run = []
        if event is not None:
            out.append(event)
    return out


def span_is_stable(events):
    """True unless EMOPIA's span rule will cut the piece when re-encoded: the span is
    ceil(last onset / bar) bars, so a last onset on a downbeat, or trailing bars without
    notes, do not survive a round trip."""
    bar, beat, last_note, n_bar_events = -1, 0, None, 0
    for event in events:
        if event[2] == "Bar":
            bar += 1
            n_bar_events += 1
        elif isinstance(event[2], str) and event[2].startswith("Beat_"):
            beat = int(event[2][5:])
        elif event[3] == "Note":
            last_note = (bar, beat)
    return last_note is not None and last_note[0] == n_bar_events - 2 and last_note[1] != 0


def has_nested_same_pitch(midi):
    """A note starting inside a longer note of the same pitch and ending before it: a MIDI
    file cannot keep such a pair (readers match note-offs first in, first out)."""
    by_pitch = {}
    for note in midi.instruments[0].notes:
        by_pitch.setdefault(note.pitch, []).append((note.start, note.end))
    for spans in by_pitch.values():
        spans.sort()
        latest_end, previous_start, latest_end_before = -1, None, -1
        for start, end in spans:
            if start != previous_start:
                latest_end_before, previous_start = latest_end, start
            if end < latest_end_before:
                return True
            latest_end = max(latest_end, end)
    return False


@pytest.fixture(scope="module")
def reference_clips(tmp_path_factory):
    """The reference dictionary, subset arrays and the 20 clips extracted from the zip."""
    from tests.conftest import shared_path

    reference = shared_path("reference_cp")
    archive = shared_path("emopia", "midis.zip")
    subset = dict(np.load(reference / "reference_subset.npz"))
    folder = tmp_path_factory.mktemp("reference_clips")
    with zipfile.ZipFile(archive) as zf:
        for name in subset["names"]:
            (folder / name).write_bytes(zf.read(f"midis/{name}"))
    return cp.load_dictionary(reference / "dictionary.pkl"), subset, folder


# ---------------------------------------------------------------------------------------
# exactness against the EMOPIA pipeline
# ---------------------------------------------------------------------------------------
def test_reference_rows_are_reproduced_exactly(reference_clips):
    (event2word, _), subset, folder = reference_clips
    eos = cp.eos_word(event2word)
    for i, name in enumerate(subset["names"]):
        words = midi_to_words(folder / name, event2word, emotion=int(name[1]))
        x, y, mask, seq_len = cp.compile_words(words, eos)
        assert seq_len == subset["seq_len"][i], name
        np.testing.assert_array_equal(x, subset["x"][i], err_msg=name)
        np.testing.assert_array_equal(y, subset["y"][i], err_msg=name)
        np.testing.assert_array_equal(mask, subset["mask"][i], err_msg=name)
        assert mask.dtype == subset["mask"].dtype


def test_early_stop_gives_the_same_rows(reference_clips):
    """Encoding only the words that are kept (max_words) changes nothing in the rows."""
    (event2word, _), subset, folder = reference_clips
    eos = cp.eos_word(event2word)
    for name in subset["names"]:
        full = midi_to_words(folder / name, event2word, emotion=int(name[1]))
        cut = midi_to_words(folder / name, event2word, emotion=int(name[1]), max_words=cp.MAX_WORDS)
        for a, b in zip(cp.compile_words(full, eos), cp.compile_words(cut, eos)):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_reference_dictionary_follows_the_ordering_rule(reference_clips):
    (event2word, word2event), _, _ = reference_clips
    for name in cp.FIELDS:
        values = list(event2word[name])
        ints = [v for v in values if isinstance(v, int)]
        strings = [v for v in values if isinstance(v, str)]
        assert values == sorted(ints) + sorted(strings)
    rebuilt = cp.build_dictionary({name: set(event2word[name]) for name in cp.FIELDS})
    assert rebuilt == (event2word, word2event)
    assert cp.vocab_sizes(event2word) == [3, 131, 18, 4, 85, 18, 41, 5]


# ---------------------------------------------------------------------------------------
# chord analysis
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SAMPLE_FILES[::4], ids=lambda p: p.name)
def test_chords_match_chorder_on_real_clips(path):
    midi = miditoolkit.MidiFile(str(path))
    notes = midi.instruments[0].notes
    ours = chords_per_beat([n.start for n in notes], [n.end for n in notes], [n.pitch for n in notes],
                           midi.max_tick, ticks_per_beat=midi.ticks_per_beat)
    assert ours == chorder_chords_per_beat(midi)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(36, 84), st.integers(0, 4000), st.integers(0, 1500)),
                min_size=1, max_size=40),
       st.integers(0, 600))
def test_chords_match_chorder_on_random_notes(raw_notes, extra_ticks):
    notes = [(p, s, s + d, 80) for p, s, d in raw_notes]
    midi = make_midi(notes)
    midi.max_tick = max(e for _, _, e, _ in notes) + 1 + extra_ticks
    ours = chords_per_beat([n[1] for n in notes], [n[2] for n in notes], [n[0] for n in notes], midi.max_tick)
    assert ours == chorder_chords_per_beat(midi)


def test_chords_limited_to_leading_beats_match_the_whole_analysis():
    midi = miditoolkit.MidiFile(str(SAMPLE_FILES[5]))
    notes = midi.instruments[0].notes
    args = ([n.start for n in notes], [n.end for n in notes], [n.pitch for n in notes], midi.max_tick)
    whole = chords_per_beat(*args, ticks_per_beat=midi.ticks_per_beat)
    for n_beats in (1, 2, 7, 20):
        part = chords_per_beat(*args, ticks_per_beat=midi.ticks_per_beat, n_beats=n_beats)
        assert part[:n_beats] == whole[:n_beats]


# ---------------------------------------------------------------------------------------
# encoding rules
# ---------------------------------------------------------------------------------------
def test_events_of_a_small_piece():
    # 384 tpb like raw EMOPIA: onsets at beat 4 (bar 1) and later; one empty bar is dropped.
    notes = [(60, 384 * 4, 384 * 5, 81), (64, 384 * 4, 384 * 4 + 10, 30), (67, 384 * 6 + 5, 384 * 7, 100)]
    events = cp.encode_midi(make_midi(notes, ticks_per_beat=384), emotion=2).events
    assert events[0] == cp.emotion_event(2)
    assert events[1] == cp.BAR_EVENT
    metrical = events[2]
    assert metrical[0] == "Tempo_119" and metrical[2] == "Beat_0" and metrical[3] == "Metrical"
    assert metrical[1].count("_") == 1                    # chord without its bass
    assert events[3] == (0, 0, 0, "Note", "Note_Pitch_64", "Note_Duration_0", "Note_Velocity_40", 0)
    assert events[4] == (0, 0, 0, "Note", "Note_Pitch_60", "Note_Duration_480", "Note_Velocity_80", 0)
    assert events[5][2:4] == ("Beat_8", "Metrical")
    assert events[-2:] == [cp.BAR_EVENT, cp.EOS_EVENT]
    assert sum(e == cp.BAR_EVENT for e in events) == 2    # one bar + the closing bar


def test_notes_at_one_position_keep_their_onset_order():
    # Both round to position 0; the lower note starts first, so it comes first (EMOPIA).
    notes = [(60, 10, 400, 80), (72, 50, 400, 80), (67, 50, 400, 80), (50, 2000, 2400, 80)]
    events = cp.encode_midi(make_midi(notes), emotion=1).events
    pitches = [note_pitch(e) for e in events if e[3] == "Note"]
    assert pitches == [60, 72, 67, 50]


def test_velocity_and_tempo_bins():
    assert cp._VELOCITY_OF[81] == 80 and cp._VELOCITY_OF[83] == 82      # ties go to the lower bin
    assert cp._VELOCITY_OF[1] == cp.MIN_VELOCITY and cp._VELOCITY_OF[127] == 126
    assert cp._tempo_bin(120.0) == 119 and cp._tempo_bin(33.5) == 32


def test_last_onset_on_a_downbeat_is_not_encoded():
    """EMOPIA's span is ceil(last onset / 1920) bars: an onset exactly on the next downbeat
    falls outside it. Kept as is for compatibility with the release."""
    notes = [(60, 0, 480, 80), (62, 960, 1400, 80), (64, 1920, 2400, 80)]
    events = cp.encode_midi(make_midi(notes), emotion=1).events
    assert [note_pitch(e) for e in events if e[3] == "Note"] == [60, 62]


def test_piano_part_is_the_first_non_drum_instrument():
    drums = Instrument(program=0, is_drum=True, name="drums")
    drums.notes = [Note(velocity=90, pitch=36, start=0, end=100)]
    strings = Instrument(program=48, is_drum=False, name="strings")
    strings.notes = [Note(velocity=90, pitch=40, start=0, end=1900)]
    midi = make_midi([(60, 0, 480, 80), (62, 500, 900, 80)], extra_instruments=[strings])
    midi.instruments.insert(0, drums)
    piece = cp.encode_midi(midi, emotion=1)
    assert [note_pitch(e) for e in piece.events if e[3] == "Note"] == [60, 62]
    assert any("2 more instrument(s) ignored" in w for w in piece.warnings)


def test_unusable_midi_raise_clip_errors(tmp_path):
    drums = Instrument(program=0, is_drum=True)
    drums.notes = [Note(velocity=90, pitch=36, start=0, end=100)]
    drum_only = make_midi([])
    drum_only.instruments = [drums]
    with pytest.raises(ClipError, match="only drum tracks"):
        cp.encode_midi(drum_only, emotion=1)
    empty = make_midi([])
    empty.instruments = []
    with pytest.raises(ClipError, match="no notes"):
        cp.encode_midi(empty, emotion=1)
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"this is not midi")
    with pytest.raises(ClipError, match=r"bad\.mid: not a readable MIDI file"):
        cp.encode_midi(bad, emotion=1)
    cut = tmp_path / "cut.mid"
    cut.write_bytes(SAMPLE_FILES[0].read_bytes()[:300])
    with pytest.raises(ClipError, match=r"cut\.mid: truncated or corrupt"):
        cp.encode_midi(cut, emotion=1)


def test_unseen_token_names_the_file_field_and_value():
    events = cp.encode_midi(make_midi([(60, 0, 480, 80), (61, 500, 900, 80)]), emotion=1).events
    event2word, _ = dictionary_for(events)
    other = cp.encode_midi(make_midi([(60, 0, 480, 127), (61, 500, 900, 80)]), emotion=1).events
    with pytest.raises(ClipError, match=r"song\.mid: velocity value 'Note_Velocity_126' is not in the dictionary"):
        cp.events_to_words(other, event2word, "song.mid")


# ---------------------------------------------------------------------------------------
# dictionary
# ---------------------------------------------------------------------------------------
def test_dictionary_order_save_load_and_lookups(tmp_path):
    values = {name: {0} for name in cp.FIELDS}
    values["pitch"] |= {"Note_Pitch_21", "Note_Pitch_100", "Note_Pitch_9"}
    values["type"] = set(cp.EVENT_TYPES)
    values["emotion"] = {0, 3, 1}
    event2word, word2event = cp.build_dictionary(values)
    assert list(event2word["pitch"]) == [0, "Note_Pitch_100", "Note_Pitch_21", "Note_Pitch_9"]
    assert list(event2word["emotion"]) == [0, 1, 3]
    assert word2event["pitch"][2] == "Note_Pitch_21"
    path = tmp_path / "sub" / "dictionary.pkl"
    cp.save_dictionary(path, event2word, word2event)
    assert cp.load_dictionary(path) == (event2word, word2event)
    assert not list(path.parent.glob("*.tmp"))
    assert cp.vocab_sizes(event2word) == [1, 1, 1, 4, 4, 1, 1, 3]
    assert [cp.type_index(event2word, t) for t in ("EOS", "Emotion", "Metrical", "Note")] == [0, 1, 2, 3]


def test_load_dictionary_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match=r"nothere\.pkl: dictionary file not found"):
        cp.load_dictionary(tmp_path / "nothere.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match=r"junk\.pkl: not a readable dictionary pickle"):
        cp.load_dictionary(junk)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps({"tempo": {}}))
    with pytest.raises(UserError, match=r"wrong\.pkl: expected a pickled \(event2word, word2event\)"):
        cp.load_dictionary(wrong)
    event2word, word2event = cp.build_dictionary({name: {0} for name in cp.FIELDS})
    del event2word["chord"]
    partial = tmp_path / "partial.pkl"
    partial.write_bytes(pickle.dumps((event2word, word2event)))
    with pytest.raises(UserError, match=r"partial\.pkl: dictionary has no field 'chord'"):
        cp.load_dictionary(partial)


# ---------------------------------------------------------------------------------------
# compile
# ---------------------------------------------------------------------------------------
def test_compile_pads_with_eos_and_truncates():
    eos = np.array([0, 0, 0, 0, 0, 0, 0, 0])
    words = np.arange(10 * 8).reshape(10, 8) + 1
    words[-1] = eos
    x, y, mask, seq_len = cp.compile_words(words, eos)
    assert x.shape == y.shape == (cp.WINDOW, 8) and seq_len == 9
    np.testing.assert_array_equal(x[:9], words[:-1])
    np.testing.assert_array_equal(y[:9], words[1:])
    assert (x[9:] == eos).all() and (y[9:] == eos).all()
    assert mask.dtype == np.float64 and mask[:9].all() and not mask[9:].any()
    long_words = np.ones((3000, 8), dtype=np.int64)
    x, y, mask, seq_len = cp.compile_words(long_words, eos)
    assert seq_len == cp.MAX_WORDS - 1 and mask.sum() == cp.MAX_WORDS - 1
    assert (x[seq_len:] == eos).all()


def test_compile_dataset_sorts_by_length_then_name():
    eos = np.zeros(8, dtype=np.int64)
    pieces = {"b.mid": 5, "a.mid": 5, "c.mid": 600, "d.mid": 2}
    names = list(pieces)
    arrays, order = cp.compile_dataset(names, [np.ones((n, 8), dtype=np.int64) for n in pieces.values()], eos)
    assert list(arrays["names"]) == ["c.mid", "a.mid", "b.mid", "d.mid"]
    assert [names[i] for i in order] == list(arrays["names"])
    assert list(arrays["seq_len"]) == [599, 4, 4, 1]
    assert list(arrays["num_groups"]) == [2, 1, 1, 1]
    assert arrays["x"].dtype == np.int64 and arrays["x"].shape == (4, cp.WINDOW, 8)


# ---------------------------------------------------------------------------------------
# words -> MIDI and round trips
# ---------------------------------------------------------------------------------------
def check_round_trip(midi, emotion=1):
    """MIDI -> events -> words -> MIDI -> events: the identity on the quantised content."""
    first = cp.encode_midi(midi, emotion).events
    event2word, word2event = dictionary_for(first)
    words = cp.events_to_words(first, event2word)
    decoded = cp.words_to_midi(words, word2event)
    again = cp.encode_midi(decoded, emotion, chords="markers").events
    assert again == canonical(first)
    # The decoded file is a fixed point: words -> MIDI -> words returns the same words.
    np.testing.assert_array_equal(
        cp.events_to_words(cp.encode_midi(cp.words_to_midi(cp.events_to_words(again, event2word), word2event),
                                          emotion, chords="markers").events, event2word),
        cp.events_to_words(again, event2word))
    return first, decoded, again


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_round_trip_on_sample_clips(path):
    midi = miditoolkit.MidiFile(str(path))
    first = cp.encode_midi(midi, 1).events
    assert span_is_stable(first), "sample clips are chosen so that EMOPIA's span rule keeps every bar"
    _, decoded, again = check_round_trip(midi)
    if not has_nested_same_pitch(decoded):
        from_file = cp.encode_midi(reparse(decoded), 1, chords="markers").events
        assert canonical(from_file, by_duration=True) == canonical(again, by_duration=True)


notes_strategy = st.lists(
    st.tuples(st.integers(21, 108), st.integers(0, 12 * 480), st.integers(0, 3000), st.integers(1, 127)),
    min_size=1, max_size=30)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes_strategy, st.sampled_from([96, 384, 480, 1000]), st.floats(30, 230), st.integers(1, 4))
def test_round_trip_property(raw_notes, ticks_per_beat, bpm, emotion):
    scale = ticks_per_beat / 480
    notes = [(p, round(s * scale), round((s + d) * scale), v) for p, s, d, v in raw_notes]
    midi = make_midi(notes, ticks_per_beat=ticks_per_beat, tempos=((bpm, 0),))
    try:
        first = cp.encode_midi(midi, emotion).events
    except ClipError:   # every onset on the piece's end: EMOPIA's span keeps nothing
        assume(False)
    assume(span_is_stable(first))
    _, decoded, again = check_round_trip(midi, emotion)
    if not has_nested_same_pitch(decoded):
        from_file = cp.encode_midi(reparse(decoded), emotion, chords="markers").events
        assert canonical(from_file, by_duration=True) == canonical(again, by_duration=True)


def test_words_to_midi_decodes_positions_and_stops_at_eos(tmp_path):
    events = [cp.emotion_event(3), cp.BAR_EVENT,
              ("Tempo_119", "C_M", "Beat_0", "Metrical", 0, 0, 0, 0),
              (0, 0, 0, "Note", "Note_Pitch_60", "Note_Duration_0", "Note_Velocity_80", 0),
              cp.BAR_EVENT,
              ("CONTI", "CONTI", "Beat_4", "Metrical", 0, 0, 0, 0),
              (0, 0, 0, "Note", "Note_Pitch_62", "Note_Duration_240", "Note_Velocity_60", 0),
              cp.BAR_EVENT, cp.EOS_EVENT,
              (0, 0, 0, "Note", "Note_Pitch_70", "Note_Duration_240", "Note_Velocity_60", 0)]
    event2word, word2event = dictionary_for(events)
    words = cp.events_to_words(events, event2word)
    midi = cp.words_to_midi(words, word2event, path=tmp_path / "out.mid")
    notes = [(n.pitch, n.start, n.end, n.velocity) for n in midi.instruments[0].notes]
    assert notes == [(60, 0, 60, 80), (62, 1920 + 480, 1920 + 720, 60)]
    assert [(m.text, m.time) for m in midi.markers] == [("C_M", 0)]
    assert [(t.tempo, t.time) for t in midi.tempo_changes] == [(119, 0)]
    assert midi.ticks_per_beat == 480
    assert len(miditoolkit.MidiFile(str(tmp_path / "out.mid")).instruments[0].notes) == 2


def test_words_to_midi_skips_words_that_do_not_decode():
    events = [cp.emotion_event(1), cp.BAR_EVENT, ("CONTI", "CONTI", "Beat_2", "Metrical", 0, 0, 0, 0),
              (0, 0, 0, "Note", "Note_Pitch_60", "Note_Duration_120", "Note_Velocity_80", 0)]
    event2word, word2event = dictionary_for(events)
    words = cp.events_to_words(events, event2word)
    broken = np.concatenate([words, [[0, 0, 0, event2word["type"]["Note"], 0, 0, 0, 0]],
                             [[99, 99, 99, event2word["type"]["Metrical"], 99, 99, 99, 99]]])
    midi = cp.words_to_midi(broken, word2event)
    assert [(n.pitch, n.start) for n in midi.instruments[0].notes] == [(60, 240)]


def test_generation_writer_closes_empty_bars():
    note = (0, 0, 0, "Note", "Note_Pitch_60", "Note_Duration_480", "Note_Velocity_80", 0)
    events = [cp.emotion_event(1), cp.BAR_EVENT, ("CONTI", "CONTI", "Beat_0", "Metrical", 0, 0, 0, 0), note,
              cp.BAR_EVENT, cp.BAR_EVENT, cp.BAR_EVENT,
              ("Tempo_119", "C_M", "Beat_4", "Metrical", 0, 0, 0, 0), note,
              ("CONTI", "CONTI", "Beat_8", "Metrical", 0, 0, 0, 0), note, cp.BAR_EVENT, cp.EOS_EVENT]
    event2word, word2event = dictionary_for(events)
    words = cp.events_to_words(events, event2word)
    plain = cp.words_to_midi(words, word2event)
    assert [n.start for n in plain.instruments[0].notes] == [0, 3 * 1920 + 480, 3 * 1920 + 960]
    closed = cp.words_to_midi(words, word2event, close_empty_bars=True)
    # The second note began 3 bars after the first ended (at 480): pulled back 3 bars, with
    # the chord and tempo of its position and everything after it.
    assert [n.start for n in closed.instruments[0].notes] == [0, 480, 960]
    assert [m.time for m in closed.markers] == [480]
    assert [t.time for t in closed.tempo_changes] == [480]
