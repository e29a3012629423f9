"""Step 4: generate emotion-conditioned piano music with a trained prior and VQ-VAE.

    python generate.py --VQ_prior Prior_TRANS_CA_GE_emopia --VQ_VAE MusER_TRANS_CA_GE_emopia \
        --music_file my_run

For each quadrant, the prior samples a sequence of codes after the emotion token (seven
codes per step, one per slice, for a VQ-VAE with --quantizer product); the VQ-VAE decodes
them step by step (recurrent attention state: constant work per step), many pieces per
batch. Writes generate_midi/OUT/emotion{q}_{i}.mid with its piano roll (.png)
and audio (.mp3), a listening page generate_midi/OUT/index.html, generate_midi/OUT_data.data
(the words, for compute_metrics.py) and generate_midi/OUT_index.data (the sampled codes).

Beyond the paper, off by default: --guidance S samples the prior's codes with classifier-
free guidance (a prior trained with Prior_train.py --emotion_dropout); --compare_guidance
also generates with S = 1 from the same seed (guidance1_* files) and writes a page with
both side by side per quadrant.
"""
from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path

import torch
from tqdm import tqdm

from evaluation.audio import render_all
from evaluation.evaluator import EmotionEvaluator
from evaluation.pages import describe, write_generation_page, write_guidance_page
from music.atomic import atomic_write
from run.checkpoint import build_prior, load_checkpoint, load_muser
from music.cp import words_to_midi
from music.elements import IDENTIFIERS, QUADRANTS, TYPE_FIELD
from music.errors import UserError
from run.cli import add_audio_args, add_common_args, resolve_checkpoint, resolve_device, run_main, str2bool
from run.codes import check_prior_codes, check_prior_kind, codebook_fingerprint, expand_codes
from run.threads import adapt_threads
from models.packed import GENERATION_DTYPES, cast_for_generation
from models.sampling import FieldSampling, SamplingParams

SAMPLED_FIELDS = IDENTIFIERS          # --tempo_temperature, --bar_beat_top_p, ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate music with emotion (step 4 of 4).")
    parser.add_argument("--VQ_prior", default="Prior_TRANS_CA_GE_emopia",
                        help="saved_models/NAME/best.pt, a run folder, or a .pt file")
    parser.add_argument("--VQ_VAE", default="MusER_TRANS_CA_GE_emopia")
    parser.add_argument("--music_file", default="generated", help="name of the output folder and files")
    parser.add_argument("--out_root", default="generate_midi")
    parser.add_argument("--emotion", type=int, nargs="+", default=list(QUADRANTS), help="quadrants 1..4")
    parser.add_argument("--n_per_emotion", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=100, help="pieces decoded at once")
    parser.add_argument("--max_steps", type=int, default=None, help="words per piece (default: model length)")
    parser.add_argument("--prior_temperature", type=float, default=0.3)
    parser.add_argument("--prior_top_p", type=float, default=0.9)
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="beyond the paper: classifier-free guidance scale S of the prior, "
                             "uncond + S * (cond - uncond) of its logits at every step; 1 is the "
                             "paper's sampling, more follows the emotion harder; S != 1 needs a "
                             "prior trained with --emotion_dropout and runs two rows per piece")
    parser.add_argument("--compare_guidance", action="store_true",
                        help="also generate every piece with S = 1 from the same seed "
                             "(guidance1_* files) and put both side by side on the page")
    defaults = SamplingParams()
    for field in SAMPLED_FIELDS:
        value: FieldSampling = getattr(defaults, field)
        parser.add_argument(f"--{field}_temperature", type=float, default=value.temperature)
        parser.add_argument(f"--{field}_top_p", type=float, default=value.top_p)
    parser.add_argument("--dtype", default="float32", choices=GENERATION_DTYPES,
                        help="weights of the prior and decoder while generating: bfloat16 and "
                             "float16 cast weights and activations (attention sums and sampling "
                             "stay float32 or wider), int8 quantises the linear layers' weights "
                             "per output row; see bench/RESULTS.md for speed and accuracy")
    parser.add_argument("--full_recompute", action="store_true",
                        help="re-run the whole decoder every step (slow reference path)")
    parser.add_argument("--piano_rolls", type=str2bool, default=True,
                        help="draw a piano roll of every piece")
    parser.add_argument("--evaluator", default=None,
                        help="emotion evaluator from train_evaluator.py (its prediction per piece on the page)")
    add_audio_args(parser)
    add_common_args(parser)
    return parser


