"""Script runs for the tests that start in milliseconds: `python SCRIPT.py ARGS` (or `python -c
CODE ARGS`) as a child forked from a Python that has imported torch and the project once.

Each run is still a process of its own, with its own pid, working folder, environment, stdin,
stdout and stderr, exit code and signals, so tests check the same process boundary they would
with subprocess; what the child skips is the second or two that every new Python spends
importing torch, over eighty times a session. `Popen` and `run` take subprocess's arguments.

A run goes to a real `subprocess.Popen` when the warm Python cannot stand for a fresh one:
another program than this Python, `-m`, or an environment that differs in what is read when
torch or Python loads (OpenMP's and MKL's settings, PYTHON*, LD_*), which a fork would keep
from the warm Python. Off Linux, or with MUSER_TESTS_COLD=1, every run is a fresh process.

The warm Python (`serve`) is single-threaded and never runs a torch operation, so forking it is
safe; it forks one child per request, hands it the caller's file descriptors, and reports each
child's exit status back over a socket.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the warm Python imports before it forks: every script, hence everything they import.
PRELOAD = ("torch", "numpy", "MusER", "Prior_train", "VQ_explore", "generate", "reproduce", "compute_metrics",
           "element_transfer", "train_evaluator", "convert_checkpoint", "prepare_data")
# Environment read when Python, torch or its libraries load: a child must not differ in them.
LOAD_TIME_ENV = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "PYTHON", "LD_", "MALLOC_", "CUDA_", "TORCH_")
MAX_MESSAGE = 1 << 20
# Forking a Python that has imported torch is what Linux's multiprocessing does by default.
AVAILABLE = sys.platform == "linux" and not os.environ.get("MUSER_TESTS_COLD")


def _load_time(env) -> dict:
    return {k: v for k, v in env.items() if k.startswith(LOAD_TIME_ENV)}


# ---------------------------------------------------------------------------- the warm Python

def _exit_code(exc: SystemExit) -> int:
    """What Python's own exit does with a SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _print_exception(exc: BaseException) -> None:
    """The traceback Python prints, without the frames of this module and runpy."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, runpy.__file__):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _child(request: dict, fds: list[int], closing: list[int]) -> None:
    """In the forked child: become `python ARGV` and never return."""
    code, interrupted = 1, False
    try:
        for fd in closing:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if request["new_session"]:
            os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        try:
            if argv[0] == "-c":
                sys.argv, sys.path[0] = ["-c", *argv[2:]], ""
                main = types.ModuleType("__main__")
                main.__dict__["__builtins__"] = __builtins__
                sys.modules["__main__"] = main
                exec(compile(argv[1], "<string>", "exec"), main.__dict__)
            else:
                script = os.path.abspath(argv[0])
                sys.argv, sys.path[0] = list(argv), os.path.dirname(script)
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except KeyboardInterrupt as exc:
            _print_exception(exc)
            interrupted = True
        except BaseException as exc:
            _print_exception(exc)
            code = 1
        threading._shutdown()          # what the interpreter does at exit: join non-daemon threads
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if interrupted:                # as Python does: exit by the signal, so the parent sees -SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(code)


def serve(fd: int) -> None:
    """The warm Python: imports PRELOAD, then forks a child for each request on socket fd."""
    for name in PRELOAD:
        importlib.import_module(name)
    sys.stdout.flush()
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)

    def send(message: dict) -> None:
        sock.sendall(json.dumps(message).encode())

    while True:
        try:
            ready, _, _ = select.select([sock, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                send({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})
        if sock in ready:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 3)
            if not data:
                return                                  # the tests have ended
            request = json.loads(data)
            try:
                pid = os.fork()
            except OSError as exc:
                for received in fds:
                    os.close(received)
                send({"id": request["id"], "error": str(exc)})
                continue
            if pid == 0:
                _child(request, fds, [sock.fileno(), wake_r, wake_w])
            for received in fds:
                os.close(received)
            send({"id": request["id"], "pid": pid})


# ---------------------------------------------------------------------------- the tests' side

class Launcher:
    """The tests' end of the warm Python: starts it, sends requests, follows exits."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.env = dict(os.environ)
        self.server = subprocess.Popen([sys.executable, "-c", "import sys; from tests.warm_python import serve; "
                                        "serve(int(sys.argv[1]))", str(theirs.fileno())],
                                       cwd=ROOT, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, env=self.env)
        theirs.close()
        self.sock = ours
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._started: dict[int, object] = {}        # request id -> pid, or the error text
        self._exits: dict[int, int] = {}
        self._next = 0
        self._gone = False
        threading.Thread(target=self._read, name="warm python replies", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            with self._changed:
                if not data:
                    self._gone = True
                else:
                    message = json.loads(data)
                    if "returncode" in message:
                        self._exits[message["pid"]] = message["returncode"]
                    else:
                        self._started[message["id"]] = message.get("pid", message.get("error"))
                        self._exits.pop(message.get("pid"), None)       # a reused pid's old exit
                self._changed.notify_all()
            if not data:
                return

    def can_run(self, args, env) -> bool:
        args = [str(a) for a in args]
        if len(args) < 2 or args[0] != sys.executable:
            return False
        if args[1] != "-c" and not (args[1].endswith(".py") and not args[1].startswith("-")):
            return False
        return _load_time(os.environ if env is None else env) == _load_time(self.env)

    def start(self, args, cwd, env, fds, new_session: bool) -> int:
        with self._lock:
            self._next += 1
            ident = self._next
            request = {"id": ident, "argv": [str(a) for a in args[1:]], "cwd": str(Path(cwd or os.getcwd()).resolve()),
                       "env": dict(os.environ if env is None else env), "new_session": bool(new_session)}
            socket.send_fds(self.sock, [json.dumps(request).encode()], fds)
        with self._changed:
            self._changed.wait_for(lambda: ident in self._started or self._gone)
            if ident not in self._started:
                raise RuntimeError("the warm Python has ended")
            pid = self._started.pop(ident)
        if isinstance(pid, str):
            raise OSError(f"the warm Python could not fork: {pid}")
        return pid

    def wait(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._gone, timeout)
            if pid not in self._exits and self._gone:
                raise RuntimeError("the warm Python has ended")
            return self._exits.get(pid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)     # wakes the reader thread; the warm Python sees the end
            self.sock.close()


_launcher: Launcher | None = None
_launcher_lock = threading.Lock()


def launcher() -> Launcher:
    """The session's warm Python, started on first use."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = Launcher()
            atexit.register(_launcher.close)
        return _launcher


def _fd(spec, default: int, pipes: list, devnull: list) -> tuple[int, object]:
    """The file descriptor a child gets for one of subprocess's stdin/stdout/stderr arguments,
    and the caller's end of a pipe (or None)."""
    if spec is None:
        return default, None
    if spec == subprocess.DEVNULL:
        if not devnull:
            devnull.append(os.open(os.devnull, os.O_RDWR))
        return devnull[0], None
    if spec == subprocess.PIPE:
        read, write = os.pipe()
        pipes.append(write)
        return write, read
    return (spec if isinstance(spec, int) else spec.fileno()), None


class WarmPopen:
    """A warm child with subprocess.Popen's methods that the tests use."""

    def __init__(self, args, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False,
                 start_new_session=False):
        self.args, self.returncode = args, None
        pipes, devnull, out, err = [], [], None, None
        try:
            fd_in, _ = _fd(stdin if stdin is not None else subprocess.DEVNULL, 0, pipes, devnull)
            fd_out, out = _fd(stdout, 1, pipes, devnull)
            if stderr == subprocess.STDOUT:
                fd_err = fd_out
            else:
                fd_err, err = _fd(stderr, 2, pipes, devnull)
            self.pid = launcher().start(args, cwd, env, [fd_in, fd_out, fd_err], start_new_session)
        except BaseException:
            for fd in (out, err):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in (*pipes, *devnull):
                os.close(fd)
        self.stdin = None
        self.stdout = os.fdopen(out, "r" if text else "rb") if out is not None else None
        self.stderr = os.fdopen(err, "r" if text else "rb") if err is not None else None

    def poll(self):
        if self.returncode is None:
            self.returncode = launcher().wait(self.pid, 0)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            self.returncode = launcher().wait(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def communicate(self, input=None, timeout=None):
        """(stdout, stderr) read to their ends, then the exit awaited (as subprocess does)."""
        if input:
            raise ValueError("the warm Python gives its children no stdin to write to")
        read = {}

        def drain(name, stream):
            read[name] = stream.read()
            stream.close()

        threads = [threading.Thread(target=drain, args=(name, stream), daemon=True)
                   for name, stream in (("out", self.stdout), ("err", self.stderr)) if stream is not None]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout)
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(timeout)
        return read.get("out"), read.get("err")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()


def start() -> None:
    """Start the warm Python now (it imports for a few seconds), where there is one."""
    if AVAILABLE:
        launcher()


def Popen(args, **kwargs):
    """subprocess.Popen, from the warm Python when it can stand for a fresh one."""
    if AVAILABLE and launcher().can_run(args, kwargs.get("env")):
        return WarmPopen(args, **kwargs)
    return subprocess.Popen(args, **kwargs)


def run(args, *, capture_output=False, timeout=None, check=False, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run, from the warm Python when it can stand for a fresh one."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with Popen(args, **kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    result = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result
