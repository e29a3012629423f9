"""DCI disentanglement and completeness (Eastwood & Williams, ICLR 2018) at the level of
latent slices.

One model per element predicts the element from the whole latent; the importance of each
latent dimension for it, summed over the dimensions of each slice, gives an importance
matrix R [slices, elements]. Then
- disentanglement of slice i = 1 - entropy (base: number of elements) of row i normalised,
  and the overall score weights slices by their share of all importance: 1 when each slice
  matters for one element only;
- completeness of element j = 1 - entropy (base: number of slices) of column j normalised,
  averaged over elements: 1 when each element is read from one slice only.
A joint codebook can score high on informativeness and still low on both: nothing in it
keeps element j out of slice k. Known values: uniform importance scores 0 on both, a
uniform-random 7 x 7 matrix about 0.09 on both (the null to compare a model with), a
diagonal one 1 and 1.
"""
from __future__ import annotations

import numpy as np


def _normalised_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of p (rows sum to 1), in log base `base`; 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1) / np.log(base)


def dci_scores(importance) -> dict:
    """Disentanglement and completeness of an importance matrix [slices, elements] (>= 0)."""
    r = np.abs(np.asarray(importance, dtype=np.float64))
    if r.ndim != 2 or min(r.shape) < 2:
        raise ValueError(f"importance must be a [slices, elements] matrix with at least 2 of each, got {r.shape}")
    total = r.sum()
    if total <= 0:
        raise ValueError("importance matrix is all zero")
    slices, elements = r.shape
    row_sums, col_sums = r.sum(axis=1), r.sum(axis=0)
    used_rows, used_cols = row_sums > 0, col_sums > 0
    per_slice = np.full(slices, np.nan)
    per_slice[used_rows] = 1 - _normalised_entropy(r[used_rows] / row_sums[used_rows, None], elements)
    per_element = np.full(elements, np.nan)
    per_element[used_cols] = 1 - _normalised_entropy((r[:, used_cols] / col_sums[used_cols]).T, slices)
    weights = row_sums / total
    return {"disentanglement": float(np.nansum(per_slice * weights)),
            "completeness": float(np.nanmean(per_element)),
            "per_slice": per_slice, "per_element": per_element, "importance": r / total}


def slice_importance(latents, targets: dict, slice_dim: int, categorical=(), seed: int = 0,
                     trees: int = 50, depth: int = 8) -> np.ndarray:
    """Importance matrix [slices, elements] from random forests, one per element.

    latents: [N, D] (D a multiple of slice_dim); targets: {element: [N]} in the order of the
    columns; elements named in `categorical` get a classifier, the others a regressor.
    Impurity importances of the D dimensions are summed per slice.
    """
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    latents = np.asarray(latents, dtype=np.float64)
    n, width = latents.shape
    if width % slice_dim:
        raise ValueError(f"latent width {width} is not a multiple of the slice width {slice_dim}")
    columns = []
    for element, y in targets.items():
        y = np.asarray(y)
        if len(y) != n:
            raise ValueError(f"{element}: {len(y)} targets for {n} latents")
        kind = RandomForestClassifier if element in categorical else RandomForestRegressor
        model = kind(n_estimators=trees, max_depth=depth, random_state=seed, n_jobs=1).fit(latents, y)
        columns.append(model.feature_importances_.reshape(width // slice_dim, slice_dim).sum(axis=1))
    return np.stack(columns, axis=1)
