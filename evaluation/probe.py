"""Disentanglement probe: how much of each musical element each latent slice carries.

MusER claims that latent slice k holds element k. A linear probe tests it directly: for
every slice k and element j, fit a linear model from slice k to a statistic of element j
and score it on held-out songs. The result is a 7 x 7 matrix (rows = slices, columns =
elements); a disentangled latent is diagonal-dominant.

Two probes:
- per piece: the slice averaged over the piece's valid steps -> per-piece statistics of
  each element (`piece_statistics`), scored by R^2 of ridge regression under
  song-grouped cross-validation (clips of one song never sit on both sides);
- per step: the slice at step t -> element j's token at step t, scored by the skill of a
  logistic regression over the majority class, (accuracy - majority) / (1 - majority),
  on held-out songs. Only the steps where element j is in use are probed
  (evaluation.ordering.in_use_steps: note elements on Note words, bar-beat on Metrical
  words, tempo and chord on Metrical words other than Bar words, the type on every word):
  otherwise the "unused" token would let any slice that knows the word kind score.

Two references to read them against:
- `composition_control`: the per-piece R^2 reached from the piece's word composition
  alone (shares of Note, Bar and beat words); a slice that only knows the word mix can
  score this much on a column;
- `step_ceiling`: the per-step probe with slice j replaced by element j's true token, on
  the same songs and steps: how well element j itself predicts element e.

`diagonal_share` turns a matrix into one number: per element, the share of the (positive)
probe scores held by its own slice, averaged over elements. 1 = every element lives only
in its slice; 1/7 = spread evenly.
"""
from __future__ import annotations

import math

import numpy as np

from music.elements import COLUMN, ELEMENTS, N_ELEMENTS, TYPE_FIELD, per_element, token_number
from music.midi_io import TICKS_PER_BEAT
from music.chords import CHORD_QUALITIES

# Chord qualities grouped by the third above the root: major-like have a major third
# (major, augmented, dominant and major seventh), minor-like a minor third (minor,
# diminished, minor seventh, diminished and half-diminished seventh). sus2 and sus4 have
# no third and count in neither set, but do count among the piece's chord events.
MAJOR_LIKE = ("M", "+", "7", "M7")
MINOR_LIKE = ("m", "o", "m7", "o7", "/o7")
if not set(MAJOR_LIKE + MINOR_LIKE) <= set(CHORD_QUALITIES) or set(MAJOR_LIKE) & set(MINOR_LIKE):
    raise ValueError("MAJOR_LIKE and MINOR_LIKE must be disjoint sets of CHORD_QUALITIES")
# Per element, the statistics the per-piece probe predicts (one column each).
STATISTICS = per_element({
    "tempo": ("tempo mean",),
    # One summary: the 11 quality shares are mostly rare, near-constant columns.
    "chord": ("major-like minus minor-like share",),
    "bar-beat": ("onsets per bar",),
    "type": ("share of note words",),
    "pitch": ("pitch mean", "pitch range"),
    "duration": ("duration mean (beats)",),
    "velocity": ("velocity mean", "velocity spread"),
})
# The shares `word_composition` gives, in order.
COMPOSITION = ("note words", "bar words", "beat words")


def _number(event) -> float:
    number = token_number(event)
    return math.nan if number is None else float(number)


