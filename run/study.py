"""The reproduction study's sizes, folders and bookkeeping.

- `StudyPreset`: the sizes of a study (model flags, epochs, pieces, pairs, held-out share);
- `StudyPaths`: where every stage reads and writes; data and the emotion evaluator are shared
  by the seeds, each seed has its own folder `seeds/SEED/`;
- `song_split`: the held-out songs, chosen once per study before anything is trained;
- `Stages`: a stage is skipped when its marker says it finished with the same fingerprint
  (its settings, the content of the files it reads and the code it runs), redone when that
  changed, continued (training resumes from last.pt) when it was interrupted; the marker
  names the commit the stage ran at;
- `run_script`: one pipeline script as a subprocess with its own log.
The stages themselves are declared once, in run/study_plan.py.
"""
from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from models.config import CONDITIONINGS, DECODINGS, REDUCTIONS, UNSIZED_PQ_CODES, model_name
from music.atomic import atomic_write
from music.elements import QUADRANTS, song_of_name
from music.errors import UserError
from run.threads import with_recommended_wait

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("music", "models", "evaluation", "run")


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
    pairs: int = 40                   # pairs per transfer and for the swap-effect matrix
    held_out: float = 0.15            # share of songs no model sees in training
    tsne_flags: tuple = ()            # further VQ_explore.py flags
    note: str = ""


STUDY_PRESETS = {
    # The paper's configuration: a GPU run (see README for its expected time).
    "paper": StudyPreset(model_preset="paper", note="the paper's configuration"),
    # The smallest configuration in which the claims become measurable on a 2-core CPU
    # in about an hour per seed on all of EMOPIA. Its VQ-VAEs re-seed dead codes: at this
    # scale and without it, the codebook collapses to a few codes within two epochs.
    "small": StudyPreset(model_preset="small", model_flags=("--dead_code_threshold", "1"), epochs=12,
                         prior_epochs=20, lr=3e-4, prior_lr=3e-4, n_per_quadrant=100, pairs=40,
                         note="256-step windows, narrow layers, dead-code restart, 12 + 20 epochs"),
    # For tests: the whole study on the shipped sample in about a minute.
    "tiny": StudyPreset(model_preset="tiny", epochs=2, prior_epochs=2, batch_size=8, lr=1e-3,
                        prior_lr=1e-3, n_per_quadrant=2, pairs=3, held_out=0.34,
                        tsne_flags=("--tsne_iter", "250"), note="test size"),
}


@dataclass(frozen=True)
class ModelSpec:
    """One VQ-VAE of the study: its name and the MusER.py switches that make it."""
    name: str
    flags: tuple = ()


def model_specs(variants) -> list[ModelSpec]:
    """MusER_TRANS_CA_GE and the plain VQ-VAE baseline, then the requested variants, named as
    models/config.py names models: [VQVAE_]REDUCTION_CONDITIONING_DECODING[_PQ[SIZE]], where
    VQVAE_ drops the regulariser (--reg_weight 0) and _PQ gives each slice its own codebook
    (--quantizer product), of SIZE codes (--slice_codebook_size; models.config.UNSIZED_PQ_CODES
    without it): e.g. MEAN_CA_GE, TRANS_CA_GE_PQ, VQVAE_TRANS_CA_GE_PQ, TRANS_CA_GE_PQ128."""
    specs = [ModelSpec("MusER_TRANS_CA_GE"), ModelSpec("VQVAE_TRANS_CA_GE", ("--reg_weight", "0"))]
    for variant in variants or ():
        parts = variant.upper().split("_")
        prefix = "VQVAE" if parts[0] == "VQVAE" else "MusER"
        parts = parts[1:] if parts[0] in ("VQVAE", "MUSER") else parts
        product = re.fullmatch(r"PQ(\d*)", parts[-1]) if parts else None
        parts = parts[:-1] if product else parts
        size = int(product.group(1)) if product and product.group(1) else UNSIZED_PQ_CODES
        if len(parts) != 3 or size < 1:
            raise UserError(f"--variants {variant}: expected [VQVAE_]REDUCTION_CONDITIONING_DECODING[_PQ[SIZE]], "
                            f"e.g. MEAN_CA_GE, VQVAE_TRANS_CA_GE_PQ or TRANS_CA_GE_PQ128")
        for kind, part, allowed in zip(("reduction", "conditioning", "decoding"), parts,
                                       (REDUCTIONS, CONDITIONINGS, DECODINGS)):
            if part not in allowed:
                raise UserError(f"--variants {variant}: {kind} must be one of {', '.join(allowed)}, got {part}")
        name = model_name(*parts, prefix == "MusER", "product" if product else "joint", size)
        flags = ("--reduction", parts[0], "--conditioning", parts[1], "--decoding", parts[2]) \
            + (("--reg_weight", "0") if prefix == "VQVAE" else ()) + (("--quantizer", "product") if product else ()) \
            + (("--slice_codebook_size", str(size)) if product else ())
        if name not in [s.name for s in specs]:
            specs.append(ModelSpec(name, flags))
    return specs


