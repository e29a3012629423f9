"""Converting the authors' checkpoints (convert_checkpoint.py, run/authors_checkpoint.py).

Their files cannot be downloaded here, so tests/authors_spec.py rebuilds the key set and
shapes of their state dicts from their code, fills them with random weights, and computes
their forward pass directly from those tensors.
"""
import pickle

import numpy as np
import pytest
import torch

from convert_checkpoint import main as convert_main
from generate import main as generate_main
from models.config import PRESETS, MusERConfig, PriorConfig
from tests import authors_spec as spec
from run.authors_checkpoint import EMA_STEPS, convert_muser, convert_prior, muser_config
from run.checkpoint import build_muser, build_prior, load_checkpoint
from run.cli import run_main
from music.cp import save_dictionary
from music.errors import UserError
from run.codes import check_prior_codes, codebook_fingerprint

TYPE_IDS = {"EOS": 0, "Emotion": 1, "Metrical": 2, "Note": 3}
EMOPIA_SIZES = [56, 135, 18, 4, 87, 18, 42, 5]          # FIELDS order (tempo first)
# Their embedding names in our FIELDS order.
FIELD_NAMES = ("tempo_emb", "chord_emb", "bar_beat_emb", "type_emb", "pitch_emb", "duration_emb",
               "velocity_emb", "emotion_emb")
HEAD_NAMES = ("predict_tempo", "predict_chord", "predict_bar_beat", "predict_type", "predict_pitch",
              "predict_duration", "predict_velocity")


def their_embeddings(vocab_sizes, emb_sizes):
    """spec.EMBEDDINGS-style tuple (their order) from sizes in FIELDS order."""
    by_name = {n: (v, e) for n, v, e in zip(FIELD_NAMES, vocab_sizes, emb_sizes)}
    return tuple((name, *by_name[name]) for name, _, _ in spec.EMBEDDINGS)


# A small model of the same structure, with distinct widths so that a wrong column order shows.
SMALL = dict(vocab_sizes=[7, 9, 5, 4, 11, 6, 8, 5], emb_sizes=[8, 12, 6, 4, 10, 7, 9, 5], max_len=16,
             enc_d_model=16, enc_layers=2, enc_heads=2, latent_dim=28, slice_dim=4, codebook_size=32,
             dr_layers=2, dr_heads=2, dec_d_model=16, dec_layers=2, dec_heads=2, sub_layers=2,
             sub_heads=2, chunk_size=4, type_ids=TYPE_IDS)
SMALL_SPEC = dict(embeddings=their_embeddings(SMALL["vocab_sizes"], SMALL["emb_sizes"]), N=2, H=2,
                  encoder_width=16, decoder_width=16, num_embeddings=32, embedding_dim=28, dr_width=16,
                  dr_layers=2, dr_heads=2, decoder_layers=2, sub_layers=2, pe_rows=40)


def small_config(**changes):
    return MusERConfig(**{**SMALL, **changes})


def signature(t):
    """Exact, and invariant under reordering the values (the input linears' columns are
    reordered); random values make it unique."""
    low, high = t.float().aminmax()
    return t.numel(), low.item(), high.item()


def assert_each_tensor_used_once(theirs: dict, ours: dict, skip_ours=("quantizer.ema_steps",)):
    """Every tensor of theirs (positional tables aside) is in exactly one of ours, and every
    one of ours comes from exactly one of theirs (random values make the sums unique)."""
    source = {}
    for key, t in theirs.items():
        if not key.endswith(".pe"):
            assert signature(t) not in source, f"two tensors of theirs look alike: {key}"
            source[signature(t)] = key
    used = {}
    for key, t in ours.items():
        if key in skip_ours:
            continue
        assert signature(t) in source, f"{key} is filled from none of their tensors"
        used.setdefault(source[signature(t)], []).append(key)
    unused = set(source.values()) - set(used)
    assert not unused, f"unused: {sorted(unused)[:5]}"
    assert all(len(v) == 1 for v in used.values())


# ---------------------------------------------------------------------------------------
# The paper-sized models: every key, every shape.

def test_paper_muser_state_dict_maps_one_to_one():
    theirs = spec.random_state(spec.muser_spec(**spec.PAPER))
    config = muser_config("MusER_TRANS_CA_GE", EMOPIA_SIZES, TYPE_IDS)
    model, ours = convert_muser(theirs, config, "their.pt")
    assert set(ours) == set(model.state_dict())
    assert_each_tensor_used_once(theirs, ours)
    assert int(ours["quantizer.ema_steps"]) == EMA_STEPS
    assert torch.equal(ours["quantizer.codebook"], theirs["VQ.embeddings"])
    assert torch.equal(ours["quantizer.ema_count_hidden"], theirs["VQ.ema_cluster_size.hidden"])
    assert torch.equal(ours["element_decoders.3.layers.1.norm_ff.weight"],
                       theirs["type_decoder.layers.1.norm2.weight"])


def test_paper_mean_variant_has_no_dr():
    theirs = spec.random_state(spec.muser_spec(**spec.PAPER, dr=False))
    model, ours = convert_muser(theirs, muser_config("MusER_MEAN_CA_GE", EMOPIA_SIZES, TYPE_IDS), "their.pt")
    assert model.dr is None
    assert_each_tensor_used_once(theirs, ours)


