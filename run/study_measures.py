"""The study's measurements that are not one of the pipeline scripts.

Every function returns plain per-unit records (per held-out song, per pair of pieces, per
generated piece), so that the report can give intervals by resampling them (over seeds,
then units) and the committed files are enough to recompute every number it prints.

- `data_measures`: the emotion evaluator fitted on the training songs' windows; on the
  held-out songs its accuracy, the data's own quadrant predictions and key modes;
- `latent_measures`: on held-out songs, the regulariser's own measure (evaluation/ordering.py:
  MusER's frozen DR readout, and a readout of the same form fitted on training songs for any
  model), DCI exclusivity (evaluation/dci.py), the linear probe with its controls
  (evaluation/probe.py) and the codes the held-out data uses;
- `intervention_measures`: the swap-effect matrix (evaluation/interventions.py) and the
  paper's six transfers with independent decodes and the emotion-tag control
  (evaluation/transfer.py), on pairs of held-out pieces from distinct songs;
- `generation_measures`: generated pieces against the data: song metrics, the evaluator's
  predicted quadrant per piece, key modes; `decoded_measures`: the same of held-out pieces
  decoded from their own latents (the decoder's ceiling for any prior).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from evaluation import evaluator as E
from evaluation import metrics as M
from evaluation import ordering as O
from evaluation import probe as P
from evaluation.dci import dci_scores, slice_importance
from evaluation.interventions import change_rates
from evaluation.key import estimate_key
from evaluation.transfer import PAPER_TRANSFERS, decode_transfer, distinct_song_pairs, moved_fraction_per_pair, \
    swap_elements
from models.sampling import SamplingParams
from music.elements import ELEMENTS, N_ELEMENTS, QUADRANTS, song_of_name
from music.piece import piece_from_words
from music.piece_io import load_words_pickle
from run.checkpoint import build_muser, load_checkpoint
from run.pipeline import dataset_tensors, encode_pieces
from run.threads import adapt_threads

# The readouts of the ordering matrix: (name, readout, targets).
ORDERINGS = (("dr_token", "own DR", "token"), ("dr_value", "own DR", "value"),
             ("fitted_token", "fitted", "token"), ("fitted_value", "fitted", "value"))
MAX_FIT_PIECES = 512        # training pieces the fitted readouts learn from
DCI_STEPS = 3000            # held-out steps per element for the DCI forests


def window_words(data, row: int, length: int) -> np.ndarray:
    """The words a model of window `length` sees of one piece: x[0] (the Emotion word)
    then the targets y up to seq_len, at most `length` of them."""
    n = min(int(data.seq_len[row]), length)
    return np.concatenate([data.x[row, :1], data.y[row, :n]])


def song_ids(names) -> np.ndarray:
    return np.asarray([song_of_name(n) for n in names])


def data_pieces(data, length: int):
    return [piece_from_words(window_words(data, i, length), data.word2event, emotion=int(data.emotion[i]),
                             name=str(data.names[i])) for i in range(len(data.x))]


def key_mode(piece) -> str:
    key = estimate_key(piece.notes)
    return "none" if key is None else key.mode


def metric_rows(pieces) -> list[dict]:
    return [M.song_metrics(p.notes) for p in pieces]


# ----------------------------------------------------------------------------- data

def data_measures(train, held_out, length: int, seed: int, evaluator_path: Path) -> dict:
    """Fit the emotion evaluator on the training songs (as the models see them: their window)
    and describe the held-out songs with it."""
    train_pieces, held_pieces = data_pieces(train, length), data_pieces(held_out, length)
    evaluator = E.fit_evaluator(E.feature_matrix(train_pieces), train.emotion, seed=seed,
                                info={"window": length, "fitted_on": "training songs"})
    evaluator.save(evaluator_path)
    features = E.feature_matrix(held_pieces)
    predicted = evaluator.predict_features(features)["quadrant"]
    return {"held_out": {"asked": held_out.emotion, "predicted": predicted,
                         "mode": [key_mode(p) for p in held_pieces], "songs": song_ids(held_out.names),
                         "metrics": metric_rows(held_pieces)},
            "accuracy": E.accuracy_report(evaluator, features, held_out.emotion),
            "counts": {"train": {f"Q{q}": int((train.emotion == q).sum()) for q in QUADRANTS},
                       "held_out": {f"Q{q}": int((held_out.emotion == q).sum()) for q in QUADRANTS}}}


# ----------------------------------------------------------------------------- latent

def load_model(checkpoint_path: Path):
    checkpoint = load_checkpoint(checkpoint_path, "muser", "VQ-VAE")
    return build_muser(checkpoint, checkpoint_path).eval(), checkpoint


def encoded(model, data, rows=None) -> dict:
    """Latents, codes, tokens, mask, in-use steps and musical values of a data set's windows
    (of `rows` only, when given)."""
    tensors = dataset_tensors(data, model.config.max_len)
    if rows is not None:
        tensors = {k: v[torch.as_tensor(rows)] for k, v in tensors.items()}
    latent, codes = encode_pieces(model, tensors["y"], 32, torch.device("cpu"), desc="encoding")
    tokens, mask = tensors["y"].numpy(), tensors["mask"].numpy()
    return {"latent": latent, "codes": codes.numpy(), "tokens": tokens, "mask": mask,
            "in_use": O.in_use_steps(tokens, mask, data.event2word),
            "targets": {"token": np.moveaxis(tokens[..., :N_ELEMENTS], -1, 0).astype(float),
                        "value": O.musical_values(tokens, data.word2event)},
            "songs": song_ids(data.names if rows is None else data.names[rows])}


def per_song(counts: np.ndarray, songs) -> tuple[np.ndarray, list[str]]:
    """Sum a per-piece array [..., N] over the pieces of each song -> [..., songs]."""
    names, index = np.unique(songs, return_inverse=True)
    summed = np.zeros(counts.shape[:-1] + (len(names),))
    for i, s in enumerate(index):
        summed[..., s] += counts[..., i]
    return summed, list(names)


def _ordering(readouts, targets, in_use, songs) -> dict:
    agree, pairs = O.ordering_counts(readouts, targets, in_use)
    agree_s, names = per_song(agree, songs)
    pairs_s, _ = per_song(pairs, songs)
    return {"agree": np.round(agree_s, 1), "pairs": pairs_s, "songs": names}


def fit_rows(n: int, seed: int) -> np.ndarray:
    """The training pieces the fitted readouts learn from: at most MAX_FIT_PIECES, seeded."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, MAX_FIT_PIECES), replace=False))


