"""CPU threads and OpenMP waiting: the scripts' thread policy (run/threads.py) takes effect
when a script's main starts, the waiting policy comes from the launcher's environment, and
importing a module changes neither the environment nor the process."""
import ast
import os
import re
import subprocess
import sys

import pytest

from run.threads import RECOMMENDED_WAIT, recommended_wait, threads_from_argv, with_recommended_wait
from tests.conftest import ROOT

WAIT_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

# While the main thread sleeps (5 ms) after a parallel op, a thread that keeps spinning
# burns CPU and one that stops soon (the recommended short spin) does not: the CPU time of
# that loop tells which policy libgomp runs with.
PROBE = """
import sys, time
import run.threads
import torch
torch.set_num_threads(2)
x = torch.randn(2_000_000)
for _ in range(3):
    x.add_(1.0)
start = time.process_time()
for _ in range(100):
    x.mul_(1.0)
    time.sleep(0.005)
print(time.process_time() - start, run.threads.wait_policy().replace(" ", "_"))
"""
SLEPT = 100 * 0.005


def clean_env(env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in WAIT_ENV}
    env.update(env_extra or {})
    return env


def run_python(code, env_extra=None, args=()):
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=clean_env(env_extra),
                          check=True, capture_output=True, text=True, timeout=120).stdout.split()


