"""evaluation.dci on constructed importance matrices and latents whose answer is known."""
import numpy as np
import pytest

from evaluation.dci import dci_scores, slice_importance


def test_diagonal_importance_is_perfectly_disentangled_and_complete():
    scores = dci_scores(np.eye(7) * 3.0)
    assert scores["disentanglement"] == pytest.approx(1.0) and scores["completeness"] == pytest.approx(1.0)


def test_uniform_importance_scores_zero():
    scores = dci_scores(np.ones((7, 7)))
    assert scores["disentanglement"] == pytest.approx(0.0, abs=1e-12)
    assert scores["completeness"] == pytest.approx(0.0, abs=1e-12)


def test_one_slice_holding_everything_is_complete_but_not_disentangled():
    r = np.zeros((7, 7))
    r[2] = 1.0
    scores = dci_scores(r)
    assert scores["completeness"] == pytest.approx(1.0) and scores["disentanglement"] == pytest.approx(0.0)
    assert np.isnan(scores["per_slice"][0]) and scores["per_slice"][2] == pytest.approx(0.0)


def test_random_importance_is_the_low_null():
    rng = np.random.default_rng(0)
    d, c = zip(*[(s["disentanglement"], s["completeness"])
                 for s in (dci_scores(rng.random((7, 7))) for _ in range(50))])
    assert 0.05 < np.mean(d) < 0.13 and 0.05 < np.mean(c) < 0.13      # about 0.09 each


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError):
        dci_scores(np.zeros((7, 7)))
    with pytest.raises(ValueError):
        dci_scores(np.ones(7))


def constructed_latents(n=600, slices=4, width=3, entangled=False, seed=0):
    """Elements are independent; slice k encodes element k (or, entangled, a mix of all)."""
    rng = np.random.default_rng(seed)
    factors = rng.integers(0, 5, size=(n, slices)).astype(float)
    mix = rng.random((slices, slices)) + 0.5 if entangled else np.eye(slices)
    signal = factors @ mix.T
    latents = np.repeat(signal, width, axis=1) + 0.05 * rng.standard_normal((n, slices * width))
    return latents, {f"e{k}": factors[:, k] for k in range(slices)}


def test_forest_importance_finds_the_slice_that_holds_each_element():
    latents, targets = constructed_latents()
    r = slice_importance(latents, targets, slice_dim=3, categorical=("e0", "e2"), trees=20, depth=6)
    assert r.shape == (4, 4) and (np.argmax(r, axis=0) == np.arange(4)).all()
    scores = dci_scores(r)
    assert scores["disentanglement"] > 0.8 and scores["completeness"] > 0.8
    mixed = dci_scores(slice_importance(*constructed_latents(entangled=True), slice_dim=3, trees=20, depth=6))
    assert mixed["disentanglement"] < scores["disentanglement"] - 0.3
    assert mixed["completeness"] < scores["completeness"] - 0.3