# ----------------------------------------------------------------------------- folders

@dataclass(frozen=True)
class StudyPaths:
    out: Path
    seed: int

    @property
    def data(self) -> Path:             # the prepared corpus (or a link to the given npz)
        return self.out / "data"

    @property
    def train_data(self) -> Path:
        return self.data / "study_train.npz"

    @property
    def held_out_data(self) -> Path:
        return self.data / "study_held_out.npz"

    @property
    def measures(self) -> Path:         # study-wide measures (data, split, evaluator)
        return self.out / "measures"

    @property
    def evaluator(self) -> Path:
        return self.out / "measures" / "evaluator.json"

    @property
    def seed_dir(self) -> Path:
        return self.out / "seeds" / str(self.seed)

    @property
    def seed_measures(self) -> Path:
        return self.seed_dir / "measures"

    def model(self, name: str) -> Path:
        return self.seed_dir / "models" / name

    def prior(self, name: str) -> Path:
        return self.seed_dir / "models" / f"Prior_{name}"

    def generated_words(self, name: str) -> Path:
        return self.seed_dir / "generated" / f"{name}_data.data"


# What a study commits (small, machine-readable, enough for `reproduce.py --report_only`),
# relative to its folder.
COMMITTED = ("REPORT.md", "index.html", "*.png", "measures/*.json", "stages/*.json",
             "seeds/*/measures/*.json", "seeds/*/stages/*.json", "seeds/*/figures/*/*.png")


def committed_files(out: Path) -> list[Path]:
    return sorted({p for pattern in COMMITTED for p in Path(out).glob(pattern) if p.is_file()})


# ----------------------------------------------------------------------------- split

def song_split(names, quadrants, share: float, seed: int) -> dict:
    """Held-out songs: about `share` of the songs, drawn per quadrant (a song goes to the
    quadrant of its first clip), seeded, at least one song of every quadrant that has two.
    Returns {"train": rows, "held_out": rows, "songs": held-out song ids}."""
    songs = np.asarray([song_of_name(n) for n in names])
    quadrants = np.asarray(quadrants)
    first_quadrant = {}
    for song, q in zip(songs, quadrants):
        first_quadrant.setdefault(song, int(q))
    rng = np.random.default_rng(seed)
    held = []
    for q in QUADRANTS:
        pool = sorted(s for s, fq in first_quadrant.items() if fq == q)
        if len(pool) < 2:
            continue
        k = min(len(pool) - 1, max(1, int(round(share * len(pool)))))
        held += list(rng.choice(pool, size=k, replace=False))
    is_held = np.isin(songs, held)
    if not is_held.any() or is_held.all():
        raise UserError(f"cannot hold out {share:.0%} of {len(first_quadrant)} songs and keep some for training")
    return {"train": np.flatnonzero(~is_held), "held_out": np.flatnonzero(is_held), "songs": sorted(held)}


def write_subset(npz_path: Path, rows, out_path: Path) -> None:
    """The rows of an EMOPIA-format npz as a new npz beside it (same dictionary.pkl)."""
    with np.load(npz_path, allow_pickle=False) as arrays:
        n = len(arrays["x"])
        subset = {k: (arrays[k][rows] if arrays[k].ndim and len(arrays[k]) == n else arrays[k]) for k in arrays}
    atomic_write(out_path, lambda h: np.savez(h, **subset))


# ----------------------------------------------------------------------------- code hashes

def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)          # a study asks for each module's imports once per stage
def _imports(path: Path) -> frozenset[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)   # from run import study
    return frozenset(names)


