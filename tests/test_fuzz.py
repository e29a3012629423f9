"""Properties of the compound-word encoder and writer on random input, and prepare_data.py on
randomly corrupted MIDI bytes (seeded): nothing crashes, every bad file is reported."""
from __future__ import annotations

import io
import random
import re
import sys
from functools import lru_cache

import miditoolkit
import mido
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from miditoolkit.midi.containers import Instrument, Note, TempoChange

from tests.conftest import ROOT, SAMPLE_MIDI_DIR
from tests import warm_python
from music import cp
from music.elements import token_number
from tests.test_cp import collect_values
from music.midi_io import ClipError

SAMPLE_FILES = sorted(SAMPLE_MIDI_DIR.glob("*.mid"))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=None)
def sample_dictionary():
    """(event2word, word2event) of eight sample clips, every emotion label included."""
    events = []
    for path in SAMPLE_FILES[::4]:
        events += cp.encode_midi(path, emotion=int(path.name[1])).events
    values = collect_values(events)
    values["emotion"] |= set(cp.EMOTIONS)
    return cp.build_dictionary(values)


# ---------------------------------------------------------------------------------------
# words -> MIDI
# ---------------------------------------------------------------------------------------
@st.composite
def word_arrays(draw, slack: int = 0):
    """[T, 8] word arrays, types weighted towards notes; `slack` lets indices leave the vocabulary."""
    event2word, _ = sample_dictionary()
    sizes = cp.vocab_sizes(event2word)
    types = [event2word["type"][t] for t in ("Note", "Note", "Note", "Metrical", "Metrical", "Emotion", "EOS")]
    n = draw(st.integers(0, 80))
    words = np.empty((n, len(cp.FIELDS)), dtype=np.int64)
    for k, size in enumerate(sizes):
        words[:, k] = draw(st.lists(st.integers(-slack, size - 1 + slack), min_size=n, max_size=n))
    words[:, cp.TYPE_FIELD] = draw(st.lists(st.sampled_from(types), min_size=n, max_size=n))
    return words


def decodable_notes(words, word2event):
    """(pitch, duration, velocity) of the Note words before the first EOS that name all three."""
    notes = []
    for word in words.tolist():
        kind = word2event["type"].get(word[cp.TYPE_FIELD])
        if kind == "EOS":
            break
        if kind == "Note":
            values = [token_number(word2event[field].get(word[k]), prefix) for k, field, prefix in
                      ((4, "pitch", "Note_Pitch_"), (5, "duration", "Note_Duration_"),
                       (6, "velocity", "Note_Velocity_"))]
            if None not in values:
                notes.append(tuple(values))
    return notes


