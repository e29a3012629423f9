"""The shipped sample clips encoded as CP data (the session's fixture sample_npz, read-only:
copy it to change it)."""
import shutil
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, SAMPLE_MIDI_DIR
from tests import warm_python


def encode_sample(out_dir):
    """Run prepare_data.py on data/sample/midis into out_dir; the npz path (skips if absent).
    Named as the README's layout: emopia_data.npz, dictionary.pkl, emopia_idx.npz."""
    if not SAMPLE_MIDI_DIR.is_dir():
        pytest.skip(f"{SAMPLE_MIDI_DIR} is absent")
    warm_python.run([sys.executable, "prepare_data.py", "--midi_dir", str(SAMPLE_MIDI_DIR),
                    "--out_dir", str(out_dir), "--name", "emopia", "--workers", "1"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    return out_dir / "emopia_data.npz"


def short_pieces(npz, folder, words=100):
    """A copy of CP data (dictionary beside) with every piece cut to its first `words` words:
    the same vocabulary and pieces, and piano rolls drawn in a fraction of the second each
    whole piece takes."""
    folder.mkdir()
    with np.load(npz) as loaded:
        arrays = dict(loaded)
    arrays["seq_len"] = np.minimum(arrays["seq_len"], words)
    arrays["mask"][:, words:] = 0
    np.savez(folder / npz.name, **arrays)
    shutil.copy(npz.parent / "dictionary.pkl", folder)
    return folder / npz.name
