"""Reading MIDI for the compound-word encoder: load, pick the piano part, rescale to 480 tpb.

EMOPIA's pipeline encodes one piano track. Here the piano part is the first non-drum
instrument of the file (miditoolkit's instrument order); further instruments are ignored
with a warning, and a file with drums only, or no notes at all, is rejected. Tempo changes
and markers are global to the file and kept. Time signatures are ignored (bars are always
4 beats), with a warning when a file declares another metre.

Every time is rescaled to 480 ticks per beat with round-half-to-even (Python's `round`),
the resolution the EMOPIA release was built at; `max_tick`, which sets how many beats the
chord analysis covers, is rescaled the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import miditoolkit
import numpy as np

from music.errors import UserError

# The time grid of the representation: 480 ticks per beat, bars of 4 beats, 16 positions
# (sixteenths) per bar.
TICKS_PER_BEAT = 480
TICKS_PER_BAR = 4 * TICKS_PER_BEAT
POSITIONS_PER_BAR = 16
TICKS_PER_POSITION = TICKS_PER_BAR // POSITIONS_PER_BAR


class ClipError(UserError):
    """A MIDI clip that cannot be encoded. `reason` is a short category for summaries."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class PianoPart:
    """The notes of the piano part and the file's tempo changes and markers, at 480 tpb."""

    starts: np.ndarray        # [n] int64, file order
    ends: np.ndarray          # [n] int64
    pitches: np.ndarray       # [n] int64
    velocities: np.ndarray    # [n] int64
    tempos: list              # [(tick, bpm)], sorted by tick
    markers: list             # [(tick, text)], sorted by tick
    max_tick: int             # one past the last event of the file
    warnings: list = field(default_factory=list)


def source_name(source) -> str:
    """How a MIDI source is named in messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    return "<in-memory MIDI>"


def load_midi(path) -> miditoolkit.MidiFile:
    """Parse a MIDI file; any parse failure becomes a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"{path}: file not found", "file not found")
    try:
        midi = miditoolkit.MidiFile(str(path))
    except EOFError:
        raise ClipError(f"{path}: truncated or corrupt MIDI file (unexpected end of data)",
                        "unreadable MIDI") from None
    except Exception as exc:  # mido raises OSError, ValueError, KeyError, ... for bad bytes
        detail = str(exc).strip() or type(exc).__name__
        raise ClipError(f"{path}: not a readable MIDI file ({detail})", "unreadable MIDI") from None
    return midi


def rescale(ticks, ticks_per_beat: int) -> np.ndarray:
    """round(tick * 480 / tpb), half to even, as int64 (exact for any realistic tick)."""
    ticks = np.asarray(ticks, dtype=np.int64)
    if ticks_per_beat == TICKS_PER_BEAT:
        return ticks
    return np.rint(ticks * TICKS_PER_BEAT / ticks_per_beat).astype(np.int64)


def read_piano_part(source, name: str | None = None) -> PianoPart:
    """Load `source` (a path or a miditoolkit.MidiFile) and return its piano part at 480 tpb.
    `name` names it in messages (default: the path)."""
    name = name or source_name(source)
    midi = source if isinstance(source, miditoolkit.MidiFile) else load_midi(source)
    tpb = midi.ticks_per_beat
    if tpb <= 0:  # 0, or a negative SMPTE time division: no beats to rescale by
        raise ClipError(f"{name}: unsupported time division ({tpb} ticks per beat)", "unreadable MIDI")
    warnings = []

    pianos = [inst for inst in midi.instruments if not inst.is_drum and inst.notes]
    if not pianos:
        if any(inst.notes for inst in midi.instruments):
            raise ClipError(f"{name}: only drum tracks, no piano part to encode", "drums only")
        raise ClipError(f"{name}: no notes", "no notes")
    piano = pianos[0]
    ignored = [inst for inst in midi.instruments if inst is not piano and inst.notes]
    if ignored:
        warnings.append(
            f"{name}: {len(ignored)} more instrument(s) ignored; only the first non-drum one "
            f"(program {int(piano.program)}{', ' + repr(piano.name) if piano.name else ''}) is encoded")
    odd_metres = sorted({f"{ts.numerator}/{ts.denominator}" for ts in midi.time_signature_changes
                         if (ts.numerator, ts.denominator) != (4, 4)})
    if odd_metres:
        warnings.append(f"{name}: time signature {', '.join(odd_metres)} ignored (bars are 4 beats)")

    # A parsed file cannot hold a note that ends before it starts, but a MidiFile built
    # in memory can; its duration would become a negative token, so it is left out.
    notes = [n for n in piano.notes if n.end >= n.start]
    if len(notes) < len(piano.notes):
        warnings.append(f"{name}: {len(piano.notes) - len(notes)} note(s) ending before they start ignored")
    if not notes:
        raise ClipError(f"{name}: no notes (every note ends before it starts)", "no notes")
    starts = rescale([n.start for n in notes], tpb)
    ends = rescale([n.end for n in notes], tpb)
    pitches = np.array([n.pitch for n in notes], dtype=np.int64)
    velocities = np.array([n.velocity for n in notes], dtype=np.int64)

    tempo_changes = sorted(midi.tempo_changes, key=lambda t: t.time)
    tempo_ticks = rescale([t.time for t in tempo_changes], tpb).tolist()
    tempos = [(tick, float(t.tempo)) for tick, t in zip(tempo_ticks, tempo_changes)]
    markers_sorted = sorted(midi.markers, key=lambda m: m.time)
    marker_ticks = rescale([m.time for m in markers_sorted], tpb).tolist()
    markers = [(tick, m.text) for tick, m in zip(marker_ticks, markers_sorted)]

    if midi.max_tick > 0:
        max_tick = int(rescale([midi.max_tick], tpb)[0])
    else:  # built in memory, never parsed: one past the last note end
        max_tick = int(ends.max()) + 1
    return PianoPart(starts, ends, pitches, velocities, tempos, markers, max_tick, warnings)
