"""Step 3: train the emotion-conditioned autoregressive prior over the VQ-VAE's codes.

    python Prior_train.py --data_path ./data/co-representation/emopia_data.npz --dataset emopia \
        --VQ_VAE MusER_TRANS_CA_GE_emopia --model_path Prior_TRANS_CA_GE_emopia --log_path logs/prior.log

Each piece is encoded by the trained VQ-VAE (eval mode), its codes are mapped to compact
indices through data/{NAME}_VQ_dict.data, and the prior learns
input [emotion_token, c_0 .. c_{T-1}] -> target [c_0 .. c_{T-1}, 0]
(models.prior.training_sequences).

A VQ-VAE with one codebook per slice (--quantizer product) gets the product prior
(models.product_prior): the same layout per slice's code stream, one transformer over the
steps and seven heads that draw a step's codes in slice order, each conditioned on those
drawn before it.

Beyond the paper, off by default: --emotion_dropout P replaces a piece's emotion token by a
learned "no emotion" token with probability P per training step (drawn from the seeded
training generator, so --resume continues exactly), for generate.py --guidance.
--transpose K adds every training piece transposed by each of -K..K semitones but 0 (pitches
and chord roots move; the mode and the emotion label stay), after the train/validation split,
so validation stays the original pieces (run.prior_data).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models.config import PRESETS, PriorConfig
from models.prior import prior_step
from models.product_prior import prior_for
from run.checkpoint import load_muser, model_vocabulary
from run.cli import add_common_args, add_training_args, run_main
from music.data import load_cp_dataset
from run.distributed import shutdown
from music.errors import UserError
from run.codes import (check_prior_codes, codebook_fingerprint, load_model_vq_dict, used_code_counts,
                       vq_dict_for_checkpoint)
from run.pipeline import (add_config_flags, config_from_args, dataset_tensors, model_name, plain_args,
                          report_pieces, run_dir)
from run.prior_data import add_transposed_copies, code_sequences
from run.training import fit, open_run, split_indices, split_tensors, start_training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the emotion-conditioned prior (step 3 of 4).")
    parser.add_argument("--data_path", default="data/co-representation/emopia_data.npz")
    parser.add_argument("--dictionary", default=None, help="dictionary.pkl (default: beside --data_path)")
    parser.add_argument("--dataset", default="emopia")
    parser.add_argument("--VQ_VAE", default="MusER_TRANS_CA_GE_emopia",
                        help="saved_models/NAME/best.pt, a run folder, or a .pt file")
    parser.add_argument("--vq_dict_path", default=None, help="default: data/{NAME}_VQ_dict.data")
    parser.add_argument("--model_path", default=None,
                        help="folder for checkpoints; a bare name goes under saved_models/ "
                             "(default: saved_models/Prior_{VQ-VAE variant}_{dataset})")
    parser.add_argument("--log_path", default=None, help="text log (default: {model_path}/train.log)")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    add_training_args(parser, epochs=1300)
    parser.add_argument("--transpose", type=int, default=0, metavar="K",
                        help="also train on every training piece transposed by each of -K..K semitones but 0 "
                             "(pitches and chord roots move, mode and emotion stay; validation pieces are "
                             "not copied); beyond the paper (default 0: off)")
    add_config_flags(parser, PriorConfig, "prior model")
    add_common_args(parser)
    return parser


def default_prior_name(vq_name: str) -> str:
    """MusER_TRANS_CA_GE_emopia -> Prior_TRANS_CA_GE_emopia."""
    return "Prior_" + vq_name.split("_", 1)[1] if "_" in vq_name else f"Prior_{vq_name}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.transpose < 0:
        raise UserError(f"--transpose must be at least 0 (semitones), got {args.transpose}")
    device, dist = start_training(args)

    vq_vae, vq_ckpt, vq_path = load_muser(args.VQ_VAE)
    vq_vae = vq_vae.to(device)
    name = model_name(args.VQ_VAE, vq_path)
    fingerprint = codebook_fingerprint(vq_vae)
    vq_dict_path = Path(args.vq_dict_path or f"data/{name}_VQ_dict.data")
    vq_dict = load_model_vq_dict(vq_dict_path, vq_vae)
    product = vq_vae.config.quantizer == "product"
    stream_codes = used_code_counts(vq_dict)              # [n], or one count per slice
    n_codes = sum(stream_codes)

    out_dir = run_dir(args.model_path, default_prior_name(name))
    logger, resume, resume_path = open_run(out_dir, args, "prior", dist)
    if resume is not None:
        # The run continues over the same compact codes, or its weights mean nothing.
        check_prior_codes(resume, resume_path, fingerprint, vq_path)
        if vq_dict_for_checkpoint(resume["vq_dict"]) != vq_dict_for_checkpoint(vq_dict):
            raise UserError(f"{vq_dict_path}: not the VQ_dict {resume_path} was trained with "
                            f"({sum(used_code_counts(resume['vq_dict']))} used codes then, {n_codes} now); "
                            f"pass the original with --vq_dict_path, or start a new run")
        if resume["args"].get("transpose", 0) != args.transpose:
            raise UserError(f"{resume_path}: trained with --transpose {resume['args'].get('transpose', 0)}, "
                            f"not {args.transpose}: resume with the same flag, or start a new run")

    data = load_cp_dataset(args.data_path, args.dictionary, **model_vocabulary(vq_ckpt))
    tensors = dataset_tensors(data, vq_vae.config.max_len)
    sequences = code_sequences(vq_vae, tensors["y"], data.emotion, vq_dict, args.batch_size, device, logger,
                               str(data.npz_path))
    train, val, n_train, n_val = split_tensors(sequences, args.val_split, args.seed)
    transposition = None
    if args.transpose:
        train_rows, _ = split_indices(len(data), args.val_split, args.seed)
        train, transposition = add_transposed_copies(train, vq_vae, data, tensors["y"], train_rows, args.transpose,
                                                     vq_dict, args.batch_size, device, logger)
    del vq_vae

    config = config_from_args(PriorConfig, args, args.preset, n_codes=n_codes,
                              stream_codes=stream_codes if product else None)
    config.max_len = sequences["inp"].shape[1]
    if resume is not None:
        config = PriorConfig.from_dict(resume["config"])
    report_pieces(data.emotion, n_train, data.npz_path, args.preset, logger)

    model = prior_for(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    streams = f" in {len(stream_codes)} streams, one per slice ({', '.join(map(str, stream_codes))})" if product else ""
    copies = f" (+ {len(train['inp']) - n_train} transposed copies)" if transposition else ""
    logger.info(f"prior over {n_codes} used codes{streams}: {n_params / 1e6:.2f}M parameters, "
                f"{n_train} training{copies} / {n_val} validation pieces, device {device}")
    if config.emotion_dropout > 0:
        logger.info(f"emotion dropout {config.emotion_dropout:g}: each piece's emotion token becomes "
                    f"'no emotion' with that probability per step (for generate.py --guidance)")
    meta = {"kind": "prior", "config": config.to_dict(), "args": plain_args(args),
            "vocab_sizes": vq_ckpt["vocab_sizes"], "dictionary_path": vq_ckpt["dictionary_path"],
            "vq_vae_path": str(vq_path.resolve()), "vq_vae": fingerprint,
            "vq_dict": vq_dict_for_checkpoint(vq_dict)}
    if transposition is not None:
        meta["transposition"] = transposition
    code = fit(model=model, step_fn=prior_step, train=train, val=val, args=args, out_dir=out_dir,
               device=device, logger=logger, checkpoint_meta=meta, dist=dist, resume=resume)
    if code == 0 and dist.is_main:
        logger.info(f"checkpoints in {out_dir} (best.pt, last.pt)")
    shutdown(dist)
    return code


if __name__ == "__main__":
    logging.captureWarnings(True)
    run_main(main)
