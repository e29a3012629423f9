"""The reproduction study in one command: MusER against its plain VQ-VAE baseline.

    python reproduce.py --preset small --midi_dir path/to/EMOPIA/midis --out study_run --seed 13
    python reproduce.py --preset small --midi_dir path/to/EMOPIA/midis --out study_run --seed 14 15
    python reproduce.py --report_only --out results/emopia_small

The clips are beat-synchronised and encoded (prepare_data.py), about 15% of the songs are held
out (the same songs for every seed), the emotion evaluator is fitted on the training songs,
then per seed and model (MusER_TRANS_CA_GE, VQVAE_TRANS_CA_GE = --reg_weight 0, and any
--variants) the stages of run/study_plan.py run in order: train, codes, silhouettes, the
latent measures, the prior, generation and its measures, the interventions and the decoder's
ceiling; with `--with guidance` (MusER only, beyond the paper), a prior trained for
classifier-free guidance sampled at several scales; with `--with transpose`, that prior trained
on the training pieces and their transposed copies (Prior_train.py --transpose). Then
OUT/REPORT.md with its figures and OUT/index.html, from the measure files alone.

Running the command again skips finished stages (same settings, inputs and code), continues
an interrupted one (training resumes from last.pt) and redoes a stage whose inputs or code
changed. Each stage's own output is in OUT/seeds/SEED/logs/; one progress line per stage here
and in OUT/study.log. `--export DIR` copies what a study commits (run/study.py COMMITTED).
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from models.config import PRESETS
from music.errors import UserError
from run import study as S
from run.cli import run_main
from run.study_plan import STAGES, Context, sections, stage_fingerprint
from run.study_report import write_report
from run.threads import apply_thread_policy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run the MusER reproduction study end to end.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--midi_dir", help="folder of MIDI clips named Q{1-4}_*.mid (e.g. all of EMOPIA)")
    source.add_argument("--data_path", help="an EMOPIA-format compound-word npz (dictionary.pkl beside it)")
    p.add_argument("--sync", choices=("beats", "none"), default="beats",
                   help="with --midi_dir: beat-synchronise the clips first, as EMOPIA's release (default), "
                        "or encode them as given (prepare_data.py --sync)")
    p.add_argument("--out", required=True, help="report folder (created; reused to resume)")
    p.add_argument("--preset", default="paper", choices=sorted(S.STUDY_PRESETS),
                   help="study size: paper (GPU), small (2-core CPU, about an hour per seed), tiny (tests)")
    p.add_argument("--seed", type=int, nargs="+", default=[13],
                   help="seeds to run, one after another (each in OUT/seeds/SEED; the report reads all there)")
    p.add_argument("--split_seed", type=int, default=13, help="seed of the held-out song split (fixed per study)")
    p.add_argument("--variants", nargs="*", default=[],
                   help="further models, [VQVAE_]REDUCTION_CONDITIONING_DECODING[_PQ[SIZE]]: e.g. MEAN_CA_GE, "
                        "TRANS_CA_GE_PQ (one codebook per slice), VQVAE_TRANS_CA_GE_PQ (the same without L_reg), "
                        "TRANS_CA_GE_PQ128 (128 codes per slice)")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="run only these models' stages (e.g. variants added to seeds that ran before); "
                        "the report still covers every model of the study")
    p.add_argument("--model_flags", default="",
                   help="extra flags for every VQ-VAE, e.g. '--dead_code_threshold 1'")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's VQ-VAE epochs")
    p.add_argument("--prior_epochs", type=int, default=None, help="override the preset's prior epochs")
    p.add_argument("--n_per_quadrant", type=int, default=None, help="generated pieces per quadrant")
    p.add_argument("--pairs", type=int, default=None, help="pairs per transfer and for the swap-effect matrix")
    p.add_argument("--jobs", type=int, default=2, help="models trained side by side (one process each)")
    p.add_argument("--device", default="cpu", help="device of the training and generation scripts")
    p.add_argument("--only", nargs="+", default=None, metavar="STAGE",
                   help=f"run only these stages (of {', '.join(s.name for s in STAGES)}); the others must "
                        "have run: e.g. measures again after a change to them")
    p.add_argument("--with", dest="extra", nargs="+", default=[], metavar="STAGE",
                   choices=[s.name for s in STAGES if s.optional],
                   help="also run these stages beyond the paper: guidance (MusER's prior trained for "
                        "classifier-free guidance, sampled at several scales; about 25 min per seed on 2 cores), "
                        "transpose (that prior trained on the training pieces and their transposed copies, "
                        "sampled at S = 1 and 2 and compared with guidance's)")
    p.add_argument("--report_only", action="store_true",
                   help="rebuild REPORT.md and its figures from OUT's measure files; run nothing")
    p.add_argument("--export", default=None, help="after the run, copy what a study commits to this folder")
    return p


def log_line(out: Path, text: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {text}"
    sys.stdout.write(line + "\n")   # one write: lines of parallel models never interleave
    sys.stdout.flush()
    with open(out / "study.log", "a") as handle:
        handle.write(line + "\n")


def prepare(args, out: Path) -> Path:
    if args.data_path:
        path = Path(args.data_path)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        return path.resolve()
    midis = sorted(Path(args.midi_dir).glob("*.mid*"))
    if not midis:
        raise UserError(f"{args.midi_dir}: no MIDI files")
    stages = S.Stages(out, lambda t: log_line(out, t))
    command = ["prepare_data.py", "--midi_dir", args.midi_dir, "--out_dir", out / "data", "--name", "study",
               "--sync", args.sync]
    fp = S.fingerprint(command, midis, code=("prepare_data.py",))
    stages.run("prepare", fp, lambda _: S.run_script(command[0], command[1:], out / "logs" / "prepare.log", 2))
    return (out / "data" / "study_data.npz").resolve()


def run_stage(stage, ctx: Context, spec=None) -> None:
    if not stage.wanted(ctx) or not stage.applies(spec):
        return
    folder = ctx.paths.out if stage.scope == "study" else ctx.paths.seed_dir
    prefix = "" if spec is None else f"seed {ctx.seed} {spec.name}: "
    stages = S.Stages(folder, lambda t: log_line(ctx.paths.out, prefix + t))
    stages.run(stage.marker(spec), stage_fingerprint(stage, ctx, spec),
               lambda continuing: stage.work(ctx, spec, continuing),
               commit=None if stage.runs_script else S.commit_at_start(), outputs=stage.outputs(ctx, spec))


def model_chain(spec: S.ModelSpec, ctx: Context) -> str:
    """Every stage of one model and seed, in order."""
    S.commit_at_start()                     # a worker process: the code it imported
    apply_thread_policy(ctx.threads)        # this job's share of the cores, fixed
    for stage in STAGES:
        if stage.scope == "model":
            run_stage(stage, ctx, spec)
    return spec.name


def selected_models(specs: list, names) -> list:
    """The models --models names (all when None), each one of this run's models."""
    unknown = sorted(set(names or ()) - {s.name for s in specs})
    if unknown:
        raise UserError(f"--models {' '.join(unknown)}: not a model of this run "
                        f"({', '.join(s.name for s in specs)}; add variants with --variants)")
    return [s for s in specs if names is None or s.name in names]


