"""Latent codes and VQ_dicts: the contract between the VQ-VAE, VQ_explore.py, the prior,
generate.py and the checkpoint converter, in one place.

Codes: int64 tensors [N, T], one index per step into the VQ-VAE's codebook (one joint
codebook over the whole latent, as in the paper). A VQ_dict, in the authors' format, numbers
the codes that the training pieces use: {0: {code: compact}, 1: {compact: code}}, plus
"vq_vae": the fingerprint of the codebook it was made from. The prior predicts compact
indices 0..n-1; `compact_codes` and `expand_codes` go between the two. Every map holds plain
ints, whatever wrote it, so a checkpoint that stores one loads with weights_only=True.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from music.atomic import atomic_write, read_pickle
from music.errors import UserError


def codebook_fingerprint(model) -> str:
    """Identifies a trained VQ-VAE by its codebook, so a VQ_dict cannot be paired with another model."""
    codebook = model.quantizer.codebook.detach().float().cpu().contiguous().numpy()
    return hashlib.sha1(codebook.tobytes()).hexdigest()[:16]


def require_joint_codes(model, path) -> None:
    """VQ_dicts and the prior are defined for one joint codebook; a model with one codebook
    per slice (--quantizer product) has seven codes per step, which they do not take yet."""
    if model.config.quantizer != "joint":
        raise UserError(f"{path}: this VQ-VAE has one codebook per slice (--quantizer "
                        f"{model.config.quantizer}); VQ_explore.py, Prior_train.py and generate.py take a "
                        f"joint codebook only (element_transfer.py reads either)")


def make_vq_dict(codes: torch.Tensor, fingerprint: str) -> dict:
    """The authors' format {0: {code: compact}, 1: {compact: code}}, plus the model's fingerprint."""
    used = sorted(int(c) for c in torch.unique(codes))
    return {0: {c: i for i, c in enumerate(used)}, 1: {i: c for i, c in enumerate(used)},
            "vq_vae": fingerprint}


def save_vq_dict(path: Path, vq_dict: dict) -> None:
    atomic_write(path, lambda handle: pickle.dump(vq_dict, handle))


def load_vq_dict(path: Path, fingerprint: str | None = None, codebook_size: int | None = None) -> dict:
    """Load and check a VQ_dict: a bijection between used codes and compact indices 0..n-1.

    With `fingerprint`, it must come from that VQ-VAE (files in the authors' format carry
    none); with `codebook_size`, every code must exist in the codebook.
    """
    path = Path(path)
    vq_dict = read_pickle(path, "VQ_dict not found (run VQ_explore.py with this --VQ_VAE first)",
                          "not a readable VQ_dict pickle", detail=False)
    if not isinstance(vq_dict, dict) or 0 not in vq_dict or 1 not in vq_dict:
        raise UserError(f"{path}: not a VQ_dict (expected keys 0 and 1)")
    if fingerprint is not None and vq_dict.get("vq_vae") not in (None, fingerprint):
        raise UserError(f"{path}: this VQ_dict was made from another VQ-VAE "
                        f"(codebook {vq_dict.get('vq_vae')}, the model's is {fingerprint}); re-run VQ_explore.py")
    to_compact, to_code = _plain_ints(vq_dict[0], path), _plain_ints(vq_dict[1], path)
    inverse = (isinstance(to_compact, dict) and isinstance(to_code, dict) and len(to_code) == len(to_compact)
               and all(to_code.get(i) == code for code, i in to_compact.items()))
    if not inverse or not to_compact or sorted(to_compact.values()) != list(range(len(to_compact))):
        raise UserError(f"{path}: not a valid VQ_dict (entries 0 and 1 must be inverse maps between "
                        f"used codes and 0..n-1); re-run VQ_explore.py")
    if codebook_size is not None:
        outside = [code for code in to_compact if not 0 <= int(code) < codebook_size]
        if outside:
            raise UserError(f"{path}: code {outside[0]} is outside the VQ-VAE's codebook of {codebook_size} "
                            f"(a VQ_dict of another model?); re-run VQ_explore.py with this --VQ_VAE")
    return {**vq_dict, 0: to_compact, 1: to_code}


def _plain_ints(mapping, path) -> dict:
    """A code map with plain int keys and values: the authors' VQ_explore.py writes numpy
    integers, which a checkpoint loaded with weights_only=True cannot hold."""
    if not isinstance(mapping, dict):
        return mapping
    integral = (int, np.integer)
    if not all(isinstance(k, integral) and isinstance(v, integral) and not isinstance(k, bool)
               and not isinstance(v, bool) for k, v in mapping.items()):
        raise UserError(f"{path}: not a valid VQ_dict (its codes and indices must be integers); re-run VQ_explore.py")
    return {int(k): int(v) for k, v in mapping.items()}


def check_prior_codes(prior_checkpoint: dict, prior_path, fingerprint: str, vq_path) -> None:
    """A prior only means something with the VQ-VAE whose codes it learned."""
    if prior_checkpoint.get("vq_vae") != fingerprint:
        raise UserError(f"{prior_path}: this prior was trained on the codes of another VQ-VAE "
                        f"({prior_checkpoint.get('vq_vae_path')}), not {vq_path}")


def compact_codes(codes: torch.Tensor, vq_dict: dict, codebook: torch.Tensor,
                  logger: logging.Logger, source: str) -> torch.Tensor:
    """Map codebook indices to compact prior indices; an unseen code goes to the nearest used one.

    (The authors' code raises KeyError here.)
    """
    used = torch.tensor(sorted(vq_dict[0]), dtype=torch.long)
    lookup = torch.full((codebook.shape[0],), -1, dtype=torch.long)
    lookup[used] = torch.tensor([vq_dict[0][int(c)] for c in used])
    unseen = torch.unique(codes[lookup[codes] < 0])
    if len(unseen):
        distances = torch.cdist(codebook[unseen].float(), codebook[used].float())
        lookup[unseen] = lookup[used[distances.argmin(dim=1)]]
        logger.warning(f"warning: {len(unseen)} code(s) used by {source} are not in the VQ_dict; "
                       f"mapped each to the nearest used code")
    return lookup[codes]


def expand_codes(compact: torch.Tensor, vq_dict: dict) -> torch.Tensor:
    """Codebook indices of compact prior indices (the inverse of `compact_codes` on used codes)."""
    to_code = torch.tensor([vq_dict[1][i] for i in range(len(vq_dict[1]))], dtype=torch.long,
                           device=compact.device)
    return to_code[compact]


def vq_dict_for_checkpoint(vq_dict: dict) -> dict:
    """The two maps alone, as plain dicts: what a prior checkpoint stores."""
    return {0: dict(vq_dict[0]), 1: dict(vq_dict[1])}
