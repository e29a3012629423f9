"""The GPU check: what a lent GPU should show, in one run (under 8 minutes on one GPU).

Stages, in order, each printed with its timing:
- pipeline: the tiny pipeline end to end on --device, as `make demo` runs it: prepare the
  shipped EMOPIA sample, MusER.py, VQ_explore.py, Prior_train.py, generate.py,
  train_evaluator.py, compute_metrics.py and element_transfer.py (no t-SNE, audio or piano
  rolls), each script's main in this process; their output goes to WORK/logs/.
- train_step: one training step of --preset (default paper: random weights, the EMOPIA
  vocabulary) on --train_batch pieces of its full length, median of --train_steps steps,
  in float32 and under bf16 autocast (bench/bench_train.py's step, as MusER.py --amp).
- generate: --gen_pieces pieces (codes, then words from them, --gen_steps each; EOS never
  sampled) in one batch on the recurrent path (bench/bench_generate.py's pieces).
- traced: a traced step of the packed element decoders against the eager step (largest
  difference over 12 steps), then --trace_pieces pieces generated with traced steps and
  eagerly (MUSER_TRACE_STEPS=0) from the same seeds: time per step and identical pieces.

The last line printed is the summary,

    gpu_check ok: device=cuda torch=... pipeline_s=... step_fp32_s=... step_bf16_s=... ... machine="..."

A failing stage ends the run with one line `gpu_check error: STAGE: ...` on stderr and exit
code 1. Usage: bench/gpu_check.sh [--device cuda] [options]; a dry run on a CPU with tiny
sizes (what tests/test_gpu_check.py runs):

    bench/gpu_check.sh --device cpu --preset tiny --epochs 1 --per_quadrant 1 --train_batch 2 \\
        --train_steps 1 --gen_pieces 4 --gen_steps 16 --trace_pieces 2 --trace_steps 8
"""
import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_generate import build_models, make_pieces  # noqa: E402
from bench.bench_train import time_training_step  # noqa: E402
from bench.common import machine  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import compute_metrics  # noqa: E402
import element_transfer  # noqa: E402
import generate  # noqa: E402
import MusER  # noqa: E402
import prepare_data  # noqa: E402
import Prior_train  # noqa: E402
import train_evaluator  # noqa: E402
import VQ_explore  # noqa: E402
from models import packed as packed_module  # noqa: E402
from models.config import PRESETS  # noqa: E402
from run.threads import apply_thread_policy  # noqa: E402

SAMPLE_MIDI_DIR = ROOT / "data" / "sample" / "midis"
TRACE_TOLERANCE = 1e-3          # traced against eager step outputs (LayerNorm scale)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", default=None, help="folder for the pipeline's files (default: a temporary one, "
                                                "removed after a successful run)")
    p.add_argument("--epochs", type=int, default=10, help="pipeline: MusER and prior epochs")
    p.add_argument("--max_len", type=int, default=256, help="pipeline: the tiny models' window")
    p.add_argument("--per_quadrant", type=int, default=4, help="pipeline: pieces generated per quadrant")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                   help="model size of the timed stages (train_step, generate, traced)")
    p.add_argument("--train_batch", type=int, default=16, help="train_step: pieces per step")
    p.add_argument("--train_steps", type=int, default=10, help="train_step: timed steps (median)")
    p.add_argument("--gen_pieces", type=int, default=400, help="generate: pieces in the one batch")
    p.add_argument("--gen_steps", type=int, default=1024, help="generate: codes and words per piece")
    p.add_argument("--trace_pieces", type=int, default=4, help="traced: pieces per run")
    p.add_argument("--trace_steps", type=int, default=128, help="traced: codes and words per piece")
    return p


