"""A folder of MIDI clips -> an EMOPIA-format compound-word dataset (what prepare_data.py runs).

Per clip: its emotion label (file-name prefix, a labels CSV, or none), optionally its beat
synchronisation (music.beats, music.sync), then the EMOPIA pipeline (music.cp) in worker
processes. Then the corpus: the dictionary (built from every clip's values, EMOPIA's way, or
given), the compiled 1024-row windows, and the rows of each quadrant; written atomically.
A clip that cannot be used is reported and skipped; the others are written.
"""
from __future__ import annotations

import csv
import multiprocessing
import sys
import time
import traceback
from collections import Counter
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from music import cp
from music.atomic import atomic_write
from music.beats import (MIN_BEATS, BeatCache, Beats, ShippedBeats, content_hash, find_beats, tracker_versions,
                         write_beat_table)
from music.elements import FIELDS, QUADRANTS, parse_quadrant, quadrant_of_name
from music.errors import UserError
from music.midi_io import ClipError, load_midi, read_piano_part
from music.sync import synchronise

MIDI_SUFFIXES = {".mid", ".midi"}


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
def find_midi_files(midi_dir: Path):
    """(sorted MIDI paths, number of other files ignored) under `midi_dir`."""
    if not midi_dir.exists():
        raise UserError(f"{midi_dir}: folder not found")
    if not midi_dir.is_dir():
        raise UserError(f"{midi_dir}: not a folder")
    midi, other = [], 0
    for path in sorted(midi_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() in MIDI_SUFFIXES:
            midi.append(path)
        else:
            other += 1
    if not midi:
        raise UserError(f"{midi_dir}: no .mid/.midi files")
    return midi, other


def read_labels(path: Path) -> dict:
    """{file name or stem: quadrant} from a `fname,label` CSV (header optional)."""
    if not path.is_file():
        raise UserError(f"{path}: labels file not found")
    labels = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < 2:
                raise UserError(f"{path}: line {line_no}: expected 'fname,label', got {','.join(row)!r}")
            fname, label = row[0].strip(), row[1].strip()
            quadrant = parse_quadrant(label)
            if quadrant is None:
                if line_no == 1:      # a header row
                    continue
                labels[fname] = label  # kept, reported for the clip it names
                continue
            labels[fname] = quadrant
    return labels


def label_of(path: Path, name: str, labels, unlabeled: bool, labels_path):
    """Quadrant 1..4 (0 when unlabeled) of clip `name`, or a ClipError saying why not."""
    if unlabeled:
        return 0
    if labels is not None:
        for key in (name, Path(name).name, Path(name).stem):
            if key in labels:
                label = labels[key]
                if isinstance(label, int):
                    return label
                raise ClipError(f"{path}: unknown label {label!r} in {labels_path} (expected Q1..Q4)",
                                "unknown label")
        raise ClipError(f"{path}: no label in {labels_path}", "unknown label")
    quadrant = quadrant_of_name(name)
    if quadrant is None:
        raise ClipError(f"{path}: unknown label: the file name does not start with Q1_..Q4_ "
                        f"(use --labels CSV or --unlabeled)", "unknown label")
    return quadrant


# ---------------------------------------------------------------------------------------
# Encoding one clip (runs in worker processes)
# ---------------------------------------------------------------------------------------
@dataclass
class ClipResult:
    name: str
    emotion: int
    words: np.ndarray = None    # [<=1022, 8] int64: dictionary indices, or local codes (below)
    local_values: list = None   # per field, the piece's own values; `words` index into them
    warnings: list = field(default_factory=list)
    error: str = None           # why the clip is skipped (one line naming the file)
    reason: str = None          # short category of `error`, for the summary


def local_words(events, keep: int):
    """(per-field value lists of all `events`, int codes [<=keep, 8] of the first `keep`).

    Workers send these compact codes instead of event tuples; once the dictionary is built
    from every piece's values, `to_dictionary_words` turns them into dictionary indices.
    """
    values, codes = [], np.empty((min(len(events), keep), len(FIELDS)), dtype=np.int32)
    for k in range(len(FIELDS)):
        index = {}
        column = [index.setdefault(event[k], len(index)) for event in events]
        values.append(list(index))
        codes[:, k] = column[:keep]
    return values, codes


def to_dictionary_words(local_values, codes, event2word) -> np.ndarray:
    """Dictionary indices [<=1022, 8] of a piece sent as `local_words` codes."""
    words = np.empty(codes.shape, dtype=np.int64)
    for k, name in enumerate(FIELDS):
        table = np.array([event2word[name][v] for v in local_values[k]], dtype=np.int64)
        words[:, k] = table[codes[:, k]]
    return words


_event2word = None   # the given dictionary, set once per worker


def _init_worker(event2word):
    global _event2word
    _event2word = event2word


@dataclass(frozen=True)
class ClipJob:
    """One clip to encode: its file, its name in the dataset, its label, and its beats when
    it is to be synchronised first."""
    path: Path
    name: str
    emotion: int
    beats: Beats | None = None
    debug: bool = False


def encode_clip(job: ClipJob):
    """Encode one clip (synchronised to `beats` when given); never raises (a failure is
    reported in the result)."""
    path, name, emotion, beats, debug = job.path, job.name, job.emotion, job.beats, job.debug
    result = ClipResult(name, emotion)
    try:
        source = path if beats is None else synchronise(load_midi(path), beats, str(path))
        if _event2word is not None:
            # Only the words that will be kept are needed: stop after them.
            piece = cp.encode_midi(source, emotion, max_events=cp.MAX_WORDS, name=str(path))
            result.words = cp.events_to_words(piece.events, _event2word, str(path))
        else:
            # EMOPIA builds its dictionary from whole pieces, so encode the whole piece.
            piece = cp.encode_midi(source, emotion, name=str(path))
            result.local_values, result.words = local_words(piece.events, cp.MAX_WORDS)
        result.warnings = piece.warnings
    except UserError as exc:
        result.error, result.reason = str(exc), getattr(exc, "reason", "unusable")
    except Exception as exc:  # a bug or an exotic file: report it, keep the other clips
        detail = traceback.format_exc() if debug else f"{type(exc).__name__}: {exc}"
        result.error, result.reason = f"{path}: unexpected error while encoding ({detail})", "unexpected error"
    return result


def encode_all(jobs, workers: int, event2word):
    """Results in job order, with a progress bar; `workers` processes when > 1."""
    bar = tqdm(total=len(jobs), unit="clip", desc="encoding", disable=None, file=sys.stderr)
    try:
        if workers <= 1 or len(jobs) <= 1:
            _init_worker(event2word)
            try:
                for job in jobs:
                    yield encode_clip(job)
                    bar.update()
            finally:
                _init_worker(None)
            return
        chunk = max(1, min(16, len(jobs) // (workers * 8)))
        with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(event2word,)) as pool:
            for result in pool.imap(encode_clip, jobs, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()


def add_beats(jobs, cache_dir: Path, workers: int, skipped: list, table_path=None) -> list:
    """The jobs whose clips have usable beats, each with its Beats; the others go to `skipped`.

    Beats come from the shipped table, then the cache folder, then the tracker (which needs
    madmom; without it, one UserError before anything is written)."""
    keys = []
    for job in jobs:
        try:
            keys.append(content_hash(job.path.read_bytes()))
        except OSError as exc:
            keys.append(None)
            skipped.append((f"{job.path}: cannot read ({exc.strerror or exc})", "unreadable MIDI"))
    shipped, cache = ShippedBeats(), BeatCache(cache_dir)
    missing = 0
    for i, (key, job) in enumerate(zip(keys, jobs)):
        if key is None or shipped.get(key) is not None or cache.get(key) is not None:
            continue
        # A clip that cannot be encoded is reported for what is wrong with it, not tracked.
        try:
            read_piano_part(load_midi(job.path))
            missing += 1
        except ClipError as exc:
            keys[i] = None
            skipped.append((str(exc), exc.reason))
    readable = [(key, job.path) for key, job in zip(keys, jobs) if key is not None]
    bar = tqdm(total=missing, unit="clip", desc="tracking beats", disable=None if missing else True,
               file=sys.stderr)
    try:
        found, failed = find_beats(readable, cache, shipped, workers=min(workers, max(missing, 1)),
                                   progress=bar.update)
    finally:
        bar.close()
    if missing:
        print(f"tracked the beats of {missing} clip(s) not in {shipped.path.name}; cached in {cache_dir}")
    if table_path is not None:
        entries = {key: (job.name, found[key]) for key, job in zip(keys, jobs) if key in found}
        write_beat_table(table_path, entries, tracker_versions())
        print(f"beat table of {len(entries)} clip(s): {table_path}")
    kept = []
    for key, job in zip(keys, jobs):
        if key is None:
            continue
        beats = found.get(key)
        if beats is None:
            skipped.append((f"{job.path}: beat tracking failed ({failed[key]})", "beat tracking failed"))
        elif len(beats) < MIN_BEATS:
            skipped.append((f"{job.path}: beat tracking found {len(beats)} beat(s) "
                            f"(at least {MIN_BEATS} needed)", "too few beats"))
        else:
            kept.append(dataclasses.replace(job, beats=beats))
    return kept


# ---------------------------------------------------------------------------------------
# The run: inputs -> encoded clips -> dictionary -> the three output files
# ---------------------------------------------------------------------------------------
def prepare_corpus(midi_dir, out_dir, name: str = "emopia", dictionary=None, labels=None, unlabeled: bool = False,
                   sync: str = "beats", beat_cache=None, write_beat_table_to=None, workers: int = 1,
                   debug: bool = False) -> None:
    """Encode every MIDI file under `midi_dir` and write the three dataset files to `out_dir`.

    dictionary: reuse this dictionary.pkl instead of building one; labels: a `fname,label`
    CSV instead of Q1_..Q4_ file-name prefixes; unlabeled: emotion 0 for every clip;
    sync: 'beats' (rewrite each clip on its tracked beats first) or 'none'; beat_cache: the
    folder of tracked beats (default out_dir/beats); write_beat_table_to: also write the
    beats of every clip as a table like data/emopia_beats.npz. Prints what it did; raises
    UserError when the input is unusable or no clip could be encoded.
    """
    if sync not in ("beats", "none"):
        raise ValueError(f"sync must be 'beats' or 'none', not {sync!r}")
    start = time.perf_counter()
    midi_dir, out_dir = Path(midi_dir), Path(out_dir)
    paths, n_other = find_midi_files(midi_dir)
    label_table = read_labels(Path(labels)) if labels else None
    event2word = word2event = None
    if dictionary:
        event2word, word2event = cp.load_dictionary(dictionary)

    skipped = []       # (message, reason)
    jobs = []
    for path in paths:
        clip = path.relative_to(midi_dir).as_posix()
        try:
            emotion = label_of(path, clip, label_table, unlabeled, labels)
        except ClipError as exc:
            skipped.append((str(exc), exc.reason))
            continue
        jobs.append(ClipJob(path, clip, emotion, debug=debug))
    if n_other:
        print(f"ignored {n_other} file(s) in {midi_dir} without a .mid/.midi extension")
    if sync == "beats":
        cache = Path(beat_cache) if beat_cache else out_dir / "beats"
        jobs = add_beats(jobs, cache, workers, skipped, write_beat_table_to)

    results = []
    for result in encode_all(jobs, min(workers, max(len(jobs), 1)), event2word):
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if result.error:
            skipped.append((result.error, result.reason))
        else:
            results.append(result)
    for message, _ in skipped:
        print(f"skipped: {message}", file=sys.stderr)
    reasons = Counter(reason for _, reason in skipped)
    why = "; ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    if not results:
        raise UserError(f"{midi_dir}: no clip could be encoded ({len(skipped)} skipped: {why})")

    if event2word is None:
        values = {name: set() for name in FIELDS}
        # Every emotion label gets an entry, even one absent from this corpus, so that the
        # emotion index always equals the quadrant (EMOPIA's corpus holds all of them anyway).
        values["emotion"].update(cp.EMOTIONS)
        for result in results:
            for field_name, piece_values in zip(FIELDS, result.local_values):
                values[field_name].update(piece_values)
        event2word, word2event = cp.build_dictionary(values)
        for result in results:
            result.words = to_dictionary_words(result.local_values, result.words, event2word)

    names = [r.name for r in results]
    arrays, order = cp.compile_dataset(names, [r.words for r in results], cp.eos_word(event2word))
    emotions = np.array([results[i].emotion for i in order], dtype=np.int64)
    class_idx = {f"cls_{q}_idx": np.flatnonzero(emotions == q).astype(np.int64) for q in QUADRANTS}

    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / f"{name}_data.npz"
    idx_path = out_dir / f"{name}_idx.npz"
    dict_path = out_dir / "dictionary.pkl"
    atomic_write(data_path, lambda f: np.savez(f, **arrays))
    given = Path(dictionary) if dictionary else None
    if given is None:
        cp.save_dictionary(dict_path, event2word, word2event)
    elif not (dict_path.exists() and dict_path.resolve() == given.resolve()):
        payload = given.read_bytes()
        atomic_write(dict_path, lambda f: f.write(payload))
    atomic_write(idx_path, lambda f: np.savez(f, **class_idx))

    per_class = ", ".join(f"Q{q} {len(class_idx[f'cls_{q}_idx'])}" for q in QUADRANTS)
    print(f"wrote {len(results)} clips to {data_path} ({per_class}; "
          f"{int((arrays['seq_len'] >= cp.MAX_WORDS - 1).sum())} at the {cp.MAX_WORDS}-word limit)")
    print(f"dictionary {'copied from ' + str(given) if given else 'built'}: {dict_path} "
          f"(sizes {', '.join(f'{n} {s}' for n, s in zip(FIELDS, cp.vocab_sizes(event2word)))})")
    print(f"class indices: {idx_path}")
    print(f"timing: {'synchronised to tracked beats' if sync == 'beats' else 'as given (no beat synchronisation)'}")
    print(f"skipped {len(skipped)} clip(s){': ' + why if skipped else ''}")
    print(f"done in {time.perf_counter() - start:.1f} s with {workers} worker(s)")
