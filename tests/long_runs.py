"""The suite's long shared runs, all of them subprocesses: the shipped sample encoded, a tiny
MusER and prior trained by the four commands of the authors' README, a reproduction study
killed while it trains, then resumed, then run again as a user would, and independent runs
that tests check: two-process training, bench/gpu_check.sh on the CPU, our metrics against
muspy's and prepare_data.py on all of EMOPIA, and the committed study's report rebuilt.

They start in background threads as soon as the session does, so that they run on the
second core while the tests run on the first: one lane for the study (it takes the longest,
and the tests that read it come late), one for the others. Their processes run at a lower
priority than the tests' (NICENESS): the tests' thread is the session's longest chain. Each
fixture waits for its run. Only the runs that the selected tests need are started, and the
session's end stops any that are still going.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, shared_path
from tests import warm_python
from tests.sample_cp import encode_sample

# ---------------------------------------------------------------- the README's commands

# The four commands of the authors' README (reference/MusER-README.md), as written there.
README_COMMANDS = [
    "python MusER.py --data_path ./data/co-representation/emopia_data.npz --dataset emopia "
    "--model_path your_model_saving_path --log_path your_log_path",
    "python VQ_explore.py --data_path ./data/co-representation/emopia_data.npz "
    "--VQ_VAE MusER_TRANS_CA_GE_emopia --plot_flag True",
    "python Prior_train.py --data_path ./data/co-representation/emopia_data.npz --dataset emopia "
    "--VQ_VAE MusER_TRANS_CA_GE_emopia --model_path your_prior_model_saving_path --log_path your_log_path",
    "python generate.py --VQ_prior Prior_TRANS_CA_ER_emopia --VQ_VAE MusER_TRANS_CA_GE_emopia "
    "--music_file your_music_file_name",
]
PLACEHOLDERS = {"your_model_saving_path": "MusER_TRANS_CA_GE_emopia",
                "your_prior_model_saving_path": "Prior_TRANS_CA_ER_emopia",
                "your_log_path": "logs/run.log", "your_music_file_name": "readme_music"}

MUSER_EPOCHS, PRIOR_EPOCHS = 12, 6
# Appended to each command: the tiny preset, and a high learning rate that gets the tiny
# model far enough in seconds to write notes; 250 t-SNE iterations (scikit-learn's least)
# draw the same figures sooner (the authors' 3000 are checked in test_vq_explore).
FAST = ["--lr", "3e-3", "--batch_size", "8"]
README_EXTRA = {"MusER.py": ["--preset", "tiny", "--Epoch", str(MUSER_EPOCHS), *FAST],
                "VQ_explore.py": ["--tsne_iter", "250"],
                "Prior_train.py": ["--preset", "tiny", "--Epoch", str(PRIOR_EPOCHS), *FAST],
                "generate.py": ["--n_per_emotion", "2", "--max_steps", "48"]}


def readme_argv(command: str) -> list[str]:
    """A README command with its placeholders filled: ['python', 'SCRIPT.py', args...]."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    return shlex.split(command)


def readme_run(runs: LongRuns, work: Path) -> SimpleNamespace:
    """The README's commands, each a process started in a folder laid out as the README's
    (data in data/co-representation/)."""
    shutil.copytree(runs.result("sample").parent, work / "data" / "co-representation")
    for command in README_COMMANDS:
        argv = readme_argv(command)
        result = runs.run([sys.executable, str(ROOT / argv[1]), *argv[2:], *README_EXTRA[argv[1]],
                           "--device", "cpu"], cwd=work)
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
    return SimpleNamespace(
        work=work, npz=work / "data" / "co-representation" / "emopia_data.npz",
        muser=work / "saved_models" / PLACEHOLDERS["your_model_saving_path"],
        prior=work / "saved_models" / PLACEHOLDERS["your_prior_model_saving_path"],
        vq_dict=work / "data" / "MusER_TRANS_CA_GE_emopia_VQ_dict.data",
        figures=work / "figures" / "MusER_TRANS_CA_GE_emopia", generated=work / "generate_midi",
        music_file=PLACEHOLDERS["your_music_file_name"], log=work / PLACEHOLDERS["your_log_path"])


# ---------------------------------------------------------------- the reproduction study

# The tiny preset with one more VQ-VAE epoch: training then outlasts its first last.pt by
# two epochs, time enough for the study to be killed while it trains.
STUDY_EPOCHS = 3
STUDY = ["--preset", "tiny", "--epochs", str(STUDY_EPOCHS), "--with", "guidance"]


