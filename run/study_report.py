"""REPORT.md of a reproduction study, rebuilt from its committed measure files alone.

Every number printed here is computed from the JSON files under `measures/` and
`seeds/SEED/measures/` (see run/study.py COMMITTED), so `reproduce.py --report_only`
regenerates the same report from a clone. Intervals are 95% percentile intervals of a
two-level bootstrap: seeds resampled, then the units inside each seed (held-out songs, pairs
of pieces, generated pieces); with one seed they are intervals over units only and say
nothing about seed-to-seed variation. Measures with one value per seed (DCI) get a
t-interval over seeds and none with fewer than two. Verdicts follow evaluation/verdicts.py's
rules, written before the runs.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.latent_space import pair_name
from evaluation.metrics import SONG_METRICS
from evaluation.pages import write_study_page
from evaluation.probe import diagonal_share
from evaluation.verdicts import GUIDANCE_CLAIM, GUIDANCE_KEPT_METRICS, GUIDANCE_TARGETS, PRODUCT_BASELINE, \
    PRODUCT_MODEL, PRODUCT_RULES, SLICE_SIZE_ACCURACY_TOLERANCE, SLICE_SIZE_DCI_TOLERANCE, SLICE_SIZE_SEED, \
    SLICE_SIZES, STUDY_RULES, TRANSPOSE_KEPT_METRICS, TRANSPOSE_RULE, TRANSPOSE_SCALE, choose_slice_codebook_size, \
    judge, judge_guidance, judge_guidance_scale, judge_transpose, slice_sizes_within
from music.atomic import atomic_write
from music.elements import ELEMENTS, HIGH_AROUSAL, N_ELEMENTS, POSITIVE_VALENCE, QUADRANT_PAIRS, QUADRANTS
from run.study import read_json

PAIRS = tuple(pair_name(pair) for pair in QUADRANT_PAIRS)
DRAWS = 1000
PROBE_NOISE = 0.02          # probe columns whose best score is at most this are noise
MUSER, BASELINE = "MusER_TRANS_CA_GE", "VQVAE_TRANS_CA_GE"


# ----------------------------------------------------------------------------- formatting

def _f(value, digits=2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(point, low, high, digits=2) -> str:
    if low is None or not math.isfinite(float(low)):
        return _f(point, digits)
    return f"{_f(point, digits)} [{_f(low, digits)}, {_f(high, digits)}]"


def _ci_at(interval, j, digits=2) -> str:
    """Entry j of a (point, low, high) triple of arrays (low and high None without an interval)."""
    point, low, high = interval
    return _ci(point[j], None if low is None else low[j], None if high is None else high[j], digits)


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


# ----------------------------------------------------------------------------- the study's files

@dataclass
class StudyFiles:
    """What a report reads: the study-wide measures and, per seed, per model, its measures."""
    out: Path
    study: dict
    split: dict
    data: dict
    seeds: list[int]
    models: list[str]

    @classmethod
    def read(cls, out: Path) -> "StudyFiles":
        out = Path(out)
        study = read_json(out / "measures" / "study.json")
        seeds = sorted(int(p.name) for p in (out / "seeds").glob("*") if (p / "measures").is_dir()) \
            if (out / "seeds").is_dir() else []
        return cls(out, study, read_json(out / "measures" / "split.json"),
                   read_json(out / "measures" / "data.json"), seeds, list(study["models"]))

    def measure(self, seed: int, kind: str, model: str):
        path = self.out / "seeds" / str(seed) / "measures" / f"{kind}_{model}.json"
        return read_json(path) if path.exists() else None

    def per_seed(self, kind: str, model: str) -> list:
        """The measure of every seed that has it (seeds without it are left out)."""
        return [m for m in (self.measure(s, kind, model) for s in self.seeds) if m is not None]

    def seeds_with(self, kind: str, model: str) -> list[int]:
        return [s for s in self.seeds if self.measure(s, kind, model) is not None]

    def markers(self) -> list[tuple[str, dict]]:
        found = [(f"{p.stem}", read_json(p)) for p in sorted((self.out / "stages").glob("*.json"))]
        for seed in self.seeds:
            found += [(f"seed {seed}: {p.stem}", read_json(p))
                      for p in sorted((self.out / "seeds" / str(seed) / "stages").glob("*.json"))]
        return found


# ----------------------------------------------------------------------------- intervals

def _quiet(function):
    """NaN-aware means of all-NaN slices are NaN here, by design: no warning."""
    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return function(*args, **kwargs)
    return quiet


_nanmean = _quiet(np.nanmean)


# Resamples of one seed given to a statistic at once (bounds the memory of a batch).
BATCH = 256


@_quiet
def bootstrap(per_seed: list[dict], statistic, draws: int = DRAWS, seed: int = 0):
    """(point, low, high): the statistic's mean over seeds, and the 95% percentile interval of a
    two-level bootstrap (seeds, then units). per_seed: one dict of arrays per seed, all arrays
    of a dict sharing their first axis (the units).

    The statistic sees a batch of resamples at once: each array with a leading batch axis
    [B, units, ...], so that it reduces over axis 1 (or over the units' axis counted from the
    end), and it returns [B] or [B, ...]. The draws are those of resampling one at a time:
    per draw, the seeds, then each drawn seed's units."""
    per_seed = [{k: np.asarray(v) for k, v in d.items()} for d in per_seed]
    if not per_seed:
        return math.nan, None, None
    point = np.nanmean([statistic({k: v[None] for k, v in d.items()})[0] for d in per_seed], axis=0)
    rng = np.random.default_rng(seed)
    n_seeds = len(per_seed)
    units = [len(next(iter(d.values()))) for d in per_seed]
    rows = [[] for _ in per_seed]                        # each seed's resamples, in the order drawn
    slots = np.empty((draws, n_seeds, 2), dtype=np.int64)   # (seed, its resample) of each draw's slot
    for draw in range(draws):
        for slot, s in enumerate(rng.integers(0, n_seeds, n_seeds)):
            slots[draw, slot] = s, len(rows[s])
            rows[s].append(rng.integers(0, units[s], units[s]))
    offsets = np.cumsum([0] + [len(r) for r in rows])
    values = np.concatenate([_batched(statistic, d, r) for d, r in zip(per_seed, rows) if r])
    with np.errstate(all="ignore"):
        samples = np.nanmean(values[offsets[slots[..., 0]] + slots[..., 1]], axis=1)
        low, high = np.nanpercentile(np.asarray(samples, float), [2.5, 97.5], axis=0)
    return point, low, high


def _batched(statistic, d: dict, rows: list) -> np.ndarray:
    """The statistic of each resample of one seed (rows: the units' indices of each), BATCH at a time."""
    return np.concatenate([np.asarray(statistic({k: v[np.stack(rows[i:i + BATCH])] for k, v in d.items()}), float)
                           for i in range(0, len(rows), BATCH)])


def seed_interval(values) -> tuple:
    """(mean, low, high) over seeds: a t-interval; no interval with fewer than two seeds."""
    from scipy.special import stdtrit     # the t quantile, without scipy.stats's import time

    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if len(values) == 0:
        return math.nan, None, None
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    half = stdtrit(len(values) - 1, 0.975) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------------- sections

def split_section(files: StudyFiles) -> list[str]:
    s, counts = files.split, files.data["counts"]
    return ["## Data and held-out songs", "",
            f"Data: `{s['source']}` ({files.study.get('data_note', '')}). Before anything is trained, "
            f"{len(s['held_out_songs'])} songs ({s['share']:.0%} per quadrant, seed {s['seed']}) are held out: "
            f"{s['held_out_pieces']} pieces, against {s['train_pieces']} training pieces. No VQ-VAE, prior or "
            "evaluator sees them; every measure of the latent below is scored on them.", ""] + _table(
        ("pieces", *(f"Q{q}" for q in QUADRANTS)),
        [(side, *(counts[side][f"Q{q}"] for q in QUADRANTS)) for side in ("train", "held_out")]) + [""]


