"""The prior's training data (run/prior_data.py) and Prior_train.py --transpose: transposed
copies of the training pieces only, encoded and compacted like the pieces, for both
quantisers; --transpose 0 trains exactly as without the flag."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

import Prior_train
from models.config import MusERConfig, apply_preset
from models.muser import MusER
from music.cp import type_index, vocab_sizes
from music.data import load_cp_dataset
from music.elements import EVENT_TYPES
from music.errors import UserError
from music.transpose import shifts_up_to, transpose_words, transposed_copies
from run.checkpoint import build_muser, build_prior, load_checkpoint
from run.codes import codebook_fingerprint, load_model_vq_dict, make_vq_dict, used_code_counts
from run.pipeline import dataset_tensors
from run.prior_data import add_transposed_copies, code_sequences, transposed_sequences
from run.training import split_indices

pytestmark = pytest.mark.usefixtures("no_loss_curves")   # tests/conftest.py

CPU = torch.device("cpu")
ROWS = np.array([0, 3, 4, 7, 10, 12, 20, 25])             # "training pieces" of the sample
QUANTIZERS = {"joint": {}, "product": {"quantizer": "product", "slice_codebook_size": 8}}


def random_muser(data, quantizer):
    """A tiny MusER with random weights over the data's dictionary (eval mode)."""
    type_ids = {name: type_index(data.event2word, name) for name in EVENT_TYPES}
    config = apply_preset(MusERConfig(vocab_sizes(data.event2word), type_ids=type_ids), "tiny")
    torch.manual_seed(0)
    return MusER(dataclasses.replace(config, **QUANTIZERS[quantizer])).eval()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def compacted(codes: torch.Tensor, vq_dict: dict) -> torch.Tensor:
    """Codes [T] (or [T, 7]) read through a VQ_dict that holds each of them."""
    if "slices" in vq_dict:
        return torch.tensor([[vq_dict["slices"][k][0][c] for k, c in enumerate(step)] for step in codes.tolist()])
    return torch.tensor([vq_dict[0][c] for c in codes.tolist()])


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_transposed_sequences_are_the_copies_encoded_with_their_pieces_emotion(sample_npz, quantizer):
    data = load_cp_dataset(sample_npz)
    model = random_muser(data, quantizer)
    product = quantizer == "product"
    y = dataset_tensors(data, model.config.max_len)["y"]
    expected = transposed_copies(y[ROWS].numpy(), data.word2event, data.event2word, shifts_up_to(2))
    with torch.no_grad():
        every_code = model.encode(torch.cat([y, torch.as_tensor(expected.words)]))[1]
    vq_dict = make_vq_dict(every_code, codebook_fingerprint(model), per_slice=product)   # holds every code used
    logger = logging.getLogger("test_prior_data")

    sequences, summary = transposed_sequences(model, data, y, ROWS, 2, vq_dict, 8, CPU, logger)
    assert summary == {"max_shift": 2, "pieces": len(ROWS),
                       "copies": {f"{k:+d}": int((expected.shift == k).sum()) for k in shifts_up_to(2)},
                       "left_out": {f"{k:+d}": n for k, n in expected.left_out.items()}}
    n = len(expected.source)
    assert sum(expected.left_out.values()) > 0 and n == 4 * len(ROWS) - sum(expected.left_out.values())
    assert sequences["inp"].shape[0] == n
    assert sequences["inp"].shape[1:] == (model.config.max_len + 1, *((7,) if product else ()))
    counts = torch.tensor(used_code_counts(vq_dict)) if product else sum(used_code_counts(vq_dict))
    # Each copy: its piece's emotion first, then the VQ-VAE's codes of the transposed piece.
    for i in (0, n // 2, n - 1):
        row, shift = ROWS[expected.source[i]], int(expected.shift[i])
        moved = transpose_words(y[row].numpy(), data.word2event, data.event2word, shift)
        with torch.no_grad():
            codes = model.encode(torch.as_tensor(moved)[None])[1][0]
        compact = compacted(codes, vq_dict)
        assert torch.equal(sequences["inp"][i, 1:], compact) and torch.equal(sequences["target"][i, :-1], compact)
        assert torch.equal(sequences["inp"][i, 0], torch.as_tensor(counts) + int(data.emotion[row]))
    # One shift at a time gives what all the copies encoded at once give.
    assert same(sequences, code_sequences(model, torch.as_tensor(expected.words), data.emotion[ROWS[expected.source]],
                                          vq_dict, 8, CPU, logger, "all"))


def test_codes_the_vq_dict_lacks_go_to_the_nearest_used_one_and_are_logged(sample_npz, caplog):
    data = load_cp_dataset(sample_npz)
    model = random_muser(data, "joint")
    y = dataset_tensors(data, model.config.max_len)["y"]
    with torch.no_grad():
        first = model.encode(y[:1])[1]
    vq_dict = make_vq_dict(first, codebook_fingerprint(model))           # the codes of one piece only
    with caplog.at_level(logging.INFO, logger="test_prior_data"):
        sequences, summary = transposed_sequences(model, data, y, ROWS, 1, vq_dict, 8, CPU,
                                                  logging.getLogger("test_prior_data"))
    assert int(sequences["target"].max()) < len(vq_dict[0])
    assert any("transposed by" in r.message and "not in the VQ_dict" in r.message for r in caplog.records)
    assert any(f"{sum(summary['copies'].values())} copies added" in r.message and "left out" in r.message
               for r in caplog.records)


def test_copies_follow_the_training_sequences(sample_npz):
    data = load_cp_dataset(sample_npz)
    model = random_muser(data, "joint")
    y = dataset_tensors(data, model.config.max_len)["y"]
    with torch.no_grad():
        vq_dict = make_vq_dict(model.encode(y)[1], codebook_fingerprint(model))
    logger = logging.getLogger("test_prior_data")
    train = code_sequences(model, y[ROWS], data.emotion[ROWS], vq_dict, 8, CPU, logger, "train")
    both, summary = add_transposed_copies(train, model, data, y, ROWS, 1, vq_dict, 8, CPU, logger)
    copies, _ = transposed_sequences(model, data, y, ROWS, 1, vq_dict, 8, CPU, logger)
    assert same(both, {k: torch.cat([train[k], copies[k]]) for k in train})
    assert len(both["inp"]) == len(ROWS) + sum(summary["copies"].values())


# ---------------------------------------------------------------------- Prior_train.py --transpose

def train_prior(tiny_run, out, *extra, epochs=1):
    """Prior_train.py over the session's tiny MusER and VQ_dict; returns its last.pt."""
    assert Prior_train.main([str(a) for a in (
        "--data_path", tiny_run.npz, "--VQ_VAE", tiny_run.muser, "--vq_dict_path", tiny_run.vq_dict,
        "--model_path", out, "--Epoch", epochs, "--val_split", 0.25, "--preset", "tiny", "--device", "cpu",
        "--lr", "3e-3", "--batch_size", "8", *extra)]) == 0
    return load_checkpoint(out / "last.pt", "prior")


def record_fit(monkeypatch) -> list:
    """The training and validation sequences Prior_train.py hands to fit, one dict per run."""
    seen = []
    fit = Prior_train.fit

    def recording(**kwargs):
        seen.append({"train": kwargs["train"], "val": kwargs["val"]})
        return fit(**kwargs)
    monkeypatch.setattr(Prior_train, "fit", recording)
    return seen


def test_transpose_zero_trains_exactly_as_without_the_flag(tiny_run, tmp_path):
    plain = train_prior(tiny_run, tmp_path / "plain")
    zero = train_prior(tiny_run, tmp_path / "zero", "--transpose", 0)
    assert plain["args"]["transpose"] == zero["args"]["transpose"] == 0
    assert plain["config"] == zero["config"] and plain["history"] == zero["history"]
    assert same(plain["model"], zero["model"])
    assert "transposition" not in plain and "transposition" not in zero


def test_transpose_adds_copies_of_the_training_pieces_only(tiny_run, tmp_path, monkeypatch):
    """--transpose 2: the training set is the training pieces followed by their copies at
    -2, -1, +1, +2 (those the dictionary can write), encoded by the VQ-VAE; validation is
    the validation pieces alone, as without the flag."""
    runs = record_fit(monkeypatch)
    train_prior(tiny_run, tmp_path / "plain")
    checkpoint = train_prior(tiny_run, tmp_path / "two", "--transpose", 2)
    plain, seen = runs

    data = load_cp_dataset(tiny_run.npz)
    vq_vae = build_muser(load_checkpoint(tiny_run.muser / "best.pt", "muser"))
    y = dataset_tensors(data, vq_vae.config.max_len)["y"]
    train_rows, val_rows = split_indices(len(data), 0.25, 13)
    expected = transposed_copies(y[train_rows].numpy(), data.word2event, data.event2word, shifts_up_to(2))
    n_train, n_copies = len(train_rows), len(expected.source)
    assert n_copies > 0 and len(seen["train"]["inp"]) == n_train + n_copies
    assert same({k: v[:n_train] for k, v in seen["train"].items()}, plain["train"])
    assert same(seen["val"], plain["val"]) and len(seen["val"]["inp"]) == len(val_rows)
    copies = code_sequences(vq_vae, torch.as_tensor(expected.words), data.emotion[train_rows[expected.source]],
                            load_model_vq_dict(tiny_run.vq_dict, vq_vae), 8, CPU,
                            logging.getLogger("test_prior_data"), "expected")
    assert same({k: v[n_train:] for k, v in seen["train"].items()}, copies)

    assert checkpoint["args"]["transpose"] == 2
    assert checkpoint["transposition"] == {
        "max_shift": 2, "pieces": n_train,
        "copies": {f"{k:+d}": int((expected.shift == k).sum()) for k in shifts_up_to(2)},
        "left_out": {f"{k:+d}": n for k, n in expected.left_out.items()}}
    assert build_prior(checkpoint).config == build_prior(load_checkpoint(tmp_path / "plain" / "last.pt")).config
    log = (tmp_path / "two" / "train.log").read_text()
    assert f"{n_copies} copies added" in log and "left out" in log
    assert f"{n_train} training (+ {n_copies} transposed copies) / {len(val_rows)} validation pieces" in log


def test_a_run_resumes_only_with_its_own_transpose(tiny_run, tmp_path):
    train_prior(tiny_run, tmp_path / "two", "--transpose", 2)
    with pytest.raises(UserError, match="--transpose 2, not 1"):
        train_prior(tiny_run, tmp_path / "two", "--transpose", 1, "--resume", epochs=2)
    with pytest.raises(UserError, match="--transpose must be at least 0"):
        train_prior(tiny_run, tmp_path / "bad", "--transpose", -1)
    resumed = train_prior(tiny_run, tmp_path / "two", "--transpose", 2, "--resume", epochs=2)
    assert resumed["epoch"] == 2 and resumed["transposition"]["max_shift"] == 2
