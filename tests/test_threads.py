"""CPU threads and OpenMP waiting: the scripts' policy (run/cli.py) takes effect, in the
process and through the environment OpenMP reads when torch loads, and users override it."""
import os
import subprocess
import sys

import pytest

from run.cli import default_wait, threads_from_argv
from tests.conftest import ROOT

# While the main thread sleeps after a parallel op, a spinning OpenMP thread burns CPU and
# a passive one does not: the CPU time of that loop tells which policy libgomp runs with.
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
    time.sleep(0.002)
print(time.process_time() - start, run.cli.wait_policy())
"""
SLEPT = 100 * 0.002


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
