"""The reproduction study's stages, each declared once: what it runs, what it reads, the
code whose hash is part of its fingerprint, the measure file it writes and the report
section that reads that file. Adding a stage or a measure touches this list (and the
function it names).

Study stages run once per study folder; model stages run per seed and VQ-VAE, in order.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from music.data import default_dictionary_path, load_cp_dataset
from run import study_measures as SM
from run.checkpoint import load_checkpoint
from run import study_report as R
from run.study import ModelSpec, StudyPaths, StudyPreset, fingerprint, read_silhouettes, run_script, song_split, \
    training_history, write_json, write_subset


# Share of the training pieces a VQ-VAE validates on each epoch (eval-mode codebook usage;
# best.pt by validation reconstruction). The held-out songs are never used for this.
VAL_SPLIT = 0.1

# Beyond the paper: classifier-free guidance of MusER's prior. A second prior, trained with
# the emotion token dropped for this share of pieces, samples at every scale from the same
# seed; S = 1 is its unguided sampling. Half the generation stage's pieces per scale.
GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0)
GUIDANCE_DROPOUT = 0.1
GUIDED_MODELS = ("MusER_TRANS_CA_GE",)

# Beyond the paper: transposition augmentation of MusER's prior, a remedy that targets key and
# mode after guidance moved arousal but not valence. A third prior, trained like the guided one
# (GUIDANCE_DROPOUT) on the training pieces and their copies at every shift of -K..K semitones
# but 0 (Prior_train.py --transpose K: each copy keeps its mode and emotion label), samples at
# S = 1 and S = 2 from the guidance stage's generator seed and count, so that each of its pieces
# has a guided prior's piece beside it.
#
# K = 2 and prior_epochs / (2K + 1) epochs (4 at the small preset), for three reasons.
# (1) An epoch holds up to 2K + 1 times the pieces, so these epochs take as many optimizer steps
# as the guided prior's prior_epochs over the pieces alone (less the steps of the copies a shift
# leaves out): the two priors differ by their data, not by how long they trained. (2) 2K + 1 = 5
# divides the small preset's 20 prior epochs, so the steps match there; K = 1 or 3 would not.
# (3) The stage's cost: the guided prior's training (11-21 min per seed at the small preset, by
# the committed study's prior stages), the VQ-VAE encoding 2K more copies of the pieces (its
# forward pass only, a minute or two) and half the guidance stage's sampling (two of its four
# scales; the whole guidance stage took 33-51 min per seed): about twice the guided prior's
# training, the budget this stage was given; more epochs would exceed it. A whole tone either
# way puts each piece in five keys and keeps it in its register, so few pieces leave the
# dictionary's pitch range.
TRANSPOSE_SHIFT = 2
TRANSPOSE_SCALES = (1.0, 2.0)


def transpose_epochs(preset: StudyPreset) -> int:
    """The augmented prior's epochs: as many optimizer steps as the preset's prior epochs over
    the pieces alone (at least one epoch)."""
    return max(1, round(preset.prior_epochs / (2 * TRANSPOSE_SHIFT + 1)))


@dataclass(frozen=True)
class Context:
    paths: StudyPaths
    source: Path                 # the prepared or given npz (dictionary.pkl beside it)
    preset: StudyPreset
    preset_name: str
    model_flags: tuple
    seed: int
    split_seed: int
    threads: int
    device: str
    length: int                  # the models' window
    only: tuple = ()             # run only these stages (all when empty)
    extra: tuple = ()            # optional stages to run as well


@dataclass(frozen=True)
class Stage:
    name: str
    scope: str                                  # "study" or "model"
    work: Callable                              # work(ctx, spec, continuing)
    inputs: Callable                            # (ctx, spec) -> files it reads
    outputs: Callable                           # (ctx, spec) -> the files it writes that later
                                                # stages or the report read (missing: redone)
    settings: Callable = lambda ctx, spec: ()   # what else decides its result
    code: tuple = ()                            # scripts and modules it runs
    section: Callable | None = None             # report section reading its outputs
    models: tuple | None = None                 # the models a model stage runs for (None: all)
    optional: bool = False                      # beyond the paper: runs when asked (--with, --only)

    def marker(self, spec: ModelSpec | None) -> str:
        return self.name if spec is None else f"{self.name}_{spec.name}"

    def applies(self, spec: ModelSpec | None) -> bool:
        return spec is None or self.models is None or spec.name in self.models

    def wanted(self, ctx: Context) -> bool:
        """Whether this run does the stage: the named ones with --only, else every stage that is
        not optional or that --with asks for."""
        if ctx.only:
            return self.name in ctx.only
        return not self.optional or self.name in ctx.extra

    @property
    def runs_script(self) -> bool:
        """A stage that starts a script runs the code checked out when it starts; the others
        run the code this process imported when it started."""
        return any(entry.endswith(".py") for entry in self.code)


def _log(ctx: Context, spec: ModelSpec, name: str) -> Path:
    return ctx.paths.seed_dir / "logs" / f"{name}_{spec.name}.log"


def _common(ctx: Context) -> list:
    return ["--seed", ctx.seed, "--device", ctx.device]


def _resume_flag(model_path: Path, continuing: bool) -> list[str]:
    return ["--resume"] if continuing and (model_path / "last.pt").exists() else ["--overwrite"]


# ----------------------------------------------------------------------------- study stages

def split_work(ctx: Context, spec, continuing) -> None:
    p = ctx.paths
    data = load_cp_dataset(ctx.source)
    split = song_split(data.names, data.emotion, ctx.preset.held_out, ctx.split_seed)
    p.data.mkdir(parents=True, exist_ok=True)
    dictionary = default_dictionary_path(ctx.source)
    if dictionary.resolve() != default_dictionary_path(p.train_data).resolve():
        shutil.copyfile(dictionary, default_dictionary_path(p.train_data))
    write_subset(ctx.source, split["train"], p.train_data)
    write_subset(ctx.source, split["held_out"], p.held_out_data)
    write_json(p.measures / "split.json", {
        "share": ctx.preset.held_out, "seed": ctx.split_seed, "source": ctx.source.name,
        "held_out_songs": split["songs"], "train_pieces": len(split["train"]),
        "held_out_pieces": len(split["held_out"])})


def data_work(ctx: Context, spec, continuing) -> None:
    p = ctx.paths
    train, held = load_cp_dataset(p.train_data), load_cp_dataset(p.held_out_data)
    write_json(p.measures / "data.json", SM.data_measures(train, held, ctx.length, ctx.split_seed, p.evaluator))


# ----------------------------------------------------------------------------- model stages

def train_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    p, pre = ctx.paths, ctx.preset
    model_dir = p.model(spec.name)
    run_script("MusER.py", [
        "--data_path", p.train_data, "--model_path", model_dir, "--preset", pre.model_preset,
        *pre.model_flags, *ctx.model_flags, *spec.flags, "--Epoch", pre.epochs, "--batch_size", pre.batch_size,
        "--lr", pre.lr, "--val_split", VAL_SPLIT, *_common(ctx), *_resume_flag(model_dir, continuing)],
        _log(ctx, spec, "train"), ctx.threads)
    write_json(p.seed_measures / f"training_{spec.name}.json", {"history": training_history(model_dir)})


def codes_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    p = ctx.paths
    run_script("VQ_explore.py", [
        "--data_path", p.train_data, "--VQ_VAE", p.model(spec.name) / "best.pt",
        "--vq_dict_path", p.model(spec.name) / "VQ_dict.data", "--plot_flag", "False", *_common(ctx)],
        _log(ctx, spec, "codes"), ctx.threads)


def silhouettes_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    p = ctx.paths
    figures = p.seed_dir / "figures" / spec.name
    run_script("VQ_explore.py", [
        "--data_path", p.held_out_data, "--VQ_VAE", p.model(spec.name) / "best.pt",
        "--vq_dict_path", p.seed_dir / "scratch" / f"{spec.name}_held_out_VQ_dict.data", "--plot_flag", "True",
        "--figure_dir", figures, *ctx.preset.tsne_flags, *_common(ctx)], _log(ctx, spec, "silhouettes"), ctx.threads)
    write_json(p.seed_measures / f"silhouettes_{spec.name}.json", read_silhouettes(figures / "silhouette.csv"))


def latent_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    p = ctx.paths
    result = SM.latent_measures(p.model(spec.name) / "best.pt", load_cp_dataset(p.train_data),
                                load_cp_dataset(p.held_out_data), ctx.seed)
    write_json(p.seed_measures / f"latent_{spec.name}.json", result)


def train_prior(ctx: Context, spec: ModelSpec, prior_dir: Path, log_name: str, continuing, *flags,
                epochs: int | None = None) -> None:
    """Prior_train.py over the codes of this model's VQ-VAE, at the preset's size (flags: more;
    epochs: instead of the preset's prior epochs)."""
    p, pre = ctx.paths, ctx.preset
    run_script("Prior_train.py", [
        "--data_path", p.train_data, "--VQ_VAE", p.model(spec.name) / "best.pt",
        "--vq_dict_path", p.model(spec.name) / "VQ_dict.data", "--model_path", prior_dir,
        "--preset", pre.model_preset, *pre.prior_flags, *flags, "--Epoch", epochs or pre.prior_epochs,
        "--batch_size", pre.batch_size, "--lr", pre.prior_lr, *_common(ctx), *_resume_flag(prior_dir, continuing)],
        _log(ctx, spec, log_name), ctx.threads)


def generate(ctx: Context, spec: ModelSpec, prior_dir: Path, words: Path, n: int, log_name: str, *flags) -> None:
    """generate.py: n pieces per quadrant from prior_dir's best.pt and this model's VQ-VAE, their
    words written to `words` (flags: more)."""
    p = ctx.paths
    run_script("generate.py", [
        "--VQ_prior", prior_dir / "best.pt", "--VQ_VAE", p.model(spec.name) / "best.pt",
        "--music_file", words.name.removesuffix("_data.data"), "--out_root", words.parent, "--n_per_emotion", n,
        "--batch_size", min(n, 50), *flags, "--evaluator", p.evaluator, *_common(ctx)],
        _log(ctx, spec, log_name), ctx.threads)


def prior_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    prior_dir = ctx.paths.prior(spec.name)
    train_prior(ctx, spec, prior_dir, "prior", continuing)
    write_json(ctx.paths.seed_measures / f"prior_training_{spec.name}.json", {"history": training_history(prior_dir)})


def generate_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    generate(ctx, spec, ctx.paths.prior(spec.name), ctx.paths.generated_words(spec.name), ctx.preset.n_per_quadrant,
             "generate")


def generation_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    p = ctx.paths
    write_json(p.seed_measures / f"generation_{spec.name}.json",
               SM.generation_measures(p.generated_words(spec.name), p.evaluator))


def decoded_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    p = ctx.paths
    write_json(p.seed_measures / f"decoded_{spec.name}.json",
               SM.decoded_measures(p.model(spec.name) / "best.pt", load_cp_dataset(p.held_out_data), p.evaluator,
                                   ctx.seed))


def guidance_per_quadrant(preset: StudyPreset) -> int:
    return max(1, preset.n_per_quadrant // 2)


def guided_prior(ctx: Context, spec: ModelSpec) -> Path:
    return ctx.paths.prior(spec.name).with_name(f"Prior_guided_{spec.name}")


def sample_scales(ctx: Context, spec: ModelSpec, prior_dir: Path, stage: str, scales, n: int,
                  continuing) -> dict:
    """A guided prior's pieces at each guidance scale (n per quadrant, the same generator seed),
    in generated/{stage}/, measured: {"S": generation measures}. A scale finished before an
    interruption stays."""
    runs = {}
    for scale in scales:
        words = ctx.paths.seed_dir / "generated" / stage / f"{spec.name}_S{scale:g}_data.data"
        if not (continuing and words.exists()):
            generate(ctx, spec, prior_dir, words, n, f"{stage}_S{scale:g}", "--guidance", scale)
        runs[f"{scale:g}"] = SM.generation_measures(words, ctx.paths.evaluator)
    return runs


def guidance_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    prior_dir = guided_prior(ctx, spec)
    train_prior(ctx, spec, prior_dir, "guidance_prior", continuing, "--emotion_dropout", GUIDANCE_DROPOUT)
    n = guidance_per_quadrant(ctx.preset)
    runs = sample_scales(ctx, spec, prior_dir, "guidance", GUIDANCE_SCALES, n, continuing)
    write_json(ctx.paths.seed_measures / f"guidance_{spec.name}.json", {
        "scales": list(GUIDANCE_SCALES), "emotion_dropout": GUIDANCE_DROPOUT, "per_quadrant": n,
        "prior_history": training_history(prior_dir), "runs": runs})


def transposed_prior(ctx: Context, spec: ModelSpec) -> Path:
    return ctx.paths.prior(spec.name).with_name(f"Prior_transposed_{spec.name}")


def transpose_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    prior_dir = transposed_prior(ctx, spec)
    epochs = transpose_epochs(ctx.preset)
    train_prior(ctx, spec, prior_dir, "transpose_prior", continuing, "--emotion_dropout", GUIDANCE_DROPOUT,
                "--transpose", TRANSPOSE_SHIFT, epochs=epochs)
    n = guidance_per_quadrant(ctx.preset)
    runs = sample_scales(ctx, spec, prior_dir, "transpose", TRANSPOSE_SCALES, n, continuing)
    write_json(ctx.paths.seed_measures / f"transpose_{spec.name}.json", {
        "shift": TRANSPOSE_SHIFT, "epochs": epochs, "scales": list(TRANSPOSE_SCALES),
        "emotion_dropout": GUIDANCE_DROPOUT, "per_quadrant": n,
        "transposition": load_checkpoint(prior_dir / "last.pt", "prior")["transposition"],
        "prior_history": training_history(prior_dir), "runs": runs})


def interventions_work(ctx: Context, spec: ModelSpec, continuing) -> None:
    p = ctx.paths
    held = load_cp_dataset(p.held_out_data)
    scale = SM.statistics_scale(load_cp_dataset(p.train_data), ctx.length)
    write_json(p.seed_measures / f"interventions_{spec.name}.json",
               SM.intervention_measures(p.model(spec.name) / "best.pt", held, p.evaluator, ctx.preset.pairs,
                                        ctx.seed, scale))


def _best(ctx, spec):
    return ctx.paths.model(spec.name) / "best.pt"


def _training_settings(ctx: Context, spec: ModelSpec) -> list:
    pre = ctx.preset
    return [pre.model_preset, pre.model_flags, ctx.model_flags, spec.flags, pre.epochs, pre.batch_size, pre.lr,
            VAL_SPLIT, ctx.seed, ctx.device]


def _prior_settings(ctx: Context, spec: ModelSpec) -> list:
    pre = ctx.preset
    return [pre.model_preset, pre.prior_flags, pre.prior_epochs, pre.batch_size, pre.prior_lr, ctx.seed, ctx.device]


def _measure(name):
    return lambda ctx, spec: [ctx.paths.seed_measures / f"{name}_{spec.name}.json"]


STAGES = (
    Stage("split", "study", split_work, inputs=lambda ctx, spec: [ctx.source],
          outputs=lambda ctx, spec: [ctx.paths.measures / "split.json", ctx.paths.train_data,
                                     ctx.paths.held_out_data],
          settings=lambda ctx, spec: [ctx.preset.held_out, ctx.split_seed],
          code=("run.study",), section=R.split_section),
    Stage("data", "study", data_work, inputs=lambda ctx, spec: [ctx.paths.train_data, ctx.paths.held_out_data],
          outputs=lambda ctx, spec: [ctx.paths.measures / "data.json", ctx.paths.evaluator],
          settings=lambda ctx, spec: [ctx.length, ctx.split_seed], code=("run.study_measures",),
          section=R.data_section),
    Stage("train", "model", train_work, inputs=lambda ctx, spec: [ctx.paths.train_data],
          outputs=lambda ctx, spec: [*_measure("training")(ctx, spec), _best(ctx, spec)],
          settings=_training_settings,
          code=("MusER.py", "run.study"), section=R.codebook_section),
    Stage("codes", "model", codes_work, inputs=lambda ctx, spec: [ctx.paths.train_data, _best(ctx, spec)],
          outputs=lambda ctx, spec: [ctx.paths.model(spec.name) / "VQ_dict.data"],
          settings=lambda ctx, spec: [ctx.seed], code=("VQ_explore.py",)),
    Stage("silhouettes", "model", silhouettes_work,
          inputs=lambda ctx, spec: [ctx.paths.held_out_data, _best(ctx, spec)], outputs=_measure("silhouettes"),
          settings=lambda ctx, spec: [ctx.preset.tsne_flags, ctx.seed], code=("VQ_explore.py", "run.study"),
          section=R.silhouette_section),
    Stage("prior", "model", prior_work,
          inputs=lambda ctx, spec: [ctx.paths.train_data, _best(ctx, spec),
                                    ctx.paths.model(spec.name) / "VQ_dict.data"],
          outputs=lambda ctx, spec: [*_measure("prior_training")(ctx, spec), ctx.paths.prior(spec.name) / "best.pt"],
          settings=_prior_settings, code=("Prior_train.py", "run.study")),
    Stage("generate", "model", generate_work,
          inputs=lambda ctx, spec: [_best(ctx, spec), ctx.paths.prior(spec.name) / "best.pt", ctx.paths.evaluator],
          outputs=lambda ctx, spec: [ctx.paths.generated_words(spec.name)],
          settings=lambda ctx, spec: [ctx.preset.n_per_quadrant, ctx.seed, ctx.device],
          code=("generate.py",)),
    Stage("generation", "model", generation_work,
          inputs=lambda ctx, spec: [ctx.paths.generated_words(spec.name), ctx.paths.evaluator],
          outputs=_measure("generation"), code=("run.study_measures",), section=R.generation_sections),
    Stage("latent", "model", latent_work,
          inputs=lambda ctx, spec: [ctx.paths.train_data, ctx.paths.held_out_data, _best(ctx, spec)],
          outputs=_measure("latent"), settings=lambda ctx, spec: [ctx.seed], code=("run.study_measures",),
          section=R.latent_sections),
    Stage("interventions", "model", interventions_work,
          inputs=lambda ctx, spec: [ctx.paths.train_data, ctx.paths.held_out_data, _best(ctx, spec),
                                    ctx.paths.evaluator],
          outputs=_measure("interventions"), settings=lambda ctx, spec: [ctx.preset.pairs, ctx.seed],
          code=("run.study_measures",), section=R.intervention_sections),
    Stage("decoded", "model", decoded_work,
          inputs=lambda ctx, spec: [ctx.paths.held_out_data, _best(ctx, spec), ctx.paths.evaluator],
          outputs=_measure("decoded"), settings=lambda ctx, spec: [ctx.seed], code=("run.study_measures",)),
    Stage("guidance", "model", guidance_work,
          inputs=lambda ctx, spec: [ctx.paths.train_data, _best(ctx, spec),
                                    ctx.paths.model(spec.name) / "VQ_dict.data", ctx.paths.evaluator],
          outputs=_measure("guidance"),
          settings=lambda ctx, spec: [*_prior_settings(ctx, spec), GUIDANCE_DROPOUT, GUIDANCE_SCALES,
                                      guidance_per_quadrant(ctx.preset)],
          code=("Prior_train.py", "generate.py", "run.study_measures", "run.study"),
          section=R.guidance_sections, models=GUIDED_MODELS, optional=True),
    Stage("transpose", "model", transpose_work,
          inputs=lambda ctx, spec: [ctx.paths.train_data, _best(ctx, spec),
                                    ctx.paths.model(spec.name) / "VQ_dict.data", ctx.paths.evaluator],
          outputs=_measure("transpose"),
          settings=lambda ctx, spec: [*_prior_settings(ctx, spec), GUIDANCE_DROPOUT, TRANSPOSE_SHIFT,
                                      transpose_epochs(ctx.preset), TRANSPOSE_SCALES,
                                      guidance_per_quadrant(ctx.preset)],
          code=("Prior_train.py", "generate.py", "run.study_measures", "run.study"),
          section=R.transpose_sections, models=GUIDED_MODELS, optional=True),
)


def stage_fingerprint(stage: Stage, ctx: Context, spec: ModelSpec | None) -> str:
    return fingerprint([stage.name, *stage.settings(ctx, spec)], stage.inputs(ctx, spec), stage.code)


def sections() -> list[Callable]:
    """The report's sections in stage order (measures that need no prior run last, so that a
    failing measure never holds up the training stages)."""
    return [s.section for s in STAGES if s.section is not None]
