"""Step 0: encode a folder of MIDI files as an EMOPIA-format compound-word dataset.

    python prepare_data.py --midi_dir EMOPIA_1.0/midis --out_dir data/co-representation --name emopia

`--midi_dir` has no default: the 32-clip sample in data/sample/midis must never end up,
unnoticed, where MusER.py looks for the full corpus.

Writes, each atomically:
  {out_dir}/{name}_data.npz   x, y [N, 1024, 8] int64; mask [N, 1024] float64; seq_len,
                              num_groups [N] int64; names [N] str (file names)
  {out_dir}/dictionary.pkl    (event2word, word2event): built from the corpus, or the one given
  {out_dir}/{name}_idx.npz    cls_1_idx .. cls_4_idx: the rows of each emotion quadrant

Labels come from a `Q1_`..`Q4_` file-name prefix, or from `--labels CSV` (`fname,label`
rows, label Q1..Q4 or 1..4, optional header), or not at all with `--unlabeled` (emotion 0,
e.g. for pre-training corpora). A clip that cannot be used (unreadable, no piano notes, no
label, a token the given dictionary lacks) is reported and skipped; the others are written.
Exit status: 0 when a dataset was written, 2 when the input is unusable or no clip could be
encoded.
"""
import argparse
import csv
import multiprocessing
import os
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from music import cp
from music.elements import FIELDS
from music.atomic import atomic_write
from music.errors import UserError
from music.midi_io import ClipError

MIDI_SUFFIXES = {".mid", ".midi"}
_QUADRANT_PREFIX = re.compile(r"^Q([1-4])_", re.IGNORECASE)
_LABEL = re.compile(r"^Q?([1-4])$", re.IGNORECASE)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Encode MIDI files as an EMOPIA-format compound-word dataset.",
        epilog="Exit status: 0 dataset written (possibly with skipped clips); 2 unusable input "
               "or no clip encoded.")
    parser.add_argument("--midi_dir", default=None,
                        help="folder of .mid/.midi files, searched recursively (required; "
                             "data/sample/midis holds a 32-clip sample)")
    parser.add_argument("--out_dir", default="data/co-representation", help="output folder (default: %(default)s)")
    parser.add_argument("--name", default="emopia", help="dataset name: {name}_data.npz, {name}_idx.npz")
    parser.add_argument("--dictionary", default=None,
                        help="reuse this dictionary.pkl (e.g. a trained model's) instead of building one; "
                             "clips with a token it lacks are skipped")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", default=None, help="CSV of fname,label (Q1..Q4) instead of file-name prefixes")
    labels.add_argument("--unlabeled", action="store_true", help="no emotion labels (emotion field 0)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: number of CPUs, %(default)s)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not re.fullmatch(r"[\w.-]+", args.name):
        parser.error(f"--name {args.name!r}: use letters, digits, '.', '_' or '-'")
    return args


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
            match = _LABEL.match(label)
            if match is None:
                if line_no == 1:      # a header row
                    continue
                labels[fname] = label  # kept, reported for the clip it names
                continue
            labels[fname] = int(match.group(1))
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
    match = _QUADRANT_PREFIX.match(Path(name).name)
    if match is None:
        raise ClipError(f"{path}: unknown label: the file name does not start with Q1_..Q4_ "
                        f"(use --labels CSV or --unlabeled)", "unknown label")
    return int(match.group(1))


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


def encode_clip(job):
    """Encode one clip; never raises (a failure is reported in the result)."""
    path, name, emotion, debug = job
    result = ClipResult(name, emotion)
    try:
        if _event2word is not None:
            # Only the words that will be kept are needed: stop after them.
            piece = cp.encode_midi(path, emotion, max_events=cp.MAX_WORDS)
            result.words = cp.events_to_words(piece.events, _event2word, str(path))
        else:
            # EMOPIA builds its dictionary from whole pieces, so encode the whole piece.
            piece = cp.encode_midi(path, emotion)
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


# ---------------------------------------------------------------------------------------
# The run: inputs -> encoded clips -> dictionary -> the three output files
# ---------------------------------------------------------------------------------------
def run(args) -> int:
    start = time.perf_counter()
    if args.midi_dir is None:
        raise UserError("--midi_dir is required: the folder of MIDI clips to encode (the full "
                        "EMOPIA MIDI folder for the paper; data/sample/midis is a 32-clip sample)")
    midi_dir, out_dir = Path(args.midi_dir), Path(args.out_dir)
    paths, n_other = find_midi_files(midi_dir)
    labels = read_labels(Path(args.labels)) if args.labels else None
    event2word = word2event = None
    if args.dictionary:
        event2word, word2event = cp.load_dictionary(args.dictionary)

    skipped = []       # (message, reason)
    jobs = []
    for path in paths:
        name = path.relative_to(midi_dir).as_posix()
        try:
            emotion = label_of(path, name, labels, args.unlabeled, args.labels)
        except ClipError as exc:
            skipped.append((str(exc), exc.reason))
            continue
        jobs.append((path, name, emotion, args.debug))
    if n_other:
        print(f"ignored {n_other} file(s) in {midi_dir} without a .mid/.midi extension")

    results = []
    for result in encode_all(jobs, min(args.workers, max(len(jobs), 1)), event2word):
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
            for name, piece_values in zip(FIELDS, result.local_values):
                values[name].update(piece_values)
        event2word, word2event = cp.build_dictionary(values)
        for result in results:
            result.words = to_dictionary_words(result.local_values, result.words, event2word)

    names = [r.name for r in results]
    arrays, order = cp.compile_dataset(names, [r.words for r in results], cp.eos_word(event2word))
    emotions = np.array([results[i].emotion for i in order], dtype=np.int64)
    class_idx = {f"cls_{q}_idx": np.flatnonzero(emotions == q).astype(np.int64) for q in (1, 2, 3, 4)}

    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / f"{args.name}_data.npz"
    idx_path = out_dir / f"{args.name}_idx.npz"
    dict_path = out_dir / "dictionary.pkl"
    atomic_write(data_path, lambda f: np.savez(f, **arrays))
    given = Path(args.dictionary) if args.dictionary else None
    if given is None:
        cp.save_dictionary(dict_path, event2word, word2event)
    elif not (dict_path.exists() and dict_path.resolve() == given.resolve()):
        payload = given.read_bytes()
        atomic_write(dict_path, lambda f: f.write(payload))
    atomic_write(idx_path, lambda f: np.savez(f, **class_idx))

    per_class = ", ".join(f"Q{q} {len(class_idx[f'cls_{q}_idx'])}" for q in (1, 2, 3, 4))
    print(f"wrote {len(results)} clips to {data_path} ({per_class}; "
          f"{int((arrays['seq_len'] >= cp.MAX_WORDS - 1).sum())} at the {cp.MAX_WORDS}-word limit)")
    print(f"dictionary {'copied from ' + str(given) if given else 'built'}: {dict_path} "
          f"(sizes {', '.join(f'{n} {s}' for n, s in zip(FIELDS, cp.vocab_sizes(event2word)))})")
    print(f"class indices: {idx_path}")
    print(f"skipped {len(skipped)} clip(s){': ' + why if skipped else ''}")
    print(f"done in {time.perf_counter() - start:.1f} s with {args.workers} worker(s)")
    return 0


def main(argv=None) -> int:
    """Parse flags and run; a UserError becomes 'error: ...' on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
