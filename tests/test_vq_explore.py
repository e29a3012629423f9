"""VQ_explore's latent-space protocol is the authors': pooling over all steps (padding
included), t-SNE with perplexity 30, PCA init, seed 13 and 3000 iterations, silhouettes on
the 2-D t-SNE points (plus the pooled latent's as extra columns)."""
import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

import VQ_explore
from evaluation import latent_space as L
from run.pipeline import pooled_latents
from music.elements import ELEMENTS


def _padded_latent():
    """Two pieces, 4 steps, slice_dim 1: steps 0-1 real, 2-3 padding with other values."""
    latent = np.zeros((2, 4, 7))
    latent[0, :2], latent[0, 2:] = 1.0, 5.0          # all: 3.0, valid: 1.0
    latent[1, :3], latent[1, 3:] = 2.0, -6.0         # all: 0.0, valid: 2.0
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=np.float32)
    return latent, mask


def test_default_pooling_averages_over_padding_too():
    latent, mask = _padded_latent()
    assert np.allclose(L.pool_latent(latent, mask), [[3.0] * 7, [0.0] * 7])          # the default
    assert np.allclose(L.pool_latent(latent, mask, "all"), [[3.0] * 7, [0.0] * 7])
    assert np.allclose(L.pool_latent(torch.as_tensor(latent), torch.as_tensor(mask), "valid"),
                       [[1.0] * 7, [2.0] * 7])
    features = L.latent_features(latent, mask, slice_dim=1)                          # default again
    assert list(features) == [*ELEMENTS, "all"]
    assert np.allclose(features["velocity"], [[3.0], [0.0]]) and features["all"].shape == (2, 7)
    assert np.allclose(L.latent_features(latent, mask, 1, "valid")["pitch"], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="pool"):
        L.pool_latent(latent, mask, "mean")


def test_script_defaults_are_the_authors():
    args = VQ_explore.build_parser().parse_args([])
    assert (args.pool, args.tsne_iter, args.perplexity, args.seed) == ("all", 3000, 30.0, 13)
    assert VQ_explore.build_parser().parse_args(["--pool", "valid"]).pool == "valid"
    with pytest.raises(SystemExit):
        VQ_explore.build_parser().parse_args(["--pool", "mean"])


class FakeTSNE:
    """Records its arguments; 'embeds' into fixed noise, so silhouettes on it are near 0."""
    calls = []

    def __init__(self, n_components=2, perplexity=30.0, init="pca", random_state=None,
                 learning_rate="auto", max_iter=None):
        FakeTSNE.calls.append(dict(n_components=n_components, perplexity=perplexity, init=init,
                                   random_state=random_state, learning_rate=learning_rate,
                                   max_iter=max_iter))

    def fit_transform(self, features):
        FakeTSNE.calls[-1]["input"] = np.array(features)
        points = np.random.default_rng(len(FakeTSNE.calls)).normal(size=(len(features), 2))
        FakeTSNE.calls[-1]["points"] = points
        return points


class OldFakeTSNE(FakeTSNE):
    def __init__(self, n_components=2, perplexity=30.0, init="pca", random_state=None,
                 learning_rate="auto", n_iter=None):
        FakeTSNE.calls.append(dict(n_iter=n_iter))


