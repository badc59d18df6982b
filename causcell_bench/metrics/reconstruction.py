"""Reconstruction scenario of the CausCell paper (Gao, Dong et al., Nat Commun 2025): generated test
cells vs the real test cells (docs/metrics.md, "Reconstruction"), each with its CT control."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from causcell_bench.errors import BenchError
from causcell_bench.metrics._validate import (
    as_matrix,
    check_columns,
    check_concepts,
    check_gene_names,
    check_positive_int,
    check_same_shape,
)
from causcell_bench.metrics.clustering import MAX_CELLS_CLUSTERING, geometry_scores
from causcell_bench.metrics.distribution import e_distance
from causcell_bench.metrics.expression import combination_labels, marker_scores, paired_stats
from causcell_bench.metrics.registry import GEN, declare

MIN_GROUP_CELLS = 10  # a concept-combination group needs this many cells for a distribution comparison
MAX_GROUP_CELLS = 500  # per group and side, seeded subsample: bounds the E-distance's pairwise cost
N_PCS = 50  # realism is measured on the real cells' top principal components (as pertpy's E-distance)
MAX_PCA_CELLS = 2_000  # real cells the principal axes are fitted on (seeded subsample above that)
SPREAD_EPS = 1e-3  # times the real cells' total variance, added to both sides of a spread ratio


def real_pcs(real: Any, n_pcs: int = N_PCS, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, (genes, k) principal axes and total variance along them of the real cells,
    k = min(n_pcs, cells - 1, genes); fitted on a seeded subsample of ``MAX_PCA_CELLS`` cells.

    In gene space a distance sums per-gene noise over thousands of genes, so a blurred mean and a
    cell of the wrong type sit about equally far from real cells; the top axes keep the biology.
    """
    from sklearn.utils.extmath import randomized_svd

    from causcell_bench.metrics._validate import dense, subsample

    real = as_matrix(real, "real")
    n_pcs = check_positive_int(n_pcs, "n_pcs")
    sub = subsample(real.shape[0], MAX_PCA_CELLS, seed)
    x = dense(real, slice(None) if sub is None else sub)
    centre = x.mean(axis=0)
    x = x - centre  # not in place: dense() of a whole ndarray is a view of the caller's matrix
    k = max(1, min(n_pcs, x.shape[0] - 1, x.shape[1]))
    if min(x.shape) <= 4 * k:  # small: the exact decomposition is cheap
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        s, vt = s[:k], vt[:k]
    else:
        _, s, vt = randomized_svd(x, k, n_iter=7, random_state=seed)
    return centre, vt.T, float(np.sum(s**2) / x.shape[0])


def realism_scores(real: Any, generated: Any, groups: Any, *, seed: int = 0, n_pcs: int = N_PCS,
                   min_cells: int = MIN_GROUP_CELLS, max_cells: int = MAX_GROUP_CELLS) -> dict[str, float]:
    """Distribution-level agreement of generated and real cells per group (e.g. concept combination).

    Both are projected on the real cells' top ``n_pcs`` principal axes (:func:`real_pcs`). Per group
    with at least ``min_cells`` cells, with m the real group's centre and V_real the real cells' total
    variance there (sum over axes), returns, averaged over groups weighted by size:

    - ``edist_group``: energy distance of generated vs real cells, unbiased (self-pairs left out, so
      a sampler of the right distribution scores ~0 on small groups, not a bias of ~E|X-X'|/n);
    - ``spread_ratio``: |log2(mean ||generated - m||^2 / V_real)|: do the generated cells spread
      around the group's real centre as much as real cells do? A blurred mean scores far below
      (too tight), cells of other groups far above (too wide), a sampler of the group ~0;
    - ``var_log2ratio``: signed log2(V_generated / V_real) about each side's own mean (below 0 =
      generated cells less variable than real ones, the mark of a decoder of conditional means).

    Ratios add ``SPREAD_EPS`` x the real cells' total variance to both sides. NaN when no group is
    large enough.
    """
    from causcell_bench.metrics._validate import as_labels, dense, subsample

    real = as_matrix(real, "real")
    gen = as_matrix(generated, "generated")
    check_same_shape(real, gen, "real", "generated")
    labels = as_labels(groups, "groups", real.shape[0])
    check_positive_int(min_cells, "min_cells", 2)
    keep = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    keep = [rows for rows in keep if rows.size >= min_cells]
    if not keep:
        nan = float("nan")
        return {"edist_group": nan, "spread_ratio": nan, "var_log2ratio": nan}
    centre, axes, total_var = real_pcs(real, n_pcs, seed=seed)
    eps = SPREAD_EPS * total_var  # one scale for every group: the whole real population's spread
    eds, spread, signed, weights = [], [], [], []
    for i, rows in enumerate(keep):
        sub = subsample(rows.size, max_cells, seed + i)
        rows = rows if sub is None else rows[sub]
        pr, pg = (dense(real, rows) - centre) @ axes, (dense(gen, rows) - centre) @ axes
        eds.append(e_distance(pr, pg, max_cells=None, unbiased=True))
        v_real = float(pr.var(axis=0).sum())
        around_real = float(np.mean(np.sum((pg - pr.mean(axis=0)) ** 2, axis=1)))
        spread.append(abs(np.log2((around_real + eps) / (v_real + eps))))
        signed.append(float(np.log2((pg.var(axis=0).sum() + eps) / (v_real + eps))))
        weights.append(float(rows.size))
    w = np.asarray(weights)
    return {"edist_group": float(np.average(eds, weights=w)), "spread_ratio": float(np.average(spread, weights=w)),
            "var_log2ratio": float(np.average(signed, weights=w))}


