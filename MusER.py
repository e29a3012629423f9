"""Step 1: train the MusER VQ-VAE on compound-word data.

    python MusER.py --data_path ./data/co-representation/emopia_data.npz --dataset emopia \
        --model_path MusER_TRANS_CA_GE_emopia --log_path logs/muser.log

Writes DIR/best.pt (lowest reconstruction loss), DIR/last.pt (resume point), DIR/metrics.csv and
DIR/loss_curves.png; DIR defaults to saved_models/{model name}_{dataset}.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from models.config import PRESETS, MusERConfig
from models.losses import value_tables
from models.muser import MusER
from run.checkpoint import model_vocabulary
from run.cli import add_common_args, add_training_args, run_main
from music.cp import type_index, vocab_sizes
from music.elements import ELEMENTS
from music.data import check_model_vocabulary, load_cp_dataset
from run.distributed import shutdown
from run.pipeline import (add_config_flags, config_from_args, dataset_tensors,
                            plain_args, report_pieces, run_dir)
from run.training import fit, open_run, split_tensors, start_training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the MusER VQ-VAE (step 1 of 4).")
    parser.add_argument("--data_path", default="data/co-representation/emopia_data.npz",
                        help="compound-word npz written by prepare_data.py or the EMOPIA release")
    parser.add_argument("--dictionary", default=None, help="dictionary.pkl (default: beside --data_path)")
    parser.add_argument("--dataset", default="emopia", help="dataset name, used in the default model name")
    parser.add_argument("--model_path", default=None,
                        help="folder for checkpoints; a bare name goes under saved_models/ "
                             "(default: saved_models/{model name}_{dataset})")
    parser.add_argument("--log_path", default=None, help="text log (default: {model_path}/train.log)")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                        help="'tiny' shrinks the model so the pipeline runs on a laptop CPU in minutes; "
                             "'small' is the reproduction study's size (256-step windows, narrow layers)")
    add_training_args(parser, epochs=300)
    add_config_flags(parser, MusERConfig, "model")
    add_common_args(parser)
    return parser


def muser_step(model, batch):
    """Forward one batch; flatten the per-element vectors into named scalars for the log."""
    out = model(batch["x"], batch["y"], batch["mask"], batch["seq_len"])
    metrics = {key: out[key] for key in ("loss", "recon", "vq", "reg", "perplexity")}
    metrics["acc_mean"] = out["element_acc"].mean()
    for k, element in enumerate(ELEMENTS):
        metrics[f"loss_{element}"] = out["element_losses"][k]
        metrics[f"acc_{element}"] = out["element_acc"][k]
    metrics["codes"] = out["code_slots"]       # one number per code of every codebook
    return metrics


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device, dist = start_training(args)

    data = load_cp_dataset(args.data_path, args.dictionary)
    type_ids = {name: type_index(data.event2word, name) for name in ("EOS", "Emotion", "Metrical", "Note")}
    config = config_from_args(MusERConfig, args, args.preset, vocab_sizes=vocab_sizes(data.event2word),
                              type_ids=type_ids)
    if config.reg_target == "value":  # replace() re-runs the config's checks on the tables
        config = dataclasses.replace(config, value_tables=value_tables(data.word2event))

    out_dir = run_dir(args.model_path, f"{config.name}_{args.dataset}")
    logger, resume, resume_path = open_run(out_dir, args, "muser", dist)
    if resume is not None:
        # A resumed run keeps its model, which must read data in its own vocabulary.
        check_model_vocabulary(data.dictionary_path, data.event2word, **model_vocabulary(resume))
        config = MusERConfig.from_dict(resume["config"])

    tensors = dataset_tensors(data, config.max_len)
    train, val, n_train, n_val = split_tensors(tensors, args.val_split, args.seed)
    report_pieces(data.emotion, n_train, data.npz_path, args.preset, logger)

    model = MusER(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"{config.name}: {n_params / 1e6:.2f}M parameters, {n_train} training / "
                f"{n_val} validation pieces from {data.npz_path}, device {device}"
                + (f" x {dist.world_size} processes" if dist.enabled else ""))
    meta = {"kind": "muser", "config": config.to_dict(), "args": plain_args(args),
            "vocab_sizes": vocab_sizes(data.event2word), "dictionary_path": str(data.dictionary_path.resolve()),
            "dictionary": {"event2word": data.event2word, "word2event": data.word2event},
            "data_path": str(data.npz_path.resolve())}
    code = fit(model=model, step_fn=muser_step, train=train, val=val, args=args, out_dir=out_dir,
               device=device, logger=logger, checkpoint_meta=meta, dist=dist,
               n_codes=config.code_slots, resume=resume)
    if code == 0 and dist.is_main:
        logger.info(f"checkpoints in {out_dir} (best.pt, last.pt); log {out_dir / 'metrics.csv'}")
    shutdown(dist)
    return code


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    run_main(main)