def check_args(args) -> None:
    bad = [q for q in args.emotion if q not in QUADRANTS]
    if bad:
        raise UserError(f"--emotion {' '.join(map(str, bad))}: quadrants are 1, 2, 3 or 4")
    if args.n_per_emotion <= 0:
        raise UserError(f"--n_per_emotion must be positive, got {args.n_per_emotion}")
    if args.batch_size <= 0:
        raise UserError(f"--batch_size must be positive, got {args.batch_size}")
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max_steps must be positive, got {args.max_steps}")
    if not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise UserError(f"--guidance must be a number >= 0 (1: no guidance), got {args.guidance}")
    if args.compare_guidance and args.guidance == 1:
        raise UserError("--compare_guidance compares S = 1 with another --guidance; pass --guidance S, S != 1")
    for name in ("prior", *SAMPLED_FIELDS):
        temperature, top_p = getattr(args, f"{name}_temperature"), getattr(args, f"{name}_top_p")
        if not temperature >= 0:
            raise UserError(f"--{name}_temperature must be 0 (greedy) or more, got {temperature}")
        if not 0 < top_p <= 1:
            raise UserError(f"--{name}_top_p must be in (0, 1], got {top_p}")


def sampling_from_args(args) -> SamplingParams:
    return SamplingParams(**{field: FieldSampling(getattr(args, f"{field}_temperature"),
                                                  getattr(args, f"{field}_top_p"))
                             for field in SAMPLED_FIELDS})


def load_models(args, device):
    vq_vae, vq_ckpt, vq_path = load_muser(args.VQ_VAE)
    prior_path = resolve_checkpoint(args.VQ_prior, "--VQ_prior")
    prior_ckpt = load_checkpoint(prior_path, "prior", "--VQ_prior")
    check_prior_kind(prior_ckpt, prior_path, vq_vae, vq_path)
    vq_vae = vq_vae.to(device).eval()
    prior = build_prior(prior_ckpt, prior_path).to(device).eval()
    check_prior_codes(prior_ckpt, prior_path, codebook_fingerprint(vq_vae), vq_path)
    guidance = getattr(args, "guidance", 1.0)
    if guidance != 1 and not prior.config.supports_guidance:
        raise UserError(f"--guidance {guidance:g}: {prior_path} was trained without --emotion_dropout "
                        f"(no 'no emotion' token to guide with); train a prior with "
                        f"Prior_train.py --emotion_dropout 0.1, or leave --guidance at 1")
    dtype = getattr(args, "dtype", "float32")
    vq_vae, prior = cast_for_generation(vq_vae, dtype), cast_for_generation(prior, dtype)
    return vq_vae, prior, vq_ckpt, prior_ckpt


def guidance_label(scale: float) -> str:
    return f"guidance S = {scale:g}"


