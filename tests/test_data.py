"""Loading and validating a compound-word npz + dictionary pair."""
import pickle
import shutil

import numpy as np
import pytest

from music import cp
from music.data import CPDataset, default_dictionary_path, load_class_indices, load_cp_dataset
from music.errors import UserError


@pytest.fixture(scope="module")
def prepared(sample_npz, tmp_path_factory):
    """The shipped sample as prepare_data.py writes it (the session's, copied)."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    shutil.copytree(sample_npz.parent, out)
    return out


@pytest.fixture
def copy(prepared, tmp_path):
    """A writable copy of the prepared folder, and its arrays."""
    for path in prepared.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path, dict(np.load(tmp_path / "emopia_data.npz"))


def rewrite(folder, arrays):
    path = folder / "emopia_data.npz"
    np.savez(path, **arrays)
    return path


def test_loads_the_prepared_sample(prepared):
    data = load_cp_dataset(prepared / "emopia_data.npz")
    assert isinstance(data, CPDataset) and len(data) == 32
    assert data.x.shape == data.y.shape == (32, 1024, 8) and data.x.dtype == np.int64
    assert data.mask.dtype == np.float32 and data.seq_len.dtype == np.int64
    assert data.dictionary_path == default_dictionary_path(prepared / "emopia_data.npz")
    assert data.dictionary_path == prepared / "dictionary.pkl"
    assert list(data.emotion) == [int(name[1]) for name in data.names]
    assert data.emotion.dtype == np.int64
    assert (data.mask.sum(axis=1) == data.seq_len).all()
    assert cp.vocab_sizes(data.event2word) == [len(data.word2event[f]) for f in cp.FIELDS]
    again = load_cp_dataset(prepared / "emopia_data.npz", prepared / "dictionary.pkl",
                            vocab_sizes=cp.vocab_sizes(data.event2word))
    np.testing.assert_array_equal(again.x, data.x)


def test_class_indices(prepared):
    data = load_cp_dataset(prepared / "emopia_data.npz")
    classes = load_class_indices(prepared / "emopia_idx.npz")
    assert sorted(classes) == [1, 2, 3, 4]
    for q, rows in classes.items():
        assert rows.dtype == np.int64 and len(rows) == 8
        assert (data.emotion[rows] == q).all()


def test_rows_without_names_are_numbered(copy):
    folder, arrays = copy
    del arrays["names"], arrays["num_groups"]
    data = load_cp_dataset(rewrite(folder, arrays))
    assert list(data.names[:3]) == ["row0", "row1", "row2"]


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("y"), r"emopia_data\.npz: missing key\(s\) y"),
    (lambda a: a.update(x=a["x"][:, :, :7]), r"emopia_data\.npz: 'x' has shape \(32, 1024, 7\), expected \[N, T, 8\]"),
    (lambda a: a.update(y=a["y"][:, :100]), r"emopia_data\.npz: 'y' has shape \(32, 100, 8\), expected \(32, 1024, 8\)"),
    (lambda a: a.update(mask=a["mask"][:5]), r"'mask' has shape \(5, 1024\), expected \(32, 1024\)"),
    (lambda a: a.update(seq_len=a["seq_len"][:, None]), r"'seq_len' has shape \(32, 1\), expected \(32,\)"),
    (lambda a: a.update(names=a["names"][:3]), r"'names' has shape \(3,\), expected \(32,\)"),
    (lambda a: a.update(x=a["x"].astype(np.float32)), r"emopia_data\.npz: 'x' has dtype float32, expected integers"),
    (lambda a: a.update(seq_len=a["seq_len"] * 0.5), r"'seq_len' has dtype float64, expected integers"),
    (lambda a: a.update(mask=a["mask"] * 2), r"'mask' holds values other than 0 and 1"),
    (lambda a: a.update(seq_len=a["seq_len"] - 1), r"row 0: mask has \d+ ones but seq_len is \d+"),
    (lambda a: a.update(seq_len=a["seq_len"] * 0 + 5000), r"seq_len\[0\] = 5000 is outside 1\.\.1024"),
])
def test_malformed_npz_is_reported_precisely(copy, change, message):
    folder, arrays = copy
    change(arrays)
    with pytest.raises(UserError, match=message):
        load_cp_dataset(rewrite(folder, arrays))


def test_index_outside_the_vocabulary_names_file_field_and_row(copy):
    folder, arrays = copy
    sizes = cp.vocab_sizes(cp.load_dictionary(folder / "dictionary.pkl")[0])
    arrays["y"][3, 10, 4] = sizes[4]
    with pytest.raises(UserError, match=r"emopia_data\.npz: 'y' row 3 has pitch index \d+, outside the \d+ "
                                        r"entries of .*dictionary\.pkl \(wrong dictionary\?\)"):
        load_cp_dataset(rewrite(folder, arrays))
    arrays["y"][3, 10, 4] = 0
    arrays["x"][0, 0, 1] = -1
    with pytest.raises(UserError, match=r"'x' row 0 has chord index -1"):
        load_cp_dataset(rewrite(folder, arrays))


def test_dictionary_must_match_the_model_vocabulary(copy):
    folder, _ = copy
    sizes = cp.vocab_sizes(cp.load_dictionary(folder / "dictionary.pkl")[0])
    wanted = list(sizes)
    wanted[0] = sizes[0] + 7
    with pytest.raises(UserError, match=rf"dictionary\.pkl: vocabulary sizes \[.*\] do not match the model's "
                                        rf"\[{sizes[0] + 7}, .*\] \(tempo {sizes[0]} vs {sizes[0] + 7}\)"):
        load_cp_dataset(folder / "emopia_data.npz", vocab_sizes=wanted)


def test_missing_and_unreadable_files(copy, tmp_path):
    folder, _ = copy
    with pytest.raises(UserError, match=r"nothing\.npz: file not found"):
        load_cp_dataset(tmp_path / "nothing.npz")
    (folder / "dictionary.pkl").unlink()
    with pytest.raises(UserError, match=r"dictionary\.pkl: dictionary file not found"):
        load_cp_dataset(folder / "emopia_data.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"no zip here")
    with pytest.raises(UserError, match=r"junk\.npz: not a readable npz file"):
        load_cp_dataset(junk)
    bad_dictionary = tmp_path / "bad.pkl"
    bad_dictionary.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UserError, match=r"bad\.pkl: expected a pickled \(event2word, word2event\)"):
        load_cp_dataset(folder / "emopia_data.npz", bad_dictionary)


def test_class_indices_errors(tmp_path):
    with pytest.raises(UserError, match=r"idx\.npz: file not found"):
        load_class_indices(tmp_path / "idx.npz")
    np.savez(tmp_path / "idx.npz", cls_1_idx=np.arange(3), cls_2_idx=np.arange(2))
    with pytest.raises(UserError, match=r"idx\.npz: missing key\(s\) cls_3_idx, cls_4_idx"):
        load_class_indices(tmp_path / "idx.npz")
    np.savez(tmp_path / "idx.npz", **{f"cls_{q}_idx": np.zeros((2, 2), dtype=int) for q in (1, 2, 3, 4)})
    with pytest.raises(UserError, match=r"'cls_1_idx' must be a 1-D integer array"):
        load_class_indices(tmp_path / "idx.npz")
