"""Render MIDI files to audio with a SoundFont, so that every run can be listened to.

symusic's `Synthesizer` (a SoundFont sampler in C++, pinned to 0.5.9: 0.6.0's renderer
fails under numpy 2) turns a MIDI file into samples; soundfile (libsndfile) encodes them
as MP3, which every browser plays, at about a twentieth of WAV's size. When the installed
libsndfile cannot write MP3, WAV is written instead. The default SoundFont is the General
MIDI `TimGM6mb.sf2` that the pretty_midi package ships, so nothing outside the Python
packages is needed.

Audio is optional: a missing or unusable SoundFont prints one warning line and the
callers go on without audio (their MIDI, figures and pages are still written).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from music.atomic import atomic_write
from music.synth import SAMPLE_RATE, default_soundfont

# libsndfile's MP3 compression level 0..1 picks LAME's VBR quality; 0.6 keeps a GM piano
# clean at about 70-90 kbit/s.
MP3_COMPRESSION = 0.6


def audio_format() -> str:
    """'mp3' when libsndfile can encode it, else 'wav'."""
    try:
        import soundfile
    except ImportError:
        return "wav"
    return "mp3" if "MP3" in soundfile.available_formats() else "wav"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_synthesizer(soundfont=None):
    """A symusic Synthesizer for `soundfont` (default: pretty_midi's), or None after one warning."""
    path = Path(soundfont) if soundfont else default_soundfont()
    if path is None:
        warn("no SoundFont found (install pretty_midi or pass --soundfont FILE); writing no audio")
        return None
    if not path.is_file():
        warn(f"{path}: no such SoundFont file; writing no audio")
        return None
    try:
        import symusic
        synthesizer = symusic.Synthesizer(sf_path=str(path), sample_rate=SAMPLE_RATE)
        # A file can pass the header check and still fail on its samples: render one note.
        probe = symusic.Score(480)
        track = symusic.Track(program=0)
        track.notes.append(symusic.Note(0, 480, 60, 64))
        probe.tracks.append(track)
        synthesizer.render(probe, stereo=True)
    except ImportError:
        warn("symusic is not installed (pip install symusic==0.5.9); writing no audio")
        return None
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warn(f"{path}: not a usable SoundFont ({reason}); writing no audio")
        return None
    return synthesizer


def render_samples(synthesizer, midi_path) -> np.ndarray:
    """Stereo float32 samples [T, 2] of a MIDI file, as long as the file (to its last event);
    empty when the file has no notes. The synthesizer must run at SAMPLE_RATE."""
    import symusic
    score = symusic.Score(str(midi_path))
    if score.note_num() == 0:
        return np.zeros((0, 2), dtype=np.float32)
    samples = np.asarray(synthesizer.render(score, stereo=True), dtype=np.float32).T
    # The synthesizer stops at the last note; a file that ends with empty bars (markers,
    # closed bars) lasts longer, and its audio should too, so a player shows its true length.
    length = int(round(score.to("second").end() * SAMPLE_RATE))
    if len(samples) < length:
        samples = np.concatenate([samples, np.zeros((length - len(samples), samples.shape[1]),
                                                    dtype=np.float32)])
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    # Scale down only to avoid clipping: louder and softer pieces keep their difference
    # (a velocity transfer must stay audible).
    if peak > 0.99:
        samples *= 0.99 / peak
    return samples


def write_audio(samples: np.ndarray, path, sample_rate: int = SAMPLE_RATE) -> Path:
    """Encode samples [T, channels] as MP3 or WAV (by the suffix of `path`), atomically."""
    import soundfile
    path = Path(path)
    if path.suffix == ".mp3":
        options = dict(format="MP3", subtype="MPEG_LAYER_III", compression_level=MP3_COMPRESSION,
                       bitrate_mode="VARIABLE")
    else:
        options = dict(format="WAV", subtype="PCM_16")
    atomic_write(path, lambda handle: soundfile.write(handle, samples, sample_rate, **options))
    return path


def render_midi(synthesizer, midi_path, out_path=None) -> Path | None:
    """Render one MIDI file beside itself (or to out_path); None when it has no notes."""
    midi_path = Path(midi_path)
    out_path = Path(out_path) if out_path else midi_path.with_suffix("." + audio_format())
    samples = render_samples(synthesizer, midi_path)
    if len(samples) == 0:
        return None
    return write_audio(samples, out_path)


def render_all(midi_paths, soundfont=None, enabled: bool = True) -> dict[Path, Path]:
    """{midi: audio file} for every MIDI file that could be rendered, each beside its MIDI.

    Returns {} (after at most one warning line) when audio is off or the SoundFont is
    unusable, so a caller can always go on and write its page without audio.
    """
    midi_paths = [Path(p) for p in midi_paths]
    if not enabled or not midi_paths:
        return {}
    synthesizer = load_synthesizer(soundfont)
    if synthesizer is None:
        return {}
    rendered = {}
    for midi in midi_paths:
        try:
            audio = render_midi(synthesizer, midi)
        except Exception as exc:   # one unreadable file must not cost the run its other audio
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            warn(f"{midi}: cannot render audio ({reason})")
            continue
        if audio is not None:
            rendered[midi] = audio
    return rendered
