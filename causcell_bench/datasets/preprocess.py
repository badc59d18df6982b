"""Preprocessing of one train/test split into the method data contract.

Output (see :mod:`causcell_bench.methods.base`): ``layers["counts"]`` raw counts
of the kept genes, ``X = log1p(counts / library * 1e4)`` as float32 CSR where
the library is the cell's total over the kept genes (so X is exactly derivable
from the counts layer), concept columns Categorical with the same categories in
train and test. Highly variable genes are chosen on the TRAINING cells only
(scanpy, flavor ``"seurat"`` on log1p CP10k: no extra packages, deterministic),
so nothing about the test cells leaks into the gene set.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.datasets.validate import counts_matrix
from causcell_bench.errors import DataError
from causcell_bench.threads import keep_thread_counts

HVG_FLAVOR = "seurat"


def log_cp10k(counts: Any) -> sp.csr_matrix:
    """log1p(counts / row total * 1e4) as float32 CSR; all-zero rows stay zero."""
    x = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    totals = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0).astype(np.float32)
    x.data *= np.repeat(scale, np.diff(x.indptr))
    np.log1p(x.data, out=x.data)
    return x


def select_hvg(counts: Any, n_top: int) -> np.ndarray:
    """Sorted column indices of the ``n_top`` most variable genes of ``counts`` (training cells only)."""
    import scanpy as sc

    tmp = AnnData(X=log_cp10k(counts))
    try:
        # scanpy's numba kernels resize the shared OpenMP team (torch's too): keep the caller's thread budget
        with keep_thread_counts():
            df = sc.pp.highly_variable_genes(tmp, n_top_genes=int(n_top), flavor=HVG_FLAVOR, inplace=False)
    except Exception as e:  # noqa: BLE001 - scanpy raises bare ValueErrors on degenerate data
        raise DataError(f"highly variable gene selection failed on the training cells ({e}); try n_hvg=None") from None
    idx = np.flatnonzero(df["highly_variable"].to_numpy())
    if idx.size == 0:
        raise DataError("no highly variable genes found in the training cells (all genes constant?); use n_hvg=None")
    return idx


def _union_categories(train: pd.Series, test: pd.Series) -> list[str]:
    def cats(s: pd.Series) -> list[str]:
        if isinstance(s.dtype, pd.CategoricalDtype):
            return [str(v) for v in s.cat.categories]
        return sorted(pd.unique(s.astype(str)))

    return list(dict.fromkeys(cats(train) + cats(test)))


def _build(src: AnnData, counts: Any, genes: np.ndarray | None, obs: pd.DataFrame, meta: dict[str, Any]) -> AnnData:
    if genes is not None:
        counts = counts[:, genes]
    if sp.issparse(counts):
        counts = sp.csr_matrix(counts, copy=True)
    else:
        counts = np.array(counts, copy=True)
    var = src.var.iloc[genes].copy() if genes is not None else src.var.copy()
    out = AnnData(X=log_cp10k(counts), obs=obs, var=var)
    out.layers["counts"] = counts
    for k, v in src.obsm.items():
        out.obsm[k] = v.copy() if hasattr(v, "copy") else v
    out.uns.update(copy.deepcopy(dict(src.uns)))
    out.uns["preprocess"] = meta
    return out


def preprocess(
    train: AnnData, test: AnnData, spec: DatasetSpec, n_hvg: int | None = None
) -> tuple[AnnData, AnnData]:
    """Return new (train, test) AnnData obeying the method data contract.

    ``n_hvg`` (default ``spec.n_hvg``) highly variable genes are selected on
    ``train`` only; ``None`` or a number >= the gene count keeps every gene.
    Concept and fine-label columns become Categorical with categories taken from
    the union of train and test, so integer codes agree between the two.
    """
    if list(train.var_names) != list(test.var_names):
        raise DataError("train and test have different genes; split one AnnData into train and test instead")
    ctr, cte = counts_matrix(train, spec), counts_matrix(test, spec)
    if train.n_obs == 0:
        raise DataError("the training part has no cells")
    n_hvg = spec.n_hvg if n_hvg is None else n_hvg
    if n_hvg is not None and int(n_hvg) < 1:
        raise DataError(f"n_hvg={n_hvg}: give a positive number of genes, or None to keep all")
    genes = None if n_hvg is None or int(n_hvg) >= train.n_vars else select_hvg(ctr, int(n_hvg))

    obs_tr, obs_te = train.obs.copy(), test.obs.copy()
    for c in dict.fromkeys(list(spec.concepts) + list(spec.fine_labels.values())):
        if c not in obs_tr.columns or c not in obs_te.columns:
            raise DataError(f"column {c!r} is missing from the train or test obs; available: {list(train.obs.columns)}")
        cats = _union_categories(obs_tr[c], obs_te[c])
        obs_tr[c] = pd.Categorical(obs_tr[c].astype(str), categories=cats)
        obs_te[c] = pd.Categorical(obs_te[c].astype(str), categories=cats)

    meta = {
        "hvg_flavor": HVG_FLAVOR if genes is not None else "none",
        "n_hvg": int(genes.size) if genes is not None else int(train.n_vars),
        "n_train_cells": int(train.n_obs),
    }
    return _build(train, ctr, genes, obs_tr, meta), _build(test, cte, genes, obs_te, meta)
