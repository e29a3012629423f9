"""The training loop's pieces: the split, metric sums, the CSV history, batching, best.pt."""
import logging
import math
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from run.distributed import DistInfo
from music.errors import UserError
from music.atomic import write_csv
from run.checkpoint import load_checkpoint
from run.training import MetricSums, epoch_batches, fit, split_indices


def test_split_is_seeded_disjoint_and_complete():
    train, val = split_indices(100, 0.2, seed=13)
    assert len(val) == 20 and len(train) == 80
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(100))
    again_train, again_val = split_indices(100, 0.2, seed=13)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not np.array_equal(val, split_indices(100, 0.2, seed=14)[1])


def test_split_without_validation_and_bad_fractions():
    train, val = split_indices(10, 0.0, seed=1)
    assert len(train) == 10 and len(val) == 0
    assert len(split_indices(10, 0.01, seed=1)[1]) == 1  # asking for validation gets at least one piece
    with pytest.raises(UserError, match="--val_split"):
        split_indices(10, 1.0, seed=1)


def test_metric_sums_weight_by_batch_size_and_count_codes():
    sums = MetricSums(n_codes=4)
    sums.add({"loss": torch.tensor(1.0), "codes": torch.tensor([[0, 0], [1, 1]])}, batch_size=2)
    sums.add({"loss": torch.tensor(4.0), "codes": torch.tensor([[0, 1]])}, batch_size=1)
    result = sums.reduce(DistInfo())
    assert result["loss"] == pytest.approx((1.0 * 2 + 4.0) / 3)
    assert result["code_usage"] == pytest.approx(0.5)      # codes 0 and 1 of 4
    assert result["codes_used"] == 2
    assert result["code_perplexity"] == pytest.approx(2.0)  # used equally often
    restored = MetricSums(4, sums.state())
    assert restored.sums == sums.sums and restored.count == 3 and torch.equal(restored.codes, sums.codes)


def test_history_csv_has_every_column(tmp_path):
    path = tmp_path / "metrics.csv"
    write_csv(path, [{"epoch": 1, "split": "train", "loss": 2.0},
                             {"epoch": 1, "split": "val", "loss": 2.5, "acc_mean": 0.1}])
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,split,loss,acc_mean"
    assert lines[2] == "1,val,2.5,0.1" and math.isclose(float(lines[1].split(",")[2]), 2.0)


def test_last_incomplete_batch_is_dropped_unless_it_is_the_only_one():
    assert epoch_batches(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert epoch_batches(list(range(8)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert epoch_batches(list(range(3)), 4) == [[0, 1, 2]]      # fewer pieces than a batch


# -- fit on a one-weight model ------------------------------------------------------------

def toy_args(epochs, batch_size=4):
    return SimpleNamespace(Epoch=epochs, batch_size=batch_size, lr=0.05, clip=1.0, seed=3,
                           amp=False, compile=False)


def toy_fit(out_dir, step_fn, epochs, n=10, batch_size=4, resume=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    data = {"v": torch.linspace(-1, 1, n)[:, None]}
    return model, fit(model=model, step_fn=step_fn, train=data, val=None, args=toy_args(epochs, batch_size),
                      out_dir=out_dir, device=torch.device("cpu"), logger=logging.getLogger("toy"),
                      checkpoint_meta={"kind": "muser"}, resume=resume)


def regression_step(model, batch):
    error = ((model(batch["v"]) - 2 * batch["v"]) ** 2).mean()
    return {"loss": error, "recon": error}


def test_best_checkpoint_has_the_lowest_reconstruction_loss(tmp_path):
    """Epoch 2 has the lowest recon but the highest total: it is best.pt, as the authors choose."""
    recon, vq = [3.0, 1.0, 2.0], [0.0, 5.0, 0.0]
    sizes = []

    def step(model, batch):
        epoch = len(sizes) // 2                      # 10 pieces, batches of 4: two a epoch
        sizes.append(len(batch["v"]))
        tie = 0.0 * model(batch["v"]).sum()
        return {"loss": tie + recon[epoch] + vq[epoch], "recon": tie + recon[epoch]}

    _, code = toy_fit(tmp_path, step, epochs=3)
    assert code == 0 and sizes == [4] * 6            # the incomplete batch of 2 is dropped
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and best["best_loss"] == pytest.approx(1.0)
    assert [row["loss"] for row in best["history"]] == pytest.approx([3.0, 6.0])


def test_without_recon_best_is_the_lowest_loss(tmp_path):
    losses = [2.0, 3.0, 1.0, 4.0]
    calls = []

    def step(model, batch):
        calls.append(1)
        return {"loss": 0.0 * model(batch["v"]).sum() + losses[(len(calls) - 1) // 2]}

    toy_fit(tmp_path, step, epochs=4)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3


def test_fewer_pieces_than_a_batch_still_train(tmp_path):
    model, code = toy_fit(tmp_path, regression_step, epochs=2, n=3)
    history = load_checkpoint(tmp_path / "last.pt")["history"]
    assert code == 0 and len(history) == 2 and history[1]["loss"] < history[0]["loss"]


def test_mid_epoch_stop_then_resume_is_exact_with_a_dropped_batch(tmp_path):
    straight, _ = toy_fit(tmp_path / "straight", regression_step, epochs=3, n=11, batch_size=3)
    calls = []

    def interrupting(model, batch):
        calls.append(1)
        if len(calls) == 5:                          # epoch 2, batch 2 of 3 (11 pieces, 2 dropped)
            os.kill(os.getpid(), signal.SIGINT)
        return regression_step(model, batch)

    _, code = toy_fit(tmp_path / "cut", interrupting, epochs=3, n=11, batch_size=3)
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert code == 0 and (saved["epoch"], saved["batch"]) == (1, 2)
    resumed, code = toy_fit(tmp_path / "cut", regression_step, epochs=3, n=11, batch_size=3, resume=saved)
    assert code == 0
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["history"] == \
        load_checkpoint(tmp_path / "straight" / "last.pt")["history"]


def test_every_run_reports_its_pieces_and_a_paper_model_on_a_sample_is_warned(caplog):
    from run.pipeline import MIN_PAPER_PIECES, report_pieces

    logger = logging.getLogger("pieces")
    emotion = np.array([1, 1, 2, 3, 4, 4, 4, 0])
    with caplog.at_level(logging.INFO, logger="pieces"):
        report_pieces(emotion, 8, "data.npz", "tiny", logger)
    assert [r.getMessage() for r in caplog.records] == \
        ["data: 8 pieces in data.npz (Q1 2, Q2 1, Q3 1, Q4 3, unlabeled 1); 8 train"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pieces"):
        report_pieces(emotion, 8, "data.npz", "paper", logger)
        report_pieces(np.ones(MIN_PAPER_PIECES, dtype=int), MIN_PAPER_PIECES, "full.npz", "paper", logger)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "only 8 pieces" in warnings[0] and "data.npz" in warnings[0]
