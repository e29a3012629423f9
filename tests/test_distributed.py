"""Data-parallel training with torchrun: two CPU processes (gloo), tiny preset. The run itself
is one of the session's long runs (tests/long_runs.py ddp_run), beside the other tests."""
import pytest
import torch

from run.checkpoint import build_muser, load_checkpoint


@pytest.mark.slow
def test_two_process_ddp_training(ddp_training):
    result, out = ddp_training.result, ddp_training.out
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
    ranks = [torch.load(path) for path in ddp_training.ranks]
    assert ranks[0].keys() == ranks[1].keys() == checkpoint["model"].keys()
    differ = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not differ, f"the ranks' {differ[:5]} differ after training"
    assert all(torch.equal(ranks[0][k], checkpoint["model"][k]) for k in ranks[0])
    assert int(ranks[0]["quantizer.ema_steps"]) > 0
