"""What classifier-free guidance costs in generation: seconds per piece with and without
guidance (generate.py --guidance S against the default S = 1), per preset and batch size.

A piece is what generate.py makes: the prior samples max_len codes after the emotion token
(with guidance: rows [cond; uncond], twice the rows), then the VQ-VAE decodes max_len words.
Random weights as in bench_generate.py (speed does not depend on them; EOS made impossible
so every piece runs all its steps), the prior with the "no emotion" token. S = 1 and S = 2
take turns, --repeat rounds; each figure is the median (min-max) of its rounds. Guidance
changes the prior's work only; the decoder's time is printed to show the whole piece.

Usage: python bench/bench_guidance.py [--presets tiny,small] [--batches 1,16] [--repeat 3]
"""
import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_generate import build_models, timed  # noqa: E402
from bench.common import load, machine  # noqa: E402

import torch  # noqa: E402

from models.prior import Prior  # noqa: E402
from run.threads import adapt_threads, apply_thread_policy  # noqa: E402


def ms(values) -> str:
    """'median (min-max) ms' of seconds."""
    return f"{1e3 * statistics.median(values):.1f} ms ({1e3 * min(values):.1f}-{1e3 * max(values):.1f})"


def piece_times(vq_vae, prior, compact_to_code, batch, guidance, seed, device):
    """(prior seconds, decoder seconds) of one batch, as generate.py calls them."""
    generator = torch.Generator(device=device).manual_seed(seed)
    emotion = torch.arange(batch, device=device) % 4 + 1
    steps = vq_vae.config.max_len
    prior_s, compact = timed(device, lambda: prior.generate(
        emotion, steps, generator=generator, on_step=adapt_threads, guidance=guidance))
    latent = vq_vae.latent_from_codes(compact_to_code[compact])
    decoder_s, words = timed(device, lambda: vq_vae.generate(
        latent, emotion, generator=generator, max_steps=steps, on_step=adapt_threads))
    assert all(len(w) == steps + 1 for w in words), "a piece ended early: EOS was sampled"
    return prior_s, decoder_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = apply_thread_policy(args.threads)
    where = machine(device, threads)
    print(f"device {device}: {where}; torch {torch.__version__}; load average {load()} at start")
    keys = []
    for preset in args.presets.split(","):
        vq_vae, plain, compact_to_code = build_models(device, preset)
        config = dataclasses.replace(plain.config, emotion_dropout=0.1)
        torch.manual_seed(0)
        prior = Prior(config).to(device).eval()
        steps = vq_vae.config.max_len
        for batch in map(int, args.batches.split(",")):
            scales = (1.0, args.guidance)
            for scale in scales:                            # first calls: packing, tracing
                piece_times(vq_vae, prior, compact_to_code, batch, scale, 0, device)
            runs = {scale: [] for scale in scales}
            for seed in range(1, args.repeat + 1):
                for scale in scales:
                    runs[scale].append(piece_times(vq_vae, prior, compact_to_code, batch, scale, seed, device))
            per_piece = {}
            for scale, rs in runs.items():
                totals = [(p + d) / batch for p, d in rs]
                priors = [p / batch for p, _ in rs]
                per_piece[scale] = statistics.median(totals)
                print(f"{preset}, batch {batch}, {steps} codes + {steps} words, S = {scale:g}, per piece: "
                      f"{ms(totals)}, prior {ms(priors)}, decoder {ms([d / batch for _, d in rs])}")
            prior_ratio = (statistics.median(p for p, _ in runs[args.guidance])
                           / statistics.median(p for p, _ in runs[1.0]))
            ratio = per_piece[args.guidance] / per_piece[1.0]
            print(f"{preset}, batch {batch}: guided piece {ratio:.2f}x the unguided one "
                  f"(prior {prior_ratio:.2f}x)")
            keys.append(f"{preset}_b{batch}={per_piece[1.0]:.4f}/{per_piece[args.guidance]:.4f}")
    print(" ".join(keys) + f' machine="{where}, load {load()}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
