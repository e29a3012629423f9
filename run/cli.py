"""Small pieces every script shares: boolean flags, device choice, CPU threads, logging,
error exits."""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable

# OpenMP (libgomp in torch's CPU wheels) reads how its threads wait once, when torch loads
# it. By default a waiting thread spins for a long while; when another process holds a
# core, the spinning thread takes the core the thread it waits for needs, and 2 threads run
# many times slower than 1. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) avoids that but
# makes every parallel region wait for a wake-up, which on a virtual machine costs more
# than the second thread gains. A shorter spin (30000 rounds, about 0.5 ms here, against
# libgomp's 300000) keeps the threads hot between the closely spaced regions of a step and
# yields the core soon after; with 10000 they fell asleep between steps often enough to
# cost 8% at idle. When another process holds a core, the thread count drops
# (ThreadGovernor), so the spin matters there only until it does (bench/RESULTS.md). A
# value the user set wins.
DEFAULT_WAIT = {"GOMP_SPINCOUNT": "30000"}
WAIT_POLICY_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
USER_SET_WAIT_POLICY = any(name in os.environ for name in WAIT_POLICY_ENV)
TORCH_LOADED_FIRST = "torch" in sys.modules
if not USER_SET_WAIT_POLICY:
    os.environ.update(DEFAULT_WAIT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from music.errors import UserError

SAVED_MODELS = Path("saved_models")
MAX_THREADS = torch.get_num_threads()       # torch's default: one per physical core
_governor: "ThreadGovernor | None" = None


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
                             "core that other processes leave free at start); waiting OpenMP threads spin briefly "
                             f"({default_wait()}) unless the environment sets OMP_WAIT_POLICY "
                             "or GOMP_SPINCOUNT")


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
            from tqdm import tqdm
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


def threads_from_argv(args: list[str]) -> int | None:
    """The value of --threads N / --threads=N in a command line (None when absent or bad:
    argparse reports a bad value later)."""
    for i, arg in enumerate(args):
        value = None
        if arg == "--threads" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def apply_thread_policy(threads: int | None = None) -> int:
    """Set torch's CPU threads: `threads` when given (--threads), else OMP_NUM_THREADS
    (which torch already follows), else one per core that other processes leave free, as
    measured now (at least 1, at most torch's default of one per physical core): with a
    core held by another process, a second thread only waits for it. In that last case
    the count keeps following the machine while the script runs (`adapt_threads`).
    Returns the number in use. The waiting policy is set when this module is imported."""
    global _governor
    _governor = None
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be 1 or more, got {threads}")
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        free = free_cores()
        if free is not None:
            torch.set_num_threads(threads_for(free, MAX_THREADS))
            _governor = ThreadGovernor(MAX_THREADS)
    return torch.get_num_threads()


def adapt_threads() -> None:
    """Called at every step of a long loop (generation, training): re-fits the thread count
    to the cores other processes leave free, at most once a second (ThreadGovernor). Does
    nothing when the count was fixed (--threads, OMP_NUM_THREADS) or never chosen here."""
    if _governor is not None:
        _governor.tick()


