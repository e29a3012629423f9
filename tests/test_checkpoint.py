"""Atomic writes keep the previous file; broken or foreign checkpoints give one clear error."""
import os

import pytest
import torch

from run.checkpoint import load_checkpoint, save_checkpoint
from music.errors import UserError


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"kind": "muser", "model": {"w": torch.arange(3.0)}, "epoch": 4})
    loaded = load_checkpoint(path, "muser")
    assert loaded["epoch"] == 4 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary files left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"kind": "muser", "model": {}, "epoch": 1})
    if os.geteuid() == 0:
        # root ignores directory permissions: make the write itself fail instead
        class Unpicklable:
            def __reduce__(self):
                raise OSError(28, "No space left on device")
        with pytest.raises(UserError, match="cannot write .*last.pt.*previous file is kept"):
            save_checkpoint(path, {"kind": "muser", "model": {}, "epoch": 2, "bad": Unpicklable()})
    else:
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(UserError, match="cannot write"):
                save_checkpoint(path, {"kind": "muser", "model": {}, "epoch": 2})
        finally:
            tmp_path.chmod(0o700)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"kind": "muser", "model": {"w": torch.zeros(1000)}})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="best.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_wrong_kind_names_the_flag(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"kind": "prior", "model": {}})
    with pytest.raises(UserError, match="--VQ_VAE needs a MusER VQ-VAE checkpoint, but this is a prior"):
        load_checkpoint(path, "muser", "--VQ_VAE")


def test_foreign_file_is_reported(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state": 1}, path)
    with pytest.raises(UserError, match="not a checkpoint written by this project"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "nothing.pt")
