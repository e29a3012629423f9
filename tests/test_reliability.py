"""Reliability: killed, interrupted and failing runs keep their checkpoints; bad input gets one
clear line; diverging training stops; the same seed gives the same files. Tiny preset, CPU."""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import miditoolkit
import numpy as np
import pytest
import torch
from miditoolkit.midi.containers import Instrument, Note

import compute_metrics
import element_transfer
import generate
import MusER
import prepare_data
import Prior_train
import VQ_explore
from tests.conftest import ROOT, SAMPLE_MIDI_DIR
from tests import warm_python
from music import cp
from run.checkpoint import load_checkpoint
from run.cli import run_main
from music.data import load_cp_dataset
from music.errors import UserError

pytestmark = pytest.mark.usefixtures("no_loss_curves")   # tests/conftest.py

TINY = ["--preset", "tiny", "--device", "cpu"]
FAST = ["--lr", "3e-3", "--batch_size", "8"]
SAMPLE_FILES = sorted(SAMPLE_MIDI_DIR.glob("*.mid"))


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def visible_lines(text: str) -> list[str]:
    """The non-empty lines a terminal shows (a progress bar redrawn with '\\r' shows its last state)."""
    lines = (line.rsplit("\r", 1)[-1].strip() for line in text.split("\n"))
    return [line for line in lines if line]


def run(capsys, script, argv) -> tuple[int, str, list[str]]:
    """Run a script's entry point as its command line does: (exit code, stdout, stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(script.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return exit_info.value.code, out, visible_lines(err)


def only_error_line(lines: list[str]) -> str:
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def start(tmp_path: Path, name: str, script: str, argv, cwd: Path = ROOT) -> subprocess.Popen:
    """Start `python SCRIPT ARGV` with stdout/stderr in files (a full pipe would block the child)."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        return warm_python.Popen([sys.executable, *([str(ROOT / script)] if script else []), *map(str, argv)],
                                cwd=cwd, stdout=stdout, stderr=stderr)


def output(tmp_path: Path, name: str) -> tuple[str, str]:
    return (tmp_path / f"{name}.out").read_text(), (tmp_path / f"{name}.err").read_text()


def wait_until(condition, proc: subprocess.Popen, what: str, limit: float = 300.0) -> None:
    """Poll `condition` while `proc` runs; fail (with a reason) if it exits first or hangs."""
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def finite(checkpoint: dict) -> bool:
    return all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def write_renumbered(npz: Path, out_dir: Path) -> Path:
    """The same data with two pitch entries of the dictionary swapped (and the words remapped):
    consistent in itself and of the same sizes, but not the numbering a model learned."""
    event2word, word2event = cp.load_dictionary(npz.parent / "dictionary.pkl")
    pitch = event2word["pitch"]
    a, b = sorted(pitch.values())[1:3]
    value_a, value_b = word2event["pitch"][a], word2event["pitch"][b]
    pitch[value_a], pitch[value_b] = b, a
    word2event["pitch"][a], word2event["pitch"][b] = value_b, value_a
    arrays = dict(np.load(npz))
    for key in ("x", "y"):
        column = arrays[key][..., 4].copy()
        arrays[key][..., 4][column == a], arrays[key][..., 4][column == b] = b, a
    out_dir.mkdir()
    np.savez(out_dir / "emopia_data.npz", **arrays)
    cp.save_dictionary(out_dir / "dictionary.pkl", event2word, word2event)
    return out_dir / "emopia_data.npz"


def prepare(midi_dir: Path, out_dir: Path) -> Path:
    assert prepare_data.main(["--midi_dir", str(midi_dir), "--out_dir", str(out_dir), "--workers", "1"]) == 0
    return out_dir / "emopia_data.npz"