def score_reconstruction(
    real: Any,
    generated: Any,
    obs: pd.DataFrame,
    concepts: Sequence[str],
    gene_names: Sequence[str],
    *,
    seed: int = 0,
    n_clusters: int = 8,
    top_k: int = 50,
    max_cells_clustering: int | None = MAX_CELLS_CLUSTERING,
) -> dict[str, float]:
    """Reconstruction metrics as a flat dict.

    ``real``: the real test cells (log1p CP10k; dense or scipy sparse, densified in row blocks);
    ``generated``: the method's cells for the same rows. Returns

    - ``pcc`` (mean per-cell Pearson r; constant rows count 0) and ``mse``;
    - ``nmi_geom``, ``ari_geom``: Ward clusterings (``n_clusters``) of real and generated cells,
      on a seeded subsample of ``max_cells_clustering`` cells above that size (``n_cells_clustered``
      says how many; a diagnostic);
    - ``marker``: groups = combinations of all concept labels; per group, overlap of the top-``top_k``
      Wilcoxon marker genes (vs all other cells) in real and in generated data, weighted by group
      size; one-cell groups are not scored;
    - CT controls ``pcc_ct``, ``mse_ct``, ``marker_ct``: the same with the generated rows permuted
      (``numpy.random.default_rng(seed).permutation``);
    - realism (:func:`realism_scores`, groups = concept combinations, on the real cells' top
      principal axes): ``edist_group``, ``spread_ratio``, ``var_log2ratio``.
    """
    real = as_matrix(real, "real")
    gen = as_matrix(generated, "generated")
    check_same_shape(real, gen, "real", "generated")
    concepts = check_concepts(concepts)
    check_columns(obs, concepts, "obs")
    if len(obs) != real.shape[0]:
        raise BenchError(f"obs has {len(obs)} rows but real has {real.shape[0]} cells; pass the test fold's obs")
    if gene_names is None:
        raise BenchError("gene_names is missing; pass adata.var_names")
    check_gene_names(gene_names, real.shape[1])
    top_k = check_positive_int(top_k, "top_k")
    check_positive_int(n_clusters, "n_clusters")

    perm = np.random.default_rng(seed).permutation(real.shape[0])
    (r, m), (r_ct, m_ct) = paired_stats(real, gen, (None, perm))
    out = {"pcc": float(r.mean()), "mse": m, "pcc_ct": float(r_ct.mean()), "mse_ct": m_ct}

    geo = geometry_scores(real, gen, n_clusters, seed=seed, max_cells=max_cells_clustering)
    out.update(nmi_geom=geo["nmi"], ari_geom=geo["ari"], n_cells_clustered=geo["n_cells"])

    groups = combination_labels(obs, concepts)
    out["marker"], out["marker_ct"] = marker_scores(real, gen, groups, top_k, (None, perm))
    out.update(realism_scores(real, gen, groups, seed=seed))
    return out


_DECLARE = {"computed_by": score_reconstruction, "needs": GEN}
declare("pcc", "trend", True, "mean per-cell Pearson r between real and generated cells", headline=True, **_DECLARE)
declare("mse", "trend", False, "mean squared error over all cells x genes", headline=True, **_DECLARE)
declare("pcc_ct", "trend", True, "CT control of pcc: generated rows randomly permuted", aggregate=False,
        **_DECLARE)
declare("mse_ct", "trend", False, "CT control of mse: generated rows randomly permuted", aggregate=False,
        **_DECLARE)
declare("nmi_geom", "geometry", True, "NMI of Ward clusterings of real and of generated cells", headline=True,
        **_DECLARE)
declare("ari_geom", "geometry", True, "ARI of Ward clusterings of real and of generated cells", headline=True,
        **_DECLARE)
declare("n_cells_clustered", "geometry", True, "cells used for the geometry clustering", aggregate=False,
        **_DECLARE)
declare("marker", "marker", True, "per-cell overlap of top-k Wilcoxon marker genes, real vs generated",
        headline=True, **_DECLARE)
declare("marker_ct", "marker", True, "CT control of marker: generated rows randomly permuted", aggregate=False,
        **_DECLARE)
declare("edist_group", "realism", False,
        "unbiased E-distance of generated vs real cells per concept combination, on the real cells' top 50 "
        "principal components, weighted by group size", headline=True, **_DECLARE)
declare("spread_ratio", "realism", False,
        "|log2(mean squared distance of generated cells to the real group centre / real group variance)| "
        "on the top 50 PCs, per concept combination (0 = realistic; blur is too tight, wrong cells too wide)",
        headline=True, **_DECLARE)
declare("var_log2ratio", "realism", True,
        "signed log2(total variance generated / real) per concept combination on the top 50 PCs "
        "(< 0: generated cells too smooth); a diagnostic", aggregate=False, **_DECLARE)
