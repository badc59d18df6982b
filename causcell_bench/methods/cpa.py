"""CPA adapter (Lotfollahi et al., Mol Syst Biol 19, e11517, 2023), clean-room.

Model code: :mod:`causcell_bench.models.cpa` (``cpa-tools`` pins torch <= 2.0.1
and Python < 3.11, so it cannot run here). One concept is the perturbation
(``spec.perturbation``, default the first concept); the others are covariates.
The data carry no doses, so every cell has dose 1.

Benchmark outputs (the method card in docs/methods.md):

- embedding (label lookup, flagged): per concept the learned embedding of the
  cell's label (the dose-scaled perturbation embedding, or the covariate
  embedding) — identical for every cell sharing a label; ``"unexplained"`` is
  z_basal, the label-free basal state;
- reconstruction: decode z_basal + the embeddings of the cell's own labels to proportions;
  return X's normalisation of the NB counts with mean = proportions x the cell's own library
  (its total over the kept genes) — divided by that library, x 1e4, log1p'd — in expectation
  over the NB (computed, not sampled; log1p of the mean would overshoot X on sparse data);
- counterfactual: swap the intervened concepts' label embeddings, keep z_basal, decode.

``history_`` holds per-epoch reconstruction loss and adversary accuracy per
concept (``adv_acc`` keyed by concept name), and ``val_recon`` when early stopping
held cells out; ``convergence_["training"]`` says where training stopped and why.
Inference is deterministic (``seed`` unused).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError
from causcell_bench.methods.base import (
    UNEXPLAINED,
    Capabilities,
    ConceptEmbeddings,
    Method,
    counts_of,
    dense_rows,
)
from causcell_bench.models.cpa import CPANet, decode_log1p_cp10k, encode_basal, label_embeddings, train_cpa
from causcell_bench.models.utils import no_stopping_summary, plan_early_stopping, seed_everything, set_cpu_threads

_PAPER: dict[str, Any] = {
    "latent_dim": 64,
    "hidden": 256,
    "n_layers": 3,
    "adv_hidden": 128,
    "adv_layers": 2,
    "lr_ae": 5e-4,
    "lr_adv": 3e-4,
    "weight_decay": 1e-6,
    "reg_adv": 5.0,
    "pen_adv": 1.0,
    "adv_steps": 3,
    "adv_objective": "negative_ce",  # the paper's; "confusion" is the bounded alternative
    "adv_warmup": 10,
    "batch_size": 128,
    "epochs": 100,  # with early stopping: the cap
    # early stopping on a held-out tenth's reconstruction NLL (off in the paper preset: a fixed budget)
    "early_stopping": False,
    "val_fraction": 0.1,
    "patience": 10,  # epochs without improvement
    "min_delta": 0.0,  # relative
}


class CPA(Method):
    """Basal latent + additive label embeddings with adversarial label removal."""

    name: ClassVar[str] = "CPA"
    capabilities: ClassVar[Capabilities] = Capabilities(
        embedding="label_lookup", unexplained=True, reconstruct=True, counterfactual=True, uses_dag=False
    )
    # 0 warm-up epochs is valid: the adversary trains from the first epoch
    param_bounds: ClassVar[dict[str, tuple[float | None, float | None]]] = {"adv_warmup": (0, None)}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU demo/CI: narrower network; faster-learning adversaries with a lighter penalty so
        # that they track the encoder. Stops on the validation loss (benchmarks/convergence.py,
        # docs/convergence.md): on synthetic 5,000 x 2,000 it is flat from epoch ~50 (best 58, then
        # slowly worse), so patience 10 stops at ~68; the cap leaves room for smaller data, whose
        # epochs hold fewer updates (best at epoch 116 with 480 cells)
        "quick": {**_PAPER, "latent_dim": 32, "hidden": 128, "lr_ae": 1e-3, "lr_adv": 3e-3, "pen_adv": 1.0,
                  "epochs": 300, "adv_warmup": 5, "early_stopping": True, "patience": 10},
        # the paper's architecture: 3 x 256 BatchNorm MLPs, 64-dim basal latent, Adam 5e-4 / 3e-4;
        # adversary weight, penalty, steps and warm-up are our picks (the paper tunes them per dataset)
        "paper": dict(_PAPER),
    }
    test_params: ClassVar[dict[str, Any]] = {"epochs": 2, "batch_size": 64}

    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        self._remember(train, spec)
        assert self.categories_ is not None
        self.perturbation_ = spec.perturbation or spec.concepts[0]
        self.covariates_ = [c for c in spec.concepts if c != self.perturbation_]
        p = self.params
        if p["adv_objective"] not in ("confusion", "negative_ce"):
            raise BenchError(f"CPA adv_objective={p['adv_objective']!r}; choose 'confusion' or 'negative_ce'")
        pert = self._codes(train, self.perturbation_)
        covs = self._cov_codes(train)
        counts = counts_of(train)
        try:
            val_idx, stopper = plan_early_stopping(
                train.n_obs, enabled=bool(p["early_stopping"]), val_fraction=p["val_fraction"],
                patience=p["patience"], min_delta=p["min_delta"], seed=seed, checks_from=int(p["adv_warmup"]),
            )
        except ValueError as e:
            raise BenchError(f"CPA: {e}") from None

        set_cpu_threads()
        seed_everything(seed)
        device = self.torch_device()
        net = CPANet(
            n_genes=train.n_vars,
            n_perts=len(self.categories_[self.perturbation_]),
            covariate_sizes=[len(self.categories_[c]) for c in self.covariates_],
            latent_dim=p["latent_dim"], hidden=p["hidden"], n_layers=p["n_layers"],
            adv_hidden=p["adv_hidden"], adv_layers=p["adv_layers"],
        )
        history = train_cpa(
            net, lambda idx: dense_rows(counts, idx), pert, covs,
            epochs=p["epochs"], batch_size=p["batch_size"], lr_ae=p["lr_ae"], lr_adv=p["lr_adv"],
            weight_decay=p["weight_decay"], reg_adv=p["reg_adv"], pen_adv=p["pen_adv"],
            adv_steps=p["adv_steps"], adv_objective=p["adv_objective"],
            adv_warmup=p["adv_warmup"], seed=seed, device=device, callback=self.progress_hook(),
            val_idx=val_idx, early_stopping=stopper,
        )
        monitor = "validation NB NLL per count"
        self.convergence_ = {"training": (
            stopper.summary(p["epochs"], "epoch", monitor, len(history)) if stopper is not None
            else no_stopping_summary(p["epochs"], "epoch", monitor,
                                     [{"step": h["epoch"], "train": h["recon"], "val": float("nan")} for h in history])
        )}
        names = [self.perturbation_, *self.covariates_]
        for h in history:  # concept names instead of head indices
            h["adv_acc"] = {names[i]: v for i, v in h["adv_acc"].items()}
        # majority-class rate per concept: the floor a label-free z_basal should bring the adversary to
        self.majority_ = {
            c: float(np.bincount(self._codes(train, c)).max() / train.n_obs) for c in names
        }
        self.history_ = history
        self.net_ = net

    # --- outputs -------------------------------------------------------------------
    def embed(self, adata: AnnData) -> ConceptEmbeddings:
        self._check_query(adata)
        pert, covs = self._known_codes(adata, self.perturbation_), self._cov_codes(adata)
        embs = label_embeddings(self.net_, pert, covs, device=self.torch_device())
        out: ConceptEmbeddings = dict(zip([self.perturbation_, *self.covariates_], embs))
        out[UNEXPLAINED] = self._basal(adata)
        return {c: out[c] for c in [*self.spec_.concepts, UNEXPLAINED]}  # type: ignore[union-attr]

    def generate(self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int) -> np.ndarray:
        self._check_query(adata, do)
        assert self.categories_ is not None
        pert, covs = self._known_codes(adata, self.perturbation_), self._cov_codes(adata)
        for concept, value in (do or {}).items():
            code = self.categories_[concept].index(str(value))
            if concept == self.perturbation_:
                pert = np.full_like(pert, code)
            else:
                covs[:, self.covariates_.index(concept)] = code
        library = np.asarray(counts_of(adata).sum(1), dtype=np.float64).ravel()
        return decode_log1p_cp10k(self.net_, self._basal(adata), pert, covs, library, device=self.torch_device())

    # --- helpers ---------------------------------------------------------------------
    def _known_codes(self, adata: AnnData, concept: str) -> np.ndarray:
        codes = self._codes(adata, concept)
        if (codes < 0).any():
            assert self.categories_ is not None
            bad = sorted(set(adata.obs[concept].astype(str)) - set(self.categories_[concept]))
            raise BenchError(
                f"{self.name}: {concept} value(s) {bad[:5]} were never seen in training, so they have no "
                f"embedding; the model knows {self.categories_[concept]}. Drop these cells or refit with them."
            )
        return codes

    def _cov_codes(self, adata: AnnData) -> np.ndarray:
        cols = [self._known_codes(adata, c) for c in self.covariates_]
        return np.column_stack(cols) if cols else np.zeros((adata.n_obs, 0), dtype=np.int64)

    def _basal(self, adata: AnnData) -> np.ndarray:
        counts = counts_of(adata)
        return encode_basal(
            self.net_, lambda idx: dense_rows(counts, idx), adata.n_obs, device=self.torch_device()
        )
