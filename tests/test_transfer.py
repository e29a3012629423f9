"""Element transfer: slice swapping is exact, and it moves the swapped element's decoding."""
import dataclasses

import numpy as np
import pytest
import torch

from models.config import MusERConfig, apply_preset
from models.muser import MusER
from evaluation.transfer import swap_elements, transfer_pairs
from music.elements import ELEMENTS as ELEMENT_NAMES, element_index, element_slice

VOCAB = [5, 12, 18, 4, 20, 10, 12, 5]
TYPE_IDS = dict(EOS=0, Emotion=1, Metrical=2, Note=3)


def test_swap_replaces_only_the_chosen_slices():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 10, 7 * 16))
    mixed = swap_elements(a, b, ["velocity", "pitch"], 16)
    swapped = np.zeros(7 * 16, dtype=bool)
    swapped[64:80] = swapped[96:112] = True
    assert np.array_equal(mixed[..., swapped], b[..., swapped])
    assert np.array_equal(mixed[..., ~swapped], a[..., ~swapped])  # bit for bit
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    tm = swap_elements(ta, tb, ["bar_beat"], 16)
    assert torch.equal(tm[..., 32:48], tb[..., 32:48]) and torch.equal(tm[..., :32], ta[..., :32])
    assert not torch.equal(ta[..., 32:48], tm[..., 32:48])  # the input was copied, not edited


def test_element_names():
    assert [element_index(n) for n in ELEMENT_NAMES] == list(range(7))
    assert element_index("beat") == element_index("Bar-Beat") == 2
    assert element_slice("velocity", 4) == slice(24, 28)
    with pytest.raises(ValueError, match="unknown element"):
        element_index("loudness")
    with pytest.raises(ValueError, match="shape"):
        swap_elements(np.zeros((2, 28)), np.zeros((3, 28)), ["pitch"], 4)
    with pytest.raises(ValueError, match="slice_dim"):
        swap_elements(np.zeros((2, 28)), np.zeros((2, 28)), ["pitch"], 16)


def _tiny_model(**overrides):
    torch.manual_seed(0)
    config = apply_preset(MusERConfig(vocab_sizes=VOCAB, type_ids=TYPE_IDS), "tiny")
    return MusER(dataclasses.replace(config, **overrides)).eval()


def _words(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (n, 64), generator=g) for v in VOCAB], dim=-1)


def _distribution_shift(model, elements):
    """Total-variation change of every element's teacher-forced prediction when the latent
    slices of `elements` come from other pieces: [7] mean TV distances."""
    y_a, y_b = _words(2, 1), _words(2, 2)
    with torch.no_grad():
        latent_a, _ = model.encode(y_a)
        latent_b, _ = model.encode(y_b)
        mixed = swap_elements(latent_a, latent_b, elements, model.config.slice_dim)
        before = model.element_log_probs(y_a, y_a, latent_a)
        after = model.element_log_probs(y_a, y_a, mixed)
    return np.array([0.5 * (p.exp() - q.exp()).abs().sum(-1).mean().item()
                     for p, q in zip(before, after)])


@pytest.mark.parametrize("name", ELEMENT_NAMES)
def test_swapping_a_slice_moves_mostly_that_elements_decoding(name):
    """Paper architecture (cross-attention + element decoders): a slice feeds its own
    element decoder directly and the others only through the global decoder, so swapping
    it shifts that element's predicted distribution far more than any other's."""
    shift = _distribution_shift(_tiny_model(), [name])
    k = element_index(name)
    assert shift[k] > 1e-3
    assert shift[k] > 3 * np.delete(shift, k).max()


def test_without_global_decoder_only_the_swapped_element_moves():
    """With conditioning NONE the element decoders are the latent's only way in: swapping
    the velocity slice changes the velocity prediction and leaves every other one exact."""
    shift = _distribution_shift(_tiny_model(conditioning="NONE", decoding="E"), ["velocity"])
    assert shift[element_index("velocity")] > 1e-3
    assert np.all(np.delete(shift, element_index("velocity")) < 1e-6)


