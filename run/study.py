"""The reproduction study: every stage of the paper's pipeline for MusER and its baseline.

`reproduce.py` is the command; this module holds its parts:
- `StudyPreset`: the sizes of a study (model flags, epochs, pieces, pairs);
- `Stage` bookkeeping: a stage is skipped when its marker says it finished with the same
  inputs (command and content hashes of the files it reads), redone when they changed,
  and continued (training resumes from last.pt) when it was interrupted;
- the measurements that are not one of the pipeline scripts: data metrics, the emotion
  evaluator on the model's window, generated-against-data metrics, the disentanglement
  probe (evaluation/probe.py) and element transfer measured over pairs.
`run/study_report.py` turns the stage outputs into REPORT.md and its figures.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluation import evaluator as E
from evaluation import metrics as M
from evaluation import probe as P
from evaluation.transfer import PAPER_TRANSFERS, quadrant_rows, swap_elements, transfer_pairs
from models.sampling import SamplingParams
from music.atomic import atomic_write
from music.elements import ELEMENTS, QUADRANTS, song_of_name
from music.errors import UserError
from music.piece import piece_from_words
from music.piece_io import load_words_pickle
from run.checkpoint import build_muser, load_checkpoint
from run.pipeline import dataset_tensors, encode_pieces
from run.threads import with_recommended_wait

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class StudyPreset:
    model_preset: str                 # models/config.py preset passed to the trainers
    model_flags: tuple = ()           # further MusER.py model flags
    prior_flags: tuple = ()           # further Prior_train.py model flags
    epochs: int = 300
    prior_epochs: int = 1300
    batch_size: int = 16
    lr: float = 1e-4
    prior_lr: float = 1e-4
    n_per_quadrant: int = 100         # generated pieces per quadrant
    pairs: int = 20                   # pairs per element transfer
    tsne_flags: tuple = ()            # further VQ_explore.py flags
    note: str = ""


STUDY_PRESETS = {
    # The paper's configuration: a GPU run (see README for its expected time).
    "paper": StudyPreset(model_preset="paper", note="the paper's configuration"),
    # The smallest configuration in which the claims become measurable on a 2-core CPU
    # in about an hour on all of EMOPIA (see results/emopia_small/REPORT.md for the
    # reasoning and the calibration runs).
    # Its VQ-VAEs re-seed dead codes: at this scale and without it, the codebook falls from
    # 218 to 6 of 512 codes in two epochs (calibration runs in the report).
    "small": StudyPreset(model_preset="small", model_flags=("--dead_code_threshold", "1"), epochs=12,
                         prior_epochs=20, lr=3e-4, prior_lr=3e-4, n_per_quadrant=100, pairs=20,
                         note="256-step windows, narrow layers, dead-code restart, 12 + 20 epochs"),
    # For tests: the whole study on the shipped sample in about a minute.
    "tiny": StudyPreset(model_preset="tiny", epochs=2, prior_epochs=2, batch_size=8, lr=1e-3,
                        prior_lr=1e-3, n_per_quadrant=2, pairs=2, tsne_flags=("--tsne_iter", "250"),
                        note="test size"),
}


@dataclass(frozen=True)
class ModelSpec:
    """One VQ-VAE of the study: its name and the MusER.py switches that make it."""
    name: str
    flags: tuple = ()


def model_specs(variants) -> list[ModelSpec]:
    """MusER_TRANS_CA_GE and the plain VQ-VAE baseline, then the requested variants
    (names like MEAN_CA_GE: reduction_conditioning_decoding)."""
    specs = [ModelSpec("MusER_TRANS_CA_GE"), ModelSpec("VQVAE_TRANS_CA_GE", ("--reg_weight", "0"))]
    for variant in variants or ():
        parts = variant.upper().removeprefix("MUSER_").split("_")
        if len(parts) != 3:
            raise UserError(f"--variants {variant}: expected REDUCTION_CONDITIONING_DECODING, "
                            f"e.g. MEAN_CA_GE")
        name = "MusER_" + "_".join(parts)
        if name not in [s.name for s in specs]:
            specs.append(ModelSpec(name, ("--reduction", parts[0], "--conditioning", parts[1],
                                          "--decoding", parts[2])))
    return specs


# ----------------------------------------------------------------------------- stages

def file_hash(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(command, inputs) -> str:
    """Hash of what a stage does (its command or settings) and the content of its inputs."""
    record = {"command": [str(c) for c in command],
              "inputs": {str(p): (file_hash(Path(p)) if Path(p).is_file() else "missing")
                         for p in inputs}}
    return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()


def write_json(path: Path, data) -> None:
    text = json.dumps(data, indent=1, default=_plain) + "\n"
    atomic_write(path, lambda h: h.write(text.encode()))


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value)} in JSON")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


class Stages:
    """Markers under out/stages/: `NAME.json` when a stage finished, `NAME.started` while
    it runs. A stage whose fingerprint changed is redone; one started with the same
    fingerprint and not finished is continued."""

    def __init__(self, out: Path, log=print):
        self.dir = Path(out) / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log

    def finished(self, name: str, fp: str) -> bool:
        marker = self.dir / f"{name}.json"
        return marker.exists() and read_json(marker).get("fingerprint") == fp

    def continuing(self, name: str, fp: str) -> bool:
        started = self.dir / f"{name}.started"
        return started.exists() and started.read_text().strip() == fp

    def run(self, name: str, fp: str, work) -> dict:
        """work(continuing: bool) does the stage; returns its marker."""
        marker = self.dir / f"{name}.json"
        if self.finished(name, fp):
            data = read_json(marker)
            self.log(f"[{name}] finished earlier ({data['seconds'] / 60:.1f} min), skipped")
            return data
        continuing = self.continuing(name, fp)
        marker.unlink(missing_ok=True)
        atomic_write(self.dir / f"{name}.started", lambda h: h.write(fp.encode()))
        self.log(f"[{name}] {'continuing' if continuing else 'started'}")
        began = time.time()
        work(continuing)
        data = {"fingerprint": fp, "seconds": time.time() - began,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(marker, data)
        (self.dir / f"{name}.started").unlink(missing_ok=True)
        self.log(f"[{name}] done in {data['seconds'] / 60:.1f} min")
        return data


def run_script(script: str, args, log_path: Path, threads: int) -> None:
    """Run one pipeline script of this repository; its output goes to log_path."""
    command = [sys.executable, str(ROOT / script), *map(str, args)]
    # The scripts leave OpenMP's spin to their launcher (run/threads.py), here this study.
    env = dict(with_recommended_wait(os.environ), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if code != 0:
        tail = log_path.read_text().splitlines()[-5:]
        raise UserError(f"{script} failed with exit code {code}; see {log_path}:\n  " + "\n  ".join(tail))


# ------------------------------------------------------------------------ measurements

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


def piece_metric_rows(pieces) -> list[dict]:
    return [M.song_metrics(p.notes) for p in pieces]


def train_window_evaluator(data, pieces, seed: int, out_path: Path) -> dict:
    """The emotion evaluator of evaluation/evaluator.py, fitted on the data as the models see it
    (their window), held out by whole songs; returns its accuracy and the data's own match
    rates on the held-out songs."""
    features = E.feature_matrix(pieces)
    train, test = E.held_out_split(data.emotion, data.names, seed=seed, by="song")
    evaluator = E.fit_evaluator(features[train], data.emotion[train], seed=seed,
                                info={"window": "study", "held_out_songs": int(len(test))})
    accuracy = E.accuracy_report(evaluator, features[test], data.emotion[test])
    data_match = E.emotion_match(evaluator, features[test], data.emotion[test])
    evaluator = E.fit_evaluator(features, data.emotion, seed=seed, info={"window": "study"})
    evaluator.save(out_path)
    return {"held_out": accuracy, "data_match": data_match, "n_test": int(len(test))}


def metric_summary(rows, quadrants) -> dict:
    return M.summarize(rows, quadrants, metrics=M.SONG_METRICS)


def generated_measures(words_pickle: Path, evaluator_path: Path) -> dict:
    """Song metrics per quadrant and the evaluator's match rates of generated pieces."""
    pieces = load_words_pickle(words_pickle)
    quadrants = [p.emotion for p in pieces]
    evaluator = E.EmotionEvaluator.load(evaluator_path)
    return {"metrics": metric_summary(piece_metric_rows(pieces), quadrants),
            "match": E.emotion_match(evaluator, E.feature_matrix(pieces), quadrants),
            "empty": int(sum(len(p.notes) == 0 for p in pieces)), "n": len(pieces)}


