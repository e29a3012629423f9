"""Loading a compound-word dataset (an npz + its dictionary), checked before anything trains on it.

Accepts what `prepare_data.py` writes and the EMOPIA release (`emopia_data.npz` +
`dictionary.pkl`). Every problem is a UserError naming the file and what is wrong.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from music.cp import load_dictionary, vocab_sizes as dictionary_sizes
from music.elements import EMOTION_FIELD, FIELDS, QUADRANTS
from music.errors import UserError

REQUIRED_KEYS = ("x", "y", "mask", "seq_len")


@dataclass
class CPDataset:
    """Plain numpy arrays of one dataset plus the dictionary it is encoded with."""

    x: np.ndarray            # [N, T, 8] int64 (T = 1024 for data written by prepare_data.py)
    y: np.ndarray            # [N, T, 8] int64
    mask: np.ndarray         # [N, T] float32
    seq_len: np.ndarray      # [N] int64
    names: np.ndarray        # [N] str (file names; 'row{i}' when the npz has none)
    emotion: np.ndarray      # [N] int64, 0..4, from x[:, 0, EMOTION_FIELD]
    event2word: dict
    word2event: dict
    npz_path: Path
    dictionary_path: Path

    def __len__(self):
        return len(self.x)


def default_dictionary_path(npz_path) -> Path:
    """dictionary.pkl in the npz's folder (where prepare_data.py and the EMOPIA release put it)."""
    return Path(npz_path).parent / "dictionary.pkl"


