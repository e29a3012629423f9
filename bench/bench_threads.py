"""Thread settings on an idle and on a busy CPU: generation and a training step under the
scripts' default (run/threads.py, with the Makefile's GOMP_SPINCOUNT) and the alternatives,
to check that the default never collapses when another process keeps a core busy and costs
little when none does.

For each condition (idle; busy = one more process spinning `while True: pass`, started
before the benchmark and ended after it; later = the same process started only once the
benchmark has chosen its threads, i.e. a machine that becomes busy while a script runs),
--rounds rounds run every setting once in turn (so the settings
alternate and share the machine's state), each as its own process:
- generation: bench_generate.py --steps --gen_steps, float32, batch 1, one piece after
  3 s of warm-up pieces (ms per step = prior + decoder);
- training: bench_train.py, paper configuration, batch 1 x 1024, one timed step.
Settings: the default (run/threads.py: one thread per core left free at start, then
following the free cores while it runs; GOMP_SPINCOUNT=30000, as the Makefile exports), and
2 threads fixed: sleeping at once (OMP_WAIT_POLICY=PASSIVE), with OpenMP's own long spin
(GOMP_SPINCOUNT=300000, libgomp's default: what the scripts ran with before 2026-12-03),
with GOMP_SPINCOUNT=10000 or with the default's 30000; and 1 thread. --settings picks. Prints a Markdown table: median of
the rounds, spread, the ratio to the best setting of that condition, the load.

Usage: python bench/bench_threads.py [--rounds 3] [--gen_steps 128] [--conditions idle,busy,later]
                                     [--workloads generation,training]
                                     [--settings default,passive,spin,short,fixed,one]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model  # noqa: E402
from run.threads import RECOMMENDED_WAIT  # noqa: E402

SETTINGS = {
    "default": ("default (run/threads.py): free cores, followed; GOMP_SPINCOUNT=30000",
                RECOMMENDED_WAIT, []),
    "passive": ("2 threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"},
                ["--threads", "2"]),
    "spin": ("2 threads, long spin (GOMP_SPINCOUNT=300000, libgomp's default)",
             {"GOMP_SPINCOUNT": "300000"}, ["--threads", "2"]),
    "short": ("2 threads, shorter spin (GOMP_SPINCOUNT=10000, the default until 2026-12-03)",
              {"GOMP_SPINCOUNT": "10000"}, ["--threads", "2"]),
    "fixed": ("2 threads, the default's spin (GOMP_SPINCOUNT=30000), no following",
              {"GOMP_SPINCOUNT": "30000"}, ["--threads", "2"]),
    "one": ("1 thread", {}, ["--threads", "1"]),
}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
              "KMP_BLOCKTIME")


def run_once(workload, env_extra, flags, gen_steps, timeout, busy_later=False):
    """One benchmark process; its figure (ms per generation step, or s per training step).
    busy_later: the spinning process starts once the benchmark has chosen its threads
    (its first output line) and ends with it."""
    if workload == "generation":
        cmd = ["bench/bench_generate.py", "--steps", str(gen_steps), "--dtypes", "float32",
               "--ratio_steps", "0", "--batch", "0", "--repeat", "1", "--warmup", "3"]
        key, scale = "sec_per_piece", 1e3 / gen_steps          # -> ms per step
    else:
        cmd = ["bench/bench_train.py", "--batch", "1", "--steps", "1", "--losses", "0",
               "--element_batching", "0"]
        key, scale = "sec_per_step", 1.0
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update(env_extra)
    child = subprocess.Popen([sys.executable, *cmd, *flags], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines = [child.stdout.readline()]
    busy = spinner() if busy_later else None
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return float("inf")
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    lines += out.splitlines()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}): {lines[-3:]}")
    changes = [line.split("; ", 1)[1] for line in lines if "thread count changes" in line]
    if changes:
        print("   ", changes[0].strip(), flush=True)
    return float(re.search(rf"{key}=([0-9.]+)", lines[-1]).group(1)) * scale


def spinner():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gen_steps", type=int, default=128)
    parser.add_argument("--conditions", default="idle,busy,later",
                        help="idle, busy (another process spins from before the start), later "
                             "(it starts once the benchmark has chosen its threads)")
    parser.add_argument("--workloads", default="generation,training")
    parser.add_argument("--settings", default="default,passive,spin,short,fixed,one",
                        help=f"comma-separated, of {','.join(SETTINGS)}")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run")
    args = parser.parse_args()
    settings = {SETTINGS[k][0]: SETTINGS[k][1:] for k in args.settings.split(",")}
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    for condition in args.conditions.split(","):
        busy = None
        if condition == "busy":
            busy = spinner()
            time.sleep(2)
        try:
            for workload in args.workloads.split(","):
                times = {name: [] for name in settings}
                loads = []
                for _ in range(args.rounds):
                    for name, (env_extra, flags) in settings.items():
                        times[name].append(run_once(workload, env_extra, flags, args.gen_steps,
                                                    args.timeout, condition == "later"))
                        loads.append(os.getloadavg()[0])
                        print(f"{condition} {workload} {name}: {times[name][-1]:.2f}", flush=True)
                best = min(statistics.median(t) for t in times.values())
                for name, t in times.items():
                    m = statistics.median(t)
                    rows.append((condition, workload, name, m, min(t), max(t), m / best,
                                 min(loads), max(loads)))
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    unit = {"generation": f"ms/step ({args.gen_steps}-step piece, batch 1)",
            "training": "s/step (batch 1 x 1024)"}
    print(f"\n| condition | workload | setting | median | spread | vs best | load |")
    print("|---|---|---|---|---|---|---|")
    for c, w, name, m, lo, hi, ratio, l0, l1 in rows:
        print(f"| {c} | {w}, {unit[w]} | {name} | {m:.2f} | {lo:.2f}-{hi:.2f} | {ratio:.2f}x | "
              f"{l0:.2f}-{l1:.2f} |")
    print(f"load average {os.getloadavg()[0]:.2f} at end; machine: {cpu_model()}, "
          f"{os.cpu_count()} CPUs, {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