def fitted_readouts(train_enc: dict, held_enc: dict, target: str, slice_dim: int, seed: int) -> np.ndarray:
    """[7 elements, 7 slices, N, T]: per element, each slice read by a linear readout fitted on
    the encoded training pieces with the regulariser's pairwise loss, applied to the held-out pieces."""
    latent_train = train_enc["latent"].numpy()
    latent_held = held_enc["latent"].numpy()
    out = np.zeros((N_ELEMENTS, N_ELEMENTS) + latent_held.shape[:2])
    for e in range(N_ELEMENTS):
        for k in range(N_ELEMENTS):
            dims = slice(k * slice_dim, (k + 1) * slice_dim)
            w = O.fit_linear_readout(latent_train[..., dims], train_enc["targets"][target][e],
                                     train_enc["in_use"][e], seed=seed)
            out[e, k] = latent_held[..., dims] @ w
    return out


def latent_measures(checkpoint_path: Path, train, held_out, seed: int) -> dict:
    model, checkpoint = load_model(checkpoint_path)
    c = model.config
    held, train_enc = encoded(model, held_out), encoded(model, train, fit_rows(len(train.x), seed))
    result = {"orderings": {}}
    if model.dr is not None or c.reduction == "MEAN" and c.reg_weight > 0:
        with torch.no_grad():
            own = model.reduce_latent(held["latent"]).numpy()             # [7, N, T]
        for name, readout, target in ORDERINGS:
            if readout == "own DR":
                result["orderings"][name] = _ordering(own, held["targets"][target], held["in_use"], held["songs"])
    for name, readout, target in ORDERINGS:
        if readout != "fitted":
            continue
        fitted = fitted_readouts(train_enc, held, target, c.slice_dim, seed)
        columns = [_ordering(fitted[e], held["targets"][target][e:e + 1], held["in_use"][e:e + 1], held["songs"])
                   for e in range(N_ELEMENTS)]
        result["orderings"][name] = {"agree": np.concatenate([col["agree"] for col in columns], axis=1),
                                     "pairs": np.concatenate([col["pairs"] for col in columns], axis=0),
                                     "songs": columns[0]["songs"]}
    result["dci"] = dci_measure(held, c.slice_dim, seed)
    result["probe"] = probe_measure(held, held_out, seed)
    result["codebook"] = codebook_use(held["codes"][held["mask"] > 0])
    result["config"] = {k: v for k, v in checkpoint["config"].items() if isinstance(v, (int, float, str, bool))}
    return result


