"""The prior over a product VQ-VAE's seven code streams (models/product_prior.py), and a
product model through the whole pipeline."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

import element_transfer
import generate
import MusER
import Prior_train
import VQ_explore
from models import product_prior as product_module
from models.config import PriorConfig, apply_preset
from models.packed import cast_for_generation
from models.prior import Prior, guided_logits, prior_step, training_sequences
from models.product_prior import ProductPrior, prior_for
from models.sampling import sample_tokens
from run.checkpoint import build_muser, build_prior, load_checkpoint
from run.cli import run_main
from run.codes import load_model_vq_dict, used_code_counts
from tests.conftest import ROOT
from tests.test_guidance import record_sampled_logits

pytestmark = pytest.mark.usefixtures("no_loss_curves")   # tests/conftest.py

STREAM_CODES = [5, 3, 7, 2, 4, 6, 3]
WIDTH = max(STREAM_CODES)


def tiny_config(**kw):
    config = apply_preset(PriorConfig(n_codes=sum(STREAM_CODES), stream_codes=STREAM_CODES), "tiny")
    return dataclasses.replace(config, **kw)


def tiny_product(**kw):
    torch.manual_seed(0)
    return ProductPrior(tiny_config(**kw))


def random_codes(n: int, length: int, seed: int = 0):
    """Compact codes [n, length, 7], each stream within its own count."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, k, (n, length), generator=generator) for k in STREAM_CODES], -1)


# ---------------------------------------------------------------------- config and layout

def test_config_records_the_streams_and_a_joint_config_stays_joint():
    config = tiny_config()
    assert config.quantizer == "product" and config.streams == 7
    assert config.stream_vocab_sizes == [n + 5 for n in STREAM_CODES]
    assert config.vocab_size == sum(STREAM_CODES) + 35
    assert PriorConfig.from_dict(config.to_dict()) == config
    assert isinstance(prior_for(config), ProductPrior)
    joint = PriorConfig(n_codes=40)
    old = {k: v for k, v in joint.to_dict().items() if k != "stream_codes"}     # a checkpoint from before
    assert PriorConfig.from_dict(old) == joint and joint.quantizer == "joint" and joint.streams == 1
    assert type(prior_for(joint)) is Prior
    guided = tiny_config(emotion_dropout=0.1)
    assert guided.stream_vocab_sizes == [n + 6 for n in STREAM_CODES]
    for bad in ([5, 3], [0, *STREAM_CODES[1:]]):
        with pytest.raises(ValueError, match="stream_codes"):
            PriorConfig(n_codes=sum(STREAM_CODES), stream_codes=bad)


def test_training_sequences_put_the_emotion_first_in_every_stream():
    codes = random_codes(2, 4)
    seq = training_sequences(codes, torch.tensor([2, 4]), STREAM_CODES)
    assert seq["inp"].shape == seq["target"].shape == (2, 5, 7)
    assert seq["inp"][:, 0].tolist() == [[n + 2 for n in STREAM_CODES], [n + 4 for n in STREAM_CODES]]
    assert torch.equal(seq["inp"][:, 1:], codes) and torch.equal(seq["target"][:, :4], codes)
    assert (seq["target"][:, 4] == 0).all()
    assert torch.equal(tiny_product().emotion_token(torch.tensor([2, 4])), seq["inp"][:, 0])


def test_forward_is_a_log_softmax_per_head_over_its_own_codes():
    prior = tiny_product().eval()
    seq = training_sequences(random_codes(2, 9), torch.tensor([1, 3]), STREAM_CODES)
    out = prior(seq["inp"], seq["target"])
    assert out.shape == (2, 10, 7, WIDTH)
    for k, n in enumerate(STREAM_CODES):
        torch.testing.assert_close(out[..., k, :n].exp().sum(-1), torch.ones(2, 10))
        assert (out[..., k, n:] == float("-inf")).all()
    torch.testing.assert_close(out, torch.log_softmax(prior.logits(seq["inp"], seq["target"]) / 0.3, -1))
    step = prior_step(prior, seq)
    assert step["loss"].isfinite() and 0 <= step["acc_mean"] <= 1