def load_model(checkpoint_path: Path):
    checkpoint = load_checkpoint(checkpoint_path, "muser", "VQ-VAE")
    return build_muser(checkpoint, checkpoint_path).eval(), checkpoint


def probe_model(checkpoint_path: Path, data, seed: int) -> dict:
    """Both probe matrices and their diagonal shares for one trained VQ-VAE."""
    model, _ = load_model(checkpoint_path)
    length = model.config.max_len
    tensors = dataset_tensors(data, length)
    latent, codes = encode_pieces(model, tensors["y"], 32, torch.device("cpu"), desc="probe encoding")
    latent, mask = latent.numpy(), tensors["mask"].numpy()
    tokens = tensors["y"].numpy()
    groups = song_ids(data.names)
    statistics = P.statistics_table([tokens[i][mask[i] > 0] for i in range(len(tokens))], data.word2event)
    piece = P.piece_probe(P.pooled_slices(latent, mask), statistics, groups)
    active = P.active_steps(tokens, mask, model.config.type_ids)
    step = P.step_probe(latent, tokens, active, groups, seed=seed)
    used = int(len(np.unique(codes.numpy()[mask > 0])))
    return {"piece_r2": piece, "step_skill": step, "piece_share": P.diagonal_share(piece),
            "step_share": P.diagonal_share(step), "codes_used_by_data": used,
            "codebook_size": model.config.codebook_size}