def _separated(n_per_quadrant=30, seed=0):
    """Pooled latents whose quadrants are far apart (latent silhouette ~1), shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([1, 2, 3, 4], n_per_quadrant))
    labels[:3] = 0                                    # unlabelled pieces are left out
    pooled = 20.0 * np.maximum(labels, 1)[:, None] + rng.normal(size=(len(labels), 14))
    return L.element_features(pooled, 2), labels


def test_silhouettes_are_on_the_tsne_points_with_3000_iterations(monkeypatch, tmp_path):
    import sklearn.manifold

    monkeypatch.setattr(sklearn.manifold, "TSNE", FakeTSNE)
    FakeTSNE.calls = []
    features, labels = _separated()
    rows = L.silhouette_table({"pitch": features["pitch"], "all": features["all"]}, labels,
                              figure_dir=tmp_path)
    assert len(FakeTSNE.calls) == 2
    for call in FakeTSNE.calls:
        assert call["max_iter"] == 3000
        assert (call["perplexity"], call["init"], call["random_state"], call["learning_rate"]) == \
            (30.0, "pca", 13, "auto")
    # t-SNE sees the labelled pieces only, Q1 first, data order within a quadrant.
    order = L.quadrant_order(labels)
    assert np.array_equal(FakeTSNE.calls[1]["input"], features["all"][order])
    sorted_labels = labels[order]
    assert np.all(np.diff(sorted_labels) >= 0) and 0 not in sorted_labels
    for row, call in zip(rows, FakeTSNE.calls):
        points = call["points"]
        for pair in L.QUADRANT_PAIRS:
            keep = np.isin(sorted_labels, pair)
            on_points = silhouette_score(points[keep], sorted_labels[keep])
            assert row[L.pair_name(pair)] == pytest.approx(on_points)
            assert abs(row[L.pair_name(pair)]) < 0.2
            assert row[f"latent {L.pair_name(pair)}"] > 0.8    # the latent's own, an extra column
    header = (tmp_path / "silhouette.csv").read_text().splitlines()[0].split(",")
    assert header == ["element"] + [L.pair_name(p) for p in L.QUADRANT_PAIRS] + \
        [f"latent {L.pair_name(p)}" for p in L.QUADRANT_PAIRS]
    assert (tmp_path / "tsne_all.png").stat().st_size > 0
    assert "| pitch |" in (tmp_path / "silhouette.md").read_text()


def test_iteration_argument_of_older_scikit_learn(monkeypatch):
    import sklearn.manifold

    monkeypatch.setattr(sklearn.manifold, "TSNE", OldFakeTSNE)
    FakeTSNE.calls = []
    assert L.tsne_2d(np.zeros((10, 3))).shape == (10, 2)
    assert FakeTSNE.calls[0]["n_iter"] == 3000 and "max_iter" not in FakeTSNE.calls[0]


def test_real_tsne_and_missing_quadrants():
    features, labels = _separated(n_per_quadrant=8)
    labels[labels == 4] = 3                            # no Q4 left
    rows = L.silhouette_table({"chord": features["chord"]}, labels, max_iter=250)
    assert np.isnan(rows[0]["Q1-Q4"]) and np.isnan(rows[0]["latent Q3-Q4"])
    assert np.isfinite(rows[0]["Q1-Q2"])
    assert L.tsne_2d(features["all"], max_iter=250).shape == (len(labels), 2)
    with pytest.raises(ValueError, match="rows"):
        L.silhouette_table({"all": features["all"][:5]}, labels)


def test_pooled_latents_encode_the_whole_sequence(sample_npz):
    from models.config import MusERConfig, apply_preset
    from models.muser import MusER
    from music import cp
    from music.data import load_cp_dataset
    from run.pipeline import dataset_tensors, encode_pieces

    data = load_cp_dataset(sample_npz)
    event2word = data.event2word
    config = apply_preset(MusERConfig(vocab_sizes=cp.vocab_sizes(event2word),
                                      type_ids={n: cp.type_index(event2word, n) for n in cp.EVENT_TYPES}),
                          "tiny")
    torch.manual_seed(0)
    # Long enough that the shortest piece is padded.
    length = int(data.seq_len.min()) // config.chunk_size * config.chunk_size + config.chunk_size
    model = MusER(dataclasses.replace(config, max_len=length)).eval()
    features = pooled_latents(model, data)
    assert list(features) == [*ELEMENTS, "all"] and len(features["all"]) == len(data)
    tensors = dataset_tensors(data, model.config.max_len)
    latent, _ = encode_pieces(model, tensors["y"], 16, torch.device("cpu"))
    assert np.allclose(features["all"], latent.double().mean(dim=1).numpy())
    valid = pooled_latents(model, data, pool="valid")
    short = int(np.argmin(tensors["seq_len"].numpy()))
    assert tensors["mask"][short].sum() < model.config.max_len
    assert not np.allclose(valid["all"][short], features["all"][short])


def test_quadrant_order():
    assert L.quadrant_order([2, 1, 0, 1, 4, 2]).tolist() == [1, 3, 0, 5, 4]
