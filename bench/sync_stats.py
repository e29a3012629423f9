"""What beat synchronisation does to EMOPIA: rhythm on the grid, tempo per quadrant, tokens, time.

For every clip of a MIDI folder (default: ../shared's EMOPIA zip, extracted to a temporary
folder), with its beats from the shipped table (data/emopia_beats.npz):
- the share of note onsets within 10% of a sixteenth of the grid, as given (the nominal
  120 BPM grid) and after synchronisation (the beat grid); random onsets score 0.20;
- each clip's tempo, the median of 60 / beat interval over its tracked beats, per quadrant,
  and the difference between high-arousal (Q1, Q2) and low-arousal (Q3, Q4) clips with a
  bootstrap interval over clips and a Mann-Whitney U test; clips over 180 BPM are counted
  (the tracker may have doubled their tempo);
- the distinct tempo and bar-beat tokens of the dictionaries `prepare_data.py` builds with
  `--sync beats` and `--sync none`;
- the wall time of `prepare_data.py --workers 2` both ways (fresh processes, taking turns,
  median of --repeat), and with --track N, the wall time of tracking N clips spread over
  the corpus with 2 worker processes and an empty cache (what a clip outside the shipped
  table costs).
Writes the figures as JSON (--out, default data/emopia_sync_stats.json) and a PNG of the
tempo distributions beside it; data/README.md quotes them.

Usage: python bench/sync_stats.py [--midi_dir DIR] [--repeat 3] [--track 60]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, load  # noqa: E402
from music.atomic import write_text  # noqa: E402
from music.beats import BeatCache, ShippedBeats, content_hash, find_beats  # noqa: E402
from music.cp import load_dictionary  # noqa: E402
from music.elements import HIGH_AROUSAL, QUADRANT_NAMES, QUADRANTS  # noqa: E402
from music.midi_io import load_midi  # noqa: E402
from music.sync import synchronise  # noqa: E402

ZIP = ROOT.parent / "shared" / "data" / "emopia" / "midis.zip"
TOLERANCE = 0.10            # of a sixteenth


def on_grid_share(starts, ticks_per_beat: int) -> float:
    """Share of onsets within TOLERANCE of a sixteenth-note grid line."""
    sixteenth = ticks_per_beat / 4
    phase = np.asarray(starts, dtype=np.float64) % sixteenth
    distance = np.minimum(phase, sixteenth - phase)
    return float(np.mean(distance <= TOLERANCE * sixteenth))


def clip_tempo(beats) -> float:
    """Median of 60 / interval over the tracked beats (the lead-in from time 0 left out)."""
    return float(np.median(60.0 / np.diff(beats.times)))


def bootstrap_difference(a, b, rng, n=10000):
    a, b = np.asarray(a), np.asarray(b)
    draws = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(n)]
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def prepare(midi_dir, out_dir, sync) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--midi_dir", str(midi_dir),
                             "--out_dir", str(out_dir), "--workers", "2", "--sync", sync],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"prepare_data.py --sync {sync} failed:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - start


def token_counts(dictionary_path) -> dict:
    event2word, _ = load_dictionary(dictionary_path)
    return {"tempo": len(event2word["tempo"]), "bar-beat": len(event2word["bar-beat"]),
            "tempo_tokens": len([v for v in event2word["tempo"] if str(v).startswith("Tempo_")])}


def plot(tempos_per_quadrant, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.violinplot([tempos_per_quadrant[q] for q in QUADRANTS], showmedians=True)
    ax.set_xticks(range(1, len(QUADRANTS) + 1), QUADRANT_NAMES)
    ax.set_ylabel("clip tempo (BPM, median of beats)")
    ax.set_title("EMOPIA tempo per quadrant after beat tracking")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def time_tracking(paths, n: int) -> dict:
    """Track n clips spread over `paths` with 2 workers and an empty cache; wall seconds."""
    chosen = paths[:: max(1, len(paths) // n)][:n]
    clips = [(content_hash(p.read_bytes()), p) for p in chosen]
    with tempfile.TemporaryDirectory(prefix="sync_stats_cache_") as tmp:
        start = time.perf_counter()
        found, failed = find_beats(clips, BeatCache(tmp), shipped=None, workers=2)
        seconds = time.perf_counter() - start
    audio = sum(float(load_midi(p).get_tick_to_time_mapping()[-1]) for p in chosen)
    return {"clips": len(chosen), "seconds": seconds, "seconds_per_clip": seconds / len(chosen),
            "audio_seconds": audio, "failed": len(failed), "workers": 2}


def measure(midi_dir: Path, repeat: int, out: Path, track: int = 0):
    load_at_start = load()
    table = ShippedBeats()
    paths = sorted(midi_dir.glob("*.mid"))
    before, after, tempos, missing = [], [], {q: [] for q in QUADRANTS}, []
    for path in paths:
        beats = table.get(content_hash(path.read_bytes()))
        if beats is None or len(beats) < 4:
            missing.append(path.name)
            continue
        midi = load_midi(path)
        starts = [n.start for n in midi.instruments[0].notes]
        before.append(on_grid_share(starts, midi.ticks_per_beat))
        synced = synchronise(midi, beats, str(path))
        after.append(on_grid_share([n.start for n in synced.instruments[0].notes], synced.ticks_per_beat))
        tempos[int(path.name[1])].append(clip_tempo(beats))
    rng = np.random.default_rng(0)
    high = [t for q in HIGH_AROUSAL for t in tempos[q]]
    low = [t for q in QUADRANTS if q not in HIGH_AROUSAL for t in tempos[q]]
    from scipy.stats import mannwhitneyu
    stats = {
        "clips": len(paths), "clips_without_usable_beats": missing,
        "onsets_on_sixteenth_grid": {"as_given": float(np.mean(before)), "synchronised": float(np.mean(after)),
                                     "random": 2 * TOLERANCE, "tolerance_of_a_sixteenth": TOLERANCE},
        "tempo_per_quadrant": {f"Q{q}": {"clips": len(t), "mean": float(np.mean(t)), "std": float(np.std(t)),
                                         "median": float(np.median(t)),
                                         "q25": float(np.percentile(t, 25)), "q75": float(np.percentile(t, 75)),
                                         "over_180_bpm": int(np.sum(np.asarray(t) > 180))}
                               for q, t in tempos.items()},
        "high_minus_low_arousal_tempo": {
            "mean_difference": float(np.mean(high) - np.mean(low)),
            "bootstrap_95": bootstrap_difference(high, low, rng),
            "mann_whitney_p": float(mannwhitneyu(high, low, alternative="two-sided").pvalue)},
    }
    timings = {"beats": [], "none": []}
    with tempfile.TemporaryDirectory(prefix="sync_stats_") as tmp:
        for round_ in range(repeat):
            for sync in ("beats", "none"):
                timings[sync].append(prepare(midi_dir, Path(tmp) / f"{sync}{round_}", sync))
        stats["tokens"] = {sync: token_counts(Path(tmp) / f"{sync}0" / "dictionary.pkl") for sync in ("beats", "none")}
    stats["prepare_seconds_2_workers"] = {
        sync: {"median": statistics.median(t), "min": min(t), "max": max(t), "runs": len(t)}
        for sync, t in timings.items()}
    if track:
        stats["tracking"] = time_tracking(paths, track)
    stats["machine"] = f"{cpu_model()}, {os.cpu_count()} CPUs"
    stats["load_at_start"] = load_at_start
    stats["load_at_end"] = load()
    write_text(out, json.dumps(stats, indent=1) + "\n")
    plot(tempos, out.with_suffix(".png"))
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--midi_dir", default=None, help="folder of Q*_*.mid clips (default: ../shared's EMOPIA)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--track", type=int, default=0, help="also time tracking this many clips (needs madmom)")
    parser.add_argument("--out", default=str(ROOT / "data" / "emopia_sync_stats.json"))
    args = parser.parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; load average {load()} at start")
    if args.midi_dir:
        stats = measure(Path(args.midi_dir), args.repeat, Path(args.out), args.track)
    else:
        if not ZIP.is_file():
            print(f"skipped: {ZIP} is absent (give --midi_dir)")
            return 0
        with tempfile.TemporaryDirectory(prefix="sync_stats_midi_") as tmp:
            with zipfile.ZipFile(ZIP) as zf:
                zf.extractall(tmp)
            stats = measure(Path(tmp) / "midis", args.repeat, Path(args.out), args.track)
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
