"""Turn the authors' released checkpoints into this project's self-describing ones.

    # their MusER VQ-VAE: needs the dictionary their data was encoded with (EMOPIA's)
    python convert_checkpoint.py --authors MusER_TRANS_CA_GE.pt --kind muser \
        --dictionary data/co-representation/dictionary.pkl \
        --out saved_models/MusER_TRANS_CA_GE_emopia/best.pt

    # their prior: needs their VQ_dict (number and order of the used codes) and the
    # converted VQ-VAE above (the prior belongs to its codebook)
    python convert_checkpoint.py --authors Prior.pt --kind prior \
        --vq_dict data/MusER_TRANS_CA_GE_emopia_VQ_dict.data --VQ_VAE MusER_TRANS_CA_GE_emopia \
        --out saved_models/Prior_MusER_TRANS_CA_GE_emopia/best.pt

Every tensor of their state dict must map onto one of ours and every one of ours must be
filled; anything else is a one-line error naming the keys. The result works with
VQ_explore.py, Prior_train.py, generate.py and element_transfer.py; it has no optimizer
state, so it does not resume training.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from models.config import PRESETS, PriorConfig, apply_preset
from run.authors_checkpoint import (VARIANTS, convert_muser, convert_prior, load_authors_checkpoint,
                                      muser_config)
from run.checkpoint import load_muser, save_checkpoint
from run.cli import run_main
from music.cp import load_dictionary, type_index, vocab_sizes
from music.errors import UserError
from run.codes import codebook_fingerprint, load_vq_dict, vq_dict_for_checkpoint
from run.pipeline import plain_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert the authors' MusER / prior checkpoints.")
    parser.add_argument("--authors", required=True, help="their .pt/.pth file ({'model': state_dict, ...})")
    parser.add_argument("--kind", required=True, choices=("muser", "prior"))
    parser.add_argument("--out", required=True, help="our checkpoint to write, e.g. saved_models/NAME/best.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--variant", default="MusER_TRANS_CA_GE", choices=sorted(VARIANTS),
                        help="their model file the VQ-VAE checkpoint was trained with (muser)")
    parser.add_argument("--dictionary", default="data/co-representation/dictionary.pkl",
                        help="dictionary.pkl their data was encoded with (muser)")
    parser.add_argument("--vq_dict", default=None, help="their VQ_dict file from VQ_explore.py (prior)")
    parser.add_argument("--VQ_VAE", default=None,
                        help="the converted VQ-VAE the prior belongs to: NAME, folder or .pt (prior)")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                        help="model sizes (their files are 'paper'; 'tiny' is for tests)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def convert_muser_file(args) -> dict:
    state, epoch = load_authors_checkpoint(args.authors)
    event2word, word2event = load_dictionary(args.dictionary)
    type_ids = {name: type_index(event2word, name) for name in ("EOS", "Emotion", "Metrical", "Note")}
    config = muser_config(args.variant, vocab_sizes(event2word), type_ids, args.preset)
    _, weights = convert_muser(state, config, args.authors)
    return {"kind": "muser", "config": config.to_dict(), "model": weights, "optimizer": None,
            "epoch": epoch, "batch": 0, "best_loss": None, "history": [], "args": plain_args(args),
            "vocab_sizes": vocab_sizes(event2word),
            "dictionary_path": str(Path(args.dictionary).resolve()),
            "dictionary": {"event2word": event2word, "word2event": word2event},
            "converted_from": str(Path(args.authors).resolve())}


def convert_prior_file(args) -> dict:
    if not args.vq_dict or not args.VQ_VAE:
        raise UserError("--kind prior needs --vq_dict (their VQ_dict) and --VQ_VAE (the converted VQ-VAE)")
    state, epoch = load_authors_checkpoint(args.authors)
    vq_vae, vq_ckpt, vq_path = load_muser(args.VQ_VAE)
    fingerprint = codebook_fingerprint(vq_vae)
    vq_dict = load_vq_dict(Path(args.vq_dict), fingerprint, vq_vae.config.codebook_size)
    config = apply_preset(PriorConfig(n_codes=len(vq_dict[0])), args.preset)
    _, weights = convert_prior(state, config, args.authors)
    return {"kind": "prior", "config": config.to_dict(), "model": weights, "optimizer": None,
            "epoch": epoch, "batch": 0, "best_loss": None, "history": [], "args": plain_args(args),
            "vocab_sizes": vq_ckpt["vocab_sizes"], "dictionary_path": vq_ckpt["dictionary_path"],
            "vq_vae_path": str(vq_path.resolve()), "vq_vae": fingerprint,
            "vq_dict": vq_dict_for_checkpoint(vq_dict),
            "converted_from": str(Path(args.authors).resolve())}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out}: already exists (pass --overwrite to replace it)")
    checkpoint = convert_muser_file(args) if args.kind == "muser" else convert_prior_file(args)
    save_checkpoint(out, checkpoint)
    n = sum(t.numel() for t in checkpoint["model"].values())
    print(f"{args.authors} -> {out}: {len(checkpoint['model'])} tensors, {n / 1e6:.2f}M values")
    return 0


if __name__ == "__main__":
    run_main(main)
