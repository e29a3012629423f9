"""Generation speed at the paper configuration: seconds per piece, the speedup over the
authors' full recompute, and pieces per second in a batch of 16.

The models have random weights (speed does not depend on them) and the EMOPIA vocabulary
(tempo 56, chord 135, bar-beat 18, type 4, pitch 87, duration 18, velocity 42, emotion
5; types EOS 0, Emotion 1, Metrical 2, Note 3); the prior samples over 512 codes. A
piece is what generate.py makes: the prior samples 1024 codes after the emotion token,
then the VQ-VAE decodes 1024 words from them, with the paper's sampling settings.
EOS is made impossible so that every piece runs all its steps: the type head's EOS bias
is set to -inf, which gives EOS probability exactly 0, and sampling never draws a
zero-probability token.

Measured, all in one run (the machine is shared, so only same-run ratios mean much):
- sec_per_piece: one piece at batch 1 on the recurrent path (Prior.generate then
  MusER.generate, as generate.py calls them), best of --repeat runs.
- speedup_vs_full: a piece of --ratio_steps codes and words (default 256) at batch 1,
  generated at the authors' cost (every word re-runs the whole decoder over the
  1024-step window: MusER.generate(recurrent=False, recompute="window"); every code
  re-runs the whole prior over its 1024-code window) against the recurrent path. Both
  paths are checked to give the same codes and words; the decoder's and the prior's own
  ratios are printed too.
- pieces_per_sec_b16: 16 pieces (--batch) of --steps codes and words in one batch,
  recurrent path, prior and decoder time together (the key names the batch size).

Usage: python bench/bench_generate.py [--device cpu|cuda] [--threads N] [--steps 1024]
                                      [--batch 16] [--quick]
The last line printed is

    sec_per_piece=... speedup_vs_full=... pieces_per_sec_b16=...
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import EMOPIA_VOCAB, TYPE_IDS  # noqa: E402
from models.config import MusERConfig, PriorConfig  # noqa: E402
from models.muser import MusER  # noqa: E402
from models.prior import Prior  # noqa: E402
from models.sampling import sample_tokens  # noqa: E402

N_CODES = 512


def build_models(device, dtype=torch.float32):
    torch.manual_seed(0)
    vq_vae = MusER(MusERConfig(EMOPIA_VOCAB, type_ids=TYPE_IDS)).to(device, dtype).eval()
    with torch.no_grad():
        vq_vae.heads[3].bias[TYPE_IDS["EOS"]] = float("-inf")   # EOS never sampled
    prior = Prior(PriorConfig(n_codes=N_CODES)).to(device, dtype).eval()
    # Compact prior codes -> codebook entries, as generate.py maps them.
    compact_to_code = torch.randperm(vq_vae.config.codebook_size, device=device)[:N_CODES]
    return vq_vae, prior, compact_to_code


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def make_pieces(vq_vae, prior, compact_to_code, batch, steps, seed, device, recurrent=True,
                recompute="window"):
    """generate.py's two calls for one batch: `steps` codes, then `steps` words from them.
    Returns (prior seconds, decoder seconds, words)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    emotion = torch.arange(batch, device=device) % 4 + 1
    prior_s, compact = timed(device, lambda: prior.generate(
        emotion, steps, generator=generator, recurrent=recurrent, recompute=recompute))
    latent = vq_vae.latent_from_codes(compact_to_code[compact])
    decoder_s, words = timed(device, lambda: vq_vae.generate(
        latent, emotion, generator=generator, max_steps=steps, recurrent=recurrent,
        recompute=recompute))
    assert all(len(w) == steps + 1 for w in words), "a piece ended early: EOS was sampled"
    return prior_s, decoder_s, words


def decoder_only(vq_vae, latent, steps, seed, device, recurrent):
    generator = torch.Generator(device=device).manual_seed(seed)
    emotion = torch.ones(latent.shape[0], dtype=torch.long, device=device)
    return timed(device, lambda: vq_vae.generate(latent, emotion, generator=generator,
                                                 max_steps=steps, recurrent=recurrent))


