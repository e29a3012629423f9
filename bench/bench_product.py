"""What one codebook per slice costs (MusER.py --quantizer product) against the paper's joint
codebook: parameters, a MusER training step, a prior training step and the prior's
generation per piece, side by side in one run.

Random weights and data at EMOPIA's vocabulary (speed does not depend on them). The joint
prior models every code of the preset's codebook (512 but for tiny), the product prior
seven streams of every code of a slice's codebook (--slice_codebook_size, MusER.py's
default unless given). The
decoder's generation does not depend on the quantiser (it reads the same latent) and is
not timed here (bench_generate.py). Joint and product take turns, --repeat rounds after a
warm-up; each figure is the median (min-max) of its rounds.

Usage: python bench/bench_product.py [--presets tiny,small] [--batch 8] [--repeat 3]
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_train import random_batch  # noqa: E402
from bench.common import EMOPIA_VOCAB, TYPE_IDS, alternating, load, machine  # noqa: E402

import torch  # noqa: E402

from models.config import MusERConfig, PriorConfig, apply_preset  # noqa: E402
from models.muser import MusER  # noqa: E402
from models.prior import prior_step, training_sequences  # noqa: E402
from models.product_prior import prior_for  # noqa: E402
from music.elements import N_ELEMENTS  # noqa: E402
from run.threads import adapt_threads, apply_thread_policy  # noqa: E402

def ms(values) -> str:
    return f"{1e3 * statistics.median(values):.1f} ms ({1e3 * min(values):.1f}-{1e3 * max(values):.1f})"


def parameters(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"


def training_step(model, step_fn, batch):
    """One optimiser step on `batch` (forward, backward, clip 3, Adam), as the trainers run it."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        adapt_threads()
        loss = step_fn(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        optimizer.step()
    return step


def generation(prior, batch: int, steps: int):
    """generate.py's prior call for `batch` pieces of `steps` codes."""
    emotion = torch.arange(batch) % 4 + 1
    return lambda: prior.generate(emotion, steps, generator=torch.Generator().manual_seed(0), on_step=adapt_threads)


def models_for(quantizer, preset, slice_codes, batch):
    """(MusER, its training batch, prior, its training batch) for one quantiser."""
    torch.manual_seed(0)
    muser = MusER(apply_preset(MusERConfig(EMOPIA_VOCAB, type_ids=TYPE_IDS, quantizer=quantizer,
                                           slice_codebook_size=slice_codes), preset)).train()
    generator = torch.Generator().manual_seed(1)
    words = random_batch(batch, muser.config.max_len, generator)
    c = muser.config
    streams = [c.codebook_size] if quantizer == "joint" else [c.slice_codebook_size] * N_ELEMENTS
    config = apply_preset(PriorConfig(n_codes=sum(streams), stream_codes=None if quantizer == "joint" else streams),
                          preset)
    prior = prior_for(config).train()
    codes = torch.stack([torch.randint(0, n, (batch, muser.config.max_len), generator=generator) for n in streams], -1)
    codes = codes[..., 0] if quantizer == "joint" else codes
    sequences = training_sequences(codes, torch.randint(1, 5, (batch,), generator=generator),
                                   streams[0] if quantizer == "joint" else streams)
    return muser, words, prior, sequences


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batch", type=int, default=8, help="pieces per training step")
    parser.add_argument("--generate_batches", default="1,16")
    parser.add_argument("--slice_codebook_size", type=int, default=MusERConfig.slice_codebook_size)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    threads = apply_thread_policy(args.threads)
    where = machine(torch.device("cpu"), threads)
    print(f"{where}; torch {torch.__version__}; load average {load()} at start")
    for preset in args.presets.split(","):
        built = {q: models_for(q, preset, args.slice_codebook_size, args.batch) for q in ("joint", "product")}
        steps = built["joint"][0].config.max_len
        for q, (muser, _, prior, _) in built.items():
            print(f"{preset}, {q}: MusER {parameters(muser)} parameters, {muser.config.code_slots} codes "
                  f"({muser.quantizer.codebook.numel() / 1e3:.1f}k codebook values); prior over "
                  f"{prior.config.n_codes} codes in {prior.config.streams} stream(s): {parameters(prior)} parameters")
        timings = {  # name -> (pieces per call, {quantizer: fn})
            f"MusER training step, batch {args.batch}": (1, {
                q: training_step(m, lambda model, batch: model(*batch), words) for q, (m, words, _, _) in built.items()}),
            f"prior training step, batch {args.batch}": (1, {
                q: training_step(p, prior_step, seq)
                for q, (_, _, p, seq) in built.items()}),
        }
        for batch in map(int, args.generate_batches.split(",")):
            timings[f"prior generation per piece ({steps} steps), batch {batch}"] = (batch, {
                q: generation(p, batch, steps) for q, (_, _, p, _) in built.items()})
        for name, (pieces, fns) in timings.items():
            runs = {q: [t / pieces for t in times] for q, times in alternating(fns, args.repeat).items()}
            ratio = statistics.median(runs["product"]) / statistics.median(runs["joint"])
            print(f"{preset}, {name}: joint {ms(runs['joint'])}, product {ms(runs['product'])}, "
                  f"product/joint {ratio:.2f}x")
    print(f'load average {load()} at end machine="{where}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
