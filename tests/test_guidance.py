"""Classifier-free guidance of the prior (beyond the paper): emotion dropout in training,
guided sampling in the recurrent generation, and the flags of Prior_train.py and generate.py."""
from __future__ import annotations

import dataclasses
import pickle
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import generate
import MusER
import Prior_train
import VQ_explore
from models import prior as prior_module
from models.config import PriorConfig, apply_preset
from models.packed import packed_stacks
from models.prior import Prior, drop_emotion
from models.sampling import sample_tokens
from music.errors import UserError
from run.checkpoint import build_prior, load_checkpoint
from run.cli import run_main
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("no_loss_curves")   # tests/conftest.py

PRETRAINED = ROOT / "pretrained"
N_CODES = 40


def tiny_prior(**kw):
    torch.manual_seed(0)
    return Prior(dataclasses.replace(apply_preset(PriorConfig(n_codes=N_CODES), "tiny"), **kw))


# ---------------------------------------------------------------------- the model

def test_config_adds_the_no_emotion_token_only_with_dropout():
    plain = PriorConfig(n_codes=N_CODES)
    assert (plain.vocab_size, plain.null_token, plain.supports_guidance) == (N_CODES + 5, None, False)
    guided = PriorConfig(n_codes=N_CODES, emotion_dropout=0.1)
    assert guided.null_emotion and guided.vocab_size == N_CODES + 6 and guided.null_token == N_CODES + 5
    assert guided.supports_guidance
    assert PriorConfig.from_dict(guided.to_dict()) == guided
    # A checkpoint's config from before the fields: the same model as before.
    old = {k: v for k, v in plain.to_dict().items() if k not in ("emotion_dropout", "null_emotion")}
    assert PriorConfig.from_dict(old) == plain
    assert Prior(PriorConfig.from_dict(old)).embedding.num_embeddings == N_CODES + 5
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="emotion_dropout"):
            PriorConfig(n_codes=N_CODES, emotion_dropout=bad)


def test_drop_emotion_replaces_only_the_first_token_of_some_rows():
    inp = torch.arange(200 * 5).reshape(200, 5) % N_CODES
    inp[:, 0] = N_CODES + 3
    before = inp.clone()
    torch.manual_seed(1)
    out = drop_emotion(inp, 0.3, N_CODES + 5)
    assert torch.equal(inp, before)                                 # not in place
    assert torch.equal(out[:, 1:], inp[:, 1:])
    dropped = out[:, 0] == N_CODES + 5
    assert set(out[:, 0].tolist()) == {N_CODES + 3, N_CODES + 5}
    assert 0.2 < dropped.float().mean() < 0.4
    torch.manual_seed(1)
    assert torch.equal(drop_emotion(inp, 0.3, N_CODES + 5), out)    # the global seed decides
    assert (drop_emotion(inp, 1.0, N_CODES + 5)[:, 0] == N_CODES + 5).all()


def first_tokens_seen(prior, inp):
    seen = []
    hook = prior.embedding.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 0].clone()))
    try:
        prior(inp)
    finally:
        hook.remove()
    return seen[0]


def test_dropout_acts_in_training_only():
    prior = tiny_prior(emotion_dropout=1.0)
    inp = torch.randint(0, N_CODES, (6, 9))
    inp[:, 0] = N_CODES + torch.tensor([1, 2, 3, 4, 1, 2])
    assert (first_tokens_seen(prior.train(), inp) == N_CODES + 5).all()
    assert torch.equal(first_tokens_seen(prior.eval(), inp), inp[:, 0])


def record_sampled_logits(monkeypatch):
    """Every logits tensor the prior samples from, in order."""
    seen = []

    def sample(logits, *args, **kwargs):
        seen.append(logits.clone())
        return sample_tokens(logits, *args, **kwargs)
    monkeypatch.setattr(prior_module, "sample_tokens", sample)
    return seen


def record_stepped_rows(monkeypatch):
    rows = []

    class Recording(prior_module.RecurrentPrior):
        def __init__(self, prior, batch):
            rows.append(batch)
            super().__init__(prior, batch)
    monkeypatch.setattr(prior_module, "RecurrentPrior", Recording)
    return rows


