"""Parameter counts of every MusER variant and of the prior at the paper configuration.

Vocabulary sizes are the EMOPIA release's (tempo 56, chord 135, bar-beat 18, type 4,
pitch 87, duration 18, velocity 42, emotion 5). Usage: python bench/param_counts.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import EMOPIA_VOCAB  # noqa: E402
from models.config import MusERConfig, PriorConfig  # noqa: E402
from models.muser import MusER  # noqa: E402
from models.prior import Prior  # noqa: E402

VARIANTS = [
    dict(),                                                    # the full model
    dict(reduction="MEAN"),
    dict(conditioning="CONCAT"),
    dict(reduction="MEAN", conditioning="CONCAT"),
    dict(decoding="G"),
    dict(conditioning="NONE", decoding="E"),
    dict(reg_weight=0.0),                                      # plain VQ-VAE baseline
]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def parts(model: MusER) -> dict:
    """Parameters per component (the rest are embeddings, projections and heads)."""
    out = {"encoder": count(model.encoder) + count(model.encoder_input) + count(model.to_latent),
           "DR": count(model.dr) if model.dr is not None else 0,
           "global": count(model.global_decoder) if model.global_decoder is not None else 0,
           "elements": (count(model.element_decoders)
                        if model.element_decoders is not None else 0)}
    out["other"] = count(model) - sum(out.values())
    return out


def main():
    torch.manual_seed(0)
    header = f"{'model':<22}{'total':>12}{'encoder':>11}{'DR':>12}{'global':>11}{'elements':>12}{'other':>10}"
    print(header)
    print("-" * len(header))
    for overrides in VARIANTS:
        config = MusERConfig(EMOPIA_VOCAB, **overrides)
        model = MusER(config)
        p = parts(model)
        print(f"{config.name:<22}{count(model):>12,}{p['encoder']:>11,}{p['DR']:>12,}"
              f"{p['global']:>11,}{p['elements']:>12,}{p['other']:>10,}")
    prior = Prior(PriorConfig(n_codes=512))
    print(f"{'Prior (512 codes)':<22}{count(prior):>12,}")


if __name__ == "__main__":
    main()
