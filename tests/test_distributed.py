"""Data-parallel training with torchrun: two CPU processes (gloo), tiny preset."""
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from run.checkpoint import build_muser, load_checkpoint

# MusER.py as torchrun starts it, except that each rank also saves its own weights and
# buffers when training ends (only rank 0 writes checkpoints, and what must be shown is
# that the replicas stayed the same model), and no loss curves are drawn (tested elsewhere).
EACH_RANK_SAVES = """
import os, sys
import torch
sys.path.insert(0, sys.argv[1])
import MusER
import run.training
from run.cli import run_main

run.training._plot_history = lambda *args: None

out, trained = sys.argv[2], MusER.fit

def fit(**kwargs):
    code = trained(**kwargs)
    torch.save(kwargs["model"].state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
    return code

MusER.fit = fit
run_main(MusER.main, sys.argv[3:])
"""


@pytest.mark.slow
def test_two_process_ddp_training(sample_npz, tmp_path):
    out = tmp_path / "ddp"
    driver = tmp_path / "muser_each_rank_saves.py"
    driver.write_text(EACH_RANK_SAVES)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(driver), str(ROOT), str(tmp_path),
               "--data_path", str(sample_npz), "--preset", "tiny", "--Epoch", "2",
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

    # The ranks trained on different halves of each batch, from different seeds: they end as
    # one model only if every step averaged the gradients (the weights) and pooled the
    # quantiser's code statistics (its EMA buffers and codebook; DDP broadcasts buffers only
    # before a forward pass, so the last step's update is each rank's own).
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == checkpoint["model"].keys()
    differ = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not differ, f"the ranks' {differ[:5]} differ after training"
    assert all(torch.equal(ranks[0][k], checkpoint["model"][k]) for k in ranks[0])
    assert int(ranks[0]["quantizer.ema_steps"]) > 0