def _arousal(q):
    return np.isin(np.asarray(q), HIGH_AROUSAL)


def _valence(q):
    return np.isin(np.asarray(q), POSITIVE_VALENCE)


def _match_units(asked, predicted) -> dict:
    asked, predicted = np.asarray(asked), np.asarray(predicted)
    return {"quadrant": (asked == predicted).astype(float),
            "arousal": (_arousal(asked) == _arousal(predicted)).astype(float),
            "valence": (_valence(asked) == _valence(predicted)).astype(float)}


MATCHES = ("quadrant", "arousal", "valence")


def _metric_column(run: dict, metric: str) -> np.ndarray:
    return np.asarray([r[metric] for r in run["metrics"]], float)


def data_metric_means(files: StudyFiles) -> dict[str, float]:
    """The held-out data's mean of each song metric (SONG_METRICS order)."""
    return {m: float(np.nanmean([r[m] for r in files.data["held_out"]["metrics"]])) for m in SONG_METRICS}


def _major_share(asked, modes, q) -> tuple[float, int]:
    modes = np.asarray(modes)[np.asarray(asked) == q]
    keyed = modes[modes != "none"]
    return (float(np.mean(keyed == "major")) if len(keyed) else math.nan), int(len(keyed))


def data_section(files: StudyFiles) -> list[str]:
    held = files.data["held_out"]
    acc = files.data["accuracy"]
    units = _match_units(held["asked"], held["predicted"])
    lines = ["## Emotion evaluator and the data's own emotion", "",
             "The evaluator (evaluation/evaluator.py) is fitted on the training songs' windows. On the held-out "
             f"songs its accuracy is quadrant {_f(acc['quadrant'][0])} (majority {_f(acc['quadrant'][1])}), "
             f"arousal {_f(acc['arousal'][0])}, valence {_f(acc['valence'][0])}: the ceiling of every match "
             "rate below. Major-key share: Krumhansl-Schmuckler keys (evaluation/key.py) of the held-out "
             "pieces, among those with a key.", ""]
    rows = []
    for q in QUADRANTS:
        share, n = _major_share(held["asked"], held["mode"], q)
        pick = np.asarray(held["asked"]) == q
        rows.append((f"Q{q}", int(pick.sum()), _f(units["quadrant"][pick].mean()),
                     _f(units["arousal"][pick].mean()), _f(units["valence"][pick].mean()), f"{_f(share)} (n={n})"))
    lines += _table(("quadrant", "held-out pieces", "quadrant match", "arousal match", "valence match",
                     "major-key share"), rows)
    return lines + [""]


def _history_rows(history, split):
    return [r for r in history if r.get("split", "train") == split]


def _codebook_text(config: dict) -> str:
    """A model's codes: '512' for one joint codebook, '7 x 64' for one codebook per slice."""
    if config.get("quantizer") == "product":
        return f"{N_ELEMENTS} x {config['slice_codebook_size']}"
    return str(config.get("codebook_size", "n/a"))


def codebook_section(files: StudyFiles) -> list[str]:
    plot_training(files, files.out / "training.png")
    lines = ["## Training and codebook usage", "", "![training curves](training.png)", "",
             "Codebook headline: codes used by the validation pieces in eval mode at the end of each epoch, "
             "and their perplexity (mean over seeds). The count over an epoch's training batches, which "
             "the dead-code restart inflates (a re-seeded code counts even if it never wins again), is the "
             "secondary column.", ""]
    header = ["epoch"]
    columns = []
    for model in files.models:
        histories = [m["history"] for m in files.per_seed("training", model)]
        if not histories:
            continue
        header += [f"{model} eval codes", f"{model} eval perplexity", f"{model} training-batch codes"]
        columns.append(histories)
    longest = max((len(_history_rows(h, "train")) for hs in columns for h in hs), default=0)
    rows = []
    for epoch in range(1, longest + 1):
        row = [epoch]
        for histories in columns:
            def mean(split, key):
                values = [r[key] for h in histories for r in _history_rows(h, split)
                          if r.get("epoch") == epoch and isinstance(r.get(key), (int, float))]
                return float(np.mean(values)) if values else math.nan
            row += [_f(mean("val", "codes_used"), 0), _f(mean("val", "code_perplexity"), 0),
                    _f(mean("train", "codes_used"), 0)]
        rows.append(row)
    lines += _table(header, rows)
    lines += ["", "Codes the held-out songs use (eval mode) and their perplexity, mean over seeds (a model with one "
              "codebook per slice: its (slice, code) pairs, and their perplexity):", ""]
    rows = []
    for model in files.models:
        latents = files.per_seed("latent", model)
        if latents:
            rows.append((model, _codebook_text(latents[0]["config"]),
                         _f(np.mean([m["codebook"]["used_by_held_out"] for m in latents]), 0),
                         _f(np.mean([m["codebook"]["perplexity_held_out"] for m in latents]), 0)))
    return lines + _table(("model", "codebook", "codes used", "perplexity"), rows) + [""] \
        + slice_size_lines(files)


def slice_size_readings(files: StudyFiles) -> dict[int, dict]:
    """{size: {model, accuracy, dci, codes, perplexity}} of the product MusER models (the
    regulariser on) on SLICE_SIZE_SEED, for the rule that chooses the default size."""
    out = {}
    for model in files.models:
        latent = files.measure(SLICE_SIZE_SEED, "latent", model)
        config = (latent or {}).get("config", {})
        if config.get("quantizer") != "product" or not config.get("reg_weight", 0) > 0:
            continue
        accuracy = final_validation_accuracy(files, model).get(SLICE_SIZE_SEED, math.nan)
        out[config["slice_codebook_size"]] = {
            "model": model, "accuracy": accuracy, "dci": latent["dci"]["disentanglement"],
            "codes": latent["codebook"]["used_by_held_out"], "perplexity": latent["codebook"]["perplexity_held_out"]}
    return out


def slice_size_lines(files: StudyFiles) -> list[str]:
    """The codes-per-slice table and the size its rule (evaluation/verdicts.py) chooses."""
    readings = slice_size_readings(files)
    if not readings:
        return []
    pairs = {size: (r["accuracy"], r["dci"]) for size, r in readings.items()}
    chosen = choose_slice_codebook_size(pairs)
    missing = [str(size) for size in SLICE_SIZES if size not in readings]
    rows = [(size, r["model"], _f(r["accuracy"], 3), _f(r["dci"]), _f(r["codes"], 0), _f(r["perplexity"], 0))
            for size, r in sorted(readings.items())]
    rule = (f"Rule, fixed before the runs of the other sizes: the smallest of {', '.join(map(str, SLICE_SIZES))} "
            f"codes per slice whose validation reconstruction accuracy is within "
            f"{SLICE_SIZE_ACCURACY_TOLERANCE * 100:g} point of the best size's and whose DCI disentanglement "
            f"is within {SLICE_SIZE_DCI_TOLERANCE:g} of the best size's.")
    if chosen is not None:
        verdict = f"Chosen: **{chosen}** codes per slice."
    elif slice_sizes_within(pairs) == []:
        verdict = ("Chosen: **none**: no size is within both tolerances (the most accurate sizes are not "
                   "the most disentangled ones).")
    else:
        verdict = f"No size chosen yet: {', '.join(missing) or 'a size'} without readings on seed {SLICE_SIZE_SEED}."
    return [f"Codes per slice, product MusER on seed {SLICE_SIZE_SEED} (validation accuracy at the last epoch; "
            "DCI and codes on the held-out songs; codes counted as (slice, code) pairs):", ""] \
        + _table(("codes per slice", "model", "validation accuracy", "DCI disentanglement", "codes used",
                  "perplexity"), rows) + ["", rule + " " + verdict, ""]