def train_chain(work: Path, npz: Path) -> SimpleNamespace:
    """MusER -> VQ_explore -> Prior_train, tiny, two epochs each, in process (default seed)."""
    chain = SimpleNamespace(muser=work / "muser", vq_dict=work / "vq_dict.data", prior=work / "prior")
    assert MusER.main(["--data_path", str(npz), "--model_path", str(chain.muser), "--Epoch", "2",
                       *FAST, *TINY]) == 0
    assert VQ_explore.main(["--data_path", str(npz), "--VQ_VAE", str(chain.muser), "--plot_flag", "False",
                            "--vq_dict_path", str(chain.vq_dict), "--device", "cpu"]) == 0
    assert Prior_train.main(["--data_path", str(npz), "--VQ_VAE", str(chain.muser), "--vq_dict_path",
                             str(chain.vq_dict), "--model_path", str(chain.prior), "--Epoch", "2",
                             *FAST, *TINY]) == 0
    return chain


@pytest.fixture(scope="module")
def runs(sample_npz, tmp_path_factory):
    """The sample data, data with other dictionaries, a trained chain and a second VQ-VAE."""
    work = tmp_path_factory.mktemp("reliability")
    shutil.copytree(sample_npz.parent, work / "data")        # the session's sample, a copy to run in
    npz = work / "data" / sample_npz.name
    q1_only = work / "q1_midis"
    q1_only.mkdir()
    for path in SAMPLE_FILES[:8]:
        shutil.copy(path, q1_only)
    other_npz = prepare(q1_only, work / "other_data")      # a smaller dictionary
    renumbered_npz = write_renumbered(npz, work / "renumbered")
    chain = train_chain(work, npz)
    other_muser = work / "other_muser"
    assert MusER.main(["--data_path", str(npz), "--model_path", str(other_muser), "--Epoch", "1",
                       "--seed", "7", *FAST, *TINY]) == 0
    other_vq_dict = work / "other_vq_dict.data"
    assert VQ_explore.main(["--data_path", str(npz), "--VQ_VAE", str(other_muser), "--plot_flag", "False",
                            "--vq_dict_path", str(other_vq_dict), "--device", "cpu"]) == 0
    return SimpleNamespace(work=work, npz=npz, other_npz=other_npz, renumbered_npz=renumbered_npz,
                           muser=chain.muser, vq_dict=chain.vq_dict, prior=chain.prior,
                           other_muser=other_muser, other_vq_dict=other_vq_dict)


def prior_args(r) -> list:
    return ["--data_path", r.npz, "--VQ_VAE", r.muser, "--vq_dict_path", r.vq_dict]


def script_args(r, script: str) -> list:
    return ["--data_path", r.npz] if script == "MusER.py" else prior_args(r)


# ---------------------------------------------------------------------------------------
# interrupted training
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", ["MusER.py", "Prior_train.py"])
def test_hard_kill_then_ctrl_c_then_resume_finishes_the_run(runs, tmp_path, script):
    run_dir = tmp_path / "run"
    last = run_dir / "last.pt"
    argv = [*script_args(runs, script), "--model_path", run_dir, "--Epoch", 4, "--batch_size", 4, *TINY]

    # SIGKILL once epoch 1's last.pt is written and epoch 2 trains (its progress bar is up).
    proc = start(tmp_path, "killed", script, argv)
    wait_until(lambda: "epoch 2/4" in output(tmp_path, "killed")[1], proc, "epoch 2 started")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed = load_checkpoint(last)              # whole and loadable: writes are atomic
    assert 1 <= killed["epoch"] < 4 and killed["batch"] == 0 and finite(killed)

    # --resume; Ctrl-C once it trains (the progress bar of its first epoch is up).
    proc = start(tmp_path, "interrupted", script, [*argv, "--resume"])
    wait_until(lambda: f"epoch {killed['epoch'] + 1}/4" in output(tmp_path, "interrupted")[1], proc,
               "the resumed run trains")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    stdout, stderr = output(tmp_path, "interrupted")
    assert f"resumed from {last} at epoch {killed['epoch']}" in stdout
    assert "stop requested" in stderr and re.search(r"stopped (at|after) epoch \d+.*continue with --resume", stdout)
    assert "Traceback" not in stderr
    stopped = load_checkpoint(last)
    assert (stopped["epoch"], stopped["batch"]) > (killed["epoch"], 0)

    # --resume again runs to the end, with one history row per epoch.
    module = MusER if script == "MusER.py" else Prior_train
    assert module.main([str(a) for a in (*argv, "--resume")]) == 0
    final = load_checkpoint(last)
    assert (final["epoch"], final["batch"]) == (4, 0) and finite(final)
    assert [row["epoch"] for row in final["history"]] == [1, 2, 3, 4]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 5
    assert temporaries(run_dir) == []


