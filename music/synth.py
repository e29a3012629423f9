"""Audio from MIDI with a SoundFont: what the listening pages play and what the beat tracker hears.

symusic's `Synthesizer` (a SoundFont sampler in C++, pinned to 0.5.9: 0.6.0's renderer fails
under numpy 2) renders a score; the default SoundFont is the General MIDI `TimGM6mb.sf2` that
the pretty_midi package ships, so nothing outside the Python packages is needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# madmom's beat and downbeat networks were trained on 44.1 kHz audio and resample anything
# else with ffmpeg; rendering at this rate needs neither.
SAMPLE_RATE = 44100


def default_soundfont() -> Path | None:
    """The General MIDI SoundFont inside the installed pretty_midi package (None if absent)."""
    try:
        import pretty_midi
    except ImportError:
        return None
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    return path if path.is_file() else None


def render_mono(synthesizer, midi_bytes: bytes) -> np.ndarray:
    """Mono float32 samples at SAMPLE_RATE of a MIDI file's bytes (empty when it has no notes)."""
    import symusic
    score = symusic.Score.from_midi(midi_bytes)
    if score.note_num() == 0:
        return np.zeros(0, dtype=np.float32)
    stereo = np.asarray(synthesizer.render(score, stereo=True), dtype=np.float32)
    return stereo.mean(axis=0)
