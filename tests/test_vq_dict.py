"""VQ_dict: the prior's compact vocabulary, and codes that VQ_explore never saw."""
import logging

import pytest
import torch

from music.errors import UserError
from run.codes import (compact_codes, expand_codes, load_vq_dict, make_vq_dict, save_vq_dict, used_code_counts,
                       vq_dict_for_checkpoint)


def test_vq_dict_maps_used_codes_both_ways(tmp_path):
    codes = torch.tensor([[7, 3, 3], [9, 7, 3]])
    vq_dict = make_vq_dict(codes, "abc")
    assert vq_dict[0] == {3: 0, 7: 1, 9: 2} and vq_dict[1] == {0: 3, 1: 7, 2: 9}
    save_vq_dict(tmp_path / "d.data", vq_dict)
    assert load_vq_dict(tmp_path / "d.data", "abc") == vq_dict


def test_vq_dict_of_another_model_is_refused(tmp_path):
    save_vq_dict(tmp_path / "d.data", make_vq_dict(torch.tensor([1, 2]), "model-a"))
    with pytest.raises(UserError, match="d.data: this VQ_dict was made from another VQ-VAE"):
        load_vq_dict(tmp_path / "d.data", "model-b")


def test_unseen_code_goes_to_the_nearest_used_code_with_a_warning(caplog):
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [9.0, 1.0], [1.0, 9.0]])
    vq_dict = make_vq_dict(torch.tensor([0, 1, 2]), "x")  # codes 3 and 4 were never used
    logger = logging.getLogger("test_vq_dict")
    with caplog.at_level(logging.WARNING, logger="test_vq_dict"):
        compact = compact_codes(torch.tensor([[0, 3, 4, 2, 1]]), vq_dict, codebook, logger, "data.npz")
    assert compact.tolist() == [[0, 1, 2, 2, 1]]  # 3 is nearest to code 1, 4 to code 2
    assert "2 code(s) used by data.npz are not in the VQ_dict" in caplog.text


def test_known_codes_map_without_warning(caplog):
    codebook = torch.randn(6, 4)
    vq_dict = make_vq_dict(torch.tensor([5, 1, 4]), "x")
    with caplog.at_level(logging.WARNING):
        compact = compact_codes(torch.tensor([[1, 4, 5, 5]]), vq_dict, codebook, logging.getLogger("t"), "d")
    assert compact.tolist() == [[0, 1, 2, 2]] and caplog.text == ""


def test_expand_codes_inverts_compaction_on_used_codes():
    codes = torch.tensor([[7, 3, 7, 12], [3, 3, 12, 7]])
    vq_dict = make_vq_dict(codes, "fp")
    compact = compact_codes(codes, vq_dict, torch.randn(16, 4), logging.getLogger("t"), "test")
    assert compact.max().item() == 2
    assert torch.equal(expand_codes(compact, vq_dict), codes)


# ---------------------------------------------------------------------------------------
# A product model's VQ_dict: one pair of maps per slice
# ---------------------------------------------------------------------------------------
def slice_codes():
    """Codes [N=2, T=3, 3 slices]: slice 0 uses 2 and 5, slice 1 only 7, slice 2 uses 0, 1, 3."""
    return torch.tensor([[[5, 7, 0], [2, 7, 3], [5, 7, 1]],
                         [[2, 7, 3], [2, 7, 0], [5, 7, 0]]])


