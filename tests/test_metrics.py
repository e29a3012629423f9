"""Metrics against values computed by hand on small constructed pieces."""
import math

import miditoolkit
import numpy as np
import pytest

from tests.conftest import SAMPLE_MIDI_DIR
from tests.muspy_agreement import disagreements, muspy_music, muspy_song, ours_song, same
from tests.sample_cp import short_pieces
from music.chords import CHORD_QUALITIES
from music.midi_io import TICKS_PER_BEAT
from music.piece import piece_from_midi
from evaluation import metrics as M

# One bar, overlapping notes (two of them the same pitch, overlapping in time).
#   pitch 60 on [0, 480) and [240, 720) -> sounds 720 ticks (same pitch counts once)
#   pitch 64 on [0, 960)                -> 960 ticks
#   pitch 67 on [480, 960)              -> 480 ticks
#   something sounds on [0, 960)        -> 960 ticks; polyphony = 2160 / 960 = 2.25
ONE_BAR = [(60, 0, 480), (64, 0, 960), (67, 480, 960), (60, 240, 720)]

# Three bars: bar 0 one long note, bar 1 a two-note chord, bar 2 one note after a gap.
#   sounding: [0, 2400) and [4320, 4800) -> 2880 ticks; pitch time 1920 + 3 * 480 = 3360
THREE_BARS = [(48, 0, 1920), (72, 1920, 2400), (73, 1920, 2400), (84, 4320, 4800)]


def test_one_bar_overlapping_notes():
    assert M.pitch_range(ONE_BAR) == 7
    assert M.n_pitch_classes(ONE_BAR) == 3          # C, E, G
    assert M.polyphony(ONE_BAR) == pytest.approx(2.25)
    assert M.bar_pitch_range(ONE_BAR) == 7
    assert M.bar_pitch_classes(ONE_BAR) == 3
    assert M.bar_polyphony(ONE_BAR) == pytest.approx(4 / 3)  # 4 notes, onsets 0/240/480


def test_three_bars():
    assert M.pitch_range(THREE_BARS) == 36
    assert M.n_pitch_classes(THREE_BARS) == 2       # C and C#
    assert M.polyphony(THREE_BARS) == pytest.approx(3360 / 2880)
    assert M.bar_pitch_range(THREE_BARS) == pytest.approx((0 + 1 + 0) / 3)
    assert M.bar_pitch_classes(THREE_BARS) == pytest.approx((1 + 2 + 1) / 3)
    assert M.bar_polyphony(THREE_BARS) == pytest.approx((1 + 2 + 1) / 3)


def test_empty_bars_are_left_out_of_bar_means():
    # Bars 1 and 2 hold no onset: the bar mean is over bars 0 and 3 only.
    notes = [(60, 0, 100), (62, 0, 100), (70, 3 * 1920, 3 * 1920 + 100)]
    assert M.bar_pitch_range(notes) == pytest.approx((2 + 0) / 2)
    assert M.bar_polyphony(notes) == pytest.approx((2 + 1) / 2)


def test_empty_piece_is_nan_everywhere():
    for notes in ([], np.zeros((0, 3)), np.zeros((0, 4))):
        values = M.song_metrics(notes)
        assert set(values) == set(M.METRICS)
        assert all(math.isnan(v) for v in values.values())


def test_zero_length_notes_have_pitches_but_no_polyphony():
    notes = [(60, 0, 0), (72, 120, 120)]
    assert M.pitch_range(notes) == 12
    assert math.isnan(M.polyphony(notes))


def test_single_note():
    values = M.song_metrics([(60, 0, 480)])
    assert values == {"pitch_range": 0, "pitch_classes": 1, "polyphony": 1.0,
                      "bar_pitch_range": 0, "bar_pitch_classes": 1, "bar_polyphony": 1.0}


def test_miditoolkit_notes_are_accepted():
    notes = [miditoolkit.Note(velocity=80, pitch=p, start=s, end=e) for p, s, e in ONE_BAR]
    assert M.as_note_array(notes)[:, 3].tolist() == [80] * 4
    assert M.song_metrics(notes) == M.song_metrics(ONE_BAR)


def test_summarize_per_quadrant_skips_nan():
    rows = [{"pitch_range": 10.0}, {"pitch_range": 20.0}, {"pitch_range": math.nan},
            {"pitch_range": 4.0}]
    out = M.summarize(rows, [1, 1, 1, 3], metrics=("pitch_range",))
    assert set(out) == {"Q1", "Q3", "all"}
    assert out["Q1"]["pitch_range"] == (15.0, 5.0, 2)
    assert out["Q3"]["pitch_range"] == (4.0, 0.0, 1)
    mean, std, n = out["all"]["pitch_range"]
    assert n == 3 and mean == pytest.approx(34 / 3) and std == pytest.approx(np.std([10, 20, 4]))
    assert M.format_mean_std(1.234, 0.5) == "1.23 ± 0.50"
    assert M.format_mean_std(math.nan, math.nan) == "n/a"