HANG_IN_THIRD_SAVE = r"""
import io, sys, time
import torch
import MusER
import run.training as training
from music.atomic import atomic_write
from run.cli import run_main

sentinel, saves, real_save = sys.argv[1], [], training.save_checkpoint

def save(path, checkpoint):
    # Epoch 1 writes last.pt and best.pt; the third save is epoch 2's last.pt: write half
    # of it into the temporary file, then hang there until killed.
    saves.append(path)
    if len(saves) < 3:
        return real_save(path, checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    def write(handle):
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
        open(sentinel, "w").close()
        time.sleep(600)
    atomic_write(path, write)

training.save_checkpoint = save
run_main(MusER.main, sys.argv[2:])
"""


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(runs, tmp_path):
    run_dir, sentinel = tmp_path / "run", tmp_path / "writing"
    argv = ["--data_path", runs.npz, "--model_path", run_dir, "--Epoch", 3, *FAST, *TINY]
    proc = start(tmp_path, "killed", "", ["-c", HANG_IN_THIRD_SAVE, sentinel, *argv])
    wait_until(sentinel.exists, proc, "the epoch 2 checkpoint write")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert len(temporaries(run_dir)) == 1          # the half-written file, never renamed
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    assert MusER.main([str(a) for a in (*argv, "--resume")]) == 0
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 3
    assert temporaries(run_dir) == []               # the stale temporary file is cleaned up


class SignalAtStep:
    """Wraps a training step function; sends this process SIGINT during step number `at`."""

    def __init__(self, step_fn, at: int):
        self.step_fn, self.at, self.calls = step_fn, at, 0

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.step_fn(model, batch)


@pytest.mark.parametrize("module,step_name", [(MusER, "muser_step"), (Prior_train, "prior_step")])
def test_ctrl_c_mid_epoch_then_resume_gives_the_uninterrupted_weights(runs, tmp_path, capsys, monkeypatch,
                                                                      module, step_name):
    args = [*script_args(runs, "MusER.py" if module is MusER else "Prior_train.py"),
            "--Epoch", "2", "--batch_size", "4", "--lr", "3e-3", *TINY]   # 8 steps per epoch
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert module.main([str(a) for a in (*args, "--model_path", straight)]) == 0

    monkeypatch.setattr(module, step_name, SignalAtStep(getattr(module, step_name), at=11))
    code, stdout, _ = run(capsys, module, [*args, "--model_path", interrupted])
    assert code == 0
    assert f"stopped at epoch 2, batch 3/8; saved {interrupted / 'last.pt'}; continue with --resume" in stdout
    saved = load_checkpoint(interrupted / "last.pt")
    assert (saved["epoch"], saved["batch"]) == (1, 3)
    monkeypatch.undo()

    assert module.main([str(a) for a in (*args, "--model_path", interrupted, "--resume")]) == 0
    a, b = load_checkpoint(interrupted / "last.pt"), load_checkpoint(straight / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["batch"] == b["batch"] == 0
    assert same_state(a["model"], b["model"])
    assert a["history"] == b["history"]
    assert all(same_state(a["optimizer"]["state"][k], b["optimizer"]["state"][k]) for k in b["optimizer"]["state"])


# ---------------------------------------------------------------------------------------
# failed writes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["read-only folder", "disk full"])
def test_failed_checkpoint_write_keeps_the_previous_one_and_says_so(runs, tmp_path, capsys, monkeypatch,
                                                                    failure):
    """From epoch 2 on, writing into the run folder fails: the folder became read-only
    (creating the temporary file fails) or the disk filled up (the write itself fails)."""
    run_dir = tmp_path / "run"
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync
    state = {"last_writes": 0, "broken": False}

    def mkstemp(*args, dir=None, prefix="", **kwargs):
        in_run_dir = dir is not None and Path(dir) == run_dir
        if in_run_dir and prefix.startswith(".last.pt."):
            state["last_writes"] += 1
            state["broken"] = state["last_writes"] >= 2
        if state["broken"] and in_run_dir and failure == "read-only folder":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, dir=dir, prefix=prefix, **kwargs)

    def fsync(fd):
        if state["broken"] and failure == "disk full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fsync", fsync)
    code, _, lines = run(capsys, MusER, ["--data_path", runs.npz, "--model_path", run_dir, "--Epoch", 3,
                                         *FAST, *TINY])
    monkeypatch.undo()
    reason = os.strerror(errno.EROFS if failure == "read-only folder" else errno.ENOSPC)
    assert code == 2
    assert only_error_line(lines) == f"error: cannot write {run_dir / 'last.pt'}: {reason} (the previous file is kept)"
    for name in ("last.pt", "best.pt"):
        checkpoint = load_checkpoint(run_dir / name, "muser")
        assert checkpoint["epoch"] == 1 and finite(checkpoint)
    assert temporaries(run_dir) == []


