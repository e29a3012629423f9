"""The shipped pretrained models load like any checkpoint and generate in seconds."""
import subprocess
import sys

import torch

from run.checkpoint import build_muser, build_prior, load_checkpoint
from tests.conftest import ROOT

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


def test_generate_from_pretrained(tmp_path):
    result = subprocess.run([sys.executable, "generate.py", "--VQ_prior", str(PRETRAINED / "prior.pt"),
                             "--VQ_VAE", str(PRETRAINED / "muser.pt"), "--music_file", "p",
                             "--out_root", str(tmp_path), "--n_per_emotion", "1", "--max_steps", "48",
                             "--audio", "False", "--piano_rolls", "False"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]
    assert sorted(p.name for p in (tmp_path / "p").glob("*.mid")) == [f"emotion{q}_0.mid" for q in (1, 2, 3, 4)]
