"""Step 5: objective metrics of generated music next to the training data.

Song-level (pitch range, pitch classes, polyphony) and bar-level metrics per quadrant
and overall, mean ± std (definitions in evaluation/metrics.py); violin plots of the element
distributions (tempo, chord quality, beat position, pitch, duration, velocity) per
quadrant; with --evaluator, how often the generated pieces carry the emotion asked for.

    python compute_metrics.py --generated generate_midi/OUT --data_path data/co-representation/emopia_data.npz
    python compute_metrics.py --generated generate_midi/OUT_data.data --evaluator saved_models/emotion_evaluator.json

Writes OUT_DIR/metrics.md, metrics.csv (one row per source, quadrant and metric),
per_piece.csv, violins.png, piano_rolls/*.png and a listening page index.html (the tables,
and --listen pieces per quadrant of each source in pieces/, with audio); prints the Markdown. The emotion
evaluator comes from train_evaluator.py.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from evaluation import evaluator as E
from evaluation import metrics as M
from evaluation.audio import render_all
from evaluation.pages import describe, write_metrics_page
from music.atomic import write_csv, write_text
from run.cli import add_audio_args, run_main
from music.elements import QUADRANT_NAMES, QUADRANTS
from music.errors import UserError
from music.cp import words_to_midi
from music.piece_io import (dataset_words, load_dataset_pieces, load_generated, read_words_pickle,
                            words_pickle_word2event)
from evaluation.plotting import plot_element_violins, plot_piano_roll

GROUPS = ("Q1", "Q2", "Q3", "Q4", "all")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generated", default=None,
                   help="folder of emotion{q}_{i}.mid files, or the words pickle of generate.py")
    p.add_argument("--data_path", default=None, help="CP training npz for the data column")
    p.add_argument("--dictionary", default=None,
                   help="dictionary.pkl (default: beside --data_path; for a words pickle, the one it names)")
    p.add_argument("--evaluator", default=None,
                   help="emotion evaluator file from train_evaluator.py (adds the emotion table)")
    p.add_argument("--out_dir", default="metrics", help="output folder (default metrics/)")
    p.add_argument("--piano_rolls", type=int, default=1,
                   help="piano-roll PNGs of the first N generated pieces per quadrant (default 1)")
    p.add_argument("--listen", type=int, default=2,
                   help="pieces per quadrant and source on the listening page index.html (default 2)")
    add_audio_args(p)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def listening_midis(args, sources, dataset, out_dir: Path) -> dict[str, dict[int, list[Path]]]:
    """MIDI and piano roll of the first --listen pieces per quadrant and source, written
    under out_dir/pieces/ so that the page links only inside its folder."""
    words = None
    if args.generated and not Path(args.generated).is_dir():
        data = read_words_pickle(args.generated)
        words = (data["words"], words_pickle_word2event(args.generated, data, args.dictionary))
    out: dict[str, dict[int, list[Path]]] = {}
    for source, pieces in sources.items():
        for q in QUADRANTS:
            chosen = [i for i, p in enumerate(pieces) if p.emotion == q][:max(args.listen, 0)]
            for i in chosen:
                midi = out_dir / "pieces" / source / (Path(pieces[i].name).stem + ".mid")
                midi.parent.mkdir(parents=True, exist_ok=True)
                if source == "data":
                    words_to_midi(dataset_words(dataset, i), dataset.word2event, path=midi)
                elif words is not None:
                    words_to_midi(words[0][i], words[1], path=midi, close_empty_bars=True)
                else:
                    shutil.copyfile(Path(args.generated) / pieces[i].name, midi)
                plot_piano_roll(pieces[i], midi.with_suffix(".png"),
                                title=f"{source}, Q{q}: {pieces[i].name}")
                out.setdefault(source, {}).setdefault(q, []).append(midi)
    return out


def per_piece_rows(source: str, pieces) -> list[dict]:
    rows = []
    for piece in pieces:
        row = {"source": source, "name": piece.name, "quadrant": piece.emotion,
               "n_notes": len(piece.notes)}
        row.update(M.song_metrics(piece.notes))
        rows.append(row)
    return rows


def element_groups(pieces) -> dict[int, dict[str, np.ndarray]]:
    """{quadrant: {element: all values of that element in the quadrant's pieces}}."""
    out: dict[int, dict[str, list]] = {}
    for piece in pieces:
        values = M.element_values(piece)
        bucket = out.setdefault(piece.emotion, {e: [] for e in M.DISTRIBUTION_ELEMENTS})
        for element in M.DISTRIBUTION_ELEMENTS:
            bucket[element].append(values[element])
    return {q: {e: np.concatenate(v) if v else np.zeros(0) for e, v in d.items()}
            for q, d in out.items()}


def metrics_markdown(summaries: dict[str, dict]) -> str:
    sources = list(summaries)
    header = "| metric | quadrant | " + " | ".join(sources) + " |"
    lines = [header, "|" + "---|" * (2 + len(sources))]
    for metric in M.METRICS:
        for group in GROUPS:
            if not any(group in s for s in summaries.values()):
                continue
            cells = []
            for source in sources:
                mean, std, n = summaries[source].get(group, {}).get(metric, (float("nan"),) * 2 + (0,))
                cells.append(M.format_mean_std(mean, std))
            lines.append(f"| {M.METRIC_LABELS[metric]} | {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def emotion_markdown(matches: dict[str, dict]) -> str:
    lines = ["| source | asked | n | quadrant match | arousal match | valence match "
             "| predicted Q1/Q2/Q3/Q4 |", "|---|---|---|---|---|---|---|"]
    for source, match in matches.items():
        for group in GROUPS:
            if group not in match:
                continue
            m = match[group]
            lines.append(f"| {source} | {group} | {m['n']} | {m['quadrant']:.3f} | "
                         f"{m['arousal']:.3f} | {m['valence']:.3f} | "
                         f"{'/'.join(map(str, m['predicted']))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.generated and not args.data_path:
        raise UserError("give --generated (generated music) and/or --data_path (training data)")
    evaluator = E.EmotionEvaluator.load(args.evaluator) if args.evaluator else None

    sources: dict[str, list] = {}
    dataset = None
    if args.generated:
        generated = load_generated(args.generated, args.dictionary)
        if not any(p.emotion for p in generated):
            raise UserError(f"{args.generated}: no piece carries a quadrant "
                            f"(expected names like emotion1_0.mid)")
        sources["generated"] = generated
    if args.data_path:
        sources["data"], dataset = load_dataset_pieces(args.data_path, args.dictionary)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries, piece_rows = {}, []
    for source, pieces in sources.items():
        rows = per_piece_rows(source, pieces)
        piece_rows += rows
        summaries[source] = M.summarize(rows, [p.emotion for p in pieces])

    write_csv(out_dir / "metrics.csv", [
        {"source": source, "quadrant": group, "metric": metric, "mean": f"{mean:.6g}", "std": f"{std:.6g}", "n": n}
        for source, summary in summaries.items() for group, values in summary.items()
        for metric, (mean, std, n) in values.items()])
    write_csv(out_dir / "per_piece.csv", piece_rows)

    violins = plot_element_violins({s: element_groups(p) for s, p in sources.items()},
                                   out_dir / "violins.png",
                                   title="element distributions per quadrant")
    rolls = []
    for q in QUADRANTS:
        chosen = [p for p in sources.get("generated", []) if p.emotion == q][:max(args.piano_rolls, 0)]
        for piece in chosen:
            stem = Path(piece.name).stem or f"emotion{q}"
            rolls.append(plot_piano_roll(piece, out_dir / "piano_rolls" / f"{stem}.png",
                                         title=f"generated, asked Q{q}: {piece.name}"))
    counts = ", ".join(f"{s}: {len(p)} pieces ("
                       + "/".join(str(sum(x.emotion == q for x in p)) for q in QUADRANTS)
                       + f" in {'/'.join(QUADRANT_NAMES)}"
                       # Empty pieces give NaN metrics and leave the means: say how many.
                       + f"; {sum(len(x.notes) == 0 for x in p)} empty)"
                       for s, p in sources.items())
    text = ["# Objective metrics", "", counts, "",
            "Mean ± std over pieces (ddof 0); empty pieces and undefined values are left out.",
            "", metrics_markdown(summaries), "", f"Violin plots: {violins.name}"
            + (f"; piano rolls: piano_rolls/ ({len(rolls)})" if rolls else "")]
    if evaluator is not None:
        matches = {s: E.emotion_match(evaluator, E.feature_matrix(p), [x.emotion for x in p])
                   for s, p in sources.items()}
        held = evaluator.info.get("held_out", {})
        held_text = ", ".join(f"{h} {v['accuracy']:.3f}" for h, v in held.items())
        text += ["", "## Emotion evaluator", "",
                 f"Evaluator {args.evaluator} (held-out accuracy: {held_text or 'unknown'}). "
                 "Rate of pieces whose predicted quadrant / arousal / valence matches the "
                 "one asked for (for data: its label; data it was trained on included).", "",
                 emotion_markdown(matches)]
    markdown = "\n".join(text) + "\n"
    write_text(out_dir / "metrics.md", markdown)
    print(markdown)
    print(f"wrote {out_dir / 'metrics.md'}, {out_dir / 'metrics.csv'}, "
          f"{out_dir / 'per_piece.csv'}, {violins}")
    listen = listening_midis(args, sources, dataset, out_dir)
    audio = render_all([m for groups in listen.values() for ms in groups.values() for m in ms],
                       args.soundfont, enabled=args.audio)
    groups = {source: {q: describe(ms, asked=[q] * len(ms), evaluator=evaluator, audio=audio)
                       for q, ms in by_q.items()} for source, by_q in listen.items()}
    print(f"listening page: {write_metrics_page(out_dir, out_dir / 'metrics.md', groups, [violins])}")
    return 0


if __name__ == "__main__":
    run_main(main)