def test_chord_quality_parsing():
    assert M.chord_quality("C_M") == "M"
    assert M.chord_quality("A#_m7") == "m7"
    assert M.chord_quality("B_/o7_D") == "/o7"
    assert M.chord_quality("N_N") is None
    assert M.chord_quality("CONTI") is None


def test_element_values_of_a_piece():
    notes = np.array([(60, 0, 480, 80), (64, 1920 + 360, 1920 + 480, 40)])
    piece = M.Piece(notes=notes, tempos=np.array([120.0, 90.0]), chords=["C_M", "A_m", "N_N"])
    values = M.element_values(piece)
    assert values["tempo"].tolist() == [120, 90]
    assert values["chord"].tolist() == [CHORD_QUALITIES.index("M"), CHORD_QUALITIES.index("m")]
    assert values["beat"].tolist() == [0, 3]
    assert values["pitch"].tolist() == [60, 64]
    assert values["duration"].tolist() == [480, 120]
    assert values["velocity"].tolist() == [80, 40]
    assert piece.n_bars == 2


def test_piece_from_midi_rescales_to_480(tmp_path):
    midi = miditoolkit.MidiFile(ticks_per_beat=384)
    inst = miditoolkit.Instrument(program=0)
    inst.notes = [miditoolkit.Note(velocity=70, pitch=60, start=384, end=768)]
    midi.instruments = [inst]
    midi.tempo_changes = [miditoolkit.TempoChange(100, 0)]
    midi.markers = [miditoolkit.Marker("D_m7", 0)]
    path = tmp_path / "x.mid"
    midi.dump(str(path))
    piece = piece_from_midi(path, emotion=2)
    assert piece.notes.tolist() == [[60, 480, 960, 70]]
    assert piece.emotion == 2 and piece.name == "x.mid"
    assert M.element_values(piece)["chord"].tolist() == [CHORD_QUALITIES.index("m7")]
    assert M.element_values(piece)["tempo"].tolist() == pytest.approx([100])


# ------------------------------------------------------------------ muspy 0.5 agreement
# The comparison itself is in tests/muspy_agreement.py.

def test_hand_made_pieces_match_muspy():
    rng = np.random.default_rng(0)
    pieces = [ONE_BAR, THREE_BARS,
              [(60, 0, 480), (60, 480, 960)],                  # same pitch, touching
              [(60, 0, 0), (64, 0, 240), (67, 240, 240)],      # zero-length notes
              [(60, 0, 0), (72, 120, 120)]]                    # nothing sounds: NaN in both
    for _ in range(40):  # dense random pieces: many same-pitch overlaps
        n = int(rng.integers(1, 60))
        start = rng.integers(0, 4000, n)
        pieces.append(np.stack([rng.integers(55, 67, n), start,
                                start + rng.integers(0, 900, n)], axis=1))
    for notes in pieces:
        assert same(ours_song(notes), muspy_song(muspy_music(notes))), notes


def test_empty_piece_is_nan_where_muspy_gives_zero():
    # The one documented difference (see evaluation/metrics.py): muspy gives 0 for the pitch
    # range and pitch classes of an empty piece (and NaN for its polyphony); we give NaN.
    assert same(muspy_song(muspy_music([])),
                {"pitch_range": 0, "pitch_classes": 0, "polyphony": math.nan})
    assert all(math.isnan(v) for v in ours_song([]).values())


def test_sample_clips_match_muspy():
    paths = sorted(SAMPLE_MIDI_DIR.glob("*.mid"))
    assert len(paths) == 32
    problems = [p for path in paths for p in disagreements(path.name, path.read_bytes())]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_all_emopia_clips_match_muspy(emopia_muspy_agreement):
    # Checked beside the other tests by a process of its own (tests/long_runs.py).
    result = emopia_muspy_agreement
    assert result["files"] == 1078
    problems = result["problems"]
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:20])


# ------------------------------------------------------------------ compute_metrics.py



