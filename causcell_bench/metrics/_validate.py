"""Input checks shared by the metrics: every bad input becomes a BenchError that names the fix."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from causcell_bench.errors import BenchError

Matrix = np.ndarray | sp.spmatrix | sp.sparray

#: rows densified at a time when walking a (possibly sparse) matrix
CHUNK_ROWS = 2048


def as_matrix(x: Any, name: str, *, allow_sparse: bool = True) -> np.ndarray | sp.csr_matrix:
    """Validate a 2-D, non-empty, finite numeric matrix; sparse input stays sparse (CSR)."""
    if x is None:
        raise BenchError(f"{name} is missing; pass a (n_cells, n_features) array")
    if sp.issparse(x):
        if not allow_sparse:
            raise BenchError(f"{name} must be a dense array; call .toarray() on small inputs first")
        x = sp.csr_matrix(x)
        data = x.data
    else:
        try:
            x = np.asarray(x)
        except Exception as e:  # ragged lists and the like
            raise BenchError(f"{name} could not be read as a numeric matrix: {e}") from None
        if x.dtype.kind not in "fiub":
            raise BenchError(f"{name} must be numeric, got dtype {x.dtype}")
        data = x
    if x.ndim != 2:
        raise BenchError(f"{name} must be 2-D (n_cells, n_features), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise BenchError(f"{name} is empty (shape {x.shape}); metrics need at least one cell and one feature")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise BenchError(f"{name} contains NaN or inf; fix the method output or drop those cells first")
    return x


def as_labels(y: Any, name: str, n: int | None = None) -> np.ndarray:
    """Validate a 1-D label vector without missing values; return it as an array of str."""
    if y is None:
        raise BenchError(f"{name} is missing; pass one label per cell")
    if not isinstance(y, (pd.Series, pd.Categorical, pd.Index)):
        arr = np.asarray(y, dtype=object)
        if arr.ndim != 1:
            raise BenchError(f"{name} must be 1-D (one label per cell), got shape {arr.shape}")
    s = y if isinstance(y, pd.Series) else pd.Series(y)
    if len(s) == 0:
        raise BenchError(f"{name} is empty; metrics need at least one labelled cell")
    if n is not None and len(s) != n:
        raise BenchError(f"{name} has {len(s)} labels but there are {n} cells; pass one label per cell")
    if s.isna().any():
        raise BenchError(
            f"{name} has {int(s.isna().sum())} missing label(s); drop those cells or fill the labels first"
        )
    return np.asarray(s.astype(str), dtype=str)


def check_same_shape(a: Matrix, b: Matrix, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise BenchError(
            f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; "
            "they must hold the same cells (rows) and genes (columns) in the same order"
        )


def check_rows(x: Matrix, n: int, name: str, what: str) -> None:
    if x.shape[0] != n:
        raise BenchError(f"{name} has {x.shape[0]} rows but {what} has {n}; they must describe the same cells")


def check_columns(obs: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    if not isinstance(obs, pd.DataFrame):
        raise BenchError(f"{name} must be a pandas DataFrame (e.g. adata.obs), got {type(obs).__name__}")
    missing = [c for c in columns if c not in obs.columns]
    if missing:
        raise BenchError(f"column(s) {missing} not in {name}; available: {list(obs.columns)}")


def check_concepts(concepts: Sequence[str]) -> list[str]:
    if isinstance(concepts, str):
        raise BenchError(f"concepts must be a list of column names, not the string {concepts!r}")
    concepts = [str(c) for c in concepts]
    if not concepts:
        raise BenchError("concepts is empty; name at least one concept column")
    if len(set(concepts)) != len(concepts):
        raise BenchError(f"concepts has duplicates: {concepts}")
    return concepts


def check_gene_names(gene_names: Sequence[str] | None, n_genes: int) -> None:
    if gene_names is not None and len(gene_names) != n_genes:
        raise BenchError(
            f"gene_names has {len(gene_names)} names but the data has {n_genes} genes; pass adata.var_names"
        )


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BenchError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def dense(x: Matrix, rows: Any = slice(None), dtype: type = np.float64) -> np.ndarray:
    """Densify only the selected rows (a slice or an index array)."""
    block = x[rows]
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=dtype)


def row_chunks(n: int, size: int = CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def subsample(n: int, max_n: int | None, seed: int) -> np.ndarray | None:
    """Sorted seeded subsample of ``range(n)`` when ``n > max_n``, else None (use all)."""
    if max_n is None or n <= max_n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_n, replace=False))


def as_label_table(factors: Any, n: int, name: str) -> dict[str, np.ndarray]:
    """Factors as {name: str labels}: a DataFrame, a mapping, or an (n, K) array of labels."""
    if isinstance(factors, pd.DataFrame):
        items = {str(c): factors[c] for c in factors.columns}
    elif isinstance(factors, Mapping):
        items = {str(k): v for k, v in factors.items()}
    else:
        arr = np.asarray(factors)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise BenchError(f"{name} must be a DataFrame, a mapping or a 2-D array, got shape {arr.shape}")
        items = {f"factor{k}": arr[:, k] for k in range(arr.shape[1])}
    if not items:
        raise BenchError(f"{name} holds no factors; pass at least one label column")
    return {k: as_labels(v, f"{name}[{k!r}]", n) for k, v in items.items()}
