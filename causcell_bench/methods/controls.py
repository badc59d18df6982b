"""Positive and negative controls that anchor every metric (as Open Problems does).

Every real method should land between them; a metric where one does not is a
bug to investigate (docs/methods.md, "positive_control" and "negative_control").
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.methods.base import UNEXPLAINED, Capabilities, ConceptEmbeddings, Method, dense_rows


class PositiveControl(Method):
    """The best a method could do: one-hot labels as embeddings, the test data itself as reconstruction."""

    name = "positive_control"
    kind = "control"
    capabilities = Capabilities(embedding="per_concept", unexplained=False, reconstruct=True, counterfactual=False,
                                reconstruction_is_input=True)
    presets = {"quick": {}, "paper": {}}

    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        self._remember(train, spec)

    def embed(self, adata: AnnData) -> ConceptEmbeddings:
        self._check_query(adata)
        assert self.categories_ is not None and self.spec_ is not None
        out = {}
        for c in self.spec_.concepts:
            codes = self._codes(adata, c)
            onehot = np.zeros((adata.n_obs, len(self.categories_[c])), dtype=np.float32)
            seen = codes >= 0
            onehot[np.flatnonzero(seen), codes[seen]] = 1.0
            out[c] = onehot
        return out

    def generate(self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int) -> np.ndarray:
        if do:
            raise NotImplementedError("positive_control has no counterfactuals: it only knows the observed cells")
        self._check_query(adata)
        return dense_rows(adata.X, slice(None))


class NegativeControl(Method):
    """No information: random embeddings, random training cells as "reconstructions",
    and the intervention ignored ("counterfactuals" equal the reconstructions).

    Random training cells are plausible but unpaired cells, so the control
    separates "looks like data" from "reconstructs this cell"; ignoring ``do``
    gives a predicted effect of zero, the no-information answer to "what changes".
    """

    name = "negative_control"
    kind = "control"
    capabilities = Capabilities(embedding="per_concept", unexplained=True, reconstruct=True, counterfactual=True)
    presets = {"quick": {"dim": 8, "pool": 2000}, "paper": {"dim": 8, "pool": 2000}}

    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        self._remember(train, spec)
        rng = np.random.default_rng(seed)
        # a bounded pool of training cells keeps the saved control small
        idx = np.sort(rng.choice(train.n_obs, size=min(self.params["pool"], train.n_obs), replace=False))
        self.pool_ = dense_rows(train.X, idx)
        self.seed_ = seed

    def embed(self, adata: AnnData) -> ConceptEmbeddings:
        self._check_query(adata)
        assert self.spec_ is not None
        keys = [*self.spec_.concepts, UNEXPLAINED]
        width = len(keys) * self.params["dim"]
        # seeded per cell name: a cell gets the same vectors whatever batch it comes in
        z = np.stack([np.random.default_rng([self.seed_, h]).normal(size=width) for h in _cell_hashes(adata)])
        z = z.astype(np.float32).reshape(adata.n_obs, len(keys), self.params["dim"])
        return {k: z[:, i] for i, k in enumerate(keys)}

    def generate(self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int) -> np.ndarray:
        self._check_query(adata, do)
        # the random partner of a cell depends on its name and the seed only, not on the batch
        idx = (_cell_hashes(adata) + np.uint64(seed) * np.uint64(2654435761)) % np.uint64(self.pool_.shape[0])
        return self.pool_[idx.astype(np.int64)].copy()


def _cell_hashes(adata: AnnData) -> np.ndarray:
    return np.array([zlib.crc32(str(n).encode()) for n in adata.obs_names], dtype=np.uint64)