def test_paper_prior_state_dict_maps_one_to_one():
    theirs = spec.random_state(spec.prior_spec(300))
    model, ours = convert_prior(theirs, PriorConfig(n_codes=300), "prior.pt")
    assert set(ours) == set(model.state_dict())
    assert_each_tensor_used_once(theirs, ours, skip_ours=())


# ---------------------------------------------------------------------------------------
# The converted model computes what theirs computes.

def random_words(vocab_sizes, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(v, (batch, length), generator=g) for v in vocab_sizes], dim=-1)


@torch.no_grad()
def test_converted_muser_matches_their_forward():
    theirs = spec.random_state(spec.muser_spec(**SMALL_SPEC), seed=1)
    model, _ = convert_muser(theirs, small_config(), "their.pt")
    x = random_words(SMALL["vocab_sizes"], 3, 16, seed=2)
    y = random_words(SMALL["vocab_sizes"], 3, 16, seed=3)
    latent_ref, codes_ref, reduced_ref, log_probs_ref = spec.muser_forward(
        theirs, x, y, N=2, H=2, dr_layers=2, dr_heads=2, decoder_layers=2, sub_layers=2)

    torch.testing.assert_close(model._encoder_output(y), latent_ref, atol=1e-5, rtol=1e-5)
    latent, codes = model.encode(y)
    assert torch.equal(codes, codes_ref)
    assert len(set(codes.flatten().tolist())) > 3            # the check sees several codes
    torch.testing.assert_close(model.reduce_latent(latent), torch.stack(reduced_ref), atol=1e-4, rtol=1e-4)
    log_probs = model.element_log_probs(x, y, latent)
    for k, head in enumerate(HEAD_NAMES):
        torch.testing.assert_close(log_probs[k], log_probs_ref[head], atol=1e-4, rtol=1e-4, msg=head)


