"""Step 2: find the codebook entries the trained VQ-VAE uses, and picture its latent space.

    python VQ_explore.py --data_path ./data/co-representation/emopia_data.npz \
        --VQ_VAE MusER_TRANS_CA_GE_emopia --plot_flag True

Writes data/{NAME}_VQ_dict.data ({0: {code: compact}, 1: {compact: code}}, the prior's
vocabulary) and, with --plot_flag, per element and for the whole latent: a t-SNE figure of
the pieces coloured by quadrant in six quadrant-pair panels, and the silhouette table
(figures/{NAME}/silhouette.csv and .md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from utils.atomic import atomic_write, write_csv
from utils.checkpoint import build_muser, load_checkpoint, model_vocabulary
from utils.cli import add_common_args, resolve_checkpoint, resolve_device, run_main, seed_everything, str2bool
from utils.cp import ELEMENTS
from utils.data import load_cp_dataset
from utils.pipeline import (codebook_fingerprint, dataset_tensors, encode_pieces, make_vq_dict, model_name,
                            save_vq_dict)

# Q1-Q2 and Q3-Q4 differ in valence, Q1-Q4 and Q2-Q3 in arousal.
QUADRANT_PAIRS = [(1, 2), (1, 4), (1, 3), (3, 4), (2, 3), (2, 4)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Collect used codes and visualise the latent space (step 2 of 4).")
    parser.add_argument("--data_path", default="data/co-representation/emopia_data.npz")
    parser.add_argument("--dictionary", default=None, help="dictionary.pkl (default: beside --data_path)")
    parser.add_argument("--VQ_VAE", default="MusER_TRANS_CA_GE_emopia",
                        help="saved_models/NAME/best.pt, a run folder, or a .pt file")
    parser.add_argument("--plot_flag", type=str2bool, default=True, help="draw t-SNE figures and silhouettes")
    parser.add_argument("--vq_dict_path", default=None, help="default: data/{NAME}_VQ_dict.data")
    parser.add_argument("--figure_dir", default=None, help="default: figures/{NAME}")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    add_common_args(parser)
    return parser


def pooled_features(latent: torch.Tensor, mask: torch.Tensor, slice_dim: int) -> dict[str, np.ndarray]:
    """Per piece, the quantised latent averaged over its real steps: one vector per element and 'all'."""
    weights = mask / mask.sum(dim=1, keepdim=True).clamp(min=1)
    pooled = torch.einsum("nt,ntd->nd", weights, latent).numpy()
    features = {name: pooled[:, k * slice_dim:(k + 1) * slice_dim] for k, name in enumerate(ELEMENTS)}
    features["all"] = pooled
    return features


def tsne_2d(features: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(1.0, (len(features) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def pair_silhouette(points: np.ndarray, labels: np.ndarray, pair: tuple[int, int]) -> float:
    """Silhouette of two quadrants, from the labels actually present; NaN when one is missing."""
    from sklearn.metrics import silhouette_score

    keep = np.isin(labels, pair)
    if len(np.unique(labels[keep])) < 2 or keep.sum() < 3:
        return float("nan")
    return float(silhouette_score(points[keep], labels[keep]))


def silhouette_table(features: dict[str, np.ndarray], embedded: dict[str, np.ndarray],
                     labels: np.ndarray) -> list[dict]:
    rows = []
    for name, points in embedded.items():
        for space, values in (("tsne", points), ("latent", features[name])):
            row = {"element": name, "space": space}
            for pair in QUADRANT_PAIRS:
                row[f"Q{pair[0]}-Q{pair[1]}"] = pair_silhouette(values, labels, pair)
            rows.append(row)
    return rows


def write_tables(rows: list[dict], figure_dir: Path) -> str:
    keys = list(rows[0])
    write_csv(figure_dir / "silhouette.csv", rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.3f}" for v in row.values()) + " |")
    markdown = "\n".join(lines) + "\n"
    atomic_write(figure_dir / "silhouette.md", lambda h: h.write(markdown.encode()))
    return markdown


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    ckpt_path = resolve_checkpoint(args.VQ_VAE, "--VQ_VAE")
    checkpoint = load_checkpoint(ckpt_path, "muser", "--VQ_VAE")
    model = build_muser(checkpoint, ckpt_path).to(device)
    data = load_cp_dataset(args.data_path, args.dictionary, **model_vocabulary(checkpoint))
    name = model_name(args.VQ_VAE, ckpt_path)

    tensors = dataset_tensors(data, model.config.max_len)
    latent, codes = encode_pieces(model, tensors["y"], args.batch_size, device)
    vq_dict = make_vq_dict(codes, codebook_fingerprint(model))
    vq_path = Path(args.vq_dict_path or f"data/{name}_VQ_dict.data")
    save_vq_dict(vq_path, vq_dict)
    print(f"{len(vq_dict[0])} of {model.config.codebook_size} codes used by {len(codes)} pieces; "
          f"wrote {vq_path}")

    if not args.plot_flag:
        return 0
    from tqdm import tqdm
    from utils.plotting import plot_tsne_pairs

    figure_dir = Path(args.figure_dir or f"figures/{name}")
    labels = data.emotion
    features = pooled_features(latent, tensors["mask"], model.config.slice_dim)
    embedded = {}
    for element in tqdm(list(features), desc="t-SNE", leave=False):
        embedded[element] = tsne_2d(features[element], args.perplexity, args.seed)
        plot_tsne_pairs(embedded[element], labels, f"{name}: {element} latent",
                        figure_dir / f"tsne_{element}.png")
    print(write_tables(silhouette_table(features, embedded, labels), figure_dir), end="")
    print(f"figures and silhouette table in {figure_dir}")
    return 0


if __name__ == "__main__":
    run_main(main)