@SETTINGS
@given(word_arrays(), st.booleans())
def test_writer_invariants_on_arbitrary_words(words, close_empty_bars):
    """Any in-vocabulary words (no EOS, notes before any Bar, Beats out of order...) decode to one
    piano track whose notes sit on the 120-tick grid with the dictionary's values."""
    _, word2event = sample_dictionary()
    midi = cp.words_to_midi(words, word2event, close_empty_bars=close_empty_bars)
    assert [(i.program, i.is_drum) for i in midi.instruments] == [(0, False)]
    expected = decodable_notes(words, word2event)
    notes = midi.instruments[0].notes
    assert [(n.pitch, n.velocity) for n in notes] == [(p, v) for p, _, v in expected]
    for note, (_, duration, _) in zip(notes, expected):
        assert note.start >= 0 and note.start % cp.TICKS_PER_POSITION == 0
        assert note.end - note.start == (duration if duration > 0 else cp.TICKS_PER_POSITION // 2)
    for item in (*midi.markers, *midi.tempo_changes):
        assert item.time >= 0 and item.time % cp.TICKS_PER_POSITION == 0
    # The file always holds the piano track, even with no notes (miditoolkit's reader
    # skips note-less tracks, but the track, its name and program are there).
    buffer = io.BytesIO()
    midi.dump(file=buffer)
    buffer.seek(0)
    tracks = mido.MidiFile(file=buffer).tracks
    assert any(any(m.type == "track_name" and m.name == "piano" for m in t)
               and any(m.type == "program_change" and m.program == 0 for m in t) for t in tracks)


@SETTINGS
@given(word_arrays())
def test_generation_writer_only_pulls_notes_back_by_whole_bars(words):
    _, word2event = sample_dictionary()
    plain = cp.words_to_midi(words, word2event).instruments[0].notes
    closed = cp.words_to_midi(words, word2event, close_empty_bars=True).instruments[0].notes
    assert [(n.pitch, n.velocity, n.end - n.start) for n in closed] == \
        [(n.pitch, n.velocity, n.end - n.start) for n in plain]
    for a, b in zip(plain, closed):
        assert a.start >= b.start and (a.start - b.start) % cp.TICKS_PER_BAR == 0


@SETTINGS
@given(word_arrays(slack=3))
def test_writer_skips_words_outside_the_vocabulary(words):
    _, word2event = sample_dictionary()
    midi = cp.words_to_midi(words, word2event)
    assert len(midi.instruments[0].notes) == len(decodable_notes(words, word2event))


# ---------------------------------------------------------------------------------------
# MIDI -> events
# ---------------------------------------------------------------------------------------
random_notes = st.lists(
    st.tuples(st.integers(0, 127), st.integers(0, 20000), st.integers(-300, 4000), st.integers(0, 127)),
    min_size=1, max_size=40)


@SETTINGS
@given(random_notes, st.sampled_from([1, 96, 384, 480, 1000]), st.integers(0, 4),
       st.lists(st.tuples(st.integers(0, 20000), st.floats(20, 300)), max_size=4), st.integers(2, 300))
def test_encoder_invariants_on_random_notes(raw_notes, ticks_per_beat, emotion, tempos, cut):
    """Overlapping, zero-length and backwards notes, odd resolutions and tempo maps: the events
    are well formed, their values are the quantised ones, and an early stop is a prefix."""
    midi = miditoolkit.MidiFile(ticks_per_beat=ticks_per_beat)
    piano = Instrument(program=0, is_drum=False)
    piano.notes = [Note(velocity=v, pitch=p, start=s, end=s + d) for p, s, d, v in raw_notes]
    midi.instruments = [piano]
    midi.tempo_changes = [TempoChange(tempo=bpm, time=t) for t, bpm in tempos]
    try:
        events = cp.encode_midi(midi, emotion).events
    except ClipError as exc:
        # No note left: all end before they start, or every onset rounds onto the span's end.
        assert re.search(r"no notes|no note inside", str(exc))
        return
    assert events[0] == cp.emotion_event(emotion)
    assert events[-2:] == [cp.BAR_EVENT, cp.EOS_EVENT]
    pitches = {p for p, *_ in raw_notes}
    after_position = False
    for event in events[1:-1]:
        assert len(event) == len(cp.FIELDS)
        if event[3] == "Metrical":
            assert event[2] == "Bar" or re.fullmatch(r"Beat_(\d|1[0-5])", event[2])
            after_position = event[2] != "Bar"
        else:
            assert event[3] == "Note" and after_position, "a note needs a position in its bar"
            duration = token_number(event[5], "Note_Duration_")
            assert 0 <= duration <= cp.MAX_DURATION and duration % cp.TICKS_PER_POSITION == 0
            assert token_number(event[6], "Note_Velocity_") in set(cp.VELOCITY_BINS[cp.VELOCITY_BINS >= 40])
            assert token_number(event[4], "Note_Pitch_") in pitches
        tempo = event[0]
        assert tempo in (0, cp.CONTI) or token_number(tempo, "Tempo_") in set(cp.TEMPO_BINS)
    assert sum(e[3] == "Note" for e in events) <= sum(d >= 0 for *_, d, _ in raw_notes)
    assert cp.encode_midi(midi, emotion, max_events=cut).events == events[:cut]
    # The words decode back to as many notes.
    event2word, word2event = cp.build_dictionary(collect_values(events))
    decoded = cp.words_to_midi(cp.events_to_words(events, event2word), word2event)
    assert len(decoded.instruments[0].notes) == sum(e[3] == "Note" for e in events)


# ---------------------------------------------------------------------------------------
# prepare_data.py on corrupted bytes
# ---------------------------------------------------------------------------------------
def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    data = bytearray(data)
    if kind == "bit flips":
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
    elif kind == "truncation":
        data = data[:rng.randrange(len(data))]
    elif kind == "insertion":
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(data))
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
    else:  # a random byte in the header or the first track's header
        data[rng.randrange(22)] = rng.randrange(256)
    return bytes(data)


def run_prepare(*args):
    return warm_python.run([sys.executable, str(ROOT / "prepare_data.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_corrupted_midi_batch_reports_every_bad_file_and_keeps_the_rest(tmp_path):
    rng = random.Random(2024)
    clips = tmp_path / "clips"
    clips.mkdir()
    intact = SAMPLE_FILES[::8]
    for path in intact:
        (clips / path.name).write_bytes(path.read_bytes())
    kinds = ("bit flips", "truncation", "insertion", "header byte")
    for i in range(60):
        source = rng.choice(SAMPLE_FILES)
        kind = kinds[i % len(kinds)]
        (clips / f"{source.stem}_{kind.replace(' ', '_')}_{i}.mid").write_bytes(
            mutate(source.read_bytes(), kind, rng))
    all_names = {p.name for p in clips.iterdir()}

    # A built dictionary, then the first run's one given (the early-stop encoding path).
    for run, extra in (("built", ()), ("given", ("--dictionary", tmp_path / "built" / "dictionary.pkl"))):
        result = run_prepare("--midi_dir", clips, "--out_dir", tmp_path / run, "--workers", 2, "--sync", "none", *extra)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        for line in result.stderr.splitlines():
            assert line.startswith(("skipped: ", "warning: ")), line
        reported = [line.split(": ", 2)[1] for line in result.stderr.splitlines() if line.startswith("skipped: ")]
        reported_names = {str(p).removeprefix(str(clips) + "/") for p in reported}
        assert len(reported_names) == len(reported), "each bad file is reported once"
        with np.load(tmp_path / run / "emopia_data.npz") as npz:
            written = set(npz["names"].tolist())
            assert len(npz["names"]) == len(written)
        assert written.isdisjoint(reported_names)
        assert written | reported_names == all_names
        assert {p.name for p in intact} <= written
        assert f"wrote {len(written)} clips" in result.stdout
        assert f"skipped {len(reported_names)} clip(s)" in result.stdout
        if run == "built":
            assert len(reported_names) >= 20   # the corruption does break files
