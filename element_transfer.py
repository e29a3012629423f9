"""Step 6: element transfer between emotions with a trained MusER VQ-VAE.

Encodes pieces of a source quadrant A and a target quadrant B, replaces the latent
slices of the chosen elements of each A piece with those of a B piece, decodes with an
emotion tag (B by default), and writes the originals, A's plain reconstruction, the
result and a control (A's own latent decoded with the same tag as the result) as MIDI with
piano rolls. Reports how the element statistics, the metrics and, with --evaluator, the
predicted emotion moved, and per element how far the transferred pieces moved from A towards
B (0 = like A, 1 = like B) next to the control's move, which is the tag's alone.

    python element_transfer.py --VQ_VAE MusER_TRANS_CA_GE_emopia \
        --data_path data/co-representation/emopia_data.npz --source Q4 --target Q1 --elements velocity
    python element_transfer.py --VQ_VAE MusER_TRANS_CA_GE_emopia --demo   # the paper's six swaps

Pairs: --pairs first takes the first N pieces of each quadrant in data order and pairs
them in that order, as the authors do (N = 20; the default with --demo; a quadrant with
fewer pieces starts again from its first); --pairs random draws N of each with --seed
(the default for a single transfer).
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluation import evaluator as E
from evaluation import metrics as M
from evaluation.audio import render_all
from evaluation.pages import describe, pair_midis, write_transfer_page
from run.checkpoint import load_muser, model_vocabulary
from run.cli import add_audio_args, add_common_args, resolve_device, run_main
from run.threads import adapt_threads
from music.chords import CHORD_QUALITIES
from music.cp import words_to_midi
from music.atomic import write_text
from music.data import load_class_indices, load_cp_dataset
from music.errors import UserError
from music.midi_io import TICKS_PER_BEAT
from music.piece import piece_from_midi, piece_from_words
from music.piece_io import dataset_words
from evaluation.plotting import plot_piano_roll
from models.sampling import SamplingParams
from evaluation.probe import piece_statistics
from evaluation.transfer import (PAIR_MODES, PAPER_TRANSFERS, decode_transfer, emotion_shift,
                                 moved_fraction, quadrant_rows, transfer_pairs)
from music.elements import ELEMENTS, element_index, parse_quadrant, per_element

DEMO = PAPER_TRANSFERS
ROLES = ("A original", "A reconstructed", "transferred", "B original")
# Written and listened to: ROLES, then the control.
WRITTEN = ROLES + ("control",)
# Rows of the report table, and the decode_transfer role behind each decoded one.
TABLE = ("A original", "A reconstructed", "control", "transferred", "B reconstructed", "B original")
DECODED = {"A reconstructed": "A", "B reconstructed": "B", "transferred": "transferred",
           "control": "control"}


def quadrant(text) -> int:
    q = parse_quadrant(text)
    if q is None:
        raise argparse.ArgumentTypeError(f"expected a quadrant 1..4 or Q1..Q4, got {text!r}")
    return q


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--VQ_VAE", default="MusER_TRANS_CA_GE_emopia",
                   help="saved_models/NAME/best.pt, a run folder, or a .pt file")
    p.add_argument("--data_path", default="data/co-representation/emopia_data.npz")
    p.add_argument("--dictionary", default=None, help="dictionary.pkl (default: beside --data_path)")
    p.add_argument("--source_emotion", "--source", dest="source", type=quadrant, default=None,
                   help="quadrant A whose pieces are changed (4 or Q4)")
    p.add_argument("--target_emotion", "--target", dest="target", type=quadrant, default=None,
                   help="quadrant B whose element slices are taken (1 or Q1)")
    p.add_argument("--elements", nargs="+", default=None,
                   help=f"elements to take from B: {', '.join(ELEMENTS)}")
    p.add_argument("--emotion_tag", type=quadrant, default=None,
                   help="emotion of the decoder's first word (default: the target quadrant)")
    p.add_argument("--demo", action="store_true",
                   help="run the paper's six transfers (velocity, tempo Q4->Q1; pitch, "
                        "pitch+duration+velocity Q3->Q1; duration Q3->Q2; chord Q4->Q2)")
    p.add_argument("--n_pieces", type=int, default=None,
                   help="pairs (A, B) per transfer (default: 20 with --demo, as the authors; else 4)")
    p.add_argument("--pairs", choices=PAIR_MODES, default=None,
                   help="first: the first n_pieces of each quadrant in data order, paired in order "
                        "(the authors'; default with --demo); random: drawn with --seed (default otherwise)")
    p.add_argument("--class_index", default=None,
                   help="{name}_idx.npz (cls_1_idx .. cls_4_idx) giving each quadrant's rows in order "
                        "(default: the rows of each quadrant in data order, what prepare_data.py writes)")
    p.add_argument("--max_steps", type=int, default=None, help="words decoded per piece")
    p.add_argument("--evaluator", default=None, help="emotion evaluator from train_evaluator.py")
    p.add_argument("--out_dir", default="generate_midi/element_transfer")
    add_audio_args(p)
    add_common_args(p)
    return p


@dataclass
class Transfer:
    elements: tuple
    source: int
    target: int
    tag: int

    @property
    def name(self) -> str:
        return f"{'_'.join(self.elements)}_Q{self.source}toQ{self.target}"


def experiments(args) -> list[Transfer]:
    if args.demo:
        return [Transfer(tuple(e), a, b, b if args.emotion_tag is None else args.emotion_tag)
                for e, a, b in DEMO]
    if args.source is None or args.target is None or not args.elements:
        raise UserError("give --source_emotion, --target_emotion and --elements (or --demo)")
    names = []
    for name in args.elements:
        try:
            names.append(ELEMENTS[element_index(name)])
        except ValueError as exc:
            raise UserError(f"--elements: {exc}") from None
    tag = args.target if args.emotion_tag is None else args.emotion_tag
    return [Transfer(tuple(names), args.source, args.target, tag)]


def element_summary(piece: M.Piece) -> dict[str, float]:
    """A few numbers per piece that show each element moving (NaN when undefined)."""
    values = M.element_values(piece)
    qualities = [CHORD_QUALITIES[int(i)] for i in values["chord"]]

    def mean(v):
        return float(np.mean(v)) if len(v) else float("nan")

    notes = piece.notes
    return {
        "notes/bar": len(notes) / piece.n_bars,
        "tempo": mean(values["tempo"]),
        "major chords": (sum(q in ("M", "M7", "7") for q in qualities) / len(qualities)
                         if qualities else float("nan")),
        "onsets/bar": len(np.unique(notes[:, 1])) / piece.n_bars,
        "pitch": mean(values["pitch"]),
        "duration (beats)": mean(values["duration"]) / TICKS_PER_BEAT,
        "velocity": mean(values["velocity"]),
        "pitch range": M.pitch_range(notes),
        "polyphony": M.polyphony(notes),
    }


# Which summary column shows which element (bold in the report when transferred).
ELEMENT_COLUMNS = per_element({"tempo": "tempo", "chord": "major chords", "bar-beat": "onsets/bar",
                   "type": "notes/bar", "pitch": "pitch", "duration": "duration (beats)",
                   "velocity": "velocity"})


def class_indices(dataset, path=None) -> dict:
    """{quadrant: rows in order}: from a {name}_idx.npz, or the dataset's rows of each quadrant."""
    if path is None:
        return quadrant_rows(dataset.emotion)
    indices = load_class_indices(path)
    for q, rows in indices.items():
        if len(rows) and (rows.min() < 0 or rows.max() >= len(dataset)):
            raise UserError(f"{path}: cls_{q}_idx has rows outside 0..{len(dataset) - 1} "
                            f"(an index file of another dataset?)")
    return indices