def _linear_velocity_model():
    """A global-only (decoding G) tiny model with weights set by hand so the velocity head
    reads the first dimension of the velocity slice and nothing else:
    logit_j = 2 * j * latent[velocity][0]. A positive value asks for loud notes, a negative
    one for soft notes; the type head always prefers Note (EOS never wins)."""
    model = _tiny_model(decoding="G")
    velocity = element_index("velocity")
    with torch.no_grad():
        model.type_projection.weight.zero_()
        model.type_projection.bias.zero_()
        model.slice_projection.weight.zero_()
        model.slice_projection.bias.zero_()
        model.slice_projection.weight[0, 0] = 1.0
        model.heads[velocity].weight.zero_()
        model.heads[velocity].bias.zero_()
        model.heads[velocity].weight[:, 0] = 2.0 * torch.arange(VOCAB[velocity])
        type_head = model.heads[element_index("type")]
        type_head.weight.zero_()
        type_head.bias.copy_(torch.tensor([-20.0, -20.0, 0.0, 5.0]))
    return model


def test_transferring_velocity_moves_the_decoded_velocities():
    model = _linear_velocity_model()
    s = model.config.slice_dim
    v = element_index("velocity") * s
    latent_a = torch.zeros(4, 64, model.config.latent_dim)
    latent_b = torch.zeros_like(latent_a)
    latent_a[..., v] = -3.0                     # piece A: soft
    latent_b[..., v] = 3.0                      # piece B: loud
    latent_b[..., element_index("pitch") * s] = 3.0
    emotion = torch.tensor([1, 2, 3, 4])

    def mean_velocity(latent):
        words = model.generate(latent, emotion, generator=torch.Generator().manual_seed(5),
                               max_steps=40)
        notes = np.concatenate([w[w[:, 3] == TYPE_IDS["Note"]] for w in words])
        assert len(notes) > 80
        return notes[:, element_index("velocity")].mean()

    top = VOCAB[element_index("velocity")] - 1
    assert mean_velocity(latent_a) < 1.5
    assert mean_velocity(swap_elements(latent_a, latent_b, ["velocity"], s)) > top - 1.5
    # Taking another element from B leaves the velocities where A had them.
    assert mean_velocity(swap_elements(latent_a, latent_b, ["pitch"], s)) < 1.5


# ---------------------------------------------------------------------- pair selection

CLASSES = {1: np.array([5, 7, 9]), 2: np.array([1]), 3: np.array([], dtype=int), 4: np.array([0, 2, 3, 8])}


def test_first_pairs_are_the_first_pieces_of_each_quadrant_in_order():
    """The authors' element transfer: the first 20 of each quadrant, pair i = (i-th A, i-th B)."""
    a, b = transfer_pairs(CLASSES, 4, 1, 2)                    # "first" is the default
    assert a.tolist() == [0, 2] and b.tolist() == [5, 7]
    a, b = transfer_pairs(CLASSES, 4, 1, 6, "first", seed=99)   # too few: start again from the first
    assert a.tolist() == [0, 2, 3, 8, 0, 2] and b.tolist() == [5, 7, 9, 5, 7, 9]
    classes = {q: np.arange(100 * q, 100 * q + 30) for q in (1, 2, 3, 4)}
    a, b = transfer_pairs(classes, 3, 2, 20, "first")
    assert a.tolist() == list(range(300, 320)) and b.tolist() == list(range(200, 220))


def test_random_pairs_are_seeded_draws():
    a, b = transfer_pairs(CLASSES, 4, 1, 2, "random", seed=13)
    rng = np.random.default_rng(13)                            # A drawn first, then B
    assert a.tolist() == rng.choice(CLASSES[4], 2, replace=False).tolist()
    assert b.tolist() == rng.choice(CLASSES[1], 2, replace=False).tolist()
    assert len(set(a.tolist())) == 2 and set(a) <= set(CLASSES[4]) and set(b) <= set(CLASSES[1])
    again = transfer_pairs(CLASSES, 4, 1, 2, "random", seed=13)
    assert all(np.array_equal(x, y) for x, y in zip((a, b), again))
    classes = {q: np.arange(100 * q, 100 * q + 50) for q in (1, 2, 3, 4)}
    draws = {tuple(transfer_pairs(classes, 4, 1, 5, "random", seed=s)[0]) for s in range(5)}
    assert len(draws) > 1
    a, b = transfer_pairs(CLASSES, 2, 4, 3, "random")          # one Q2 piece: drawn with replacement
    assert a.tolist() == [1, 1, 1] and len(b) == 3


def test_quadrant_rows():
    from evaluation.transfer import quadrant_rows

    rows = quadrant_rows([4, 1, 0, 4, 2, 1])
    assert {q: r.tolist() for q, r in rows.items()} == {1: [1, 5], 2: [4], 3: [], 4: [0, 3]}
    assert transfer_pairs(rows, 4, 1, 2)[0].tolist() == [0, 3]


