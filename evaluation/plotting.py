"""Figures: piano rolls, per-quadrant violin plots, loss curves, t-SNE panels.

Every function writes one PNG (creating its folder) and returns the path. matplotlib
runs with the non-interactive Agg backend so this works on headless machines.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from evaluation import metrics as M  # noqa: E402
from music.elements import QUADRANT_NAMES, QUADRANT_PAIRS, QUADRANTS  # noqa: E402
from music.chords import CHORD_QUALITIES  # noqa: E402
from music.errors import UserError  # noqa: E402
from music.midi_io import TICKS_PER_BAR, TICKS_PER_BEAT  # noqa: E402
from music.piece import piece_from_midi  # noqa: E402

QUADRANT_COLORS = {1: "#d62728", 2: "#ff7f0e", 3: "#1f77b4", 4: "#2ca02c"}
QUADRANT_LABELS = {1: "Q1 (V+ A+)", 2: "Q2 (V- A+)", 3: "Q3 (V- A-)", 4: "Q4 (V+ A-)"}
# The six quadrant pairs of the paper's t-SNE figure: Q1-Q2 and Q3-Q4 differ in valence,
# Q1-Q4 and Q2-Q3 in arousal, Q1-Q3 and Q2-Q4 in both.
TSNE_PAIRS = QUADRANT_PAIRS
LOSS_COLUMNS = ("loss", "recon", "vq", "reg")


def _save(fig, path) -> Path:
    """Write the figure; a figure laid out by its own engine (constrained) is saved as laid
    out, others are cropped to their content (which draws them twice)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches=None if fig.get_layout_engine() is not None else "tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ piano roll

def _note_rectangles(pitches, starts, durations, colors, height=0.8) -> PolyCollection:
    """One rectangle per note, drawn as one collection: a bar artist per note draws much more
    slowly (bench/bench_figures.py)."""
    x0, x1 = starts, starts + durations
    y0, y1 = pitches - height / 2, pitches + height / 2
    corners = np.stack([np.stack(xy, axis=1) for xy in ((x0, y0), (x0, y1), (x1, y1), (x1, y0))], axis=1)
    return PolyCollection(corners, facecolors=colors, edgecolors="black", linewidths=0.2)


def plot_piano_roll(piece, path, title: str | None = None) -> Path:
    """Piano roll of a piece: one bar per note (shade = velocity), with bar lines.

    piece: a `metrics.Piece`, a MIDI path, a miditoolkit MidiFile, or a note array
    [N, 3|4] (pitch, start, end[, velocity]) at 480 ticks per beat.
    """
    if isinstance(piece, M.Piece):
        notes, name = piece.notes, piece.name
    elif isinstance(piece, (str, Path)) or hasattr(piece, "instruments"):
        loaded = piece_from_midi(piece)
        notes, name = loaded.notes, loaded.name
    else:
        notes, name = M.as_note_array(piece), ""
    n_bars = int(notes[:, 2].max() // TICKS_PER_BAR) + 1 if len(notes) else 1
    fig, ax = plt.subplots(figsize=(min(4 + 1.2 * n_bars, 30), 4.5))
    if len(notes):
        beats = TICKS_PER_BEAT
        starts, durations = notes[:, 1] / beats, np.maximum(notes[:, 2] - notes[:, 1], 1) / beats
        velocity = np.clip(notes[:, 3], 1, 127) / 127.0
        colors = plt.cm.viridis(0.15 + 0.85 * velocity)
        ax.add_collection(_note_rectangles(notes[:, 0], starts, durations, colors))
        low, high = notes[:, 0].min(), notes[:, 0].max()
        ax.set_ylim(low - 2, high + 2)
        sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, 127))
        fig.colorbar(sm, ax=ax, pad=0.01, label="velocity")
    else:
        ax.text(0.5, 0.5, "no notes", transform=ax.transAxes, ha="center", va="center")
    for bar in range(n_bars + 1):
        ax.axvline(bar * 4, color="grey", linewidth=0.6, linestyle="--", zorder=0)
    ax.set_xlim(0, n_bars * 4)
    ax.set_xlabel("time (beats; dashed lines = bars)")
    ax.set_ylabel("pitch (MIDI)")
    ax.set_title(title or name or "piano roll")
    return _save(fig, path)


# ----------------------------------------------------------------------- violin plots

