"""End to end: the four scripts in order on the shipped EMOPIA sample, tiny preset, CPU."""
from __future__ import annotations

import pickle
import shlex
import subprocess
import sys

import miditoolkit
import numpy as np
import pytest
import torch

import generate
import MusER
import Prior_train
import VQ_explore
from tests.conftest import ROOT, SAMPLE_MIDI_DIR
from run.checkpoint import build_muser, build_prior, load_checkpoint
from music.data import load_cp_dataset
from run.pipeline import dataset_tensors, encode_pieces

TINY = ["--preset", "tiny", "--device", "cpu"]

# The four commands of the authors' README (reference/MusER-README.md), as written there.
README_COMMANDS = [
    "python MusER.py --data_path ./data/co-representation/emopia_data.npz --dataset emopia "
    "--model_path your_model_saving_path --log_path your_log_path",
    "python VQ_explore.py --data_path ./data/co-representation/emopia_data.npz "
    "--VQ_VAE MusER_TRANS_CA_GE_emopia --plot_flag True",
    "python Prior_train.py --data_path ./data/co-representation/emopia_data.npz --dataset emopia "
    "--VQ_VAE MusER_TRANS_CA_GE_emopia --model_path your_prior_model_saving_path --log_path your_log_path",
    "python generate.py --VQ_prior Prior_TRANS_CA_ER_emopia --VQ_VAE MusER_TRANS_CA_GE_emopia "
    "--music_file your_music_file_name",
]


