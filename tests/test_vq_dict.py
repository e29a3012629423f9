"""VQ_dict: the prior's compact vocabulary, and codes that VQ_explore never saw."""
import logging

import pytest
import torch

from music.errors import UserError
from run.codes import compact_codes, expand_codes, load_vq_dict, make_vq_dict, save_vq_dict


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
