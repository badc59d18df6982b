"""Checks that an AnnData is usable with a :class:`DatasetSpec`, with messages that say the fix.

The DAG itself (cycles, edges naming unknown concepts) is checked when the
spec is built (:class:`~causcell_bench.datasets.spec.DatasetSpec`); here we
check the data against the spec.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import DataError, MissingConceptError, NotCountsError

# below these the data cannot be benchmarked: refused up front, not scored as nonsense
MIN_GENES = 10  # correlation and top-gene metrics over fewer genes say nothing
MIN_CELLS_PER_VALUE = 2  # the median cells per concept value: below, splits and probes cannot work
_BLOCK = 1 << 24  # values checked at a time: bounds the boolean temporaries on big data


def counts_matrix(adata: AnnData, spec: DatasetSpec) -> Any:
    """The raw-count matrix: ``layers['counts']`` if present, else the spec's ``counts_layer`` (None = X)."""
    if "counts" in adata.layers:
        return adata.layers["counts"]
    if spec.counts_layer is None:
        return adata.X
    if spec.counts_layer in adata.layers:
        return adata.layers[spec.counts_layer]
    raise DataError(
        f"layer {spec.counts_layer!r} with raw counts is missing (layers present: {list(adata.layers)}); "
        "set counts_layer in the dataset spec to the layer that holds counts, or to nothing to use X"
    )


def _value_blocks(x: Any):
    """Yield the stored values of a sparse or dense matrix in bounded blocks."""
    if sp.issparse(x):
        data = x.data
        for s in range(0, data.shape[0], _BLOCK):
            yield data[s:s + _BLOCK]
    elif x is not None:
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        rows = max(1, _BLOCK // max(1, x.shape[1]))
        for s in range(0, x.shape[0], rows):
            yield np.asarray(x[s:s + rows])


def check_counts(x: Any, what: str = "counts", *, require_integer: bool = True) -> None:
    """Raise DataError if ``x`` has NaN/inf, negative or (when required) non-integer values."""
    if x is None:
        raise DataError(f"{what}: the matrix is missing (adata.X is None); store raw counts in X or layers['counts']")
    for block in _value_blocks(x):
        if block.dtype.kind in "iub":
            if block.dtype.kind == "i" and block.size and block.min() < 0:
                raise DataError(f"{what} has negative values; raw counts must be >= 0 (is this log-scaled or centred data?)")
            continue
        if block.dtype.kind not in "f":
            raise DataError(f"{what} has dtype {block.dtype}; raw counts must be numeric")
        if not np.isfinite(block).all():
            raise DataError(f"{what} contains NaN or infinite values; remove or fix those cells/genes first")
        if block.size and block.min() < 0:
            raise DataError(f"{what} has negative values; raw counts must be >= 0 (is this log-scaled or centred data?)")
        if require_integer and not np.array_equal(block, np.round(block)):
            frac = np.array([float(f"{v:.4g}") for v in block[block != np.round(block)][:3]])
            raise NotCountsError(
                f"{what} is not integer-valued (e.g. {frac.tolist()}); the benchmark needs raw counts. "
                "Point counts_layer at the raw-count layer, or set round_counts = true in the dataset's TOML "
                "spec if the values are legitimately non-integer (e.g. volume-normalised MERFISH)",
                frac.tolist(),
            )


def validate_adata(adata: AnnData, spec: DatasetSpec, n_folds: int = 5, *, require_counts: bool = True) -> None:
    """Check ``adata`` against ``spec``; raise :class:`DataError` naming the problem and the fix.

    Checks: non-empty; unique cell and gene names; every concept and fine-label
    column present; no missing concept labels; each concept with >= 2 values;
    at least ``n_folds`` cells; counts finite, non-negative and (if
    ``require_counts``) integer-valued.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataError(f"dataset {spec.name!r} is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    for axis, names, fix in (("cell", adata.obs_names, "obs_names_make_unique"), ("gene", adata.var_names, "var_names_make_unique")):
        if not names.is_unique:
            dup = names[names.duplicated()].unique()[:5].tolist()
            raise DataError(f"duplicated {axis} names in {spec.name!r}, e.g. {dup}; call adata.{fix}() first")
    columns = list(adata.obs.columns)
    for c in spec.concepts:
        if c not in adata.obs.columns:
            raise MissingConceptError(
                f"concept column {c!r} is not in adata.obs of {spec.name!r}; available obs columns: {columns}. "
                "Fix the spec's concepts (or the concepts you passed)", c, columns
            )
    for coarse, fine in spec.fine_labels.items():
        if fine not in adata.obs.columns:
            raise DataError(
                f"fine label column {fine!r} (for {coarse!r}) is not in adata.obs of {spec.name!r}; "
                f"available obs columns: {columns}. Fix or remove fine_labels in the spec"
            )
    for c in spec.concepts + list(spec.fine_labels.values()):
        col = adata.obs[c]
        n_missing = int(pd.isna(col).sum())
        if n_missing:
            raise DataError(f"obs[{c!r}] has {n_missing} missing labels; drop those cells or give them a label")
    for c in spec.concepts:
        labels = adata.obs[c].astype(str)
        blank = int((labels.str.strip() == "").sum())
        if blank:
            raise DataError(f"obs[{c!r}] has {blank} empty or blank labels; give those cells a label or drop them "
                            "(an empty string would otherwise become a value of its own)")
        values = pd.unique(labels)
        if len(values) < 2:
            raise DataError(
                f"concept {c!r} has a single value ({values[0]!r}) in {spec.name!r}; a concept needs at least "
                "two values to disentangle - drop it from concepts"
            )
        per_value = labels.value_counts()
        if per_value.median() < MIN_CELLS_PER_VALUE:
            raise DataError(
                f"concept {c!r} has {len(values)} values for {adata.n_obs} cells (half of its values on a single "
                "cell): no split can keep each value in training and no probe can learn it; use a coarser "
                "label or drop it from concepts"
            )
    if adata.n_vars < MIN_GENES:
        raise DataError(f"{spec.name!r} has {adata.n_vars} genes; the expression metrics need at least {MIN_GENES} "
                        "(correlations and top-gene sets over fewer say nothing); use more genes")
    if adata.n_obs < n_folds:
        raise DataError(f"{spec.name!r} has {adata.n_obs} cells, fewer than the {n_folds} folds; use more cells or fewer folds")
    counts = counts_matrix(adata, spec)
    check_counts(counts, what=f"counts of {spec.name!r}", require_integer=require_counts)
    empty = int((np.asarray(counts.sum(axis=1)).ravel() == 0).sum())
    if empty:
        warnings.warn(f"{spec.name}: {empty} cell(s) have no counts at all; they carry no expression signal and are "
                      "kept as zeros after normalisation; drop them first (scanpy.pp.filter_cells(adata, "
                      "min_counts=1)) unless that is intended", stacklevel=3)
