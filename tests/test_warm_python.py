"""tests/warm_python.py stands in for subprocess: each run is a process of its own, with the
arguments, folder, environment, output, exit code and signals a fresh `python` would have."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import warm_python
from tests.conftest import ROOT

PY = sys.executable
pytestmark = pytest.mark.skipif(not warm_python.AVAILABLE, reason="no warm Python here (not Linux, or MUSER_TESTS_COLD)")


def test_a_run_is_a_process_of_its_own_with_its_arguments_folder_and_environment(tmp_path):
    code = ("import json, os, sys, torch; print(json.dumps([os.getpid(), os.getcwd(), sys.argv, "
            "os.environ['WARM_TEST'], torch.get_num_threads()])); print('to stderr', file=sys.stderr); sys.exit(3)")
    result = warm_python.run([PY, "-c", code, "a", "b"], cwd=tmp_path, env={**os.environ, "WARM_TEST": "x"},
                             capture_output=True, text=True, timeout=60)
    pid, cwd, argv, value, threads = json.loads(result.stdout)
    assert result.returncode == 3 and result.stderr == "to stderr\n"
    assert pid not in (os.getpid(), warm_python.launcher().server.pid)
    assert (cwd, argv, value, threads) == (str(tmp_path), ["-c", "a", "b"], "x", int(os.environ["OMP_NUM_THREADS"]))


def test_a_script_runs_as_main_with_its_folder_on_the_path(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text("import sys\nif __name__ == '__main__':\n    print(sys.path[0], sys.argv)\n"
                      "    raise SystemExit('bad input')\n")
    result = warm_python.run([PY, str(script), "--flag"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout == f"{tmp_path} {[str(script), '--flag']}\n"
    assert (result.returncode, result.stderr) == (1, "bad input\n")


def test_a_real_script_gives_its_one_line_error_and_exit_code():
    result = warm_python.run([PY, "generate.py", "--emotion", "5"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: --emotion 5")


def test_an_uncaught_exception_prints_the_script_frames_only():
    result = warm_python.run([PY, "-c", "def f():\n    raise ValueError('x')\nf()"], capture_output=True,
                             text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["Traceback (most recent call last):",
                                          '  File "<string>", line 3, in <module>',
                                          '  File "<string>", line 2, in f', "ValueError: x"]


def test_signals_reach_the_child_as_they_would_a_fresh_python(tmp_path):
    handled = ("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('stopped')\n"
               "    raise SystemExit(7)\n")
    for code, sig, expected, out in ((handled, signal.SIGINT, 7, "stopped\n"),
                                     ("import time; time.sleep(60)", signal.SIGINT, -signal.SIGINT, ""),
                                     ("import time; time.sleep(60)", signal.SIGKILL, -signal.SIGKILL, "")):
        ready = tmp_path / f"{sig}{expected}"
        proc = warm_python.Popen([PY, "-c", f"open({str(ready)!r}, 'w').close()\n{code}"], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        while not ready.exists():
            assert proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(sig)
        assert proc.communicate(timeout=30)[0] == out and proc.returncode == expected


def test_a_new_session_is_killed_with_what_it_started(tmp_path):
    pids = tmp_path / "pids"
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pids)!r}, 'w').write(str(child.pid))\ntime.sleep(60)\n")
    proc = warm_python.Popen([PY, "-c", code], start_new_session=True)
    while not pids.exists() or not pids.read_text():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    grandchild = int(pids.read_text())
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{grandchild}") and "Z" not in open(f"/proc/{grandchild}/stat").read().split()[2]:
        assert time.monotonic() < deadline, "the process group outlived its kill"
        time.sleep(0.01)


def test_output_to_files_and_merged_streams(tmp_path):
    with open(tmp_path / "out", "w") as out:
        proc = warm_python.Popen([PY, "-c", "import sys; print('a'); sys.stdout.flush(); print('b', file=sys.stderr)"],
                                 stdout=out, stderr=subprocess.STDOUT)
    assert proc.wait(timeout=60) == 0
    assert (tmp_path / "out").read_text() == "a\nb\n"


def test_a_timeout_kills_the_run():
    began = time.monotonic()
    try:
        warm_python.run([PY, "-c", "import time; time.sleep(60)"], timeout=0.5)
    except subprocess.TimeoutExpired:
        pass
    else:
        raise AssertionError("no timeout")
    assert time.monotonic() - began < 30


def test_what_a_fork_cannot_stand_for_runs_in_a_fresh_process():
    launcher = warm_python.launcher()
    assert launcher.can_run([PY, "generate.py"], None) and launcher.can_run([PY, "-c", "pass"], None)
    assert not launcher.can_run(["bash", "x.sh"], None) and not launcher.can_run([PY, "-m", "pytest"], None)
    threads = {**os.environ, "OMP_NUM_THREADS": str(int(os.environ["OMP_NUM_THREADS"]) + 1)}
    assert not launcher.can_run([PY, "generate.py"], threads)
    assert launcher.can_run([PY, "generate.py"], {**os.environ, "ANYTHING_ELSE": "1"})
    # Read when torch loads, so a fresh process (subprocess.Popen) is what gives it to the child.
    result = warm_python.run([PY, "-c", "import torch; print(torch.get_num_threads())"], env=threads,
                             capture_output=True, text=True, timeout=60)
    assert int(result.stdout) == int(threads["OMP_NUM_THREADS"])
