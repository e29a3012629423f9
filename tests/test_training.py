"""The training loop's pieces: the split, metric sums, the CSV history."""
import math

import numpy as np
import pytest
import torch

from utils.distributed import DistInfo
from utils.errors import UserError
from utils.atomic import write_csv
from utils.training import MetricSums, split_indices


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
