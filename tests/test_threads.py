"""CPU threads and OpenMP waiting: the scripts' policy (run/cli.py) takes effect, in the
process and through the environment OpenMP reads when torch loads, and users override it."""
import os
import subprocess
import sys

import pytest

from run.cli import default_wait, threads_from_argv
from tests.conftest import ROOT

# While the main thread sleeps (5 ms) after a parallel op, a thread that keeps spinning
# burns CPU and one that stops soon (the default spins about 0.5 ms) does not: the CPU
# time of that loop tells which policy libgomp runs with.
PROBE = """
import sys, time
import run.cli
import torch
torch.set_num_threads(2)
x = torch.randn(2_000_000)
for _ in range(3):
    x.add_(1.0)
start = time.process_time()
for _ in range(100):
    x.mul_(1.0)
    time.sleep(0.005)
print(time.process_time() - start, run.cli.wait_policy())
"""
SLEPT = 100 * 0.005


def run_python(code, env_extra=None, args=()):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=120).stdout.split()


def test_threads_flag_is_read_from_the_command_line():
    assert threads_from_argv(["--threads", "3", "x"]) == 3
    assert threads_from_argv(["a", "--threads=1"]) == 1
    assert threads_from_argv(["--seed", "2"]) is None
    assert threads_from_argv(["--threads", "many"]) is None


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenMP throttles spinning on one CPU")
def test_openmp_threads_stop_spinning_soon_unless_the_user_says_otherwise():
    cpu, policy = run_python(PROBE)
    assert policy == default_wait()
    assert float(cpu) < 0.5 * SLEPT, f"{cpu} s of CPU while sleeping {SLEPT} s: threads spin"
    spinning, policy = run_python(PROBE, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert policy == "OMP_WAIT_POLICY=ACTIVE"
    assert float(spinning) > float(cpu) + 0.25 * SLEPT, f"{spinning} s of CPU spinning, {cpu} s by default"


SCRIPT = """
import os, sys
import torch                       # before run.cli, as most scripts import it
from run.cli import add_common_args, run_main, wait_policy
import argparse

def main(argv):
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    args = parser.parse_args(argv)
    print(os.getpid(), torch.get_num_threads(), wait_policy().replace(" ", "_"))

run_main(main)
"""


def test_scripts_restart_once_with_the_policy_when_torch_came_first():
    pid, threads, policy = run_python(SCRIPT, args=["--threads", "2"])
    assert (threads, policy) == ("2", default_wait())
    _, threads, policy = run_python(SCRIPT, {"OMP_NUM_THREADS": "1"})
    assert threads == "1"                     # one thread never waits: no restart needed
    _, threads, policy = run_python(SCRIPT, {"GOMP_SPINCOUNT": "1000"}, ["--threads", "2"])
    assert policy == "GOMP_SPINCOUNT=1000"


def test_bad_thread_count_is_a_user_error():
    result = subprocess.run([sys.executable, "-c", SCRIPT, "--threads", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "error: --threads must be 1 or more" in result.stderr


def test_free_cores_is_a_share_of_this_machine():
    from run.cli import free_cores
    free = free_cores(0.05)
    if free is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= free <= (os.cpu_count() or 1)


class FakeMachine:
    """/proc/stat, this process's CPU time and the clock of a 2-core machine, advanced by
    hand: `run(seconds, others, own)` lets other processes use `others` cores and this
    one `own` cores for `seconds`."""

    def __init__(self, monkeypatch, cores=2):
        import run.cli as cli
        self.cores, self.clock, self.busy, self.total, self.own = cores, 100.0, 0, 0, 0.0
        monkeypatch.setattr(cli, "_proc_stat_busy_total", lambda: (self.busy, self.total))
        monkeypatch.setattr(cli.os, "cpu_count", lambda: cores)
        monkeypatch.setattr(cli, "_allowed_cores", lambda: cores)
        monkeypatch.setattr(cli.time, "monotonic", lambda: self.clock)
        monkeypatch.setattr(cli.time, "process_time", lambda: self.own)

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
    from run.cli import ThreadGovernor
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
    from run.cli import ThreadGovernor
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
    import run.cli as cli
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cli, "free_cores", lambda seconds=0.2: 2.0)
    monkeypatch.setattr(cli, "MAX_THREADS", 2)
    try:
        assert cli.apply_thread_policy(2) == 2 and cli._governor is None
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        cli.apply_thread_policy(None)
        assert cli._governor is None
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert cli.apply_thread_policy(None) == 2
        governor = cli._governor
        assert governor is not None
        ticks = []
        monkeypatch.setattr(governor, "tick", lambda: ticks.append(1))
        cli.adapt_threads()
        assert ticks == [1]
    finally:
        cli._governor = None


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
    assert "adapt_threads()" in inspect.getsource(run.training.fit)


def test_governor_and_start_choice_agree_on_a_restricted_cpu_set(monkeypatch):
    """A process allowed 2 of 8 CPUs, with other processes busy on the other 6, has 2
    free cores both at start (free_cores) and while running (ThreadGovernor.wanted)."""
    import run.cli as cli
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(cli, "_allowed_cores", lambda: 2)
    readings = iter([(0, 800), (600, 1600)])          # 6 of 8 cores busy meanwhile
    monkeypatch.setattr(cli, "_proc_stat_busy_total", lambda: next(readings, (600, 1600)))
    assert cli.free_cores(0.0) == 2.0
    assert cli.ThreadGovernor(max_threads=2).wanted(6.0) == 2
    assert cli.ThreadGovernor(max_threads=2).wanted(7.0) == 1
