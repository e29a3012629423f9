"""Training speed at the paper configuration: one training step, and the vectorised
regulariser and reconstruction loss against the plain Python loops of the authors' code.

The model has random weights and the EMOPIA vocabulary (tempo 56, chord 135, bar-beat
18, type 4, pitch 87, duration 18, velocity 42, emotion 5), with 1024-step sequences.
Measured, all in one run (the machine is shared, so only same-run ratios mean much):
- sec_per_step: MusER forward + backward + gradient clipping (norm 3) + Adam step on a
  batch of --batch random pieces (default 2) of 1024 steps; median of --steps steps after
  one warm-up step. With --amp the forward runs under bf16 autocast, as MusER.py --amp
  does; otherwise float32. The time of an EMOPIA-sized epoch (1,078 pieces) at this batch
  size follows from it.
- reg_speedup: models.muser.element_regularization (all batch pairs at once) against
  the authors' loop: per element, [B, B, T] matrices of token and latent differences
  filled pair by pair in a double Python loop, then one L1 loss of tanh against sign;
  forward and backward, batch 16, 1024 steps.
- loss_speedup: models.muser.reconstruction_losses against the authors' loop over the
  samples (NLL of each element over the sample's first seq_len steps); forward and
  backward, batch 16, 1024 steps. Only the loss is timed (the log-softmax inputs are
  given); the vectorised function also computes the accuracies.
The loss variants take turns for --repeat rounds and each figure is their median (spread
printed); both loop references are checked to give the vectorised values. Also printed (not in the last
line): forward + backward of the seven element sub-decoders run one after another (as
the model does) against one batched module over stacked per-decoder weights
(--element_batching 0 skips it).

Threads are the scripts' (run/threads.py): --threads and OMP_NUM_THREADS override them as
they do there; OpenMP waiting comes from the environment (the Makefile exports
GOMP_SPINCOUNT=30000; OMP_WAIT_POLICY or GOMP_SPINCOUNT set it).

Usage: python bench/bench_train.py [--device cpu|cuda] [--threads N] [--batch 2] [--steps 3]
                                   [--amp] [--losses 0] [--element_batching 0] [--quick]
The last line printed is

    sec_per_step=... reg_speedup=... loss_speedup=... machine="..."
"""
import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (EMOPIA_VOCAB, TYPE_IDS, alternating, load, machine, median_spread,  # noqa: E402
                          thread_changes)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from models.attention import causal_linear_attention, feature_map  # noqa: E402
from models.config import MusERConfig, apply_preset  # noqa: E402
from models.losses import element_regularization, reconstruction_losses  # noqa: E402
from models.muser import MusER  # noqa: E402
from music.elements import N_ELEMENTS  # noqa: E402
from run.threads import adapt_threads, apply_thread_policy  # noqa: E402


EMOPIA_PIECES = 1078


def random_batch(batch, length, generator):
    y = torch.stack([torch.randint(0, v, (batch, length), generator=generator)
                     for v in EMOPIA_VOCAB], -1)
    x = torch.cat([y[:, :1], y[:, :-1]], dim=1)
    seq_len = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    mask = (torch.arange(length) < seq_len[:, None]).float()
    return x, y, mask, seq_len