def test_pair_errors():
    with pytest.raises(ValueError, match="Q3"):
        transfer_pairs(CLASSES, 3, 1, 2)
    with pytest.raises(ValueError, match="positive"):
        transfer_pairs(CLASSES, 4, 1, 0)
    with pytest.raises(ValueError, match="mode"):
        transfer_pairs(CLASSES, 4, 1, 2, "last")


def test_demo_defaults_to_the_authors_first_20():
    import element_transfer

    parser = element_transfer.build_parser()
    args = parser.parse_args(["--demo"])
    element_transfer.resolve_pair_defaults(args)
    assert (args.pairs, args.n_pieces) == ("first", 20)
    args = parser.parse_args(["--demo", "--pairs", "random", "--n_pieces", "3"])
    element_transfer.resolve_pair_defaults(args)
    assert (args.pairs, args.n_pieces) == ("random", 3)
    args = parser.parse_args(["--source", "4", "--target", "1", "--elements", "pitch"])
    element_transfer.resolve_pair_defaults(args)
    assert (args.pairs, args.n_pieces) == ("random", 4)


# ------------------------------------------------------------- measured with controls

class FakeModel:
    """Stands in for MusER.generate: records its inputs; each piece is T words whose
    element columns are drawn from the generator (noise, 0..9), plus, for the elements in
    `copies`, 10 x the first dimension of that element's latent slice."""

    def __init__(self, copies=(), slice_dim=2, length=8):
        self.config = type("Config", (), {"slice_dim": slice_dim})()
        self.copies, self.length, self.calls = copies, length, []

    def generate(self, latent, emotion, sampling=None, generator=None, max_steps=None, on_step=None):
        self.calls.append(dict(latent=latent.clone(), emotion=emotion.clone(), generator=generator,
                               max_steps=max_steps, on_step=on_step, sampling=sampling))
        words = torch.randint(0, 10, (len(latent), self.length, 8), generator=generator,
                              device=latent.device)
        for name in self.copies:
            k, s = element_index(name), self.config.slice_dim
            words[..., k] += (10 * latent[:, :self.length, k * s]).round().long()
        return [w.cpu().numpy() for w in words]


def _statistic(words, name):
    """Per piece, the mean of an element's column: [pieces]."""
    return np.array([w[:, element_index(name)].mean() for w in words])


def _latents(n, seed, t=8, slice_dim=2):
    g = torch.Generator().manual_seed(seed)
    # One value per piece and dimension, held over its steps.
    return torch.randn(n, 1, 7 * slice_dim, generator=g).expand(n, t, 7 * slice_dim).clone()


def _old_fraction(start, moved, goal):
    """The projection of single decodes that element_transfer.py and the study used."""
    return float(((moved - start) * (goal - start)).sum() / ((goal - start) ** 2).sum())


def test_decode_transfer_decodes_every_role_in_one_seeded_batch():
    from evaluation.transfer import TRANSFER_ROLES, decode_transfer

    model = FakeModel()
    latent_a, latent_b = _latents(3, 1), _latents(3, 2)
    step = lambda: None                                          # noqa: E731
    out = decode_transfer(model, latent_a, latent_b, ["pitch", "tempo"], 4, 1, seed=7,
                          sampling="params", max_steps=5, on_step=step)
    assert list(out) == list(TRANSFER_ROLES) and all(len(out[r]) == 3 for r in TRANSFER_ROLES)
    call, = model.calls                                          # one generate call
    mixed = swap_elements(latent_a, latent_b, ["pitch", "tempo"], 2)
    expected = {"A": (latent_a, 4), "A again": (latent_a, 4), "B": (latent_b, 1), "B again": (latent_b, 1),
                "transferred": (mixed, 1), "control": (latent_a, 1)}
    for k, role in enumerate(TRANSFER_ROLES):
        latent, tag = expected[role]
        assert torch.equal(call["latent"][3 * k:3 * k + 3], latent), role
        assert call["emotion"][3 * k:3 * k + 3].tolist() == [tag] * 3, role
    assert call["generator"].initial_seed() == 7 and call["generator"].device == latent_a.device
    assert (call["sampling"], call["max_steps"], call["on_step"]) == ("params", 5, step)
    # The rows are the batch's rows in role order; the same seed gives the same pieces.
    again = decode_transfer(FakeModel(), latent_a, latent_b, ["pitch", "tempo"], 4, 1, seed=7)
    assert all(np.array_equal(x, y) for r in TRANSFER_ROLES for x, y in zip(out[r], again[r]))
    assert not np.array_equal(out["A"][0], out["A again"][0])   # independent samples
    # One tag per pair.
    decode_transfer(model, latent_a, latent_b, ["pitch"], [4, 3, 4], [1, 2, 1], seed=0)
    assert model.calls[-1]["emotion"][:3].tolist() == [4, 3, 4]
    assert model.calls[-1]["emotion"][-3:].tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match="quadrants"):
        decode_transfer(model, latent_a, latent_b, ["pitch"], 0, 1, seed=0)


