"""The shipped sample clips encoded as CP data, for the evaluation tests (module fixture)."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SAMPLE_MIDI_DIR


def encode_sample(out_dir):
    """Run prepare_data.py on data/sample/midis into out_dir; the npz path (skips if absent)."""
    if not SAMPLE_MIDI_DIR.is_dir():
        pytest.skip(f"{SAMPLE_MIDI_DIR} is absent")
    subprocess.run([sys.executable, "prepare_data.py", "--midi_dir", str(SAMPLE_MIDI_DIR),
                    "--out_dir", str(out_dir), "--name", "sample", "--workers", "1"],
                   cwd=ROOT, check=True, capture_output=True)
    return out_dir / "sample_data.npz"


@pytest.fixture(scope="module")
def sample_npz(tmp_path_factory):
    return encode_sample(tmp_path_factory.mktemp("sample_cp"))
