"""Reference methods: the field's simple baselines, shown on the leaderboard but not ranked.

Recent perturbation benchmarks (PerturBench, scPerturBench, "Diversity by design")
found that a training-mean or an additive-shift predictor often matches deep
models. A model that does not beat these has learned nothing beyond label means:

- ``group_mean``: a cell is predicted as the training mean of its concept combination;
  an unseen combination gets the additive main-effects model of the concepts.
- ``additive_shift``: a cell is kept as it is; ``do(c = v)`` adds mean(v) - mean(current).
- ``no_change``: every output is the cell itself (zero predicted effect).

All work in X's log1p(CP10k) space, never densify the whole training X, and save
only per-combination means (not the training cells).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError
from causcell_bench.methods.base import Capabilities, Method, dense_rows

_CAPS = Capabilities(embedding="none", unexplained=False, reconstruct=True, counterfactual=True, uses_dag=False)
# additive_shift and no_change reconstruct a cell as itself: only their counterfactuals predict anything
_INPUT_CAPS = dataclasses.replace(_CAPS, reconstruction_is_input=True)
_BLOCK = 4096  # rows per block: bounds the dense (block x genes) temporaries of the shifts
_MAX_KEY = 2**62  # mixed-radix combination keys must fit in int64


class _ComboMeans(Method):
    """Shared fit: mean expression per observed concept combination and per concept value."""

    def __init__(self, preset: str = "quick", device: str = "auto", **params: Any) -> None:
        super().__init__(preset, device, **params)
        m = self.params.get("min_cells", 1)
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise BenchError(f"{self.name}: min_cells={m!r} is not valid; give an integer >= 1")

    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        self._remember(train, spec)
        assert self.categories_ is not None
        # radix n+1: code -1 (a value unseen in training) gets its own digit and never matches a group
        radix = [len(self.categories_[c]) + 1 for c in spec.concepts]
        if int(np.prod([float(r) for r in radix])) >= _MAX_KEY:
            raise BenchError(
                f"{self.name}: the concepts {spec.concepts} have too many value combinations to index; "
                "use fewer concepts or merge rare values"
            )
        self.mult_ = np.cumprod([1, *radix[:-1]]).astype(np.int64)
        codes = self._code_matrix(train)
        if (codes < 0).any():  # categories_ come from train itself, so only NaN labels land here
            raise BenchError(f"{self.name}: training cells have missing concept labels; drop or label them first")
        keys = self._keys(codes)
        uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        n = train.n_obs
        # group sums as one sparse (groups x cells) @ X product: sparse-aware, no densified X
        member = sp.csr_matrix((np.ones(n), (inv.ravel(), np.arange(n))), shape=(uniq.size, n))
        sums = member @ train.X
        sums = np.asarray(sums.toarray() if sp.issparse(sums) else sums, dtype=np.float64)
        counts = np.bincount(inv.ravel(), minlength=uniq.size)
        self.group_keys_ = uniq.astype(np.int64)
        self.group_codes_ = codes[first].astype(np.int32)
        self.group_counts_ = counts.astype(np.int64)
        self.group_means_ = (sums / counts[:, None]).astype(np.float32)
        # per concept value: mean over every training cell with that value (others' labels pooled)
        self.value_means_: list[np.ndarray] = []
        for j, c in enumerate(spec.concepts):
            onehot = np.eye(len(self.categories_[c]))[self.group_codes_[:, j]]
            n_val = onehot.T @ counts
            self.value_means_.append(((onehot.T @ sums) / n_val[:, None]).astype(np.float32))
        self.n_genes_ = train.n_vars

    # --- helpers ---------------------------------------------------------
    def _code_matrix(self, adata: AnnData) -> np.ndarray:
        """(cells, concepts) codes under the fit-time categories; -1 = value unseen in training."""
        assert self.spec_ is not None and self.categories_ is not None
        cols = [
            pd.Categorical(adata.obs[c].astype(str), categories=self.categories_[c]).codes.astype(np.int64)
            for c in self.spec_.concepts
        ]
        return np.stack(cols, axis=1) if cols else np.zeros((adata.n_obs, 0), dtype=np.int64)

    def _keys(self, codes: np.ndarray) -> np.ndarray:
        """One int64 per row: the combination's mixed-radix number (codes shifted by 1 so -1 is a digit)."""
        return codes @ self.mult_ + self.mult_.sum()

    def _lookup(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training group index (-1 = combination not seen) and training cell count of each row of ``codes``."""
        keys = self._keys(codes)
        pos = np.clip(np.searchsorted(self.group_keys_, keys), 0, self.group_keys_.size - 1)
        found = self.group_keys_[pos] == keys
        return np.where(found, pos, -1), np.where(found, self.group_counts_[pos], 0)

    def _apply_do(self, codes: np.ndarray, concept: str, value: str) -> None:
        assert self.spec_ is not None and self.categories_ is not None
        codes[:, self.spec_.concepts.index(concept)] = self.categories_[concept].index(str(value))

    def _refuse_unseen(self, adata: AnnData, codes: np.ndarray, concepts: list[str], why: str) -> None:
        assert self.spec_ is not None and self.categories_ is not None
        for c in concepts:
            bad = codes[:, self.spec_.concepts.index(c)] < 0
            if bad.any():
                unseen = sorted(set(adata.obs[c].astype(str).to_numpy()[bad]))
                raise BenchError(
                    f"{self.name} has no training mean for {c} = {unseen[:5]} ({why}); seen values are "
                    f"{self.categories_[c]}: set {c} with do= or drop those cells"
                )


class GroupMean(_ComboMeans):
    """Each cell predicted as the training mean of its concept combination.

    A combination with fewer than ``min_cells`` training cells (never seen, in OOD)
    gets the additive main-effects model: intercept + one effect per concept value,
    fitted by least squares on one-hot concept indicators (cell-weighted, i.e. OLS
    over cells). Least squares rather than averaging marginal means because concepts
    are correlated (celltype depends on age): a marginal age mean also carries the
    celltype mix of that age, and summing marginal deviations counts that twice.
    """

    name = "group_mean"
    kind = "reference"
    capabilities = _CAPS
    presets = {"quick": {"min_cells": 1}, "paper": {"min_cells": 1}}

    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        super().fit(train, spec, seed=seed)
        design = self._design(self.group_codes_)
        # OLS over cells == least squares over group means weighted by group size (same design per group)
        w = np.sqrt(self.group_counts_.astype(np.float64))[:, None]
        # lstsq's minimum-norm solution handles the one-hot/intercept collinearity; estimable sums are unique
        beta, *_ = np.linalg.lstsq(design * w, self.group_means_.astype(np.float64) * w, rcond=None)
        self.effects_ = beta.astype(np.float32)

    def _design(self, codes: np.ndarray) -> np.ndarray:
        """Intercept plus one-hot indicators of every concept value (rows = combinations)."""
        assert self.spec_ is not None and self.categories_ is not None
        blocks = [np.ones((codes.shape[0], 1))]
        blocks += [np.eye(len(self.categories_[c]))[codes[:, j]] for j, c in enumerate(self.spec_.concepts)]
        return np.hstack(blocks)

    def generate(self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int) -> np.ndarray:
        self._check_query(adata, do)
        assert self.spec_ is not None
        codes = self._code_matrix(adata)
        for c, v in (do or {}).items():
            self._apply_do(codes, c, v)
        self._refuse_unseen(adata, codes, self.spec_.concepts, "value never seen in training")
        # one prediction per distinct combination, then broadcast to cells
        _, first, inv = np.unique(self._keys(codes), return_index=True, return_inverse=True)
        uniq = codes[first]
        idx, n = self._lookup(uniq)
        table = np.empty((uniq.shape[0], self.n_genes_), dtype=np.float32)
        seen = n >= self.params["min_cells"]
        table[seen] = self.group_means_[idx[seen]]
        if (~seen).any():
            table[~seen] = self._design(uniq[~seen]) @ self.effects_
        np.clip(table, 0.0, None, out=table)  # log1p space is non-negative
        return table[inv.ravel()]


class AdditiveShift(_ComboMeans):
    """The cell itself; ``do(c = v)`` adds mean(c = v) - mean(c = current) to it.

    Means are over training cells sharing the cell's other concept labels when both
    groups have at least ``min_cells`` cells (a local, confounder-matched shift), else
    over all training cells with those values. Several interventions apply in turn,
    in the spec's concept order, each seeing the labels set by the previous ones.
    """

    name = "additive_shift"
    kind = "reference"
    capabilities = _INPUT_CAPS
    presets = {"quick": {"min_cells": 5}, "paper": {"min_cells": 5}}

    def generate(self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int) -> np.ndarray:
        self._check_query(adata, do)
        assert self.spec_ is not None and self.categories_ is not None
        out = dense_rows(adata.X, slice(None))
        if not do:
            return out
        codes = self._code_matrix(adata)
        for j, c in enumerate(self.spec_.concepts):
            if c not in do:
                continue
            self._refuse_unseen(adata, codes, [c], "its mean cannot be subtracted")
            cur = codes[:, j].copy()
            target = codes.copy()
            target[:, j] = self.categories_[c].index(str(do[c]))
            i_cur, n_cur = self._lookup(codes)
            i_tgt, n_tgt = self._lookup(target)
            local = (n_cur >= self.params["min_cells"]) & (n_tgt >= self.params["min_cells"])
            pooled = self.value_means_[j]
            t = target[0, j] if target.shape[0] else 0
            for start in range(0, out.shape[0], _BLOCK):
                b = slice(start, start + _BLOCK)
                loc = local[b]
                shift = np.where(
                    loc[:, None],
                    self.group_means_[np.where(loc, i_tgt[b], 0)] - self.group_means_[np.where(loc, i_cur[b], 0)],
                    pooled[t][None, :] - pooled[cur[b]],
                )
                out[b] += shift
            codes = target
        np.clip(out, 0.0, None, out=out)  # log1p space is non-negative
        return out


class NoChange(Method):
    """Every output is the cell itself: reconstruction is exact, every predicted effect is zero."""

    name = "no_change"
    kind = "reference"
    capabilities = _INPUT_CAPS
    presets = {"quick": {}, "paper": {}}

    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        self._remember(train, spec)

    def generate(self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int) -> np.ndarray:
        self._check_query(adata, do)  # a bad do() is still an error, though it is then ignored
        return dense_rows(adata.X, slice(None))