def test_heads_are_conditioned_in_slice_order_on_the_codes_before_them():
    """Changing the code of stream j at a step changes the logits of heads j+1..6 at that
    step, and neither heads 0..j there nor anything at other steps."""
    prior = tiny_product().eval()
    seq = training_sequences(random_codes(3, 12), torch.tensor([1, 2, 3]), STREAM_CODES)
    before = prior.logits(seq["inp"], seq["target"])
    for j in range(7):
        target = seq["target"].clone()
        target[:, 5, j] = (target[:, 5, j] + 1) % STREAM_CODES[j]
        after = prior.logits(seq["inp"], target)
        assert torch.equal(after[:, :5], before[:, :5]) and torch.equal(after[:, 6:], before[:, 6:])
        assert torch.equal(after[:, 5, :j + 1], before[:, 5, :j + 1]), j
        for k in range(j + 1, 7):
            assert not torch.allclose(after[:, 5, k], before[:, 5, k]), (j, k)


def test_the_prior_is_causal_over_steps():
    prior = tiny_product().eval()
    seq = training_sequences(random_codes(2, 30), torch.tensor([1, 4]), STREAM_CODES)
    changed = seq["inp"].clone()
    changed[:, 20:] = random_codes(2, 11, seed=1)
    a, b = prior(seq["inp"], seq["target"]), prior(changed, seq["target"])
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_emotion_dropout_replaces_every_stream_emotion_token_in_training_only():
    prior = tiny_product(emotion_dropout=1.0)
    inp = training_sequences(random_codes(4, 6), torch.tensor([1, 2, 3, 4]), STREAM_CODES)["inp"]
    seen = []

    def record_inputs(module, args):            # the steps' tokens [B, L, 7], not the heads' codes
        if args[0].dim() == 3:
            seen.append(args[0].clone())
    hook = prior.embedding.register_forward_pre_hook(record_inputs)
    prior.train()(inp, inp)
    prior.eval()(inp, inp)
    hook.remove()
    offsets = prior.offsets
    assert len(seen) == 2
    assert (seen[0][:, 0] == offsets + torch.tensor(STREAM_CODES) + 5).all()      # "no emotion", every stream
    assert torch.equal(seen[0][:, 1:], inp[:, 1:] + offsets)
    assert torch.equal(seen[1][:, 0], inp[:, 0] + offsets)                       # eval: the emotion tokens


# ---------------------------------------------------------------------- generation

def full_recompute(prior, emotion, n_steps, scale, seed, temperature=0.3, top_p=0.9):
    """The reference: the parallel prior re-run on each prefix (after the emotion tokens and,
    guided, after "no emotion"), each head's logits from head_logits with the codes drawn so
    far at this step, combined as uncond + S * (cond - uncond)."""
    generator = torch.Generator().manual_seed(seed)
    starts = [prior.emotion_token(emotion)[:, None]]
    if scale != 1:
        starts.append(prior.emotion_token(torch.full_like(emotion, 5))[:, None])
    codes = torch.zeros(len(emotion), 0, 7, dtype=torch.long)
    with torch.no_grad():
        for _ in range(n_steps):
            states = [prior.states(torch.cat([start, codes], 1))[:, -1] for start in starts]
            step = torch.zeros(len(emotion), 7, dtype=torch.long)
            for k, n in enumerate(STREAM_CODES):
                logits = [prior.head_logits(h, step)[:, k, :n] for h in states]
                if scale != 1:
                    logits = [guided_logits(torch.cat(logits), scale)]
                step[:, k] = sample_tokens(logits[0], temperature, top_p, generator)
            codes = torch.cat([codes, step[:, None]], 1)
    return codes


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_recurrent_generation_equals_a_full_recompute(scale):
    prior = tiny_product(emotion_dropout=0.1).double()
    emotion = torch.tensor([1, 2, 4])
    expected = full_recompute(prior.eval(), emotion, 24, scale, seed=7)
    assert expected.shape == (3, 24, 7)
    assert all(expected[..., k].max() < n for k, n in enumerate(STREAM_CODES))
    prior.train()
    for recurrent, recompute in ((True, "window"), (False, "window"), (False, "prefix")):
        codes = prior.generate(emotion, 24, generator=torch.Generator().manual_seed(7), guidance=scale,
                               recurrent=recurrent, recompute=recompute)
        assert torch.equal(codes, expected), (recurrent, recompute)
    assert prior.training
    other = prior.generate(emotion, 24, generator=torch.Generator().manual_seed(8), guidance=scale)
    assert not torch.equal(other, expected)


