"""Emotion evaluator: a small classifier of a piece's quadrant, arousal and valence.

It answers "does this generated piece carry the emotion it was asked for?", the usual
objective check for emotion-conditioned generation. A piece becomes a fixed vector of
interpretable musical features (`piece_features`: note density, polyphony, register,
mode, durations, velocities, rhythm, chord qualities, tempo); three standardised
logistic regressions sit on top:
- quadrant: Q1..Q4 (four classes);
- arousal: high (Q1, Q2) vs low (Q3, Q4);
- valence: positive (Q1, Q4) vs negative (Q2, Q3).

Fitting uses scikit-learn; prediction needs only NumPy. A trained evaluator is saved as
one JSON file (feature names + scaler + weights + how it was trained), written
atomically, and refuses to load when its feature list differs from this code's.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation import metrics as M
from evaluation.key import key_correlations
from music.atomic import write_text
from music.chords import CHORD_QUALITIES
from music.elements import HIGH_AROUSAL, POSITIVE_VALENCE, QUADRANTS, song_of_name
from music.errors import UserError
from music.midi_io import TICKS_PER_BAR, TICKS_PER_POSITION

FORMAT = "muser-emotion-evaluator"
FORMAT_VERSION = 1   # bump whenever a feature's definition changes
HEADS = ("quadrant", "arousal", "valence")

_REGISTER_EDGES = np.arange(24, 109, 12)            # octave bins C1..C8
_DURATION_EDGES = np.array([0, 121, 241, 481, 961, 10**9])  # <=16th, 8th, quarter, half, longer
_VELOCITY_EDGES = np.array([0, 50, 60, 70, 80, 90, 128])
_MAJOR_LIKE = ("M", "M7", "7", "sus2", "sus4", "+")
_MINOR_LIKE = ("m", "m7", "o", "o7", "/o7")


def _features_spec() -> list[str]:
    names = ["notes_per_bar", "onsets_per_bar", "log_ioi_mean", "log_ioi_std"]
    names += list(M.METRICS)
    names += ["pitch_mean", "pitch_std", "pitch_p10", "pitch_p90"]
    names += [f"register_{lo}_{lo + 11}" for lo in _REGISTER_EDGES[:-1]]
    names += ["key_major_corr", "key_minor_corr", "key_mode_diff"]
    names += [f"pc_rel_tonic_{k}" for k in range(12)]
    names += ["log_duration_mean", "log_duration_std"]
    names += [f"duration_bin_{k}" for k in range(len(_DURATION_EDGES) - 1)]
    names += ["velocity_mean", "velocity_std"]
    names += [f"velocity_bin_{k}" for k in range(len(_VELOCITY_EDGES) - 1)]
    names += ["onset_downbeat", "onset_beat", "onset_eighth", "onset_sixteenth"]
    names += [f"chord_{q}" for q in CHORD_QUALITIES]
    names += ["chord_major_like", "chord_minor_like", "chords_per_bar"]
    names += ["tempo_mean", "tempo_std"]
    return names


FEATURES = _features_spec()


def _fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, bins=edges)
    return counts / max(len(values), 1)


def quantised_notes(notes: np.ndarray) -> np.ndarray:
    """Notes on the CP grid, as the CP encoding would store them: onsets rounded to 120
    ticks, durations min(d, 1920) rounded to 120 (0 read back as 60, like the decoder),
    velocities snapped to their bin (even numbers, at least 40).

    Identity for pieces decoded from CP words; makes raw (performed) MIDI comparable.
    """
    notes = np.array(notes, dtype=np.int64).reshape(-1, 4)
    grid = TICKS_PER_POSITION
    start = np.round(notes[:, 1] / grid).astype(np.int64) * grid
    duration = np.round(np.minimum(notes[:, 2] - notes[:, 1], TICKS_PER_BAR) / grid)
    duration = duration.astype(np.int64) * grid
    notes[:, 1] = start
    notes[:, 2] = start + np.where(duration > 0, duration, grid // 2)
    # Velocity bins are the even numbers (ties go down), at least 40.
    notes[:, 3] = np.maximum(notes[:, 3] - notes[:, 3] % 2, 40)
    return notes


def piece_features(piece: M.Piece) -> np.ndarray:
    """The feature vector of one piece, in the order of `FEATURES` (finite floats).

    Computed on the piece's notes snapped to the CP grid (`quantised_notes`).

    Undefined values (an empty piece's metrics, a piece without chords) become 0: the
    standardisation then reads them as "no evidence" rather than failing.
    """
    notes = quantised_notes(piece.notes)
    pitch, start, end, velocity = (notes[:, k].astype(float) for k in range(4))
    n_bars = piece.n_bars
    onsets = np.unique(start)
    ioi = np.diff(onsets)
    duration = np.maximum(end - start, 1.0)

    f: list[float] = [len(notes) / n_bars, len(onsets) / n_bars]
    f += [np.log2(ioi).mean() if len(ioi) else 0.0, np.log2(ioi).std() if len(ioi) else 0.0]
    f += list(M.song_metrics(notes).values())
    if len(notes):
        f += [pitch.mean(), pitch.std(), np.percentile(pitch, 10), np.percentile(pitch, 90)]
    else:
        f += [0.0] * 4
    f += list(_fractions(pitch, _REGISTER_EDGES))

    # Mode: correlate the duration-weighted pitch-class profile with every major and
    # minor key; keep the best of each and the profile rotated to the best key's tonic.
    profile = np.bincount((pitch % 12).astype(int), weights=duration, minlength=12)
    major, minor = key_correlations(profile)
    if not np.isnan(major).all():
        tonic = int(np.argmax(np.maximum(major, minor)))
        f += [major.max(), minor.max(), major.max() - minor.max()]
        f += list(np.roll(profile, -tonic) / profile.sum())
    else:
        f += [0.0] * 15

    log_duration = np.log2(duration)
    f += [log_duration.mean(), log_duration.std()] if len(notes) else [0.0, 0.0]
    f += list(_fractions(end - start, _DURATION_EDGES))
    f += [velocity.mean(), velocity.std()] if len(notes) else [0.0, 0.0]
    f += list(_fractions(velocity, _VELOCITY_EDGES))

    position = (onsets % TICKS_PER_BAR) // TICKS_PER_POSITION
    n_onsets = max(len(onsets), 1)
    f += [np.sum(position == 0) / n_onsets,
          np.sum((position % 4 == 0) & (position != 0)) / n_onsets,
          np.sum(position % 4 == 2) / n_onsets,
          np.sum(position % 2 == 1) / n_onsets]

    qualities = [q for q in (M.chord_quality(c) for c in piece.chords) if q is not None]
    n_chords = max(len(qualities), 1)
    f += [qualities.count(q) / n_chords for q in CHORD_QUALITIES]
    f += [sum(q in _MAJOR_LIKE for q in qualities) / n_chords,
          sum(q in _MINOR_LIKE for q in qualities) / n_chords,
          len(qualities) / n_bars]

    tempos = np.asarray(piece.tempos, dtype=float)
    f += [tempos.mean(), tempos.std()] if len(tempos) else [120.0, 0.0]

    vector = np.asarray(f, dtype=np.float64)
    return np.where(np.isfinite(vector), vector, 0.0)


def feature_matrix(pieces) -> np.ndarray:
    """[N, len(FEATURES)] features of a list of pieces."""
    return np.stack([piece_features(p) for p in pieces]) if pieces else np.zeros((0, len(FEATURES)))


def head_labels(quadrants, head: str) -> np.ndarray:
    """Targets of one head: the quadrant itself, or 1/0 for high arousal / positive valence."""
    quadrants = np.asarray(quadrants, dtype=np.int64)
    if head == "quadrant":
        return quadrants
    if head == "arousal":
        return np.isin(quadrants, HIGH_AROUSAL).astype(np.int64)
    if head == "valence":
        return np.isin(quadrants, POSITIVE_VALENCE).astype(np.int64)
    raise ValueError(f"unknown head {head!r}")


# ------------------------------------------------------------------------ the model

@dataclass
class LinearHead:
    """A multinomial (or binary) logistic regression on standardised features."""
    classes: list[int]
    coef: np.ndarray        # [n_classes, n_features] (binary: [1, n_features])
    intercept: np.ndarray   # [n_classes] (binary: [1])

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        logits = z @ self.coef.T + self.intercept
        if len(self.classes) == 2 and logits.shape[1] == 1:  # sklearn's binary form
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1 - p1, p1], axis=1)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes)[self.probabilities(z).argmax(axis=1)]


@dataclass
class EmotionEvaluator:
    """Feature scaler + three heads (quadrant, arousal, valence)."""
    mean: np.ndarray
    scale: np.ndarray
    heads: dict[str, LinearHead]
    info: dict = field(default_factory=dict)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.mean) / self.scale

    def predict_features(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """{head: predictions} for a feature matrix [N, F]."""
        z = self.standardise(features)
        return {name: head.predict(z) for name, head in self.heads.items()}

    def predict(self, pieces) -> dict[str, np.ndarray]:
        return self.predict_features(feature_matrix(pieces))

    # -- persistence ------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "features": FEATURES,
            "scaler": {"mean": self.mean.tolist(), "scale": self.scale.tolist()},
            "heads": {name: {"classes": [int(c) for c in h.classes], "coef": h.coef.tolist(),
                             "intercept": h.intercept.tolist()} for name, h in self.heads.items()},
            "info": self.info,
        }

    def save(self, path) -> Path:
        """Write as JSON through a temporary file and an atomic rename."""
        path = Path(path)
        write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path) -> "EmotionEvaluator":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise UserError(f"{path}: cannot read evaluator ({exc.strerror})") from None
        except json.JSONDecodeError:
            raise UserError(f"{path}: not an emotion evaluator (not JSON)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path}: not an emotion evaluator file")
        if data.get("version") != FORMAT_VERSION or data.get("features") != FEATURES:
            raise UserError(f"{path}: evaluator was trained on a different feature set; "
                            f"retrain it with train_evaluator.py")
        heads = {name: LinearHead(classes=h["classes"], coef=np.asarray(h["coef"], dtype=float),
                                  intercept=np.asarray(h["intercept"], dtype=float))
                 for name, h in data["heads"].items()}
        return cls(mean=np.asarray(data["scaler"]["mean"], dtype=float),
                   scale=np.asarray(data["scaler"]["scale"], dtype=float),
                   heads=heads, info=data.get("info", {}))


def fit_evaluator(features: np.ndarray, quadrants, c: float = 0.1, seed: int = 13,
                  info: dict | None = None) -> EmotionEvaluator:
    """Fit the scaler and the three heads on a feature matrix and quadrant labels (1..4)."""
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, dtype=np.float64)
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # constant features (e.g. a fixed tempo)
    z = (features - mean) / scale
    heads = {}
    for name in HEADS:
        y = head_labels(quadrants, name)
        if len(np.unique(y)) < 2:
            raise UserError(f"cannot train the {name} head: the training data has one class only")
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, y)
        heads[name] = LinearHead(classes=[int(k) for k in model.classes_],
                                 coef=model.coef_.copy(), intercept=model.intercept_.copy())
    return EmotionEvaluator(mean=mean, scale=scale, heads=heads, info=dict(info or {}))


# --------------------------------------------------------------------------- splits

def held_out_split(quadrants, names=None, test_size: float = 0.2, seed: int = 13,
                   by: str = "song") -> tuple[np.ndarray, np.ndarray]:
    """Train / test row indices, stratified by quadrant.

    by="song" keeps all clips of one song on the same side (no leakage between clips of a
    song; needs `names`); by="clip" is a plain stratified split of clips.
    """
    quadrants = np.asarray(quadrants)
    rows = np.arange(len(quadrants))
    if by == "clip" or names is None:
        from sklearn.model_selection import train_test_split
        train, test = train_test_split(rows, test_size=test_size, random_state=seed,
                                       stratify=quadrants)
        return np.sort(train), np.sort(test)
    if by != "song":
        raise ValueError(f"unknown split {by!r}")
    from sklearn.model_selection import StratifiedGroupKFold
    groups = np.asarray([song_of_name(n) for n in names])
    n_splits = max(2, int(round(1 / test_size)))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train, test = next(folds.split(rows, quadrants, groups))
    return np.sort(train), np.sort(test)


def accuracy_report(evaluator: EmotionEvaluator, features: np.ndarray, quadrants) -> dict:
    """{head: (accuracy, chance)} where chance is the majority-class rate of these rows."""
    predictions = evaluator.predict_features(features)
    report = {}
    for name in HEADS:
        y = head_labels(quadrants, name)
        chance = np.bincount(y).max() / len(y) if len(y) else math.nan
        report[name] = (float(np.mean(predictions[name] == y)), float(chance))
    return report


def emotion_match(evaluator: EmotionEvaluator, features: np.ndarray, requested) -> dict:
    """How often pieces carry the emotion asked for, per requested quadrant and overall.

    Returns {group: {"n": count, "quadrant": rate, "arousal": rate, "valence": rate,
    "predicted": [count predicted as Q1..Q4]}} with groups "Q1".."Q4" present and "all".
    """
    requested = np.asarray(requested, dtype=np.int64)
    predictions = evaluator.predict_features(features)
    hits = {name: predictions[name] == head_labels(requested, name) for name in HEADS}
    out = {}
    groups = [(f"Q{q}", requested == q) for q in QUADRANTS if (requested == q).any()]
    groups.append(("all", np.ones(len(requested), dtype=bool)))
    for group, chosen in groups:
        out[group] = {"n": int(chosen.sum())}
        for name in HEADS:
            out[group][name] = float(hits[name][chosen].mean()) if chosen.any() else math.nan
        out[group]["predicted"] = [int(np.sum(predictions["quadrant"][chosen] == q))
                                   for q in QUADRANTS]
    return out
