"""End to end: the four scripts in order on the shipped EMOPIA sample, tiny preset, CPU, run
by the authors' README commands (the session's tiny run, tests/long_runs.py)."""
from __future__ import annotations

import pickle

import miditoolkit
import numpy as np
import pytest
import torch

import generate
import MusER
from tests.long_runs import MUSER_EPOCHS, PRIOR_EPOCHS
from run.checkpoint import build_muser, build_prior, load_checkpoint
from music.data import load_cp_dataset
from run.pipeline import dataset_tensors, encode_pieces

TINY = ["--preset", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def pipeline(tiny_run):
    """The four scripts run once on the sample by the README's commands (tests/long_runs.py);
    tests below inspect what each stage wrote."""
    return vars(tiny_run)


def test_checkpoints_reload_into_the_same_model(pipeline):
    for folder, kind, build, epochs in ((pipeline["muser"], "muser", build_muser, MUSER_EPOCHS),
                                        (pipeline["prior"], "prior", build_prior, PRIOR_EPOCHS)):
        for name in ("best.pt", "last.pt"):
            checkpoint = load_checkpoint(folder / name, kind)
            model = build(checkpoint)
            reloaded = model.state_dict()
            for key, value in checkpoint["model"].items():
                assert torch.equal(reloaded[key], value), f"{folder / name}: {key} differs after reload"
        assert checkpoint["epoch"] == epochs
        assert (folder / "metrics.csv").read_text().count("\n") == epochs + 1  # header + a row per epoch
        assert (folder / "loss_curves.png").stat().st_size > 0


def test_vq_dict_covers_every_code_the_data_uses(pipeline):
    checkpoint = load_checkpoint(pipeline["muser"] / "best.pt", "muser")
    model = build_muser(checkpoint)
    data = load_cp_dataset(pipeline["npz"])
    _, codes = encode_pieces(model, dataset_tensors(data, model.config.max_len)["y"], 8, torch.device("cpu"))
    with open(pipeline["vq_dict"], "rb") as handle:
        vq_dict = pickle.load(handle)
    assert set(torch.unique(codes).tolist()) == set(vq_dict[0])
    assert all(vq_dict[1][vq_dict[0][c]] == c for c in vq_dict[0])
    prior = load_checkpoint(pipeline["prior"] / "best.pt", "prior")
    assert prior["config"]["n_codes"] == len(vq_dict[0])
    assert build_prior(prior).config.vocab_size == len(vq_dict[0]) + 5


def test_figures_and_silhouette_table(pipeline):
    figures = pipeline["figures"]
    for element in ("tempo", "chord", "bar-beat", "type", "pitch", "duration", "velocity", "all"):
        assert (figures / f"tsne_{element}.png").stat().st_size > 0
    header = (figures / "silhouette.csv").read_text().splitlines()[0]
    assert header == ("element,Q1-Q2,Q1-Q4,Q1-Q3,Q3-Q4,Q2-Q3,Q2-Q4,"
                      "latent Q1-Q2,latent Q1-Q4,latent Q1-Q3,latent Q3-Q4,latent Q2-Q3,latent Q2-Q4")


def test_every_generated_midi_parses_and_has_notes(pipeline):
    out = pipeline["generated"]
    name = pipeline["music_file"]
    files = sorted((out / name).glob("*.mid"))
    assert [f.name for f in files] == sorted(f"emotion{q}_{i}.mid" for q in range(1, 5) for i in range(2))
    for path in files:
        notes = miditoolkit.MidiFile(str(path)).instruments[0].notes
        assert len(notes) > 0, f"{path} has no notes"
    with open(out / f"{name}_data.data", "rb") as handle:
        words = pickle.load(handle)
    with open(out / f"{name}_index.data", "rb") as handle:
        index = pickle.load(handle)
    assert words["emotion"] == [1, 1, 2, 2, 3, 3, 4, 4] == index["emotion"]
    for piece, q in zip(words["words"], words["emotion"]):
        assert piece.shape[1] == 8 and piece[0, 7] == q  # starts with the Emotion word
        assert len(piece) <= 49  # the Emotion word plus at most 48 generated words
    assert all(len(c) == 64 for c in index["codes"])
    assert (out / name / "emotion1_0.png").stat().st_size > 0


def test_generation_is_reproducible(pipeline, tmp_path):
    args = ["--VQ_prior", str(pipeline["prior"]), "--VQ_VAE", str(pipeline["muser"]), "--emotion", "2",
            "--n_per_emotion", "2", "--max_steps", "32", "--device", "cpu", "--piano_rolls", "False"]
    for name in ("a", "b"):
        assert generate.main([*args, "--music_file", name, "--out_root", str(tmp_path)]) == 0
    for i in range(2):
        assert (tmp_path / "a" / f"emotion2_{i}.mid").read_bytes() == (tmp_path / "b" / f"emotion2_{i}.mid").read_bytes()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(pipeline, tmp_path, monkeypatch):
    from run import training

    monkeypatch.setattr(training, "_plot_history", lambda *args: None)   # drawn and tested elsewhere
    base = ["--data_path", str(pipeline["npz"]), *TINY, "--val_split", "0.2"]
    assert MusER.main([*base, "--model_path", str(tmp_path / "a"), "--Epoch", "1"]) == 0
    assert MusER.main([*base, "--model_path", str(tmp_path / "a"), "--Epoch", "2", "--resume"]) == 0
    assert MusER.main([*base, "--model_path", str(tmp_path / "b"), "--Epoch", "2"]) == 0
    resumed = load_checkpoint(tmp_path / "a" / "last.pt")
    straight = load_checkpoint(tmp_path / "b" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), f"{key} differs after resume"
    assert resumed["history"] == straight["history"]


def test_readme_commands_run_verbatim(pipeline):
    """The four commands of the authors' README, placeholders filled (the session's tiny run:
    tiny preset and extra flags appended), wrote where the README's defaults say."""
    work = pipeline["work"]
    assert (work / "saved_models" / "MusER_TRANS_CA_GE_emopia" / "best.pt").is_file()
    assert (work / "saved_models" / "Prior_TRANS_CA_ER_emopia" / "best.pt").is_file()
    assert (work / "data" / "MusER_TRANS_CA_GE_emopia_VQ_dict.data").is_file()
    assert (work / "figures" / "MusER_TRANS_CA_GE_emopia" / "silhouette.csv").is_file()
    assert len(list((work / "generate_midi" / "readme_music").glob("*.mid"))) == 8
    log = pipeline["log"].read_text()                 # both trainings log to --log_path
    assert "MusER_TRANS_CA_GE" in log and "prior over" in log
    assert np.load(pipeline["npz"])["x"].shape[1:] == (1024, 8)


def test_variant_depth_from_flags_and_presets():
    """--decoding G alone gives the authors' 8 global layers; --dec_layers N wins; tiny stays tiny."""
    import argparse

    from models.config import MusERConfig
    from run.pipeline import add_config_flags, config_from_args

    parser = argparse.ArgumentParser()
    add_config_flags(parser, MusERConfig, "model")
    vocab = [56, 135, 18, 4, 87, 18, 42, 5]

    def layers(*flags, preset="paper"):
        args = parser.parse_args(list(flags))
        return config_from_args(MusERConfig, args, preset, vocab_sizes=vocab).global_layers

    assert layers() == 4 and layers("--decoding", "G") == 8
    assert layers("--decoding", "G", "--dec_layers", "2") == 2
    assert layers("--decoding", "G", preset="tiny") == 1
    assert parser.parse_args(["--dead_code_threshold", "1.5"]).dead_code_threshold == 1.5
