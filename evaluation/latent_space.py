"""The latent-space study of VQ_explore: pooled quantised latents, t-SNE and silhouettes.

The authors' protocol (Tayjsl97/MusER, VQ_explore.py), the default here:

- each piece's quantised latent [T, D] is averaged over all T steps of the sequence
  (1024 in the paper), padding included (`feature.mean(dim=1)`); `pool="valid"` averages
  over the piece's real steps only (mask = 1) instead;
- per element (slice k = dims [k*slice_dim, (k+1)*slice_dim)) and for the whole latent,
  the pieces of quadrants 1..4, ordered by quadrant (data order within one), go through
  t-SNE with perplexity 30, PCA init, seed 13, learning rate 'auto' and 3000 iterations;
- the silhouette of each of the six quadrant pairs is computed on those 2-D t-SNE points.

Beyond the authors, the silhouette of each pair on the pooled latent itself is an extra
column ("latent Q1-Q2", ...), and the labels actually present are used instead of the
authors' hard-coded class sizes.

    from run.pipeline import pooled_latents          # encodes with the model (run layer)
    from evaluation.latent_space import silhouette_table
    features = pooled_latents(model, data, pool="all")          # {element: [N, d]}
    rows = silhouette_table(features, data.emotion, figure_dir="figures/NAME")
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
from tqdm import tqdm

from music.atomic import atomic_write, write_csv
from music.elements import ELEMENTS, QUADRANT_PAIRS, QUADRANTS  # noqa: F401

POOLS = ("all", "valid")
# The authors' t-SNE settings.
PERPLEXITY = 30.0
TSNE_SEED = 13
TSNE_ITERATIONS = 3000


def pair_name(pair) -> str:
    return f"Q{pair[0]}-Q{pair[1]}"


def pool_latent(latent, mask=None, pool: str = "all") -> np.ndarray:
    """Per piece, the time average of a latent [N, T, D] (tensor or array) as a float64 [N, D].

    pool="all": the mean over all T steps, padding included (the authors' protocol);
    pool="valid": the mean over the steps where `mask` [N, T] is nonzero.
    """
    latent = _numpy(latent).astype(np.float64)
    if latent.ndim != 3:
        raise ValueError(f"latent must be [N, T, D], got shape {latent.shape}")
    if pool == "all":
        return latent.mean(axis=1)
    if pool != "valid":
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if mask is None:
        raise ValueError("pool='valid' needs the mask of real steps")
    weights = (_numpy(mask)[:, :latent.shape[1]] != 0).astype(np.float64)
    if weights.shape != latent.shape[:2]:
        raise ValueError(f"mask shape {weights.shape} does not match latent {latent.shape[:2]}")
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    return np.einsum("nt,ntd->nd", weights, latent)


def element_features(pooled: np.ndarray, slice_dim: int) -> dict[str, np.ndarray]:
    """{element: [N, slice_dim]} for the seven elements (CP order) and 'all': [N, D]."""
    pooled = np.asarray(pooled)
    if pooled.shape[-1] != len(ELEMENTS) * slice_dim:
        raise ValueError(f"latent width {pooled.shape[-1]} is not {len(ELEMENTS)} x slice_dim {slice_dim}")
    features = {name: pooled[:, k * slice_dim:(k + 1) * slice_dim] for k, name in enumerate(ELEMENTS)}
    features["all"] = pooled
    return features


def latent_features(latent, mask, slice_dim: int, pool: str = "all") -> dict[str, np.ndarray]:
    """pool_latent then element_features: {element or 'all': [N, d]} from latents [N, T, D]."""
    return element_features(pool_latent(latent, mask, pool), slice_dim)


def tsne_2d(features: np.ndarray, perplexity: float = PERPLEXITY, seed: int = TSNE_SEED,
            max_iter: int = TSNE_ITERATIONS) -> np.ndarray:
    """t-SNE to 2-D with the authors' settings (PCA init, learning rate 'auto').

    The perplexity is lowered to (N - 1) / 3 when there are too few points for it.
    scikit-learn calls the iteration count `max_iter` (1.5+) or `n_iter` (older).
    """
    from sklearn.manifold import TSNE

    features = np.asarray(features)
    perplexity = min(perplexity, max(1.0, (len(features) - 1) / 3))
    iterations = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto", **{iterations: max_iter})
    return np.asarray(tsne.fit_transform(features))


def pair_silhouette(points: np.ndarray, labels: np.ndarray, pair) -> float:
    """Silhouette of two quadrants, from the labels actually present; NaN when one is missing."""
    from sklearn.metrics import silhouette_score

    points, labels = np.asarray(points), np.asarray(labels)
    keep = np.isin(labels, pair)
    if len(np.unique(labels[keep])) < 2 or keep.sum() < 3:
        return float("nan")
    return float(silhouette_score(points[keep], labels[keep]))


def quadrant_order(labels) -> np.ndarray:
    """Rows of quadrants 1..4 ordered as the authors feed t-SNE: Q1 first, data order within."""
    labels = np.asarray(labels)
    rows = np.flatnonzero(np.isin(labels, QUADRANTS))
    return rows[np.argsort(labels[rows], kind="stable")]


def silhouette_table(features: dict[str, np.ndarray], labels, *, perplexity: float = PERPLEXITY,
                     seed: int = TSNE_SEED, max_iter: int = TSNE_ITERATIONS, figure_dir=None,
                     title: str = "", progress: bool = False) -> list[dict]:
    """One row per entry of `features`: t-SNE each, then silhouettes of the six quadrant pairs.

    features: {name: [N, d]} (e.g. from `run.pipeline.pooled_latents`); labels: [N] quadrants (rows
    with a label outside 1..4 are left out, as the authors do). Row:
    {"element": name, "Q1-Q2": ..., ..., "Q2-Q4": ...  (on the 2-D t-SNE points, the
    paper's numbers), "latent Q1-Q2": ..., ... (on the pooled latent itself)}; NaN where
    a quadrant of the pair is absent. With `figure_dir`, also writes tsne_{name}.png
    (six pair panels) and silhouette.csv / silhouette.md there.
    """
    labels = np.asarray(labels)
    n = len(labels)
    order = quadrant_order(labels)
    labels = labels[order].astype(int)
    names = list(features)
    if progress:
        names = tqdm(names, desc="t-SNE", leave=False)
    rows = []
    for name in names:
        values = np.asarray(features[name])
        if len(values) != n:
            raise ValueError(f"features[{name!r}] has {len(values)} rows, labels {n}")
        values = values[order]
        points = tsne_2d(values, perplexity, seed, max_iter)
        row = {"element": name}
        row.update({pair_name(p): pair_silhouette(points, labels, p) for p in QUADRANT_PAIRS})
        row.update({f"latent {pair_name(p)}": pair_silhouette(values, labels, p) for p in QUADRANT_PAIRS})
        rows.append(row)
        if figure_dir is not None:
            # Imported here: it loads matplotlib, slow to import, and every script that
            # encodes a dataset imports this module whether it draws or not.
            from evaluation.plotting import plot_tsne_pairs
            plot_tsne_pairs(points, labels, f"{title}: {name} latent" if title else f"{name} latent",
                            Path(figure_dir) / f"tsne_{name}.png")
    if figure_dir is not None and rows:
        write_silhouette_table(rows, figure_dir)
    return rows


def silhouette_markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.3f}" for v in row.values()) + " |")
    return "\n".join(lines) + "\n"


def write_silhouette_table(rows: list[dict], figure_dir) -> str:
    """silhouette.csv and silhouette.md in `figure_dir`; returns the markdown."""
    figure_dir = Path(figure_dir)
    write_csv(figure_dir / "silhouette.csv", rows)
    markdown = silhouette_markdown(rows)
    atomic_write(figure_dir / "silhouette.md", lambda h: h.write(markdown.encode()))
    return markdown


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
