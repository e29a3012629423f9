"""CPU threads of the scripts: how many torch runs, and how waiting OpenMP threads wait.

`apply_thread_policy`, called at the start of every script's main (run.cli.run_main), sets
torch's thread count: --threads, else OMP_NUM_THREADS (which torch already follows), else
one thread per core that other processes leave free. In that last case `adapt_threads`,
called at every step of a long loop, keeps the count following the machine
(ThreadGovernor). Importing this module changes neither the environment nor the process.

How waiting OpenMP threads wait is the launcher's to set (the Makefile exports a short
spin, RECOMMENDED_WAIT, so that a waiting thread soon yields a core another process
needs), because libgomp reads it only once, when torch loads, and setting it from here
would mean changing the environment on import or restarting the process, which gives
import order a meaning nobody can see. `wait_policy` reports what a process runs with.
"""
from __future__ import annotations

import os
import time

import torch

from music.errors import UserError

# What the Makefile exports (`export GOMP_SPINCOUNT ?= 30000`) and the --threads help
# suggests to users who launch scripts directly; bench/RESULTS.md compares the spins.
RECOMMENDED_WAIT = {"GOMP_SPINCOUNT": "30000"}
WAIT_POLICY_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
MAX_THREADS = torch.get_num_threads()       # torch's default: one per physical core
_governor: "ThreadGovernor | None" = None


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
    Returns the number in use. How waiting threads wait is the launcher's (see above)."""
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
    with the other process (bench/RESULTS.md measures the cost). Every `interval`
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


def recommended_wait() -> str:
    return ", ".join(f"{k}={v}" for k, v in RECOMMENDED_WAIT.items())


def wait_policy() -> str:
    """How OpenMP threads wait in this process, as its environment says (libgomp read it
    when torch loaded)."""
    settings = [f"{name}={os.environ[name]}" for name in WAIT_POLICY_ENV if name in os.environ]
    return ", ".join(settings) or "OpenMP default"


def with_recommended_wait(env) -> dict:
    """The environment `env` for a child process, with RECOMMENDED_WAIT added unless it
    already says how OpenMP threads wait (for launchers of scripts: run.study)."""
    if any(name in env for name in WAIT_POLICY_ENV):
        return dict(env)
    return {**env, **RECOMMENDED_WAIT}
