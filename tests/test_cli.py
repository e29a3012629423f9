"""Boolean flags, device choice and checkpoint-name resolution."""
import argparse

import pytest

from run.cli import resolve_checkpoint, resolve_device, str2bool
from music.errors import UserError


@pytest.mark.parametrize("text,value", [("True", True), ("true", True), ("1", True), ("yes", True),
                                        ("False", False), ("false", False), ("0", False), ("no", False)])
def test_str2bool_parses_what_people_type(text, value):
    assert str2bool(text) is value


def test_str2bool_rejects_anything_else():
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def test_plot_flag_false_really_is_false():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot_flag", type=str2bool, default=True)
    assert parser.parse_args(["--plot_flag", "False"]).plot_flag is False


def test_device_defaults_to_cpu_without_cuda():
    assert resolve_device(None).type in {"cpu", "cuda"}
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="--device"):
        resolve_device("no-such-device")


def test_resolve_checkpoint_accepts_name_folder_and_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "saved_models" / "MusER_TRANS_CA_GE_emopia"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"x")
    assert resolve_checkpoint("MusER_TRANS_CA_GE_emopia", "--VQ_VAE").resolve() == (run / "best.pt").resolve()
    assert resolve_checkpoint(str(run), "--VQ_VAE") == run / "best.pt"
    assert resolve_checkpoint(str(run / "best.pt"), "--VQ_VAE") == run / "best.pt"
    with pytest.raises(UserError, match="--VQ_VAE missing_model: no checkpoint"):
        resolve_checkpoint("missing_model", "--VQ_VAE")