class ThreadGovernor:
    """Keeps torch's thread count at the number of cores other processes leave free.

    A machine that becomes busy after a script started meets the threads chosen for an
    idle one, and each parallel region then waits for the thread that shares its core
    with the other process (bench/RESULTS.md: 3x slower generation). Every `interval`
    seconds `tick` reads /proc/stat and this process's CPU time, without sleeping: the
    cores in use minus this process's own use is what the others hold. Fewer threads are
    set at once; more only when two readings in a row agree, so that a short burst of
    another process does not make the count swing. torch.set_num_threads acts on the
    calling thread's OpenMP team, so `tick` runs in the loop's own thread.
    """

    def __init__(self, max_threads: int, interval: float = 1.0):
        self.max_threads = max_threads
        self.interval = interval
        self.changes: list[tuple[float, int]] = []      # (time.monotonic(), threads) set
        self.started = time.monotonic()
        self._raise_votes = 0
        self._last = self._reading()
        self._next = time.monotonic() + interval

    @staticmethod
    def _reading():
        """(monotonic seconds, busy and total jiffies of all CPUs, this process's CPU
        seconds), or None where /proc/stat is unreadable."""
        try:
            busy, total = _proc_stat_busy_total()
        except (OSError, ValueError, IndexError):
            return None
        return time.monotonic(), busy, total, time.process_time()

    def wanted(self, others: float) -> int:
        """Threads for a machine where other processes hold `others` cores."""
        return threads_for(_free_of(others), self.max_threads)

    def tick(self) -> None:
        if self._last is None or time.monotonic() < self._next:
            return
        now = self._reading()
        if now is None:
            self._last = None
            return
        (t0, *stat0, own0), (t1, *stat1, own1) = self._last, now
        self._last, self._next = now, t1 + self.interval
        used = _cores_in_use(stat0, stat1)
        if used is None or t1 <= t0:
            return
        self.set(self.wanted(max(0.0, used - (own1 - own0) / (t1 - t0))))

    def set(self, threads: int) -> None:
        current = torch.get_num_threads()
        if threads > current:
            self._raise_votes += 1
            if self._raise_votes < 2:
                return
        self._raise_votes = 0
        if threads != current:
            torch.set_num_threads(threads)
            self.changes.append((time.monotonic(), threads))


def _proc_stat_busy_total() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs since boot (/proc/stat's first line)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)      # idle + iowait
    total = sum(values[:8])                                       # guest is in user
    return total - idle, total


def _cores_in_use(stat0, stat1) -> float | None:
    """Cores busy between two (busy, total) readings of /proc/stat (None if no time passed)."""
    (busy0, total0), (busy1, total1) = stat0, stat1
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0)


def _free_of(others: float) -> float:
    """Cores of this process's CPU set left free when other processes hold `others` cores
    of the machine."""
    return max(0.0, min(float(_allowed_cores()), (os.cpu_count() or 1) - others))


def _allowed_cores() -> int:
    cores = os.cpu_count() or 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores


def threads_for(free: float, max_threads: int) -> int:
    """One thread per free core, at least 1, at most `max_threads`."""
    return max(1, min(max_threads, round(free)))


def free_cores(seconds: float = 0.2) -> float | None:
    """Cores of this process's CPU set that nobody used during `seconds` (from /proc/stat;
    this process sleeps meanwhile). None where /proc/stat is unreadable."""
    try:
        stat0 = _proc_stat_busy_total()
        time.sleep(seconds)
        stat1 = _proc_stat_busy_total()
    except (OSError, ValueError, IndexError):
        return None
    used = _cores_in_use(stat0, stat1)
    return None if used is None else _free_of(used)


def default_wait() -> str:
    return ", ".join(f"{k}={v}" for k, v in DEFAULT_WAIT.items())


def wait_policy() -> str:
    """How OpenMP threads wait in this process, as the environment set it at torch's load."""
    if TORCH_LOADED_FIRST and not USER_SET_WAIT_POLICY:
        return "OpenMP default (torch was imported before run.cli)"
    settings = [f"{name}={os.environ[name]}" for name in WAIT_POLICY_ENV if name in os.environ]
    return ", ".join(settings) or "OpenMP default"


def _reexec_for_wait_policy(threads: int) -> None:
    """torch was imported before this module set the waiting policy, so libgomp spins:
    start the same command again with the policy in its environment (once; the new
    process finds it set). One thread never waits, so then nothing is done."""
    if not TORCH_LOADED_FIRST or USER_SET_WAIT_POLICY or threads <= 1:
        return
    if not getattr(sys, "orig_argv", None) or torch.cuda.is_initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a script's main(): CPU threads and OpenMP waiting as `apply_thread_policy` and
    this module's import set them; user errors become one line on stderr and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        threads = apply_thread_policy(threads_from_argv(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if argv is None:
        _reexec_for_wait_policy(threads)
    try:
        code = main(args)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