def window_length(preset: S.StudyPreset, model_flags) -> int:
    """The models' sequence length, from the preset and any --max_len flag."""
    flags = [*preset.model_flags, *model_flags]
    if "--max_len" in flags:
        return int(flags[flags.index("--max_len") + 1])
    return int(PRESETS[preset.model_preset]["muser"].get("max_len", 1024))


def command_line(argv) -> str:
    return "python reproduce.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def record_study(out: Path, args, preset, specs, source: Path, line: str) -> None:
    """measures/study.json: what the report says about the study (the commands of every seed kept)."""
    path = out / "measures" / "study.json"
    previous = S.read_json(path) if path.exists() else {}
    commands = {seed: ([runs] if isinstance(runs, str) else list(runs))
                for seed, runs in previous.get("commands", {}).items()}
    for seed in args.seed:
        commands[str(seed)] = [*commands.get(str(seed), []), line]      # every run that touched the seed
    data_note = ("beat-synchronised" if args.sync == "beats" else "as given, unsynchronised") \
        if args.midi_dir else "a given compound-word npz"
    models = list(previous.get("models", []))        # models of earlier runs stay in the report
    models += [s.name for s in specs if s.name not in models]
    S.write_json(path, {"preset_name": args.preset, "preset": dataclasses.asdict(preset),
                        "models": models, "data": source.name, "data_note": data_note,
                        "out_name": out.name, "commands": commands})


def export(out: Path, destination: Path) -> None:
    for path in S.committed_files(out):
        target = destination / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def main(argv=None) -> int:
    S.commit_at_start()
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    unknown = sorted(set(args.only or ()) - {s.name for s in STAGES})
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: no such stage (stages: {', '.join(s.name for s in STAGES)})")
    if args.report_only:
        if not (out / "measures" / "study.json").exists():
            raise UserError(f"{out}: no study measures (measures/study.json) to report from")
        print(f"wrote {write_report(out, sections())}")
        return 0
    if not (args.midi_dir or args.data_path):
        raise UserError("give --midi_dir or --data_path (or --report_only)")
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
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    line = command_line(argv)
    log_line(out, f"study: preset {args.preset} ({preset.note}), seeds {args.seed}, out {out}: {line}")
    source = prepare(args, out)
    specs = S.model_specs(args.variants)
    chosen = selected_models(specs, args.models)
    record_study(out, args, preset, specs, source, line)
    specs = chosen
    jobs = min(args.jobs, len(specs))
    for seed in args.seed:
        ctx = Context(paths=S.StudyPaths(out.resolve(), seed), source=source, preset=preset,
                      preset_name=args.preset, model_flags=tuple(args.model_flags.split()), seed=seed,
                      split_seed=args.split_seed, threads=max(1, (os.cpu_count() or 1) // jobs),
                      device=args.device, length=window_length(preset, tuple(args.model_flags.split())),
                      only=tuple(args.only or ()), extra=tuple(args.extra))
        for stage in STAGES:
            if stage.scope == "study":
                run_stage(stage, ctx)
        if jobs == 1:
            for spec in specs:
                model_chain(spec, ctx)
        else:
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                for future in [pool.submit(model_chain, spec, ctx) for spec in specs]:
                    future.result()
        log_line(out, f"study: seed {seed} finished")
    report = write_report(out, sections())
    if args.export:
        export(out, Path(args.export))
        write_report(Path(args.export), sections())
    log_line(out, f"study: finished in {(time.time() - began) / 60:.1f} min this run; report {report}")
    return 0


if __name__ == "__main__":
    run_main(main)
