"""Wall time of prepare_data.py on all 1,078 EMOPIA clips, with 2 workers and with 1.

The clips come from ../shared/data/emopia/midis.zip (development data, not part of the
project), extracted to a temporary folder. Each run is `python prepare_data.py` in a fresh
process, timed from start to exit as a user sees it; the two settings take turns for
--repeat rounds (default 3) and each figure is the median, printed with its spread, the
CPU and the load. The last line printed is

    sec_workers2=... sec_workers1=... speedup=... machine="..."

Usage: python bench/bench_prepare.py [--repeat 3]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, load, median_spread  # noqa: E402

ZIP = ROOT.parent / "shared" / "data" / "emopia" / "midis.zip"
N_CLIPS = 1078


def prepare(midi_dir: Path, out_dir: Path, workers: int) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "prepare_data.py"), "--midi_dir", str(midi_dir), "--out_dir", str(out_dir),
         "--name", "emopia", "--workers", str(workers)],
        capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0 or f"wrote {N_CLIPS} clips" not in result.stdout:
        sys.exit(f"prepare_data.py --workers {workers} failed (exit {result.returncode}):\n"
                 f"{result.stdout}{result.stderr}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per setting (median)")
    args = parser.parse_args()
    where = f"{cpu_model()}, {os.cpu_count()} CPUs"
    print(f"{where}; load average {load()} at start")
    if not ZIP.is_file():
        print(f"skipped: {ZIP} is absent (the EMOPIA development data from ../shared is needed)")
        print(f'sec_workers2=nan sec_workers1=nan speedup=nan machine="{where}"')
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(ZIP) as zf:
            zf.extractall(tmp)
        midi_dir = tmp / "midis"
        times = {2: [], 1: []}
        for _ in range(max(1, args.repeat)):
            for workers in (2, 1):
                seconds = prepare(midi_dir, tmp / f"out{workers}", workers)
                times[workers].append(seconds)
                print(f"workers={workers}: {seconds:.2f} s for {N_CLIPS} clips")
        same = all((tmp / "out1" / name).read_bytes() == (tmp / "out2" / name).read_bytes()
                   for name in ("dictionary.pkl",))
        print(f"identical dictionaries with 1 and 2 workers: {same}")
    for workers, values in times.items():
        print(f"--workers {workers}: {median_spread(values)} s")
    print(f"load average {load()} at end")
    median2, median1 = statistics.median(times[2]), statistics.median(times[1])
    print(f"sec_workers2={median2:.2f} sec_workers1={median1:.2f} speedup={median1 / median2:.2f} "
          f'machine="{where}, load {load()}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
