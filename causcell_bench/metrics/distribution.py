"""Population-level agreement between a predicted and a held-out real population: energy distance,
mean-expression Pearson r and R^2, DEG overlap and the Pearson r of predicted vs real changes
against a source population, and a rank metric across populations (PerturBench's "rank": does a
prediction sit closer to its own population than to the others, or has the model collapsed?).

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
from causcell_bench.metrics.expression import pcc_rows, top_genes, wilcoxon_z
from causcell_bench.metrics.registry import DIST, declare

MAX_CELLS = 5_000
_BLOCK = 1024
DEG_K = 100  # top DEGs for the field's metrics, capped at a fifth of the genes (below, overlap is trivial)


def _check_genes(a: Matrix, b: Matrix, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise BenchError(
            f"{name_a} has {a.shape[1]} genes but {name_b} has {b.shape[1]}; both must use the same genes"
        )


def _sample(x: Matrix, max_cells: int | None, seed: int) -> np.ndarray:
    idx = subsample(x.shape[0], max_cells, seed)
    return dense(x, slice(None) if idx is None else idx)


def _mean_dist(a: np.ndarray, b: np.ndarray | None, *, self_pairs: bool = True) -> float:
    """Mean Euclidean distance over all pairs (rows of a) x (rows of b, or of a when b is None;
    without ``self_pairs``, the zero distances of a row to itself are left out of the mean)."""
    other = a if b is None else b
    total = 0.0
    for start in range(0, a.shape[0], _BLOCK):
        blk = a[start : start + _BLOCK]
        total += float(euclidean_distances(blk, other).sum())
    n_self = a.shape[0] if b is None and not self_pairs else 0
    return total / (a.shape[0] * other.shape[0] - n_self)


def e_distance(a: Any, b: Any, *, max_cells: int | None = MAX_CELLS, seed: int = 0,
               unbiased: bool = False) -> float:
    """Energy distance between the populations of rows of ``a`` and ``b`` (seeded subsample of
    ``max_cells`` rows from each above that size), floored at 0.

    ``unbiased``: the within-population means leave out self-pairs (a U-statistic). The default
    V-statistic counts them, which inflates E by about E|X-X'| (1/n_a + 1/n_b): negligible for
    large populations, but on groups of a few dozen cells it dominates the score of a sampler of
    the right distribution. Identical inputs score 0 either way.
    """
    a = as_matrix(a, "a")
    b = as_matrix(b, "b")
    _check_genes(a, b, "a", "b")
    xa = _sample(a, max_cells, seed)
    xb = _sample(b, max_cells, seed)
    if unbiased and min(xa.shape[0], xb.shape[0]) < 2:
        raise BenchError("the unbiased E-distance needs at least 2 cells in each population")
    sp_ = not unbiased
    return float(max(0.0, 2.0 * _mean_dist(xa, xb) - _mean_dist(xa, None, self_pairs=sp_)
                     - _mean_dist(xb, None, self_pairs=sp_)))


def _col_mean(x: Matrix) -> np.ndarray:
    return np.asarray(x.mean(axis=0), dtype=np.float64).ravel()


def mean_expression_pcc(a: Any, b: Any) -> float:
    """Pearson r between the mean expression profiles of two populations (0 if either is constant)."""
    a = as_matrix(a, "a")
    b = as_matrix(b, "b")
    _check_genes(a, b, "a", "b")
    return float(pcc_rows(_col_mean(a)[None], _col_mean(b)[None])[0])


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


def deg_k(n_genes: int, k: int = DEG_K) -> int:
    """Number of top DEGs used on ``n_genes`` genes: ``k``, at most a fifth of the genes, at least 1."""
    return max(1, min(k, n_genes // 5))


def _r2(true: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination of ``pred`` for ``true`` (1 = exact; can be negative)."""
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    return float("nan") if ss_tot <= 0 else 1.0 - float(np.sum((true - pred) ** 2)) / ss_tot


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    return float(pcc_rows(a[None], b[None])[0])


