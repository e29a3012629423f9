"""The study's bookkeeping and report arithmetic, where the right answer is known: the held-out
song split, the code a stage's fingerprint covers, the two-level bootstrap, and the report's
gap and swap-effect summaries on constructed measures."""
import warnings

import numpy as np
import pytest

from models.config import MusERConfig, model_name
from music.elements import N_ELEMENTS, song_of_name
from music.errors import UserError
from run import study as S
from run import study_report as R


def clip_names(n_songs=40, clips=3):
    names, quadrants = [], []
    for s in range(n_songs):
        q = s % 4 + 1
        for c in range(clips):
            names.append(f"Q{q}_song{s:03d}_{c}.mid")
            quadrants.append(q)
    return np.array(names), np.array(quadrants)


def test_song_split_holds_out_whole_songs_of_every_quadrant_and_is_seeded():
    names, quadrants = clip_names()
    split = S.song_split(names, quadrants, 0.2, seed=3)
    held_songs = {song_of_name(n) for n in names[split["held_out"]]}
    train_songs = {song_of_name(n) for n in names[split["train"]]}
    assert held_songs == set(split["songs"]) and not held_songs & train_songs
    assert sorted(np.concatenate([split["train"], split["held_out"]])) == list(range(len(names)))
    assert set(quadrants[split["held_out"]]) == {1, 2, 3, 4}
    assert len(held_songs) == 8                                  # 20% of the 10 songs of each quadrant
    assert S.song_split(names, quadrants, 0.2, seed=3)["songs"] == split["songs"]
    assert S.song_split(names, quadrants, 0.2, seed=4)["songs"] != split["songs"]


def test_song_split_refuses_a_split_with_nothing_to_hold_out():
    names, quadrants = clip_names(n_songs=4)
    with pytest.raises(S.UserError, match="cannot hold out"):
        S.song_split(names, quadrants, 0.2, seed=0)