def killed_study(runs: LongRuns, out: Path) -> SimpleNamespace:
    """One study, killed (SIGKILL to its process group) once MusER's first last.pt is
    written, then run again to the end. One model at a time (--jobs 1): the kill finds MusER
    training and the baseline not started."""
    npz = runs.result("sample")
    command = [sys.executable, "reproduce.py", *STUDY, "--data_path", str(npz), "--out", str(out), "--jobs", "1"]
    killed_log = out.parent / f"{out.name}_killed.out"
    with open(killed_log, "w") as log:
        proc = runs.popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            last = out / "seeds" / "13" / "models" / "MusER_TRANS_CA_GE" / "last.pt"
            deadline = time.monotonic() + 300
            while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            running = proc.poll() is None
        finally:
            runs.kill(proc)
    assert running, ("the study ended (or never wrote last.pt) before it could be killed:\n"
                     + killed_log.read_text()[-2000:])
    stages = out / "seeds" / "13" / "stages"
    after_kill = SimpleNamespace(started=(stages / "train_MusER_TRANS_CA_GE.started").exists(),
                                 finished=(stages / "train_MusER_TRANS_CA_GE.json").exists(),
                                 output=killed_log.read_text())
    resumed = runs.run(command, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    # What the tests read of the study as it first finished; the reruns below change `out`.
    finished = shutil.copytree(out, out.parent / f"{out.name}_finished", symlinks=True)
    return SimpleNamespace(npz=npz, out=out, finished=finished, resumed=resumed, after_kill=after_kill)


def study_reruns(runs: LongRuns, folder: Path) -> SimpleNamespace:
    """reproduce.py again on the finished study, as tests/test_reproduce.py checks it: a second
    run with nothing to do; one stage of one model asked for, its measure gone; a misspelled
    stage; a changed input (--pairs 1); and the transposition stage (--only transpose) on a copy,
    so that the study's own report stays without it."""
    study = runs.result("study")
    out, seed = study.out, study.out / "seeds" / "13"

    def again(*extra, out=out):
        return runs.run([sys.executable, "reproduce.py", *STUDY, "--data_path", str(study.npz), "--out", str(out),
                         *extra], cwd=ROOT)

    def markers():
        return {p: p.stat().st_mtime_ns for p in [*(out / "stages").glob("*.json"), *(seed / "stages").glob("*.json")]}

    before = markers()
    second = again("--jobs", "1")            # the stages in process (the changed input's: in workers)
    second_markers = (before, markers())
    measure = seed / "measures" / "generation_MusER_TRANS_CA_GE.json"
    measure.unlink()                         # a finished stage whose output is gone
    only = again("--only", "generation", "--models", "MusER_TRANS_CA_GE")
    only_wrote = measure.exists() and (seed / "stages" / "generation_MusER_TRANS_CA_GE.json").exists()
    misspelled = again("--only", "latnet")
    changed = again("--pairs", "1")
    transposed = shutil.copytree(out, folder / out.name, symlinks=True)
    transpose = again("--only", "transpose", "--models", "MusER_TRANS_CA_GE", out=transposed)
    return SimpleNamespace(out=out, second=second, second_markers=second_markers, measure=measure, only=only,
                           only_wrote=only_wrote, misspelled=misspelled, changed=changed, transposed=transposed,
                           transpose=transpose)


# ---------------------------------------------------------------- independent checks

# MusER.py as torchrun starts it, except that each rank also saves its own weights and
# buffers when training ends (only rank 0 writes checkpoints, and what must be shown is
# that the replicas stayed the same model), and no loss curves are drawn (tested elsewhere).
EACH_RANK_SAVES = """
import os, sys
import torch
sys.path.insert(0, sys.argv[1])
import MusER
import run.training
from run.cli import run_main

run.training._plot_history = lambda *args: None

out, trained = sys.argv[2], MusER.fit

def fit(**kwargs):
    code = trained(**kwargs)
    torch.save(kwargs["model"].state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
    return code

MusER.fit = fit
run_main(MusER.main, sys.argv[3:])
"""


def ddp_run(runs: LongRuns, folder: Path) -> SimpleNamespace:
    """MusER.py on the sample with two data-parallel CPU processes (tests/test_distributed.py)."""
    npz = runs.result("sample")
    driver = folder / "muser_each_rank_saves.py"
    driver.write_text(EACH_RANK_SAVES)
    out = folder / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(driver), str(ROOT), str(folder), "--data_path", str(npz), "--preset", "tiny", "--Epoch", "2",
               "--batch_size", "4", "--model_path", str(out), "--device", "cpu"]
    result = runs.run(command, cwd=folder, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return SimpleNamespace(result=result, out=out, ranks=[folder / f"rank{r}.pt" for r in (0, 1)])


def emopia_corpus(runs: LongRuns, folder: Path) -> SimpleNamespace:
    """prepare_data.py on all 1,078 EMOPIA clips (../shared; skipped without it), two workers,
    unsynchronised as the reference is (tests/test_prepare_data.py)."""
    archive, reference = shared_path("emopia", "midis.zip"), shared_path("reference_cp")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    result = runs.run([sys.executable, str(ROOT / "prepare_data.py"), "--midi_dir", str(folder / "midis"),
                       "--out_dir", str(folder / "out"), "--workers", "2", "--sync", "none"], cwd=ROOT, timeout=300)
    return SimpleNamespace(out=folder / "out", reference=reference, result=result)


COMMITTED_STUDY = ROOT / "results" / "emopia_small"


def committed_report(runs: LongRuns, folder: Path) -> SimpleNamespace:
    """`reproduce.py --report_only` on a copy of the committed study (tests/test_reproduce.py)."""
    if not (COMMITTED_STUDY / "measures" / "study.json").exists():
        pytest.skip(f"{COMMITTED_STUDY} holds no study measures yet")
    copy = folder / COMMITTED_STUDY.name
    shutil.copytree(COMMITTED_STUDY, copy)
    result = runs.run([sys.executable, "reproduce.py", "--report_only", "--out", str(copy)], cwd=ROOT, timeout=300)
    return SimpleNamespace(result=result, report=copy / "REPORT.md")


# bench/gpu_check.sh on the CPU at tiny sizes (tests/test_gpu_check.py).
GPU_CHECK_TINY = ["--device", "cpu", "--preset", "tiny", "--epochs", "1", "--max_len", "64", "--per_quadrant", "1",
                  "--train_batch", "2", "--train_steps", "1", "--gen_pieces", "4", "--gen_steps", "16",
                  "--trace_pieces", "2", "--trace_steps", "8"]


def gpu_check(*args, work: Path, runs: LongRuns | None = None) -> subprocess.CompletedProcess:
    """bench/gpu_check.sh with `args`, its stdout and stderr captured (as a long run with `runs`)."""
    command = ["bash", str(ROOT / "bench" / "gpu_check.sh"), *map(str, args), "--work", str(work)]
    env = {**os.environ, "PYTHON": sys.executable}
    if runs is not None:
        return runs.run(command, cwd=ROOT, timeout=300, env=env)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def gpu_check_run(runs: LongRuns, folder: Path) -> SimpleNamespace:
    return SimpleNamespace(result=gpu_check(*GPU_CHECK_TINY, work=folder / "work", runs=runs), work=folder / "work")


def muspy_agreement(runs: LongRuns, folder: Path) -> dict:
    """tests/muspy_agreement.py on every clip of EMOPIA (../shared; skipped without it)."""
    archive = shared_path("emopia", "midis.zip")
    result = runs.run([sys.executable, "-m", "tests.muspy_agreement", str(archive)], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


# ---------------------------------------------------------------- the runner

# Fixture name -> (run, runs it needs first, lane); each lane's thread runs its runs in this order,
# and a run waits for what it needs from the other lane. The study, the longest, has a lane to
# itself; the other lane runs the rest in the order the tests (in file order) need them.
RUNS = {"sample_npz": ("sample", (), "study"), "study": ("study", ("sample",), "study"),
        "study_reruns": ("study_reruns", ("study",), "study"),
        "ddp_training": ("ddp", ("sample",), "others"),
        "gpu_check_cpu": ("gpu_check", (), "others"),
        "emopia_muspy_agreement": ("muspy", (), "others"),
        "tiny_run": ("tiny_run", ("sample",), "others"),
        "emopia_corpus": ("corpus", (), "others"),
        "committed_report": ("committed_report", (), "others")}
BUILDERS = {"sample": lambda runs, folder: encode_sample(folder), "tiny_run": readme_run, "study": killed_study,
            "study_reruns": study_reruns,
            "ddp": ddp_run, "gpu_check": gpu_check_run, "muspy": muspy_agreement, "corpus": emopia_corpus,
            "committed_report": committed_report}
LANE = {name: lane for name, _, lane in RUNS.values()}
# The runs yield the cores to the tests, whose thread is the session's longest chain; the study
# yields less than the others, since the last tests wait for it.
NICENESS = {"long runs: study": 5, "long runs: others": 10}


class LongRuns:
    """Runs the long runs one after another in a background thread per lane; result(name)
    waits for one and returns it, or raises what it raised (a skip included)."""

    def __init__(self, tmp_path_factory, fixture_names):
        plan = []
        for fixture, (name, needs, _) in RUNS.items():
            if fixture in fixture_names:
                plan += [n for n in (*needs, name) if n not in plan]
        self.plan = plan
        self._folders = {name: tmp_path_factory.mktemp(name) for name in plan}
        self._done = {name: threading.Event() for name in plan}
        self._results: dict[str, tuple[bool, object]] = {}
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.seconds: dict[str, float] = {}          # each run's wall time
        self.waited: dict[str, float] = {}           # how long tests blocked waiting for it
        lanes = {}
        for name in plan:
            lanes.setdefault(LANE[name], []).append(name)
        self._threads = [threading.Thread(target=self._run_all, args=(names,), name=f"long runs: {lane}", daemon=True)
                         for lane, names in lanes.items()]
        for thread in self._threads:
            thread.start()
        atexit.register(self.stop)       # also when the session ends without its teardown

    def _run_all(self, names) -> None:
        for name in names:
            began = time.monotonic()
            try:
                self._results[name] = (True, BUILDERS[name](self, self._folders[name]))
            except BaseException as exc:          # a skip or a failure, raised where it is needed
                self._results[name] = (False, exc)
            self.seconds[name] = time.monotonic() - began
            self._done[name].set()

    def result(self, name: str):
        if name not in self._done:
            raise LookupError(f"{name} was not planned for this session")
        began = time.monotonic()
        self._done[name].wait()
        self.waited[name] = self.waited.get(name, 0.0) + time.monotonic() - began
        ok, value = self._results[name]
        if not ok:
            raise value
        return value

    def popen(self, command, **kwargs) -> subprocess.Popen:
        """A process in a process group of its own (so that kill reaches the scripts it
        starts), stopped with the session."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("the test session has ended")
            proc = warm_python.Popen(command, start_new_session=True, **kwargs)
            self._procs.add(proc)
        with contextlib.suppress(ProcessLookupError):      # set before it starts processes of its own
            os.setpriority(os.PRIO_PROCESS, proc.pid, NICENESS.get(threading.current_thread().name, 0))
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL to the process and everything it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        with self._lock:
            self._procs.discard(proc)

    def run(self, command, cwd, timeout=600, env=None) -> subprocess.CompletedProcess:
        proc = self.popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise AssertionError(f"{' '.join(map(str, command))} ran past {timeout} s") from None
        with self._lock:
            self._procs.discard(proc)
        return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)

    def stop(self) -> None:
        """Kill what still runs and wait for the threads to notice."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs)
        for proc in procs:
            self.kill(proc)
        for thread in self._threads:
            thread.join(timeout=60)


@pytest.fixture(scope="session", autouse=True)
def long_runs(request, tmp_path_factory):
    """Starts the runs that the session's selected tests need, before the first test."""
    names = set().union(*(getattr(item, "fixturenames", ()) for item in request.session.items))
    warm_python.start()               # imports torch beside the first runs, ready for the tests' scripts
    runs = LongRuns(tmp_path_factory, names)
    request.config.stash[LONG_RUNS] = runs
    yield runs
    runs.stop()


LONG_RUNS = pytest.StashKey[LongRuns]()

# The study's runs end last: the tests that read them run after all the others, which keeps
# the tests' thread busy meanwhile instead of waiting.
LATE_RUNS = ("study", "study_reruns")


def tests_in_order_of_readiness(items: list) -> list:
    """The tests in their file order, except that those that need a late run come at the end,
    in the order the late runs finish."""
    def readiness(item) -> int:
        return max((LATE_RUNS.index(n) + 1 for n in getattr(item, "fixturenames", ()) if n in LATE_RUNS), default=0)
    return sorted(items, key=readiness)          # a stable sort: file order within each group


def summary_line(runs: LongRuns) -> str:
    """Each long run's wall time and how long the tests waited for it: what bounds the session."""
    return "long runs in the background: " + ", ".join(
        f"{name} {runs.seconds.get(name, math.nan):.0f} s (tests waited {runs.waited.get(name, 0.0):.0f} s)"
        for name in runs.plan)