def plot_training(files: StudyFiles, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("train", "recon", "reconstruction loss (train)"), ("train", "reg", "regularisation loss (train)"),
              ("val", "codes_used", "codes used, eval mode (validation)"),
              ("val", "code_perplexity", "code perplexity, eval mode"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (split, key, title) in zip(axes, panels):
        for i, model in enumerate(files.models):
            for j, (seed, m) in enumerate(zip(files.seeds_with("training", model), files.per_seed("training", model))):
                rows = [r for r in _history_rows(m["history"], split) if isinstance(r.get(key), (int, float))]
                ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker=".", color=f"C{i}",
                        alpha=0.8, label=model if j == 0 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def silhouette_section(files: StudyFiles) -> list[str]:
    lines = ["## Latent space: silhouettes (the authors' protocol, on held-out songs)", "",
             "Per element slice and for the whole latent ('all'): the quantised latent averaged over the "
             "window, t-SNE to 2-D, silhouette of each quadrant pair (mean over seeds). Higher = better "
             "separated. Figures of the first seed: `seeds/SEED/figures/MODEL/`.", ""]
    rows = []
    for element in [*ELEMENTS, "all"]:
        for model in files.models:
            tables = files.per_seed("silhouettes", model)
            if tables and element in tables[0]:
                rows.append((element, model, *(_f(np.mean([t[element]["tsne"][p] for t in tables]), 3)
                                               for p in PAIRS)))
    return lines + _table(("element", "model", *PAIRS), rows) + [""]


# -- the regulariser's own measure

def _ordering_units(measure: dict, name: str) -> dict | None:
    o = measure["orderings"].get(name)
    if o is None:
        return None
    return {"agree": np.moveaxis(np.asarray(o["agree"], float), -1, 0),     # [songs, S, E]
            "pairs": np.moveaxis(np.asarray(o["pairs"], float), -1, 0)}     # [songs, E]


def _ordering_matrix(agree, pairs):
    """Slice x element agreement of songs' agree [..., songs, S, E] and pairs [..., songs, E]."""
    total = pairs.sum(-2)
    with np.errstate(all="ignore"):
        return np.where(total[..., None, :] > 0, agree.sum(-3) / total[..., None, :], np.nan)


def _gap(matrix):
    """Per element of matrix [..., S, E]: its own slice, the best other slice, and the gap."""
    own = np.diagonal(matrix, axis1=-2, axis2=-1)
    others = np.where(np.eye(N_ELEMENTS, dtype=bool), np.nan, matrix)
    with np.errstate(all="ignore"):
        best = np.where(np.all(np.isnan(others), axis=-2), np.nan,
                        np.nanmax(np.nan_to_num(others, nan=-np.inf), -2))
    return own, best, own - best


def ordering_summary(files: StudyFiles, model: str, name: str):
    """Per element: own slice, best other slice, gap; each (point, low, high), or None."""
    units = [u for u in (_ordering_units(m, name) for m in files.per_seed("latent", model)) if u]
    if not units:
        return None
    def summary(d):
        matrix = _ordering_matrix(d["agree"], d["pairs"])
        return np.concatenate([*_gap(matrix), matrix.reshape(*matrix.shape[:-2], -1)], axis=-1)

    point, low, high = bootstrap(units, summary)       # one resampling for every part
    n = N_ELEMENTS
    out = {part: (point[i * n:(i + 1) * n], None if low is None else low[i * n:(i + 1) * n],
                  None if high is None else high[i * n:(i + 1) * n])
           for i, part in enumerate(("own", "best other", "gap"))}
    out["matrix"] = point[3 * n:].reshape(n, n)
    return out


def gap_difference(files: StudyFiles, name: str = "fitted_token", model: str = MUSER, other: str = BASELINE,
                   factor: float = 1.0):
    """Per element, `model`'s gap minus `factor` times `other`'s, songs paired (the same held-out songs)."""
    units = []
    for seed in files.seeds:
        m, b = (files.measure(seed, "latent", x) for x in (model, other))
        if m is None or b is None:
            continue
        um, ub = _ordering_units(m, name), _ordering_units(b, name)
        units.append({"ma": um["agree"], "mp": um["pairs"], "ba": ub["agree"], "bp": ub["pairs"]})
    return bootstrap(units, lambda d: _gap(_ordering_matrix(d["ma"], d["mp"]))[2]
                     - factor * _gap(_ordering_matrix(d["ba"], d["bp"]))[2])


READOUT_TEXT = {"dr_token": "MusER's own frozen DR readout, ordered by token index (what the regulariser optimises)",
                "dr_value": "MusER's own frozen DR readout, ordered by musical value",
                "fitted_token": "a linear readout per slice fitted on training songs with the regulariser's "
                                "pairwise loss, ordered by token index",
                "fitted_value": "the fitted linear readout, ordered by musical value"}


def latent_sections(files: StudyFiles) -> list[str]:
    lines = ["## The regulariser's own measure: slice x element ordering", "",
             "Pairs of held-out pieces at the same step (inside groups of 16, like a training batch), where the "
             "element is in use at both steps and its tokens differ (pitch, duration, velocity: Note words; "
             "chord, tempo: Metrical words other than Bar; bar-beat: Metrical words; type: every step). A pair "
             "agrees when the readout of the slice orders it as the tokens are ordered. Null (a readout that "
             "ignores the element): 0.5. Per element: its own slice, the best other slice, and the gap "
             "(own minus best other); intervals over seeds and held-out songs.", ""]
    for name, text in READOUT_TEXT.items():
        rows = []
        for model in files.models:
            summary = ordering_summary(files, model, name)
            if summary is None:
                continue
            for j, element in enumerate(ELEMENTS):
                cells = [_ci_at(summary[p], j) for p in ("own", "best other", "gap")]
                if all(c == "n/a" for c in cells):
                    continue
                rows.append((element, model, *cells))
        if rows:
            lines += [f"**{text}:**", ""] + _table(("element", "model", "own slice", "best other slice", "gap"),
                                                     rows) + [""]
    difference = gap_difference(files)
    lines += ["Gap difference, MusER minus baseline (fitted readout, token order), paired over held-out songs:", ""]
    lines += _table(("element", "difference"), [(e, _ci_at(difference, j)) for j, e in enumerate(ELEMENTS)]) \
        if np.ndim(difference[0]) else ["(no pair of models)"]
    lines += [""] + dci_lines(files) + [""] + probe_lines(files)
    return lines


def dci_values(files: StudyFiles, model: str, key: str) -> list[float]:
    return [m["dci"][key] for m in files.per_seed("latent", model)]


def dci_lines(files: StudyFiles) -> list[str]:
    lines = ["## Exclusivity: DCI from all seven slices at once", "",
             "One random forest per element predicts its token at held-out steps where it is in use from "
             "the whole 112-dim latent; impurity importances summed per slice give a slice x element matrix "
             "(evaluation/dci.py). Disentanglement: each slice matters for one element; completeness: each "
             "element is read from one slice. 1 = diagonal; a uniform-random 7 x 7 matrix scores about 0.09. "
             "Intervals over seeds (t), none with one seed.", ""]
    rows = []
    for model in files.models:
        for key in ("disentanglement", "completeness"):
            values = dci_values(files, model, key)
            if values:
                rows.append((model, key, " / ".join(_f(v) for v in values), _ci(*seed_interval(values))))
    return lines + _table(("model", "score", "per seed", "mean [interval]"), rows)


def probe_lines(files: StudyFiles) -> list[str]:
    lines = ["## Information a slice carries: linear probes with controls", "",
             "Rows: latent slice; columns: element; held-out songs, song-grouped cross-validation. Per piece: "
             "R² of ridge regression from the slice averaged over the window to the element's statistics "
             "(chord: major-like minus minor-like share). Word-composition control: R² from the piece's shares "
             "of Note, Bar and beat words alone (what any slice can score by knowing the word mix). Per step: "
             "skill over the majority class of a logistic regression from the slice to the element's token, "
             "where the element is in use (tempo and chord without Bar words); ceiling: the same from the true "
             f"tokens of element j. Diagonal share leaves out columns whose best score is at most {PROBE_NOISE}.",
             ""]
    for model in files.models:
        probes = [m["probe"] for m in files.per_seed("latent", model)]
        if not probes:
            continue
        piece = np.nanmean([np.asarray(p["piece_r2"], float) for p in probes], axis=0)
        step = np.nanmean([np.asarray(p["step_skill"], float) for p in probes], axis=0)
        composition = np.nanmean([np.asarray(p["composition_r2"], float) for p in probes], axis=0)
        lines += [f"**{model}**, per piece R² (mean over seeds); diagonal share "
                  f"{_f(diagonal_share(piece, noise=PROBE_NOISE))}:", "", *_matrix_lines(piece),
                  "", "word-composition control, R² per element: "
                  + ", ".join(f"{e} {_f(v)}" for e, v in zip(ELEMENTS, composition)), "",
                  f"**{model}**, per step skill; diagonal share {_f(diagonal_share(step, noise=PROBE_NOISE))}:", "",
                  *_matrix_lines(step), ""]
    ceilings = [np.asarray(m["probe"]["step_ceiling"], float) for m in files.per_seed("latent", files.models[0])]
    if ceilings:
        lines += ["Ceiling, per step: skill of element j's true tokens (rows) for element e (columns):", "",
                  *_matrix_lines(np.nanmean(ceilings, axis=0)), ""]
    return lines


def _matrix_lines(matrix) -> list[str]:
    return _table(("slice \\ element", *ELEMENTS),
                  [(ELEMENTS[k], *(f"**{_f(v)}**" if j == k else _f(v) for j, v in enumerate(matrix[k])))
                   for k in range(N_ELEMENTS)])


# -- generation

def generation_units(files: StudyFiles, model: str) -> list[dict]:
    return [{**_match_units(g["asked"], g["predicted"])} for g in files.per_seed("generation", model)]


def confusion_rows(files: StudyFiles, label: str, generated: list[dict]) -> list[tuple]:
    """Per asked quadrant, over the generation measures of several seeds: the predicted counts,
    the major-key share and the held-out data's."""
    asked = np.concatenate([g["asked"] for g in generated])
    predicted = np.concatenate([g["predicted"] for g in generated])
    modes = np.concatenate([g["mode"] for g in generated])
    rows = []
    for q in QUADRANTS:
        counts = [int(np.sum((asked == q) & (predicted == p))) for p in QUADRANTS]
        share, n = _major_share(asked, modes, q)
        data_share, _ = _major_share(files.data["held_out"]["asked"], files.data["held_out"]["mode"], q)
        rows.append((label, f"Q{q}", "/".join(map(str, counts)), f"{_f(share)} (n={n})", _f(data_share)))
    return rows


def generation_sections(files: StudyFiles) -> list[str]:
    lines = ["## Emotion-conditioned generation", "",
             f"{files.study['preset']['n_per_quadrant']} pieces per quadrant per seed from each model's prior, "
             "decoded by its VQ-VAE, classified by the evaluator. Match rates with intervals over seeds and "
             "pieces; chance: quadrant 0.25, arousal and valence 0.5; the held-out data's rates are the ceiling.", ""]
    held = _match_units(files.data["held_out"]["asked"], files.data["held_out"]["predicted"])
    rows = [("data (held-out songs)", *(_f(held[k].mean()) for k in ("quadrant", "arousal", "valence")))]
    for model in files.models:
        units = generation_units(files, model)
        if units:
            rows.append((model, *(_ci(*bootstrap(units, lambda d, k=k: d[k].mean(axis=1))) for k in
                                  ("quadrant", "arousal", "valence"))))
    lines += _table(("source", "quadrant match", "arousal match", "valence match"), rows)
    lines += ["", "Confusion (rows: asked quadrant; columns: predicted Q1/Q2/Q3/Q4; counts summed over seeds), "
              "and the major-key share of each asked quadrant against the held-out data's:", ""]
    rows = []
    for model in files.models:
        gens = files.per_seed("generation", model)
        if gens:
            rows += confusion_rows(files, model, gens)
    lines += _table(("model", "asked", "predicted Q1/Q2/Q3/Q4", "major-key share", "data"), rows)
    lines += ["", "Song-level metrics (muspy definitions), mean over pieces: held-out data against the generated "
              "pieces of each model (all seeds):", ""]
    rows = []
    data_means = data_metric_means(files)
    for metric in SONG_METRICS:
        cells = [_f(data_means[metric])]
        for model in files.models:
            gens = files.per_seed("generation", model)
            cells.append(_f(np.nanmean([r[metric] for g in gens for r in g["metrics"]])) if gens else "n/a")
        rows.append((metric, *cells))
    return lines + _table(("metric", "data", *files.models), rows) + [""] + decoded_lines(files)


def decoded_lines(files: StudyFiles) -> list[str]:
    """What each VQ-VAE's decoder keeps of the held-out pieces when it decodes their own latents:
    the ceiling of any prior, since a prior can at best sample latents like the data's."""
    rows = []
    for model in files.models:
        found = files.per_seed("decoded", model)
        if not found:
            continue
        units = [{**_match_units(d["asked"], d["predicted"]),
                  **{m: _metric_column(d, m) for m in SONG_METRICS}} for d in found]
        point, low, high = bootstrap(units, lambda d: np.stack([d[k].mean(axis=1) for k in MATCHES]
                                                               + [np.nanmean(d[m], axis=1) for m in SONG_METRICS],
                                                               axis=-1))
        shares = [_major_share(np.concatenate([d["asked"] for d in found]),
                               np.concatenate([d["mode"] for d in found]), q)[0] for q in QUADRANTS]
        rows.append((model, *(_ci(point[i], low[i], high[i]) for i in range(len(MATCHES) + len(SONG_METRICS))),
                     " / ".join(_f(x) for x in shares)))
    if not rows:
        return []
    held = files.data["held_out"]
    units = _match_units(held["asked"], held["predicted"])
    rows.insert(0, ("data (held-out songs)", *(_f(units[k].mean()) for k in MATCHES),
                    *(_f(v) for v in data_metric_means(files).values()),
                    " / ".join(_f(_major_share(held["asked"], held["mode"], q)[0]) for q in QUADRANTS)))
    return ["The decoder's ceiling: the held-out pieces decoded by each VQ-VAE from their own latents and "
            "emotion tags, sampled as generation samples (intervals over seeds and pieces). A prior can at "
            "best sample latents like these, so these are the match rates and metrics it could reach.", ""] \
        + _table(("source", *(f"{k} match" for k in MATCHES), *(m.replace("_", " ") for m in SONG_METRICS),
                  "major-key share Q1/Q2/Q3/Q4"), rows) + [""]



# -- interventions

def _swap_units(m: dict) -> dict:
    return {"rates": np.asarray(m["swap"]["rates"], float), "floor": np.asarray(m["swap"]["floor"], float)}


@_quiet
def _swap_effect(d) -> np.ndarray:
    """Mean over pairs of rates [..., pairs, S, E] minus floor [..., pairs, E]: [..., S, E]."""
    with np.errstate(all="ignore"):
        return np.nanmean(d["rates"] - d["floor"][..., None, :], axis=-3)


def _own_share(effect) -> np.ndarray:
    positive = np.clip(effect, 0, None)
    total = positive.sum(-1)
    with np.errstate(all="ignore"):
        return np.where(total > 0, np.diagonal(positive, axis1=-2, axis2=-1) / total, np.nan)


def swap_difference(files: StudyFiles):
    units = []
    for seed in files.seeds:
        m, b = (files.measure(seed, "interventions", x) for x in (MUSER, BASELINE))
        if m is not None and b is not None:
            um, ub = _swap_units(m), _swap_units(b)
            units.append({"mr": um["rates"], "mf": um["floor"], "br": ub["rates"], "bf": ub["floor"]})
    return bootstrap(units, lambda d: _own_share(_swap_effect({"rates": d["mr"], "floor": d["mf"]}))
                     - _own_share(_swap_effect({"rates": d["br"], "floor": d["bf"]})))


def own_share(files: StudyFiles, model: str):
    """Per element, the share of a slice swap's change above the floor that falls on its own element."""
    return bootstrap([_swap_units(m) for m in files.per_seed("interventions", model)],
                     lambda d: _own_share(_swap_effect(d)))


def transfer_units(files: StudyFiles, model: str, index: int) -> list[dict]:
    units = []
    for m in files.per_seed("interventions", model):
        t = m["transfers"][index]
        d = {f"num {e}": np.asarray(t["terms"][e]["num"], float) for e in ELEMENTS}
        d.update({f"den {e}": np.asarray(t["terms"][e]["den"], float) for e in ELEMENTS})
        target = t["target"]
        d["shift"] = (np.asarray(t["predicted"]["transferred"]) == target).astype(float) \
            - (np.asarray(t["predicted"]["control"]) == target).astype(float)
        d["tag"] = (np.asarray(t["predicted"]["control"]) == target).astype(float) \
            - (np.asarray(t["predicted"]["A"]) == target).astype(float)
        units.append(d)
    return units


def _moved(d, element):
    den = d[f"den {element}"].sum(-1)
    with np.errstate(all="ignore"):
        return np.where(den > 0, d[f"num {element}"].sum(-1) / den, np.nan)


def emotion_shift_units(files: StudyFiles, model: str) -> list[dict]:
    """Per seed, the pairs of all six transfers pooled: transferred minus control, classified as B's quadrant."""
    per_transfer = [transfer_units(files, model, i) for i in range(len(_transfers(files)))]
    return [{"shift": np.concatenate([units[s]["shift"] for units in per_transfer])}
            for s in range(len(per_transfer[0]) if per_transfer else 0)]


def intervention_sections(files: StudyFiles) -> list[str]:
    lines = ["## Interventions: the swap-effect matrix", "",
             "Held-out pairs (A, B) from distinct songs. A is decoded with its own latent twice, independently "
             "(the noise floor: how often tokens change between two samples of the same latent), and with slice "
             "k taken from B. Entry (slice k, element e): how much more often e's tokens change than at the "
             "floor, step by step where e is in use (mean over pairs and seeds). Nothing done reads 0; a "
             "disentangled decoder is diagonal. Both models share the paper's decoder, in which element k's "
             "own decoder adds slice k to the global state (GE decoding): a diagonal matrix is expected of "
             "both by construction, and the claim rests on the difference. Decoding samples with the paper's "
             "settings (velocity at temperature 5), so the floor is high for velocity.", ""]
    for model in files.models:
        units = [_swap_units(m) for m in files.per_seed("interventions", model)]
        if not units:
            continue
        effect = _nanmean([_swap_effect(u) for u in units], axis=0)
        floor = _nanmean([_nanmean(u["floor"], axis=0) for u in units], axis=0)
        share = bootstrap(units, lambda d: _own_share(_swap_effect(d)))
        lines += [f"**{model}** (floor per element: " + ", ".join(f"{e} {_f(v)}" for e, v in zip(ELEMENTS, floor))
                  + "):", "", *_matrix_lines(effect), "", "own-element share of each slice's positive effect: "
                  + ", ".join(f"{e} {_ci_at(share, k)}" for k, e in enumerate(ELEMENTS)), ""]
    lines += ["## Element transfer, measured against its nulls", "",
              "The paper's six transfers, each on held-out pairs from distinct songs (A of the first quadrant, B "
              "of the second). Moved fraction of each element's statistic: sum <T - A2, B - A> / sum <B2 - A2, "
              "B - A> over pairs of standardised statistics, where A, A2 are two independent decodes of A, B, B2 "
              "of B, and T the transferred decode: 0 when the swap does nothing (whatever the sampling noise), 1 "
              "when T is distributed like B; n/a where the interval of the denominator (how far B's decodes lie "
              "from A's along B - A) reaches 0, so that there is no direction to move in. Emotion: share of pieces classified as B's quadrant, transferred "
              "minus the control (A's own latent decoded with B's tag), and the tag alone (control minus A).", ""]
    rows = []
    for index, (elements, source, target) in enumerate(_transfers(files)):
        for model in files.models:
            units = transfer_units(files, model, index)
            if not units:
                continue
            # One bootstrap for the whole row: every column reads the same resampled pairs.
            row = bootstrap(units, _transfer_row)
            n = N_ELEMENTS
            cells = []
            for j, e in enumerate(ELEMENTS):
                low = None if row[1] is None else row[1][n + j]
                text = _ci_at(row, j) if low is not None and low > 0 \
                    else "n/a"        # B's decodes not told from A's: no direction to move in
                cells.append(f"**{text}**" if e in elements else text)
            rows.append((f"{'+'.join(elements)} Q{source}→Q{target}", model, *cells,
                         _ci_at(row, 2 * n), _ci_at(row, 2 * n + 1)))
    return lines + _table(("transfer", "model", *ELEMENTS, "emotion: transfer over control", "emotion: tag alone"),
                          rows) + [""]


def _transfer_row(d) -> np.ndarray:
    """Moved fraction per element, the mean denominator per element, emotion over the control
    and the tag alone."""
    return np.stack([_moved(d, e) for e in ELEMENTS] + [d[f"den {e}"].mean(-1) for e in ELEMENTS]
                    + [d["shift"].mean(-1), d["tag"].mean(-1)], axis=-1)


def _transfers(files: StudyFiles):
    for model in files.models:
        found = files.per_seed("interventions", model)
        if found:
            return [(t["elements"], t["source"], t["target"]) for t in found[0]["transfers"]]
    return []


# -- guidance (beyond the paper)

def guidance_units(files: StudyFiles, model: str, scale: str) -> list[dict]:
    """Per seed, the pieces generated at scale S with their S = 1 counterparts (the same asked
    quadrant and generator seed; resampled together)."""
    units = []
    for m in files.per_seed("guidance", model):
        run, unguided = m["runs"].get(scale), m["runs"]["1"]
        if run is None or len(run["asked"]) != len(unguided["asked"]):
            continue
        d = _match_units(run["asked"], run["predicted"])
        for metric in SONG_METRICS:
            d[metric], d[f"{metric}_unguided"] = _metric_column(run, metric), _metric_column(unguided, metric)
        units.append(d)
    return units


def _guidance_statistic(data_means: dict):
    """[match rates (MATCHES), metric means (SONG_METRICS), each metric's distance from the data
    minus the unguided pieces' distance]."""
    def statistic(d):
        means = [np.nanmean(d[m], axis=1) for m in SONG_METRICS]
        further = [abs(np.nanmean(d[m], axis=1) - data_means[m])
                   - abs(np.nanmean(d[f"{m}_unguided"], axis=1) - data_means[m]) for m in SONG_METRICS]
        return np.stack([d[k].mean(axis=1) for k in MATCHES] + means + further, axis=-1)
    return statistic


def scale_rows(files: StudyFiles, kind: str, model: str, units_of, statistic) -> list[tuple]:
    """(scale, point, low, high) per guidance scale of a stage's measures (`kind`) that has
    units (units_of(files, model, scale)), in the order of the statistic."""
    found = files.per_seed(kind, model)
    rows = []
    for scale in (f"{s:g}" for s in (found[0]["scales"] if found else ())):
        units = units_of(files, model, scale)
        if units:
            rows.append((scale, *bootstrap(units, statistic)))
    return rows


def guidance_rows(files: StudyFiles, model: str, data_means: dict) -> list[tuple]:
    """(scale, point, low, high) per scale of the guidance measures, in the order of the statistic."""
    return scale_rows(files, "guidance", model, guidance_units, _guidance_statistic(data_means))


def guidance_verdicts(rows) -> dict:
    """The verdict of every scale S != 1 and of the claim (evaluation/verdicts.py)."""
    n, k = len(MATCHES), len(SONG_METRICS)
    per_scale = {}
    for scale, _, low, high in rows:
        if scale == "1":
            continue
        matches = [(low[MATCHES.index(name)], high[MATCHES.index(name)]) for name, _ in GUIDANCE_TARGETS]
        further = [(low[n + k + SONG_METRICS.index(m)], high[n + k + SONG_METRICS.index(m)])
                   for m in GUIDANCE_KEPT_METRICS]
        per_scale[scale] = judge_guidance_scale(matches, further)
    return {"scales": per_scale, "claim": judge_guidance(list(per_scale.values()))}


def plot_guidance(rows, data_means: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [float(r[0]) for r in rows]
    fig, axes = plt.subplots(1, 1 + len(SONG_METRICS), figsize=(4.0 * (1 + len(SONG_METRICS)), 3.4))
    targets = dict(GUIDANCE_TARGETS)
    for i, name in enumerate(MATCHES):
        point = np.array([r[1][i] for r in rows])
        err = np.array([[r[1][i] - r[2][i], r[3][i] - r[1][i]] for r in rows]).T
        axes[0].errorbar(scales, point, yerr=err, marker="o", capsize=3, color=f"C{i}", label=f"{name} match")
        if name in targets:
            axes[0].axhline(targets[name], color=f"C{i}", linestyle=":", linewidth=1)
    axes[0].set_title("match rate (dotted: targets)", fontsize=10)
    axes[0].legend(fontsize=8)
    for ax, (j, metric) in zip(axes[1:], enumerate(SONG_METRICS)):
        i = len(MATCHES) + j
        point = np.array([r[1][i] for r in rows])
        err = np.array([[r[1][i] - r[2][i], r[3][i] - r[1][i]] for r in rows]).T
        ax.errorbar(scales, point, yerr=err, marker="o", capsize=3, color="C3", label="generated")
        ax.axhline(data_means[metric], color="k", linestyle="--", linewidth=1, label="held-out data")
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("guidance scale S")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def guidance_sections(files: StudyFiles) -> list[str]:
    found = files.per_seed("guidance", MUSER)
    if not found:
        return []
    first = found[0]
    data_means = data_metric_means(files)
    rows = guidance_rows(files, MUSER, data_means)
    verdicts = guidance_verdicts(rows)
    plot_guidance(rows, data_means, files.out / "guidance.png")
    n, k = len(MATCHES), len(SONG_METRICS)
    seeds = files.seeds_with("guidance", MUSER)
    lines = ["## Beyond the paper: classifier-free guidance of MusER's prior", "",
             f"Per seed ({', '.join(map(str, seeds))}), a second prior of MusER is trained like the study's with "
             f"the emotion token replaced by a \"no emotion\" token for {first['emotion_dropout']:g} of the pieces "
             f"(`Prior_train.py --emotion_dropout`). It then generates {first['per_quadrant']} pieces per quadrant at "
             "each scale S (`generate.py --guidance S`: uncond + S * (cond - uncond) of the logits at every step), "
             "all scales from the same generator seed; S = 1 is its unguided sampling. Match rates and song "
             "metrics with intervals over seeds and pieces; \"further\" is a metric's distance from the held-out "
             "data's mean minus that distance at S = 1 (paired pieces; above 0: further from the data). The "
             "decoder's ceiling (the generation section: held-out pieces decoded from their own latents) bounds "
             "what any prior, guided or not, can reach through this decoder.", ""]
    table = []
    for scale, point, low, high in rows:
        cells = [_ci(point[i], low[i], high[i]) for i in range(n)]
        for j, metric in enumerate(SONG_METRICS):
            cells.append(f"{_f(point[n + j])} (further {_ci(point[n + k + j], low[n + k + j], high[n + k + j])})"
                         if scale != "1" else _f(point[n + j]))
        table.append((scale, *cells, verdicts["scales"].get(scale, "-")))
    held = _match_units(files.data["held_out"]["asked"], files.data["held_out"]["predicted"])
    table.append(("data (held-out songs)", *(_f(held[key].mean()) for key in MATCHES),
                  *(_f(data_means[m]) for m in SONG_METRICS), ""))
    lines += _table(("S", *(f"{key} match" for key in MATCHES), *(m.replace("_", " ") for m in SONG_METRICS),
                     "verdict"), table)
    lines += ["", f"Claim (rule in evaluation/verdicts.py): {GUIDANCE_CLAIM}. A scale is shown when quadrant, "
              "valence and arousal match intervals lie above " +
              ", ".join(f"{name} {target:g}" for name, target in GUIDANCE_TARGETS) +
              " and neither pitch classes nor polyphony is further from the data with confidence; not shown "
              "when a match interval lies at or below its target or one of them is further. "
              f"**Verdict: {verdicts['claim']}.**", "", "![guidance](guidance.png)", "",
              "Confusion (rows: asked; columns: predicted Q1/Q2/Q3/Q4; summed over seeds) and major-key share "
              "per asked quadrant against the held-out data's:", ""]
    confusion = []
    for scale in (r[0] for r in rows):
        confusion += confusion_rows(files, scale, [m["runs"][scale] for m in found if scale in m["runs"]])
    return lines + _table(("S", "asked", "predicted Q1/Q2/Q3/Q4", "major-key share", "data"), confusion) + [""]


# -- transposition augmentation (beyond the paper)

def transpose_units(files: StudyFiles, model: str, scale: str) -> list[dict]:
    """Per seed with both, the augmented prior's pieces at scale S beside the guided prior's
    (suffix `_guided`; the same generator seed and asked quadrants, matched by index and
    resampled together)."""
    units = []
    for seed in files.seeds_with("transpose", model):
        run = files.measure(seed, "transpose", model)["runs"].get(scale)
        guided = (files.measure(seed, "guidance", model) or {}).get("runs", {}).get(scale)
        if run is None or guided is None or list(run["asked"]) != list(guided["asked"]):
            continue
        d = _match_units(run["asked"], run["predicted"])
        d.update({f"{k}_guided": v for k, v in _match_units(guided["asked"], guided["predicted"]).items()})
        for metric in TRANSPOSE_KEPT_METRICS:
            d[metric], d[f"{metric}_guided"] = _metric_column(run, metric), _metric_column(guided, metric)
        units.append(d)
    return units


def _transpose_statistic(data_means: dict):
    """[augmented match rates (MATCHES), the guided prior's, augmented minus guided, the
    augmented metric means (TRANSPOSE_KEPT_METRICS), the guided ones, each metric's distance
    from the data minus the guided pieces' distance]."""
    def statistic(d):
        ours = [d[k].mean(axis=1) for k in MATCHES]
        guided = [d[f"{k}_guided"].mean(axis=1) for k in MATCHES]
        means = [np.nanmean(d[m], axis=1) for m in TRANSPOSE_KEPT_METRICS]
        guided_means = [np.nanmean(d[f"{m}_guided"], axis=1) for m in TRANSPOSE_KEPT_METRICS]
        further = [abs(a - data_means[m]) - abs(b - data_means[m])
                   for a, b, m in zip(means, guided_means, TRANSPOSE_KEPT_METRICS)]
        return np.stack(ours + guided + [a - b for a, b in zip(ours, guided)] + means + guided_means + further,
                        axis=-1)
    return statistic


def transpose_rows(files: StudyFiles, model: str, data_means: dict) -> list[tuple]:
    """(scale, point, low, high) per scale that both priors sampled, in the order of the statistic."""
    return scale_rows(files, "transpose", model, transpose_units, _transpose_statistic(data_means))


def transpose_verdict(rows) -> str:
    """The remedy's verdict (evaluation/verdicts.py) from the row of TRANSPOSE_SCALE."""
    n, k = len(MATCHES), len(TRANSPOSE_KEPT_METRICS)
    for scale, _, low, high in rows:
        if scale == f"{TRANSPOSE_SCALE:g}":
            valence = 2 * n + MATCHES.index("valence")
            return judge_transpose((low[valence], high[valence]),
                                   [(low[3 * n + 2 * k + j], high[3 * n + 2 * k + j]) for j in range(k)])
    return judge_transpose((None, None), [])


def _q2_major_share(runs: list[dict]) -> str:
    if not runs:
        return "n/a"
    share, count = _major_share(np.concatenate([r["asked"] for r in runs]),
                                np.concatenate([r["mode"] for r in runs]), 2)
    return f"{_f(share)} (n={count})"


def transpose_sections(files: StudyFiles) -> list[str]:
    title = "## Beyond the paper: transposition augmentation of MusER's prior"
    found = files.per_seed("transpose", MUSER)
    if not found:
        seeds = " ".join(map(str, files.seeds)) or "SEED"
        return [title, "", "Not run yet. A remedy aimed at key and mode, for a guided prior that moves arousal but "
                "not valence: the guided prior trained on the training pieces and their copies transposed with "
                "their mode kept (`Prior_train.py --transpose`), compared with the guided prior at S = 1 and S = 2. "
                f"Rule (evaluation/verdicts.py): {TRANSPOSE_RULE.claim}. Run it on this study after its guidance "
                "stage, with the study's own source and folder (the commands under Provenance): "
                f"`python reproduce.py --preset {files.study.get('preset_name', 'PRESET')} --midi_dir MIDI_DIR "
                f"--out {files.study.get('out_name', 'OUT')} --seed {seeds} --only transpose` "
                "(`--with guidance transpose` in a new study).", ""]
    first = found[0]
    data_means = data_metric_means(files)
    rows = transpose_rows(files, MUSER, data_means)
    verdict = transpose_verdict(rows)
    n, k = len(MATCHES), len(TRANSPOSE_KEPT_METRICS)
    paired = [s for s in files.seeds_with("transpose", MUSER) if files.measure(s, "guidance", MUSER) is not None]
    summary = first.get("transposition", {})
    shifts = "; ".join(f"{shift}: {summary['copies'][shift]} copies ({summary['left_out'][shift]} left out)"
                       for shift in summary.get("copies", {}))
    lines = [title, "",
             "A remedy aimed at key and mode, for a guided prior that moves arousal but not valence: per "
             "seed, a third prior of MusER is trained like the guided one (emotion dropout "
             f"{first['emotion_dropout']:g}) "
             f"on the training pieces and their copies at every shift of -{first['shift']}..+{first['shift']} "
             "semitones but 0 (`Prior_train.py --transpose`: pitches and chord roots move, each piece keeps its "
             "mode and its emotion label; a piece whose shifted pitch or chord the dictionary lacks is left out at "
             f"that shift; seed {files.seeds_with('transpose', MUSER)[0]}: {shifts or 'n/a'}). It trains "
             f"{first['epochs']} epochs, as many optimizer steps as the guided prior's "
             f"{files.study['preset']['prior_epochs']} epochs over the pieces alone, so a difference is the data's, "
             f"not more training. It generates {first['per_quadrant']} pieces per quadrant at S = "
             f"{' and '.join(f'{s:g}' for s in first['scales'])} from the guidance stage's generator seed, so each "
             "piece has a guided prior's piece of the same seed and asked quadrant; they are resampled together "
             f"(seeds compared: {', '.join(map(str, paired)) or 'none: the guidance stage has not run'}). "
             "Intervals over seeds and pieces; \"further\" is a metric's distance from the held-out data's mean "
             "minus the guided pieces' distance (above 0: further from the data).", ""]
    table = []
    for scale, *interval in rows:
        point = interval[0]
        # The seeds compared only, as the intervals read them.
        guided = [m["runs"][scale] for m in (files.measure(s, "guidance", MUSER) for s in paired)
                  if scale in m.get("runs", {})]
        ours = [m["runs"][scale] for m in (files.measure(s, "transpose", MUSER) for s in paired) if scale in m["runs"]]
        table.append(("guided (guidance stage)", scale, *(_ci_at(interval, n + i) for i in range(n)),
                      _q2_major_share(guided), *(_f(point[3 * n + k + j]) for j in range(k))))
        table.append((f"transposed (--transpose {first['shift']})", scale, *(_ci_at(interval, i) for i in range(n)),
                      _q2_major_share(ours),
                      *(f"{_f(point[3 * n + j])} (further {_ci_at(interval, 3 * n + 2 * k + j)})" for j in range(k))))
        table.append(("transposed minus guided", scale, *(_ci_at(interval, 2 * n + i) for i in range(n)), "",
                      *([""] * k)))
    held = files.data["held_out"]
    units = _match_units(held["asked"], held["predicted"])
    table.append(("data (held-out songs)", "", *(_f(units[key].mean()) for key in MATCHES),
                  _f(_major_share(held["asked"], held["mode"], 2)[0]),
                  *(_f(data_means[m]) for m in TRANSPOSE_KEPT_METRICS)))
    lines += _table(("prior", "S", *(f"{key} match" for key in MATCHES), "Q2 major-key share",
                     *(m.replace("_", " ") for m in TRANSPOSE_KEPT_METRICS)), table)
    lines += ["", f"Claim (rule in evaluation/verdicts.py): {TRANSPOSE_RULE.claim}. Shown when the valence "
              f"difference at S = {TRANSPOSE_SCALE:g} lies above 0 and neither pitch classes nor polyphony is further "
              "from the data with confidence; not shown when it lies at or below 0 or one of them is further. "
              f"**Verdict: {verdict}.**", "",
              "Confusion of the transposed prior (rows: asked; columns: predicted Q1/Q2/Q3/Q4; summed over seeds) and "
              "major-key share per asked quadrant against the held-out data's:", ""]
    confusion = []
    for scale in (f"{s:g}" for s in first["scales"]):
        confusion += confusion_rows(files, scale, [m["runs"][scale] for m in found if scale in m["runs"]])
    return lines + _table(("S", "asked", "predicted Q1/Q2/Q3/Q4", "major-key share", "data"), confusion) + [""]


# ----------------------------------------------------------------------------- verdicts

def rule_intervals(files: StudyFiles) -> dict:
    """The interval each rule of evaluation/verdicts.STUDY_RULES reads, by measure name."""
    out = {}
    point, low, high = gap_difference(files)
    out["ordering_gap_difference"] = _per_element(point, low, high)
    dr = ordering_summary(files, MUSER, "dr_token")
    out["dr_gap"] = _per_element(*dr["gap"]) if dr else None
    for key in ("disentanglement", "completeness"):
        diffs = [m - b for m, b in zip(dci_values(files, MUSER, key), dci_values(files, BASELINE, key))]
        out[f"dci_{key}_difference"] = seed_interval(diffs)
    out["swap_own_share_difference"] = _per_element(*swap_difference(files))
    out["transfer_emotion_shift_over_control"] = bootstrap(emotion_shift_units(files, MUSER),
                                                           lambda d: d["shift"].mean(axis=1))
    units = generation_units(files, MUSER)
    for key in ("quadrant", "valence", "arousal"):
        out[f"{key}_match"] = bootstrap(units, lambda d, k=key: d[k].mean(axis=1))
    if PRODUCT_MODEL in files.models:
        out.update(product_intervals(files))
    return out


def final_validation_accuracy(files: StudyFiles, model: str) -> dict[int, float]:
    """Per seed, the mean element accuracy on the validation pieces at the last epoch."""
    out = {}
    for seed in files.seeds_with("training", model):
        rows = _history_rows(files.measure(seed, "training", model)["history"], "val")
        if rows and isinstance(rows[-1].get("acc_mean"), (int, float)):
            out[seed] = rows[-1]["acc_mean"]
    return out


def product_intervals(files: StudyFiles) -> dict:
    """The intervals of evaluation/verdicts.PRODUCT_RULES."""
    out = {"pq_gap_over_twice_joint": _per_element(*gap_difference(files, model=PRODUCT_MODEL, other=MUSER,
                                                                   factor=2.0)),
           "pq_gap_difference": _per_element(*gap_difference(files, model=PRODUCT_MODEL, other=PRODUCT_BASELINE)),
           "pq_swap_own_share": _per_element(*own_share(files, PRODUCT_MODEL))}
    pq = dict(zip(files.seeds_with("latent", PRODUCT_MODEL), dci_values(files, PRODUCT_MODEL, "disentanglement")))
    joint = dict(zip(files.seeds_with("latent", MUSER), dci_values(files, MUSER, "disentanglement")))
    out["pq_dci_disentanglement_over_twice_joint"] = seed_interval([pq[s] - 2 * joint[s] for s in pq if s in joint])
    pq_acc, joint_acc = final_validation_accuracy(files, PRODUCT_MODEL), final_validation_accuracy(files, MUSER)
    out["pq_reconstruction_difference"] = seed_interval([pq_acc[s] - joint_acc[s] for s in pq_acc if s in joint_acc])
    return out


def _per_element(point, low, high):
    if low is None or np.ndim(point) == 0:
        return None
    return [(point[j], low[j], high[j]) for j in range(len(point))]


def verdict_lines(files: StudyFiles) -> list[str]:
    intervals = rule_intervals(files)
    lines = ["## Verdicts", "",
             f"Each claim is judged by a rule written before the runs (evaluation/verdicts.py), from "
             f"{len(files.seeds)} seed(s): {', '.join(map(str, files.seeds)) or 'none'}. Shown: the interval lies "
             "above the threshold; not shown: at or below it; inconclusive: it straddles it or is missing. "
             "Per-element claims follow the majority of elements with an interval. Differences are MusER "
             "minus the baseline.", ""]
    if PRODUCT_MODEL in files.models:
        product_seeds = [s for s in files.seeds_with("latent", PRODUCT_MODEL) if s in files.seeds_with("latent", MUSER)]
        config = files.measure(product_seeds[0], "latent", PRODUCT_MODEL)["config"] if product_seeds else {}
        size_text = f", {config['slice_codebook_size']} codes per slice" if config.get("quantizer") == "product" else ""
        lines += [f"The rules of one codebook per slice judge {PRODUCT_MODEL} and {PRODUCT_BASELINE}{size_text}, "
                  f"on the seeds where they have run: "
                  f"{len(product_seeds)} seed(s), {', '.join(map(str, product_seeds)) or 'none'}; with one "
                  "seed, the claims whose interval is over seeds (DCI, reconstruction) have none.", ""]
    rows = []
    for rule in STUDY_RULES + (PRODUCT_RULES if PRODUCT_MODEL in files.models else ()):
        value = intervals.get(rule.measure)
        if rule.per_element:
            usable = [(p, lo, hi) for p, lo, hi in (value or []) if math.isfinite(lo) and math.isfinite(hi)]
            verdict = judge(rule, [(lo, hi) for _, lo, hi in usable])["verdict"] if usable else "inconclusive"
            shown = "; ".join(f"{e} {_ci(p, lo, hi)}" for e, (p, lo, hi) in zip(ELEMENTS, value or []))
        else:
            point, low, high = value if value else (math.nan, None, None)
            verdict = judge(rule, (low, high))["verdict"]
            shown = _ci(point, low, high)
        rows.append((rule.claim, f"`{rule.measure}` > {rule.threshold:g}", shown or "n/a", f"**{verdict}**"))
    return lines + _table(("claim", "rule", "interval", "verdict"), rows) + [""]


# ----------------------------------------------------------------------------- the report

def provenance_lines(files: StudyFiles) -> list[str]:
    rows = [(name, f"{m['seconds'] / 60:.1f}", m.get("commit", "unknown"), m["finished"])
            for name, m in files.markers()]
    return ["## Provenance", "",
            "Every stage, the commit it ran at and its wall time on the machine that ran it "
            "(stages of different models ran side by side). The commands that ran each seed, in order:", ""] \
        + [f"- seed {seed}: " + "; then ".join(f"`{c}`" for c in ([runs] if isinstance(runs, str) else runs))
           for seed, runs in files.study.get("commands", {}).items()] + [""] \
        + _table(("stage", "minutes", "commit", "finished"), rows) + [""]


def write_report(out: Path, sections) -> Path:
    """REPORT.md, its figures and index.html from the study's measure files; `sections` are
    the report sections of the study's stages, in order (run/study_plan.py sections())."""
    files = StudyFiles.read(out)
    preset = files.study["preset"]
    lines = [f"# MusER reproduction study: preset `{files.study['preset_name']}`", "",
             f"Models: {', '.join(files.models)} (the baseline differs from MusER only by `--reg_weight 0`). "
             f"Seeds: {', '.join(map(str, files.seeds))}. VQ-VAE {preset['epochs']} epochs, prior "
             f"{preset['prior_epochs']} epochs, batch {preset['batch_size']}, model preset "
             f"`{preset['model_preset']}` {' '.join(preset['model_flags'])}; {preset['pairs']} pairs per "
             f"intervention. Rebuild this report: `python reproduce.py --report_only --out FOLDER` (this folder).",
             ""]
    lines += verdict_lines(files)
    for section in sections:
        lines += section(files)
    lines += provenance_lines(files)
    text = "\n".join(lines) + "\n"
    report = Path(out) / "REPORT.md"
    atomic_write(report, lambda h: h.write(text.encode()))
    write_study_page(out, report)
    return report