@pytest.mark.parametrize("recurrent", [True, False])
def test_guidance_one_is_unguided_sampling_bit_for_bit(recurrent, monkeypatch):
    prior = tiny_product(emotion_dropout=0.1)
    emotion = torch.tensor([1, 2, 3, 4])
    logits = record_sampled_logits(monkeypatch)
    rows = []

    class Recording(product_module.RecurrentProductPrior):
        def __init__(self, prior, batch):
            rows.append(batch)
            super().__init__(prior, batch)
    monkeypatch.setattr(product_module, "RecurrentProductPrior", Recording)
    runs = []
    for kwargs in ({}, {"guidance": 1.0}):
        logits.clear()
        codes = prior.generate(emotion, 12, generator=torch.Generator().manual_seed(4), recurrent=recurrent, **kwargs)
        runs.append((codes, list(logits)))
    (plain, plain_logits), (one, one_logits) = runs
    assert torch.equal(one, plain) and len(one_logits) == 12 * 7
    assert all(torch.equal(a, b) for a, b in zip(one_logits, plain_logits))
    assert [l.shape for l in one_logits[:7]] == [(4, n) for n in STREAM_CODES]
    guided = prior.generate(emotion, 12, generator=torch.Generator().manual_seed(4), recurrent=recurrent, guidance=2.0)
    assert not torch.equal(guided, plain)
    assert rows == ([4, 4, 8] if recurrent else [])


def test_guidance_needs_the_no_emotion_token():
    with pytest.raises(ValueError, match="emotion_dropout"):
        tiny_product().generate(torch.tensor([1]), 4, guidance=2.0)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_narrow_generation_dtypes_draw_valid_codes(dtype):
    prior = cast_for_generation(tiny_product().eval(), dtype)
    codes = prior.generate(torch.tensor([1, 3]), 10, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 10, 7)
    assert all(0 <= codes[..., k].min() and codes[..., k].max() < n for k, n in enumerate(STREAM_CODES))


