"""The shipped pretrained models load like any checkpoint and generate in seconds."""
import pickle
import sys

import miditoolkit
import torch

from music.cp import words_to_midi
from run.checkpoint import build_muser, build_prior, load_checkpoint
from tests.conftest import ROOT
from tests import warm_python

PRETRAINED = ROOT / "pretrained"


def test_pretrained_files_are_small_16_bit_checkpoints():
    total = sum(p.stat().st_size for p in PRETRAINED.glob("*.pt"))
    assert total < 20 * 2 ** 20
    muser = load_checkpoint(PRETRAINED / "muser.pt", "muser")
    prior = load_checkpoint(PRETRAINED / "prior.pt", "prior")
    for checkpoint in (muser, prior):
        assert checkpoint["stored_dtype"] == "float16" and "optimizer" not in checkpoint
    assert muser["model"]["quantizer.codebook"].dtype == torch.float32
    model = build_muser(muser)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert build_prior(prior).config.n_codes == len(prior["vq_dict"][0])


def midi_notes(path):
    return [(n.pitch, n.start, n.end, n.velocity) for n in miditoolkit.MidiFile(str(path)).instruments[0].notes]


def test_generate_from_pretrained(tmp_path):
    result = warm_python.run([sys.executable, "generate.py", "--VQ_prior", str(PRETRAINED / "prior.pt"),
                             "--VQ_VAE", str(PRETRAINED / "muser.pt"), "--music_file", "p",
                             "--out_root", str(tmp_path), "--n_per_emotion", "1", "--max_steps", "48",
                             "--audio", "False", "--piano_rolls", "False"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-1500:]
    assert sorted(p.name for p in (tmp_path / "p").glob("*.mid")) == [f"emotion{q}_0.mid" for q in (1, 2, 3, 4)]
    with open(tmp_path / "p_data.data", "rb") as handle:
        generated = pickle.load(handle)
    assert generated["emotion"] == [1, 2, 3, 4]
    word2event = generated["word2event"]
    pieces = []
    for words, name, q in zip(generated["words"], generated["names"], generated["emotion"]):
        assert word2event["type"][int(words[0, 3])] == "Emotion" and words[0, 7] == q
        assert len(words) <= 49                     # the Emotion word and at most 48 generated
        # The file holds the piece generated for its quadrant (read back as a file: MIDI
        # cannot tell overlapping notes of one pitch apart), and the piece is piano music.
        notes = midi_notes(tmp_path / "p" / f"{name}.mid")
        words_to_midi(words, word2event, tmp_path / "again.mid", close_empty_bars=True)
        assert notes == midi_notes(tmp_path / "again.mid")
        assert len(notes) >= 4 and all(21 <= n[0] <= 108 and n[2] > n[1] for n in notes), (name, notes)
        pieces.append(notes)
    assert len({tuple(p) for p in pieces}) == 4
