"""Latent codes and VQ_dicts: the contract between the VQ-VAE, VQ_explore.py, the prior,
generate.py and the checkpoint converter, in one place.

Codes: int64 tensors [N, T], one index per step into the VQ-VAE's codebook (one joint
codebook over the whole latent, as in the paper), or [N, T, 7] for a model with one codebook
per element slice (--quantizer product): code k indexes slice k's codebook.

A VQ_dict numbers the codes that the training pieces use. A joint model's is in the authors'
format, {0: {code: compact}, 1: {compact: code}}; a product model's holds one such pair of
maps per slice, {"slices": [{0: ..., 1: ...}, ...]}. Both carry "vq_vae", the fingerprint of
the codebook they were made from. The prior predicts compact indices 0..n-1 (per slice for a
product model); `compact_codes` and `expand_codes` go between the two. Every map holds plain
ints, whatever wrote it, so a checkpoint that stores one loads with weights_only=True.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from models.config import PriorConfig
from music.atomic import atomic_write, read_pickle
from music.errors import UserError

SLICES = "slices"          # the key of a product model's per-slice maps


def codebook_fingerprint(model) -> str:
    """Identifies a trained VQ-VAE by its codebook (every codebook of a product model), so a
    VQ_dict cannot be paired with another model."""
    codebook = model.quantizer.codebook.detach().float().cpu().contiguous().numpy()
    return hashlib.sha1(codebook.tobytes()).hexdigest()[:16]


# What a VQ-VAE's codes look like, by its --quantizer, in words for error messages.
QUANTIZER_WORDS = {"joint": "one joint codebook (--quantizer joint)",
                   "product": "one codebook per slice (--quantizer product)"}


def code_maps(vq_dict: dict) -> list[dict]:
    """The pairs of maps {0: {code: compact}, 1: {compact: code}} of a VQ_dict: one per slice
    of a product model's, the only one of a joint model's."""
    return vq_dict[SLICES] if SLICES in vq_dict else [vq_dict]


def used_code_counts(vq_dict: dict) -> list[int]:
    """Used codes per pair of maps: [n] for a joint VQ_dict, one count per slice for a product one."""
    return [len(maps[0]) for maps in code_maps(vq_dict)]


def make_vq_dict(codes: torch.Tensor, fingerprint: str, per_slice: bool = False) -> dict:
    """The authors' format {0: {code: compact}, 1: {compact: code}}, plus the model's fingerprint;
    with per_slice, codes [..., slices] of a product model and one pair of maps per slice."""
    if per_slice:
        return {SLICES: [_numbering(codes[..., k]) for k in range(codes.shape[-1])], "vq_vae": fingerprint}
    return {**_numbering(codes), "vq_vae": fingerprint}


def _numbering(codes: torch.Tensor) -> dict:
    used = sorted(int(c) for c in torch.unique(codes))
    return {0: {c: i for i, c in enumerate(used)}, 1: {i: c for i, c in enumerate(used)}}


def save_vq_dict(path: Path, vq_dict: dict) -> None:
    atomic_write(path, lambda handle: pickle.dump(vq_dict, handle))


def load_vq_dict(path: Path, fingerprint: str | None = None, codebook_size: int | None = None,
                 slices: int | None = None) -> dict:
    """Load and check a VQ_dict: each pair of maps a bijection between used codes and compact
    indices 0..n-1.

    With `fingerprint`, it must come from that VQ-VAE (files in the authors' format carry
    none); with `codebook_size`, every code must exist in the codebook (each slice's, for a
    product model). `slices`: the product model's number of codebooks, whose VQ_dict has
    one pair of maps per slice; None expects a joint model's.
    """
    path = Path(path)
    vq_dict = read_pickle(path, "VQ_dict not found (run VQ_explore.py with this --VQ_VAE first)",
                          "not a readable VQ_dict pickle", detail=False)
    if not isinstance(vq_dict, dict) or not (SLICES in vq_dict or (0 in vq_dict and 1 in vq_dict)):
        raise UserError(f"{path}: not a VQ_dict (expected keys 0 and 1)")
    _check_layout(vq_dict, path, slices)
    if fingerprint is not None and vq_dict.get("vq_vae") not in (None, fingerprint):
        raise UserError(f"{path}: this VQ_dict was made from another VQ-VAE "
                        f"(codebook {vq_dict.get('vq_vae')}, the model's is {fingerprint}); re-run VQ_explore.py")
    where = [f" (slice {k})" for k in range(slices)] if slices is not None else [""]
    maps = [_checked_maps(m, path, codebook_size, w) for m, w in zip(code_maps(vq_dict), where)]
    return {**vq_dict, SLICES: maps} if slices is not None else {**vq_dict, **maps[0]}


def _check_layout(vq_dict: dict, path, slices: int | None) -> None:
    """A product model's VQ_dict has `slices` pairs of maps, a joint model's none."""
    if (SLICES in vq_dict) != (slices is not None):
        made, wanted = ("product", "joint") if SLICES in vq_dict else ("joint", "product")
        raise UserError(f"{path}: this VQ_dict is of a VQ-VAE with {QUANTIZER_WORDS[made]}, but the VQ-VAE "
                        f"has {QUANTIZER_WORDS[wanted]}; re-run VQ_explore.py with this --VQ_VAE")
    if slices is not None:
        maps = vq_dict[SLICES]
        if not isinstance(maps, list) or len(maps) != slices or not all(
                isinstance(m, dict) and 0 in m and 1 in m for m in maps):
            raise UserError(f"{path}: not a valid VQ_dict ('slices' must hold {slices} pairs of maps, "
                            f"keys 0 and 1); re-run VQ_explore.py")


def _checked_maps(maps: dict, path, codebook_size: int | None, where: str) -> dict:
    """One pair of maps with plain ints, checked to be inverse numberings 0..n-1 of codes in the codebook."""
    to_compact, to_code = _plain_ints(maps[0], path, where), _plain_ints(maps[1], path, where)
    inverse = (isinstance(to_compact, dict) and isinstance(to_code, dict) and len(to_code) == len(to_compact)
               and all(to_code.get(i) == code for code, i in to_compact.items()))
    if not inverse or not to_compact or sorted(to_compact.values()) != list(range(len(to_compact))):
        raise UserError(f"{path}: not a valid VQ_dict{where} (entries 0 and 1 must be inverse maps between "
                        f"used codes and 0..n-1); re-run VQ_explore.py")
    if codebook_size is not None:
        outside = [code for code in to_compact if not 0 <= int(code) < codebook_size]
        if outside:
            raise UserError(f"{path}: code {outside[0]}{where} is outside the VQ-VAE's codebook of {codebook_size} "
                            f"(a VQ_dict of another model?); re-run VQ_explore.py with this --VQ_VAE")
    return {0: to_compact, 1: to_code}


def _plain_ints(mapping, path, where: str = "") -> dict:
    """A code map with plain int keys and values: the authors' VQ_explore.py writes numpy
    integers, which a checkpoint loaded with weights_only=True cannot hold."""
    if not isinstance(mapping, dict):
        return mapping
    integral = (int, np.integer)
    if not all(isinstance(k, integral) and isinstance(v, integral) and not isinstance(k, bool)
               and not isinstance(v, bool) for k, v in mapping.items()):
        raise UserError(f"{path}: not a valid VQ_dict{where} (its codes and indices must be integers); "
                        f"re-run VQ_explore.py")
    return {int(k): int(v) for k, v in mapping.items()}


def load_model_vq_dict(path: Path, model) -> dict:
    """The VQ_dict at `path`, checked against a MusER model: made from its codebook(s), codes
    inside them, and one pair of maps per slice exactly when the model has a codebook per slice."""
    c = model.config
    if c.quantizer == "product":
        return load_vq_dict(path, codebook_fingerprint(model), c.slice_codebook_size, model.quantizer.slices)
    return load_vq_dict(path, codebook_fingerprint(model), c.codebook_size)


def check_prior_codes(prior_checkpoint: dict, prior_path, fingerprint: str, vq_path) -> None:
    """A prior only means something with the VQ-VAE whose codes it learned."""
    if prior_checkpoint.get("vq_vae") != fingerprint:
        raise UserError(f"{prior_path}: this prior was trained on the codes of another VQ-VAE "
                        f"({prior_checkpoint.get('vq_vae_path')}), not {vq_path}")


def check_prior_kind(prior_checkpoint: dict, prior_path, vq_vae, vq_path) -> None:
    """A prior over seven code streams goes with a product VQ-VAE, a joint prior with a joint one."""
    prior_kind = PriorConfig.from_dict(prior_checkpoint["config"]).quantizer
    if prior_kind != vq_vae.config.quantizer:
        raise UserError(f"{prior_path}: this prior is over the codes of a VQ-VAE with {QUANTIZER_WORDS[prior_kind]}, "
                        f"but {vq_path} has {QUANTIZER_WORDS[vq_vae.config.quantizer]}")


def compact_codes(codes: torch.Tensor, vq_dict: dict, codebook: torch.Tensor,
                  logger: logging.Logger, source: str) -> torch.Tensor:
    """Map codebook indices to compact prior indices; an unseen code goes to the nearest used one.

    A product model's codes [..., slices] and codebooks [slices, K, d] map slice by slice.
    (The authors' code raises KeyError here.)
    """
    if SLICES in vq_dict:
        return torch.stack([_compact(codes[..., k], maps, codebook[k], logger, f"{source} in slice {k}")
                            for k, maps in enumerate(vq_dict[SLICES])], -1)
    return _compact(codes, vq_dict, codebook, logger, source)


def _compact(codes, maps, codebook, logger, source):
    used = torch.tensor(sorted(maps[0]), dtype=torch.long)
    lookup = torch.full((codebook.shape[0],), -1, dtype=torch.long)
    lookup[used] = torch.tensor([maps[0][int(c)] for c in used])
    unseen = torch.unique(codes[lookup[codes] < 0])
    if len(unseen):
        distances = torch.cdist(codebook[unseen].float(), codebook[used].float())
        lookup[unseen] = lookup[used[distances.argmin(dim=1)]]
        logger.warning(f"warning: {len(unseen)} code(s) used by {source} are not in the VQ_dict; "
                       f"mapped each to the nearest used code")
    return lookup[codes]


def expand_codes(compact: torch.Tensor, vq_dict: dict) -> torch.Tensor:
    """Codebook indices of compact prior indices (the inverse of `compact_codes` on used codes);
    slice by slice, [..., slices], for a product model's VQ_dict."""
    if SLICES in vq_dict:
        return torch.stack([_expand(compact[..., k], maps) for k, maps in enumerate(vq_dict[SLICES])], -1)
    return _expand(compact, vq_dict)


def _expand(compact, maps):
    to_code = torch.tensor([maps[1][i] for i in range(len(maps[1]))], dtype=torch.long, device=compact.device)
    return to_code[compact]


def vq_dict_for_checkpoint(vq_dict: dict) -> dict:
    """The maps alone, as plain dicts: what a prior checkpoint stores ({0: ..., 1: ...}, or
    {"slices": [...]} for a product model)."""
    if SLICES in vq_dict:
        return {SLICES: [{0: dict(m[0]), 1: dict(m[1])} for m in vq_dict[SLICES]]}
    return {0: dict(vq_dict[0]), 1: dict(vq_dict[1])}
