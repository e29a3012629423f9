"""MusER.py --amp and --compile end to end on CPU with the tiny preset.

torch.compile of even the tiny model takes over a minute to compile on a 2-core CPU (cold
cache), so only its fallback is tested here: when torch.compile is unavailable, training
warns and runs eagerly.
"""
import contextlib
import csv
import math

import pytest
import torch

import MusER

pytestmark = pytest.mark.usefixtures("no_loss_curves")   # tests/conftest.py

TINY = ["--preset", "tiny", "--Epoch", "1", "--batch_size", "8", "--device", "cpu"]


def losses(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return [float(row[key]) for row in rows for key in ("loss", "recon", "vq", "reg")]


@contextlib.contextmanager
def linear_output_dtypes():
    """The dtypes of every nn.Linear output computed inside the block (forward hooks on all modules)."""
    seen = set()

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            seen.add(output.dtype)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def test_amp_trains_with_finite_losses_and_float32_weights(sample_npz, tmp_path):
    run = tmp_path / "amp"
    with linear_output_dtypes() as dtypes:
        assert MusER.main(["--data_path", str(sample_npz), "--model_path", str(run), "--amp", "True",
                           *TINY]) == 0
    assert torch.bfloat16 in dtypes            # the forward passes ran under bf16 autocast
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
    with linear_output_dtypes() as dtypes:
        assert MusER.main(["--data_path", str(sample_npz), "--model_path", str(run),
                           "--compile", "True", *TINY]) == 0
    assert dtypes == {torch.float32}           # without --amp nothing runs in bf16
    assert "torch.compile unavailable here (no compiler backend here); running eagerly" in \
        (run / "train.log").read_text()
    assert all(math.isfinite(v) for v in losses(run))
