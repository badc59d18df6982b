"""Population-level agreement between a predicted and a held-out real population (specs/metrics.md,
item 10): energy distance, mean-expression Pearson r, and DEG overlap vs a source population.

Energy distance (Szekely & Rizzo): E = 2 E|A - B| - E|A - A'| - E|B - B'| with Euclidean distances
in gene space, as a V-statistic (all pairs, self-pairs included) so that identical samples score
exactly 0 and E >= 0. Lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import euclidean_distances

from causcell_bench.errors import BenchError
from causcell_bench.metrics._validate import (
    Matrix,
    as_matrix,
    check_gene_names,
    check_positive_int,
    dense,
    subsample,
)
from causcell_bench.metrics.expression import _pcc_rows, top_genes, wilcoxon_z

MAX_CELLS = 5_000
_BLOCK = 1024


def _check_genes(a: Matrix, b: Matrix, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise BenchError(
            f"{name_a} has {a.shape[1]} genes but {name_b} has {b.shape[1]}; both must use the same genes"
        )


def _sample(x: Matrix, max_cells: int | None, seed: int) -> np.ndarray:
    idx = subsample(x.shape[0], max_cells, seed)
    return dense(x, slice(None) if idx is None else idx)


def _mean_dist(a: np.ndarray, b: np.ndarray | None) -> float:
    """Mean Euclidean distance over all pairs (rows of a) x (rows of b, or of a when b is None)."""
    other = a if b is None else b
    total = 0.0
    for start in range(0, a.shape[0], _BLOCK):
        blk = a[start : start + _BLOCK]
        total += float(euclidean_distances(blk, other).sum())
    return total / (a.shape[0] * other.shape[0])


def e_distance(a: Any, b: Any, *, max_cells: int | None = MAX_CELLS, seed: int = 0) -> float:
    """Energy distance between the populations of rows of ``a`` and ``b`` (seeded subsample of
    ``max_cells`` rows from each above that size)."""
    a = as_matrix(a, "a")
    b = as_matrix(b, "b")
    _check_genes(a, b, "a", "b")
    xa = _sample(a, max_cells, seed)
    xb = _sample(b, max_cells, seed)
    return float(max(0.0, 2.0 * _mean_dist(xa, xb) - _mean_dist(xa, None) - _mean_dist(xb, None)))


def _col_mean(x: Matrix) -> np.ndarray:
    return np.asarray(x.mean(axis=0), dtype=np.float64).ravel()


def mean_expression_pcc(a: Any, b: Any) -> float:
    """Pearson r between the mean expression profiles of two populations (0 if either is constant)."""
    a = as_matrix(a, "a")
    b = as_matrix(b, "b")
    _check_genes(a, b, "a", "b")
    return float(_pcc_rows(_col_mean(a)[None], _col_mean(b)[None])[0])


def _degs(pop: np.ndarray, src: np.ndarray, k: int) -> np.ndarray:
    """Top-k genes by |Wilcoxon z| of ``pop`` vs ``src`` (up- and down-regulated alike)."""
    x = np.concatenate([pop, src], axis=0)
    codes = np.r_[np.zeros(pop.shape[0], np.int64), np.ones(src.shape[0], np.int64)]
    (z,) = wilcoxon_z(x, [codes])
    return top_genes(z[:1], k, absolute=True)[0]


def deg_overlap(
    pred: Any,
    real: Any,
    source: Any,
    gene_names: Sequence[str] | None = None,
    top_k: int = 50,
    *,
    max_cells: int | None = MAX_CELLS,
    seed: int = 0,
) -> float:
    """|top-k DEGs(pred vs source) ∩ top-k DEGs(real vs source)| / k.

    DEGs: Wilcoxon rank-sum of the population against the source cells, genes ranked by |z|
    (both directions count). Each population is subsampled (seeded) to ``max_cells`` rows.
    """
    pred = as_matrix(pred, "pred")
    real = as_matrix(real, "real")
    source = as_matrix(source, "source")
    _check_genes(pred, real, "pred", "real")
    _check_genes(pred, source, "pred", "source")
    check_gene_names(gene_names, pred.shape[1])
    k = min(check_positive_int(top_k, "top_k"), pred.shape[1])
    src = _sample(source, max_cells, seed + 1)
    a = _degs(_sample(pred, max_cells, seed), src, k)
    b = _degs(_sample(real, max_cells, seed), src, k)
    return float(np.intersect1d(a, b).size / k)


def score_distribution(
    pred: Any,
    real: Any,
    source: Any = None,
    gene_names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    top_k: int = 50,
    max_cells: int | None = MAX_CELLS,
) -> dict[str, float]:
    """``edist``, ``mean_pcc`` and, when a ``source`` population is given, ``deg_overlap``;
    ``n_cells_edist``: predicted plus real cells the E-distance used (after subsampling)."""
    pred = as_matrix(pred, "pred")
    real = as_matrix(real, "real")
    _check_genes(pred, real, "pred", "real")
    check_gene_names(gene_names, pred.shape[1])
    out = {
        "edist": e_distance(pred, real, max_cells=max_cells, seed=seed),
        "mean_pcc": mean_expression_pcc(pred, real),
        "n_cells_edist": float(sum(min(x.shape[0], max_cells or x.shape[0]) for x in (pred, real))),
    }
    if source is not None:
        out["deg_overlap"] = deg_overlap(
            pred, real, source, gene_names, top_k, max_cells=max_cells, seed=seed
        )
    return out