class CheckFailed(Exception):
    """A stage found something wrong; its message is the error line."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return text[:400] if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {text[:400]}"


# -- pipeline ------------------------------------------------------------------------------

def pipeline_commands(args, work: Path) -> list[tuple[str, object, list]]:
    """(name, script module, argv) of `make demo`'s pipeline, tiny, on args.device. Audio, piano
    rolls and t-SNE are left out: they run on the CPU whatever the device."""
    npz, muser, prior = work / "data" / "emopia_data.npz", work / "models" / "muser", work / "models" / "prior"
    vq_dict, evaluator, words = work / "data" / "vq_dict.data", work / "evaluator.json", work / "generated"
    device = ["--device", args.device]
    train = ["--preset", "tiny", "--lr", "1e-3", "--Epoch", args.epochs, "--overwrite", *device]
    n = args.per_quadrant
    return [
        ("prepare_data", prepare_data, ["--midi_dir", SAMPLE_MIDI_DIR, "--out_dir", work / "data",
                                        "--name", "emopia", "--workers", 1]),
        ("MusER", MusER, ["--data_path", npz, "--model_path", muser, "--max_len", args.max_len, *train]),
        ("VQ_explore", VQ_explore, ["--data_path", npz, "--VQ_VAE", muser, "--plot_flag", "False",
                                    "--vq_dict_path", vq_dict, *device]),
        ("Prior_train", Prior_train, ["--data_path", npz, "--VQ_VAE", muser, "--vq_dict_path", vq_dict,
                                      "--model_path", prior, *train]),
        ("generate", generate, ["--VQ_prior", prior, "--VQ_VAE", muser, "--music_file", "check",
                                "--out_root", words, "--n_per_emotion", n, "--batch_size", n,
                                "--audio", "False", "--piano_rolls", "False", *device]),
        ("train_evaluator", train_evaluator, ["--data_path", npz, "--split", "clip", "--out", evaluator]),
        ("compute_metrics", compute_metrics, ["--generated", words / "check_data.data", "--data_path", npz,
                                              "--out_dir", work / "metrics", "--evaluator", evaluator,
                                              "--audio", "False", "--piano_rolls", 0, "--listen", 1]),
        ("element_transfer", element_transfer, ["--VQ_VAE", muser, "--data_path", npz, "--source", "Q4",
                                                "--target", "Q1", "--elements", "velocity", "--n_pieces", 2,
                                                "--evaluator", evaluator, "--out_dir", work / "transfer",
                                                "--audio", "False", *device]),
    ]


def run_pipeline(args, work: Path) -> float:
    began = time.perf_counter()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name, script, argv in pipeline_commands(args, work):
        log = logs / f"{name}.log"
        try:
            with open(log, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                code = script.main([str(a) for a in argv])
        except SystemExit as exc:           # argparse rejects a flag
            code = exc.code
        except Exception as exc:
            raise CheckFailed(f"{name}: {one_line(exc)} (log {log})") from exc
        finally:
            _drop_log_handlers()
        if code:
            raise CheckFailed(f"{name} exited with {code} (log {log})")
        print(f"gpu_check:   {name} done at {time.perf_counter() - began:.1f} s", flush=True)
    return time.perf_counter() - began


def _drop_log_handlers() -> None:
    """The scripts' logger writes to the streams it was set up with: this stage's log file,
    closed now. The next script sets it up again."""
    logger = logging.getLogger("muser")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


# -- timed stages --------------------------------------------------------------------------

def time_train_steps(args, device) -> dict[str, float]:
    out = {}
    for key, amp in (("fp32", False), ("bf16", True)):
        seconds, model = time_training_step(args.train_batch, args.train_steps, amp, device, preset=args.preset)
        out[key] = seconds
        length = model.config.max_len
        del model
        _free(device)
    print(f"gpu_check: training step, {args.preset} configuration, batch {args.train_batch} x {length}, "
          f"median of {args.train_steps}: float32 {out['fp32']:.3f} s, bf16 autocast {out['bf16']:.3f} s "
          f"({out['fp32'] / out['bf16']:.2f}x)", flush=True)
    return out


def time_generation(args, device, models) -> dict[str, float]:
    vq_vae, prior, compact_to_code = models
    steps = min(args.gen_steps, vq_vae.config.max_len)
    # First calls at this batch size: trace the steps, settle the allocator.
    make_pieces(vq_vae, prior, compact_to_code, args.gen_pieces, min(4, steps), 0, device)
    prior_s, decoder_s, words = make_pieces(vq_vae, prior, compact_to_code, args.gen_pieces, steps, 1, device)
    if len(words) != args.gen_pieces:
        raise CheckFailed(f"{len(words)} pieces generated, {args.gen_pieces} asked for")
    total = prior_s + decoder_s
    print(f"gpu_check: generation, {args.gen_pieces} pieces of {steps} codes + {steps} words in one batch: "
          f"{total:.1f} s (prior {prior_s:.1f} s, decoder {decoder_s:.1f} s), "
          f"{args.gen_pieces / total:.2f} pieces/s", flush=True)
    return {"seconds": total, "steps": steps}


def check_traced(args, device, models) -> dict:
    vq_vae, prior, compact_to_code = models
    diff = traced_step_difference(vq_vae, device)
    if diff > TRACE_TOLERANCE:
        raise CheckFailed(f"a traced step differs from the eager step by {diff:.3g}")
    steps = min(args.trace_steps, vq_vae.config.max_len)
    runs = {}
    for mode in ("traced", "eager"):
        packed_module._generation_packs.clear()
        with _trace_setting("1" if mode == "traced" else "0"):
            make_pieces(vq_vae, prior, compact_to_code, args.trace_pieces, min(4, steps), 0, device)
            prior_s, decoder_s, words = make_pieces(vq_vae, prior, compact_to_code, args.trace_pieces, steps, 2,
                                                    device)
            built = [trace is not None for model in (vq_vae, prior)
                     for _, traces in packed_module._generation_packs[model]["stacks"].values()
                     for trace in traces.values()]
        if mode == "traced" and not all(built):
            raise CheckFailed(f"{built.count(False)} of {len(built)} stacks generated without a trace")
        runs[mode] = ((prior_s + decoder_s) / (2 * steps), words)
    packed_module._generation_packs.clear()
    same = sum(np.array_equal(a, b) for a, b in zip(runs["traced"][1], runs["eager"][1]))
    traced_ms, eager_ms = 1e3 * runs["traced"][0], 1e3 * runs["eager"][0]
    print(f"gpu_check: traced steps: largest |traced - eager| step output {diff:.3g}; {args.trace_pieces} pieces "
          f"of {steps} codes + {steps} words: traced {traced_ms:.2f} ms/step, eager {eager_ms:.2f} ms/step "
          f"({eager_ms / traced_ms:.2f}x); identical pieces {same}/{args.trace_pieces}", flush=True)
    return {"diff": diff, "same": same, "traced_ms": traced_ms, "eager_ms": eager_ms}


@torch.no_grad()
def traced_step_difference(vq_vae, device, steps: int = 12) -> float:
    """Largest difference between a TracedStep of the packed element decoders and their
    eager step over `steps` random inputs, states updated by each."""
    stacks = packed_module.PackedStacks(list(vq_vae.element_decoders))
    generator = torch.Generator().manual_seed(3)
    shape = (len(vq_vae.element_decoders), 2, vq_vae.config.dec_d_model)
    x = torch.randn(shape, generator=generator).to(device)
    eager_state = stacks.init_state(2, device, torch.float32)
    traced_state = stacks.init_state(2, device, torch.float32)
    with _trace_setting("1"):
        traced = packed_module.TracedStep.build(stacks, x, traced_state)
    if traced is None:
        raise CheckFailed("torch.jit.trace could not record a step here (see the warning above)")
    diff = 0.0
    for _ in range(steps):
        x = torch.randn(shape, generator=generator).to(device)
        a, eager_state = stacks.step(x, eager_state)
        b, traced_state = traced(x, traced_state)
        diff = max(diff, (a - b).abs().max().item())
    return diff


@contextlib.contextmanager
def _trace_setting(value: str):
    before = os.environ.get(packed_module.TRACE_STEPS_ENV)
    os.environ[packed_module.TRACE_STEPS_ENV] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[packed_module.TRACE_STEPS_ENV]
        else:
            os.environ[packed_module.TRACE_STEPS_ENV] = before


def _free(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- main ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    began = time.perf_counter()
    stage = "device"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CheckFailed(f"CUDA is not available (torch {torch.__version__}); "
                               f"--device cpu runs the check on the CPU")
        where = machine(device, apply_thread_policy(None))
        cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
        print(f"gpu_check: device {device} ({where}); torch {torch.__version__}{cuda}", flush=True)
        stage = "pipeline"
        pipeline_s = run_pipeline(args, work)
        print(f"gpu_check: pipeline, tiny, {args.epochs} epochs each, on {device}: {pipeline_s:.1f} s", flush=True)
        stage = "train_step"
        step = time_train_steps(args, device)
        stage = "generate"
        models = build_models(device, args.preset)
        generated = time_generation(args, device, models)
        stage = "traced"
        traced = check_traced(args, device, models)
    except Exception as exc:
        print(f"gpu_check error: {stage}: {one_line(exc)} (files in {work})", file=sys.stderr)
        return 1
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - began
    print(f"gpu_check ok: device={device} torch={torch.__version__} preset={args.preset} "
          f"pipeline_s={pipeline_s:.1f} step_fp32_s={step['fp32']:.3f} step_bf16_s={step['bf16']:.3f} "
          f"bf16_speedup={step['fp32'] / step['bf16']:.2f} train_batch={args.train_batch} "
          f"gen_pieces={args.gen_pieces} gen_steps={generated['steps']} gen_s={generated['seconds']:.3f} "
          f"pieces_per_s={args.gen_pieces / generated['seconds']:.2f} traced_diff={traced['diff']:.2g} "
          f"traced_ms_per_step={traced['traced_ms']:.2f} eager_ms_per_step={traced['eager_ms']:.2f} "
          f"traced_identical={traced['same']}/{args.trace_pieces} total_s={total:.0f} "
          f'machine="{where}"', flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
