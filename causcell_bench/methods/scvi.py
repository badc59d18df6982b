"""scVI (Lopez et al., Nat Methods 15, 1053, 2018) through scvi-tools' own `SCVI` model.

A generative model without disentanglement: one shared latent serves as the
embedding of every concept (the probe then measures informativeness, not
disentanglement), reconstruction decodes each cell's own latent, and there is
no counterfactual.

Reconstruction applies X's normalisation to scVI's own likelihood (ZINB by default), in
expectation: given a posterior sample of z, counts with mean = decoded proportions x the cell's
observed library (its total over the kept genes), the decoded dispersion and dropout, are
divided by their expected total, x 1e4, log1p'd, and averaged over the ZINB (computed, not
sampled). log1p(proportions x 1e4) instead ignored the dropout and the log-of-mean gap and
sat ~2x above X on pbmc68k.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError
from causcell_bench.methods.base import (
    Capabilities,
    ConceptEmbeddings,
    Method,
    counts_of,
    lightning_accelerator,
    lightning_progress,
    quiet_lightning,
)
from causcell_bench.models.utils import expected_log1p_cp10k


def _counts_adata(adata: AnnData) -> AnnData:
    """A lean AnnData with only what scVI reads: the counts layer."""
    counts = counts_of(adata)
    out = AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    out.layers["counts"] = out.X
    return out


class SCVI(Method):
    name = "scVI"
    capabilities = Capabilities(embedding="shared", unexplained=False, reconstruct=True, counterfactual=False)
    preload_modules = ("scvi",)
    presets = {
        "quick": {"n_latent": 10, "n_hidden": 128, "n_layers": 1, "max_epochs": 60, "batch_size": 128, "lr": 1e-3},
        # scvi-tools' defaults; its own heuristic picks ~400 epochs for small data
        "paper": {"n_latent": 10, "n_hidden": 128, "n_layers": 1, "max_epochs": 400, "batch_size": 128, "lr": 1e-3},
    }
    # 40 epochs (0.4 s): with fewer the ZINB is still untrained and its reconstructions sit well below X
    test_params: ClassVar[dict[str, Any]] = {"max_epochs": 40}

    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        import scvi

        quiet_lightning()
        self._remember(train, spec)
        scvi.settings.seed = seed
        data = _counts_adata(train)
        scvi.model.SCVI.setup_anndata(data, layer="counts")
        p = self.params
        self.model_ = scvi.model.SCVI(data, n_latent=p["n_latent"], n_hidden=p["n_hidden"], n_layers=p["n_layers"])
        self.model_.train(
            max_epochs=p["max_epochs"],
            batch_size=p["batch_size"],
            accelerator=lightning_accelerator(self.device),
            plan_kwargs={"lr": p["lr"]},
            enable_progress_bar=False,
            logger=False,
            enable_checkpointing=False,
            callbacks=lightning_progress(self),
        )

    def _prepared(self, adata: AnnData) -> AnnData:
        self._check_query(adata)
        data = _counts_adata(adata)
        self.model_._validate_anndata(data)  # registers the query against the training setup
        return data

    def embed(self, adata: AnnData) -> ConceptEmbeddings:
        data = self._prepared(adata)
        z = np.asarray(self.model_.get_latent_representation(data, give_mean=True), dtype=np.float32)
        assert self.spec_ is not None
        return {c: z for c in self.spec_.concepts}

    def generate(self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int) -> np.ndarray:
        if do:
            raise NotImplementedError("scVI has no counterfactual generation (no concept structure in its latent)")
        import scvi

        data = self._prepared(adata)
        scvi.settings.seed = seed  # the decoder input is a posterior sample: fix it
        # NB means here are proportions x the observed library (scVI's default use_observed_lib_size)
        lik = self.model_.get_likelihood_parameters(data, n_samples=1)
        return expected_log1p_cp10k(lik["mean"], lik.get("dispersions"), zi_prob=lik.get("dropout"))

    # scvi-tools saves the torch module; our wrapper keeps the benchmark state beside it
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model_.save(str(path / "scvi_model"), overwrite=True, save_anndata=False)
        state = {
            "preset": self.preset, "device": self.device, "params": self.params,
            "spec": self.spec_.model_dump() if self.spec_ else None,
            "var_names": self.var_names_, "categories": self.categories_,
        }
        (path / "adapter.json").write_text(json.dumps(state))

    @classmethod
    def load(cls, path: str | Path) -> SCVI:
        import scvi

        quiet_lightning()
        path = Path(path)
        if not (path / "adapter.json").is_file():
            raise BenchError(f"no saved scVI model in {path} (expected adapter.json and scvi_model/)")
        state = json.loads((path / "adapter.json").read_text())
        self = cls(preset=state["preset"], device=state["device"], **state["params"])
        self.spec_ = DatasetSpec.model_validate(state["spec"])
        self.var_names_, self.categories_ = state["var_names"], state["categories"]
        # scvi-tools needs an AnnData to rebuild the model: one cell with the training genes suffices
        # (all-zero would be mistaken for scvi's "minified" data and refused)
        stub = AnnData(X=sp.csr_matrix(np.ones((1, len(self.var_names_)), dtype=np.float32)))
        stub.var_names = self.var_names_
        stub.layers["counts"] = stub.X
        scvi.model.SCVI.setup_anndata(stub, layer="counts")
        self.model_ = scvi.model.SCVI.load(str(path / "scvi_model"), adata=stub, accelerator=lightning_accelerator(self.device))
        return self