def moved_fraction(start, moved, goal, scale) -> float:
    """How far `moved` went from `start` towards `goal`, over all pairs at once:
    the projection sum <moved - start, goal - start> / sum |goal - start|^2 of the
    standardised statistics (0 = stayed, 1 = reached the goal). Pairs or columns with an
    undefined statistic are left out."""
    start, moved, goal = (np.asarray(a, dtype=float) / scale for a in (start, moved, goal))
    ok = np.isfinite(start) & np.isfinite(moved) & np.isfinite(goal)
    d_goal = np.where(ok, goal - start, 0.0)
    d_moved = np.where(ok, moved - start, 0.0)
    denominator = float((d_goal ** 2).sum())
    return float((d_moved * d_goal).sum() / denominator) if denominator > 1e-12 else math.nan


def transfer_model(checkpoint_path: Path, data, evaluator_path: Path, pairs: int, mode: str,
                   seed: int, scale: dict[str, np.ndarray]) -> list[dict]:
    """The paper's six transfers on one trained VQ-VAE, measured over `pairs` pairs each."""
    model, _ = load_model(checkpoint_path)
    evaluator = E.EmotionEvaluator.load(evaluator_path)
    length = model.config.max_len
    results = []
    for elements, source, target in PAPER_TRANSFERS:
        try:
            rows_a, rows_b = transfer_pairs(quadrant_rows(data.emotion), source, target, pairs, mode, seed)
        except ValueError as exc:
            raise UserError(f"{data.npz_path}: {exc}") from None
        y = torch.as_tensor(data.y[np.concatenate([rows_a, rows_b]), :length], dtype=torch.long)
        with torch.no_grad():
            latent, _ = model.encode(y)
        latent_a, latent_b = latent[:pairs], latent[pairs:]
        mixed = swap_elements(latent_a, latent_b, elements, model.config.slice_dim)
        emotion = torch.tensor([source] * pairs + [target] * pairs + [target] * pairs)
        generator = torch.Generator().manual_seed(seed)
        decoded = model.generate(torch.cat([latent_a, latent_b, mixed]), emotion, SamplingParams(),
                                 generator=generator)
        roles = {"A reconstructed": decoded[:pairs], "B reconstructed": decoded[pairs:2 * pairs],
                 "transferred": decoded[2 * pairs:]}
        stats = {role: [P.piece_statistics(w, data.word2event) for w in words] for role, words in roles.items()}
        moved = {}
        for element in ELEMENTS:
            columns = {role: np.stack([s[element] for s in stats[role]]) for role in roles}
            moved[element] = moved_fraction(columns["A reconstructed"], columns["transferred"],
                                            columns["B reconstructed"], scale[element])
        predicted = {}
        for role, words in roles.items():
            pieces = [piece_from_words(w, data.word2event, close_empty_bars=True) for w in words]
            prediction = evaluator.predict(pieces)["quadrant"]
            predicted[role] = [int(np.sum(prediction == q)) for q in QUADRANTS]
        results.append({"elements": list(elements), "source": source, "target": target,
                        "pairs": pairs, "rows_a": rows_a, "rows_b": rows_b, "moved": moved,
                        "predicted": predicted})
    return results


def statistics_scale(data, length: int) -> dict[str, np.ndarray]:
    """Per element, the spread of each statistic over the data (for standardising)."""
    table = P.statistics_table([window_words(data, i, length) for i in range(len(data.x))], data.word2event)
    out = {}
    for element, values in table.items():
        spread = np.nanstd(values, axis=0)
        out[element] = np.where(np.isfinite(spread) & (spread > 1e-12), spread, 1.0)
    return out
