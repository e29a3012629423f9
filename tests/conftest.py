"""Shared fixtures. Data from ../shared is optional: tests that need it skip with a reason."""
import os
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP threads that
# spin-wait for a core make each small op 10-50x slower. Subprocesses inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE_MIDI_DIR = ROOT / "data" / "sample" / "midis"


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the calling test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (development data from ../shared is not available)")
    return path


@pytest.fixture
def emopia_zip() -> Path:
    return shared_path("emopia", "midis.zip")


@pytest.fixture
def reference_cp() -> Path:
    return shared_path("reference_cp")


# The shipped sample encoded once per session (a fixture shared by several test files).
from tests.sample_cp import sample_npz  # noqa: E402,F401
