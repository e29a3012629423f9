"""The figures the scripts draw most often: a t-SNE figure of VQ_explore.py (six panels, eight
per model) and a piano roll of generate.py (one per piece), in CPU seconds per figure.

Each checkout given is timed in its own process, in turn, --rounds times (so the checkouts
alternate and share the machine's state): pass two checkouts to compare them side by side,
e.g. the tree and a worktree of an earlier commit. Prints the machine, the load, and per
checkout the median over rounds, the spread and the ratio to the first checkout.

Usage: python bench/bench_figures.py [CHECKOUT ...] [--rounds 5] [--figures 4]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, load  # noqa: E402

# Run inside each checkout: times `figures` figures of each kind after one to warm up.
TIMER = """
import json, sys, time
import numpy as np
from evaluation.plotting import plot_piano_roll, plot_tsne_pairs
figures, folder = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
points, labels = rng.normal(size=(150, 2)), rng.integers(1, 5, 150)   # a held-out set's size
starts = np.sort(rng.integers(0, 480 * 4 * 16, 300))                   # 300 notes over 16 bars
notes = np.stack([rng.integers(40, 90, 300), starts, starts + rng.integers(60, 960, 300),
                  rng.integers(30, 110, 300)], axis=1)
kinds = {"t-SNE figure": lambda i: plot_tsne_pairs(points, labels, "bench", f"{folder}/tsne_{i}.png"),
         "piano roll": lambda i: plot_piano_roll(notes, f"{folder}/roll_{i}.png")}
out = {}
for name, draw in kinds.items():
    draw(-1)
    began = time.process_time()
    for i in range(figures):
        draw(i)
    out[name] = (time.process_time() - began) / figures
print(json.dumps(out))
"""


def time_checkout(checkout: Path, figures: int, folder: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", TIMER, str(figures), str(folder)], cwd=checkout,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--figures", type=int, default=4, help="figures of each kind per round")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_figures"))
    args = parser.parse_args()
    print(f"{cpu_model()}; load {load()} at start")
    seconds = {c: {} for c in args.checkouts}
    for _ in range(args.rounds):
        for i, checkout in enumerate(args.checkouts):
            folder = args.work / str(i)
            folder.mkdir(parents=True, exist_ok=True)
            for kind, value in time_checkout(checkout.resolve(), args.figures, folder).items():
                seconds[checkout].setdefault(kind, []).append(value)
    first = args.checkouts[0]
    print("| checkout | figure | CPU s per figure: median (min-max) | ratio to the first |")
    print("|---|---|---|---|")
    for checkout, kinds in seconds.items():
        for kind, values in kinds.items():
            ratio = statistics.median(values) / statistics.median(seconds[first][kind])
            print(f"| {checkout} | {kind} | {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}) "
                  f"| {ratio:.2f} |")
    print(f"load {load()} at the end; {args.rounds} rounds of {args.figures} figures each; "
          f'machine="{cpu_model()}, {os.cpu_count()} CPUs, 1 process at a time"')


if __name__ == "__main__":
    main()