def run_transfer(model, dataset, word2event, transfer: Transfer, args, device, out_dir: Path,
                 evaluator, indices) -> str:
    try:
        rows_a, rows_b = transfer_pairs(indices, transfer.source, transfer.target, args.n_pieces,
                                        args.pairs, args.seed)
    except ValueError as exc:
        raise UserError(f"{args.class_index or dataset.npz_path}: {exc}") from None
    n = len(rows_a)
    length = model.config.max_len
    if dataset.y.shape[1] < length:
        raise UserError(f"{dataset.npz_path}: rows are {dataset.y.shape[1]} steps, the model needs {length}")
    y = torch.as_tensor(dataset.y[np.concatenate([rows_a, rows_b]), :length], dtype=torch.long)
    with torch.no_grad():
        latent, _ = model.encode(y.to(device))
    # B is decoded with the transferred piece's tag, so that B, the result and the control
    # differ from one another only in their latents.
    decoded = decode_transfer(model, latent[:n], latent[n:], transfer.elements, transfer.source,
                              transfer.tag, args.seed, SamplingParams(), args.max_steps,
                              on_step=adapt_threads)

    words = {"A original": [dataset_words(dataset, int(r)) for r in rows_a],
             "B original": [dataset_words(dataset, int(r)) for r in rows_b],
             **{row: decoded[role] for row, role in DECODED.items()}}
    stems = {"A original": "A_Q{a}", "A reconstructed": "A_Q{a}_reconstructed",
             "transferred": "transferred_tag_Q{t}", "B original": "B_Q{b}",
             "control": "control_tag_Q{t}"}
    out_dir.mkdir(parents=True, exist_ok=True)
    # B's reconstruction is measured in the report but not written.
    pieces = {"B reconstructed": [piece_from_words(w, word2event, close_empty_bars=True)
                                  for w in words["B reconstructed"]]}
    for role in WRITTEN:
        pieces[role] = []
        for i, piece_words in enumerate(words[role]):
            stem = f"pair{i}_" + stems[role].format(a=transfer.source, b=transfer.target,
                                                    t=transfer.tag)
            midi = words_to_midi(piece_words, word2event, path=out_dir / f"{stem}.mid",
                                 close_empty_bars=role in DECODED)
            piece = piece_from_midi(midi, name=f"{stem}.mid")
            plot_piano_roll(piece, out_dir / f"{stem}.png", title=f"{transfer.name}, pair {i}: {role}")
            pieces[role].append(piece)
    text = report(transfer, pieces, rows_a, rows_b, dataset, evaluator)
    return text + "\n\n" + moved_table(transfer, decoded, word2event)