def test_moved_fraction_reads_zero_for_noise_where_single_decodes_read_one_half():
    """Output that depends only on the generator's noise: the numerator of the projection
    of independent decodes averages 0, where the old projection of A's, the transferred and
    B's single decodes reads 1/2. (With no difference between A and B the denominator is
    noise around 0 as well, so the ratio itself says nothing: tested below where B differs.)"""
    from evaluation.transfer import decode_transfer, moved_fraction_per_pair

    n = 4000
    out = decode_transfer(FakeModel(), _latents(n, 1), _latents(n, 2), ["velocity"], 4, 1, seed=3)
    stat = {role: _statistic(words, "velocity") for role, words in out.items()}
    old = _old_fraction(stat["A"], stat["transferred"], stat["B"])
    assert abs(old - 0.5) < 0.05
    numerator, _ = moved_fraction_per_pair(stat["A"], stat["A again"], stat["B"], stat["B again"],
                                           stat["transferred"])
    # On the old formula's scale (its denominator), the new numerator is ~0.
    assert abs(numerator.sum() / ((stat["B"] - stat["A"]) ** 2).sum()) < 0.05
    assert abs(numerator.mean()) < 3 * numerator.std() / np.sqrt(n)


@pytest.mark.parametrize("swapped", ["velocity", "pitch"])
def test_moved_fraction_is_one_for_the_swapped_element_and_zero_for_the_others(swapped):
    """Each statistic copies its element's latent slice (plus sampling noise): the swapped
    element moves all the way to B, the others stay with A; the old projection of single
    decodes reads well above 0 for those."""
    from evaluation.transfer import decode_transfer, moved_fraction

    n = 4000
    copies = ("pitch", "velocity", "duration")
    out = decode_transfer(FakeModel(copies), 0.1 * _latents(n, 1), 0.1 * _latents(n, 2), [swapped],
                          4, 1, seed=5)
    for name in copies:
        stat = {role: _statistic(words, name) for role, words in out.items()}
        fraction = moved_fraction(stat["A"], stat["A again"], stat["B"], stat["B again"],
                                  stat["transferred"], scale=np.std(stat["A"]))
        control = moved_fraction(stat["A"], stat["A again"], stat["B"], stat["B again"],
                                 stat["control"], scale=np.std(stat["A"]))
        assert abs(control) < 0.1, name                          # the tag does nothing here
        if name == swapped:
            assert abs(fraction - 1) < 0.1
        else:
            assert abs(fraction) < 0.1, name
            assert _old_fraction(stat["A"], stat["transferred"], stat["B"]) > 0.15


def test_moved_fraction_columns_scale_and_undefined_values():
    from evaluation.transfer import moved_fraction, moved_fraction_per_pair

    a = np.array([[0.0, 0.0], [0.0, np.nan]])
    b = np.array([[2.0, 10.0], [4.0, 10.0]])
    moved = np.array([[1.0, 10.0], [4.0, 0.0]])
    # Pair 1's second column is undefined in A: left out of that pair's terms.
    numerator, denominator = moved_fraction_per_pair(a, a, b, b, moved, scale=[1.0, 10.0])
    assert numerator.tolist() == [2 + 1, 16] and denominator.tolist() == [4 + 1, 16]
    assert moved_fraction(a, a, b, b, moved, [1.0, 10.0]) == pytest.approx(19 / 21)
    assert moved_fraction(a, a, b, b, b) == 1.0 and moved_fraction(a, a, b, b, a) == 0.0
    assert np.isnan(moved_fraction(a, a, a, a, b))               # B not told from A
    assert np.isnan(moved_fraction(np.full((2, 1), np.nan), *[np.ones((2, 1))] * 4))
    with pytest.raises(ValueError, match="shape"):
        moved_fraction_per_pair(a, a, b, b, moved[:1])


