"""Small pieces every script shares: boolean flags, device choice, seeding, logging,
checkpoint paths, and run_main (the CPU thread policy, then main, with error exits). The
thread policy itself is in run/threads.py."""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from music.errors import UserError
from run.threads import apply_thread_policy, recommended_wait, threads_from_argv

SAVED_MODELS = Path("saved_models")


def str2bool(value) -> bool:
    """Parse True/False/1/0/yes/no (argparse's `type=bool` would make 'False' true)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "t", "1", "yes", "y", "on"}:
        return True
    if text in {"false", "f", "0", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False/1/0/yes/no), got {value!r}")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, default=13, help="random seed (paper: 13)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    add_thread_args(parser)


def add_thread_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: OMP_NUM_THREADS, else one per "
                             "core that other processes leave free at start, followed while "
                             "running). How waiting OpenMP threads wait comes from the "
                             f"environment when torch loads: make exports {recommended_wait()} "
                             "(a short spin, so that a busy machine does not slow the threads "
                             "down); set it yourself when launching a script directly")


def add_training_args(parser: argparse.ArgumentParser, epochs: int) -> None:
    """The flags of both trainers (MusER.py, Prior_train.py); only the epoch count differs."""
    training = parser.add_argument_group("training", "defaults are the paper's values")
    training.add_argument("--Epoch", "--epochs", dest="Epoch", type=int, default=epochs)
    training.add_argument("--batch_size", type=int, default=16)
    training.add_argument("--lr", type=float, default=1e-4)
    training.add_argument("--clip", type=float, default=3.0, help="gradient-norm clip")
    training.add_argument("--val_split", type=float, default=0.0,
                          help="fraction of pieces held out for validation (paper: 0, all data trains)")
    training.add_argument("--resume", action="store_true", help="continue from {model_path}/last.pt")
    training.add_argument("--overwrite", action="store_true", help="start again over an earlier run")
    training.add_argument("--amp", type=str2bool, default=False, help="bf16 autocast")
    training.add_argument("--compile", type=str2bool, default=False, help="torch.compile the model")


def add_audio_args(parser: argparse.ArgumentParser) -> None:
    """--audio and --soundfont for every script that writes MIDI (see evaluation/audio.py)."""
    parser.add_argument("--audio", type=str2bool, default=True,
                        help="render every MIDI file written to audio (MP3) for the listening page")
    parser.add_argument("--soundfont", default=None,
                        help="SoundFont (.sf2) for the audio (default: TimGM6mb.sf2 from pretty_midi)")


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r} is not a valid torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA, but no CUDA device is available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_logging(log_path: str | os.PathLike | None, rank: int = 0) -> logging.Logger:
    """Log to stdout and, when given, to a file (appending, so resumed runs keep one log).

    Only rank 0 of a distributed run logs; the other ranks stay quiet.
    """
    logger = logging.getLogger("muser")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    # Progress to stdout; warnings and errors to stderr, plain, like every script's errors.
    stream = _ProgressBarSafeHandler(sys.stdout)
    stream.setFormatter(fmt)
    stream.addFilter(lambda record: record.levelno < logging.WARNING)
    errors = _ProgressBarSafeHandler(sys.stderr)
    errors.setLevel(logging.WARNING)
    errors.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(stream)
    logger.addHandler(errors)
    if log_path and rank == 0:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_path, mode="a")
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


class _ProgressBarSafeHandler(logging.StreamHandler):
    """Writes through tqdm, so a message never lands in the middle of a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:
            self.handleError(record)


def resolve_checkpoint(name_or_path: str, flag: str) -> Path:
    """`NAME` -> saved_models/NAME/best.pt; a folder -> folder/best.pt; a file is used as is."""
    path = Path(name_or_path)
    if path.suffix in {".pt", ".pth"}:
        candidates = [path]
    elif path.is_dir():
        candidates = [path / "best.pt"]
    else:
        candidates = [SAVED_MODELS / name_or_path / "best.pt", path / "best.pt"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"{flag} {name_or_path}: no checkpoint at {candidates[0]} "
                    f"(train one first, or pass a path to a .pt file)")



def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a script's main(): first the CPU thread policy (run.threads.apply_thread_policy,
    with --threads when given), then main; user errors become one line on stderr and exit
    code 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        apply_thread_policy(threads_from_argv(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        code = main(args)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