@pytest.mark.parametrize("recurrent", [True, False])
def test_guidance_one_is_unguided_sampling_bit_for_bit(recurrent, monkeypatch):
    """S = 1 steps the conditional rows alone and samples from exactly their logits: the
    same codes and the same logits as a call without guidance (float32, as generate.py runs)."""
    prior = tiny_prior(emotion_dropout=0.1)
    emotion = torch.tensor([1, 2, 3, 4])
    logits = record_sampled_logits(monkeypatch)
    rows = record_stepped_rows(monkeypatch)
    runs = []
    for kwargs in ({}, {"guidance": 1.0}, {"guidance": 1}):
        logits.clear()
        codes = prior.generate(emotion, 20, generator=torch.Generator().manual_seed(4),
                               recurrent=recurrent, **kwargs)
        runs.append((codes, [l for l in logits]))
    for codes, seen in runs[1:]:
        assert torch.equal(codes, runs[0][0])
        assert len(seen) == 20 and all(torch.equal(a, b) for a, b in zip(seen, runs[0][1]))
        assert all(l.shape == (4, N_CODES) for l in seen)
    assert rows == ([4, 4, 4] if recurrent else [])
    guided = prior.generate(emotion, 20, generator=torch.Generator().manual_seed(4),
                            recurrent=recurrent, guidance=2.0)
    assert not torch.equal(guided, runs[0][0])
    assert rows == ([4, 4, 4, 8] if recurrent else [])


