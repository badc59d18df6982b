"""Reconstruction scenario of the CausCell paper (Gao, Dong et al., Nat Commun 2025): generated test
cells vs the real test cells (specs/metrics.md, items 4-7), each with its CT control."""

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
from causcell_bench.metrics.expression import combination_labels, marker_scores, paired_stats


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
      (``numpy.random.default_rng(seed).permutation``).
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
    return out