@lru_cache(maxsize=None)
def code_files(*entries: str) -> tuple[Path, ...]:
    """The project files a stage runs: the entries (scripts like 'MusER.py' or modules like
    'run.study_measures') and every project module they import, transitively."""
    todo = [ROOT / e if e.endswith(".py") else _module_file(e) for e in entries]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += [_module_file(name) for name in _imports(path)]
    return tuple(sorted(seen))


def code_hash(entries) -> str:
    digest = hashlib.sha1()
    for path in code_files(*entries):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# ----------------------------------------------------------------------------- stages

def file_hash(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(settings, inputs, code=()) -> str:
    """Hash of what a stage does (its settings), the content of its inputs and of its code."""
    record = {"settings": [str(c) for c in settings],
              "inputs": {str(p): (file_hash(Path(p)) if Path(p).is_file() else "missing") for p in inputs},
              "code": code_hash(code) if code else ""}
    return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()


def write_json(path: Path, data) -> None:
    text = json.dumps(data, indent=1, default=_plain) + "\n"
    atomic_write(path, lambda h: h.write(text.encode()))


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value)} in JSON")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def current_commit() -> str:
    """HEAD's short hash, marked when the tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@lru_cache(maxsize=None)
def commit_at_start() -> str:
    """The commit of the code this process imported: call it as the process starts (the
    study's stages that run in process use the code as it was then)."""
    return current_commit()


class Stages:
    """Markers under a `stages/` folder: `NAME.json` when a stage finished, `NAME.started`
    while it runs. A stage whose fingerprint changed is redone; one started with the same
    fingerprint and not finished is continued."""

    def __init__(self, folder: Path, log=print):
        self.dir = Path(folder) / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log

    def finished(self, name: str, fp: str, outputs=()) -> bool:
        marker = self.dir / f"{name}.json"
        if marker.exists() and read_json(marker).get("fingerprint") == fp:
            missing = [p for p in outputs if not Path(p).exists()]
            if not missing:
                return True
            self.log(f"[{name}] {missing[0]} is missing: redone")
        return False

    def continuing(self, name: str, fp: str) -> bool:
        started = self.dir / f"{name}.started"
        return started.exists() and started.read_text().strip() == fp

    def run(self, name: str, fp: str, work, commit: str | None = None, outputs=()) -> dict:
        """work(continuing: bool) does the stage; returns its marker, which names `commit`
        (default: the commit checked out as the stage starts) as the code it ran. `outputs`:
        the files it must leave; a finished stage with one missing is redone, and a stage
        that ends without writing one is an error (and not marked finished)."""
        marker = self.dir / f"{name}.json"
        if self.finished(name, fp, outputs):
            data = read_json(marker)
            self.log(f"[{name}] finished earlier ({data['seconds'] / 60:.1f} min), skipped")
            return data
        continuing = self.continuing(name, fp)
        marker.unlink(missing_ok=True)
        atomic_write(self.dir / f"{name}.started", lambda h: h.write(fp.encode()))
        self.log(f"[{name}] {'continuing' if continuing else 'started'}")
        commit = commit or current_commit()
        began = time.time()
        work(continuing)
        missing = [p for p in outputs if not Path(p).exists()]
        if missing:
            raise UserError(f"stage {name} finished without writing {missing[0]}")
        data = {"fingerprint": fp, "seconds": time.time() - began,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit}
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


# ----------------------------------------------------------------------------- run outputs

def training_history(model_dir: Path) -> list[dict]:
    """The rows of a run's metrics.csv (train and validation splits), numbers as numbers."""
    path = Path(model_dir) / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as handle:
        return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(handle)]


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and text.lstrip("-").isdigit() else value


def read_silhouettes(csv_path: Path) -> dict:
    """VQ_explore.py's silhouette.csv as {element: {"tsne": {pair: value}, "latent": {pair: value}}}."""
    table = {}
    with open(csv_path) as handle:
        for r in csv.DictReader(handle):
            pairs = [k for k in r if k != "element" and not k.startswith("latent ")]
            table[r["element"]] = {"tsne": {p: float(r[p]) for p in pairs},
                                   "latent": {p: float(r[f"latent {p}"]) for p in pairs}}
    return table
