"""Rendering MIDI to audio: length, loudness, formats, and a bad SoundFont as one warning."""
from __future__ import annotations

import miditoolkit
import numpy as np
import pytest
import soundfile

from evaluation import audio as A


def write_midi(path, seconds_per_beat=0.5, n_beats=8, velocity=90, chord=(60,), tempo_change=None):
    """A short piano MIDI: one note (or chord) per beat, at 480 ticks per beat."""
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    midi.tempo_changes = [miditoolkit.TempoChange(60.0 / seconds_per_beat, 0)]
    if tempo_change:
        midi.tempo_changes.append(miditoolkit.TempoChange(tempo_change[1], tempo_change[0] * 480))
    piano = miditoolkit.Instrument(program=0, name="piano")
    for beat in range(n_beats):
        for pitch in chord:
            piano.notes.append(miditoolkit.Note(velocity, pitch + beat % 5, beat * 480, beat * 480 + 400))
    midi.instruments = [piano] if n_beats else [miditoolkit.Instrument(program=0)]
    midi.dump(str(path))
    return path


def midi_seconds(path) -> float:
    """A MIDI file's length: the time of its last event (notes, markers, tempo changes)."""
    midi = miditoolkit.MidiFile(str(path))
    return float(midi.get_tick_to_time_mapping()[midi.max_tick])


def decoded_seconds(path) -> float:
    data, rate = soundfile.read(str(path))
    return len(data) / rate


def test_default_soundfont_is_pretty_midis_general_midi_font():
    path = A.default_soundfont()
    assert path is not None and path.name == "TimGM6mb.sf2" and path.parent.name == "pretty_midi"


def test_rendered_audio_decodes_and_lasts_as_long_as_the_midi(tmp_path):
    slow = write_midi(tmp_path / "slow.mid", seconds_per_beat=1.0, n_beats=6)
    changing = write_midi(tmp_path / "change.mid", n_beats=8, tempo_change=(4, 30))  # 4 s, then 2 s/beat
    rendered = A.render_all([slow, changing])
    assert set(rendered) == {slow, changing}
    for midi, audio in rendered.items():
        assert audio.suffix == "." + A.audio_format() and audio.parent == midi.parent
        expected = midi_seconds(midi)
        assert abs(decoded_seconds(audio) - expected) < 1.0, (midi, decoded_seconds(audio), expected)
    # The tempo change is honoured: 4 beats at 0.5 s, then 3 beats at 2 s and a 400-tick note.
    assert decoded_seconds(rendered[changing]) == pytest.approx(2.0 + 6.0 + 400 / 480 * 2.0, abs=0.3)
    data, _ = soundfile.read(str(rendered[slow]))
    assert np.abs(data).max() > 0.01          # sound, not silence


def test_audio_runs_to_the_last_event_of_the_midi_not_just_the_last_note(tmp_path):
    # Generated files end with closed empty bars (a marker past the last note).
    path = write_midi(tmp_path / "bars.mid", n_beats=4)                 # notes end at 1.83 s
    midi = miditoolkit.MidiFile(str(path))
    midi.markers.append(miditoolkit.Marker("N_N", 480 * 16))             # 8 s at 120 bpm
    midi.dump(str(path))
    audio = A.render_all([path])[path]
    assert abs(decoded_seconds(audio) - midi_seconds(path)) < 0.1 and midi_seconds(path) > 7.9


@pytest.mark.parametrize("has_mp3", [True, False])
def test_mp3_is_what_browsers_get_when_libsndfile_has_it_else_wav(tmp_path, monkeypatch, has_mp3):
    """Both branches of the choice, whatever this machine's libsndfile can do; the file
    written is of the format its name says."""
    real = soundfile.available_formats()
    formats = {k: v for k, v in real.items() if k != "MP3"}
    if has_mp3:
        formats["MP3"] = "MPEG-1/2 Audio"
    monkeypatch.setattr(soundfile, "available_formats", lambda: formats)
    expected = "MP3" if has_mp3 else "WAV"
    assert A.audio_format() == expected.lower()
    if expected in real:                 # a libsndfile without MP3 cannot write one
        midi = write_midi(tmp_path / "a.mid", n_beats=2)
        audio = A.render_all([midi])[midi]
        assert audio.name == f"a.{expected.lower()}" and soundfile.info(str(audio)).format == expected


def test_loud_dense_music_does_not_clip_and_softer_stays_softer(tmp_path):
    loud = write_midi(tmp_path / "loud.mid", velocity=127, chord=tuple(range(36, 96, 3)))
    soft = write_midi(tmp_path / "soft.mid", velocity=30, chord=(48, 60, 72))
    synth = A.load_synthesizer()
    loud_samples, soft_samples = A.render_samples(synth, loud), A.render_samples(synth, soft)
    assert np.abs(loud_samples).max() <= 0.99 + 1e-6
    assert np.abs(soft_samples).max() < 0.5 * np.abs(loud_samples).max()


def test_a_midi_without_notes_gets_no_audio_and_no_error(tmp_path):
    empty = write_midi(tmp_path / "empty.mid", n_beats=0)
    assert A.render_all([empty]) == {}
    assert not list(tmp_path.glob("empty.*3")) and not (tmp_path / "empty.wav").exists()


def test_audio_off_writes_nothing(tmp_path):
    midi = write_midi(tmp_path / "a.mid")
    assert A.render_all([midi], enabled=False) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mid"]


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated"])
def test_a_bad_soundfont_is_one_warning_line_and_no_audio(tmp_path, capsys, kind):
    midi = write_midi(tmp_path / "a.mid")
    soundfont = tmp_path / "font.sf2"
    if kind == "garbage":
        soundfont.write_bytes(b"this is not a SoundFont\n" * 10)
    elif kind == "truncated":
        soundfont.write_bytes(A.default_soundfont().read_bytes()[:50_000])
    assert A.render_all([midi], soundfont) == {}
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {soundfont}: ")
    assert "no audio" in lines[0]
    expected = ["a.mid"] + (["font.sf2"] if kind != "missing" else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
