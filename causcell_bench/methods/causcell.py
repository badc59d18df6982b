"""CausCell adapters: the full model (``CausCell``) and its no-DAG ablation (``CausCell_IND``).

CausCell (Gao, Dong et al., Nat Commun 2025) learns one embedding per
concept, linked by a linear SCM over the user's causal DAG, plus an
unexplained embedding u, and generates cells with a diffusion model
conditioned on them. The torch model lives in
:mod:`causcell_bench.models.causcell`; this module maps AnnData and
:class:`DatasetSpec` onto it.

Counterfactual mode: ``mode="do"`` (graph surgery; default) or
``"exogenous"`` (the authors' eps swap), set as a parameter
(``CausCell(mode="exogenous")``) or per call (``generate(..., mode=...)``).
Cells whose observed label already equals the intervened value keep their
own representation (do() is then a no-op); the others get a donor drawn at
random, seeded, from training cells with that label.

Loss scale: the quick preset averages the diffusion squared error over genes
(``recon_reduction="mean"``) times ``recon_weight``, so it stays balanced with
the cross-entropy and KL terms whatever the number of genes; the paper preset
sums over genes as the authors do.

Presets: ``paper`` is the authors' objective and settings. ``quick`` (CPU
minutes) is smaller (width 256, 2 blocks, 1,500 steps, DDIM-50 sampling) and
switches on two additions of this implementation, ``excl_weight`` (each
concept embedding holds no linear information on other, non-ancestor
concepts beyond its own label) and ``exo_weight`` (a child's exogenous noise
is independent of its parents' labels); see
:mod:`causcell_bench.models.causcell`. Set both to 0 for the paper's objective.
Embeddings are posterior means (``embed_samples=0``); ``embed_samples=10``
averages ten stochastic passes as the authors do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError, NotFittedError
from causcell_bench.methods.base import UNEXPLAINED, Capabilities, ConceptEmbeddings, Method
from causcell_bench.models.causcell import CausCellModel
from causcell_bench.models.utils import resolve_device, seed_everything, set_cpu_threads

SAVE_FILE = "causcell.pt"
_FORMAT = "causcell-bench/causcell/1"

_COMMON: dict[str, Any] = {
    "d": 32,
    "enc_hidden": None,
    "ff_mult": 4,
    "n_timesteps": 1000,
    "ema_decay": 0.995,
    "adv_weight": 1.0,
    "kl_weight": 1.0,
    "embed_samples": 0,
    "mode": "do",
    "pool_size": 512,
    "gen_batch_size": 512,
    "log_every": 50,
    "progress": False,
}


class CausCell(Method):
    """CausCell with the dataset's causal DAG (SCM layer over the concept embeddings)."""

    name: ClassVar[str] = "CausCell"
    capabilities: ClassVar[Capabilities] = Capabilities(
        embedding="per_concept", unexplained=True, reconstruct=True, counterfactual=True, uses_dag=True
    )
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU minutes: 3,000 cells x 500 genes in about 3 min on 2 cores
        "quick": {
            **_COMMON,
            "hidden": 256,
            "n_blocks": 2,
            "heads": 4,
            "head_dim": 32,
            "n_steps": 1500,
            "batch_size": 128,
            "grad_accum": 1,
            "lr": 1e-3,
            "recon_weight": 10.0,
            "pred_weight": 3.0,
            "excl_weight": 1.0,
            "exo_weight": 1.0,
            "recon_reduction": "mean",
            "grad_clip": 1.0,
            "sampler": "ddim",
            "ddim_steps": 50,
            "n_samples": 1,
        },
        # the authors' settings: width = n_genes, 4 blocks of 4 x 64 heads, batch 64 x 2, 100k steps
        "paper": {
            **_COMMON,
            "hidden": None,
            "n_blocks": 4,
            "heads": 4,
            "head_dim": 64,
            "n_steps": 100_000,
            "batch_size": 64,
            "grad_accum": 2,
            "lr": 2e-5,
            "recon_weight": 1.0,
            "pred_weight": 1.0,
            "excl_weight": 0.0,
            "exo_weight": 0.0,
            "recon_reduction": "sum",
            "grad_clip": None,
            "sampler": "ancestral",
            "ddim_steps": 50,
            "n_samples": 10,
        },
    }

    def __init__(self, preset: str = "quick", device: str = "auto", **params: Any) -> None:
        super().__init__(preset, device, **params)
        p = self.params
        if p["mode"] not in ("do", "exogenous"):
            raise BenchError(f"mode must be 'do' or 'exogenous', got {p['mode']!r}")
        if p["sampler"] not in ("ancestral", "ddim"):
            raise BenchError(f"sampler must be 'ancestral' or 'ddim', got {p['sampler']!r}")
        if p["recon_reduction"] not in ("mean", "sum"):
            raise BenchError(f"recon_reduction must be 'mean' or 'sum', got {p['recon_reduction']!r}")
        for key in ("n_steps", "batch_size", "grad_accum", "n_samples", "ddim_steps", "pool_size", "d"):
            if int(p[key]) < 1:
                raise BenchError(f"{key} must be >= 1, got {p[key]!r}")
        self.model_: CausCellModel | None = None
        self.history_: list[dict[str, float]] = []
        self.seed_: int | None = None

    # --- the DAG this variant uses ------------------------------------------------
    def _adjacency(self, spec: DatasetSpec) -> np.ndarray:
        return spec.adjacency()

    # --- interface ----------------------------------------------------------------
    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        self._remember(train, spec)
        assert self.categories_ is not None
        if train.n_obs < 2:
            raise BenchError(f"{self.name} needs at least 2 training cells, got {train.n_obs}")
        _check_log_expression(train.X)
        p = self.params
        codes = np.stack([self._codes(train, c) for c in spec.concepts], axis=1)
        sizes = [len(self.categories_[c]) for c in spec.concepts]
        set_cpu_threads()
        seed_everything(seed)
        try:
            device = resolve_device(self.device)
        except ValueError as e:
            raise BenchError(str(e)) from None
        self.model_ = CausCellModel(
            train.n_vars,
            sizes,
            self._adjacency(spec),
            d=p["d"],
            enc_hidden=p["enc_hidden"],
            hidden=p["hidden"],
            n_blocks=p["n_blocks"],
            heads=p["heads"],
            head_dim=p["head_dim"],
            ff_mult=p["ff_mult"],
            n_timesteps=p["n_timesteps"],
            device=device,
        )
        self.history_ = self.model_.fit(
            train.X,
            codes,
            n_steps=int(p["n_steps"]),
            batch_size=int(p["batch_size"]),
            grad_accum=int(p["grad_accum"]),
            lr=float(p["lr"]),
            ema_decay=float(p["ema_decay"]),
            recon_weight=float(p["recon_weight"]),
            recon_reduction=p["recon_reduction"],
            pred_weight=float(p["pred_weight"]),
            adv_weight=float(p["adv_weight"]),
            excl_weight=float(p["excl_weight"]),
            exo_weight=float(p["exo_weight"]),
            kl_weight=float(p["kl_weight"]),
            grad_clip=p["grad_clip"],
            log_every=int(p["log_every"]),
            seed=seed,
            progress=bool(p["progress"]),
        )
        self.model_.build_pools(train.X, codes, pool_size=int(p["pool_size"]), seed=seed)
        self.seed_ = seed

    def embed(self, adata: AnnData) -> ConceptEmbeddings:
        """Per concept, z_k (posterior mean, or the mean of ``embed_samples`` draws); u as ``unexplained``."""
        self._check_query(adata)
        model = self._model()
        assert self.spec_ is not None
        _, z = model.encode(adata.X, n_samples=int(self.params["embed_samples"]), seed=self.seed_ or 0)
        out = {c: np.ascontiguousarray(z[:, k]) for k, c in enumerate(self.spec_.concepts)}
        out[UNEXPLAINED] = np.ascontiguousarray(z[:, model.m])
        return out

    def generate(
        self,
        adata: AnnData,
        do: Mapping[str, str] | None = None,
        *,
        seed: int,
        mode: str | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        n_samples: int | None = None,
    ) -> np.ndarray:
        """Reconstruct each cell from its own concepts, or, with ``do``, its counterfactual.

        ``mode``/``sampler``/``steps``/``n_samples`` override the fitted
        parameters for this call only (e.g. to compare DDIM with ancestral).
        Returns dense float32 log1p(CP10k), negatives clipped to 0.
        """
        self._check_query(adata, do)
        model = self._model()
        assert self.spec_ is not None and self.categories_ is not None
        p = self.params
        mode = mode or p["mode"]
        if mode not in ("do", "exogenous"):
            raise BenchError(f"mode must be 'do' or 'exogenous', got {mode!r}")
        sampler = sampler or p["sampler"]
        if sampler not in ("ancestral", "ddim"):
            raise BenchError(f"sampler must be 'ancestral' or 'ddim', got {sampler!r}")
        steps = int(steps or p["ddim_steps"])
        if not 1 <= steps <= int(p["n_timesteps"]):
            raise BenchError(f"steps must be in 1..{p['n_timesteps']}, got {steps}")
        n_samples = int(n_samples or p["n_samples"])
        eps, z = model.encode(adata.X)
        if do:
            rng = np.random.default_rng(seed)
            donors = {}
            for c, v in do.items():
                k = self.spec_.concepts.index(c)
                code = self.categories_[c].index(str(v))
                drawn = model.draw_donors(k, code, adata.n_obs, rng, mode)
                # a cell already at the target value is its own counterfactual
                own = self._codes(adata, c) == code
                drawn[own] = (eps if mode == "exogenous" else z)[own, k]
                donors[k] = drawn
            z = model.intervene(eps, donors, mode=mode)
        x = model.sample(
            z,
            sampler=sampler,
            steps=steps,
            n_samples=n_samples,
            seed=seed,
            batch_size=int(p["gen_batch_size"]),
            progress=bool(p["progress"]),
        )
        return np.clip(x, 0.0, None).astype(np.float32, copy=False)

    # --- persistence: one torch file --------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write weights, EMA weights, hyperparameters, label mappings, DAG, genes and donor pools to ``path/causcell.pt``."""
        model = self._model()
        assert self.spec_ is not None
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": _FORMAT,
            "method": self.name,
            "preset": self.preset,
            "params": dict(self.params),
            "spec": self.spec_.model_dump(mode="json"),
            "var_names": list(self.var_names_ or []),
            "categories": {k: list(v) for k, v in (self.categories_ or {}).items()},
            "seed": self.seed_,
            "model": model.state(),
        }
        tmp = path / (SAVE_FILE + ".tmp")
        torch.save(blob, tmp)
        tmp.replace(path / SAVE_FILE)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> CausCell:
        f = Path(path) / SAVE_FILE
        if not f.is_file():
            raise BenchError(f"no saved {cls.name} in {path} (expected {SAVE_FILE}); save a fitted model there first")
        try:
            blob = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a corrupt file must give a clear message
            raise BenchError(f"cannot read {f}: {e}") from None
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise BenchError(f"{f} is not a saved CausCell model (format {_FORMAT})")
        if blob["method"] != cls.name:
            raise BenchError(f"{path} holds a {blob['method']} model; load it with that method's class")
        obj = cls(preset=blob["preset"], device=device, **blob["params"])
        obj.spec_ = DatasetSpec.model_validate(blob["spec"])
        obj.var_names_ = list(blob["var_names"])
        obj.categories_ = {k: list(v) for k, v in blob["categories"].items()}
        obj.seed_ = blob["seed"]
        try:
            dev = resolve_device(device)
        except ValueError as e:
            raise BenchError(str(e)) from None
        obj.model_ = CausCellModel.from_state(blob["model"], device=dev)
        obj.history_ = obj.model_.history
        return obj

    # --- helpers ------------------------------------------------------------------
    def _model(self) -> CausCellModel:
        if self.model_ is None:
            raise NotFittedError(f"{self.name} is not fitted; call fit() first")
        return self.model_


class CausCellIND(CausCell):
    """CausCell_IND: the same model with the DAG emptied (the paper's ablation; concepts independent)."""

    name: ClassVar[str] = "CausCell_IND"
    capabilities: ClassVar[Capabilities] = Capabilities(
        embedding="per_concept", unexplained=True, reconstruct=True, counterfactual=True, uses_dag=False
    )

    def _adjacency(self, spec: DatasetSpec) -> np.ndarray:
        return np.zeros((spec.n_concepts + 1, spec.n_concepts + 1), dtype=np.float32)


def _check_log_expression(x: Any) -> None:
    """Refuse scaled (negative) or non-finite data: the model expects log1p(CP10k)."""
    vals = x.data if sp.issparse(x) else np.asarray(x)
    if vals.size and not np.isfinite(vals).all():
        raise BenchError("adata.X has non-finite values; CausCell expects log1p(CP10k) expression")
    if vals.size and vals.min() < 0:
        raise BenchError(
            "adata.X has negative values (scaled data?); CausCell expects log1p(CP10k) expression — "
            "preprocess with causcell_bench.datasets.preprocess"
        )