def prior_only(prior, steps, seed, device, recurrent, window=None):
    """`steps` codes at batch 1. recurrent=False re-runs the prior over the whole `window`
    (zeros after the current step) for every code, as the authors' generation does with
    its 1024-code window: Prior.generate's reference loop with a window longer than the
    codes asked for."""
    generator = torch.Generator(device=device).manual_seed(seed)
    emotion = torch.ones(1, dtype=torch.long, device=device)
    if recurrent:
        return timed(device, lambda: prior.generate(emotion, steps, generator=generator))

    @torch.no_grad()
    def full_window():
        tokens = torch.zeros(1, window + 1, dtype=torch.long, device=device)
        tokens[:, 0] = prior.emotion_token(emotion)
        for t in range(steps):
            logits = prior.logits(tokens[:, :window])[:, t]
            tokens[:, t + 1] = sample_tokens(logits, 0.3, 0.9, generator)
        return tokens[:, 1:steps + 1]
    return timed(device, full_window)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op CPU threads (2 is fastest on an idle 2-core CPU; on a "
                             "busy one, 1 is: waiting OpenMP threads then cost more than they gain)")
    parser.add_argument("--steps", type=int, default=1024, help="codes and words per piece")
    parser.add_argument("--ratio_steps", type=int, default=256,
                        help="words decoded by both paths for speedup_vs_full")
    parser.add_argument("--batch", type=int, default=16, help="batch of the throughput run")
    parser.add_argument("--repeat", type=int, default=2, help="batch-1 pieces; the fastest counts")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 64-step pieces, 8-step ratio, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.ratio_steps, args.repeat = 64, 8, 1
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"device {device} ({cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
          f"{args.threads} thread(s), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} at start")

    vq_vae, prior, compact_to_code = build_models(device)
    steps = min(args.steps, vq_vae.config.max_len)

    # Warm-up (allocator, first-call costs), then batch-1 pieces.
    make_pieces(vq_vae, prior, compact_to_code, 1, 16, 0, device)
    runs = [make_pieces(vq_vae, prior, compact_to_code, 1, steps, seed, device)[:2]
            for seed in range(1, args.repeat + 1)]
    prior_s, decoder_s = min(runs, key=sum)
    sec_per_piece = prior_s + decoder_s
    print(f"batch 1, {steps} steps: {sec_per_piece:.2f} s per piece (prior {prior_s:.2f} s = "
          f"{1e3 * prior_s / steps:.2f} ms/step, decoder {decoder_s:.2f} s = "
          f"{1e3 * decoder_s / steps:.2f} ms/step); all runs "
          + ", ".join(f"{sum(r):.2f}" for r in runs))

    # Recurrent vs the authors' full recompute over the whole 1024-step window, same output.
    n = min(args.ratio_steps, steps)
    window = vq_vae.config.max_len
    codes = torch.randint(0, vq_vae.config.codebook_size, (1, window),
                          generator=torch.Generator().manual_seed(7)).to(device)
    latent = vq_vae.latent_from_codes(codes)
    rec_s, rec_words = decoder_only(vq_vae, latent, n, 3, device, recurrent=True)
    full_s, full_words = decoder_only(vq_vae, latent, n, 3, device, recurrent=False)
    same_words = all(np.array_equal(a, b) for a, b in zip(rec_words, full_words))
    print(f"decoder, batch 1, {n} words: recurrent {rec_s:.2f} s, full recompute of the "
          f"{window}-step window {full_s:.2f} s ({1e3 * full_s / n:.0f} ms/word): "
          f"{full_s / rec_s:.1f}x; same words: {same_words}")
    prior_rec_s, prior_rec = prior_only(prior, n, 4, device, recurrent=True)
    prior_full_s, prior_full = prior_only(prior, n, 4, device, recurrent=False, window=window)
    same_codes = bool(torch.equal(prior_rec, prior_full))
    print(f"prior, batch 1, {n} codes: recurrent {prior_rec_s:.2f} s, full recompute of the "
          f"{window}-step window {prior_full_s:.2f} s ({1e3 * prior_full_s / n:.0f} ms/code): "
          f"{prior_full_s / prior_rec_s:.1f}x; same codes: {same_codes}")
    speedup = (prior_full_s + full_s) / (prior_rec_s + rec_s)
    print(f"piece of {n} codes + {n} words: recurrent {prior_rec_s + rec_s:.2f} s, full "
          f"recompute {prior_full_s + full_s:.2f} s: {speedup:.1f}x")
    if not (same_words and same_codes):
        print("warning: the two paths gave different output")

    # Throughput: one batch of pieces.
    batch_prior_s, batch_decoder_s, _ = make_pieces(vq_vae, prior, compact_to_code, args.batch,
                                                    steps, 11, device)
    pieces_per_sec = args.batch / (batch_prior_s + batch_decoder_s)
    print(f"batch {args.batch}, {steps} steps: {batch_prior_s + batch_decoder_s:.2f} s "
          f"(prior {batch_prior_s:.2f} s, decoder {batch_decoder_s:.2f} s): "
          f"{pieces_per_sec:.3f} pieces/s")
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    print(f"sec_per_piece={sec_per_piece:.2f} speedup_vs_full={speedup:.1f} "
          f"pieces_per_sec_b{args.batch}={pieces_per_sec:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