def _read_npz(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: file not found (run prepare_data.py, or see data/README.md "
                        f"for the EMOPIA release)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as exc:
        raise UserError(f"{path}: not a readable npz file ({type(exc).__name__}: {exc})") from None


def _check_integer(path, key, array):
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"{path}: '{key}' has dtype {array.dtype}, expected integers")


def _check_shapes(path: Path, arrays: dict):
    x, y, mask, seq_len = (arrays[k] for k in REQUIRED_KEYS)
    if x.ndim != 3 or x.shape[2] != len(FIELDS):
        raise UserError(f"{path}: 'x' has shape {x.shape}, expected [N, T, {len(FIELDS)}]")
    n, t = x.shape[:2]
    if n == 0 or t < 2:
        raise UserError(f"{path}: 'x' has shape {x.shape}: no rows to train on")
    expected = {"y": x.shape, "mask": (n, t), "seq_len": (n,)}
    if "num_groups" in arrays:
        expected["num_groups"] = (n,)
    if "names" in arrays:
        expected["names"] = (n,)
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise UserError(f"{path}: '{key}' has shape {arrays[key].shape}, expected {shape} (from x {x.shape})")
    for key in ("x", "y", "seq_len"):
        _check_integer(path, key, arrays[key])
    if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
        raise UserError(f"{path}: 'mask' has dtype {mask.dtype}, expected numbers")
    if not np.isin(mask, (0, 1)).all():
        raise UserError(f"{path}: 'mask' holds values other than 0 and 1")
    bad = np.flatnonzero((seq_len < 1) | (seq_len > t))
    if len(bad):
        raise UserError(f"{path}: seq_len[{bad[0]}] = {seq_len[bad[0]]} is outside 1..{t}")
    ones = mask.sum(axis=1)
    bad = np.flatnonzero(ones != seq_len)
    if len(bad):
        raise UserError(f"{path}: row {bad[0]}: mask has {int(ones[bad[0]])} ones but seq_len is {seq_len[bad[0]]}")


def _check_indices(path: Path, dictionary_path: Path, arrays: dict, sizes):
    for key in ("x", "y"):
        words = arrays[key]
        for k, name in enumerate(FIELDS):
            column = words[..., k]
            low, high = int(column.min()), int(column.max())
            if low < 0 or high >= sizes[k]:
                value = low if low < 0 else high
                row = int(np.argwhere(column == value)[0][0])
                raise UserError(f"{path}: '{key}' row {row} has {name} index {value}, outside the "
                                f"{sizes[k]} entries of {dictionary_path} (wrong dictionary?)")


def check_model_vocabulary(dictionary_path, event2word: dict, vocab_sizes=None,
                           model_event2word=None) -> None:
    """UserError unless a dictionary is the one a model was trained with.

    `vocab_sizes` (8 ints in FIELDS order) and `model_event2word` come from the model's
    checkpoint (`run.checkpoint.model_vocabulary`); either may be None. Comparing the
    entries, not only the sizes, also catches a dictionary that numbers values differently.
    """
    sizes = dictionary_sizes(event2word)
    if vocab_sizes is not None and list(vocab_sizes) != sizes:
        diffs = ", ".join(f"{name} {have} vs {want}" for name, have, want in zip(FIELDS, sizes, vocab_sizes)
                          if have != want)
        raise UserError(f"{dictionary_path}: vocabulary sizes {sizes} do not match the model's "
                        f"{list(vocab_sizes)} ({diffs}); use the dictionary the model was trained with")
    if model_event2word is None:
        return
    for name in FIELDS:
        ours, theirs = event2word[name], model_event2word.get(name, {})
        if ours != theirs:
            value = next(v for v in [*ours, *theirs] if ours.get(v) != theirs.get(v))
            raise UserError(f"{dictionary_path}: field {name!r} does not match the dictionary the model was "
                            f"trained with ({value!r} is {ours.get(value, 'absent')} here, "
                            f"{theirs.get(value, 'absent')} in the model's); use the model's dictionary")


def load_cp_dataset(npz_path, dictionary_path=None, vocab_sizes=None, model_event2word=None) -> CPDataset:
    """Load and validate an npz + dictionary pair.

    `vocab_sizes` and `model_event2word` (a model's vocabulary, from its checkpoint: see
    `check_model_vocabulary`) must then match the dictionary, so a model never reads data
    encoded with another vocabulary.
    """
    npz_path = Path(npz_path)
    dictionary_path = Path(dictionary_path) if dictionary_path else default_dictionary_path(npz_path)
    arrays = _read_npz(npz_path)
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise UserError(f"{npz_path}: missing key(s) {', '.join(missing)} "
                        f"(has {', '.join(sorted(arrays)) or 'none'}; expected {', '.join(REQUIRED_KEYS)})")
    _check_shapes(npz_path, arrays)

    event2word, word2event = load_dictionary(dictionary_path)
    check_model_vocabulary(dictionary_path, event2word, vocab_sizes, model_event2word)
    _check_indices(npz_path, dictionary_path, arrays, dictionary_sizes(event2word))

    x = arrays["x"].astype(np.int64, copy=False)
    emotion_values = word2event["emotion"]
    emotion = np.array([emotion_values[i] for i in x[:, 0, EMOTION_FIELD].tolist()])
    if not np.issubdtype(emotion.dtype, np.integer) or emotion.min() < 0 or emotion.max() > 4:
        raise UserError(f"{npz_path}: the first word's emotion field does not decode to 0..4 "
                        f"with {dictionary_path}")
    names = arrays["names"].astype(str) if "names" in arrays else np.array([f"row{i}" for i in range(len(x))])
    return CPDataset(
        x=x,
        y=arrays["y"].astype(np.int64, copy=False),
        mask=arrays["mask"].astype(np.float32),
        seq_len=arrays["seq_len"].astype(np.int64, copy=False),
        names=names,
        emotion=emotion.astype(np.int64),
        event2word=event2word,
        word2event=word2event,
        npz_path=npz_path,
        dictionary_path=dictionary_path,
    )


def load_class_indices(idx_npz_path) -> dict:
    """{1: rows, 2: rows, 3: rows, 4: rows} from a `{name}_idx.npz` (cls_1_idx .. cls_4_idx)."""
    path = Path(idx_npz_path)
    arrays = _read_npz(path)
    keys = [f"cls_{q}_idx" for q in QUADRANTS]
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise UserError(f"{path}: missing key(s) {', '.join(missing)}")
    result = {}
    for q, key in zip(QUADRANTS, keys):
        rows = arrays[key]
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise UserError(f"{path}: '{key}' must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        result[q] = rows.astype(np.int64)
    return result
