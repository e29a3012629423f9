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


# The long shared runs start in the background as the session begins (tests/long_runs.py).
from tests.long_runs import LONG_RUNS, long_runs, summary_line, tests_in_order_of_readiness  # noqa: E402,F401


def pytest_collection_modifyitems(session, config, items):
    items[:] = tests_in_order_of_readiness(items)


def pytest_terminal_summary(terminalreporter, config):
    runs = config.stash.get(LONG_RUNS, None)
    if runs is not None and runs.plan:
        terminalreporter.write_line(summary_line(runs))


@pytest.fixture(scope="session")
def sample_npz(long_runs):
    """The shipped sample encoded by prepare_data.py, once per session (read-only)."""
    return long_runs.result("sample")


@pytest.fixture(scope="session")
def tiny_run(long_runs):
    """A tiny MusER and prior trained once per session by the authors' README commands."""
    return long_runs.result("tiny_run")


@pytest.fixture(scope="session")
def ddp_training(long_runs):
    """MusER.py trained on the sample by two data-parallel processes, beside the tests."""
    return long_runs.result("ddp")


@pytest.fixture(scope="session")
def emopia_corpus(long_runs):
    """All of EMOPIA prepared by prepare_data.py (unsynchronised), beside the tests."""
    return long_runs.result("corpus")


@pytest.fixture(scope="session")
def committed_report(long_runs):
    """The committed study's report rebuilt by `reproduce.py --report_only`, beside the tests."""
    return long_runs.result("committed_report")


@pytest.fixture(scope="session")
def gpu_check_cpu(long_runs):
    """bench/gpu_check.sh at tiny sizes on the CPU, run once beside the tests."""
    return long_runs.result("gpu_check")


@pytest.fixture(scope="session")
def emopia_muspy_agreement(long_runs):
    """Our song metrics against muspy's on every EMOPIA clip, checked beside the tests."""
    return long_runs.result("muspy")


@pytest.fixture(scope="module")
def no_loss_curves():
    """In-process training runs of a module skip the loss-curve figure (about 1.5 s per
    finished run; drawn and tested with the session's tiny run). Opt in with
    `pytestmark = pytest.mark.usefixtures("no_loss_curves")`."""
    from run import training

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "_plot_history", lambda *args: None)
        yield
