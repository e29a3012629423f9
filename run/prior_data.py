"""The prior's training data (Prior_train.py): pieces encoded by the trained VQ-VAE into
compact code sequences, and, with --transpose K, the training pieces' transposed copies.

Transposition augmentation (beyond the paper): each training piece also enters at every
shift of -K..K semitones but 0 (music.transpose: pitches and chord roots move, the mode and
the emotion label stay), encoded and compacted like the pieces themselves. Only training
pieces are copied, after the train/validation split, so no copy of a validation piece
trains; validation stays the original pieces. A piece the dictionary cannot write at a
shift is left out at that shift, and the log says how many were.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from models.prior import training_sequences
from music.transpose import shifts_up_to, transposed_copies
from run.codes import compact_codes, used_code_counts
from run.pipeline import encode_pieces


def code_sequences(vq_vae, y: torch.Tensor, emotion, vq_dict: dict, batch_size: int, device: torch.device,
                   logger: logging.Logger, source: str) -> dict[str, torch.Tensor]:
    """The prior's sequences of pieces y [N, T, 8] with quadrants `emotion` [N]: encoded by the
    VQ-VAE in eval mode, mapped to compact indices through the VQ_dict (a code it lacks goes
    to the nearest used one, logged with `source`), the emotion token first
    (models.prior.training_sequences; one stream per slice for a product VQ-VAE)."""
    _, codes = encode_pieces(vq_vae, y, batch_size, device)
    compact = compact_codes(codes, vq_dict, vq_vae.quantizer.codebook.detach().cpu(), logger, source)
    counts = used_code_counts(vq_dict)
    return training_sequences(compact, torch.as_tensor(emotion, dtype=torch.long),
                              counts if vq_vae.config.quantizer == "product" else sum(counts))


def transposed_sequences(vq_vae, data, y: torch.Tensor, rows, max_shift: int, vq_dict: dict, batch_size: int,
                         device: torch.device, logger: logging.Logger) -> tuple[dict | None, dict]:
    """The sequences of the pieces `rows` of y [N, T, 8] (the rows of `data`, a CPDataset,
    cropped to the model's length) at every shift of -max_shift..max_shift but 0, each with its
    piece's emotion; None when no piece fits any shift. Also a summary for the checkpoint and
    the log: {"max_shift", "pieces", "copies": {shift: n}, "left_out": {shift: n}} (shifts as
    text, '+2', so that a weights-only checkpoint holds it)."""
    rows = np.asarray(rows, dtype=np.int64)
    words = y[torch.as_tensor(rows)].numpy()
    parts, copies, left_out = [], {}, {}
    for shift in shifts_up_to(max_shift):          # one shift at a time: one encoding of the pieces at once
        moved = transposed_copies(words, data.word2event, data.event2word, [shift])
        copies[f"{shift:+d}"], left_out[f"{shift:+d}"] = len(moved.source), moved.left_out[shift]
        if len(moved.source):
            parts.append(code_sequences(vq_vae, torch.as_tensor(moved.words), data.emotion[rows[moved.source]],
                                        vq_dict, batch_size, device, logger,
                                        f"{data.npz_path} transposed by {shift:+d}"))
    summary = {"max_shift": int(max_shift), "pieces": int(len(rows)), "copies": copies, "left_out": left_out}
    per_shift = ", ".join(f"{shift} {n}" for shift, n in left_out.items())
    logger.info(f"transposition by -{max_shift}..+{max_shift} semitones (--transpose {max_shift}): "
                f"{len(rows)} training pieces at {len(copies)} shifts, {sum(copies.values())} copies added; "
                f"left out {sum(left_out.values())} whose pitches or chords the dictionary lacks at that shift "
                f"({per_shift}); validation: the original pieces only")
    if not parts:
        logger.warning("warning: no training piece fits any shift; the prior trains on the pieces alone")
        return None, summary
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}, summary


def add_transposed_copies(train: dict[str, torch.Tensor], vq_vae, data, y: torch.Tensor, train_rows, max_shift: int,
                          vq_dict: dict, batch_size: int, device: torch.device,
                          logger: logging.Logger) -> tuple[dict[str, torch.Tensor], dict]:
    """The training sequences `train` (of the pieces `train_rows`, in that order) followed by
    their transposed copies (`transposed_sequences`), and its summary."""
    copies, summary = transposed_sequences(vq_vae, data, y, train_rows, max_shift, vq_dict, batch_size, device,
                                           logger)
    if copies is None:
        return train, summary
    return {key: torch.cat([train[key], copies[key]]) for key in train}, summary