def piece_statistics(words: np.ndarray, word2event: dict) -> dict[str, np.ndarray]:
    """Per element, a float vector of the statistics in STATISTICS (NaN when undefined).

    words: int array [T, 8] of one piece (compound-word columns), padding excluded. The
    chord statistic is (major-like - minor-like) / all chord events with a quality
    (MAJOR_LIKE, MINOR_LIKE), in [-1, 1]; NaN when the piece has no such event.
    """
    words = np.asarray(words)
    types = [word2event["type"][int(t)] for t in words[:, TYPE_FIELD]]

    def events(element, kind):
        return [word2event[element][int(words[i, COLUMN[element]])] for i, t in enumerate(types) if t == kind]

    def mean(values):
        return float(np.mean(values)) if len(values) else math.nan

    tempos = [_number(e) for e in events("tempo", "Metrical") if isinstance(e, str) and e.startswith("Tempo")]
    # Chord events are 'root_quality'; CONTI, 'N_N' (no chord) and unused tokens have no quality.
    chords = [q for q in (e.split("_")[1] for e in events("chord", "Metrical")
                          if isinstance(e, str) and e.count("_") == 1) if q in CHORD_QUALITIES]
    major_minus_minor = ((sum(q in MAJOR_LIKE for q in chords) - sum(q in MINOR_LIKE for q in chords))
                         / len(chords) if chords else math.nan)
    # Onset positions: a Note word sits at the position of the last Bar/Beat word before it.
    onsets, bar, beat = set(), -1, None
    for i, t in enumerate(types):
        if t == "Metrical":
            event = word2event["bar-beat"][int(words[i, COLUMN["bar-beat"]])]
            if event == "Bar":
                bar, beat = bar + 1, None
            elif isinstance(event, str) and event.startswith("Beat"):
                beat = _number(event)
        elif t == "Note":
            onsets.add((bar, beat))
    # Bars up to the one holding the last onset (a closing Bar word adds no bar).
    bars = max(max((b for b, _ in onsets), default=0) + 1, 1)
    # A generated Note word can carry a field's "unused" token (0): it has no number and is
    # left out, as the MIDI writer leaves it out.
    def numbers(element):
        return [v for v in (_number(e) for e in events(element, "Note")) if not math.isnan(v)]

    pitches = numbers("pitch")
    durations = [d / TICKS_PER_BEAT for d in numbers("duration")]
    velocities = numbers("velocity")
    n_notes = sum(t == "Note" for t in types)
    return per_element({
        "tempo": np.array([mean(tempos)]),
        "chord": np.array([major_minus_minor]),
        "bar-beat": np.array([len(onsets) / bars]),
        "type": np.array([n_notes / len(types) if types else math.nan]),
        "pitch": np.array([mean(pitches), (max(pitches) - min(pitches)) if pitches else math.nan]),
        "duration": np.array([mean(durations)]),
        "velocity": np.array([mean(velocities), float(np.std(velocities)) if velocities else math.nan]),
    })


def statistics_table(words_list, word2event) -> dict[str, np.ndarray]:
    """piece_statistics of many pieces: per element an array [N, n_statistics]."""
    rows = [piece_statistics(w, word2event) for w in words_list]
    return {element: np.stack([r[element] for r in rows]) for element in ELEMENTS}


def word_composition(words: np.ndarray, word2event: dict) -> np.ndarray:
    """[3] shares of Note words, Bar words and beat (non-Bar Metrical) words among all the
    words of one piece (COMPOSITION order; Emotion and EOS words count in the total only).
    NaN for an empty piece. words: int array [T, 8], padding excluded."""
    words = np.asarray(words)
    if len(words) == 0:
        return np.full(len(COMPOSITION), math.nan)
    types = [word2event["type"][int(t)] for t in words[:, TYPE_FIELD]]
    bars = [word2event["bar-beat"][int(b)] == "Bar" for b in words[:, COLUMN["bar-beat"]]]
    notes = sum(t == "Note" for t in types)
    bar_words = sum(t == "Metrical" and bar for t, bar in zip(types, bars))
    beat_words = sum(t == "Metrical" and not bar for t, bar in zip(types, bars))
    return np.array([notes, bar_words, beat_words], dtype=np.float64) / len(words)


def composition_table(words_list, word2event) -> np.ndarray:
    """word_composition of many pieces: [N, 3]."""
    return np.stack([word_composition(w, word2event) for w in words_list]).reshape(-1, len(COMPOSITION))


