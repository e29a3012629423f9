"""Each figure function writes a non-empty PNG, including on degenerate input."""
import numpy as np
import pytest

from evaluation import metrics as M
from evaluation import plotting as P
from music.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000


def test_piano_roll(tmp_path):
    notes = [(60, 0, 480, 90), (64, 480, 1920, 40), (67, 1920, 2400, 120)]
    assert_png(P.plot_piano_roll(notes, tmp_path / "roll.png", title="three notes"))
    assert_png(P.plot_piano_roll(M.Piece(notes=np.zeros((0, 4), int)), tmp_path / "empty.png"))


def test_violins(tmp_path):
    rng = np.random.default_rng(0)
    data = {q: {e: rng.normal(q, 1, 50) for e in M.DISTRIBUTION_ELEMENTS} for q in range(1, 5)}
    generated = {1: {"pitch": np.array([60.0, 60.0]), "tempo": np.array([])}}  # degenerate
    path = P.plot_element_violins({"generated": generated, "data": data}, tmp_path / "v.png")
    assert_png(path)


def test_loss_curves_tolerate_extra_columns(tmp_path):
    log = tmp_path / "log.csv"
    rows = ["epoch,split,loss,recon,vq,reg,acc_pitch,note"]
    rows += [f"{e},{s},{3 - e * 0.1},{2 - e * 0.1},0.1,0.5,{e / 10},text" for e in range(5)
             for s in ("train", "val")]
    log.write_text("\n".join(rows) + "\n")
    series = P.read_training_log(log)
    assert set(series) == {"train", "val"}
    assert set(series["train"]) == {"loss", "recon", "vq", "reg", "acc_pitch"}
    assert series["val"]["loss"][0] == [0, 1, 2, 3, 4]
    assert_png(P.plot_loss_curves(log, tmp_path / "loss.png"))


def test_loss_curves_bad_log(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="epoch"):
        P.plot_loss_curves(bad, tmp_path / "x.png")
    with pytest.raises(UserError, match="cannot read"):
        P.read_training_log(tmp_path / "missing.csv")


def test_tsne_pairs(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([1, 2, 3] * 10)  # Q4 absent: its panels still draw
    assert_png(P.plot_tsne_pairs(rng.normal(size=(30, 2)), labels, "t", tmp_path / "t.png"))