def test_emotion_shift_against_the_control():
    from evaluation.transfer import emotion_shift, emotion_shift_per_pair

    predicted = np.array([1, 2, 1, 4])
    assert emotion_shift(predicted, predicted, 1) == 0.0         # identical: null 0
    assert emotion_shift([1, 1, 1, 4], [2, 1, 3, 4], 1) == pytest.approx(0.5)
    assert emotion_shift_per_pair([1, 1, 1, 4], [2, 1, 1, 1], 1).tolist() == [1, 0, 0, -1]
    assert emotion_shift_per_pair([1, 2], [2, 2], [1, 2]).tolist() == [1, 0]
    assert np.isnan(emotion_shift([], [], 1))
    with pytest.raises(ValueError, match="controls"):
        emotion_shift([1, 2], [1], 1)


def test_distinct_song_pairs_never_pair_a_song_with_itself():
    from evaluation.transfer import distinct_song_pairs
    from music.elements import song_of_name

    names = [f"Q{q}_song{s}_{c}.mid" for q, s, c in
             [(4, 0, 0), (4, 0, 1), (4, 1, 0), (4, 2, 0), (1, 0, 2), (1, 1, 1), (1, 3, 0), (1, 3, 1)]]
    songs = [song_of_name(n) for n in names]
    pool_a, pool_b = np.arange(4), np.arange(4, 8)
    a, b = distinct_song_pairs(pool_a, pool_b, songs, 50, seed=1)   # small pools: with replacement
    assert len(a) == len(b) == 50 and a.dtype == b.dtype == np.int64
    assert set(a) <= set(pool_a) and set(b) <= set(pool_b)
    assert all(songs[i] != songs[j] for i, j in zip(a, b))
    again = distinct_song_pairs(pool_a, pool_b, songs, 50, seed=1)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    assert any(not np.array_equal(a, distinct_song_pairs(pool_a, pool_b, songs, 50, seed=s)[0])
               for s in range(2, 6))
    a, b = distinct_song_pairs(pool_a, pool_b, songs, 3, seed=0)    # enough: no repeats
    assert len(set(a)) == 3 and len(set(b)) == 3
    # Only song 0's clips against song 0's clip: impossible, named by quadrant.
    with pytest.raises(ValueError, match="Q4 and Q1"):
        distinct_song_pairs([0, 1], [4], songs, 2, seed=0, quadrants=(4, 1))
    with pytest.raises(ValueError, match="positive"):
        distinct_song_pairs(pool_a, pool_b, songs, 0, seed=0)


# ---------------------------------------------------------------- element_transfer.py



def midi_notes(path):
    import miditoolkit

    return [(n.pitch, n.start, n.end, n.velocity)
            for track in miditoolkit.MidiFile(str(path)).instruments for n in track.notes]