def _slope(real_change: np.ndarray, pred_change: np.ndarray) -> float:
    """Least-squares slope of ``pred_change`` on ``real_change`` through the origin (no change
    predicts no change; NaN when nothing changes). A correlation is blind to scale; this says how
    much of the effect is moved. No intercept: on top DEGs of similar effect size the real changes
    barely vary, and a fitted intercept would absorb the whole effect."""
    ss = float(np.sum(real_change**2))
    return float("nan") if ss <= 0 else float(np.sum(real_change * pred_change) / ss)


def change_scores(pred: Any, real: Any, source: Any, *, k: int | None = None) -> dict[str, float]:
    """The field's mean-level counterfactual metrics (scGen, CPA, PerturBench) of a predicted vs a
    real population, both against the source population they were made from (log1p space):

    - ``r2_mean``: R^2 of the real mean expression by the predicted one, all genes;
    - ``r2_mean_deg``: the same on the top-k DEGs (largest |real mean - source mean|);
    - ``mean_pcc_deg``: Pearson r of the predicted and real means on those DEGs (its square is the
      r^2 that scGen and CPA report beside R^2);
    - ``delta_pcc``: Pearson r of predicted vs real changes (mean - source mean), all genes;
      ``delta_pcc_deg`` on the top-k DEGs;
    - ``delta_slope``: least-squares slope (through 0) of the predicted change on the real change,
      all genes (1 = calibrated effect size; 0.5 = the model moves half of the real change; 0 = no change);
      ``delta_slope_deg`` on the top-k DEGs. A calibration diagnostic, not scored: r misses a model
      that gets the direction of every gene right but the size of the effect wrong;
    - ``deg_overlap_lfc``: |top-k by |predicted change| ∩ top-k by |real change|| / k. Ranking genes
      by mean change, not by a Wilcoxon test, keeps smooth (mean-like) predictions from turning
      arbitrary low-variance genes into "DEGs".

    k defaults to :func:`deg_k` of the gene count.
    """
    pred, real, source = (as_matrix(x, n) for x, n in ((pred, "pred"), (real, "real"), (source, "source")))
    _check_genes(pred, real, "pred", "real")
    _check_genes(pred, source, "pred", "source")
    k = deg_k(pred.shape[1]) if k is None else min(check_positive_int(k, "k"), pred.shape[1])
    mp, mr, ms = _col_mean(pred), _col_mean(real), _col_mean(source)
    dp, dr = mp - ms, mr - ms
    top_real = np.argsort(-np.abs(dr), kind="stable")[:k]
    top_pred = np.argsort(-np.abs(dp), kind="stable")[:k]
    return {
        "r2_mean": _r2(mr, mp), "r2_mean_deg": _r2(mr[top_real], mp[top_real]),
        "mean_pcc_deg": _pcc(mp[top_real], mr[top_real]),
        "delta_pcc": _pcc(dp, dr), "delta_pcc_deg": _pcc(dp[top_real], dr[top_real]),
        "delta_slope": _slope(dr, dp), "delta_slope_deg": _slope(dr[top_real], dp[top_real]),
        "deg_overlap_lfc": float(np.intersect1d(top_real, top_pred).size / k),
    }


def population_rank(pred_means: np.ndarray, real_means: np.ndarray) -> float:
    """Mean normalised rank of each prediction's own population among all real populations, by
    Euclidean distance of mean profiles: 0 = every prediction is closest to its own population,
    ~0.5 = no better than chance, 1 = farthest (PerturBench's rank metric; detects mode collapse).
    NaN with fewer than two populations."""
    pm = np.asarray(pred_means, dtype=np.float64)
    rm = np.asarray(real_means, dtype=np.float64)
    if pm.shape != rm.shape or pm.ndim != 2:
        raise BenchError(f"pred_means {pm.shape} and real_means {rm.shape} must be (populations, genes)")
    n = pm.shape[0]
    if n < 2:
        return float("nan")
    d = euclidean_distances(pm, rm)
    own = np.diag(d)
    return float(np.mean([(np.sum(d[i] < own[i])) / (n - 1) for i in range(n)]))