def moved_table(transfer: Transfer, decoded: dict, word2event) -> str:
    """Per element, how far the transferred pieces and the controls moved from A towards B
    (evaluation.transfer.moved_fraction of evaluation.probe.piece_statistics)."""
    stats = {role: [piece_statistics(w, word2event) for w in words] for role, words in decoded.items()}
    header = ["moved A -> B"] + [f"**{e}**" if e in transfer.elements else e for e in ELEMENTS]
    rows = {"transferred": [], "control": []}
    for element in ELEMENTS:
        columns = {role: np.stack([s[element] for s in stats[role]]) for role in stats}
        # Standardised by the spread of the four reference decodes, which mixes columns of
        # different units (chord shares, pitch mean and range) on one scale.
        with warnings.catch_warnings():     # a column undefined in every piece: NaN spread
            warnings.simplefilter("ignore", RuntimeWarning)
            spread = np.nanstd(np.concatenate([columns[r] for r in ("A", "A again", "B", "B again")]),
                               axis=0)
        scale = np.where(np.isfinite(spread) & (spread > 1e-12), spread, 1.0)
        for role in rows:
            value = moved_fraction(columns["A"], columns["A again"], columns["B"], columns["B again"],
                                   columns[role], scale)
            rows[role].append("n/a" if np.isnan(value) else f"{value:.2f}")
    names = {"transferred": "transferred", "control": f"control (A's latent, tag Q{transfer.tag})"}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [f"| {names[role]} | " + " | ".join(cells) + " |" for role, cells in rows.items()]
    return ("Moved fraction per element (piece statistics of evaluation/probe.py; 0 = distributed "
            f"like A's reconstruction, 1 = like B's under tag Q{transfer.tag}; A and B each decoded "
            "twice so that sampling noise alone reads 0; n/a = B not told from A; "
            f"{len(decoded['A'])} pairs, noisy when few):"
            "\n\n" + "\n".join(lines))


