"""Train the emotion evaluator and report its held-out accuracy.

The evaluator (evaluation/evaluator.py) classifies a piece's quadrant, arousal and valence
from musical features. It is trained on CP data (an npz + dictionary, as the VQ-VAE is),
or on a folder of EMOPIA-style MIDI clips `Q{q}_*.mid`, with a stratified held-out split
(by default whole songs are held out, so clips of one song never sit on both sides).
compute_metrics.py --evaluator then measures how often generated music carries the
emotion it was asked for.

    python train_evaluator.py --data_path data/co-representation/emopia_data.npz
    python train_evaluator.py --midi_dir data/sample/midis --split clip
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from evaluation import evaluator as E
from run.cli import run_main
from music.elements import QUADRANTS
from music.errors import UserError
from music.piece_io import load_dataset_pieces, load_midi_folder

DEFAULT_OUT = Path("saved_models") / "emotion_evaluator.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data_path", help="CP training npz (e.g. data/co-representation/emopia_data.npz)")
    src.add_argument("--midi_dir", help="folder of MIDI clips named Q{1-4}_*.mid")
    p.add_argument("--dictionary", default=None, help="dictionary.pkl (default: beside --data_path)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"evaluator file (default {DEFAULT_OUT})")
    p.add_argument("--split", choices=("song", "clip"), default="song",
                   help="hold out whole songs (default) or single clips")
    p.add_argument("--test_size", type=float, default=0.2, help="held-out fraction (default 0.2)")
    p.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the regressions")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def load_pieces(args):
    if args.data_path:
        pieces, _ = load_dataset_pieces(args.data_path, args.dictionary)
        return pieces, str(args.data_path)
    return load_midi_folder(args.midi_dir), str(args.midi_dir)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.test_size < 1:
        raise UserError(f"--test_size must be between 0 and 1, got {args.test_size}")
    pieces, source = load_pieces(args)
    quadrants = np.asarray([p.emotion for p in pieces])
    unknown = int(np.sum(~np.isin(quadrants, QUADRANTS)))
    if unknown:
        raise UserError(f"{source}: {unknown} pieces have no quadrant 1..4 "
                        f"(MIDI names must start with Q1_..Q4_)")
    counts = np.bincount(quadrants, minlength=5)[1:]
    if counts.min() < 2:
        raise UserError(f"{source}: every quadrant needs at least 2 pieces, found {counts.tolist()}")
    names = [p.name for p in pieces]
    features = E.feature_matrix(pieces)
    train, test = E.held_out_split(quadrants, names, args.test_size, args.seed, by=args.split)
    evaluator = E.fit_evaluator(features[train], quadrants[train], c=args.C, seed=args.seed)
    report = E.accuracy_report(evaluator, features[test], quadrants[test])
    evaluator.info = {
        "source": source, "split": args.split, "test_size": args.test_size, "seed": args.seed,
        "C": args.C, "n_train": int(len(train)), "n_test": int(len(test)),
        "held_out": {h: {"accuracy": a, "chance": c} for h, (a, c) in report.items()},
        "command": "python " + " ".join([Path(sys.argv[0]).name] + list(argv or sys.argv[1:])),
    }
    path = evaluator.save(args.out)

    print(f"{len(pieces)} pieces from {source} (per quadrant {counts.tolist()}); "
          f"held out {len(test)} by {args.split} (seed {args.seed})")
    print("| head | held-out accuracy | majority-class rate |")
    print("|---|---|---|")
    for head, (accuracy, chance) in report.items():
        print(f"| {head} | {accuracy:.3f} | {chance:.3f} |")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
