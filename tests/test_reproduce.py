"""reproduce.py end to end on the shipped sample (tiny preset): the report, skipped stages on
a second run, redone stages when an input changes, and a killed study that resumes."""
import json
import math
import re
import subprocess
import sys

import pytest

from run.checkpoint import load_checkpoint
from tests.conftest import ROOT
from tests.long_runs import STUDY, STUDY_EPOCHS


pytestmark = pytest.mark.slow    # each test starts reproduce.py; the study fixture runs a whole study


def run_study(npz, out, *extra, check=True):
    result = subprocess.run([sys.executable, "reproduce.py", *STUDY, "--data_path", str(npz),
                             "--out", str(out), *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def table_after(text: str, heading: str) -> list[list[str]]:
    """Rows of the first markdown table after a line containing `heading`."""
    at = text.index(heading)
    lines = text[text.rfind("\n", 0, at) + 1:].splitlines()      # from the start of its line
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def finite(cell: str) -> bool:
    number = re.match(r"\**(-?\d+(\.\d+)?)", cell)
    return bool(number) and math.isfinite(float(number.group(1)))


@pytest.fixture(scope="module")
def study(long_runs):
    """The session's study (tests/long_runs.py), killed while MusER trained and run again to
    the end: the report tests below read a resumed study."""
    run = long_runs.result("study")
    return run.npz, run.out, run.resumed, run.after_kill


def test_study_writes_a_report_with_finite_tables(study):
    _, out, resumed, after_kill = study
    text = (out / "REPORT.md").read_text()
    for heading in ("Codes in use per epoch", "## Latent space", "diagonal share, per piece",
                    "Song-level metrics", "How often a piece is classified", "## Element transfer"):
        rows = table_after(text, heading)
        assert rows, heading
    usage = table_after(text, "Codes in use per epoch")
    assert len(usage) == STUDY_EPOCHS and all(finite(c) for row in usage for c in row)   # a row per epoch
    shares = table_after(text, "diagonal share, per piece")
    assert [r[0] for r in shares] == ["MusER_TRANS_CA_GE", "VQVAE_TRANS_CA_GE"]
    assert all(finite(c) for r in shares for c in r[1:])
    silhouettes = table_after(text, "## Latent space")
    assert len(silhouettes) == 16 and all(finite(c) for r in silhouettes for c in r[2:])
    transfers = table_after(text, "## Element transfer")
    assert len(transfers) == 12
    for name in ("training.png", "probe.png"):
        assert (out / name).stat().st_size > 1000
    for model in ("MusER_TRANS_CA_GE", "VQVAE_TRANS_CA_GE"):
        probe = json.loads((out / "measures" / f"probe_{model}.json").read_text())
        assert len(probe["piece_r2"]) == 7 and len(probe["step_skill"][0]) == 7
        assert (out / "figures" / model / "tsne_all.png").exists()
    assert "## What holds at this scale" in text
    # The evaluator, then 7 stages per model: each done once over the killed and the resumed run.
    assert after_kill.output.count("] done in") + resumed.stdout.count("] done in") == 15


def test_second_run_skips_every_finished_stage(study):
    npz, out, *_ = study
    markers = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    second = run_study(npz, out, "--jobs", "1")        # the stages in process (the next test: in workers)
    assert "started" not in second.stdout and "continuing" not in second.stdout
    assert second.stdout.count("skipped") == len(markers)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")} == markers


def test_changed_input_redoes_only_the_stages_it_feeds(study):
    npz, out, *_ = study
    third = run_study(npz, out, "--pairs", "1")
    redone = set(re.findall(r"\[(\w+)\] started", third.stdout))
    assert redone == {"transfer_MusER_TRANS_CA_GE", "transfer_VQVAE_TRANS_CA_GE"}
    transfer = json.loads((out / "measures" / "transfer_MusER_TRANS_CA_GE.json").read_text())
    assert transfer[0]["pairs"] == 1


def test_killed_study_resumes(study):
    """The study fixture was killed while MusER trained: the stage was marked started, not
    finished; the next run continued it from last.pt (--resume) and finished the study, whose
    report the test above reads."""
    _, out, resumed, after_kill = study
    assert after_kill.started and not after_kill.finished
    assert "[evaluator] done in" in after_kill.output
    assert "[evaluator] finished earlier" in resumed.stdout
    assert "[train_MusER_TRANS_CA_GE] continuing" in resumed.stdout
    log = (out / "logs" / "train_MusER_TRANS_CA_GE.log").read_text()
    assert "--resume" in log and "resumed from" in log
    trained = load_checkpoint(out / "models" / "MusER_TRANS_CA_GE" / "last.pt", "muser")
    assert [row["epoch"] for row in trained["history"]] == list(range(1, STUDY_EPOCHS + 1))
    assert (out / "stages" / "train_MusER_TRANS_CA_GE.json").exists()
    assert not list((out / "stages").glob("*.started"))


def test_bad_input_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "reproduce.py", "--preset", "tiny", "--data_path",
                             str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing.npz" in result.stderr


def test_export_pretrained_is_small_and_generates(study, tmp_path):
    import torch

    from run.pretrained import export

    _, out, *_ = study
    written = export(out, "MusER_TRANS_CA_GE", tmp_path / "pretrained")
    small = load_checkpoint(tmp_path / "pretrained" / "muser.pt", "muser")
    full = load_checkpoint(out / "models" / "MusER_TRANS_CA_GE" / "best.pt", "muser")
    assert "optimizer" not in small and small["stored_dtype"] == "float16"
    for name, tensor in full["model"].items():
        if name.startswith("quantizer."):
            assert torch.equal(small["model"][name], tensor)          # the codebook stays exact
        elif tensor.is_floating_point():
            assert small["model"][name].dtype == torch.float16
            assert torch.equal(small["model"][name], tensor.half())
    assert sum(p.stat().st_size for p in written) < 0.7 * sum(
        (out / "models" / m / "best.pt").stat().st_size for m in ("MusER_TRANS_CA_GE", "Prior_MusER_TRANS_CA_GE"))
    result = subprocess.run([sys.executable, "generate.py", "--VQ_prior", str(written[1]), "--VQ_VAE", str(written[0]),
                             "--music_file", "p", "--out_root", str(tmp_path / "gen"), "--n_per_emotion", "1",
                             "--audio", "False"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-1500:]
    assert len(list((tmp_path / "gen" / "p").glob("*.mid"))) == 4
