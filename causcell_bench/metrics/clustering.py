"""Clustering-based metrics of the CausCell paper (Gao, Dong et al., Nat Commun 2025):
granularity consistency of concept embeddings and geometric structure of generated cells.

Both use agglomerative clustering with Ward linkage on Euclidean distances, computed exactly
(scipy's nearest-neighbour-chain Ward on a BLAS distance matrix, the same algorithm sklearn's
``AgglomerativeClustering(linkage="ward")`` runs). Ward is O(n^2) in time and memory, so above
``max_cells`` a seeded random subsample of cells is clustered (default 5,000: ~0.1 GB and a few
seconds; 20,000 cells would take 1.6 GB and over a minute per clustering).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.cluster.hierarchy import cut_tree, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score, euclidean_distances, normalized_mutual_info_score

from causcell_bench.metrics._validate import (
    as_labels,
    as_matrix,
    check_positive_int,
    check_same_shape,
    dense,
    subsample,
)

MAX_CELLS_CLUSTERING = 5_000


def ward_labels(x: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cut a Ward tree of the rows of dense ``x`` into ``min(n_clusters, n_rows)`` clusters."""
    n = x.shape[0]
    k = min(int(n_clusters), n)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    d = euclidean_distances(np.asarray(x, dtype=np.float64))
    cond = squareform(d, checks=False)
    del d
    z = linkage(cond, method="ward")
    return cut_tree(z, n_clusters=k).ravel().astype(np.int64)


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {
        "nmi": float(normalized_mutual_info_score(a, b)),
        "ari": float(adjusted_rand_score(a, b)),
    }


def granularity_scores(
    test_z: Any,
    fine_labels: Any,
    n_clusters: int | None = None,
    *,
    seed: int = 0,
    max_cells: int | None = MAX_CELLS_CLUSTERING,
) -> dict[str, float]:
    """NMI and ARI of Ward clusters of ``test_z`` against fine labels.

    ``n_clusters`` defaults to the number of fine labels present (after subsampling). With a single
    fine label (or a single cell) there is nothing to resolve and both scores are NaN. ``n_cells``:
    the cells clustered (after subsampling).
    """
    z = as_matrix(test_z, "test_z", allow_sparse=False)
    y = as_labels(fine_labels, "fine_labels", z.shape[0])
    idx = subsample(z.shape[0], max_cells, seed)
    if idx is not None:
        z, y = z[idx], y[idx]
    k = len(np.unique(y)) if n_clusters is None else check_positive_int(n_clusters, "n_clusters")
    n = float(z.shape[0])
    if len(np.unique(y)) < 2 or min(k, z.shape[0]) < 2:
        return {"nmi": float("nan"), "ari": float("nan"), "n_cells": n}
    return {**_agreement(ward_labels(z, k), y), "n_cells": n}


def geometry_scores(
    real: Any,
    gen: Any,
    n_clusters: int = 8,
    *,
    seed: int = 0,
    max_cells: int | None = MAX_CELLS_CLUSTERING,
) -> dict[str, float]:
    """Cluster real and generated cells separately (Ward, ``n_clusters``) and compare the labellings.

    Cells are paired by row. Clustering runs in the full gene space (exact Euclidean Ward); above
    ``max_cells`` the same seeded subsample of rows is taken from both. Returns ``nmi``, ``ari`` and
    ``n_cells`` (cells clustered). With fewer than two cells (one cluster) both scores are NaN;
    with fewer cells than ``n_clusters`` every cell is its own cluster.
    """
    real = as_matrix(real, "real")
    gen = as_matrix(gen, "generated")
    check_same_shape(real, gen, "real", "generated")
    k = check_positive_int(n_clusters, "n_clusters")
    idx = subsample(real.shape[0], max_cells, seed)
    rows: Any = slice(None) if idx is None else idx
    n = real.shape[0] if idx is None else idx.size
    if min(k, n) < 2:
        return {"nmi": float("nan"), "ari": float("nan"), "n_cells": float(n)}
    a = ward_labels(dense(real, rows), k)
    b = ward_labels(dense(gen, rows), k)
    return {**_agreement(a, b), "n_cells": float(n)}

