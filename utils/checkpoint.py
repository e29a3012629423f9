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
    (prior only)    vq_vae_path, vq_dict

Downstream scripts rebuild models from `config` alone; no hyperparameter is repeated by hand.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError

KIND_FLAGS = {"muser": "a MusER VQ-VAE", "prior": "a prior"}


def atomic_write_bytes(path: str | os.PathLike, write: callable) -> None:
    """Write a file through a temporary file in the same folder, fsync, then rename over `path`.

    A crash or a failed write never leaves a partial file at `path`: the previous file stays.
    `write(fileobj)` does the writing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise UserError(f"cannot write {path}: {exc.strerror or exc} (the previous file is kept)") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: str | os.PathLike, expect_kind: str | None = None,
                    flag: str = "checkpoint") -> dict[str, Any]:
    """Load a checkpoint on CPU, checking that it is whole and of the expected kind."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt?): {detail[:200]}") from None
    if not isinstance(checkpoint, dict) or "kind" not in checkpoint or "model" not in checkpoint:
        raise UserError(f"{path}: not a checkpoint written by this project (no 'kind'/'model' entries)")
    kind = checkpoint["kind"]
    if expect_kind is not None and kind != expect_kind:
        raise UserError(f"{path}: {flag} needs {KIND_FLAGS[expect_kind]} checkpoint, "
                        f"but this is {KIND_FLAGS.get(kind, repr(kind))} checkpoint")
    return checkpoint


def build_muser(checkpoint: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """Rebuild the MusER VQ-VAE described by a checkpoint and load its weights."""
    from models.config import MusERConfig
    from models.muser import MusER

    model = MusER(MusERConfig.from_dict(checkpoint["config"]))
    _load_state(model, checkpoint, path)
    return model


def build_prior(checkpoint: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """Rebuild the prior described by a checkpoint and load its weights."""
    from models.config import PriorConfig
    from models.prior import Prior

    model = Prior(PriorConfig.from_dict(checkpoint["config"]))
    _load_state(model, checkpoint, path)
    return model


def _load_state(model: torch.nn.Module, checkpoint: dict[str, Any], path) -> None:
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit the model its config describes: {first[:200]}") from None