@torch.no_grad()
def test_converted_prior_matches_their_forward():
    theirs = spec.random_state(spec.prior_spec(10, N=2, encoder_width=16, pe_rows=40), seed=4)
    model, _ = convert_prior(theirs, PriorConfig(n_codes=10, d_model=16, layers=2, heads=2, max_len=20,
                                                 chunk_size=4), "prior.pt")
    tokens = torch.randint(15, (2, 20), generator=torch.Generator().manual_seed(5))
    expected = spec.prior_forward(theirs, tokens, N=2, H=2, temperature=0.3)
    torch.testing.assert_close(model(tokens), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# Wrong or partial files: one line naming the keys.

def small_state(seed=0):
    return spec.random_state(spec.muser_spec(**SMALL_SPEC), seed=seed)


def conversion_error(state, config=None) -> str:
    with pytest.raises(UserError) as info:
        convert_muser(state, config or small_config(), "their.pt")
    message = str(info.value)
    assert "\n" not in message and message.startswith("their.pt: ")
    return message


def test_missing_and_unexpected_keys_are_named():
    state = small_state()
    del state["DR.layers.1.linear1.weight"]
    state["VQ.counter"] = torch.zeros(())
    message = conversion_error(state)
    assert "missing DR.layers.1.linear1.weight" in message and "unexpected VQ.counter" in message


def test_many_missing_keys_are_summarised():
    state = {k: v for k, v in small_state().items() if not k.startswith("transformer_decoder.")}
    message = conversion_error(state)
    assert "missing transformer_decoder." in message and "more)" in message


def test_wrong_vocabulary_names_the_tensor():
    message = conversion_error(small_state(), small_config(vocab_sizes=[7, 9, 5, 4, 12, 6, 8, 5]))
    assert "pitch_emb.lut.weight is [11, 10]" in message and "[12, 10]" in message


def test_other_variant_file_is_refused():
    state = spec.random_state(spec.muser_spec(**SMALL_SPEC, dr=False))
    assert "missing DR." in conversion_error(state)


def test_foreign_positional_table_is_refused():
    state = small_state()
    state["decoder_pos_embedd.0.pe"] = torch.randn_like(state["decoder_pos_embedd.0.pe"])
    assert "decoder_pos_embedd.0.pe is not the sinusoidal" in conversion_error(state)


# ---------------------------------------------------------------------------------------
# The script, end to end (tiny preset sizes, for speed).

def tiny_muser_spec(vocab_sizes):
    t = PRESETS["tiny"]["muser"]
    return spec.muser_spec(embeddings=their_embeddings(vocab_sizes, t["emb_sizes"]), N=t["enc_layers"],
                           H=t["enc_heads"], encoder_width=t["enc_d_model"], decoder_width=t["dec_d_model"],
                           num_embeddings=t["codebook_size"], embedding_dim=t["latent_dim"],
                           dr_width=t["max_len"], dr_layers=t["dr_layers"], dr_heads=t["dr_heads"],
                           decoder_layers=t["dec_layers"], sub_layers=t["sub_layers"], pe_rows=100)


def write_dictionary(path, vocab_sizes):
    from music.elements import FIELDS
    event2word = {}
    for field, size in zip(FIELDS, vocab_sizes):
        names = list(TYPE_IDS) if field == "type" else [0] + [f"{field}_{i}" for i in range(1, size)]
        event2word[field] = {name: i for i, name in enumerate(names)}
    word2event = {f: {i: e for e, i in m.items()} for f, m in event2word.items()}
    save_dictionary(path, event2word, word2event)


def test_script_converts_both_checkpoints(tmp_path):
    sizes = [7, 9, 5, 4, 11, 6, 8, 5]
    write_dictionary(tmp_path / "dictionary.pkl", sizes)
    torch.save({"model": spec.random_state(tiny_muser_spec(sizes)), "optimizer": {}, "epoch": 299},
               tmp_path / "muser.pth")
    muser_out = tmp_path / "saved_models" / "MusER_TRANS_CA_GE_emopia" / "best.pt"
    assert convert_main(["--authors", str(tmp_path / "muser.pth"), "--kind", "muser", "--preset", "tiny",
                         "--dictionary", str(tmp_path / "dictionary.pkl"), "--out", str(muser_out)]) == 0
    checkpoint = load_checkpoint(muser_out, "muser")
    vq_vae = build_muser(checkpoint, muser_out)
    assert checkpoint["epoch"] == 299 and checkpoint["vocab_sizes"] == sizes
    assert checkpoint["dictionary"]["event2word"]["type"] == TYPE_IDS

    used = [3, 5, 8, 13, 21, 30]
    # Their VQ_dict as their VQ_explore.py writes it: numpy integers, no fingerprint.
    codes = np.array(used, dtype=np.int64)
    with open(tmp_path / "VQ_dict.data", "wb") as handle:
        pickle.dump({0: {c: np.int64(i) for i, c in enumerate(codes)}, 1: dict(enumerate(codes))}, handle)
    t = PRESETS["tiny"]["prior"]
    prior_state = spec.random_state(spec.prior_spec(len(used), N=t["layers"], encoder_width=t["d_model"]))
    prior_state["emb.lut.weight"] = torch.randn(len(used) + 5, t["emb_size"])
    prior_state["input_linear.weight"] = torch.randn(t["d_model"], t["emb_size"])
    torch.save({"model": prior_state, "optimizer": {}, "epoch": 1299}, tmp_path / "prior.pth")
    prior_out = tmp_path / "prior" / "best.pt"
    assert convert_main(["--authors", str(tmp_path / "prior.pth"), "--kind", "prior", "--preset", "tiny",
                         "--vq_dict", str(tmp_path / "VQ_dict.data"), "--VQ_VAE", str(muser_out),
                         "--out", str(prior_out)]) == 0
    prior_ckpt = load_checkpoint(prior_out, "prior")
    assert build_prior(prior_ckpt, prior_out).config.n_codes == len(used)
    assert prior_ckpt["vq_dict"][1] == dict(enumerate(used))
    assert all(type(k) is int and type(v) is int for part in (0, 1) for k, v in prior_ckpt["vq_dict"][part].items())
    check_prior_codes(prior_ckpt, prior_out, codebook_fingerprint(vq_vae), muser_out)   # generate.py's check
    # ... and generate.py reads the converted pair (a weights-only load: plain ints only).
    assert generate_main(["--VQ_prior", str(prior_out), "--VQ_VAE", str(muser_out), "--music_file", "converted",
                          "--out_root", str(tmp_path / "generated"), "--n_per_emotion", "1", "--max_steps", "16",
                          "--device", "cpu", "--piano_rolls", "False", "--audio", "False"]) == 0
    pieces = sorted((tmp_path / "generated" / "converted").glob("*.mid"))
    assert len(pieces) == 4 and all(p.stat().st_size > 0 for p in pieces)


def test_script_error_is_one_line(tmp_path, capsys):
    sizes = [7, 9, 5, 4, 11, 6, 8, 5]
    write_dictionary(tmp_path / "dictionary.pkl", sizes)
    state = spec.random_state(tiny_muser_spec(sizes))
    del state["predict_pitch.bias"]
    torch.save({"model": state, "optimizer": {}, "epoch": 3}, tmp_path / "muser.pth")
    with pytest.raises(SystemExit) as info:
        run_main(convert_main, ["--authors", str(tmp_path / "muser.pth"), "--kind", "muser",
                                "--preset", "tiny", "--dictionary", str(tmp_path / "dictionary.pkl"),
                                "--out", str(tmp_path / "out.pt")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "missing predict_pitch.bias" in err
    assert not (tmp_path / "out.pt").exists()


def test_script_refuses_other_files(tmp_path, capsys):
    torch.save({"optimizer": {}, "epoch": 3}, tmp_path / "odd.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    for name, words in (("odd.pth", "expected the authors'"), ("text.pth", "not a readable"),
                        ("absent.pth", "file not found")):
        with pytest.raises(SystemExit):
            run_main(convert_main, ["--authors", str(tmp_path / name), "--kind", "muser",
                                    "--out", str(tmp_path / "out.pt")])
        assert words in capsys.readouterr().err
