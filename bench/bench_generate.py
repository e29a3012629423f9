"""Generation speed at the paper configuration: seconds per piece in float32 and in
narrower weights, the speedup over the authors' full recompute, and pieces per second in a
batch of 16.

The models have random weights (speed does not depend on them) and the EMOPIA vocabulary
(tempo 56, chord 135, bar-beat 18, type 4, pitch 87, duration 18, velocity 42, emotion
5; types EOS 0, Emotion 1, Metrical 2, Note 3); the prior samples over 512 codes. A
piece is what generate.py makes: the prior samples 1024 codes after the emotion token,
then the VQ-VAE decodes 1024 words from them, with the paper's sampling settings.
EOS is made impossible so that every piece runs all its steps: the type head's EOS bias
is set to -inf, which gives EOS probability exactly 0, and sampling never draws a
zero-probability token.

Threads are the scripts' (run/threads.py): --threads and OMP_NUM_THREADS override them as
they do there; OpenMP waiting comes from the environment (the Makefile exports
GOMP_SPINCOUNT=30000; OMP_WAIT_POLICY or GOMP_SPINCOUNT set it).
Every figure is the median of --repeat runs that alternate between the variants compared
(the machine may be shared), printed with its spread, the CPU and the load.
- sec_per_piece[_bf16|_fp16|_int8]: one piece at batch 1 on the recurrent path
  (Prior.generate then MusER.generate, as generate.py calls them) per --dtypes entry
  (generate.py --dtype), the dtypes taking turns.
- speedup_vs_full: a piece of --ratio_steps codes and words at batch 1 generated at the
  authors' cost (every word re-runs the whole decoder over the 1024-step window:
  MusER.generate(recurrent=False, recompute="window"); every code re-runs the whole prior
  over its 1024-code window) against the recurrent path, float32, the two taking turns.
  Both paths are checked to give the same codes and words; the decoder's and the
  prior's own ratios are printed too. The full path's cost per step does not depend on
  the step (it always runs the whole window), so a few steps give the ratio.
- pieces_per_sec_b16[_bf16|...]: --batch pieces of --steps codes and words in one batch,
  recurrent path, prior and decoder time together (the key names the batch size).

Usage: python bench/bench_generate.py [--device cpu|cuda] [--threads N] [--steps 1024]
                                      [--dtypes float32,bfloat16,int8] [--repeat 3]
                                      [--ratio_steps 32] [--batch 16]
                                      [--batch_dtypes float32,bfloat16] [--quick]
The last line printed is

    sec_per_piece=... sec_per_piece_bf16=... ... speedup_vs_full=... pieces_per_sec_b16=... machine="..."
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import EMOPIA_VOCAB, TYPE_IDS, load, machine, median_spread, thread_changes  # noqa: E402

import copy  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.config import MusERConfig, PriorConfig, apply_preset  # noqa: E402
from models.muser import MusER  # noqa: E402
from models.prior import Prior  # noqa: E402
from models.packed import GENERATION_DTYPES, ONE_ROW_LAYOUTS, cast_for_generation, one_row_layout_choices  # noqa: E402
from models.sampling import sample_tokens  # noqa: E402
from run.threads import adapt_threads, apply_thread_policy  # noqa: E402

N_CODES = 512
SUFFIX = {"float32": "", "bfloat16": "_bf16", "float16": "_fp16", "int8": "_int8"}


def build_models(device, preset="paper"):
    torch.manual_seed(0)
    vq_vae = MusER(apply_preset(MusERConfig(EMOPIA_VOCAB, type_ids=TYPE_IDS), preset)).to(device).eval()
    with torch.no_grad():
        vq_vae.heads[3].bias[TYPE_IDS["EOS"]] = float("-inf")   # EOS never sampled
    n_codes = min(N_CODES, vq_vae.config.codebook_size)
    prior = Prior(apply_preset(PriorConfig(n_codes=n_codes), preset)).to(device).eval()
    # Compact prior codes -> codebook entries, as generate.py maps them.
    compact_to_code = torch.randperm(vq_vae.config.codebook_size, device=device)[:n_codes]
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
        emotion, steps, generator=generator, recurrent=recurrent, recompute=recompute,
        on_step=adapt_threads))
    latent = vq_vae.latent_from_codes(compact_to_code[compact])
    decoder_s, words = timed(device, lambda: vq_vae.generate(
        latent, emotion, generator=generator, max_steps=steps, recurrent=recurrent,
        recompute=recompute, on_step=adapt_threads))
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op CPU threads (default: the scripts' policy, run/threads.py)")
    parser.add_argument("--steps", type=int, default=1024, help="codes and words per piece")
    parser.add_argument("--dtypes", default="float32,bfloat16,int8",
                        help="comma-separated generate.py --dtype values timed at batch 1 (and batch)")
    parser.add_argument("--ratio_steps", type=int, default=32,
                        help="words decoded by both paths for speedup_vs_full (0: skip)")
    parser.add_argument("--batch", type=int, default=16, help="batch of the throughput run (0: skip)")
    parser.add_argument("--batch_dtypes", default="float32,bfloat16",
                        help="the --dtypes entries timed in the batch run (int8 is slow there)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per figure (median)")
    parser.add_argument("--warmup", type=float, default=0,
                        help="seconds of 16-step warm-up pieces before timing (at least one each)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 64-step pieces, 4-step ratio, batch 4, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.ratio_steps, args.batch, args.repeat = 64, 4, 4, 1
    dtypes = args.dtypes.split(",")
    bad = [d for d in dtypes if d not in GENERATION_DTYPES]
    if bad or dtypes[0] != "float32":
        parser.error(f"--dtypes: float32 first, then any of {GENERATION_DTYPES}; got {args.dtypes}")
    device = torch.device(args.device)
    threads = apply_thread_policy(args.threads)
    where = machine(device, threads)
    print(f"device {device}: {where}; torch {torch.__version__}; load average {load()} at start")

    base, prior, compact_to_code = build_models(device)
    models = {d: (cast_for_generation(copy.deepcopy(base), d), cast_for_generation(copy.deepcopy(prior), d))
              if d != "float32" else (base, prior) for d in dtypes}
    steps = min(args.steps, base.config.max_len)

    # Warm-up (allocator, first-call costs, --warmup seconds for the thread count to follow
    # the machine), then batch-1 pieces, the dtypes taking turns.
    warm_until = time.perf_counter() + args.warmup
    while True:
        for vq, pr in models.values():
            make_pieces(vq, pr, compact_to_code, 1, 16, 0, device)
        if time.perf_counter() >= warm_until:
            break
    layouts = one_row_layout_choices()          # (groups, in, out, dtype, threads) -> layout
    for d in sorted({str(key[3]).replace("torch.", "") for key in layouts}):
        chosen = [v for key, v in layouts.items() if str(key[3]) == f"torch.{d}"]
        print(f"one-row products in {d}, layouts chosen by timing (models/packed.py): "
              + ", ".join(f"{layout} {chosen.count(layout)}" for layout in ONE_ROW_LAYOUTS)
              + f" of {len(chosen)} shapes")
    runs = {d: [] for d in dtypes}
    for seed in range(1, args.repeat + 1):
        for d, (vq, pr) in models.items():
            runs[d].append(make_pieces(vq, pr, compact_to_code, 1, steps, seed, device)[:2])
    sec_per_piece = {}
    for d, rs in runs.items():
        totals = [sum(r) for r in rs]
        sec_per_piece[d] = statistics.median(totals)
        prior_s = statistics.median(r[0] for r in rs)
        decoder_s = statistics.median(r[1] for r in rs)
        print(f"batch 1, {steps} steps, {d}: {median_spread(totals)} s per piece (prior "
              f"{1e3 * prior_s / steps:.2f} ms/step, decoder {1e3 * decoder_s / steps:.2f} ms/step)"
              + (f"; {sec_per_piece['float32'] / sec_per_piece[d]:.2f}x float32" if d != "float32" else ""))

    speedup = None
    n = min(args.ratio_steps, steps)
    if n > 0:
        speedup = ratio_vs_full(base, prior, n, args.repeat, device)

    throughput = {}
    if args.batch > 0:
        # One batch per dtype and repeat, the dtypes taking turns.
        batch_runs = {d: [] for d in dtypes if d in args.batch_dtypes.split(",")}
        for seed in range(11, 11 + args.repeat):
            for d in batch_runs:
                vq, pr = models[d]
                batch_runs[d].append(sum(make_pieces(vq, pr, compact_to_code, args.batch, steps,
                                                     seed, device)[:2]))
        for d, totals in batch_runs.items():
            throughput[d] = args.batch / statistics.median(totals)
            print(f"batch {args.batch}, {steps} steps, {d}: {median_spread(totals)} s: "
                  f"{throughput[d]:.3f} pieces/s")
    print(f"load average {load()} at end; {thread_changes()}")
    keys = [f"sec_per_piece{SUFFIX[d]}={sec_per_piece[d]:.3f}" for d in dtypes]
    if speedup is not None:
        keys.append(f"speedup_vs_full={speedup:.1f}")
    keys += [f"pieces_per_sec_b{args.batch}{SUFFIX[d]}={throughput[d]:.3f}" for d in throughput]
    print(" ".join(keys) + f' machine="{where}, load {load()}"')
    return 0


def ratio_vs_full(vq_vae, prior, n, repeat, device):
    """Recurrent against the authors' full recompute over the whole window, float32, the
    two paths taking turns; checks that they give the same output."""
    window = vq_vae.config.max_len
    codes = torch.randint(0, vq_vae.config.codebook_size, (1, window),
                          generator=torch.Generator().manual_seed(7)).to(device)
    latent = vq_vae.latent_from_codes(codes)
    t = {"dec_rec": [], "dec_full": [], "prior_rec": [], "prior_full": []}
    same = True
    for _ in range(repeat):
        rec_s, rec_words = decoder_only(vq_vae, latent, n, 3, device, recurrent=True)
        full_s, full_words = decoder_only(vq_vae, latent, n, 3, device, recurrent=False)
        prior_rec_s, prior_rec = prior_only(prior, n, 4, device, recurrent=True)
        prior_full_s, prior_full = prior_only(prior, n, 4, device, recurrent=False, window=window)
        same &= all(np.array_equal(a, b) for a, b in zip(rec_words, full_words))
        same &= bool(torch.equal(prior_rec, prior_full))
        for key, value in zip(t, (rec_s, full_s, prior_rec_s, prior_full_s)):
            t[key].append(value)
    m = {key: statistics.median(values) for key, values in t.items()}
    print(f"decoder, batch 1, {n} words: recurrent {median_spread(t['dec_rec'])} s, full "
          f"recompute of the {window}-step window {median_spread(t['dec_full'])} s "
          f"({1e3 * m['dec_full'] / n:.0f} ms/word): {m['dec_full'] / m['dec_rec']:.1f}x")
    print(f"prior, batch 1, {n} codes: recurrent {median_spread(t['prior_rec'])} s, full "
          f"recompute {median_spread(t['prior_full'])} s ({1e3 * m['prior_full'] / n:.0f} "
          f"ms/code): {m['prior_full'] / m['prior_rec']:.1f}x")
    ratios = [(pf + df) / (pr + dr) for dr, df, pr, pf in zip(*t.values())]
    speedup = statistics.median(ratios)
    print(f"piece of {n} codes + {n} words: full recompute / recurrent {speedup:.1f}x "
          f"({min(ratios):.1f}-{max(ratios):.1f}); same codes and words: {same}")
    if not same:
        print("warning: the two paths gave different output")
    return speedup


if __name__ == "__main__":
    sys.exit(main())