def codebook_use(codes) -> dict:
    """Codes the held-out data uses in eval mode, and their perplexity: codes [steps] of one
    joint codebook, or [steps, slices] of one codebook per slice (counted as (slice, code))."""
    codes = np.asarray(codes)
    keys = codes if codes.ndim == 1 else codes + (codes.max() + 1) * np.arange(codes.shape[1])
    _, counts = np.unique(keys.reshape(-1), return_counts=True)
    probs = counts / max(counts.sum(), 1)
    return {"used_by_held_out": int(len(counts)),
            "perplexity_held_out": float(math.exp(-(probs * np.log(probs)).sum())) if len(counts) else math.nan}


def dci_measure(held: dict, slice_dim: int, seed: int) -> dict:
    """DCI from random forests, one per element, each on held-out steps where it is in use."""
    rng = np.random.default_rng(seed)
    latent = held["latent"].numpy()
    columns = []
    for e, element in enumerate(ELEMENTS):
        rows, steps = np.nonzero(held["in_use"][e])
        if len(rows) > DCI_STEPS:
            pick = rng.choice(len(rows), size=DCI_STEPS, replace=False)
            rows, steps = rows[pick], steps[pick]
        y = held["tokens"][rows, steps, e]
        if len(np.unique(y)) < 2:
            columns.append(np.zeros(N_ELEMENTS))
            continue
        columns.append(slice_importance(latent[rows, steps], {element: y}, slice_dim,
                                        categorical=(element,), seed=seed)[:, 0])
    importance = np.stack(columns, axis=1)
    scores = dci_scores(importance)
    return {"disentanglement": scores["disentanglement"], "completeness": scores["completeness"],
            "importance": scores["importance"]}


def probe_measure(held: dict, held_out, seed: int) -> dict:
    """The linear probe ('information a slice carries') with its controls, on held-out songs."""
    latent, mask, tokens = held["latent"].numpy(), held["mask"], held["tokens"]
    valid = [tokens[i][mask[i] > 0] for i in range(len(tokens))]
    statistics = P.statistics_table(valid, held_out.word2event)
    composition = P.composition_table(valid, held_out.word2event)
    return {"piece_r2": P.piece_probe(P.pooled_slices(latent, mask), statistics, held["songs"]),
            "composition_r2": P.composition_control(composition, statistics, held["songs"]),
            "step_skill": P.step_probe(latent, tokens, held["in_use"], held["songs"], seed=seed),
            "step_ceiling": P.step_ceiling(tokens, held["in_use"], held["songs"], seed=seed)}


# ----------------------------------------------------------------------------- interventions