def pooled_slices(latent: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Latent [N, T, 7*s] averaged over the valid steps of each piece -> [N, 7, s]."""
    latent = np.asarray(latent, dtype=np.float64)
    weights = np.asarray(mask, dtype=np.float64)
    weights = weights / np.maximum(weights.sum(1, keepdims=True), 1)
    pooled = np.einsum("nt,ntd->nd", weights, latent)
    return pooled.reshape(len(pooled), N_ELEMENTS, -1)


def _grouped_r2(features: np.ndarray, targets: np.ndarray, groups, n_splits: int, alpha: float) -> float:
    """Held-out R^2 of ridge regression (mean over target columns that vary); NaN if none do.

    Pieces with an undefined feature or target are left out."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    keep = np.isfinite(targets).all(1) & np.isfinite(features).all(1)
    x, y, g = features[keep], targets[keep], np.asarray(groups)[keep]
    varying = y.std(0) > 1e-12
    n_splits = min(n_splits, len(np.unique(g)))
    if not varying.any() or n_splits < 2:
        return math.nan
    y = y[:, varying]
    predicted = np.zeros_like(y)
    for train, test in GroupKFold(n_splits=n_splits).split(x, y, g):
        model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x[train], y[train])
        predicted[test] = model.predict(x[test]).reshape(len(test), -1)
    residual = ((y - predicted) ** 2).sum(0)
    total = ((y - y.mean(0)) ** 2).sum(0)
    return float(np.mean(1.0 - residual / total))


def piece_probe(slices: np.ndarray, statistics: dict[str, np.ndarray], groups,
                n_splits: int = 5, alpha: float = 1.0) -> np.ndarray:
    """[7, 7] held-out R^2 from pooled slice k (rows) to element j's statistics (columns).

    slices: [N, 7, s] from `pooled_slices`; statistics: `statistics_table`; groups: one song
    id per piece for the cross-validation folds.
    """
    matrix = np.full((N_ELEMENTS, N_ELEMENTS), math.nan)
    for k in range(N_ELEMENTS):
        for j, element in enumerate(ELEMENTS):
            matrix[k, j] = _grouped_r2(slices[:, k], statistics[element], groups, n_splits, alpha)
    return matrix


def composition_control(composition: np.ndarray, statistics: dict[str, np.ndarray], groups,
                        n_splits: int = 5, alpha: float = 1.0) -> np.ndarray:
    """[7] held-out R^2 of each element's statistics (columns of `piece_probe`) predicted
    from the piece's word composition alone, under the same song-grouped ridge.

    composition: [N, 3] from `composition_table`. A piece-probe score at or below this
    value is within reach of any slice that only knows the word mix.
    """
    composition = np.asarray(composition, dtype=np.float64)
    return np.array([_grouped_r2(composition, statistics[element], groups, n_splits, alpha)
                     for element in ELEMENTS])


