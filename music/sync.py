"""Beat synchronisation: rewrite a MIDI clip on the grid of its tracked beats (EMOPIA's step 0).

The rules of compound-word-transformer's `dataset/synchronizer.py`, which made the MIDI that
EMOPIA's compound words were built from:
- the beats are time 0 followed by the tracked beats; beat i sits at tick 480 i;
- every time in between is mapped linearly: each beat interval is split into 480 equal
  ticks; after the last beat the last tick length continues to the end of the file;
- a note's start and end go to the nearest tick (the earlier one on a tie);
- one tempo change per beat interval, 60 / interval BPM, at the tick of the beat starting it;
- the first downbeat's tick is moved to 1920 (the start of bar 1): notes and tempo changes
  shift by 1920 minus that tick, so a pickup sits in bar 0 and bars follow the downbeats;
- a 4/4 time signature.
Two details differ, neither of which reaches a compound word: the time signature is placed
at the shifted first downbeat (the original leaves it at the unshifted tick), and a tracked
beat at time 0 is not preceded by a second beat at time 0 (the original would divide by a
zero interval). Markers and lyrics are not carried over (the original drops them too).
"""
from __future__ import annotations

import miditoolkit
import numpy as np
from miditoolkit.midi.containers import Instrument, Note, TempoChange, TimeSignature

from music.beats import MIN_BEATS, Beats
from music.midi_io import TICKS_PER_BAR, TICKS_PER_BEAT, ClipError


def tick_seconds(midi: miditoolkit.MidiFile) -> np.ndarray:
    """The time in seconds of every tick up to the file's end (its last event or note end),
    by its tempo changes (120 BPM when it has none), with miditoolkit's arithmetic."""
    end = max([midi.max_tick] + [n.end for inst in midi.instruments for n in inst.notes])
    tempos = sorted(midi.tempo_changes, key=lambda t: t.time) or [TempoChange(tempo=120.0, time=0)]
    seconds = np.zeros(end + 1)
    elapsed = 0.0
    for i, change in enumerate(tempos):
        stop = tempos[i + 1].time if i + 1 < len(tempos) else end
        if stop < change.time or change.time > end:
            continue
        stop = min(stop, end)
        per_tick = 60 / change.tempo / float(midi.ticks_per_beat)
        seconds[change.time: stop + 1] = elapsed + per_tick * np.arange(stop - change.time + 1)
        elapsed = seconds[stop]
    return seconds


def beat_grid(beat_times: np.ndarray, end_time: float, ticks_per_beat: int = TICKS_PER_BEAT) -> np.ndarray:
    """The time in seconds of every tick: `ticks_per_beat` equal steps per beat interval,
    then the last step repeated until `end_time` is reached (or passed by one step)."""
    steps = np.arange(ticks_per_beat, dtype=np.float64)
    pieces = []
    for start, end in zip(beat_times[:-1], beat_times[1:]):
        pieces.append(start + (end - start) / ticks_per_beat * steps)
    grid = np.concatenate(pieces)
    step = grid[-1] - grid[-2]
    tail, now = [], grid[-1]
    while now < end_time:
        now += step
        tail.append(now)
    return np.concatenate([grid, np.array(tail)]) if tail else grid


def nearest_tick(grid: np.ndarray, times) -> np.ndarray:
    """Index of the grid time nearest to each time (the earlier one on a tie)."""
    times = np.asarray(times, dtype=np.float64)
    right = np.clip(np.searchsorted(grid, times, side="left"), 1, len(grid) - 1)
    left = right - 1
    take_right = np.abs(grid[right] - times) < np.abs(times - grid[left])
    return np.where(take_right, right, left).astype(np.int64)


def synchronise(midi: miditoolkit.MidiFile, beats: Beats, name: str = "<in-memory MIDI>") -> miditoolkit.MidiFile:
    """A new MidiFile at 480 ticks per beat whose beats are `beats`' and whose first downbeat
    starts bar 1. ClipError when there are too few beats or no downbeat."""
    if len(beats) < MIN_BEATS:
        raise ClipError(f"{name}: beat tracking found {len(beats)} beat(s) (at least {MIN_BEATS} needed)",
                        "too few beats")
    downbeats = np.flatnonzero(beats.positions == 1)
    if len(downbeats) == 0:
        raise ClipError(f"{name}: beat tracking found no downbeat", "too few beats")
    tracked = beats.times
    beat_times = tracked if tracked[0] <= 0 else np.concatenate([[0.0], tracked])

    tick_to_time = tick_seconds(midi)
    grid = beat_grid(beat_times, float(tick_to_time[-1]))
    first_downbeat = int(nearest_tick(grid, tracked[downbeats[0]]))
    shift = TICKS_PER_BAR - first_downbeat

    def to_tick(ticks):
        seconds = tick_to_time[np.minimum(np.asarray(ticks, dtype=np.int64), len(tick_to_time) - 1)]
        return nearest_tick(grid, seconds) + shift

    out = miditoolkit.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
    for instrument in midi.instruments:
        copy = Instrument(program=instrument.program, is_drum=instrument.is_drum, name=instrument.name)
        if instrument.notes:
            starts = to_tick([n.start for n in instrument.notes])
            ends = to_tick([n.end for n in instrument.notes])
            copy.notes = [Note(velocity=n.velocity, pitch=n.pitch, start=int(s), end=int(e))
                          for n, s, e in zip(instrument.notes, starts, ends)]
        out.instruments.append(copy)
    intervals = np.diff(beat_times)
    beat_ticks = nearest_tick(grid, beat_times[:-1]) + shift
    out.tempo_changes = [TempoChange(tempo=float(60.0 / interval), time=int(tick))
                         for tick, interval in zip(beat_ticks, intervals)]
    out.time_signature_changes = [TimeSignature(numerator=4, denominator=4, time=TICKS_PER_BAR)]
    return out