def plot_element_violins(groups: dict[str, dict[int, dict[str, np.ndarray]]], path,
                         elements=M.DISTRIBUTION_ELEMENTS, title: str = "") -> Path:
    """Violin plots of element values per quadrant, one panel per element.

    groups: {source label (e.g. "generated", "data"): {quadrant: {element: values}}}.
    Sources are drawn side by side inside each quadrant, each in its own colour.
    """
    sources = list(groups)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    n = len(elements)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    width = 0.8 / max(len(sources), 1)
    for ax, element in zip(axes.flat, elements):
        for s, source in enumerate(sources):
            positions, data = [], []
            for q in QUADRANTS:
                values = np.asarray(groups[source].get(q, {}).get(element, []), dtype=float)
                values = values[np.isfinite(values)]
                if len(values) == 0:
                    continue
                if np.ptp(values) == 0:  # a violin needs spread; jitter a constant imperceptibly
                    values = values + np.linspace(-1e-6, 1e-6, len(values))
                positions.append(q + (s - (len(sources) - 1) / 2) * width)
                data.append(values)
            if not data:
                continue
            parts = ax.violinplot(data, positions=positions, widths=width * 0.95,
                                  showmedians=True, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(palette[s % len(palette)])
                body.set_edgecolor("black")
                body.set_alpha(0.7)
            parts["cmedians"].set_color("black")
            ax.plot([], [], color=palette[s % len(palette)], linewidth=6, label=source)
        low, high = ax.get_ylim()
        if element != "chord" and high - low < 1:  # all values equal (e.g. a constant tempo)
            ax.set_ylim((low + high) / 2 - 5, (low + high) / 2 + 5)
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xticks(range(1, len(QUADRANTS) + 1), QUADRANT_NAMES)
        ax.set_xlabel("emotion quadrant")
        ax.set_ylabel(M.DISTRIBUTION_LABELS.get(element, element))
        ax.set_title(M.DISTRIBUTION_LABELS.get(element, element))
        if element == "chord":
            ax.set_yticks(range(len(CHORD_QUALITIES)), CHORD_QUALITIES)
        if len(sources) > 1:
            ax.legend(fontsize=8, loc="upper right")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------ loss curves

def read_training_log(path) -> dict[str, dict[str, tuple[list, list]]]:
    """A training CSV log as {split: {column: (epochs, values)}}.

    The log has a header row with at least `epoch` and `split`; every other column whose
    values parse as numbers is kept (empty cells and non-numeric columns are skipped).
    """

    path = Path(path)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if "epoch" not in fields:
                raise UserError(f"{path}: training log has no 'epoch' column (header: {fields})")
            series: dict[str, dict[str, tuple[list, list]]] = {}
            for row in reader:
                try:
                    epoch = float(row["epoch"])
                except (TypeError, ValueError):
                    continue
                split = (row.get("split") or "train").strip() or "train"
                for column, text in row.items():
                    if column in ("epoch", "split") or column is None:
                        continue
                    try:
                        value = float(text)
                    except (TypeError, ValueError):
                        continue
                    epochs, values = series.setdefault(split, {}).setdefault(column, ([], []))
                    epochs.append(epoch)
                    values.append(value)
    except OSError as exc:
        raise UserError(f"{path}: cannot read training log ({exc.strerror})") from None
    return series


def plot_loss_curves(log_path, path, title: str | None = None) -> Path:
    """One panel per numeric column of a training CSV log, a line per split, vs epoch."""
    series = read_training_log(log_path)
    columns = []
    for split_series in series.values():
        columns += [c for c in split_series if c not in columns]
    if not columns:
        raise UserError(f"{log_path}: training log has no numeric rows to plot")
    # The headline losses first, then the rest in log order.
    columns = [c for c in LOSS_COLUMNS if c in columns] + [c for c in columns if c not in LOSS_COLUMNS]
    cols = min(4 if len(columns) > 9 else 3, len(columns))
    rows = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False,
                             layout="constrained")
    for ax, column in zip(axes.flat, columns):
        for split, split_series in series.items():
            if column in split_series:
                epochs, values = split_series[column]
                ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None,
                        markersize=3, label=split)
        ax.set_title(column)
        ax.set_xlabel("epoch")
        ax.set_ylabel(column)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle(title or f"training log {Path(log_path).name}")
    return _save(fig, path)


# ---------------------------------------------------------------------------- t-SNE

def plot_tsne_pairs(points, labels, title: str, path, pairs=TSNE_PAIRS) -> Path:
    """Six scatter panels of 2-D points, one per quadrant pair, coloured by quadrant.

    points: [N, 2]; labels: [N] quadrants 1..4. A panel whose quadrants are absent says so.
    """
    points = np.asarray(points, dtype=float)
    labels = np.asarray(labels).astype(int)
    fig, axes = plt.subplots(2, 3, figsize=(13, 8), squeeze=False, layout="constrained")
    for ax, (a, b) in zip(axes.flat, pairs):
        for q in (a, b):
            chosen = labels == q
            ax.scatter(points[chosen, 0], points[chosen, 1], s=10, alpha=0.7,
                       color=QUADRANT_COLORS.get(q, "black"),
                       label=f"{QUADRANT_LABELS.get(q, q)} (n={int(chosen.sum())})")
        if not ((labels == a).any() or (labels == b).any()):
            ax.text(0.5, 0.5, "no points", transform=ax.transAxes, ha="center")
        ax.set_title(f"Q{a} vs Q{b}")
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])       # t-SNE coordinates have no unit (and ticks are slow to lay out)
        ax.set_yticks([])
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
