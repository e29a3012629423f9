"""Our song-level metrics against muspy 0.5's, the reference they re-code, on MIDI files.

muspy (requirements-dev.txt) reads a file with its own reader (`muspy.read_midi` is
`from_mido` of the mido file) at the file's own resolution. Floats are compared with ==:
both divide the same two integers, so they agree to the last bit.

`python -m tests.muspy_agreement ZIP` checks every .mid in a zip and prints
{"files": n, "problems": [...]} as JSON: the test suite runs it beside the other tests
(tests/long_runs.py), since reading all of EMOPIA twice takes a core for about 20 s.
"""
from __future__ import annotations

import io
import json
import math
import sys
import zipfile

import miditoolkit
import numpy as np

from evaluation import metrics as M
from music.midi_io import TICKS_PER_BEAT
from music.piece import piece_from_midi


def muspy_music(notes, resolution=TICKS_PER_BEAT):
    import muspy

    track = muspy.Track(notes=[muspy.Note(time=int(s), pitch=int(p), duration=int(e - s))
                               for p, s, e in np.asarray(notes).reshape(-1, 3)])
    return muspy.Music(resolution=resolution, tracks=[track])


def muspy_song(music) -> dict:
    import muspy

    return {"pitch_range": muspy.pitch_range(music),
            "pitch_classes": muspy.n_pitch_classes_used(music),
            "polyphony": muspy.polyphony(music)}


def ours_song(notes) -> dict:
    metrics = M.song_metrics(notes)
    return {m: metrics[m] for m in M.SONG_METRICS}


def same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def disagreements(name: str, data: bytes) -> list[str]:
    """How our song-level metrics differ from muspy's on one MIDI file (empty when equal).

    We check: (1) muspy's reader and miditoolkit see the same notes; (2) our metrics on
    those notes equal muspy's; (3) through `piece_from_midi` (rescaled to 480 ticks per
    beat) pitch range and classes equal muspy's and polyphony equals muspy's on the same
    grid, i.e. after `adjust_resolution(480)`.
    """
    import mido
    import muspy

    music = muspy.from_mido(mido.MidiFile(file=io.BytesIO(data)))
    midi = miditoolkit.MidiFile(file=io.BytesIO(data))
    reference = muspy_song(music)
    problems = []
    (track,) = [t for t in music.tracks if not t.is_drum]  # a Piece keeps one track
    native = sorted((n.pitch, n.time, n.end) for n in track.notes)
    if native != sorted((n.pitch, n.start, n.end) for n in midi.instruments[0].notes):
        problems.append(f"{name}: muspy and miditoolkit read different notes")
    if not same(ours_song(native), reference):
        problems.append(f"{name}: same notes: ours {ours_song(native)}, muspy {reference}")
    ours = ours_song(piece_from_midi(midi).notes)
    reference["polyphony"] = muspy.polyphony(music.adjust_resolution(TICKS_PER_BEAT))
    if not same(ours, reference):
        problems.append(f"{name}: at 480 ticks per beat: ours {ours}, muspy {reference}")
    return problems


def zip_disagreements(path) -> dict:
    """{"files": n, "problems": [...]} over every .mid in the zip at `path`."""
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".mid"))
        problems = [p for n in names for p in disagreements(n, archive.read(n))]
    return {"files": len(names), "problems": problems}


if __name__ == "__main__":
    print(json.dumps(zip_disagreements(sys.argv[1])))
