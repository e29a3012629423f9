"""Data-parallel training with torchrun: two CPU processes (gloo), tiny preset."""
import os
import subprocess
import sys

from tests.conftest import ROOT
from tests.test_pipeline import prepare_sample
from run.checkpoint import build_muser, load_checkpoint


def test_two_process_ddp_training(tmp_path):
    npz = prepare_sample(tmp_path / "data")
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "MusER.py"), "--data_path", str(npz), "--preset", "tiny", "--Epoch", "2",
               "--batch_size", "4", "--model_path", str(out), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout  # rank 0 reports the world size
    log = (out / "train.log").read_text()
    assert log.count("epoch 2/2") == 1  # only rank 0 logs
    checkpoint = load_checkpoint(out / "last.pt", "muser")
    assert checkpoint["epoch"] == 2
    build_muser(checkpoint)  # the saved weights are the plain model's, not DDP's "module." names
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3
    assert all(not name.startswith("module.") for name in checkpoint["model"])
