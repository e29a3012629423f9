"""Load pieces (`evaluation.metrics.Piece`) for evaluation from the files the pipeline writes.

- a folder of MIDI files: generated `emotion{q}_{i}.mid` or EMOPIA-style `Q{q}_*.mid`
  (the quadrant comes from the name; other names get quadrant 0 = unknown);
- the words pickle of generate.py: a dict with "words" (list of int arrays [T, 8]),
  "emotion" (list of quadrants) and "dictionary" (path of the dictionary);
- a CP training npz (+ dictionary): every row's words, decoded like the data.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from music.cp import load_dictionary
from music.data import load_cp_dataset
from music.elements import N_FIELDS, quadrant_of_name
from music.errors import UserError
from music.piece import Piece, piece_from_midi, piece_from_words

WORDS_PICKLE_KEYS = ("words", "emotion", "dictionary")


def load_midi_folder(folder, analyse_chords: bool = True) -> list[Piece]:
    """Every .mid/.midi file of a folder (sorted by name), quadrant from the file name.

    Files without chord markers get the CP encoding's chord analysis (see
    `music.piece.piece_from_midi`); generated files carry the decoder's markers already.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise UserError(f"{folder}: no .mid files in this folder")
    return [piece_from_midi(p, emotion=quadrant_of_name(p.name) or 0, name=p.name,
                            analyse_chords=analyse_chords) for p in files]


def read_words_pickle(path) -> dict:
    """The words pickle of generate.py, checked for its layout."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except Exception:
        raise UserError(f"{path}: not a pickle file (expected the words file of generate.py)") from None
    if not isinstance(data, dict) or any(k not in data for k in WORDS_PICKLE_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path}: expected a dict with keys {list(WORDS_PICKLE_KEYS)} "
                        f"(the words file of generate.py), found {found}")
    if len(data["words"]) != len(data["emotion"]):
        raise UserError(f"{path}: {len(data['words'])} word arrays but "
                        f"{len(data['emotion'])} emotion labels")
    for i, words in enumerate(data["words"]):
        words = np.asarray(words)
        if words.ndim != 2 or words.shape[1] != N_FIELDS:
            raise UserError(f"{path}: piece {i} has words of shape {words.shape}, expected [T, {N_FIELDS}]")
    return data


def words_pickle_word2event(path, data: dict, dictionary=None) -> dict:
    """The word2event of a words pickle: `dictionary` when given, else the one stored in the
    pickle, else the file it names (looked for beside the pickle when moved)."""
    if dictionary is None and isinstance(data.get("word2event"), dict):
        return data["word2event"]       # generate.py stores the dictionary it used
    if dictionary is None:
        dictionary = data["dictionary"]
        if not Path(dictionary).is_file():
            dictionary = Path(path).parent / Path(dictionary).name
    return (load_dictionary(dictionary) if isinstance(dictionary, (str, Path)) else dictionary)[1]


def load_words_pickle(path, dictionary=None) -> list[Piece]:
    """Pieces from generate.py's words pickle, decoded as generate.py writes its MIDI files.

    The dictionary is `dictionary` when given (a path, or a loaded (event2word,
    word2event) pair), else the word2event stored in the pickle, else the file it names.
    """
    data = read_words_pickle(path)
    word2event = words_pickle_word2event(path, data, dictionary)
    names = data.get("names") or [f"emotion{q}_{i}" for i, q in enumerate(data["emotion"])]
    return [piece_from_words(np.asarray(w), word2event, emotion=int(q), name=str(n),
                             close_empty_bars=True)
            for w, q, n in zip(data["words"], data["emotion"], names)]


def dataset_words(dataset, row: int) -> np.ndarray:
    """The full word sequence of one npz row: x up to seq_len plus the last target word."""
    length = int(dataset.seq_len[row])
    return np.concatenate([dataset.x[row, :length], dataset.y[row, length - 1:length]], axis=0)


def load_dataset_pieces(npz_path, dictionary_path=None, limit: int | None = None):
    """(pieces, dataset) for every row of a CP npz (the first `limit` rows when given)."""
    dataset = load_cp_dataset(npz_path, dictionary_path)
    rows = range(len(dataset.seq_len) if limit is None else min(limit, len(dataset.seq_len)))
    pieces = [piece_from_words(dataset_words(dataset, i), dataset.word2event,
                               emotion=int(dataset.emotion[i]), name=str(dataset.names[i]))
              for i in rows]
    return pieces, dataset


def load_generated(path, dictionary=None) -> list[Piece]:
    """A folder of MIDI files or a words pickle (anything that is not a folder)."""
    path = Path(path)
    if path.is_dir():
        return load_midi_folder(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return load_words_pickle(path, dictionary)