def test_write_subset_keeps_the_rows_and_the_other_arrays(tmp_path):
    source = tmp_path / "d.npz"
    np.savez(source, x=np.arange(12).reshape(6, 2), names=np.array(list("abcdef")), vocab=np.arange(3))
    S.write_subset(source, np.array([1, 4]), tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as subset:
        assert subset["x"].tolist() == [[2, 3], [8, 9]] and subset["names"].tolist() == ["b", "e"]
        assert subset["vocab"].tolist() == [0, 1, 2]


def test_code_files_follow_imports_and_stay_inside_the_project():
    files = {p.relative_to(S.ROOT).as_posix() for p in S.code_files("MusER.py")}
    assert {"MusER.py", "models/muser.py", "run/training.py", "music/elements.py"} <= files
    # the study's measures are not part of training: changing them never retrains a model
    assert not {"evaluation/ordering.py", "evaluation/dci.py", "run/study_measures.py"} & files
    assert not any(f.startswith("tests/") for f in files)
    measures = {p.relative_to(S.ROOT).as_posix() for p in S.code_files("run.study_measures")}
    assert {"evaluation/ordering.py", "evaluation/transfer.py", "evaluation/dci.py"} <= measures


def test_fingerprint_changes_with_settings_inputs_and_code(tmp_path, monkeypatch):
    data = tmp_path / "in.txt"
    data.write_text("a")
    base = S.fingerprint(["train", 1], [data], code=("run.study",))
    assert S.fingerprint(["train", 2], [data], code=("run.study",)) != base
    data.write_text("b")
    changed_input = S.fingerprint(["train", 1], [data], code=("run.study",))
    assert changed_input != base
    monkeypatch.setattr(S, "code_hash", lambda entries: "other code")
    assert S.fingerprint(["train", 1], [data], code=("run.study",)) != changed_input


def test_bootstrap_interval_covers_the_mean_and_narrows_with_units():
    rng = np.random.default_rng(0)
    small = [{"x": rng.normal(1.0, 1.0, 20)}]
    large = [{"x": rng.normal(1.0, 1.0, 2000)}]
    p_small, lo_small, hi_small = R.bootstrap(small, lambda d: d["x"].mean(axis=1), draws=300)
    p_large, lo_large, hi_large = R.bootstrap(large, lambda d: d["x"].mean(axis=1), draws=300)
    assert lo_small < p_small < hi_small and lo_large < 1.0 < hi_large
    assert hi_large - lo_large < (hi_small - lo_small) / 4


def test_bootstrap_resamples_seeds_too():
    """Two seeds that disagree widen the interval beyond what either seed's units give."""
    a, b = {"x": np.full(200, 0.0) + np.linspace(-0.01, 0.01, 200)}, {"x": np.full(200, 1.0)}
    point, low, high = R.bootstrap([a, b], lambda d: d["x"].mean(axis=1), draws=300)
    assert point == pytest.approx(0.5, abs=0.01) and low < 0.05 and high > 0.95


def _bootstrap_one_at_a_time(per_seed, statistic, draws, seed=0):
    """The two-level bootstrap written plainly: each resample's statistic on its own."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(draws):
        values = []
        for s in rng.integers(0, len(per_seed), len(per_seed)):
            n = len(next(iter(per_seed[s].values())))
            idx = rng.integers(0, n, n)
            values.append(statistic({k: v[idx][None] for k, v in per_seed[s].items()})[0])
        samples.append(np.nanmean(values, axis=0))
    return np.nanpercentile(np.asarray(samples, float), [2.5, 97.5], axis=0)


def test_batched_bootstrap_draws_and_reads_exactly_what_resampling_one_at_a_time_does():
    """Seeds of different sizes, NaN units and a ratio that is NaN in some resamples: the
    batched resamples (more than one batch) give the plain loop's interval to the last bit."""
    rng = np.random.default_rng(3)
    per_seed = []
    for n in (7, 12, 30):
        x = rng.normal(size=(n, 3))
        x[rng.random((n, 3)) < 0.2] = np.nan
        per_seed.append({"x": x, "num": rng.normal(size=n), "den": rng.normal(size=n)})

    def statistic(d):
        den = d["den"].sum(-1)
        with np.errstate(all="ignore"):
            ratio = np.where(den > 0, d["num"].sum(-1) / den, np.nan)
        return np.concatenate([np.nanmean(d["x"], axis=1), ratio[:, None]], axis=-1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reference = _bootstrap_one_at_a_time(per_seed, statistic, draws=R.BATCH + 50)
        point, low, high = R.bootstrap(per_seed, statistic, draws=R.BATCH + 50)
    assert np.array_equal(low, reference[0], equal_nan=True) and np.array_equal(high, reference[1], equal_nan=True)
    assert np.allclose(point, np.nanmean([statistic({k: v[None] for k, v in d.items()})[0] for d in per_seed],
                                         axis=0), equal_nan=True)


def test_seed_interval_needs_two_seeds():
    assert R.seed_interval([0.3]) == (0.3, None, None)
    mean, low, high = R.seed_interval([0.2, 0.3, 0.4])
    assert mean == pytest.approx(0.3) and low < 0.2 and high > 0.4


def test_gap_of_a_matrix_ordering_each_element_in_its_own_slice():
    matrix = np.full((N_ELEMENTS, N_ELEMENTS), 0.5) + 0.3 * np.eye(N_ELEMENTS)
    own, best, gap = R._gap(matrix)
    assert np.allclose(own, 0.8) and np.allclose(best, 0.5) and np.allclose(gap, 0.3)


def test_swap_summaries_are_diagonal_for_a_disentangled_decoder_and_zero_for_noise():
    pairs = 30
    floor = np.full((pairs, N_ELEMENTS), 0.2)
    rates = np.repeat((0.2 + 0.5 * np.eye(N_ELEMENTS))[None], pairs, axis=0)   # slice k changes element k
    effect = R._swap_effect({"rates": rates, "floor": floor})
    assert np.allclose(effect, 0.5 * np.eye(N_ELEMENTS))
    assert np.allclose(R._own_share(effect), 1.0)
    noise = R._swap_effect({"rates": np.full((pairs, N_ELEMENTS, N_ELEMENTS), 0.2), "floor": floor})
    assert np.allclose(noise, 0.0) and np.all(np.isnan(R._own_share(noise)))


# ----------------------------------------------------------------- interventions on a known decoder

class CopyingModel:
    """A stand-in VQ-VAE whose latent slice k holds element k's token and whose decoder copies
    every slice back into its element, except `ignored`, which it samples at random: swapping
    slice k can change element k only, and the ignored slice changes nothing."""

    def __init__(self, max_len, ignored, n_tokens):
        from types import SimpleNamespace
        self.config = SimpleNamespace(max_len=max_len, slice_dim=4)
        self.ignored, self.n_tokens = ignored, n_tokens

    def encode(self, y):
        tokens = y[..., :N_ELEMENTS].float()
        return tokens.repeat_interleave(4, dim=-1), None

    def generate(self, latent, emotion, sampling=None, generator=None, max_steps=None, on_step=None):
        import torch
        tokens = latent[..., ::4].round().long()
        noise = torch.randint(0, self.n_tokens, tokens.shape[:2], generator=generator)
        tokens[..., self.ignored] = noise
        words = []
        for piece, q in zip(tokens.numpy(), emotion.tolist()):
            first = np.zeros((1, N_ELEMENTS + 1), dtype=np.int64)
            first[0, -1] = q
            body = np.concatenate([piece, np.zeros((len(piece), 1), dtype=np.int64)], axis=1)
            words.append(np.concatenate([first, body]))
        return words


def test_swap_effects_of_a_copying_decoder_are_diagonal_and_an_ignored_slice_reads_zero(
        sample_npz, tmp_path, monkeypatch):
    from evaluation import evaluator as E
    from music.data import load_cp_dataset
    from music.elements import ELEMENTS
    from run import study_measures as SM

    data = load_cp_dataset(sample_npz)
    velocity = ELEMENTS.index("velocity")
    model = CopyingModel(64, velocity, n_tokens=int(data.y[..., velocity].max()) + 1)
    monkeypatch.setattr(SM, "load_model", lambda path: (model, None))
    pieces = SM.data_pieces(data, 64)
    E.fit_evaluator(E.feature_matrix(pieces), data.emotion, seed=0).save(tmp_path / "evaluator.json")
    result = SM.intervention_measures(tmp_path / "unused.pt", data, tmp_path / "evaluator.json", pairs=12,
                                      seed=0, scale=SM.statistics_scale(data, 64))
    effect = R._swap_effect(R._swap_units(result))
    own = np.diag(effect)
    off = ~np.eye(N_ELEMENTS, dtype=bool)
    off[:, velocity] = False                                   # velocity is sampled: noise in every row
    used = [k for k in range(N_ELEMENTS) if k != velocity and np.isfinite(own[k]) and own[k] > 0]
    assert len(used) >= 4 and np.all(own[used] > 0.1)          # a swap changes its own element ...
    assert np.nanmax(np.abs(effect[off])) < 1e-9               # ... and no other copied element
    assert np.nanmax(np.abs(effect[:, velocity])) < 0.1        # the ignored slice: the floor, in every row
    swapped = [t for t in result["transfers"] if t["elements"] == ["pitch"]][0]
    num, den = (np.asarray(swapped["terms"]["pitch"][k]) for k in ("num", "den"))
    # pitch goes (nearly) all the way to B: B's pitches sit on A's Note steps
    assert den.sum() > 0 and num.sum() / den.sum() == pytest.approx(1.0, abs=0.1)
    num, den = (np.asarray(swapped["terms"]["duration"][k]) for k in ("num", "den"))
    assert abs(num.sum()) < 1e-9                                # duration stays with A


def test_variants_are_named_as_the_models_name_themselves():
    specs = {s.name: s.flags for s in S.model_specs(["mean_ca_ge", "TRANS_CA_GE_PQ", "VQVAE_TRANS_CA_GE_PQ",
                                                      "VQVAE_TRANS_CA_GE"])}
    assert list(specs) == ["MusER_TRANS_CA_GE", "VQVAE_TRANS_CA_GE", "MusER_MEAN_CA_GE", "MusER_TRANS_CA_GE_PQ",
                           "VQVAE_TRANS_CA_GE_PQ"]
    assert specs["MusER_TRANS_CA_GE_PQ"][-4:-2] == ("--quantizer", "product")
    assert "--reg_weight" not in specs["MusER_TRANS_CA_GE_PQ"]
    assert specs["VQVAE_TRANS_CA_GE_PQ"][-6:-2] == ("--reg_weight", "0", "--quantizer", "product")
    with pytest.raises(UserError, match="REDUCTION_CONDITIONING_DECODING"):
        S.model_specs(["TRANS_PQ"])


def test_product_variants_name_their_slice_codebook_size():
    specs = {s.name: s.flags for s in S.model_specs(["TRANS_CA_GE_PQ128", "VQVAE_TRANS_CA_GE_PQ32", "TRANS_CA_GE_PQ64"])}
    assert list(specs)[2:] == ["MusER_TRANS_CA_GE_PQ128", "VQVAE_TRANS_CA_GE_PQ32", "MusER_TRANS_CA_GE_PQ"]
    assert specs["MusER_TRANS_CA_GE_PQ128"][-4:] == ("--quantizer", "product", "--slice_codebook_size", "128")
    assert specs["VQVAE_TRANS_CA_GE_PQ32"][-6:] == ("--reg_weight", "0", "--quantizer", "product",
                                                    "--slice_codebook_size", "32")
    assert specs["MusER_TRANS_CA_GE_PQ"][-4:] == ("--quantizer", "product", "--slice_codebook_size", "64")
    # A bare _PQ keeps meaning the first product models' 64 codes per slice; the default is 128.
    assert S.model_specs(["TRANS_CA_GE_PQ"])[2] == S.ModelSpec("MusER_TRANS_CA_GE_PQ", specs["MusER_TRANS_CA_GE_PQ"])
    assert MusERConfig.slice_codebook_size == 128
    assert model_name("TRANS", "CA", "GE", quantizer="product") == "MusER_TRANS_CA_GE_PQ128"
    for bad in ("TRANS_CA_GE_PQ0", "FOO_CA_GE", "TRANS_CA_GE_PQX"):
        with pytest.raises(UserError, match=f"--variants {bad}"):
            S.model_specs([bad])


def test_optional_stages_run_when_asked():
    from types import SimpleNamespace

    from run.study_plan import STAGES
    stages = {s.name: s for s in STAGES}
    plain, asked = SimpleNamespace(only=(), extra=()), SimpleNamespace(only=(), extra=("guidance",))
    assert [s.name for s in STAGES if s.optional] == ["guidance", "transpose"]
    assert stages["latent"].wanted(plain) and not stages["guidance"].wanted(plain)
    assert stages["guidance"].wanted(asked) and stages["guidance"].wanted(SimpleNamespace(only=("guidance",), extra=()))
    assert not stages["latent"].wanted(SimpleNamespace(only=("guidance",), extra=()))
    assert not stages["transpose"].wanted(asked) and not stages["transpose"].wanted(plain)
    assert stages["transpose"].wanted(SimpleNamespace(only=(), extra=("guidance", "transpose")))
    for name in ("guidance", "transpose"):
        assert stages[name].applies(S.ModelSpec("MusER_TRANS_CA_GE"))
        assert not stages[name].applies(S.ModelSpec("VQVAE_TRANS_CA_GE"))


def test_the_transposed_prior_takes_the_guided_priors_steps():
    """(2K + 1) times the pieces per epoch for prior_epochs / (2K + 1) epochs; the small preset's
    20 epochs divide exactly."""
    from run.study_plan import TRANSPOSE_SHIFT, transpose_epochs
    copies = 2 * TRANSPOSE_SHIFT + 1
    assert transpose_epochs(S.STUDY_PRESETS["small"]) * copies == S.STUDY_PRESETS["small"].prior_epochs
    assert transpose_epochs(S.STUDY_PRESETS["tiny"]) == 1                   # at least one epoch
    assert abs(transpose_epochs(S.STUDY_PRESETS["paper"]) * copies - S.STUDY_PRESETS["paper"].prior_epochs) < copies


# ----------------------------------------------------------------------------- the transposition section

QUADRANT_OF = np.repeat([1, 2, 3, 4], 10)        # 10 pieces per asked quadrant


def pieces(predicted, pitch_classes=8.0, polyphony=3.0):
    """Generation measures of 40 pieces asked for Q1..Q4 in turn, in major keys where the
    evaluator hears positive valence."""
    modes = ["major" if q in (1, 4) else "minor" for q in predicted]
    return {"asked": QUADRANT_OF.tolist(), "predicted": list(map(int, predicted)), "mode": modes,
            "metrics": [{"pitch_range": 30.0, "pitch_classes": pitch_classes, "polyphony": polyphony}] * 40,
            "empty": 0}


def study_files(tmp_path, transposed=None, seeds=(13, 14)):
    """StudyFiles of a made-up study: held-out data, the guided prior's pieces (valence right
    half of the time: Q2 comes out Q1, Q3 comes out Q4), and `transposed` (pieces per scale) for
    the transposition stage."""
    guided = pieces(np.where(QUADRANT_OF == 2, 1, np.where(QUADRANT_OF == 3, 4, QUADRANT_OF)))
    held = pieces(QUADRANT_OF)
    for seed in seeds:
        measures = tmp_path / "seeds" / str(seed) / "measures"
        measures.mkdir(parents=True)
        S.write_json(measures / "guidance_MusER_TRANS_CA_GE.json",
                     {"scales": [1.0, 2.0], "runs": {"1": guided, "2": guided}})
        if transposed is not None:
            S.write_json(measures / "transpose_MusER_TRANS_CA_GE.json", {
                "shift": 2, "epochs": 4, "scales": [1.0, 2.0], "emotion_dropout": 0.1, "per_quadrant": 10,
                "transposition": {"max_shift": 2, "pieces": 30, "copies": {"-2": 29, "-1": 30, "+1": 30, "+2": 28},
                                  "left_out": {"-2": 1, "-1": 0, "+1": 0, "+2": 2}},
                "prior_history": [], "runs": transposed})
    study = {"preset_name": "small", "preset": {"prior_epochs": 20}, "models": ["MusER_TRANS_CA_GE"],
             "out_name": "study_small"}
    return R.StudyFiles(tmp_path, study, {}, {"held_out": held}, list(seeds), ["MusER_TRANS_CA_GE"])


def test_the_transposition_section_says_how_to_run_it_until_it_has_run(tmp_path):
    text = "\n".join(R.transpose_sections(study_files(tmp_path)))
    assert text.startswith("## Beyond the paper: transposition augmentation")
    assert "Not run yet" in text and "--only transpose" in text and "--seed 13 14" in text and "--preset small" in text


@pytest.mark.parametrize("transposed_pieces, verdict", [
    (pieces(QUADRANT_OF), "shown"),                                         # every valence right
    (pieces(QUADRANT_OF, pitch_classes=11.0), "not shown"),                 # ... but pitch classes further
    (pieces(np.where(QUADRANT_OF == 2, 1, np.where(QUADRANT_OF == 3, 4, QUADRANT_OF))), "not shown"),  # the same
])
def test_the_transposition_section_compares_with_the_guided_prior(tmp_path, transposed_pieces, verdict):
    files = study_files(tmp_path, {"1": pieces(QUADRANT_OF), "2": transposed_pieces})
    text = "\n".join(R.transpose_sections(files))
    assert f"**Verdict: {verdict}.**" in text
    rows = {(r[0], r[1]): r for r in (line.strip("|").split("|") for line in text.splitlines()
                                        if line.startswith("| ") and "---" not in line)
            for r in [[c.strip() for c in r]]}
    guided, ours, difference = (rows[(name, "2")] for name in ("guided (guidance stage)", "transposed (--transpose 2)",
                                                               "transposed minus guided"))
    assert guided[4].startswith("0.50") and guided[5] == "1.00 (n=20)"          # valence; Q2 in major keys
    assert rows[("transposed minus guided", "1")][4].startswith("0.50")          # S = 1: every valence right
    if verdict == "shown":
        assert ours[4] == "1.00 [1.00, 1.00]" and difference[4].startswith("0.50 [0.")     # interval above 0
        assert ours[5] == "0.00 (n=20)" and ours[6] == "8.00 (further 0.00 [0.00, 0.00])"
    assert rows[("data (held-out songs)", "")][5] == "0.00"
    assert "seed 13: -2: 29 copies (1 left out); -1: 30 copies (0 left out)" in text and "seeds compared: 13, 14" in text
    assert "4 epochs, as many optimizer steps as the guided prior's 20 epochs" in text


def test_the_guided_prior_is_read_on_the_seeds_compared_only(tmp_path):
    """The transposition stage ran on seed 13 only, the guidance stage on 13 and 14: every
    cell of the guided prior's row, its Q2 major-key share included, reads seed 13."""
    files = study_files(tmp_path, {"1": pieces(QUADRANT_OF), "2": pieces(QUADRANT_OF)})
    (tmp_path / "seeds" / "14" / "measures" / "transpose_MusER_TRANS_CA_GE.json").unlink()
    text = "\n".join(R.transpose_sections(files))
    assert "seeds compared: 13)" in text
    guided = [line for line in text.splitlines() if line.startswith("| guided (guidance stage) | 2 |")]
    assert len(guided) == 1 and "| 1.00 (n=10) |" in guided[0]


def test_the_remedy_is_inconclusive_without_the_guided_priors_pieces(tmp_path):
    files = study_files(tmp_path, {"1": pieces(QUADRANT_OF), "2": pieces(QUADRANT_OF)})
    for seed in (13, 14):
        (tmp_path / "seeds" / str(seed) / "measures" / "guidance_MusER_TRANS_CA_GE.json").unlink()
    text = "\n".join(R.transpose_sections(files))
    assert "**Verdict: inconclusive.**" in text and "none: the guidance stage has not run" in text


def test_models_are_chosen_among_the_runs_models():
    from reproduce import selected_models
    specs = S.model_specs(["TRANS_CA_GE_PQ"])
    assert [s.name for s in selected_models(specs, None)] == [s.name for s in specs]
    assert [s.name for s in selected_models(specs, ["MusER_TRANS_CA_GE_PQ"])] == ["MusER_TRANS_CA_GE_PQ"]
    with pytest.raises(UserError, match="--variants"):
        selected_models(S.model_specs([]), ["MusER_TRANS_CA_GE_PQ"])


def test_a_stage_must_leave_its_outputs(tmp_path):
    """A finished stage whose output is gone is redone; one that ends without writing it is an
    error and stays unfinished."""
    lines = []
    stages = S.Stages(tmp_path, lines.append)
    output = tmp_path / "measure.json"
    stages.run("measure", "fp", lambda continuing: output.write_text("{}"), commit="c", outputs=[output])
    assert stages.finished("measure", "fp", [output])
    output.unlink()
    assert not stages.finished("measure", "fp", [output]) and lines[-1] == f"[measure] {output} is missing: redone"
    with pytest.raises(UserError, match="finished without writing"):
        stages.run("measure", "fp", lambda continuing: None, commit="c", outputs=[output])
    assert not (tmp_path / "stages" / "measure.json").exists()
    assert stages.continuing("measure", "fp")


def test_codebook_column_names_a_product_models_codebooks():
    assert R._codebook_text({"quantizer": "joint", "codebook_size": 512, "slice_codebook_size": 64}) == "512"
    assert R._codebook_text({"quantizer": "product", "codebook_size": 512, "slice_codebook_size": 64}) == "7 x 64"
    assert R._codebook_text({"codebook_size": 256}) == "256"        # a study written before the product quantiser


def test_the_report_applies_the_slice_size_rule_to_seed_13(tmp_path):
    """Product MusER at 32, 64 and 128 codes per slice on seed 13: the table reads each model's
    own measures, leaves out the regulariser-free model, and names the size the rule chooses."""
    readings = {"MusER_TRANS_CA_GE_PQ32": (32, 0.1, 0.900, 0.44), "MusER_TRANS_CA_GE_PQ": (64, 0.1, 0.912, 0.45),
                "MusER_TRANS_CA_GE_PQ128": (128, 0.1, 0.914, 0.46), "VQVAE_TRANS_CA_GE_PQ": (64, 0.0, 0.99, 0.99)}
    measures = tmp_path / "seeds" / "13" / "measures"
    measures.mkdir(parents=True)
    for model, (size, reg_weight, accuracy, dci) in readings.items():
        S.write_json(measures / f"latent_{model}.json", {
            "config": {"quantizer": "product", "slice_codebook_size": size, "reg_weight": reg_weight},
            "dci": {"disentanglement": dci}, "codebook": {"used_by_held_out": size * 6, "perplexity_held_out": 5.0}})
        S.write_json(measures / f"training_{model}.json", {"history": [
            {"split": "val", "epoch": 1, "acc_mean": 0.5}, {"split": "val", "epoch": 2, "acc_mean": accuracy}]})
    files = R.StudyFiles(tmp_path, {}, {}, {}, [13], list(readings))
    text = "\n".join(R.slice_size_lines(files))
    assert "| 32 | MusER_TRANS_CA_GE_PQ32 | 0.900 | 0.44 | 192 |" in text
    assert "| 128 | MusER_TRANS_CA_GE_PQ128 | 0.914 | 0.46 | 768 |" in text and "VQVAE" not in text
    assert "Chosen: **64** codes per slice." in text            # 32 is 1.4 points behind 128
    (measures / "latent_MusER_TRANS_CA_GE_PQ128.json").unlink()
    assert "No size chosen yet: 128 without readings on seed 13." in "\n".join(R.slice_size_lines(files))


def test_the_slice_size_table_says_when_no_size_meets_both_tolerances(tmp_path):
    measures = tmp_path / "seeds" / "13" / "measures"
    measures.mkdir(parents=True)
    readings = {"MusER_TRANS_CA_GE_PQ32": (32, 0.88, 0.50), "MusER_TRANS_CA_GE_PQ": (64, 0.92, 0.45),
                "MusER_TRANS_CA_GE_PQ128": (128, 0.95, 0.40)}
    for model, (size, accuracy, dci) in readings.items():
        S.write_json(measures / f"latent_{model}.json", {
            "config": {"quantizer": "product", "slice_codebook_size": size, "reg_weight": 0.1},
            "dci": {"disentanglement": dci}, "codebook": {"used_by_held_out": 1, "perplexity_held_out": 1.0}})
        S.write_json(measures / f"training_{model}.json", {"history": [{"split": "val", "epoch": 1, "acc_mean": accuracy}]})
    text = "\n".join(R.slice_size_lines(R.StudyFiles(tmp_path, {}, {}, {}, [13], list(readings))))
    assert "Chosen: **none**: no size is within both tolerances" in text