def generate_pieces(args, models, device, out_dir: Path, guidance: float, prefix: str, bar):
    """Every asked piece with guidance scale `guidance`, from a generator seeded with --seed
    (so that runs with and without guidance start from the same seed), written as
    out_dir/{prefix}emotion{q}_{i}.mid. models: load_models' four. Returns the records of
    the _data.data (words) and _index.data (codes) files."""
    vq_vae, prior, vq_ckpt, prior_ckpt = models
    word2event = vq_ckpt["dictionary"]["word2event"]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    results = {"words": [], "emotion": [], "names": [], "dictionary": vq_ckpt["dictionary_path"],
               "word2event": word2event}
    if guidance != 1:
        results["guidance"] = guidance
    indices = {"codes": [], "emotion": [], "names": []}
    sampling = sampling_from_args(args)
    n_steps = args.max_steps or vq_vae.config.max_len
    jobs = [(q, start) for q in args.emotion for start in range(0, args.n_per_emotion, args.batch_size)]
    for q, start in jobs:
        count = min(args.batch_size, args.n_per_emotion - start)
        emotion = torch.full((count,), q, dtype=torch.long, device=device)
        compact = prior.generate(emotion, vq_vae.config.max_len, temperature=args.prior_temperature,
                                 top_p=args.prior_top_p, generator=generator,
                                 recurrent=not args.full_recompute, on_step=adapt_threads,
                                 guidance=guidance)
        latent = vq_vae.latent_from_codes(expand_codes(compact, prior_ckpt["vq_dict"]))
        pieces = vq_vae.generate(latent, emotion, sampling, generator=generator, max_steps=n_steps,
                                 recurrent=not args.full_recompute, on_step=adapt_threads)
        for i, words in enumerate(pieces):
            name = f"{prefix}emotion{q}_{start + i}"
            words_to_midi(words, word2event, out_dir / f"{name}.mid", close_empty_bars=True)
            results["words"].append(words)
            indices["codes"].append(compact[i].cpu().numpy())
            for record in (results, indices):
                record["emotion"].append(q)
                record["names"].append(name)
        bar.update(count)
    return results, indices


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    device = resolve_device(args.device)
    models = load_models(args, device)
    vq_vae = models[0]
    evaluator = EmotionEvaluator.load(args.evaluator) if args.evaluator else None

    out_dir = Path(args.out_root) / args.music_file
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(args.out_root)
    # (scale, file prefix, name of the data files): the asked run, then S = 1 to compare.
    runs = [(args.guidance, "", args.music_file)]
    if args.compare_guidance:
        runs.append((1.0, "guidance1_", f"{args.music_file}_guidance1"))
    bar = tqdm(total=len(runs) * len(args.emotion) * args.n_per_emotion, desc="generating", unit="piece")
    records = []
    for guidance, prefix, stem in runs:
        results, indices = generate_pieces(args, models, device, out_dir, guidance, prefix, bar)
        atomic_write(root / f"{stem}_data.data", lambda h: pickle.dump(results, h))
        atomic_write(root / f"{stem}_index.data", lambda h: pickle.dump(indices, h))
        records.append((guidance, results, stem))
    bar.close()

    pieces = []                  # per run: its MIDI files
    for guidance, results, _ in records:
        midis = [out_dir / f"{name}.mid" for name in results["names"]]
        if args.piano_rolls:
            # Imported here: it loads matplotlib, slow to import, and piano rolls are optional.
            from evaluation.plotting import plot_piano_roll
            extra = f", {guidance_label(guidance)}" if guidance != 1 or args.compare_guidance else ""
            for midi, q in zip(midis, results["emotion"]):
                plot_piano_roll(midi, midi.with_suffix(".png"),
                                title=f"{args.music_file}: emotion Q{q}{extra}, {midi.stem}")
        pieces.append(midis)
    audio = render_all([m for midis in pieces for m in midis], args.soundfont, enabled=args.audio)
    entries = [describe(midis, asked=results["emotion"], audio=audio, evaluator=evaluator)
               for midis, (_, results, _) in zip(pieces, records)]
    intro = f"Prior {args.VQ_prior}, VQ-VAE {args.VQ_VAE}, seed {args.seed}."
    title = f"Generated: {args.music_file}"
    if args.guidance != 1:
        intro += (f" Codes sampled with classifier-free {guidance_label(args.guidance)} (beyond the "
                  f"paper; S = 1 is the paper's sampling).")
        title += f" ({guidance_label(args.guidance)})"
    quadrants = records[0][1]["emotion"]
    if args.compare_guidance:
        intro += " Both columns start from the same seed."
        page = write_guidance_page(out_dir, f"Generated: {args.music_file} (S = 1 against "
                                   f"S = {args.guidance:g})", list(zip(entries[1], entries[0])), quadrants,
                                   [guidance_label(1), guidance_label(args.guidance)], intro=intro)
    else:
        page = write_generation_page(out_dir, title, entries[0], quadrants, intro=intro)
    for guidance, results, stem in records:
        n_notes = [int((w[:, TYPE_FIELD] == vq_vae.config.type_ids["Note"]).sum()) for w in results["words"]]
        label = f" ({guidance_label(guidance)})" if args.compare_guidance or guidance != 1 else ""
        print(f"wrote {len(results['words'])} pieces{label} to {out_dir} "
              f"(notes per piece: min {min(n_notes)}, mean {sum(n_notes) / len(n_notes):.0f}, max {max(n_notes)}), "
              f"words in {root / (stem + '_data.data')}, codes in {root / (stem + '_index.data')}")
    print(f"{len(audio)} audio files; listening page: {page}")
    return 0


if __name__ == "__main__":
    run_main(main)