def seconds(fn, repeat, device=torch.device("cpu"), runs=None):
    """Median wall time of `repeat` calls after one warm-up call; the times are appended
    to `runs` when given."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    if runs is not None:
        runs.extend(times)
    return statistics.median(times)


# -- the training step ------------------------------------------------------------------

def time_training_step(batch, repeat, amp, device, runs=None, preset="paper"):
    torch.manual_seed(0)
    model = MusER(apply_preset(MusERConfig(EMOPIA_VOCAB, type_ids=TYPE_IDS), preset)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y, mask, seq_len = (t.to(device) for t in random_batch(
        batch, model.config.max_len, torch.Generator().manual_seed(1)))

    def step():
        adapt_threads()                     # as the trainers' loop does before each step
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(x, y, mask, seq_len)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        optimizer.step()
        assert torch.isfinite(loss)

    return seconds(step, repeat, device=device, runs=runs), model


# -- regulariser: vectorised vs the loop over batch pairs --------------------------------

def regularization_loop(reduced, targets):
    """L_reg per element [7] as the authors' code computes it: for each element, fill
    [B, B, T] matrices of token and latent differences pair by pair in a double Python
    loop, then one L1 loss between tanh of the latent and sign of the token differences."""
    batch, length = reduced.shape[1:]
    losses = []
    for k in range(reduced.shape[0]):
        target_diff = torch.zeros(batch, batch, length, device=reduced.device)
        latent_diff = torch.zeros(batch, batch, length, device=reduced.device)
        for i in range(batch):
            for j in range(batch):
                target_diff[i][j] = targets[k, i] - targets[k, j]
                latent_diff[i][j] = reduced[k, i] - reduced[k, j]
        losses.append(F.l1_loss(torch.tanh(latent_diff), torch.sign(target_diff)))
    return torch.stack(losses)


def reconstruction_loop(log_probs, y, mask, seq_len):
    """Per-element loss [7] as the authors' code computes it: for each sample, the NLL of
    each element over its first seq_len steps, summed over samples and divided by B.
    (The vectorised function also computes the accuracies; the loop does not.)"""
    batch = y.shape[0]
    totals = [0.0] * N_ELEMENTS
    for b in range(batch):
        n = seq_len[b]
        for k in range(N_ELEMENTS):
            totals[k] = totals[k] + F.nll_loss(log_probs[k][b][:n], y[b, :n, k])
    return torch.stack(totals) / batch


def time_losses(batch, length, repeat, device=torch.device("cpu")):
    g = torch.Generator().manual_seed(2)
    reduced = torch.randn(N_ELEMENTS, batch, length, generator=g).to(device).requires_grad_()
    _, y, mask, seq_len = (t.to(device) for t in random_batch(batch, length, g))
    tokens = y[..., :N_ELEMENTS].permute(2, 0, 1)          # [7, B, T] long, as the authors'
    targets = {regularization_loop: tokens,
               element_regularization: tokens.to(torch.int16)}  # as MusER.regularization_targets
    # The model's log-softmax outputs, as leaves: only the loss itself is timed.
    log_probs = [torch.randn(batch, length, v, generator=g).log_softmax(-1).to(device).requires_grad_()
                 for v in EMOPIA_VOCAB[:N_ELEMENTS]]

    def reg(fn):
        reduced.grad = None
        fn(reduced, targets[fn]).sum().backward()

    def recon(fn):
        for lp in log_probs:
            lp.grad = None
        out = fn(log_probs, y, mask, seq_len)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    with torch.no_grad():
        assert torch.allclose(element_regularization(reduced, targets[element_regularization]),
                              regularization_loop(reduced, targets[regularization_loop]), atol=1e-5)
        assert torch.allclose(reconstruction_losses(log_probs, y, mask, seq_len)[0],
                              reconstruction_loop(log_probs, y, mask, seq_len), atol=1e-5)
    # The four take turns, `repeat` rounds (the quick vectorised ones 4 calls per round).
    return alternating({"reg_vectorised": lambda: reg(element_regularization),
                        "reg_loop": lambda: reg(regularization_loop),
                        "loss_vectorised": lambda: recon(reconstruction_losses),
                        "loss_loop": lambda: recon(reconstruction_loop)},
                       repeat, calls={"reg_vectorised": 4, "loss_vectorised": 4}, sync=_sync(device))


def _sync(device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


# -- element sub-decoders: one after another vs one batched module ----------------------

def _stacked(modules, name):
    return torch.stack([getattr(m, name) for m in modules])


def batched_element_decoders(decoders, x):
    """The seven element decoders (TransformerStacks, causal-linear self-attention, no
    cross-attention) as one module over stacked per-decoder weights: x [G, B, L, d] ->
    [G, B, L, d]. Weights are stacked on every call, so the per-decoder parameters stay
    the trained (and saved) ones and receive their own gradients."""
    groups, batch, length, d = x.shape
    first = decoders[0].layers[0]
    heads, e = first.attention.n_heads, first.attention.head_dim
    dropout = first.dropout.p if first.training else 0.0

    def linear(h, modules):
        weight, bias = _stacked(modules, "weight"), _stacked(modules, "bias")   # [G, out, in]
        return torch.baddbmm(bias.unsqueeze(1), h.reshape(groups, -1, h.shape[-1]),
                             weight.transpose(1, 2)).view(*h.shape[:-1], -1)

    def norm(h, modules):
        weight, bias = _stacked(modules, "weight"), _stacked(modules, "bias")
        return torch.addcmul(bias[:, None, None], F.layer_norm(h, (d,), eps=modules[0].eps),
                             weight[:, None, None])

    def split_heads(h):                                 # [G, B, L, d] -> [G*B, H, L, e]
        return h.view(groups * batch, length, heads, e).transpose(1, 2)

    for i in range(len(decoders[0].layers)):
        layers = [dec.layers[i] for dec in decoders]
        attention = [l.attention for l in layers]
        q = split_heads(linear(x, [a.query_projection for a in attention]))
        k = split_heads(linear(x, [a.key_projection for a in attention]))
        v = split_heads(linear(x, [a.value_projection for a in attention]))
        a = causal_linear_attention(feature_map(q), feature_map(k), v,
                                    chunk_size=attention[0].chunk_size)
        a = a.transpose(1, 2).reshape(groups, batch, length, d)
        a = linear(a, [m.out_projection for m in attention])
        x = norm(x + F.dropout(a, dropout, first.training), [l.norm_attention for l in layers])
        y = F.dropout(F.gelu(linear(x, [l.linear1 for l in layers])), dropout, first.training)
        y = linear(y, [l.linear2 for l in layers])
        x = norm(x + F.dropout(y, dropout, first.training), [l.norm_ff for l in layers])
    return norm(x, [dec.norm for dec in decoders])


def time_element_decoders(model, batch, repeat, device):
    decoders = list(model.element_decoders)
    d, length = model.config.dec_d_model, model.config.max_len
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N_ELEMENTS, batch, length, d, generator=g).to(device)
    model.eval()                                        # no dropout: the outputs must agree
    with torch.no_grad():
        one_by_one = torch.stack([dec(x[k]) for k, dec in enumerate(decoders)])
        assert torch.allclose(batched_element_decoders(decoders, x), one_by_one, atol=1e-4)
    model.train()

    def sequential():
        model.zero_grad(set_to_none=True)
        torch.stack([dec(x[k]) for k, dec in enumerate(decoders)]).square().mean().backward()

    def batched():
        model.zero_grad(set_to_none=True)
        batched_element_decoders(decoders, x).square().mean().backward()

    return alternating({"sequential": sequential, "batched": batched}, repeat, sync=_sync(device))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op CPU threads (default: the scripts' policy, run/threads.py)")
    parser.add_argument("--batch", type=int, default=2, help="pieces per training step")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (median)")
    parser.add_argument("--loss_batch", type=int, default=16, help="batch of the loss comparison")
    parser.add_argument("--repeat", type=int, default=5,
                        help="alternating rounds of the loss variants (median, at least 3)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast in the training step")
    parser.add_argument("--losses", type=int, default=1,
                        help="1: also time the losses against the authors' loops; 0: skip")
    parser.add_argument("--element_batching", type=int, default=1,
                        help="1: also time the batched element decoders; 0: skip")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 step, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeat = 1, 3
    device = torch.device(args.device)
    where = machine(device, apply_thread_policy(args.threads))
    print(f"{where}; torch {torch.__version__}; load average {load()} at start")

    step_runs = []
    sec_per_step, model = time_training_step(args.batch, args.steps, args.amp, device, step_runs)
    steps_per_epoch = math.ceil(EMOPIA_PIECES / args.batch)
    print(f"training step, batch {args.batch} x {model.config.max_len} steps, "
          f"{'bf16 autocast' if args.amp else 'float32'}: {median_spread(step_runs)} s; an EMOPIA-sized "
          f"epoch ({EMOPIA_PIECES} pieces = {steps_per_epoch} steps) would take "
          f"{sec_per_step * steps_per_epoch / 60:.1f} min")

    keys = [f"sec_per_step={sec_per_step:.2f}"]
    if args.losses:
        keys += report_losses(args, model, device)
    if args.element_batching:
        t = time_element_decoders(model, args.batch, max(3, args.steps), device)
        print(f"element decoders, batch {args.batch}, forward + backward, alternating: one after "
              f"another {median_spread(t['sequential'])} s, one batched module "
              f"{median_spread(t['batched'])} s: "
              f"{statistics.median(t['sequential']) / statistics.median(t['batched']):.2f}x")
    print(f"load average {load()} at end; {thread_changes()}")
    print(" ".join(keys) + f' machine="{where}, load {load()}"')
    return 0


def report_losses(args, model, device):
    t = time_losses(args.loss_batch, model.config.max_len, args.repeat, device)
    m = {name: statistics.median(values) for name, values in t.items()}
    reg_speedup = m["reg_loop"] / m["reg_vectorised"]
    loss_speedup = m["loss_loop"] / m["loss_vectorised"]
    ms = {name: f"{1e3 * m[name]:.1f} ms ({1e3 * min(v):.1f}-{1e3 * max(v):.1f})" for name, v in t.items()}
    print(f"regulariser, batch {args.loss_batch}, forward + backward, median of {args.repeat} "
          f"alternating rounds (spread): vectorised {ms['reg_vectorised']}, authors' pair loop "
          f"{ms['reg_loop']}: {reg_speedup:.0f}x")
    print(f"reconstruction loss, batch {args.loss_batch}, forward + backward: vectorised "
          f"{ms['loss_vectorised']}, authors' sample loop {ms['loss_loop']}: {loss_speedup:.1f}x")
    return [f"reg_speedup={reg_speedup:.0f}", f"loss_speedup={loss_speedup:.1f}"]


if __name__ == "__main__":
    sys.exit(main())
