"""music.sync: the synchroniser's rules on beats given exactly (no tracker needed)."""
import io

import miditoolkit
import numpy as np
import pytest

from music import cp
from music.beats import FPS, Beats
from music.midi_io import ClipError
from music.midi_io import TICKS_PER_BAR
from music.sync import beat_grid, nearest_tick, synchronise, tick_seconds
from tests.rubato import midi_bytes, rubato_beats, rubato_piece


def exact_beats(times, pickup=1):
    """Beats as the tracker reports them (whole frames), downbeat after `pickup` beats."""
    frames = np.rint(np.asarray(times) * FPS).astype(np.int64)
    positions = (np.arange(len(frames)) - pickup) % 4 + 1
    return Beats(frames, positions)


def test_tick_seconds_equals_miditoolkit_on_a_parsed_file():
    midi = rubato_piece(rubato_beats(12))
    midi.tempo_changes.append(miditoolkit.TempoChange(tempo=90.0, time=2000))
    parsed = miditoolkit.MidiFile(file=io.BytesIO(midi_bytes(midi)))
    np.testing.assert_array_equal(tick_seconds(parsed), parsed.get_tick_to_time_mapping())
    # In memory (max_tick 0, never parsed) it still reaches the last note end.
    assert len(tick_seconds(midi)) == max(n.end for n in midi.instruments[0].notes) + 1


def test_beat_grid_splits_each_beat_into_480_ticks_and_continues_after_the_last():
    grid = beat_grid(np.array([0.0, 0.5, 1.5]), end_time=2.0)
    assert grid[480] == 0.5 and grid[960] == pytest.approx(1.5)   # the tail accumulates steps
    np.testing.assert_allclose(np.diff(grid[:480]), 0.5 / 480)
    np.testing.assert_allclose(np.diff(grid[480:]), 1.0 / 480)   # the tail keeps the last step
    assert grid[-2] < 2.0 <= grid[-1]


def test_nearest_tick_takes_the_earlier_tick_on_a_tie():
    grid = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(nearest_tick(grid, [0.5, 0.51, 1.49, -1.0, 7.0]), [0, 1, 1, 0, 3])


def test_notes_land_on_the_beat_grid_with_the_first_downbeat_at_bar_one():
    truth = rubato_beats(24, bpm=84.0)
    midi = rubato_piece(truth, pickup=1)
    synced = synchronise(midi, exact_beats(truth))
    assert synced.ticks_per_beat == 480
    notes = synced.instruments[0].notes
    # Every chord note sits on a beat (within the tracker's 10 ms frames), the melody between beats.
    chord_starts = np.array([n.start for n in notes if n.velocity in (60, 85)])
    assert np.abs((chord_starts + 240) % 480 - 240).max() <= 8
    downbeat_starts = sorted({n.start for n in notes if n.velocity == 100})
    assert all(abs(s % TICKS_PER_BAR) <= 8 or abs(s % TICKS_PER_BAR - TICKS_PER_BAR) <= 8 for s in downbeat_starts)
    assert abs(downbeat_starts[0] - TICKS_PER_BAR) <= 8      # the pickup sits in bar 0
    assert synced.time_signature_changes[0].time == TICKS_PER_BAR


def test_one_tempo_per_beat_from_its_interval():
    truth = rubato_beats(16, bpm=84.0)
    beats = exact_beats(truth)
    synced = synchronise(rubato_piece(truth), beats)
    times = np.concatenate([[0.0], beats.times])
    tempos = synced.tempo_changes
    assert len(tempos) == len(times) - 1
    np.testing.assert_allclose([t.tempo for t in tempos], 60.0 / np.diff(times))
    shift = TICKS_PER_BAR - 480 * 2          # the first downbeat is the second tracked beat
    assert [t.time for t in tempos] == [480 * i + shift for i in range(len(tempos))]


def test_encoded_tempo_tokens_follow_the_tempo_curve():
    truth = rubato_beats(32, bpm=84.0)
    events = cp.encode_midi(synchronise(rubato_piece(truth), exact_beats(truth)), 1).events
    tempos = [int(e[0][len("Tempo_"):]) for e in events if isinstance(e[0], str) and e[0].startswith("Tempo_")]
    # One token per beat: first the interval from time 0 to the first beat (the synchroniser's
    # convention), then each beat interval of the performance (80..88 BPM).
    assert tempos[0] == cp.TEMPO_BINS[np.argmin(np.abs(cp.TEMPO_BINS - 60.0 / truth[0]))]
    true_bpm = 60.0 / np.diff(truth)
    assert len(tempos) - 1 >= len(true_bpm) - 4
    step = int(cp.TEMPO_BINS[1] - cp.TEMPO_BINS[0])
    np.testing.assert_array_less(np.abs(np.array(tempos[1:]) - true_bpm[:len(tempos) - 1]), step)
    assert len(set(tempos[1:])) >= 3


def test_a_beat_at_time_zero_is_not_doubled():
    truth = rubato_beats(12, start=0.0)
    synced = synchronise(rubato_piece(truth, pickup=0), exact_beats(truth, pickup=0))
    assert all(np.isfinite(t.tempo) and t.tempo < 1000 for t in synced.tempo_changes)
    assert synced.instruments[0].notes[0].start == TICKS_PER_BAR


def test_too_few_beats_or_no_downbeat_is_a_clip_error():
    midi = rubato_piece(rubato_beats(8))
    with pytest.raises(ClipError, match="x.mid: beat tracking found 3 beat"):
        synchronise(midi, Beats(np.array([10, 60, 110]), np.array([1, 2, 3])), "x.mid")
    with pytest.raises(ClipError, match="no downbeat"):
        synchronise(midi, Beats(np.array([10, 60, 110, 160]), np.array([2, 3, 4, 2])), "x.mid")