def guided_full_recompute(prior, emotion, n_steps, scale, seed, temperature=0.3, top_p=0.9):
    """The reference: the parallel prior re-run on each prefix, once after the emotion tokens
    and once after "no emotion", logits combined as uncond + S * (cond - uncond)."""
    generator = torch.Generator().manual_seed(seed)
    cond = prior.emotion_token(emotion)[:, None]
    uncond = torch.full_like(cond, prior.config.null_token)
    codes = torch.zeros(len(emotion), 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(n_steps):
            c = prior.logits(torch.cat([cond, codes], 1))[:, -1]
            u = prior.logits(torch.cat([uncond, codes], 1))[:, -1]
            token = sample_tokens(u + scale * (c - u), temperature, top_p, generator)
            codes = torch.cat([codes, token[:, None]], 1)
    return codes


@pytest.mark.parametrize("scale", [0.0, 2.0, 3.5])
def test_guided_recurrent_generation_equals_a_guided_full_recompute(scale):
    prior = tiny_prior(emotion_dropout=0.1).double().eval()
    emotion = torch.tensor([1, 2, 4])
    expected = guided_full_recompute(prior, emotion, 24, scale, seed=7)
    for recurrent, recompute in ((True, "window"), (False, "window"), (False, "prefix")):
        codes = prior.generate(emotion, 24, generator=torch.Generator().manual_seed(7), guidance=scale,
                               recurrent=recurrent, recompute=recompute)
        assert torch.equal(codes, expected), (recurrent, recompute)
    assert prior.training is False
    plain = prior.generate(emotion, 24, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(plain, expected)


def test_guided_steps_stay_on_the_traced_packed_path():
    """The 2B-row step gets its own traced step (the fast path), not the eager fallback."""
    prior = tiny_prior(emotion_dropout=0.1).eval()
    prior.generate(torch.tensor([1, 3]), 6, generator=torch.Generator().manual_seed(0), guidance=2.0)
    _, traces = packed_stacks(prior, "prior", [prior.transformer])
    batches = {key[0][1]: trace for key, trace in traces.items()}
    assert 4 in batches and batches[4] is not None


def test_guidance_zero_ignores_the_emotion():
    """S = 0 samples from the unconditional rows alone: the asked quadrant changes nothing
    (with the combination the wrong way round it would be all that counts)."""
    prior = tiny_prior(emotion_dropout=0.1)
    runs = [prior.generate(torch.tensor([q] * 3), 16, generator=torch.Generator().manual_seed(2), guidance=0.0)
            for q in (1, 4)]
    assert torch.equal(runs[0], runs[1])
    conditional = [prior.generate(torch.tensor([q] * 3), 16, generator=torch.Generator().manual_seed(2))
                   for q in (1, 4)]
    assert not torch.equal(conditional[0], conditional[1])


def test_a_prior_without_the_token_refuses_guidance():
    prior = tiny_prior()
    with pytest.raises(ValueError, match="emotion_dropout"):
        prior.generate(torch.tensor([1]), 4, guidance=2.0)
    with pytest.raises(ValueError, match="finite"):
        tiny_prior(emotion_dropout=0.1).generate(torch.tensor([1]), 4, guidance=float("nan"))


# ---------------------------------------------------------------------- Prior_train.py

TINY = ["--preset", "tiny", "--device", "cpu"]
FAST = ["--lr", "3e-3", "--batch_size", "8"]


@pytest.fixture(scope="module")
def vq_vae(sample_npz, tmp_path_factory):
    """A tiny MusER (one epoch) and its VQ_dict on the shipped sample."""
    work = tmp_path_factory.mktemp("guidance")
    chain = SimpleNamespace(npz=sample_npz, muser=work / "muser", vq_dict=work / "vq_dict.data", work=work)
    assert MusER.main(["--data_path", str(sample_npz), "--model_path", str(chain.muser), "--Epoch", "1",
                       *FAST, *TINY]) == 0
    assert VQ_explore.main(["--data_path", str(sample_npz), "--VQ_VAE", str(chain.muser), "--plot_flag",
                            "False", "--vq_dict_path", str(chain.vq_dict), "--device", "cpu"]) == 0
    return chain


def train_prior(chain, name, *extra, epochs=1):
    out = chain.work / name
    assert Prior_train.main([str(a) for a in ("--data_path", chain.npz, "--VQ_VAE", chain.muser, "--vq_dict_path",
                                              chain.vq_dict, "--model_path", out, "--Epoch", epochs,
                                              "--val_split", 0.25, *FAST, *TINY, *extra)]) == 0
    return out


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def forward_before_guidance(self, inp, target=None):
    """Prior.forward as it was before emotion dropout (target: unread, as by Prior.forward)."""
    return torch.log_softmax(self.logits(inp) / self.config.temperature, dim=-1)


def test_emotion_dropout_flag_trains_and_resumes_exactly(vq_vae, monkeypatch):
    """--emotion_dropout 0 trains exactly as the prior did before emotion dropout existed
    (no flag, and its forward of then); 0.5 reaches the model (its config, one more
    embedding row, other weights) and a resumed run ends with the weights of a run
    straight through."""
    with monkeypatch.context() as patch:
        patch.setattr(Prior, "forward", forward_before_guidance)
        plain = load_checkpoint(train_prior(vq_vae, "plain") / "last.pt")
    zero = load_checkpoint(train_prior(vq_vae, "zero", "--emotion_dropout", 0) / "last.pt")
    assert plain["config"] == zero["config"] and not plain["config"]["null_emotion"]
    assert same_weights(plain["model"], zero["model"]) and plain["history"] == zero["history"]

    half_dir = train_prior(vq_vae, "half", "--emotion_dropout", 0.5)
    half = load_checkpoint(half_dir / "last.pt")
    assert half["config"]["emotion_dropout"] == 0.5 and half["config"]["null_emotion"]
    n_codes = half["config"]["n_codes"]
    assert half["model"]["embedding.weight"].shape[0] == n_codes + 6
    assert build_prior(half).config.supports_guidance
    assert not torch.equal(half["model"]["head.weight"], plain["model"]["head.weight"])

    straight = load_checkpoint(train_prior(vq_vae, "straight", "--emotion_dropout", 0.5, epochs=2) / "last.pt")
    train_prior(vq_vae, "half", "--emotion_dropout", 0.5, "--resume", epochs=2)
    resumed = load_checkpoint(half_dir / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2
    assert same_weights(resumed["model"], straight["model"]) and resumed["history"] == straight["history"]


def test_emotion_dropout_one_never_shows_an_emotion_token(vq_vae, monkeypatch):
    """With P = 1 every training input the embedding reads starts with "no emotion" and
    holds no emotion token (validation, in eval mode, still reads them)."""
    seen, hooked = {"train": [], "eval": []}, []
    step = Prior_train.prior_step

    def watching_step(model, batch):
        prior = getattr(model, "module", model)
        if not hooked:
            hooked.append(prior.embedding.register_forward_pre_hook(
                lambda module, args: seen["train" if module.training else "eval"].append(args[0].clone())))
        return step(model, batch)
    monkeypatch.setattr(Prior_train, "prior_step", watching_step)
    out = train_prior(vq_vae, "always", "--emotion_dropout", 1)
    n_codes = load_checkpoint(out / "last.pt")["config"]["n_codes"]
    assert seen["train"] and seen["eval"]
    for inp in seen["train"]:
        assert (inp[:, 0] == n_codes + 5).all()
        assert not ((inp >= n_codes) & (inp < n_codes + 5)).any()
    assert all((inp[:, 0] < n_codes + 5).all() and (inp[:, 0] >= n_codes).all() for inp in seen["eval"])


# ---------------------------------------------------------------------- generate.py

def test_guidance_flags_are_checked():
    parser = generate.build_parser()
    assert parser.parse_args([]).guidance == 1.0 and not parser.parse_args([]).compare_guidance
    args = parser.parse_args(["--guidance", "2.5", "--compare_guidance"])
    assert args.guidance == 2.5 and args.compare_guidance
    generate.check_args(args)
    for bad, message in ((["--guidance", "-1"], ">= 0"), (["--guidance", "nan"], ">= 0"),
                         (["--compare_guidance"], "--compare_guidance")):
        with pytest.raises(UserError, match=message):
            generate.check_args(parser.parse_args(bad))
    prior_args = Prior_train.build_parser().parse_args(["--emotion_dropout", "0.25"])
    assert prior_args.emotion_dropout == 0.25 and not hasattr(prior_args, "null_emotion")


def generate_args(prior, tmp_path, name, *extra):
    return ["--VQ_prior", str(prior), "--VQ_VAE", str(PRETRAINED / "muser.pt"), "--music_file", name,
            "--out_root", str(tmp_path), "--emotion", "2", "--n_per_emotion", "2", "--max_steps", "8",
            "--device", "cpu", "--piano_rolls", "False", "--audio", "False", *map(str, extra)]


def test_a_prior_trained_without_dropout_refuses_guidance_in_one_line(tmp_path, capsys):
    checkpoint = load_checkpoint(PRETRAINED / "prior.pt", "prior")
    assert "emotion_dropout" not in checkpoint["config"]
    assert build_prior(checkpoint).embedding.num_embeddings == checkpoint["config"]["n_codes"] + 5
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(generate.main, generate_args(PRETRAINED / "prior.pt", tmp_path, "refused", "--guidance", 2))
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code != 0 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: --guidance 2:"), lines
    assert "--emotion_dropout" in lines[0]
    assert not (tmp_path / "refused").exists()


@pytest.fixture(scope="module")
def guided_prior(tmp_path_factory):
    """The shipped prior with a "no emotion" row added (its other weights unchanged), saved
    as a checkpoint that supports guidance."""
    checkpoint = load_checkpoint(PRETRAINED / "prior.pt", "prior")
    checkpoint["config"] = {**checkpoint["config"], "emotion_dropout": 0.1, "null_emotion": True}
    weight = checkpoint["model"]["embedding.weight"]
    n_codes = checkpoint["config"]["n_codes"]
    # "No emotion" as the mean of the four quadrants' rows: a plausible unconditional input.
    null = weight[n_codes + 1:n_codes + 5].float().mean(0, keepdim=True).to(weight.dtype)
    checkpoint["model"] = {**checkpoint["model"], "embedding.weight": torch.cat([weight, null])}
    path = tmp_path_factory.mktemp("guided_prior") / "prior.pt"
    torch.save(checkpoint, path)
    return path


def read(tmp_path, stem, kind):
    with open(tmp_path / f"{stem}_{kind}.data", "rb") as handle:
        return pickle.load(handle)


def page_title(tmp_path, name):
    return re.search(r"<title>(.*?)</title>", (tmp_path / name / "index.html").read_text()).group(1)


def test_generate_guidance_reaches_the_prior_and_the_page(guided_prior, tmp_path):
    """--guidance 2 samples the codes prior.generate(guidance=2) samples from the seed and says
    S on the page; --compare_guidance writes both runs (its S = 1 pieces are those of a run
    without the flag, bit for bit) and a page with the pairs side by side."""
    assert generate.main(generate_args(guided_prior, tmp_path, "plain")) == 0
    assert generate.main(generate_args(guided_prior, tmp_path, "guided", "--guidance", 2)) == 0
    assert generate.main(generate_args(guided_prior, tmp_path, "both", "--guidance", 2,
                                       "--compare_guidance")) == 0

    prior = build_prior(load_checkpoint(guided_prior, "prior")).eval()
    expected = prior.generate(torch.tensor([2, 2]), 256, generator=torch.Generator().manual_seed(13),
                              guidance=2.0)                        # generate.py's default seed
    guided = read(tmp_path, "guided", "index")
    assert torch.equal(torch.as_tensor(np.stack(guided["codes"])), expected)
    plain = read(tmp_path, "plain", "index")["codes"]
    assert any((a != b).any() for a, b in zip(plain, guided["codes"]))
    both, both_s1 = read(tmp_path, "both", "index"), read(tmp_path, "both_guidance1", "index")
    assert all((a == b).all() for a, b in zip(both["codes"], guided["codes"]))
    assert all((a == b).all() for a, b in zip(both_s1["codes"], plain))
    assert both_s1["names"] == ["guidance1_emotion2_0", "guidance1_emotion2_1"]
    assert read(tmp_path, "guided", "data")["guidance"] == 2.0
    assert "guidance" not in read(tmp_path, "plain", "data")
    for words_a, words_b in zip(read(tmp_path, "both_guidance1", "data")["words"],
                                read(tmp_path, "plain", "data")["words"]):
        assert (words_a == words_b).all()

    assert "guidance" not in page_title(tmp_path, "plain")
    assert "S = " not in (tmp_path / "plain" / "index.html").read_text()
    assert "S = 2" in page_title(tmp_path, "guided")
    assert "guidance S = 2" in (tmp_path / "guided" / "index.html").read_text()
    page = (tmp_path / "both" / "index.html").read_text()
    assert "S = 1 against S = 2" in page_title(tmp_path, "both")
    for name in ("guidance1_emotion2_0", "emotion2_0", "guidance1_emotion2_1", "emotion2_1"):
        assert f'href="{name}.mid"' in page
    rows = page.split('<div class="row">')[1:]
    assert len(rows) == 2
    assert rows[0].index("guidance1_emotion2_0.mid") < rows[0].index('"emotion2_0.mid"')
