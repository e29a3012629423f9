"""REPORT.md of a reproduction study, from the files its stages wrote (see run/study.py)."""
from __future__ import annotations

import csv
import math
import subprocess
from pathlib import Path

import numpy as np

from music.atomic import atomic_write
from music.elements import ELEMENTS, N_ELEMENTS, QUADRANT_PAIRS, QUADRANTS
from evaluation.latent_space import pair_name
from evaluation.metrics import SONG_METRICS
from evaluation.pages import write_study_page
from evaluation.probe import format_matrix
from run.checkpoint import load_checkpoint
from run.study import ROOT, read_json

PAIRS = tuple(pair_name(pair) for pair in QUADRANT_PAIRS)


def _f(value, digits=2) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def read_history(csv_path: Path) -> list[dict]:
    if not csv_path.exists():
        return []
    with open(csv_path) as handle:
        return [r for r in csv.DictReader(handle) if r.get("split", "train") == "train"]


def codes_in_use(row: dict, codebook_size: int) -> float:
    if row.get("codes_used") not in (None, ""):
        return float(row["codes_used"])
    return float(row["code_usage"]) * codebook_size


def plot_training(histories: dict[str, list[dict]], sizes: dict[str, int], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("recon", "reconstruction loss"), ("reg", "regularisation loss"),
              ("codes", "codes in use (of the codebook)"), ("acc_mean", "mean element accuracy"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for name, rows in histories.items():
            if not rows:
                continue
            epochs = [int(r["epoch"]) for r in rows]
            values = [codes_in_use(r, sizes[name]) if key == "codes" else float(r[key]) for r in rows]
            ax.plot(epochs, values, marker=".", label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_probes(probes: dict[str, dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(probes)
    fig, axes = plt.subplots(2, len(names), figsize=(4.6 * len(names), 8.4), squeeze=False)
    for col, name in enumerate(names):
        for row, (key, label) in enumerate((("piece_r2", "per piece, held-out R²"),
                                            ("step_skill", "per step, held-out skill"))):
            ax = axes[row, col]
            m = np.asarray(probes[name][key], dtype=float)
            ax.imshow(np.nan_to_num(m, nan=0.0), vmin=0, vmax=1, cmap="viridis")
            for i in range(N_ELEMENTS):
                for j in range(N_ELEMENTS):
                    ax.text(j, i, _f(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if not np.isfinite(m[i, j]) or m[i, j] < 0.5 else "black")
            ax.set_xticks(range(N_ELEMENTS), ELEMENTS, rotation=60, fontsize=7)
            ax.set_yticks(range(N_ELEMENTS), ELEMENTS, fontsize=7)
            ax.set_title(f"{name}\n{label}", fontsize=9)
            if col == 0:
                ax.set_ylabel("latent slice")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _silhouettes(out: Path, name: str) -> dict[tuple, dict]:
    """{(element, "tsne" | "latent"): {pair: value}} from VQ_explore's silhouette.csv."""
    path = out / "figures" / name / "silhouette.csv"
    if not path.exists():
        return {}
    table = {}
    with open(path) as handle:
        for r in csv.DictReader(handle):
            table[(r["element"], "tsne")] = {p: r[p] for p in PAIRS}
            table[(r["element"], "latent")] = {p: r[f"latent {p}"] for p in PAIRS}
    return table


def write_report(ctx, specs, argv_line: str) -> Path:
    out = Path(ctx.out)
    names = [s.name for s in specs]
    data = read_json(out / "measures" / "data.json")
    lines = [f"# MusER reproduction study: preset `{ctx.preset_name}`", "",
             f"Command: `{argv_line}`  ", f"Commit: {_commit()}  ",
             f"Data: `{ctx.data_path.name}`, "
             + ", ".join(f"{q} {n}" for q, n in data["data_counts"].items())
             + f" pieces; seed {ctx.seed} for every stage.", ""]

    # -- configuration and wall time
    checkpoints = {}
    for name in names:
        path = out / "models" / name / "best.pt"
        checkpoints[name] = load_checkpoint(path, "muser", "VQ-VAE")
    config = checkpoints[names[0]]["config"]
    shown = ("max_len", "enc_d_model", "enc_layers", "dec_d_model", "dec_layers", "sub_layers", "dr_layers",
             "latent_dim", "codebook_size", "reg_weight", "ema_decay", "dead_code_threshold")
    p = ctx.preset
    lines += ["## Configuration", "",
              f"VQ-VAE: {', '.join(f'{k} {config[k]}' for k in shown if k in config)}; "
              f"{p.epochs} epochs, batch {p.batch_size}, lr {p.lr}. Prior: {p.prior_epochs} epochs, lr {p.prior_lr}. "
              f"{p.n_per_quadrant} generated pieces per quadrant; {p.pairs} pairs per transfer "
              f"({ctx.pair_choice} of each quadrant). The baseline differs from MusER only by `--reg_weight 0`.",
              "", "Wall time per stage (this machine, as run):", ""]
    stage_rows = []
    for marker in sorted((out / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
        info = read_json(marker)
        stage_rows.append((marker.stem, f"{info['seconds'] / 60:.1f}", info["finished"]))
    lines += _table(("stage", "minutes", "finished"), stage_rows)
    total = sum(read_json(m)["seconds"] for m in (out / "stages").glob("*.json")) / 60
    lines += ["", f"Sum of stage times: {total:.1f} min (stages of different models ran side by side).", ""]

    # -- training curves and codebook usage
    histories = {n: read_history(out / "models" / n / "metrics.csv") for n in names}
    sizes = {n: int(checkpoints[n]["config"]["codebook_size"]) for n in names}
    plot_training(histories, sizes, out / "training.png")
    longest = max((len(h) for h in histories.values()), default=0)
    usage_rows = []
    for e in range(longest):
        usage_rows.append([e + 1] + [f"{codes_in_use(histories[n][e], sizes[n]):.0f}" if e < len(histories[n])
                                     else "" for n in names])
    lines += ["## Training and codebook usage", "", "![training curves](training.png)", "",
              f"Codes in use per epoch (of {sizes[names[0]]}; counted over the epoch's training batches):", ""]
    lines += _table(("epoch", *names), usage_rows)
    probes = {n: read_json(out / "measures" / f"probe_{n}.json") for n in names}
    lines += ["", "Codes used by the whole data set afterwards (eval mode, valid steps): "
              + ", ".join(f"{n} {probes[n]['codes_used_by_data']}" for n in names) + ".", ""]

    # -- silhouettes
    lines += ["## Latent space: silhouettes (the authors' protocol)", "",
              "Per element slice and for the whole latent ('all'): the quantised latent averaged over all "
              "steps of the window (padding included), t-SNE to 2-D, silhouette of each quadrant pair on "
              "the 2-D points. Higher = the pair is better separated. Figures: `figures/MODEL/tsne_*.png`.", ""]
    rows = []
    for element in [*ELEMENTS, "all"]:
        for n in names:
            table = _silhouettes(out, n)
            row = table.get((element, "tsne"))
            if row:
                rows.append((element, n, *(_f(float(row[p_]), 3) for p_ in PAIRS)))
    lines += _table(("element", "model", *PAIRS), rows)
    lines += ["", "The same on the latent itself (no t-SNE), for reference:", ""]
    rows = []
    for element in [*ELEMENTS, "all"]:
        for n in names:
            row = _silhouettes(out, n).get((element, "latent"))
            if row:
                rows.append((element, n, *(_f(float(row[p_]), 3) for p_ in PAIRS)))
    lines += _table(("element", "model", *PAIRS), rows)

    # -- probe
    plot_probes(probes, out / "probe.png")
    lines += ["", "## Disentanglement probe", "",
              "Rows: latent slice; columns: element. Per piece: held-out R² (song-grouped 5-fold "
              "cross-validation, ridge) from the slice averaged over the piece to the element's statistics "
              "(tempo mean; chord-quality shares; onsets per bar; share of note words; pitch mean and range; "
              "duration mean; velocity mean and spread). Per step: held-out skill over the majority class "
              "of a logistic regression from the slice at a step to the element's token there (held-out "
              "songs; only steps where the element is in use). Diagonal share: per element, the own "
              "slice's share of the positive scores, averaged (1 = fully diagonal, 1/7 = 0.14 = spread evenly).",
              "", "![probe matrices](probe.png)", ""]
    lines += _table(("model", "diagonal share, per piece", "diagonal share, per step"),
                    [(n, _f(probes[n]["piece_share"]), _f(probes[n]["step_share"])) for n in names])
    for n in names:
        lines += ["", f"**{n}**, per piece (R²):", "", format_matrix(np.asarray(probes[n]["piece_r2"], float)),
                  "", f"**{n}**, per step (skill):", "", format_matrix(np.asarray(probes[n]["step_skill"], float))]

    # -- generation
    generated = {n: read_json(out / "measures" / f"generated_{n}.json") for n in names}
    lines += ["", "## Generation: generated against data", "",
              f"{p.n_per_quadrant} pieces per quadrant from each model's prior, decoded by its VQ-VAE; data = every "
              "piece cut to the models' window. Song-level metrics (muspy definitions), mean ± std:", ""]
    rows = []
    for metric in SONG_METRICS:
        for group in [*(f"Q{q}" for q in QUADRANTS), "all"]:
            cells = []
            for source in [data["data_metrics"], *(generated[n]["metrics"] for n in names)]:
                mean, std, _ = source.get(group, {}).get(metric, (math.nan, math.nan, 0))
                cells.append(f"{_f(mean)} ± {_f(std)}")
            rows.append((metric, group, *cells))
    lines += _table(("metric", "quadrant", "data", *names), rows)
    acc = data["held_out"]
    lines += ["", f"Emotion evaluator (evaluation/evaluator.py, fitted on the data's windows): held-out accuracy "
              f"on {data['n_test']} pieces of unseen songs: quadrant {_f(acc['quadrant'][0])} "
              f"(majority {_f(acc['quadrant'][1])}), arousal {_f(acc['arousal'][0])}, "
              f"valence {_f(acc['valence'][0])}. How often a piece is classified as the quadrant it was asked "
              "for (data: its own label, held-out songs):", ""]
    rows = []
    for group in [*(f"Q{q}" for q in QUADRANTS), "all"]:
        rows.append((group, "0.25", _f(data["data_match"].get(group, {}).get("quadrant")),
                     *(_f(generated[n]["match"].get(group, {}).get("quadrant")) for n in names)))
    lines += _table(("asked", "chance", "data (held out)", *names), rows)
    lines += ["", "Predicted quadrants of the generated pieces (Q1/Q2/Q3/Q4 counts):", ""]
    rows = [(n, *("/".join(map(str, generated[n]["match"][f"Q{q}"]["predicted"])) for q in QUADRANTS))
            for n in names]
    lines += _table(("model", *(f"asked Q{q}" for q in QUADRANTS)), rows)

    # -- transfer
    transfers = {n: read_json(out / "measures" / f"transfer_{n}.json") for n in names}
    lines += ["", "## Element transfer", "",
              f"Each of the paper's six transfers over {p.pairs} pairs: A's latent with the named slices taken "
              "from B, decoded with B's emotion tag. Per element: how far its statistic moved from A's "
              "reconstruction towards B's reconstruction (0 = stayed, 1 = reached B; projection over all "
              "pairs of the standardised statistics); **bold** = transferred. Last columns: the evaluator's "
              "predicted quadrants (Q1/Q2/Q3/Q4 counts) of A reconstructed, transferred and B reconstructed.", ""]
    rows = []
    for n in names:
        for t in transfers[n]:
            label = f"{'+'.join(t['elements'])} Q{t['source']}→Q{t['target']}"
            cells = [f"**{_f(t['moved'][e])}**" if e in t["elements"] else _f(t["moved"][e]) for e in ELEMENTS]
            pred = t["predicted"]
            rows.append((label, n, *cells, "/".join(map(str, pred["A reconstructed"])),
                         "/".join(map(str, pred["transferred"])), "/".join(map(str, pred["B reconstructed"]))))
    lines += _table(("transfer", "model", *ELEMENTS, "A rec.", "transferred", "B rec."), rows)

    # -- verdict
    lines += ["", "## What holds at this scale", ""] + verdict(names, probes, generated, data, transfers, sizes,
                                                                histories)
    text = "\n".join(lines) + "\n"
    report = out / "REPORT.md"
    atomic_write(report, lambda h: h.write(text.encode()))
    write_study_page(out, report)
    return report


def verdict(names, probes, generated, data, transfers, sizes, histories) -> list[str]:
    """Mechanical checks of the paper's claims against this run's own tables."""
    muser, base = names[0], names[1]
    lines = []
    final = {n: codes_in_use(histories[n][-1], sizes[n]) if histories[n] else math.nan for n in names}
    for n in names:
        share = final[n] / sizes[n]
        lines.append(f"- Codebook: {n} ends with {final[n]:.0f} of {sizes[n]} codes in use "
                     f"({100 * share:.0f}%)" + ("; under 10%: collapsed." if share < 0.1 else "."))
    piece_m, piece_b = probes[muser]["piece_share"], probes[base]["piece_share"]
    step_m, step_b = probes[muser]["step_share"], probes[base]["step_share"]
    lines.append(f"- A latent disentangled by element: diagonal share per piece {_f(piece_m)} (MusER) against "
                 f"{_f(piece_b)} (baseline), per step {_f(step_m)} against {_f(step_b)}; evenly spread is 0.14. "
                 + ("MusER is more diagonal on both probes." if piece_m > piece_b and step_m > step_b else
                    "MusER is not more diagonal than the baseline on both probes: the claim is not shown here."))
    moved_own, moved_other = [], []
    for t in transfers[muser]:
        for e in ELEMENTS:
            v = t["moved"][e]
            if v is not None and math.isfinite(v):
                (moved_own if e in t["elements"] else moved_other).append(v)
    if moved_own:
        lines.append(f"- Element transfer moves the swapped element: mean moved fraction {_f(np.mean(moved_own))} "
                     f"for swapped elements against {_f(np.mean(moved_other))} for the others (MusER).")
    target_hits = []
    for t in transfers[muser]:
        q = t["target"] - 1
        before, after = t["predicted"]["A reconstructed"][q], t["predicted"]["transferred"][q]
        target_hits.append(after - before)
    lines.append(f"- Transfer moves emotion: classified as B's quadrant, transferred minus A reconstructed, "
                 f"summed over the six transfers: {int(np.sum(target_hits)):+d} pieces of "
                 f"{6 * transfers[muser][0]['pairs']} (MusER).")
    rate = {n: generated[n]["match"]["all"]["quadrant"] for n in names}
    lines.append(f"- Emotion-conditioned generation: generated pieces classified as the asked quadrant "
                 f"{_f(rate[muser])} (MusER), {_f(rate[base])} (baseline); chance 0.25, data "
                 f"{_f(data['data_match']['all']['quadrant'])}.")
    return lines
