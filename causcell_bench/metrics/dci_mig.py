"""Standard disentanglement scores from the ML literature, for categorical concept labels.

- DCI: Eastwood & Williams, "A framework for the quantitative evaluation of disentangled
  representations", ICLR 2018. The importance matrix R (code dims x factors) comes from a tree
  ensemble per factor (extremely randomised trees considering every dim at each split, impurity
  importances: random feature subsets would force splits on irrelevant dims and smear importance
  over them, so a perfectly factorised code could not reach D = 1; extra-trees rather than a
  random forest because they are ~10x faster at equal scores); D and C are 1 - entropy of R's rows / columns
  (log base K / D), D weighted by each dim's share of total importance; I is the forests' mean
  held-out accuracy.
- MIG: Chen et al., "Isolating sources of disentanglement in VAEs", NeurIPS 2018. Each code dim is
  discretised into equal-frequency bins; per factor, the gap between the two largest mutual
  informations, divided by the factor's entropy, averaged over factors. MIG assumes one scalar
  code per factor, so multi-dimensional per-concept embeddings score low by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier

from causcell_bench.errors import BenchError
from causcell_bench.metrics._validate import as_label_table, as_matrix, check_positive_int, subsample

DCI_MAX_TRAIN_CELLS = 10_000
DCI_TREES = 50
MIG_BINS = 20


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of a row-stochastic matrix, in log base ``base`` (0 * log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1) / np.log(base)


def _disentanglement(r: np.ndarray) -> float:
    """D: 1 - entropy (base = number of factors) of each dim's importance over the factors, dims
    weighted by their share of the total importance. ``r`` non-negative, (dims, factors)."""
    row = r.sum(axis=1)
    used = row > 0
    if r.shape[1] < 2 or not used.any():
        return float("nan")  # nothing to disentangle from, or no importance at all
    d_i = 1.0 - _entropy_rows(r[used] / row[used, None], r.shape[1])
    return float(np.sum(row[used] / row[used].sum() * d_i))


def dci_from_importance(r: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) from an importance matrix ``r`` of shape (dims, factors)."""
    r = np.abs(np.asarray(r, dtype=np.float64))
    n_dims, n_factors = r.shape
    if r.sum() <= 0:
        return float("nan"), float("nan")
    d = _disentanglement(r)
    col = r.sum(axis=0)
    used = col > 0
    if n_dims < 2:
        c = 1.0  # one code dimension is trivially complete
    else:
        p = (r[:, used] / col[used]).T
        c = float(np.mean(1.0 - _entropy_rows(p, n_dims)))
    return d, c


def dci(
    z: Any,
    factors: Any,
    *,
    z_test: Any = None,
    factors_test: Any = None,
    seed: int = 0,
    max_train_cells: int | None = DCI_MAX_TRAIN_CELLS,
    n_estimators: int = DCI_TREES,
) -> dict[str, float]:
    """DCI scores ``{"d", "c", "i"}`` of codes ``z`` for categorical ``factors`` (see :func:`dci_importance`)."""
    out = dci_importance(z, factors, z_test=z_test, factors_test=factors_test, seed=seed,
                         max_train_cells=max_train_cells, n_estimators=n_estimators)
    return {k: out[k] for k in ("d", "c", "i")}


def dci_disentanglement_dag(
    r: np.ndarray, dim_owner: Sequence[str | None], factors: Sequence[str], ancestors: Mapping[str, Sequence[str]]
) -> float:
    """DCI disentanglement where a dimension owned by concept c is not charged for importance on c's
    ancestors: each row of ``r`` keeps only the factors that are not ancestors of its owner (all
    factors for an unowned dimension), entropies in log base len(factors) as in D, rows weighted by
    their remaining importance. A concept whose dimensions only carry itself and its parents scores 1.
    """
    r = np.abs(np.asarray(r, dtype=np.float64))
    if r.ndim != 2 or r.shape[0] != len(dim_owner) or r.shape[1] != len(factors):
        raise BenchError(f"importance matrix of shape {r.shape} does not match {len(dim_owner)} dims "
                         f"x {len(factors)} factors")
    keep = np.ones_like(r, dtype=bool)
    for i, owner in enumerate(dim_owner):
        if owner is not None:
            anc = set(ancestors.get(owner, ()))
            keep[i] = [f not in anc for f in factors]
    return _disentanglement(np.where(keep, r, 0.0))