def test_vq_dict_per_slice_round_trips_and_compacts_slice_by_slice(tmp_path):
    codes = slice_codes()
    vq_dict = make_vq_dict(codes, "pq", per_slice=True)
    assert vq_dict["vq_vae"] == "pq" and len(vq_dict["slices"]) == 3
    assert vq_dict["slices"][0] == {0: {2: 0, 5: 1}, 1: {0: 2, 1: 5}}
    assert vq_dict["slices"][1] == {0: {7: 0}, 1: {0: 7}}
    assert used_code_counts(vq_dict) == [2, 1, 3] and used_code_counts(make_vq_dict(codes[..., 0], "j")) == [2]
    save_vq_dict(tmp_path / "d.data", vq_dict)
    loaded = load_vq_dict(tmp_path / "d.data", "pq", codebook_size=8, slices=3)
    assert loaded == vq_dict
    compact = compact_codes(codes, loaded, torch.randn(3, 8, 2), logging.getLogger("t"), "test")
    assert compact.shape == codes.shape and compact[..., 1].eq(0).all()
    assert compact[0, :, 2].tolist() == [0, 2, 1]
    assert torch.equal(expand_codes(compact, loaded), codes)
    stored = vq_dict_for_checkpoint(loaded)
    assert stored == {"slices": vq_dict["slices"]} and torch.equal(expand_codes(compact, stored), codes)


def test_an_unseen_code_of_a_slice_goes_to_the_nearest_used_code_of_that_slice(caplog):
    codebooks = torch.tensor([[[0.0], [1.0], [5.0], [9.0]],       # slice 0: 1 unused, nearest used 0
                              [[9.0], [8.0], [0.0], [1.0]]])      # slice 1: 1 unused, nearest used 0
    vq_dict = make_vq_dict(torch.tensor([[0, 0], [2, 2], [3, 3]]), "x", per_slice=True)
    with caplog.at_level(logging.WARNING, logger="test_vq_dict"):
        compact = compact_codes(torch.tensor([[1, 1]]), vq_dict, codebooks, logging.getLogger("test_vq_dict"), "d")
    assert compact.tolist() == [[0, 0]]
    assert "used by d in slice 0" in caplog.text and "used by d in slice 1" in caplog.text


@pytest.mark.parametrize("change, message", [
    (lambda d: d["slices"].pop(), r"not a valid VQ_dict \('slices' must hold 3 pairs of maps"),
    (lambda d: d["slices"][1].pop(1), r"not a valid VQ_dict \('slices' must hold 3 pairs of maps"),
    (lambda d: d["slices"][2][1].update({0: 3}), r"not a valid VQ_dict \(slice 2\) \(entries 0 and 1 must be inverse"),
    (lambda d: d["slices"][0][0].update({2: 0.5}), r"not a valid VQ_dict \(slice 0\) \(its codes and indices must be integers"),
    (lambda d: d.update(vq_vae="another"), r"this VQ_dict was made from another VQ-VAE"),
])
def test_a_broken_vq_dict_per_slice_is_refused_naming_the_file(tmp_path, change, message):
    vq_dict = make_vq_dict(slice_codes(), "pq", per_slice=True)
    change(vq_dict)
    save_vq_dict(tmp_path / "d.data", vq_dict)
    with pytest.raises(UserError, match=f"d.data: {message}"):
        load_vq_dict(tmp_path / "d.data", "pq", slices=3)


def test_codes_outside_a_slice_codebook_and_the_wrong_kind_of_vq_dict_are_refused(tmp_path):
    save_vq_dict(tmp_path / "pq.data", make_vq_dict(slice_codes(), "pq", per_slice=True))
    with pytest.raises(UserError, match=r"pq.data: code 5 \(slice 0\) is outside the VQ-VAE's codebook of 4"):
        load_vq_dict(tmp_path / "pq.data", codebook_size=4, slices=3)
    with pytest.raises(UserError, match=r"pq.data: this VQ_dict is of a VQ-VAE with one codebook per slice "
                                        r"\(--quantizer product\), but the VQ-VAE has one joint codebook"):
        load_vq_dict(tmp_path / "pq.data")
    save_vq_dict(tmp_path / "joint.data", make_vq_dict(torch.tensor([1, 2]), "j"))
    with pytest.raises(UserError, match=r"joint.data: this VQ_dict is of a VQ-VAE with one joint codebook "
                                        r"\(--quantizer joint\), but the VQ-VAE has one codebook per slice"):
        load_vq_dict(tmp_path / "joint.data", slices=7)