def test_the_emotion_reaches_every_stream_in_training_and_generation():
    """Trained on codes that depend only on the quadrant, the prior generates each quadrant's
    codes in all seven streams."""
    torch.manual_seed(0)
    prior = ProductPrior(tiny_config())
    length = 8
    wanted = {q: torch.stack([(torch.arange(length) * (q + k) + q) % n for k, n in enumerate(STREAM_CODES)], -1)
              for q in (1, 2, 3, 4)}
    emotion = torch.tensor([1, 2, 3, 4] * 2)
    seq = training_sequences(torch.stack([wanted[int(q)] for q in emotion]), emotion, STREAM_CODES)
    seq = {k: v[:, :length] for k, v in seq.items()}
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(80):
        loss = prior_step(prior, seq)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    asked = torch.tensor([1, 2, 3, 4]).repeat_interleave(2)
    codes = prior.generate(asked, length, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([wanted[int(q)] for q in asked])
    assert (codes == expected).float().mean() > 0.9


# ---------------------------------------------------------------------- the pipeline

TINY = ["--preset", "tiny", "--device", "cpu"]
FAST = ["--lr", "3e-3", "--batch_size", "8"]


@pytest.fixture(scope="module")
def product_run(sample_npz, tmp_path_factory):
    """A product MusER (one epoch), its per-slice VQ_dict and a product prior with emotion
    dropout (two epochs), trained by the scripts on the shipped sample."""
    work = tmp_path_factory.mktemp("product")
    muser, vq_dict, prior = work / "muser", work / "vq_dict.data", work / "prior"
    assert MusER.main(["--data_path", str(sample_npz), "--model_path", str(muser), "--Epoch", "1",
                       "--quantizer", "product", "--slice_codebook_size", "8", *FAST, *TINY]) == 0
    assert VQ_explore.main(["--data_path", str(sample_npz), "--VQ_VAE", str(muser), "--plot_flag", "False",
                            "--vq_dict_path", str(vq_dict), "--device", "cpu"]) == 0
    assert Prior_train.main(["--data_path", str(sample_npz), "--VQ_VAE", str(muser), "--vq_dict_path", str(vq_dict),
                             "--model_path", str(prior), "--Epoch", "2", "--emotion_dropout", "0.2",
                             *FAST, *TINY]) == 0
    return dataclasses.make_dataclass("Run", ["npz", "muser", "vq_dict", "prior", "work"])(
        sample_npz, muser, vq_dict, prior, work)


def test_vq_explore_and_prior_train_take_a_product_model(product_run):
    history = (product_run.muser / "metrics.csv").read_text().splitlines()
    header, row = history[0].split(","), history[1].split(",")
    assert 7 <= int(float(row[header.index("codes_used")])) <= 7 * 8   # every slice uses one of its codes
    muser = build_muser(load_checkpoint(product_run.muser / "best.pt", "muser"))
    vq_dict = load_model_vq_dict(product_run.vq_dict, muser)
    counts = used_code_counts(vq_dict)
    assert len(counts) == 7 and all(1 <= n <= 8 for n in counts)
    checkpoint = load_checkpoint(product_run.prior / "best.pt", "prior")
    assert checkpoint["config"]["stream_codes"] == counts and checkpoint["config"]["n_codes"] == sum(counts)
    assert checkpoint["vq_dict"] == {"slices": vq_dict["slices"]}
    prior = build_prior(checkpoint)
    assert isinstance(prior, ProductPrior) and prior.config.supports_guidance
    reloaded = prior.state_dict()
    assert all(torch.equal(reloaded[key], value) for key, value in checkpoint["model"].items())


def test_generate_and_transfer_with_a_product_model(product_run, tmp_path):
    """generate.py samples the codes prior.generate samples from the seed (seven per step),
    with guidance and its S = 1 comparison page; element_transfer.py swaps slices."""
    args = ["--VQ_prior", str(product_run.prior), "--VQ_VAE", str(product_run.muser), "--music_file", "pq",
            "--out_root", str(tmp_path), "--emotion", "2", "--n_per_emotion", "2", "--max_steps", "16",
            "--guidance", "2", "--compare_guidance", "--piano_rolls", "False", "--audio", "False", "--device", "cpu"]
    assert generate.main(args) == 0
    with open(tmp_path / "pq_index.data", "rb") as handle:
        index = pickle.load(handle)
    prior = build_prior(load_checkpoint(product_run.prior / "best.pt", "prior"))
    expected = prior.generate(torch.tensor([2, 2]), 64, generator=torch.Generator().manual_seed(13), guidance=2.0)
    assert torch.equal(torch.as_tensor(np.stack(index["codes"])), expected)
    assert sorted(p.name for p in (tmp_path / "pq").glob("*.mid")) == [
        "emotion2_0.mid", "emotion2_1.mid", "guidance1_emotion2_0.mid", "guidance1_emotion2_1.mid"]
    assert "S = 1 against S = 2" in (tmp_path / "pq" / "index.html").read_text()

    assert element_transfer.main(["--VQ_VAE", str(product_run.muser), "--data_path", str(product_run.npz),
                                  "--source", "Q4", "--target", "Q1", "--elements", "velocity",
                                  "--n_pieces", "1", "--out_dir", str(tmp_path / "transfer"),
                                  "--audio", "False", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "transfer").rglob("*.mid")) == [
        "pair0_A_Q4.mid", "pair0_A_Q4_reconstructed.mid", "pair0_B_Q1.mid",
        "pair0_control_tag_Q1.mid", "pair0_transferred_tag_Q1.mid"]


@pytest.mark.parametrize("which", ["product prior, joint VQ-VAE", "joint prior, product VQ-VAE"])
def test_a_prior_of_the_other_quantizer_is_refused_in_one_line(product_run, tmp_path, capsys, which):
    pretrained = ROOT / "pretrained"
    prior, muser = ((product_run.prior, pretrained / "muser.pt") if which.startswith("product")
                    else (pretrained / "prior.pt", product_run.muser))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(generate.main, ["--VQ_prior", str(prior), "--VQ_VAE", str(muser), "--music_file", "x",
                                 "--out_root", str(tmp_path), "--device", "cpu"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    kind = "one codebook per slice" if which.startswith("product") else "one joint codebook"
    assert lines[0].startswith(f"error: {prior}") and f"this prior is over the codes of a VQ-VAE with {kind}" in lines[0]