# ---------------------------------------------------------------------------------------
# non-finite loss
# ---------------------------------------------------------------------------------------
class NanGradient(torch.autograd.Function):
    """Identity forward (a finite loss), NaN gradients backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class BreakLossAtStep:
    def __init__(self, step_fn, at: int, how: str):
        self.step_fn, self.at, self.how, self.calls = step_fn, at, how, 0

    def __call__(self, model, batch):
        out = self.step_fn(model, batch)
        self.calls += 1
        if self.calls >= self.at:
            loss = out["loss"]
            out["loss"] = {"nan": loss * float("nan"), "inf": loss + float("inf"),
                           "nan gradient": NanGradient.apply(loss)}[self.how]
        return out


@pytest.mark.parametrize("how,at,message", [
    ("nan", 11, "loss became nan at epoch 2, batch 3"),
    ("inf", 11, "loss became inf at epoch 2, batch 3"),
    # A finite loss whose gradients are NaN, at the last step of an epoch: stepping on them
    # would save NaN weights as that epoch's last.pt.
    ("nan gradient", 16, "gradient norm became nan at epoch 2, batch 8"),
])
def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(runs, tmp_path, capsys, monkeypatch,
                                                                           how, at, message):
    monkeypatch.setattr(MusER, "muser_step", BreakLossAtStep(MusER.muser_step, at, how))
    run_dir = tmp_path / "run"
    code, _, stderr = run(capsys, MusER, ["--data_path", runs.npz, "--model_path", run_dir, "--Epoch", 3,
                                          "--batch_size", 4, "--lr", "3e-3", *TINY])
    assert code == 1
    assert only_error_line(stderr).startswith(
        f"error: {message}; training stopped, the last good checkpoint is kept in {run_dir}")
    for name in ("last.pt", "best.pt"):
        checkpoint = load_checkpoint(run_dir / name, "muser")
        assert checkpoint["epoch"] == 1 and finite(checkpoint)


# ---------------------------------------------------------------------------------------
# bad input: one line naming the file or flag and the problem, exit 2, traceback only with --debug
# ---------------------------------------------------------------------------------------
def copy_run(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def write_npz(tmp_path: Path, npz: Path, change) -> Path:
    arrays = dict(np.load(npz))
    change(arrays)
    folder = tmp_path / "broken"
    folder.mkdir()
    np.savez(folder / "emopia_data.npz", **arrays)
    shutil.copy(npz.parent / "dictionary.pkl", folder)
    return folder / "emopia_data.npz"


def cut(path: Path, tmp_path: Path, size=None, data=None) -> Path:
    target = tmp_path / "damaged.pt"
    target.write_bytes(path.read_bytes()[:size] if data is None else data)
    return target


def tpb_zero_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "generated"
    folder.mkdir()
    (folder / "emotion1_0.mid").write_bytes(with_division(SAMPLE_FILES[0], 0))
    return folder


def write_vq_dict(tmp_path: Path, vq_dict: dict) -> Path:
    path = tmp_path / "vq.data"
    path.write_bytes(pickle.dumps(vq_dict))
    return path


def truncate_last(run_dir: Path) -> Path:
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[:-100])
    return run_dir


# Each case: name -> (script, make(runs, tmp_path) -> (argv, fragments the error line must hold)).
BAD_INPUTS = {}


def bad_input(name: str, script):
    def register(make):
        BAD_INPUTS[name] = (script, make)
        return make
    return register


@bad_input("missing data file", MusER)
def _(r, t):
    missing = t / "nowhere" / "emopia_data.npz"
    return ["--data_path", missing, "--model_path", t / "run", *TINY], [f"{missing}: file not found"]


@bad_input("npz without mask", MusER)
def _(r, t):
    npz = write_npz(t, r.npz, lambda arrays: arrays.pop("mask"))
    return ["--data_path", npz, "--model_path", t / "run", *TINY], [f"{npz}: missing key(s) mask"]


@bad_input("npz with 7 fields", VQ_explore)
def _(r, t):
    npz = write_npz(t, r.npz, lambda arrays: arrays.update(x=arrays["x"][..., :7]))
    return (["--data_path", npz, "--VQ_VAE", r.muser, "--plot_flag", "False"],
            [f"{npz}: 'x' has shape (32, 1024, 7), expected [N, T, 8]"])


@bad_input("npz with y shorter than x", Prior_train)
def _(r, t):
    npz = write_npz(t, r.npz, lambda arrays: arrays.update(y=arrays["y"][:, :512]))
    return ([*prior_args(r), "--data_path", npz, "--model_path", t / "p"],
            [f"{npz}: 'y' has shape (32, 512, 8), expected (32, 1024, 8)"])


def other_dictionary(r) -> str:
    return f"{r.other_npz.parent / 'dictionary.pkl'}: vocabulary sizes"


@bad_input("other dictionary (VQ_explore)", VQ_explore)
def _(r, t):
    return (["--data_path", r.other_npz, "--VQ_VAE", r.muser, "--plot_flag", "False"],
            [other_dictionary(r), "do not match the model's"])


@bad_input("other dictionary (Prior_train)", Prior_train)
def _(r, t):
    return [*prior_args(r), "--data_path", r.other_npz, "--model_path", t / "p", *TINY], [other_dictionary(r)]


@bad_input("other dictionary (element_transfer)", element_transfer)
def _(r, t):
    return (["--VQ_VAE", r.muser, "--data_path", r.other_npz, "--demo", "--out_dir", t / "transfer",
             "--device", "cpu"], [other_dictionary(r)])


@bad_input("other dictionary (MusER --resume)", MusER)
def _(r, t):
    return (["--data_path", r.other_npz, "--model_path", copy_run(r.muser, t), "--resume", "--Epoch", 4, *TINY],
            [other_dictionary(r)])


@bad_input("renumbered dictionary of the same sizes", VQ_explore)
def _(r, t):
    return (["--data_path", r.renumbered_npz, "--VQ_VAE", r.muser, "--plot_flag", "False"],
            [f"{r.renumbered_npz.parent / 'dictionary.pkl'}: field 'pitch' does not match the dictionary "
             f"the model was trained with"])


PRIOR_AS_VQ_VAE = "--VQ_VAE needs a MusER VQ-VAE checkpoint, but this is a prior checkpoint"


@bad_input("prior as --VQ_VAE (VQ_explore)", VQ_explore)
def _(r, t):
    return ["--data_path", r.npz, "--VQ_VAE", r.prior], [f"{r.prior / 'best.pt'}: {PRIOR_AS_VQ_VAE}"]


@bad_input("prior as --VQ_VAE (Prior_train)", Prior_train)
def _(r, t):
    return (["--data_path", r.npz, "--VQ_VAE", r.prior, "--model_path", t / "p"],
            [f"{r.prior / 'best.pt'}: {PRIOR_AS_VQ_VAE}"])


@bad_input("prior as --VQ_VAE (generate)", generate)
def _(r, t):
    return ["--VQ_VAE", r.prior, "--VQ_prior", r.prior, "--out_root", t], [f"{r.prior / 'best.pt'}: {PRIOR_AS_VQ_VAE}"]


@bad_input("prior as --VQ_VAE (element_transfer)", element_transfer)
def _(r, t):
    return ["--VQ_VAE", r.prior, "--data_path", r.npz, "--demo"], [f"{r.prior / 'best.pt'}: {PRIOR_AS_VQ_VAE}"]


@bad_input("MusER checkpoint as --VQ_prior", generate)
def _(r, t):
    return (["--VQ_VAE", r.muser, "--VQ_prior", r.muser, "--out_root", t],
            [f"{r.muser / 'best.pt'}: --VQ_prior needs a prior checkpoint, but this is a MusER VQ-VAE checkpoint"])


@bad_input("VQ_dict of another VQ-VAE", Prior_train)
def _(r, t):
    return ([*prior_args(r), "--vq_dict_path", r.other_vq_dict, "--model_path", t / "p", *TINY],
            [f"{r.other_vq_dict}: this VQ_dict was made from another VQ-VAE"])


@bad_input("VQ_dict with codes outside the codebook", Prior_train)
def _(r, t):
    vq_dict = write_vq_dict(t, {0: {300: 0}, 1: {0: 300}})   # the authors' format: no fingerprint
    return ([*prior_args(r), "--vq_dict_path", vq_dict, "--model_path", t / "p", *TINY],
            [f"{vq_dict}: code 300 is outside the VQ-VAE's codebook of 32"])


@bad_input("VQ_dict whose maps disagree", Prior_train)
def _(r, t):
    vq_dict = write_vq_dict(t, {0: {3: 0, 5: 0}, 1: {0: 3}})
    return ([*prior_args(r), "--vq_dict_path", vq_dict, "--model_path", t / "p", *TINY],
            [f"{vq_dict}: not a valid VQ_dict"])


@bad_input("prior of another VQ-VAE (generate)", generate)
def _(r, t):
    return (["--VQ_VAE", r.other_muser, "--VQ_prior", r.prior, "--out_root", t],
            [f"{r.prior / 'best.pt'}: this prior was trained on the codes of another VQ-VAE"])


@bad_input("prior resumed with another VQ-VAE", Prior_train)
def _(r, t):
    return (["--data_path", r.npz, "--VQ_VAE", r.other_muser, "--vq_dict_path", r.other_vq_dict,
             "--model_path", copy_run(r.prior, t), "--resume", "--Epoch", 4, *TINY],
            [f"{t / 'prior' / 'last.pt'}: this prior was trained on the codes of another VQ-VAE"])


# Flags, checked before anything is loaded: the flags are the case's name.
for script, flags, message in [
        (generate, "--emotion 5", "--emotion 5: quadrants are 1, 2, 3 or 4"),
        (generate, "--emotion 0", "--emotion 0: quadrants are 1, 2, 3 or 4"),
        (generate, "--n_per_emotion 0", "--n_per_emotion must be positive, got 0"),
        (generate, "--n_per_emotion -3", "--n_per_emotion must be positive, got -3"),
        (generate, "--max_steps 0", "--max_steps must be positive, got 0"),
        (generate, "--pitch_top_p 0", "--pitch_top_p must be in (0, 1], got 0.0"),
        (MusER, "--batch_size 0", "--batch_size must be at least 1, got 0"),
        (MusER, "--Epoch 0", "--Epoch must be at least 1, got 0"),
        (Prior_train, "--lr -1", "--lr must be positive, got -1.0")]:
    bad_input(flags, script)(lambda r, t, flags=flags, message=message: (flags.split(), [message]))


@bad_input("truncated checkpoint", generate)
def _(r, t):
    damaged = cut(r.muser / "best.pt", t, size=3000)
    return (["--VQ_VAE", damaged, "--VQ_prior", r.prior, "--out_root", t],
            [f"{damaged}: not a readable checkpoint: the file is truncated"])


@bad_input("corrupt checkpoint", generate)
def _(r, t):
    damaged = cut(r.prior / "best.pt", t, data=np.random.default_rng(0).bytes(4096))
    return (["--VQ_VAE", r.muser, "--VQ_prior", damaged, "--out_root", t],
            [f"{damaged}: not a readable checkpoint: not a zip-format PyTorch checkpoint"])


@bad_input("empty checkpoint", VQ_explore)
def _(r, t):
    damaged = cut(r.muser / "best.pt", t, data=b"")
    return ["--VQ_VAE", damaged, "--data_path", r.npz], [f"{damaged}: not a readable checkpoint: the file is empty"]


@bad_input("truncated last.pt on --resume", MusER)
def _(r, t):
    run_dir = truncate_last(copy_run(r.muser, t))
    return (["--data_path", r.npz, "--model_path", run_dir, "--resume", *TINY],
            [f"{run_dir / 'last.pt'}: not a readable checkpoint"])


@bad_input("MIDI with 0 ticks per beat (compute_metrics)", compute_metrics)
def _(r, t):
    folder = tpb_zero_folder(t)
    return (["--generated", folder, "--out_dir", t / "metrics"],
            [f"{folder / 'emotion1_0.mid'}: unsupported time division (0 ticks per beat)"])


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_naming_the_problem(runs, tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)    # defaults (saved_models/, generate_midi/, data/) land here
    script, make = BAD_INPUTS[case]
    argv, fragments = make(runs, tmp_path)
    argv = [str(a) for a in argv]
    code, _, lines = run(capsys, script, argv)
    assert code == 2
    line = only_error_line(lines)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    with pytest.raises(UserError):   # --debug lets the exception (and its traceback) through
        run_main(script.main, [*argv, "--debug"])


# One case per script, run the way a user runs it: a separate process (two also with --debug).
SUBPROCESS_CASES = [("missing data file", True), ("renumbered dictionary of the same sizes", False),
                    ("prior as --VQ_VAE (Prior_train)", False), ("--emotion 5", True),
                    ("other dictionary (element_transfer)", False),
                    ("MIDI with 0 ticks per beat (compute_metrics)", False)]


@pytest.mark.slow
def test_bad_input_from_the_command_line(runs, tmp_path):
    procs = []
    for i, (case, also_debug) in enumerate(SUBPROCESS_CASES):
        script, make = BAD_INPUTS[case]
        folder = tmp_path / str(i)
        folder.mkdir()
        argv, fragments = make(runs, folder)
        for debug in (False, True) if also_debug else (False,):
            while sum(proc.poll() is None for *_, proc in procs) >= 3:   # a few at a time
                time.sleep(0.05)
            name = f"{i}{'debug' if debug else ''}"
            proc = start(tmp_path, name, Path(script.__file__).name, [*argv, *(["--debug"] if debug else [])],
                         cwd=folder)
            procs.append((case, debug, name, fragments, proc))
    for case, debug, name, expected, proc in procs:
        assert proc.wait(timeout=120) != 0, case
        _, stderr = output(tmp_path, name)
        if debug:
            assert "Traceback (most recent call last)" in stderr and "UserError" in stderr, (case, stderr)
        else:
            assert proc.returncode == 2 and "Traceback" not in stderr, (case, stderr)
            line = only_error_line(visible_lines(stderr))
            assert all(fragment in line for fragment in expected), (case, line)


# ---------------------------------------------------------------------------------------
# pathological MIDI for prepare_data.py
# ---------------------------------------------------------------------------------------
def with_division(source: Path, division: int) -> bytes:
    """A MIDI file with its header's time division field (bytes 12-13) replaced."""
    data = bytearray(source.read_bytes())
    assert data[:4] == b"MThd"
    data[12:14] = struct.pack(">H", division)
    return bytes(data)


