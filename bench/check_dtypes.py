"""How far a trained model's generation distributions move in narrower weights: per field,
teacher-forced on real pieces through the recurrent generation path (as
tests/test_generation.py checks on a tiny model), the total variation between the float32
and the bfloat16 / float16 / int8 sampling distributions and the largest |log p| change
over tokens with p >= 0.01.

Usage: python bench/check_dtypes.py --VQ_VAE RUN --VQ_prior RUN --data_path DATA.npz
                                    [--pieces 8] [--steps 256] [--dtypes bfloat16,int8]
"""
import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import load, machine  # noqa: E402

import torch  # noqa: E402

from models.packed import cast_for_generation  # noqa: E402
from music.data import load_cp_dataset  # noqa: E402
from music.elements import IDENTIFIERS  # noqa: E402
from run.checkpoint import build_prior, load_checkpoint, load_muser  # noqa: E402
from run.cli import resolve_checkpoint  # noqa: E402
from run.threads import apply_thread_policy  # noqa: E402
# The measurement tests/test_generation.py makes on a tiny model, shared rather than copied.
from tests.stepping import prior_teacher_forced_distributions as prior_distributions  # noqa: E402
from tests.stepping import teacher_forced_distributions  # noqa: E402


def compare(reference, narrow):
    tv = 0.5 * (reference - narrow).abs().sum(-1)
    likely = reference >= 0.01
    logp = (reference.log() - narrow.log()).abs()[likely]
    return f"mean TV {tv.mean():.5f}, max TV {tv.max():.4f}, max |dlog p| {logp.max():.4f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--VQ_VAE", required=True)
    parser.add_argument("--VQ_prior", required=True)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--pieces", type=int, default=8)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--dtypes", default="bfloat16,int8")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    where = machine(torch.device("cpu"), apply_thread_policy(args.threads))
    model, _, _ = load_muser(args.VQ_VAE)
    model.eval()
    prior_path = resolve_checkpoint(args.VQ_prior, "--VQ_prior")
    prior_ckpt = load_checkpoint(prior_path, "prior", "--VQ_prior")
    prior = build_prior(prior_ckpt, prior_path).eval()
    data = load_cp_dataset(args.data_path)
    n, length = args.pieces, min(args.steps, model.config.max_len)
    x = torch.from_numpy(data.x[:n, :length])
    y = torch.from_numpy(data.y[:n, :length])
    with torch.no_grad():
        codes = model.encode(torch.from_numpy(data.y[:n, :model.config.max_len]))[1]
    to_compact = prior_ckpt["vq_dict"][0]
    compact = torch.tensor([[to_compact.get(int(c), 0) for c in row[:length - 1]] for row in codes])
    emotion = torch.from_numpy(data.emotion[:n]).clamp(min=1)
    inp = torch.cat([prior.emotion_token(emotion)[:, None], compact], 1)
    reference = teacher_forced_distributions(model, x, y, codes)
    prior_reference = prior_distributions(prior, inp)
    for dtype in args.dtypes.split(","):
        narrow = teacher_forced_distributions(cast_for_generation(copy.deepcopy(model), dtype), x, y, codes)
        for field, p in reference.items():
            print(f"{dtype} decoder {IDENTIFIERS[field] if field < len(IDENTIFIERS) else field}: "
                  f"{compare(p, narrow[field])}")
        narrow_prior = prior_distributions(cast_for_generation(copy.deepcopy(prior), dtype), inp)
        print(f"{dtype} prior: {compare(prior_reference, narrow_prior)}")
    print(f"{n} pieces x {length} steps; {where}; load {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
