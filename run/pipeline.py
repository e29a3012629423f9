"""What the pipeline scripts share: config flags, data tensors, run folders, encoding, VQ_dict."""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from evaluation.latent_space import latent_features
from models.config import apply_preset
from run.cli import SAVED_MODELS, str2bool
from music.elements import QUADRANTS
from music.errors import UserError

# Config fields that come from the data, never from flags.
DATA_FIELDS = {"vocab_sizes", "type_ids", "value_tables", "n_codes", "stream_codes"}
# A paper-size model trained on fewer pieces than this is almost surely fed a sample by
# mistake (EMOPIA has 1,078 clips; data/sample holds 32).
MIN_PAPER_PIECES = 200


def add_config_flags(parser: argparse.ArgumentParser, config_cls, title: str) -> None:
    """One flag per model hyperparameter; default None means "the preset's value"."""
    group = parser.add_argument_group(title, "defaults are the paper's values (or the --preset's)")
    for field in dataclasses.fields(config_cls):
        if field.name in DATA_FIELDS or field.metadata.get("flag", True) is False:
            continue
        default = _field_default(field)
        if default is None and "flag_type" in field.metadata:   # None = "decided by the config"
            group.add_argument(f"--{field.name}", type=field.metadata["flag_type"], default=None,
                               help=f"(default {field.metadata.get('flag_default', 'set by the other flags')})")
        elif isinstance(default, bool):
            group.add_argument(f"--{field.name}", type=str2bool, default=None, help=f"(default {default})")
        elif isinstance(default, (int, float, str)):
            about = field.metadata.get("help")
            group.add_argument(f"--{field.name}", type=type(default), default=None,
                               help=f"{about} (default {default})" if about else f"(default {default})")
        elif isinstance(default, (list, tuple)):
            group.add_argument(f"--{field.name}", type=type(default[0]), nargs=len(default), default=None,
                               help=f"(default {' '.join(map(str, default))})")


def _field_default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def config_from_args(config_cls, args: argparse.Namespace, preset: str, **data_fields):
    """Paper defaults, then the preset, then every flag the user set."""
    overrides = {}
    for field in dataclasses.fields(config_cls):
        value = getattr(args, field.name, None)
        if field.name not in DATA_FIELDS and value is not None:
            overrides[field.name] = list(value) if isinstance(value, list) else value
    try:
        return dataclasses.replace(apply_preset(config_cls(**data_fields), preset), **overrides)
    except ValueError as exc:
        raise UserError(f"model flags: {exc}") from None


def report_pieces(emotion, n_train: int, source, preset: str, logger: logging.Logger) -> None:
    """Log the corpus size and its pieces per quadrant; warn when a model larger than the
    tiny preset trains on fewer than MIN_PAPER_PIECES pieces."""
    emotion = np.asarray(emotion)
    counts = ", ".join(f"Q{q} {int((emotion == q).sum())}" for q in QUADRANTS)
    unlabeled = int((emotion == 0).sum())
    logger.info(f"data: {len(emotion)} pieces in {source} ({counts}"
                + (f", unlabeled {unlabeled}" if unlabeled else "") + f"); {n_train} train")
    if preset != "tiny" and n_train < MIN_PAPER_PIECES:
        logger.warning(f"warning: the {preset} preset trains on only {n_train} pieces "
                       f"(fewer than {MIN_PAPER_PIECES}): is {source} a sample rather than the "
                       f"full corpus? (prepare_data.py --midi_dir on the full EMOPIA MIDI folder)")


def dataset_tensors(data, max_len: int) -> dict[str, torch.Tensor]:
    """The npz rows as tensors, cropped to the model's sequence length (tiny configs use < 1024)."""
    if max_len > data.x.shape[1]:
        raise UserError(f"{data.npz_path}: rows are {data.x.shape[1]} steps, but the model needs {max_len}")
    return {
        "x": torch.as_tensor(data.x[:, :max_len], dtype=torch.long),
        "y": torch.as_tensor(data.y[:, :max_len], dtype=torch.long),
        "mask": torch.as_tensor(data.mask[:, :max_len], dtype=torch.float32),
        "seq_len": torch.as_tensor(np.minimum(data.seq_len, max_len), dtype=torch.long),
    }


def model_name(flag_value: str, checkpoint_path: Path) -> str:
    """NAME for output files: the flag when it is a name, else the run folder's name."""
    path = Path(flag_value)
    if path.suffix in {".pt", ".pth"}:
        return checkpoint_path.parent.name
    return path.name


def run_dir(model_path: str | None, default_name: str) -> Path:
    """A bare name goes under saved_models/; anything with a folder part is used as given."""
    name = model_path or default_name
    path = Path(name)
    return path if len(path.parts) > 1 or path.is_absolute() else SAVED_MODELS / name


def check_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to silently overwrite an earlier run; return the checkpoint to resume from."""
    last = out_dir / "last.pt"
    _remove_stale_temporaries(out_dir)
    if resume:
        if not last.is_file():
            raise UserError(f"{out_dir}: --resume given, but there is no last.pt to resume from")
        return last
    if last.exists() and not overwrite:
        raise UserError(f"{out_dir} already holds a run (last.pt); pass --resume to continue it "
                        f"or --overwrite to start again")
    return None


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete the half-written `.NAME.*.tmp` files a killed run leaves (checkpoints can be large)."""
    for name in ("last.pt", "best.pt", "metrics.csv"):
        for tmp in out_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """Arguments as plain types, storable in a weights-only checkpoint."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


@torch.no_grad()
def encode_pieces(model, y: torch.Tensor, batch_size: int, device: torch.device,
                  desc: str = "encoding") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantised latents [N, T, D] (float32, CPU) and code indices [N, T] of every piece, in eval mode."""
    model.eval()
    latents, codes = [], []
    for start in tqdm(range(0, len(y), batch_size), desc=desc, leave=False):
        latent, code = model.encode(y[start:start + batch_size].to(device))
        latents.append(latent.float().cpu())
        codes.append(code.cpu())
    return torch.cat(latents), torch.cat(codes)


def pooled_latents(model, data, pool: str = "all", batch_size: int = 16, device="cpu") -> dict[str, np.ndarray]:
    """Encode every piece of `data` (a CPDataset) with a MusER `model`, in eval mode, and pool.

    Returns {element: [N, slice_dim], ..., 'all': [N, latent_dim]} (float64), rows in data
    order; the quadrant labels are `data.emotion`. The sequence is the model's max_len
    (1024 in the paper configuration), so pool="all" averages over exactly that many steps.
    """
    tensors = dataset_tensors(data, model.config.max_len)
    latent, _ = encode_pieces(model, tensors["y"], batch_size, torch.device(device))
    return latent_features(latent, tensors["mask"], model.config.slice_dim, pool)
