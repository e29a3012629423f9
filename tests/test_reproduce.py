"""reproduce.py end to end on the shipped sample (tiny preset): the report from the measure
files alone, skipped stages on a second run, redone stages when an input changes, a killed
study that resumes, and the committed report regenerated from its committed files."""
import filecmp
import json
import math
import re
import shutil
import sys

import pytest

from evaluation.verdicts import PRODUCT_BASELINE, PRODUCT_MODEL, PRODUCT_RULES
from run.checkpoint import load_checkpoint
from run.study import committed_files
from run.study_report import StudyFiles, transpose_sections
from tests.conftest import ROOT
from tests import warm_python
from tests.long_runs import COMMITTED_STUDY, STUDY_EPOCHS

pytestmark = pytest.mark.slow    # each test starts reproduce.py; the study fixture runs a whole study

MODELS = ("MusER_TRANS_CA_GE", "VQVAE_TRANS_CA_GE")
MODEL_STAGES = ("train", "codes", "silhouettes", "prior", "generate", "generation", "latent", "interventions",
                "decoded")


def report_only(out):
    result = warm_python.run([sys.executable, "reproduce.py", "--report_only", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return (out / "REPORT.md").read_text()


def copy_committed(out, copy):
    """What a study commits, copied to a folder of its own."""
    for path in committed_files(out):
        target = copy / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return copy


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
    the end: the tests below read a copy of it as it finished (the reruns change the study)."""
    run = long_runs.result("study")
    return run.npz, run.finished, run.resumed, run.after_kill


@pytest.fixture(scope="module")
def study_reruns(long_runs):
    """reproduce.py run again on the session's study (tests/long_runs.py), beside the tests."""
    return long_runs.result("study_reruns")


def test_study_writes_a_report_with_finite_tables(study):
    _, out, resumed, after_kill = study
    text = (out / "REPORT.md").read_text()
    verdicts = table_after(text, "## Verdicts")
    assert len(verdicts) == 9 and all(re.fullmatch(r"\*\*(shown|not shown|inconclusive)\*\*", r[-1]) for r in verdicts)
    usage = table_after(text, "Codebook headline")
    assert len(usage) == STUDY_EPOCHS and all(finite(c) for row in usage for c in row)   # a row per epoch
    silhouettes = table_after(text, "## Latent space")
    assert len(silhouettes) == 16 and all(finite(c) for r in silhouettes for c in r[2:])
    dr = table_after(text, "MusER's own frozen DR readout, ordered by token index")
    assert [r[0] for r in dr] == ["tempo", "chord", "bar-beat", "type", "pitch", "duration", "velocity"]
    fitted = table_after(text, "fitted on training songs with the regulariser's pairwise loss")
    assert {r[1] for r in fitted} == set(MODELS) and all(finite(c) for r in fitted for c in r[2:])
    dci = table_after(text, "## Exclusivity")
    assert len(dci) == 4 and all(finite(r[2]) for r in dci)
    swap = table_after(text, "**MusER_TRANS_CA_GE** (floor per element")
    assert len(swap) == 7 and all(finite(c) for r in swap for c in r[1:])
    transfers = table_after(text, "## Element transfer")
    assert len(transfers) == 12
    confusion = table_after(text, "Confusion (rows: asked quadrant")
    assert len(confusion) == 8
    decoded = table_after(text, "The decoder's ceiling")
    assert [r[0] for r in decoded] == ["data (held-out songs)", *MODELS]
    assert all(finite(c) for r in decoded for c in r[1:7])
    guidance = table_after(text, "## Beyond the paper: classifier-free guidance")
    assert [r[0] for r in guidance] == ["1", "1.5", "2", "3", "data (held-out songs)"]
    assert all(finite(c) for r in guidance[:-1] for c in r[1:7])
    assert all(r[-1] in ("shown", "not shown", "inconclusive") for r in guidance[1:-1])
    assert re.search(r"\*\*Verdict: (shown|not shown|inconclusive)\.\*\*", text)
    transposition = text[text.index("## Beyond the paper: transposition augmentation"):]
    assert transposition.split("\n\n")[1].startswith("Not run yet") and "--only transpose" in transposition
    for name in ("training.png", "guidance.png"):
        assert (out / name).stat().st_size > 1000
    for model in MODELS:
        latent = json.loads((out / "seeds" / "13" / "measures" / f"latent_{model}.json").read_text())
        assert len(latent["probe"]["piece_r2"]) == 7 and len(latent["dci"]["importance"]) == 7
        assert (out / "seeds" / "13" / "figures" / model / "tsne_all.png").exists()
    # Two study stages, then each model stage once over the killed and the resumed run (the
    # guidance stage for MusER only).
    done = after_kill.output.count("] done in") + resumed.stdout.count("] done in")
    assert done == 2 + 2 * len(MODEL_STAGES) + 1
    assert "[guidance_VQVAE_TRANS_CA_GE]" not in after_kill.output + resumed.stdout


def test_held_out_songs_are_never_trained_on(study):
    _, out, *_ = study
    split = json.loads((out / "measures" / "split.json").read_text())
    import numpy as np

    from music.elements import song_of_name
    train = np.load(out / "data" / "study_train.npz")["names"]
    held = np.load(out / "data" / "study_held_out.npz")["names"]
    assert {song_of_name(n) for n in held} == set(split["held_out_songs"])
    assert not {song_of_name(n) for n in train} & set(split["held_out_songs"])
    log = (out / "seeds" / "13" / "logs" / "train_MusER_TRANS_CA_GE.log").read_text()
    assert "study_train.npz" in log and "study_held_out.npz" not in log


def passed(result) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_second_run_skips_every_finished_stage(study_reruns):
    second = passed(study_reruns.second)
    before, after = study_reruns.second_markers
    assert "started" not in second and "continuing" not in second
    assert second.count("skipped") == len(before)
    assert after == before


def test_only_runs_the_named_stages_of_the_named_models(study_reruns):
    r = study_reruns
    only = passed(r.only)
    assert re.findall(r"\[(\w+)\] (?:started|finished earlier)", only) == ["generation_MusER_TRANS_CA_GE"]
    assert f"[generation_MusER_TRANS_CA_GE] {r.measure} is missing: redone" in only
    assert "[generation_MusER_TRANS_CA_GE] started" in only and r.only_wrote
    bad = r.misspelled
    assert bad.returncode == 2 and "latnet" in bad.stderr and "interventions" in bad.stderr


def test_changed_input_redoes_only_the_stages_it_feeds(study_reruns):
    redone = set(re.findall(r"\[(\w+)\] started", passed(study_reruns.changed)))
    assert redone == {"interventions_MusER_TRANS_CA_GE", "interventions_VQVAE_TRANS_CA_GE"}
    interventions = json.loads((study_reruns.out / "seeds" / "13" / "measures" /
                                "interventions_MusER_TRANS_CA_GE.json").read_text())
    assert len(interventions["transfers"][0]["rows_a"]) == 1


def test_the_transposition_stage_runs_on_a_finished_study(study_reruns):
    """`--only transpose` on a copy of the finished study (so that the study's own report stays
    without it): MusER's guided prior trained again on the training pieces and their transposed
    copies, sampled at S = 1 and 2 from the guidance stage's seed and count, and the report's
    comparison with the guided prior."""
    copy = study_reruns.transposed
    run = passed(study_reruns.transpose)
    assert re.findall(r"\[(\w+)\] started", run) == ["transpose_MusER_TRANS_CA_GE"]
    seed = copy / "seeds" / "13"
    measure = json.loads((seed / "measures" / "transpose_MusER_TRANS_CA_GE.json").read_text())
    guidance = json.loads((seed / "measures" / "guidance_MusER_TRANS_CA_GE.json").read_text())
    assert (measure["shift"], measure["epochs"], measure["scales"]) == (2, 1, [1.0, 2.0])
    assert measure["per_quadrant"] == guidance["per_quadrant"] and measure["emotion_dropout"] == 0.1
    for scale in ("1", "2"):
        assert measure["runs"][scale]["asked"] == guidance["runs"][scale]["asked"]
    train_pieces = json.loads((copy / "measures" / "split.json").read_text())["train_pieces"]
    summary = measure["transposition"]
    assert summary["pieces"] == train_pieces and list(summary["copies"]) == ["-2", "-1", "+1", "+2"]
    assert all(summary["copies"][k] + summary["left_out"][k] == train_pieces for k in summary["copies"])
    prior = load_checkpoint(seed / "models" / "Prior_transposed_MusER_TRANS_CA_GE" / "last.pt", "prior")
    assert prior["args"]["transpose"] == 2 and prior["config"]["emotion_dropout"] == 0.1 and prior["epoch"] == 1
    assert "copies added" in (seed / "logs" / "transpose_prior_MusER_TRANS_CA_GE.log").read_text()

    text = "\n".join(transpose_sections(StudyFiles.read(copy)))
    assert text in (copy / "REPORT.md").read_text()
    rows = table_after(text, "## Beyond the paper: transposition augmentation")
    assert [(r[0], r[1]) for r in rows] == [
        (prior_name, scale) for scale in ("1", "2")
        for prior_name in ("guided (guidance stage)", "transposed (--transpose 2)", "transposed minus guided")] \
        + [("data (held-out songs)", "")]
    assert all(finite(c) for r in rows for c in r[2:5])
    assert re.search(r"\*\*Verdict: (shown|not shown|inconclusive)\.\*\*", text)


def test_killed_study_resumes(study):
    """The study fixture was killed while MusER trained: the stage was marked started, not
    finished; the next run continued it from last.pt (--resume) and finished the study, whose
    report the test above reads."""
    _, out, resumed, after_kill = study
    seed = out / "seeds" / "13"
    assert after_kill.started and not after_kill.finished
    assert "[data] done in" in after_kill.output
    assert "[data] finished earlier" in resumed.stdout
    assert "[train_MusER_TRANS_CA_GE] continuing" in resumed.stdout
    log = (seed / "logs" / "train_MusER_TRANS_CA_GE.log").read_text()
    assert "--resume" in log and "resumed from" in log
    trained = load_checkpoint(seed / "models" / "MusER_TRANS_CA_GE" / "last.pt", "muser")
    assert [row["epoch"] for row in trained["history"] if row["split"] == "train"] == list(range(1, STUDY_EPOCHS + 1))
    assert [row["epoch"] for row in trained["history"] if row["split"] == "val"] == list(range(1, STUDY_EPOCHS + 1))
    assert (seed / "stages" / "train_MusER_TRANS_CA_GE.json").exists()
    assert not list((seed / "stages").glob("*.started"))


def test_report_regenerates_from_the_committed_files_alone(study, tmp_path):
    """What a study commits is enough: copied to a folder of its own, --report_only rebuilds
    the same REPORT.md."""
    _, out, *_ = study
    copy = copy_committed(out, tmp_path / "copy")
    assert not list(copy.rglob("*.pt")) and not (copy / "data").exists()
    original = (out / "REPORT.md").read_text()
    (copy / "REPORT.md").unlink()
    assert report_only(copy) == original


def test_product_models_are_judged_by_their_own_rules(study, tmp_path):
    """A study with the product variants gets the product rules. Here the product models are
    the joint ones under the product names (their measures copied), so the product rules must
    read exactly what the joint rules read: the regulariser's gap difference the same, and no
    difference in reconstruction."""
    _, out, *_ = study
    copy = copy_committed(out, tmp_path / "copy")
    measures = copy / "seeds" / "13" / "measures"
    for joint, product in (("MusER_TRANS_CA_GE", PRODUCT_MODEL), ("VQVAE_TRANS_CA_GE", PRODUCT_BASELINE)):
        for path in measures.glob(f"*_{joint}.json"):
            shutil.copyfile(path, measures / path.name.replace(joint, product))
    study_json = copy / "measures" / "study.json"
    recorded = json.loads(study_json.read_text())
    study_json.write_text(json.dumps({**recorded, "models": [*recorded["models"], PRODUCT_MODEL, PRODUCT_BASELINE]}))
    text = report_only(copy)
    assert "on the seeds where they have run: 1 seed(s), 13;" in text
    verdicts = {row[1].split("`")[1]: row for row in table_after(text, "## Verdicts")}
    assert len(verdicts) == 9 + len(PRODUCT_RULES)
    assert verdicts["pq_gap_difference"][2] == verdicts["ordering_gap_difference"][2]
    assert verdicts["pq_reconstruction_difference"][2] == "0.00"
    assert verdicts["pq_dci_disentanglement_over_twice_joint"][2] != "n/a"


def test_the_committed_study_report_regenerates_identically(committed_report):
    """`reproduce.py --report_only` on a copy of results/emopia_small (tests/long_runs.py)."""
    assert committed_report.result.returncode == 0, committed_report.result.stderr[-2000:]
    assert committed_report.report.read_text() == (COMMITTED_STUDY / "REPORT.md").read_text()
    assert filecmp.cmp(committed_report.report, COMMITTED_STUDY / "REPORT.md", shallow=False)


def test_bad_input_is_one_line(tmp_path):
    result = warm_python.run([sys.executable, "reproduce.py", "--preset", "tiny", "--data_path",
                             str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing.npz" in result.stderr
    result = warm_python.run([sys.executable, "reproduce.py", "--report_only", "--out", str(tmp_path / "none")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "study.json" in result.stderr


def test_export_pretrained_is_small_and_generates(study, tmp_path):
    import torch

    from run.pretrained import export

    _, out, *_ = study
    written = export(out, "MusER_TRANS_CA_GE", tmp_path / "pretrained", seed=13)
    models = out / "seeds" / "13" / "models"
    small = load_checkpoint(tmp_path / "pretrained" / "muser.pt", "muser")
    full = load_checkpoint(models / "MusER_TRANS_CA_GE" / "best.pt", "muser")
    assert "optimizer" not in small and small["stored_dtype"] == "float16"
    for name, tensor in full["model"].items():
        if name.startswith("quantizer."):
            assert torch.equal(small["model"][name], tensor)          # the codebook stays exact
        elif tensor.is_floating_point():
            assert small["model"][name].dtype == torch.float16
            assert torch.equal(small["model"][name], tensor.half())
    assert sum(p.stat().st_size for p in written) < 0.7 * sum(
        (models / m / "best.pt").stat().st_size for m in ("MusER_TRANS_CA_GE", "Prior_MusER_TRANS_CA_GE"))
    result = warm_python.run([sys.executable, "generate.py", "--VQ_prior", str(written[1]), "--VQ_VAE", str(written[0]),
                             "--music_file", "p", "--out_root", str(tmp_path / "gen"), "--n_per_emotion", "1",
                             "--audio", "False"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-1500:]
    assert len(list((tmp_path / "gen" / "p").glob("*.mid"))) == 4
