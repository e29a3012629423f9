"""The reproduction study in one command: MusER against its plain VQ-VAE baseline.

    python reproduce.py --preset small --midi_dir path/to/EMOPIA/midis --out results/run
    python reproduce.py --preset small --data_path data/co-representation/emopia_data.npz --out results/run

Stages, per model (MusER_TRANS_CA_GE, VQVAE_TRANS_CA_GE = --reg_weight 0, and any
--variants): train (MusER.py), latent space (VQ_explore.py: silhouettes, t-SNE), the
disentanglement probe, the prior (Prior_train.py), generation (generate.py), generated
against data metrics and the emotion evaluator's match rates, and the paper's six element
transfers. Then OUT/REPORT.md with its figures, and OUT/index.html.

Running the command again skips finished stages, continues an interrupted one (training
resumes from last.pt) and redoes a stage whose inputs changed. Each stage's own output is
in OUT/logs/; one progress line per stage here and in OUT/study.log.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from models.config import PRESETS
from music.data import load_cp_dataset
from music.errors import UserError
from run import study as S
from run.cli import run_main
from run.study_report import write_report
from run.threads import apply_thread_policy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run the MusER reproduction study end to end.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--midi_dir", help="folder of MIDI clips named Q{1-4}_*.mid (e.g. all of EMOPIA)")
    source.add_argument("--data_path", help="an EMOPIA-format compound-word npz (dictionary.pkl beside it)")
    p.add_argument("--sync", choices=("beats", "none"), default="beats",
                   help="with --midi_dir: beat-synchronise the clips first, as EMOPIA's release (default), "
                        "or encode them as given (prepare_data.py --sync)")
    p.add_argument("--out", required=True, help="report folder (created; reused to resume)")
    p.add_argument("--preset", default="paper", choices=sorted(S.STUDY_PRESETS),
                   help="study size: paper (GPU), small (2-core CPU, about an hour), tiny (tests)")
    p.add_argument("--variants", nargs="*", default=[],
                   help="further MusER variants, e.g. MEAN_CA_GE TRANS_CONCAT_GE")
    p.add_argument("--model_flags", default="",
                   help="extra flags for every VQ-VAE, e.g. '--dead_code_threshold 1'")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's VQ-VAE epochs")
    p.add_argument("--prior_epochs", type=int, default=None, help="override the preset's prior epochs")
    p.add_argument("--n_per_quadrant", type=int, default=None, help="generated pieces per quadrant")
    p.add_argument("--pairs", type=int, default=None, help="pairs per element transfer")
    p.add_argument("--pair_choice", choices=("first", "random"), default="first",
                   help="transfer pairs: the first of each quadrant in data order (the authors'), or random")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--jobs", type=int, default=2, help="models trained side by side (one process each)")
    p.add_argument("--device", default="cpu", help="device of the training and generation scripts")
    return p


@dataclass(frozen=True)
class Context:
    out: Path
    data_path: Path
    preset: S.StudyPreset
    preset_name: str
    model_flags: tuple
    pair_choice: str
    seed: int
    threads: int
    device: str


def log_line(out: Path, text: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {text}"
    sys.stdout.write(line + "\n")   # one write: lines of parallel models never interleave
    sys.stdout.flush()
    with open(out / "study.log", "a") as handle:
        handle.write(line + "\n")


def prepare(args, out: Path) -> Path:
    stages = S.Stages(out, lambda t: log_line(out, t))
    if args.data_path:
        path = Path(args.data_path)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        return path.resolve()
    midis = sorted(Path(args.midi_dir).glob("*.mid*"))
    if not midis:
        raise UserError(f"{args.midi_dir}: no MIDI files")
    command = ["prepare_data.py", "--midi_dir", args.midi_dir, "--out_dir", out / "data", "--name", "study",
               "--sync", args.sync]
    fp = S.fingerprint(command, midis)
    stages.run("prepare", fp, lambda _: S.run_script(command[0], command[1:], out / "logs" / "prepare.log", 2))
    return (out / "data" / "study_data.npz").resolve()


def evaluator_stage(ctx: Context, length: int) -> None:
    stages = S.Stages(ctx.out, lambda t: log_line(ctx.out, t))
    fp = S.fingerprint(["evaluator", length, ctx.seed], [ctx.data_path])

    def work(_):
        data = load_cp_dataset(ctx.data_path)
        pieces = S.data_pieces(data, length)
        info = S.train_window_evaluator(data, pieces, ctx.seed, ctx.out / "evaluator.json")
        info["data_metrics"] = S.metric_summary(S.piece_metric_rows(pieces), data.emotion)
        info["data_counts"] = {f"Q{q}": int((data.emotion == q).sum()) for q in S.QUADRANTS}
        S.write_json(ctx.out / "measures" / "data.json", info)
    stages.run("evaluator", fp, work)


def model_chain(spec: S.ModelSpec, ctx: Context) -> str:
    """Every stage of one model, in order."""
    apply_thread_policy(ctx.threads)        # this job's share of the cores, fixed
    out, p = ctx.out, ctx.preset
    stages = S.Stages(out, lambda t: log_line(out, f"{spec.name}: {t}"))
    logs = out / "logs"
    model_dir, prior_dir = out / "models" / spec.name, out / "models" / f"Prior_{spec.name}"
    vq_dict = model_dir / "VQ_dict.data"
    common = ["--seed", ctx.seed, "--device", ctx.device]

    def script_stage(name, script, args, inputs, resumable=False):
        fp = S.fingerprint([script, *args], inputs)

        def work(continuing):
            extra = []
            if resumable:
                extra = ["--resume"] if continuing and (Path(args[args.index("--model_path") + 1]) / "last.pt").exists() \
                    else ["--overwrite"]
            S.run_script(script, [*args, *extra], logs / f"{name}_{spec.name}.log", ctx.threads)
        stages.run(f"{name}_{spec.name}", fp, work)

    script_stage("train", "MusER.py", [
        "--data_path", ctx.data_path, "--model_path", model_dir, "--preset", p.model_preset,
        *p.model_flags, *ctx.model_flags, *spec.flags, "--Epoch", p.epochs, "--batch_size", p.batch_size,
        "--lr", p.lr, *common], [ctx.data_path], resumable=True)
    best = model_dir / "best.pt"
    script_stage("explore", "VQ_explore.py", [
        "--data_path", ctx.data_path, "--VQ_VAE", best, "--vq_dict_path", vq_dict, "--plot_flag", "True",
        "--figure_dir", out / "figures" / spec.name, *p.tsne_flags, *common], [ctx.data_path, best])

    def probe(_):
        result = S.probe_model(best, load_cp_dataset(ctx.data_path), ctx.seed)
        S.write_json(out / "measures" / f"probe_{spec.name}.json", result)
    stages.run(f"probe_{spec.name}", S.fingerprint(["probe", ctx.seed], [ctx.data_path, best]), probe)

    script_stage("prior", "Prior_train.py", [
        "--data_path", ctx.data_path, "--VQ_VAE", best, "--vq_dict_path", vq_dict, "--model_path", prior_dir,
        "--preset", p.model_preset, *p.prior_flags, "--Epoch", p.prior_epochs, "--batch_size", p.batch_size,
        "--lr", p.prior_lr, *common], [ctx.data_path, best, vq_dict], resumable=True)
    prior_best = prior_dir / "best.pt"
    gen_root = out / "generated"
    script_stage("generate", "generate.py", [
        "--VQ_prior", prior_best, "--VQ_VAE", best, "--music_file", spec.name, "--out_root", gen_root,
        "--n_per_emotion", p.n_per_quadrant, "--batch_size", min(p.n_per_quadrant, 50),
        "--evaluator", out / "evaluator.json", *common], [best, prior_best, out / "evaluator.json"])
    words = gen_root / f"{spec.name}_data.data"

    def measure(_):
        S.write_json(out / "measures" / f"generated_{spec.name}.json",
                     S.generated_measures(words, out / "evaluator.json"))
    stages.run(f"measure_{spec.name}", S.fingerprint(["measure"], [words, out / "evaluator.json"]), measure)

    def transfer(_):
        data = load_cp_dataset(ctx.data_path)
        model, _ = S.load_model(best)
        scale = S.statistics_scale(data, model.config.max_len)
        result = S.transfer_model(best, data, out / "evaluator.json", p.pairs, ctx.pair_choice, ctx.seed, scale)
        S.write_json(out / "measures" / f"transfer_{spec.name}.json", result)
    stages.run(f"transfer_{spec.name}", S.fingerprint(
        ["transfer", p.pairs, ctx.pair_choice, ctx.seed], [ctx.data_path, best, out / "evaluator.json"]), transfer)
    return spec.name


def window_length(preset: S.StudyPreset, model_flags) -> int:
    """The models' sequence length, from the preset and any --max_len flag."""
    flags = [*preset.model_flags, *model_flags]
    if "--max_len" in flags:
        return int(flags[flags.index("--max_len") + 1])
    return int(PRESETS[preset.model_preset]["muser"].get("max_len", 1024))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    preset = S.STUDY_PRESETS[args.preset]
    overrides = {k: v for k, v in (("epochs", args.epochs), ("prior_epochs", args.prior_epochs),
                                   ("n_per_quadrant", args.n_per_quadrant), ("pairs", args.pairs))
                 if v is not None}
    for key, value in overrides.items():
        if value <= 0:
            raise UserError(f"--{key} must be positive, got {value}")
    preset = dataclasses.replace(preset, **overrides)
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    log_line(out, f"study: preset {args.preset} ({preset.note}), out {out}")
    data_path = prepare(args, out)
    specs = S.model_specs(args.variants)
    jobs = min(args.jobs, len(specs))
    ctx = Context(out=out.resolve(), data_path=data_path, preset=preset, preset_name=args.preset,
                  model_flags=tuple(args.model_flags.split()), pair_choice=args.pair_choice, seed=args.seed,
                  threads=max(1, (os.cpu_count() or 1) // jobs), device=args.device)
    evaluator_stage(ctx, window_length(preset, ctx.model_flags))
    if jobs == 1:
        for spec in specs:
            model_chain(spec, ctx)
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in [pool.submit(model_chain, spec, ctx) for spec in specs]:
                future.result()
    report = write_report(ctx, specs, argv_line=_command_line(argv))
    log_line(out, f"study: finished in {(time.time() - began) / 60:.1f} min this run; report {report}")
    return 0


def _command_line(argv) -> str:
    return "python reproduce.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run_main(main)
