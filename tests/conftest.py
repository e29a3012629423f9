"""Shared fixtures. Data from ../shared is optional: tests that need it skip with a reason."""
from pathlib import Path

import pytest

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
