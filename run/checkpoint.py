"""Self-describing checkpoints, written atomically.

A checkpoint is a plain dict (loadable with `torch.load(weights_only=True)`):

    kind            "muser" or "prior"
    config          the model config as a dict (every hyperparameter)
    model           state_dict (EMA quantiser state included)
    optimizer       optimizer state_dict
    epoch           epochs completed; `batch` > 0 marks a mid-epoch (interrupted) save
    best_loss       lowest monitored loss so far
    args            the training arguments (plain types)
    vocab_sizes     the eight field vocabulary sizes
    dictionary_path the dictionary the data was encoded with
    rng             torch / python RNG states for exact resume
    (prior only)    vq_vae, vq_vae_path, vq_dict (its config's stream_codes, when set, say
                    it is a prior over a product VQ-VAE's seven code streams)

Downstream scripts rebuild models from `config` alone; no hyperparameter is repeated by hand.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from models.config import MusERConfig, PriorConfig
from models.muser import MusER
from models.product_prior import prior_for
from run.cli import resolve_checkpoint
from music.atomic import atomic_write
from music.errors import UserError

KIND_FLAGS = {"muser": "a MusER VQ-VAE", "prior": "a prior"}


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    atomic_write(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: str | os.PathLike, expect_kind: str | None = None,
                    flag: str = "checkpoint") -> dict[str, Any]:
    """Load a checkpoint on CPU, checking that it is whole and of the expected kind."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    _check_archive(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable checkpoint (corrupt?): {detail[:200]}") from None
    if not isinstance(checkpoint, dict) or "kind" not in checkpoint or "model" not in checkpoint:
        raise UserError(f"{path}: not a checkpoint written by this project (no 'kind'/'model' entries)")
    kind = checkpoint["kind"]
    if expect_kind is not None and kind != expect_kind:
        raise UserError(f"{path}: {flag} needs {KIND_FLAGS[expect_kind]} checkpoint, "
                        f"but this is {KIND_FLAGS.get(kind, repr(kind))} checkpoint")
    return checkpoint


def _check_archive(path: Path) -> None:
    """torch.save writes a zip archive: say plainly when a file is cut short or is not one.

    (torch's own messages for these cases are long and suggest unsafe workarounds.)
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the checkpoint: {exc.strerror or exc}") from None
    if not head:
        raise UserError(f"{path}: not a readable checkpoint: the file is empty")
    if head != b"PK\x03\x04":
        raise UserError(f"{path}: not a readable checkpoint: not a zip-format PyTorch checkpoint "
                        f"(corrupt, or another kind of file)")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a readable checkpoint: the file is truncated "
                        f"({path.stat().st_size} bytes, the end of the archive is missing)")


def model_vocabulary(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The vocabulary a checkpoint's model reads, as keyword arguments of
    `music.data.load_cp_dataset` / `check_model_vocabulary` (the sizes, and the dictionary
    itself when the checkpoint stores it)."""
    dictionary = checkpoint.get("dictionary") or {}
    return {"vocab_sizes": checkpoint.get("vocab_sizes"), "model_event2word": dictionary.get("event2word")}


def build_muser(checkpoint: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """Rebuild the MusER VQ-VAE described by a checkpoint and load its weights."""
    model = MusER(MusERConfig.from_dict(checkpoint["config"]))
    _load_state(model, checkpoint, path)
    return model


def load_muser(name_or_path: str, flag: str = "--VQ_VAE"):
    """Resolve a --VQ_VAE value, load its checkpoint and rebuild the model (CPU, train mode).
    Returns (model, checkpoint, path)."""
    path = resolve_checkpoint(name_or_path, flag)
    checkpoint = load_checkpoint(path, "muser", flag)
    return build_muser(checkpoint, path), checkpoint, path


def build_prior(checkpoint: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """Rebuild the prior described by a checkpoint (joint or product) and load its weights."""
    model = prior_for(PriorConfig.from_dict(checkpoint["config"]))
    _load_state(model, checkpoint, path)
    return model


def _load_state(model: torch.nn.Module, checkpoint: dict[str, Any], path) -> None:
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit the model its config describes: {first[:200]}") from None
