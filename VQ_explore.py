"""Step 2: find the codebook entries the trained VQ-VAE uses, and picture its latent space.

    python VQ_explore.py --data_path ./data/co-representation/emopia_data.npz \
        --VQ_VAE MusER_TRANS_CA_GE_emopia --plot_flag True

Writes data/{NAME}_VQ_dict.data ({0: {code: compact}, 1: {compact: code}}, the prior's
vocabulary; one such pair of maps per slice, {"slices": [...]}, for a model with
--quantizer product) and, with --plot_flag, per element and for the whole latent: a t-SNE figure of
the pieces coloured by quadrant in six quadrant-pair panels, and the silhouette table
(figures/{NAME}/silhouette.csv and .md).

The latent-space protocol is the authors' (evaluation/latent_space.py): each piece's quantised
latent averaged over the whole sequence, padding included (--pool all; --pool valid
averages over the piece's real steps), t-SNE with perplexity 30, PCA init, seed 13 and 3000
iterations, silhouettes of each quadrant pair on the 2-D t-SNE points (the paper's), plus
silhouettes on the pooled latent itself as extra columns.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from run.checkpoint import load_muser, model_vocabulary
from run.cli import add_common_args, resolve_device, run_main, seed_everything, str2bool
from music.data import load_cp_dataset
from music.elements import ELEMENTS
from music.errors import UserError
from evaluation.latent_space import (PERPLEXITY, POOLS, TSNE_ITERATIONS, latent_features, silhouette_markdown,
                                silhouette_table)
from run.codes import codebook_fingerprint, make_vq_dict, save_vq_dict, used_code_counts
from run.pipeline import dataset_tensors, encode_pieces, model_name


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
    parser.add_argument("--pool", choices=POOLS, default="all",
                        help="time average of each piece's latent: over all steps, padding included "
                             "(the authors'), or over its valid steps only")
    parser.add_argument("--perplexity", type=float, default=PERPLEXITY, help="t-SNE perplexity")
    parser.add_argument("--tsne_iter", type=int, default=TSNE_ITERATIONS,
                        help="t-SNE iterations (scikit-learn needs at least 250)")
    add_common_args(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot_flag and (args.tsne_iter < 250 or not args.perplexity > 0):
        raise UserError(f"--tsne_iter must be at least 250 and --perplexity positive "
                        f"(got {args.tsne_iter}, {args.perplexity})")
    device = resolve_device(args.device)
    seed_everything(args.seed)
    model, checkpoint, ckpt_path = load_muser(args.VQ_VAE)
    model = model.to(device)
    data = load_cp_dataset(args.data_path, args.dictionary, **model_vocabulary(checkpoint))
    name = model_name(args.VQ_VAE, ckpt_path)

    tensors = dataset_tensors(data, model.config.max_len)
    latent, codes = encode_pieces(model, tensors["y"], args.batch_size, device)
    product = model.config.quantizer == "product"
    vq_dict = make_vq_dict(codes, codebook_fingerprint(model), per_slice=product)
    vq_path = Path(args.vq_dict_path or f"data/{name}_VQ_dict.data")
    save_vq_dict(vq_path, vq_dict)
    used = used_code_counts(vq_dict)
    if product:
        print(f"codes used per slice by {len(codes)} pieces ({model.config.slice_codebook_size} in each "
              f"codebook): {', '.join(f'{e} {n}' for e, n in zip(ELEMENTS, used))}; wrote {vq_path}")
    else:
        print(f"{used[0]} of {model.config.codebook_size} codes used by {len(codes)} pieces; wrote {vq_path}")

    if not args.plot_flag:
        return 0
    figure_dir = Path(args.figure_dir or f"figures/{name}")
    features = latent_features(latent, tensors["mask"], model.config.slice_dim, args.pool)
    rows = silhouette_table(features, data.emotion, perplexity=args.perplexity, seed=args.seed,
                            max_iter=args.tsne_iter, figure_dir=figure_dir, title=name, progress=True)
    print(f"silhouettes (pooled over {args.pool} steps; Q columns on the t-SNE points, "
          f"'latent' columns on the pooled latent):")
    print(silhouette_markdown(rows), end="")
    print(f"figures and silhouette table in {figure_dir}")
    return 0


if __name__ == "__main__":
    run_main(main)