def intervention_measures(checkpoint_path: Path, held_out, evaluator_path: Path, pairs: int,
                          seed: int, scale: dict) -> dict:
    model, _ = load_model(checkpoint_path)
    length = model.config.max_len
    songs = song_ids(held_out.names)
    sampling = SamplingParams()

    def latents(rows):
        y = torch.as_tensor(held_out.y[rows, :length], dtype=torch.long)
        with torch.no_grad():
            return model.encode(y)[0]

    # Swap-effect matrix: A decoded as is (twice, independently: the floor) and with each slice from B.
    everyone = np.arange(len(held_out.x))
    rows_a, rows_b = distinct_song_pairs(everyone, everyone, songs, pairs, seed)
    latent_a, latent_b = latents(rows_a), latents(rows_b)
    batch = [latent_a, latent_a] + [swap_elements(latent_a, latent_b, (e,), model.config.slice_dim) for e in ELEMENTS]
    tags = torch.as_tensor(held_out.emotion[rows_a]).repeat(len(batch))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        words = model.generate(torch.cat(batch), tags, sampling, generator=generator, on_step=adapt_threads)
    decoded = [words[i * pairs:(i + 1) * pairs] for i in range(len(batch))]
    e2w = held_out.event2word
    floor = np.stack([change_rates(a[1:], b[1:], e2w) for a, b in zip(decoded[0], decoded[1])])
    swapped = np.stack([[change_rates(a[1:], s[1:], e2w) for s in swaps]
                        for a, swaps in zip(decoded[0], zip(*decoded[2:]))])      # [pairs, slices, elements]
    result = {"swap": {"rates": np.round(swapped, 4), "floor": np.round(floor, 4),
                       "rows_a": rows_a, "rows_b": rows_b}, "transfers": []}

    evaluator = E.EmotionEvaluator.load(evaluator_path)
    quadrant_rows = {q: np.flatnonzero(held_out.emotion == q) for q in QUADRANTS}
    for number, (elements, source, target) in enumerate(PAPER_TRANSFERS):
        rows_a, rows_b = distinct_song_pairs(quadrant_rows[source], quadrant_rows[target], songs, pairs,
                                             seed + number)
        roles = decode_transfer(model, latents(rows_a), latents(rows_b), elements, source, target,
                                seed + number, sampling=sampling, on_step=adapt_threads)
        stats = {role: P.statistics_table([w[1:] for w in ws], held_out.word2event) for role, ws in roles.items()}
        terms = {}
        for element in ELEMENTS:
            num, den = moved_fraction_per_pair(*(stats[r][element] for r in ("A", "A again", "B", "B again",
                                                                               "transferred")), scale[element])
            terms[element] = {"num": np.round(num, 6), "den": np.round(den, 6)}
        predicted = {role: evaluator.predict([piece_from_words(w, held_out.word2event, close_empty_bars=True)
                                              for w in ws])["quadrant"] for role, ws in roles.items()}
        result["transfers"].append({"elements": list(elements), "source": source, "target": target,
                                    "rows_a": rows_a, "rows_b": rows_b, "terms": terms, "predicted": predicted})
    return result


def statistics_scale(data, length: int) -> dict[str, np.ndarray]:
    """Per element, the spread of each statistic over the data (for standardising)."""
    table = P.statistics_table([window_words(data, i, length)[1:] for i in range(len(data.x))], data.word2event)
    out = {}
    for element, values in table.items():
        spread = np.nanstd(values, axis=0)
        out[element] = np.where(np.isfinite(spread) & (spread > 1e-12), spread, 1.0)
    return out


# ----------------------------------------------------------------------------- generation

def generation_measures(words_pickle: Path, evaluator_path: Path) -> dict:
    """Per generated piece: the quadrant asked for, the evaluator's prediction, its key mode
    and its song metrics."""
    return piece_measures(load_words_pickle(words_pickle), evaluator_path)


def decoded_measures(checkpoint_path: Path, held_out, evaluator_path: Path, seed: int) -> dict:
    """The generation measures of the held-out pieces decoded by the VQ-VAE from their own
    latents and emotion tags, sampled as generate.py samples: what the decoder keeps of the
    data's emotion, key and song metrics, the ceiling of any prior that samples true latents."""
    model, _ = load_model(checkpoint_path)
    y = torch.as_tensor(held_out.y[:, :model.config.max_len], dtype=torch.long)
    with torch.no_grad():
        latent = model.encode(y)[0]
        words = model.generate(latent, torch.as_tensor(held_out.emotion), SamplingParams(),
                               generator=torch.Generator().manual_seed(seed), on_step=adapt_threads)
    pieces = [piece_from_words(w, held_out.word2event, emotion=int(q), close_empty_bars=True)
              for w, q in zip(words, held_out.emotion)]
    return piece_measures(pieces, evaluator_path)


def piece_measures(pieces, evaluator_path: Path) -> dict:
    evaluator = E.EmotionEvaluator.load(evaluator_path)
    return {"asked": [p.emotion for p in pieces],
            "predicted": evaluator.predict_features(E.feature_matrix(pieces))["quadrant"],
            "mode": [key_mode(p) for p in pieces], "metrics": metric_rows(pieces),
            "empty": int(sum(len(p.notes) == 0 for p in pieces))}