def _skill(x_train, y_train, x_test, y_test) -> float:
    """Held-out skill of multinomial logistic regression over the majority class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(y_test) == 0 or len(y_train) == 0:
        return math.nan
    values, counts = np.unique(y_train, return_counts=True)
    majority = values[counts.argmax()]
    base = float(np.mean(y_test == majority))
    if len(values) < 2 or base >= 1.0:
        return math.nan
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=1.0))
    accuracy = float(np.mean(model.fit(x_train, y_train).predict(x_test) == y_test))
    return (accuracy - base) / (1.0 - base)


def _step_matrix(features, tokens, in_use, groups, max_steps: int, test_share: float,
                 seed: int) -> np.ndarray:
    """[7, 7] held-out skill from features(k, pieces, steps) (rows) to element j's token
    (columns), over the steps where element j is in use.

    Songs are split once into train and test (test_share of the songs); at most max_steps
    in-use steps per side and element are drawn. The draws depend only on in_use, groups
    and seed, so every caller with the same arguments scores the same steps.
    """
    rng = np.random.default_rng(seed)
    tokens, in_use = np.asarray(tokens), np.asarray(in_use, dtype=bool)
    if in_use.shape != (N_ELEMENTS,) + tokens.shape[:2]:
        raise ValueError(f"in_use must be [7, N, T] (evaluation.ordering.in_use_steps), got {in_use.shape}")
    songs = np.asarray(groups)
    unique = np.unique(songs)
    test_songs = rng.choice(unique, size=max(1, int(round(len(unique) * test_share))), replace=False)
    is_test = np.isin(songs, test_songs)
    matrix = np.full((N_ELEMENTS, N_ELEMENTS), math.nan)
    for j in range(N_ELEMENTS):
        sides = []
        for side in (~is_test, is_test):
            rows, steps = np.nonzero(in_use[j] & side[:, None])
            if len(rows) > max_steps:
                pick = rng.choice(len(rows), size=max_steps, replace=False)
                rows, steps = rows[pick], steps[pick]
            sides.append((rows, steps))
        (r_tr, t_tr), (r_te, t_te) = sides
        y_tr, y_te = tokens[r_tr, t_tr, j], tokens[r_te, t_te, j]
        for k in range(N_ELEMENTS):
            matrix[k, j] = _skill(features(k, r_tr, t_tr), y_tr, features(k, r_te, t_te), y_te)
    return matrix


def step_probe(latent: np.ndarray, tokens: np.ndarray, in_use: np.ndarray, groups,
               max_steps: int = 6000, test_share: float = 0.25, seed: int = 13) -> np.ndarray:
    """[7, 7] held-out skill from slice k at step t (rows) to element j's token at t (columns).

    latent [N, T, 7*s]; tokens [N, T, >=7] word columns; in_use [7, N, T] bool from
    evaluation.ordering.in_use_steps (element first: the layout of the other measures).
    Songs are split once into train and test (test_share of the songs); at most max_steps
    in-use steps per side and element are used.
    """
    latent = np.asarray(latent, dtype=np.float32)
    s = latent.shape[-1] // N_ELEMENTS
    return _step_matrix(lambda k, rows, steps: latent[rows, steps, k * s:(k + 1) * s],
                        tokens, in_use, groups, max_steps, test_share, seed)


def step_ceiling(tokens: np.ndarray, in_use: np.ndarray, groups, max_steps: int = 6000,
                 test_share: float = 0.25, seed: int = 13) -> np.ndarray:
    """[7, 7] `step_probe` with slice j replaced by the one-hot true token of element j at
    the step: how well element j itself predicts element e (rows j, columns e), on the same
    songs, steps and rules as `step_probe` called with the same arguments.

    The diagonal is 1 wherever defined (an element predicts itself, up to tokens the train
    side never saw); an off-diagonal cell is the most a slice holding only element j could
    score on element e through the structure of the music.
    """
    tokens = np.asarray(tokens)
    identity = [np.eye(int(tokens[..., j].max()) + 1, dtype=np.float32) for j in range(N_ELEMENTS)]
    return _step_matrix(lambda j, rows, steps: identity[j][tokens[rows, steps, j]],
                        tokens, in_use, groups, max_steps, test_share, seed)


def diagonal_share(matrix: np.ndarray, noise: float = 0.0) -> float:
    """Mean over elements (columns) of the own slice's share of the positive scores.

    Columns whose best score is at or below `noise` are left out: an element no slice
    predicts (e.g. a constant tempo, or scores within the noise of the probe), whose shares
    would only be chance. The default 0 drops the columns with no positive score. Scores of
    the columns kept are clipped at 0, not reduced by `noise`. NaN if every column is left out.
    """
    m = np.asarray(matrix, dtype=np.float64)
    best = np.max(np.where(np.isnan(m), -np.inf, m), axis=0)
    m = np.clip(np.nan_to_num(m, nan=0.0), 0.0, None)
    totals = m.sum(0)
    used = (best > noise) & (totals > 0)
    if not used.any():
        return math.nan
    return float(np.mean(np.diag(m)[used] / totals[used]))


def format_matrix(matrix: np.ndarray, digits: int = 2) -> str:
    """A markdown table: rows = latent slices, columns = elements."""
    lines = ["| slice \\ element | " + " | ".join(ELEMENTS) + " |",
             "|---|" + "---|" * N_ELEMENTS]
    for k, name in enumerate(ELEMENTS):
        cells = [("n/a" if not np.isfinite(v) else f"**{v:.{digits}f}**" if j == k else f"{v:.{digits}f}")
                 for j, v in enumerate(matrix[k])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
