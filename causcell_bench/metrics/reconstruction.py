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
VAR_EPS = 1e-3  # added to per-gene variances before the log ratio: genes silent in both count as equal


def realism_scores(real: Any, generated: Any, groups: Any, *, seed: int = 0,
                   min_cells: int = MIN_GROUP_CELLS, max_cells: int = MAX_GROUP_CELLS) -> dict[str, float]:
    """Distribution-level agreement of generated and real cells per group (e.g. concept combination).

    Per group with at least ``min_cells`` cells: the energy distance between generated and real
    cells, and the per-gene log2 ratio of variances (generated / real). Returns, averaged over groups
    weighted by size: ``edist_group``, ``var_ratio`` (mean |log2 ratio| over genes; 0 is ideal) and
    ``var_log2ratio`` (signed mean: below 0 = generated cells less variable than real ones, the mark
    of a decoder that predicts conditional means). NaN when no group is large enough.

    Per-cell PCC/MSE reward predicting the conditional mean; these do not: a blurred average of a
    group has a near-zero variance and a large E-distance to the real spread.
    """
    from causcell_bench.metrics._validate import as_labels, dense, subsample

    real = as_matrix(real, "real")
    gen = as_matrix(generated, "generated")
    check_same_shape(real, gen, "real", "generated")
    labels = as_labels(groups, "groups", real.shape[0])
    check_positive_int(min_cells, "min_cells", 2)
    eds, abs_r, signed, weights = [], [], [], []
    for i, g in enumerate(np.unique(labels)):
        rows = np.flatnonzero(labels == g)
        if rows.size < min_cells:
            continue
        sub = subsample(rows.size, max_cells, seed + i)
        rows = rows if sub is None else rows[sub]
        xr, xg = dense(real, rows), dense(gen, rows)
        eds.append(e_distance(xr, xg, max_cells=None))
        lr = np.log2((xg.var(axis=0) + VAR_EPS) / (xr.var(axis=0) + VAR_EPS))
        abs_r.append(float(np.mean(np.abs(lr))))
        signed.append(float(np.mean(lr)))
        weights.append(float(rows.size))
    if not weights:
        nan = float("nan")
        return {"edist_group": nan, "var_ratio": nan, "var_log2ratio": nan}
    w = np.asarray(weights)
    return {"edist_group": float(np.average(eds, weights=w)), "var_ratio": float(np.average(abs_r, weights=w)),
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
    - realism (:func:`realism_scores`, groups = concept combinations): ``edist_group``,
      ``var_ratio``, ``var_log2ratio``.
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
        "E-distance of generated vs real cells per concept combination, weighted by group size", headline=True,
        **_DECLARE)
declare("var_ratio", "realism", False,
        "mean |log2(gene variance generated / real)| per concept combination (0 = realistic spread)",
        headline=True, **_DECLARE)
declare("var_log2ratio", "realism", True,
        "signed mean log2 variance ratio (< 0: generated cells too smooth); a diagnostic", aggregate=False,
        **_DECLARE)
