"""What the benchmarks share: the EMOPIA release's vocabulary, for paper-scale models, and
the description of the machine and its load that every figure is reported with.

The benchmarks take their threads from the scripts' policy (run/threads.py) and OpenMP's
waiting from the environment, as the scripts do: launch them with the Makefile's
GOMP_SPINCOUNT to measure what `make` users get; `machine` names the policy in effect.
"""
import os
import statistics
import time

import run.threads
from music.elements import EVENT_TYPES, per_field

# Field vocabulary sizes of EMOPIA's compound-word release and its type indices.
EMOPIA_VOCAB = per_field({"tempo": 56, "chord": 135, "bar-beat": 18, "type": 4, "pitch": 87,
                          "duration": 18, "velocity": 42, "emotion": 5})
TYPE_IDS = {name: k for k, name in enumerate(EVENT_TYPES)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine(device, threads: int) -> str:
    """One line naming what was measured: CPU (or GPU), cores, threads, OpenMP waiting."""
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_name(device)
    followed = ", following free cores" if run.threads._governor is not None else ""
    return (f"{cpu_model()}, {os.cpu_count()} CPUs, {threads} thread(s) at start{followed}, "
            f"{run.threads.wait_policy()}")


def thread_changes() -> str:
    """The thread counts the scripts' policy set while the benchmark ran (run.threads.adapt_threads),
    as 'thread count changes: 1 at 4.1 s, ...' (seconds since the policy was applied)."""
    governor = run.threads._governor
    if governor is None:
        return "thread count changes: none (fixed count)"
    changes = ", ".join(f"{threads} at {t - governor.started:.1f} s" for t, threads in governor.changes)
    return f"thread count changes: {changes or 'none'}"


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def median_spread(values) -> str:
    """'median (min-max, n runs)' of a list of seconds."""
    return (f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}, "
            f"{len(values)} runs)")


def alternating(fns: dict, rounds: int, calls: dict | None = None, sync=lambda: None) -> dict:
    """Time the callables `fns` (name -> fn) in turn, `rounds` rounds after one warm-up
    call each, so that every variant meets the same state of a shared machine: name ->
    seconds per call, one figure per round (the mean of `calls[name]` calls, default 1,
    for functions too quick to time alone). `sync` waits for a GPU."""
    calls = calls or {}
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = calls.get(name, 1)
            sync()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / n)
    return times