def test_threads_flag_is_read_from_the_command_line():
    assert threads_from_argv(["--threads", "3", "x"]) == 3
    assert threads_from_argv(["a", "--threads=1"]) == 1
    assert threads_from_argv(["--seed", "2"]) is None
    assert threads_from_argv(["--threads", "many"]) is None


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenMP throttles spinning on one CPU")
def test_the_recommended_spin_stops_waiting_threads_soon_and_is_reported():
    """Set by the launcher, as the Makefile does, the short spin takes effect; a user's
    OMP_WAIT_POLICY=ACTIVE spins; wait_policy names what the process runs with."""
    cpu, policy = run_python(PROBE, RECOMMENDED_WAIT)
    assert policy == recommended_wait().replace(" ", "_")
    assert float(cpu) < 0.5 * SLEPT, f"{cpu} s of CPU while sleeping {SLEPT} s: threads spin"
    spinning, policy = run_python(PROBE, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert policy == "OMP_WAIT_POLICY=ACTIVE"
    assert float(spinning) > float(cpu) + 0.25 * SLEPT, f"{spinning} s of CPU spinning, {cpu} s with the short spin"


def test_the_makefile_exports_the_recommended_spin():
    """`make` is the launcher that sets the spin; a direct launch finds it named in --help."""
    import argparse
    from run.cli import add_common_args
    makefile = (ROOT / "Makefile").read_text()
    for name, value in RECOMMENDED_WAIT.items():
        assert re.search(rf"^export {name} \?= {value}$", makefile, re.M), f"Makefile does not export {name}"
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    assert recommended_wait() in " ".join(parser.format_help().split())


def test_launchers_add_the_recommended_spin_unless_the_user_chose_a_policy():
    assert with_recommended_wait({"PATH": "/bin"}) == {"PATH": "/bin", **RECOMMENDED_WAIT}
    assert with_recommended_wait({"OMP_WAIT_POLICY": "PASSIVE"}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert with_recommended_wait({"GOMP_SPINCOUNT": "5"}) == {"GOMP_SPINCOUNT": "5"}


IMPORT_ALL = """
import importlib, os, sys
from pathlib import Path
environ, argv, pid = dict(os.environ), list(sys.argv), os.getpid()
names = [f"{p.parent.name}.{p.stem}" for folder in ("models", "run")
         for p in sorted(Path(folder).glob("*.py")) if p.stem != "__init__"]
for name in names:
    importlib.import_module(name)
assert "run.threads" in names and "models.packed" in names
changed = sorted(k for k in set(environ) | set(os.environ) if environ.get(k) != os.environ.get(k))
assert not changed, f"importing changed the environment: {changed}"
assert sys.argv == argv and os.getpid() == pid
print(*[name for name in names if name in sys.modules])
"""


def test_importing_a_module_changes_neither_the_environment_nor_the_process():
    """Every module of run/ and models/ (run.cli and run.threads among them), imported
    into a fresh process with no OpenMP settings, leaves os.environ as it was."""
    imported = run_python(IMPORT_ALL)
    expected = [f"{p.parent.name}.{p.stem}" for folder in ("models", "run")
                for p in sorted((ROOT / folder).glob("*.py")) if p.stem != "__init__"]
    assert imported == expected


SCRIPT = """
import os, sys
import torch                       # before run.cli, as most scripts import it
print("start")
from run.cli import add_common_args, run_main
from run.threads import wait_policy
import argparse

def main(argv):
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    args = parser.parse_args(argv)
    print(torch.get_num_threads(), wait_policy().replace(" ", "_"), os.environ.get("GOMP_SPINCOUNT"))

run_main(main)
"""


def test_scripts_run_once_and_leave_the_environment_alone():
    """torch imported first and 2 threads: the script runs once (no restart) with the
    environment it was given; a policy set by the launcher is what it reports."""
    out = run_python(SCRIPT, args=["--threads", "2"])
    assert out == ["start", "2", "OpenMP_default", "None"]
    out = run_python(SCRIPT, {"GOMP_SPINCOUNT": "1000"}, ["--threads", "2"])
    assert out == ["start", "2", "GOMP_SPINCOUNT=1000", "1000"]


def test_a_real_script_runs_once():
    """generate.py --help with 2 threads after torch was imported: its code runs once."""
    code = ("import runpy, sys, torch\nprint('start')\n"
            "sys.argv = ['generate.py', '--threads', '2', '--help']\n"
            "runpy.run_path('generate.py', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines().count("start") == 1
    assert "--threads" in result.stdout


def runs_on_import(tree):
    """The nodes of a module that run when it is imported (not those inside functions)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def writes_environment(node) -> bool:
    if isinstance(node, (ast.Assign, ast.Delete)):
        return any(ast.unparse(t).startswith("os.environ") for t in node.targets)
    if isinstance(node, ast.AugAssign):
        return ast.unparse(node.target).startswith("os.environ")
    if isinstance(node, ast.Call):
        return re.fullmatch(r"os\.(putenv|unsetenv|environ\.(update|setdefault|pop|popitem|clear))",
                            ast.unparse(node.func)) is not None
    return False


def test_no_module_restarts_the_process_or_writes_the_environment_on_import():
    """No os.exec* or sys.orig_argv anywhere; no write to os.environ that runs on import (a
    function, such as a launcher's, may build a child's environment)."""
    sources = [p for folder in ("music", "models", "evaluation", "run", "bench")
               for p in sorted((ROOT / folder).glob("*.py"))] + sorted(ROOT.glob("*.py"))
    wrong = []
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(ROOT)
        wrong += [f"{where}:{node.lineno} {ast.unparse(node)}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute)
                  and (node.attr == "orig_argv" or node.attr.startswith("exec") and ast.unparse(node.value) == "os")]
        wrong += [f"{where}:{node.lineno} {ast.unparse(node)}" for node in runs_on_import(tree)
                  if writes_environment(node)]
    assert not wrong, "\n".join(wrong)


def test_bad_thread_count_is_a_user_error():
    result = subprocess.run([sys.executable, "-c", SCRIPT, "--threads", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "error: --threads must be 1 or more" in result.stderr


def test_free_cores_is_a_share_of_this_machine():
    from run.threads import free_cores
    free = free_cores(0.05)
    if free is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= free <= (os.cpu_count() or 1)


class FakeMachine:
    """/proc/stat, this process's CPU time and the clock of a 2-core machine, advanced by
    hand: `run(seconds, others, own)` lets other processes use `others` cores and this
    one `own` cores for `seconds`."""

    def __init__(self, monkeypatch, cores=2):
        import run.threads as policy
        self.cores, self.clock, self.busy, self.total, self.own = cores, 100.0, 0, 0, 0.0
        monkeypatch.setattr(policy, "_proc_stat_busy_total", lambda: (self.busy, self.total))
        monkeypatch.setattr(policy.os, "cpu_count", lambda: cores)
        monkeypatch.setattr(policy, "_allowed_cores", lambda: cores)
        monkeypatch.setattr(policy.time, "monotonic", lambda: self.clock)
        monkeypatch.setattr(policy.time, "process_time", lambda: self.own)

    def run(self, seconds, others, own):
        jiffies = 100 * seconds
        self.clock += seconds
        self.busy += round(jiffies * (others + own))
        self.total += round(jiffies * self.cores)
        self.own += seconds * own


@pytest.fixture
def two_threads():
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield torch
    torch.set_num_threads(before)


def test_governor_follows_a_machine_that_becomes_busy_and_idle_again(monkeypatch, two_threads):
    """Another process takes a core while this one runs 2 threads: one reading later the
    count is 1. When the other process ends, the count goes back to 2 only after two
    readings agree; a one-second burst does not raise it."""
    from run.threads import ThreadGovernor
    torch = two_threads
    machine = FakeMachine(monkeypatch)
    governor = ThreadGovernor(max_threads=2, interval=1.0)
    machine.run(1.0, others=0.0, own=2.0)
    governor.tick()
    assert torch.get_num_threads() == 2
    machine.run(0.5, others=0.7, own=1.3)
    governor.tick()                                   # before the interval: no reading
    assert torch.get_num_threads() == 2
    machine.run(0.5, others=0.7, own=1.3)             # the busy process's share of 3 threads
    governor.tick()
    assert torch.get_num_threads() == 1
    for _ in range(3):                                # still busy: stays at 1
        machine.run(1.0, others=1.0, own=1.0)
        governor.tick()
        assert torch.get_num_threads() == 1
    machine.run(1.0, others=0.0, own=1.0)             # idle for one reading: not yet
    governor.tick()
    assert torch.get_num_threads() == 1
    machine.run(1.0, others=1.0, own=1.0)             # busy again: the vote is lost
    governor.tick()
    machine.run(1.0, others=0.0, own=1.0)
    governor.tick()
    assert torch.get_num_threads() == 1
    machine.run(1.0, others=0.0, own=1.0)             # two idle readings in a row
    governor.tick()
    assert torch.get_num_threads() == 2
    assert [threads for _, threads in governor.changes] == [1, 2]


def test_governor_counts_its_own_spinning_threads_as_its_own(monkeypatch, two_threads):
    """A machine whose busy time is all this process's (its threads working or spinning)
    is idle for the governor; half a core used by others keeps 2 threads (round(1.5))."""
    from run.threads import ThreadGovernor
    torch = two_threads
    machine = FakeMachine(monkeypatch)
    governor = ThreadGovernor(max_threads=2)
    for others in (0.0, 0.2, 0.5):
        machine.run(1.0, others=others, own=2.0 - others)
        governor.tick()
        assert torch.get_num_threads() == 2, others
    assert governor.wanted(0.6) == 1 and governor.wanted(5.0) == 1
    assert ThreadGovernor(max_threads=1).wanted(0.0) == 1


def test_adapt_threads_runs_only_when_the_count_was_chosen_here(monkeypatch, two_threads):
    """--threads and OMP_NUM_THREADS fix the count: no governor. The automatic choice
    starts one, and adapt_threads ticks it."""
    import run.threads as policy
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(policy, "free_cores", lambda seconds=0.2: 2.0)
    monkeypatch.setattr(policy, "MAX_THREADS", 2)
    try:
        assert policy.apply_thread_policy(2) == 2 and policy._governor is None
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        policy.apply_thread_policy(None)
        assert policy._governor is None
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert policy.apply_thread_policy(None) == 2
        governor = policy._governor
        assert governor is not None
        ticks = []
        monkeypatch.setattr(governor, "tick", lambda: ticks.append(1))
        policy.adapt_threads()
        assert ticks == [1]
    finally:
        policy._governor = None


def test_generation_and_training_loops_call_on_step():
    """The prior and the decoder call on_step before every step; the trainers' loop calls
    adapt_threads before every batch (checked in its source: a fake would need a run)."""
    import inspect
    import torch
    from models.config import MusERConfig, PriorConfig, apply_preset
    from models.muser import MusER
    from models.prior import Prior
    import run.training
    vocab = [56, 135, 18, 4, 87, 18, 42, 5]
    type_ids = {"EOS": 0, "Emotion": 1, "Metrical": 2, "Note": 3}
    torch.manual_seed(0)
    prior = Prior(apply_preset(PriorConfig(n_codes=16), "tiny")).eval()
    calls = []
    codes = prior.generate(torch.tensor([1]), 5, on_step=lambda: calls.append("prior"))
    assert calls == ["prior"] * 5 and codes.shape == (1, 5)
    model = MusER(apply_preset(MusERConfig(vocab, type_ids=type_ids), "tiny")).eval()
    with torch.no_grad():
        model.heads[3].bias[type_ids["EOS"]] = float("-inf")
    latent = torch.randn(1, 8, model.config.latent_dim)
    calls.clear()
    model.generate(latent, torch.tensor([1]), max_steps=6, on_step=lambda: calls.append("word"))
    assert calls == ["word"] * 6
    assert "adapt_threads()" in inspect.getsource(run.training._TrainingLoop.step)


def test_governor_and_start_choice_agree_on_a_restricted_cpu_set(monkeypatch):
    """A process allowed 2 of 8 CPUs, with other processes busy on the other 6, has 2
    free cores both at start (free_cores) and while running (ThreadGovernor.wanted)."""
    import run.threads as policy
    monkeypatch.setattr(policy.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(policy, "_allowed_cores", lambda: 2)
    readings = iter([(0, 800), (600, 1600)])          # 6 of 8 cores busy meanwhile
    monkeypatch.setattr(policy, "_proc_stat_busy_total", lambda: next(readings, (600, 1600)))
    assert policy.free_cores(0.0) == 2.0
    assert policy.ThreadGovernor(max_threads=2).wanted(6.0) == 2
    assert policy.ThreadGovernor(max_threads=2).wanted(7.0) == 1