def _generated_like(sample_npz, tmp_path):
    """Four sample rows posing as generated output: a MIDI folder and a words pickle."""
    import pickle

    from music.cp import words_to_midi
    from music.data import load_cp_dataset
    from music.piece_io import dataset_words

    data = load_cp_dataset(sample_npz)
    folder = tmp_path / "generated"
    folder.mkdir()
    words, emotion, names = [], [], []
    first_of_each_quadrant = [int(np.flatnonzero(data.emotion == q)[0]) for q in (1, 2, 3, 4)]
    for i, row in enumerate(first_of_each_quadrant):
        w = dataset_words(data, row)
        q = int(data.emotion[row])
        words_to_midi(w, data.word2event, path=folder / f"emotion{q}_{i}.mid", close_empty_bars=True)
        words.append(w), emotion.append(q), names.append(f"emotion{q}_{i}")
    pickle_path = tmp_path / "generated_data.data"
    pickle_path.write_bytes(pickle.dumps({"words": words, "emotion": emotion, "names": names,
                                          "dictionary": str(data.dictionary_path)}))
    return folder, pickle_path


def test_compute_metrics_script(sample_npz, tmp_path, capsys):
    import csv

    import compute_metrics
    from music.errors import UserError

    sample_npz = short_pieces(sample_npz, tmp_path / "data")     # quicker piano rolls
    folder, pickle_path = _generated_like(sample_npz, tmp_path)
    out = tmp_path / "m1"
    # The listening page and its audio have their own tests (test_pages.py): one piece per
    # quadrant and source still takes every path here, without audio.
    quick = ["--listen", "1", "--audio", "False"]
    assert compute_metrics.main(["--generated", str(folder), "--data_path", str(sample_npz),
                                 "--out_dir", str(out), *quick]) == 0
    assert "| pitch range | all |" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {r["source"] for r in rows} == {"generated", "data"}
    data_all = [r for r in rows if r["source"] == "data" and r["quadrant"] == "all"]
    assert len(data_all) == len(M.METRICS) and all(int(r["n"]) == 32 for r in data_all)
    assert (out / "violins.png").stat().st_size > 10000 and (out / "metrics.md").is_file()
    assert len(list((out / "piano_rolls").glob("emotion*.png"))) == 4  # one per quadrant

    # The words pickle gives the same numbers as the MIDI files written from it.
    out2 = tmp_path / "m2"
    assert compute_metrics.main(["--generated", str(pickle_path), "--out_dir", str(out2),
                                 "--piano_rolls", "0", *quick]) == 0
    from_pickle = [r for r in csv.DictReader(open(out2 / "metrics.csv"))]
    from_midi = [r for r in rows if r["source"] == "generated"]
    assert from_pickle == from_midi

    bad = tmp_path / "bad.data"
    bad.write_bytes(__import__("pickle").dumps({"codes": [1, 2]}))
    with pytest.raises(UserError, match="expected a dict with keys"):
        compute_metrics.main(["--generated", str(bad)])
    with pytest.raises(UserError, match="--generated"):
        compute_metrics.main([])


def test_compute_metrics_with_evaluator(sample_npz, tmp_path, capsys):
    import compute_metrics
    import train_evaluator

    folder, _ = _generated_like(sample_npz, tmp_path)
    ev = tmp_path / "ev.json"
    train_evaluator.main(["--data_path", str(sample_npz), "--out", str(ev), "--split", "clip"])
    assert compute_metrics.main(["--generated", str(folder), "--evaluator", str(ev),
                                 "--out_dir", str(tmp_path / "m"), "--piano_rolls", "0", "--audio", "False"]) == 0
    text = (tmp_path / "m" / "metrics.md").read_text()
    assert "## Emotion evaluator" in text and "| generated | all | 4 |" in text


def test_compute_metrics_leaves_empty_pieces_out_and_counts_them(tmp_path, capsys):
    import csv

    import compute_metrics

    folder = tmp_path / "generated"
    folder.mkdir()
    for i, notes in enumerate([[(60, 0, 480), (67, 0, 960)], []]):
        midi = miditoolkit.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
        inst = miditoolkit.Instrument(program=0)
        inst.notes = [miditoolkit.Note(velocity=80, pitch=p, start=s, end=e) for p, s, e in notes]
        midi.instruments = [inst]
        midi.dump(str(folder / f"emotion1_{i}.mid"))
    out = tmp_path / "m"
    assert compute_metrics.main(["--generated", str(folder), "--out_dir", str(out),
                                 "--piano_rolls", "0", "--audio", "False"]) == 0
    assert "generated: 2 pieces (2/0/0/0 in Q1/Q2/Q3/Q4; 1 empty)" in capsys.readouterr().out
    rows = {(r["quadrant"], r["metric"]): r for r in csv.DictReader(open(out / "metrics.csv"))}
    assert rows["Q1", "pitch_range"]["n"] == "1" and float(rows["Q1", "pitch_range"]["mean"]) == 7
    assert float(rows["all", "polyphony"]["mean"]) == 1.5