def report(transfer: Transfer, pieces, rows_a, rows_b, dataset, evaluator) -> str:
    columns = list(ELEMENT_COLUMNS.values()) + ["pitch range", "polyphony"]
    moved = {ELEMENT_COLUMNS[e] for e in transfer.elements}
    header = ["role"] + [f"**{c}**" if c in moved else c for c in columns]
    if evaluator is not None:
        header += ["predicted Q1/Q2/Q3/Q4", f"arousal of Q{transfer.target}",
                   f"valence of Q{transfer.target}"]
    lines = [f"## {', '.join(transfer.elements)}: Q{transfer.source} -> Q{transfer.target} "
             f"(decoded with emotion tag Q{transfer.tag})", "",
             f"A = {', '.join(str(dataset.names[r]) for r in rows_a)}; "
             f"B = {', '.join(str(dataset.names[r]) for r in rows_b)}. "
             f"Means over {len(rows_a)} pairs; bold = transferred element.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for role in TABLE:
        summaries = [element_summary(p) for p in pieces[role]]
        cells = []
        for column in columns:
            values = np.array([s[column] for s in summaries], dtype=float)
            values = values[np.isfinite(values)]
            cells.append(f"{values.mean():.2f}" if len(values) else "n/a")
        if evaluator is not None:
            target = np.full(len(pieces[role]), transfer.target)
            match = E.emotion_match(evaluator, E.feature_matrix(pieces[role]), target)["all"]
            cells += ["/".join(map(str, match["predicted"])), f"{match['arousal']:.2f}",
                      f"{match['valence']:.2f}"]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    if evaluator is not None:
        predicted = {role: evaluator.predict(pieces[role])["quadrant"] for role in ("transferred", "control")}
        lines += ["", f"Emotion shift: share of transferred pieces predicted Q{transfer.target} minus "
                      f"the control's (same tag Q{transfer.tag}, A's own latent): "
                      f"{emotion_shift(predicted['transferred'], predicted['control'], transfer.target):+.2f}"]
    return "\n".join(lines)


def with_controls(pairs, transfer: Transfer) -> list[list[Path]]:
    """pages.pair_midis' four files per pair, and the pair's control file when written."""
    out = []
    for pair in pairs:
        number = pair[0].name.split("_", 1)[0]
        control = pair[0].parent / f"{number}_control_tag_Q{transfer.tag}.mid"
        out.append(pair + [control] if control.is_file() else pair)
    return out


def resolve_pair_defaults(args) -> None:
    """--demo follows the authors: the first 20 pieces of each quadrant; otherwise 4 random pairs."""
    if args.n_pieces is None:
        args.n_pieces = 20 if args.demo else 4
    if args.pairs is None:
        args.pairs = "first" if args.demo else "random"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    resolve_pair_defaults(args)
    if args.n_pieces <= 0:
        raise UserError(f"--n_pieces must be positive, got {args.n_pieces}")
    plan = experiments(args)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, checkpoint, ckpt_path = load_muser(args.VQ_VAE)
    model = model.to(device).eval()
    dataset = load_cp_dataset(args.data_path, args.dictionary, **model_vocabulary(checkpoint))
    word2event = dataset.word2event
    evaluator = E.EmotionEvaluator.load(args.evaluator) if args.evaluator else None
    indices = class_indices(dataset, args.class_index)

    out_root = Path(args.out_dir)
    sections = [f"# Element transfer with {ckpt_path}", "",
                "Each A piece keeps its latent except the transferred elements' slices, "
                "which come from its paired B piece. 'A reconstructed' decodes A's own latent "
                "with A's emotion tag, 'B reconstructed' B's with the transferred piece's tag, and "
                "'control' A's own latent with that tag: what the tag does alone. Compare "
                "'transferred' with the control (same tag, all sampled) for what the swapped "
                "slices did, and with B for the direction of the move.", "",
                ("Pairs: the first pieces of each quadrant in data order, paired in order (the authors')."
                 if args.pairs == "first" else f"Pairs: drawn at random (seed {args.seed}).")]
    for transfer in plan:
        print(f"transferring {'+'.join(transfer.elements)} Q{transfer.source} -> Q{transfer.target} ...")
        text = run_transfer(model, dataset, word2event, transfer, args, device,
                            out_root / transfer.name, evaluator, indices)
        print(text + "\n")
        sections += ["", text, "", f"MIDI and piano rolls: {out_root / transfer.name}/"]
    report_path = out_root / "transfer.md"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(report_path, "\n".join(sections) + "\n")
    print(f"wrote {report_path}")
    pairs = {t.name: with_controls(pair_midis(out_root / t.name)[:args.n_pieces], t) for t in plan}
    audio = render_all([m for ps in pairs.values() for pair in ps for m in pair], args.soundfont,
                       enabled=args.audio)
    listen = {name: [describe(pair, titles=[f"{role}: {m.stem}" for role, m in zip(WRITTEN, pair)],
                              audio=audio, evaluator=evaluator) for pair in ps]
              for name, ps in pairs.items()}
    print(f"listening page: {write_transfer_page(out_root, report_path, listen)}")
    return 0


if __name__ == "__main__":
    run_main(main)