def prepare_sample(out_dir):
    result = subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--midi_dir", str(SAMPLE_MIDI_DIR),
                             "--out_dir", str(out_dir), "--name", "emopia", "--workers", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out_dir / "emopia_data.npz"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run all four scripts once; tests below inspect what each stage wrote."""
    work = tmp_path_factory.mktemp("pipeline")
    npz = prepare_sample(work / "data")
    muser_dir, prior_dir = work / "models" / "muser", work / "models" / "prior"
    vq_dict = work / "data" / "vq_dict.data"
    # A high learning rate gets the tiny model far enough in seconds to write notes.
    fast = ["--lr", "3e-3", "--batch_size", "8"]
    assert MusER.main(["--data_path", str(npz), "--model_path", str(muser_dir), "--Epoch", "12", *fast, *TINY]) == 0
    assert VQ_explore.main(["--data_path", str(npz), "--VQ_VAE", str(muser_dir), "--plot_flag", "True",
                            "--vq_dict_path", str(vq_dict), "--figure_dir", str(work / "figures")]) == 0
    assert Prior_train.main(["--data_path", str(npz), "--VQ_VAE", str(muser_dir), "--vq_dict_path", str(vq_dict),
                             "--model_path", str(prior_dir), "--Epoch", "6", *fast, *TINY]) == 0
    assert generate.main(["--VQ_prior", str(prior_dir), "--VQ_VAE", str(muser_dir), "--music_file", "run",
                          "--out_root", str(work / "generate_midi"), "--n_per_emotion", "2",
                          "--max_steps", "48", "--device", "cpu"]) == 0
    return {"work": work, "npz": npz, "muser": muser_dir, "prior": prior_dir, "vq_dict": vq_dict}


def test_checkpoints_reload_into_the_same_model(pipeline):
    for folder, kind, build, epochs in ((pipeline["muser"], "muser", build_muser, 12),
                                        (pipeline["prior"], "prior", build_prior, 6)):
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
    figures = pipeline["work"] / "figures"
    for element in ("tempo", "chord", "bar-beat", "type", "pitch", "duration", "velocity", "all"):
        assert (figures / f"tsne_{element}.png").stat().st_size > 0
    header = (figures / "silhouette.csv").read_text().splitlines()[0]
    assert header == ("element,Q1-Q2,Q1-Q4,Q1-Q3,Q3-Q4,Q2-Q3,Q2-Q4,"
                      "latent Q1-Q2,latent Q1-Q4,latent Q1-Q3,latent Q3-Q4,latent Q2-Q3,latent Q2-Q4")


def test_every_generated_midi_parses_and_has_notes(pipeline):
    out = pipeline["work"] / "generate_midi"
    files = sorted((out / "run").glob("*.mid"))
    assert [f.name for f in files] == sorted(f"emotion{q}_{i}.mid" for q in range(1, 5) for i in range(2))
    for path in files:
        notes = miditoolkit.MidiFile(str(path)).instruments[0].notes
        assert len(notes) > 0, f"{path} has no notes"
    with open(out / "run_data.data", "rb") as handle:
        words = pickle.load(handle)
    with open(out / "run_index.data", "rb") as handle:
        index = pickle.load(handle)
    assert words["emotion"] == [1, 1, 2, 2, 3, 3, 4, 4] == index["emotion"]
    for piece, q in zip(words["words"], words["emotion"]):
        assert piece.shape[1] == 8 and piece[0, 7] == q  # starts with the Emotion word
        assert len(piece) <= 49  # the Emotion word plus at most 48 generated words
    assert all(len(c) == 64 for c in index["codes"])
    assert (out / "run" / "emotion1_0.png").stat().st_size > 0


def test_generation_is_reproducible(pipeline, tmp_path):
    args = ["--VQ_prior", str(pipeline["prior"]), "--VQ_VAE", str(pipeline["muser"]), "--emotion", "2",
            "--n_per_emotion", "2", "--max_steps", "32", "--device", "cpu", "--piano_rolls", "False"]
    for name in ("a", "b"):
        assert generate.main([*args, "--music_file", name, "--out_root", str(tmp_path)]) == 0
    for i in range(2):
        assert (tmp_path / "a" / f"emotion2_{i}.mid").read_bytes() == (tmp_path / "b" / f"emotion2_{i}.mid").read_bytes()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(pipeline, tmp_path):
    base = ["--data_path", str(pipeline["npz"]), *TINY, "--val_split", "0.2"]
    assert MusER.main([*base, "--model_path", str(tmp_path / "a"), "--Epoch", "2"]) == 0
    assert MusER.main([*base, "--model_path", str(tmp_path / "a"), "--Epoch", "3", "--resume"]) == 0
    assert MusER.main([*base, "--model_path", str(tmp_path / "b"), "--Epoch", "3"]) == 0
    resumed = load_checkpoint(tmp_path / "a" / "last.pt")
    straight = load_checkpoint(tmp_path / "b" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 3
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), f"{key} differs after resume"
    assert resumed["history"] == straight["history"]


def test_readme_commands_run_verbatim(tmp_path):
    """The four commands of the authors' README, placeholders filled, tiny preset and one epoch."""
    prepare_sample(tmp_path / "data" / "co-representation")
    commands = README_COMMANDS
    filled = {"your_model_saving_path": "MusER_TRANS_CA_GE_emopia",
              "your_prior_model_saving_path": "Prior_TRANS_CA_ER_emopia",
              "your_log_path": "logs/run.log", "your_music_file_name": "readme_music"}
    for command in commands:
        for placeholder, value in filled.items():
            command = command.replace(placeholder, value)
        argv = shlex.split(command)
        extra = ["--preset", "tiny", "--Epoch", "1"] if argv[1] in ("MusER.py", "Prior_train.py") else []
        if argv[1] == "generate.py":
            extra = ["--n_per_emotion", "1", "--max_steps", "32"]
        result = subprocess.run([sys.executable, str(ROOT / argv[1]), *argv[2:], *extra, "--device", "cpu"],
                                cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
    assert (tmp_path / "saved_models" / "MusER_TRANS_CA_GE_emopia" / "best.pt").is_file()
    assert (tmp_path / "data" / "MusER_TRANS_CA_GE_emopia_VQ_dict.data").is_file()
    assert len(list((tmp_path / "generate_midi" / "readme_music").glob("*.mid"))) == 4
    assert np.load(tmp_path / "data" / "co-representation" / "emopia_data.npz")["x"].shape[1:] == (1024, 8)


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