def dci_importance(
    z: Any,
    factors: Any,
    *,
    z_test: Any = None,
    factors_test: Any = None,
    seed: int = 0,
    max_train_cells: int | None = DCI_MAX_TRAIN_CELLS,
    n_estimators: int = DCI_TREES,
) -> dict[str, Any]:
    """DCI scores ``{"d", "c", "i"}`` of codes ``z`` for categorical ``factors``, plus the importance
    matrix (``"importance"``: dims x used factors) and the names of the used factors (``"factors"``).

    The forests are fit on (``z``, ``factors``) and scored on (``z_test``, ``factors_test``); without a
    test set, a seeded 70/30 split of the given cells is used. Factors with fewer than two training
    labels are skipped; with no usable factor all scores are NaN. D is NaN for a single factor.
    """
    z = as_matrix(z, "z", allow_sparse=False)
    fac = as_label_table(factors, z.shape[0], "factors")
    if (z_test is None) != (factors_test is None):
        raise BenchError("pass both z_test and factors_test, or neither")
    if z_test is None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(z.shape[0])
        n_tr = max(1, round(0.7 * z.shape[0]))
        if n_tr >= z.shape[0]:
            raise BenchError("dci needs at least two cells to split into train and test; pass z_test")
        tr, te = np.sort(order[:n_tr]), np.sort(order[n_tr:])
        zt, ft = z[te], {k: v[te] for k, v in fac.items()}
        z, fac = z[tr], {k: v[tr] for k, v in fac.items()}
    else:
        zt = as_matrix(z_test, "z_test", allow_sparse=False)
        ft = as_label_table(factors_test, zt.shape[0], "factors_test")
        if zt.shape[1] != z.shape[1]:
            raise BenchError(f"z has {z.shape[1]} dimensions but z_test has {zt.shape[1]}")
        if set(ft) != set(fac):
            raise BenchError(f"factors {sorted(fac)} and factors_test {sorted(ft)} name different factors")
    check_positive_int(n_estimators, "n_estimators")
    idx = subsample(z.shape[0], max_train_cells, seed)
    if idx is not None:
        z, fac = z[idx], {k: v[idx] for k, v in fac.items()}

    columns, accs, names = [], [], []
    for name, y in fac.items():
        if np.unique(y).size < 2:
            continue
        names.append(name)
        forest = ExtraTreesClassifier(
            n_estimators=n_estimators, min_samples_leaf=5, max_features=None, random_state=seed, n_jobs=1
        )
        forest.fit(z, y)
        columns.append(forest.feature_importances_)
        accs.append(float(np.mean(forest.predict(zt) == ft[name])))
    if not columns:
        return {"d": float("nan"), "c": float("nan"), "i": float("nan"), "importance": np.zeros((z.shape[1], 0)),
                "factors": []}
    r = np.stack(columns, axis=1)
    d, c = dci_from_importance(r)
    return {"d": d, "c": c, "i": float(np.mean(accs)), "importance": r, "factors": names}


def _discretise(col: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.unique(np.quantile(col, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, col, side="right")


def _mutual_info(a: np.ndarray, b: np.ndarray, nb: int) -> float:
    """MI (nats) of two non-negative integer codes, ``b < nb``."""
    joint = np.bincount(a * nb + b, minlength=(a.max() + 1) * nb).reshape(-1, nb).astype(np.float64)
    joint /= joint.sum()
    pa = joint.sum(1, keepdims=True)
    pb = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def mig(z: Any, factors: Any, *, n_bins: int = MIG_BINS) -> float:
    """Mutual information gap of codes ``z`` (cells x dims) for categorical ``factors``.

    Factors with a single label (zero entropy) are skipped; NaN when none is left. With a single
    code dimension the second-largest MI is taken as 0.
    """
    z = as_matrix(z, "z", allow_sparse=False)
    fac = as_label_table(factors, z.shape[0], "factors")
    check_positive_int(n_bins, "n_bins", 2)
    codes = [_discretise(z[:, j].astype(np.float64), n_bins) for j in range(z.shape[1])]
    gaps = []
    for y in fac.values():
        _, f = np.unique(y, return_inverse=True)
        p = np.bincount(f) / f.size
        h = float(-np.sum(p * np.log(p)))
        if h <= 0:
            continue
        mi = np.sort([_mutual_info(c, f, int(f.max()) + 1) for c in codes])[::-1]
        second = mi[1] if mi.size > 1 else 0.0
        gaps.append((mi[0] - second) / h)
    return float(np.mean(gaps)) if gaps else float("nan")