def score_populations(
    preds: Sequence[Any],
    reals: Sequence[Any],
    sources: Sequence[Any],
    gene_names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    max_cells: int | None = MAX_CELLS,
) -> dict[str, float]:
    """Every population metric of several (predicted, real, source) populations: per population
    :func:`score_distribution` and :func:`change_scores`, averaged over populations; plus
    ``pop_rank`` (:func:`population_rank`) and ``n_populations``."""
    if not (len(preds) == len(reals) == len(sources)):
        raise BenchError(f"got {len(preds)} predicted, {len(reals)} real and {len(sources)} source populations; "
                         "pass one of each per held-out population")
    if not preds:
        return {}
    per = []
    for p, r, s in zip(preds, reals, sources):
        per.append({**score_distribution(p, r, s, gene_names, seed=seed, max_cells=max_cells),
                    **change_scores(p, r, s)})
    keys = list(dict.fromkeys(k for d in per for k in d))
    out = {k: float(np.nanmean([d.get(k, np.nan) for d in per])) for k in keys}
    pm = np.stack([_col_mean(as_matrix(p, "pred")) for p in preds])
    rm = np.stack([_col_mean(as_matrix(r, "real")) for r in reals])
    out["pop_rank"] = population_rank(pm, rm)
    out["n_populations"] = float(len(per))
    return out


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
    """``edist``, ``mean_pcc`` and, when a ``source`` population is given, ``deg_overlap`` (Wilcoxon);
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


_DECLARE = {"computed_by": score_populations, "needs": DIST}
declare("edist", "distribution", False, "energy distance between predicted and real populations", headline=True,
        **_DECLARE)
declare("mean_pcc", "distribution", True, "Pearson r of the mean expression profiles", headline=True, **_DECLARE)
declare("r2_mean", "distribution", True, "R^2 of the real mean expression by the predicted one, all genes",
        headline=True, **_DECLARE)
declare("r2_mean_deg", "distribution", True, "R^2 of mean expression on the top DEGs (real vs source)",
        **_DECLARE)
declare("mean_pcc_deg", "distribution", True,
        "Pearson r of the predicted and real mean expression on the top DEGs (real vs source); a diagnostic",
        aggregate=False, **_DECLARE)
declare("delta_pcc", "distribution", True, "Pearson r of predicted vs real change from the source, all genes",
        **_DECLARE)
declare("delta_pcc_deg", "distribution", True, "Pearson r of predicted vs real change on the top DEGs",
        headline=True, **_DECLARE)
declare("delta_slope", "distribution", True,
        "least-squares slope (through 0) of predicted on real change from the source, all genes (1 = calibrated effect "
        "size, 0.5 = half the real change, 0 = none); a calibration diagnostic, not scored",
        aggregate=False, **_DECLARE)
declare("delta_slope_deg", "distribution", True,
        "delta_slope on the top DEGs (real vs source); a calibration diagnostic, not scored",
        aggregate=False, **_DECLARE)
declare("deg_overlap_lfc", "distribution", True,
        "overlap of the top DEGs by mean change vs the source, predicted vs real", headline=True, **_DECLARE)
declare("deg_overlap", "distribution", True,
        "overlap of top-k Wilcoxon DEGs vs the source (flagged: rewards noise in smooth predictions; not scored)",
        aggregate=False, **_DECLARE)
declare("pop_rank", "distribution", False,
        "mean normalised rank of a prediction's own population among all held-out ones (0 = best)",
        headline=True, **_DECLARE)
declare("n_cells_edist", "distribution", True,
        "predicted + real cells used by the E-distance (mean over held-out populations)", aggregate=False,
        **_DECLARE)
declare("n_populations", "distribution", True, "held-out populations scored and averaged", aggregate=False,
        **_DECLARE)
