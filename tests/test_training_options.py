"""MusER.py --amp and --compile end to end on CPU with the tiny preset.

torch.compile of even the tiny model takes over a minute to compile on a 2-core CPU (cold
cache), so only its fallback is tested here: when torch.compile is unavailable, training
warns and runs eagerly.
"""
import csv
import math

import torch

import MusER

TINY = ["--preset", "tiny", "--Epoch", "1", "--batch_size", "8", "--device", "cpu"]


def losses(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return [float(row[key]) for row in rows for key in ("loss", "recon", "vq", "reg")]


def test_amp_trains_with_finite_losses_and_float32_weights(sample_npz, tmp_path):
    run = tmp_path / "amp"
    assert MusER.main(["--data_path", str(sample_npz), "--model_path", str(run), "--amp", "True",
                       *TINY]) == 0
    values = losses(run)
    assert values and all(math.isfinite(v) for v in values)
    log = (run / "train.log").read_text()       # the corpus is reported, the sample not warned (tiny)
    assert "data: 32 pieces in" in log and "(Q1 8, Q2 8, Q3 8, Q4 8); 32 train" in log
    assert "warning" not in log
    with open(run / "metrics.csv") as handle:       # the codebook's use, per epoch, for plotting
        assert 1 <= int(next(csv.DictReader(handle))["codes_used"]) <= 32
    weights = torch.load(run / "last.pt", weights_only=False)["model"]
    assert all(w.dtype != torch.bfloat16 for w in weights.values())


def test_compile_falls_back_to_eager_with_a_warning(sample_npz, tmp_path, monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeError("no compiler backend here")
    monkeypatch.setattr(torch, "compile", unavailable)
    run = tmp_path / "compile"
    assert MusER.main(["--data_path", str(sample_npz), "--model_path", str(run),
                       "--compile", "True", *TINY]) == 0
    assert "torch.compile unavailable here (no compiler backend here); running eagerly" in \
        (run / "train.log").read_text()
    assert all(math.isfinite(v) for v in losses(run))