def test_element_transfer_script(tiny_run, tmp_path, capsys):
    """End to end on the session's tiny trained checkpoint: the files hold the pieces their
    names say, and the report is printed."""
    import element_transfer
    from music.errors import UserError
    from tests.sample_cp import short_pieces

    sample_npz, ckpt = short_pieces(tiny_run.npz, tmp_path / "data"), tiny_run.muser / "best.pt"
    out = tmp_path / "transfer"
    args = ["--VQ_VAE", str(ckpt), "--data_path", str(sample_npz), "--source", "Q4",
            "--target", "1", "--elements", "velocity", "bar_beat", "--n_pieces", "2",
            "--max_steps", "24", "--out_dir", str(out)]
    assert element_transfer.main(args) == 0
    args += ["--audio", "False"]        # audio was rendered above; the runs below need none
    folder = out / "velocity_bar-beat_Q4toQ1"
    for stem in ("A_Q4", "A_Q4_reconstructed", "transferred_tag_Q1", "B_Q1", "control_tag_Q1"):
        for i in range(2):
            assert (folder / f"pair{i}_{stem}.mid").is_file()
            assert (folder / f"pair{i}_{stem}.png").stat().st_size > 0
    report = (out / "transfer.md").read_text()
    assert "| **velocity** |" in report and "| **onsets/bar** |" in report
    printed = capsys.readouterr().out
    assert "| transferred |" in printed and "| control |" in printed and "| B reconstructed |" in printed
    # The moved fractions of every element, for the transferred pieces and the control.
    assert "| moved A -> B | tempo | chord | **bar-beat** |" in report
    for row in ("| transferred | ", "| control (A's latent, tag Q1) | "):
        cells = next(line for line in report.splitlines()
                     if line.startswith(row) and line.count("|") == 9).split("|")[2:-1]
        assert all(c.strip() == "n/a" or np.isfinite(float(c)) for c in cells)
    assert "control_tag_Q1.mid" in (out / "index.html").read_text()    # listened to beside the four
    # --pairs first: the first two pieces of Q4 and of Q1 in data order, named in the report.
    from music.data import load_cp_dataset
    data = load_cp_dataset(sample_npz)
    first = [np.flatnonzero(data.emotion == q)[:2] for q in (4, 1)]
    from evaluation import evaluator as E
    rng = np.random.default_rng(0)               # a toy emotion evaluator: the branch that uses one
    quadrants = np.repeat([1, 2, 3, 4], 10)
    features = rng.normal(size=(40, len(E.FEATURES))) + quadrants[:, None]
    evaluator = E.fit_evaluator(features, quadrants).save(tmp_path / "evaluator.json")
    assert element_transfer.main(args + ["--pairs", "first", "--evaluator", str(evaluator)]) == 0
    report = (out / "transfer.md").read_text()
    assert "| control | " in report and "Emotion shift: share of transferred pieces predicted Q1" in report
    assert f"A = {', '.join(str(data.names[r]) for r in first[0])}; " in report
    assert f"B = {', '.join(str(data.names[r]) for r in first[1])}. " in report
    assert "data order" in report
    # The files hold what their names say: A and B are those data pieces; the decoded ones
    # are A's latent under A's tag, A's latent with B's velocity and bar-beat slices under
    # the target's tag, and A's own latent under the target's tag, sampled in one batch of
    # decode_transfer's roles (A, A again, B, B again, transferred, control) with a
    # generator seeded --seed (13).
    from music.cp import words_to_midi
    from music.piece_io import dataset_words
    from models.sampling import SamplingParams
    from run.checkpoint import load_muser

    model = load_muser(str(ckpt))[0].eval()
    rows = np.concatenate(first)
    with torch.no_grad():
        latent = model.encode(torch.as_tensor(data.y[rows, :model.config.max_len], dtype=torch.long))[0]
    mixed = swap_elements(latent[:2], latent[2:], ["velocity", "bar_beat"], model.config.slice_dim)
    batch = torch.cat([latent[:2], latent[:2], latent[2:], latent[2:], mixed, latent[:2]])
    decoded = model.generate(batch, torch.tensor([4] * 4 + [1] * 8), SamplingParams(),
                             generator=torch.Generator().manual_seed(13), max_steps=24)
    expected = {"A_Q4": [dataset_words(data, r) for r in first[0]], "A_Q4_reconstructed": decoded[:2],
                "transferred_tag_Q1": decoded[8:10], "control_tag_Q1": decoded[10:],
                "B_Q1": [dataset_words(data, r) for r in first[1]]}
    for stem, pieces in expected.items():
        for i, words in enumerate(pieces):
            words_to_midi(words, data.word2event, tmp_path / "expected.mid",
                          close_empty_bars=stem not in ("A_Q4", "B_Q1"))
            notes = midi_notes(folder / f"pair{i}_{stem}.mid")
            assert notes and notes == midi_notes(tmp_path / "expected.mid"), (stem, i)
    # --class_index: the order of a {name}_idx.npz decides which pieces come first.
    reversed_idx = tmp_path / "reversed_idx.npz"
    np.savez(reversed_idx, **{f"cls_{q}_idx": np.flatnonzero(data.emotion == q)[::-1] for q in (1, 2, 3, 4)})
    assert element_transfer.main(args + ["--pairs", "first", "--class_index", str(reversed_idx)]) == 0
    last = np.flatnonzero(data.emotion == 4)[::-1][:2]
    assert f"A = {', '.join(str(data.names[r]) for r in last)}; " in (out / "transfer.md").read_text()
    np.savez(reversed_idx, **{f"cls_{q}_idx": np.array([len(data) + 5]) for q in (1, 2, 3, 4)})
    with pytest.raises(UserError, match="outside"):
        element_transfer.main(args + ["--class_index", str(reversed_idx)])
    with pytest.raises(UserError, match="--elements"):
        element_transfer.main(args[:9] + ["loudness"])
    with pytest.raises(UserError, match="--demo"):
        element_transfer.main(["--VQ_VAE", str(ckpt), "--data_path", str(sample_npz)])
