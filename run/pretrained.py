"""Shipped pretrained models: a trained VQ-VAE and its prior, stored small.

    python -m run.pretrained --study OUT --seed 13 --model MusER_TRANS_CA_GE --out pretrained

takes the two best.pt files of a reproduction study and writes `muser.pt` and `prior.pt`:
the same self-describing checkpoints, without the training state (optimizer, RNG, history)
and with floating-point weights in float16. The quantiser's buffers stay float32: the
codebook is what the prior's codes index, and its fingerprint ties the prior to it.
Loading casts the weights back to float32 (`load_state_dict` copies into the model's own
dtype), so every script reads these files like any other checkpoint.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from music.errors import UserError
from run.checkpoint import load_checkpoint, save_checkpoint
from run.cli import run_main

TRAINING_STATE = ("optimizer", "rng", "running", "history", "args")
PATH_ENTRIES = ("dictionary_path", "data_path", "vq_vae_path")
EXACT_PREFIXES = ("quantizer.",)


def small_checkpoint(checkpoint: dict) -> dict:
    """The checkpoint without training state, float weights in float16, paths as bare names."""
    out = {k: v for k, v in checkpoint.items() if k not in TRAINING_STATE}
    out["model"] = {name: (t.half() if t.is_floating_point() and not name.startswith(EXACT_PREFIXES) else t)
                    for name, t in checkpoint["model"].items()}
    for key in PATH_ENTRIES:
        if out.get(key):
            out[key] = Path(str(out[key])).name
    out["stored_dtype"] = "float16"
    return out


def export(study: Path, model: str, out: Path, seed: int = 13) -> list[Path]:
    """Write out/muser.pt and out/prior.pt from a study's `seeds/{seed}/models/{model}` and its prior."""
    models = Path(study) / "seeds" / str(seed) / "models"
    sources = {"muser.pt": (models / model / "best.pt", "muser"),
               "prior.pt": (models / f"Prior_{model}" / "best.pt", "prior")}
    written = []
    for name, (path, kind) in sources.items():
        checkpoint = small_checkpoint(load_checkpoint(path, kind, "--study"))
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / name, checkpoint)
        written.append(out / name)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Export a study's VQ-VAE and prior as small pretrained files.")
    parser.add_argument("--study", required=True, help="a reproduce.py output folder")
    parser.add_argument("--model", default="MusER_TRANS_CA_GE", help="which of its VQ-VAEs")
    parser.add_argument("--seed", type=int, default=13, help="which of its seeds")
    parser.add_argument("--out", default="pretrained")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    study = Path(args.study)
    if not study.is_dir():
        raise UserError(f"{study}: no such study folder")
    for path in export(study, args.model, Path(args.out), args.seed):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_main(main)