def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append((n & 0x7F) | 0x80)
    return bytes(reversed(out))


def one_track_midi(events: bytes, tpb: int = 480) -> bytes:
    track = events + vlq(0) + b"\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpb) + b"MTrk" + struct.pack(">I", len(track)) + track


def test_pathological_midi_files_are_skipped_with_a_reason_or_encoded(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(SAMPLE_FILES[0], clips)
    (clips / "Q1_zero_tpb.mid").write_bytes(with_division(SAMPLE_FILES[1], 0))
    (clips / "Q2_smpte.mid").write_bytes(with_division(SAMPLE_FILES[9], 0xE728))  # -25 fps x 40: negative
    (clips / "Q3_one_tpb.mid").write_bytes(with_division(SAMPLE_FILES[17], 1))    # legal, very coarse
    # A note still sounding when the track ends, next to a complete one.
    (clips / "Q4_open_note.mid").write_bytes(one_track_midi(
        vlq(0) + b"\x90\x3c\x50" + vlq(480) + b"\x90\x40\x50" + vlq(480) + b"\x80\x40\x00"))
    # Two notes 140,000 bars apart: the words stop at the 1022-word limit, quickly.
    far = miditoolkit.MidiFile(ticks_per_beat=480)
    piano = Instrument(program=0, is_drum=False)
    piano.notes = [Note(velocity=80, pitch=60, start=0, end=240),
                   Note(velocity=80, pitch=62, start=0x0FFFFF00, end=0x0FFFFFF0)]
    far.instruments = [piano]
    far.dump(str(clips / "Q1_far_apart.mid"))

    result = warm_python.run([sys.executable, str(ROOT / "prepare_data.py"), "--midi_dir", str(clips),
                             "--out_dir", str(tmp_path / "out"), "--workers", "1", "--sync", "none"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"skipped: {clips / 'Q1_zero_tpb.mid'}: unsupported time division (0 ticks per beat)" in result.stderr
    assert f"skipped: {clips / 'Q2_smpte.mid'}: unsupported time division (-6360 ticks per beat)" in result.stderr
    assert "skipped 2 clip(s)" in result.stdout
    data = load_cp_dataset(tmp_path / "out" / "emopia_data.npz")
    assert sorted(data.names) == sorted([SAMPLE_FILES[0].name, "Q3_one_tpb.mid", "Q4_open_note.mid",
                                         "Q1_far_apart.mid"])
    rows = dict(zip(data.names, data.seq_len))
    assert rows["Q1_far_apart.mid"] == cp.MAX_WORDS - 1
    note = data.event2word["type"]["Note"]
    open_note = data.x[list(data.names).index("Q4_open_note.mid")]
    assert (open_note[: rows["Q4_open_note.mid"], 3] == note).sum() == 1   # the complete note only


def test_notes_ending_before_they_start_are_left_out_with_a_warning():
    """A MidiFile built in memory can hold them (a parsed file cannot); their duration would
    otherwise become a negative token."""
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    piano = Instrument(program=0, is_drum=False)
    piano.notes = [Note(velocity=80, pitch=60, start=0, end=480), Note(velocity=80, pitch=62, start=960, end=500),
                   Note(velocity=80, pitch=64, start=1000, end=1000)]
    midi.instruments = [piano]
    piece = cp.encode_midi(midi, emotion=1)
    notes = [e for e in piece.events if e[3] == "Note"]
    assert [(e[4], e[5]) for e in notes] == [("Note_Pitch_60", "Note_Duration_480"),
                                             ("Note_Pitch_64", "Note_Duration_0")]
    assert any("1 note(s) ending before they start ignored" in w for w in piece.warnings)
    piano.notes = piano.notes[1:2]
    with pytest.raises(UserError, match="no notes"):
        cp.encode_midi(midi, emotion=1)


# ---------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------
def test_same_seed_gives_the_same_checkpoints_and_byte_identical_midi(runs, tmp_path):
    again = train_chain(tmp_path, runs.npz)
    for first, second in ((runs.muser, again.muser), (runs.prior, again.prior)):
        a, b = load_checkpoint(first / "last.pt"), load_checkpoint(second / "last.pt")
        assert same_state(a["model"], b["model"]) and a["history"] == b["history"]
    assert pickle.loads(runs.vq_dict.read_bytes()) == pickle.loads(again.vq_dict.read_bytes())
    for name, chain in (("a", runs), ("b", again)):
        assert generate.main(["--VQ_prior", str(chain.prior), "--VQ_VAE", str(chain.muser), "--music_file", name,
                              "--out_root", str(tmp_path / "generated"), "--n_per_emotion", "2",
                              "--max_steps", "24", "--device", "cpu", "--piano_rolls", "False",
                              "--audio", "False"]) == 0
    files = sorted(p.name for p in (tmp_path / "generated" / "a").glob("*.mid"))
    assert len(files) == 8
    for name in files:
        assert (tmp_path / "generated" / "a" / name).read_bytes() == (tmp_path / "generated" / "b" / name).read_bytes()
