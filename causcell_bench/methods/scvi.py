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

Training (quick preset) stops early on scvi-tools' own validation ELBO (``elbo_validation``) over a
seeded random tenth of the training cells, as scvi-tools does; the weights of the best check are
kept (:func:`keep_best_callback`). ``history_`` holds the per-epoch metrics scvi-tools logs and
``convergence_["training"]`` where training stopped and why. The helpers below serve the other
scvi-tools based adapters (scGen, Biolord) too.
"""

from __future__ import annotations

import functools
import math
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
    read_saved_json,
)
from causcell_bench.models.utils import MIN_CELLS_TO_VALIDATE, check_stopping_params, expected_log1p_cp10k

LEGACY_ADAPTER_FILE = "adapter.json"
"""What the scvi-tools based adapters saved beside the package's model before the manifest (read only)."""


# --- early stopping helpers shared by the scvi-tools based adapters ---------------------------------
def stopping_kwargs(
    method: Method, n_cells: int, monitor: str, mode: str = "min", monitor_arg: str = "early_stopping_monitor"
) -> tuple[dict[str, Any], Any]:
    """``train()`` keyword arguments for scvi-tools' own early stopping from ``method.params``
    (``early_stopping``, ``val_fraction``, ``patience``, ``check_val_every_n_epoch``) on the logged
    metric ``monitor`` (passed as ``monitor_arg``; biolord's ``train`` names it "monitor"), and the
    :func:`keep_best_callback` to add to its callbacks (None when not stopping early).

    Off, or with fewer than :data:`MIN_CELLS_TO_VALIDATE` cells (a validation loss on a handful of
    cells is noise), nothing is passed: the package's defaults and the whole ``max_epochs`` budget.
    """
    p = method.params
    try:
        check_stopping_params(p["val_fraction"], p["patience"])
    except ValueError as e:
        raise BenchError(f"{method.name}: {e}") from None
    every = p["check_val_every_n_epoch"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise BenchError(f"{method.name}: check_val_every_n_epoch={every!r} must be a whole number >= 1")
    if not p["early_stopping"] or n_cells < MIN_CELLS_TO_VALIDATE:
        return {}, None
    keep = keep_best_callback(monitor, mode)
    return {
        "train_size": 1.0 - float(p["val_fraction"]),
        "early_stopping": True,
        monitor_arg: monitor,
        "early_stopping_patience": int(p["patience"]),  # counted in validation checks
        "check_val_every_n_epoch": every,
    }, keep


def keep_best_callback(monitor: str, mode: str = "min") -> Any:
    """A Lightning callback that remembers the module's weights at the best value of ``monitor`` (logged at
    validation) and puts them back when training ends: Lightning's early stopping keeps the last weights,
    ``patience`` checks past the best. Works for torch modules (a CPU copy of the state dict) and
    scvi-tools' JAX modules (their immutable ``train_state``). ``best_epoch``/``best`` say which."""
    return _keep_best_class()(monitor, mode)


@functools.cache
def _keep_best_class() -> type:
    from lightning.pytorch.callbacks import Callback

    class KeepBest(Callback):  # type: ignore[misc]
        def __init__(self, monitor: str, mode: str) -> None:
            self.monitor, self.sign = monitor, (1.0 if mode == "min" else -1.0)
            self.best: float | None = None
            self.best_epoch: int | None = None
            self._saved: Any = None

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            value = trainer.callback_metrics.get(self.monitor)
            if trainer.sanity_checking or value is None:
                return
            value = float(value)
            if math.isfinite(value) and (self.best is None or self.sign * value < self.sign * self.best):
                self.best, self.best_epoch = value, int(trainer.current_epoch) + 1
                module = pl_module.module
                if getattr(module, "train_state", None) is not None:  # JAX: immutable, a reference suffices
                    self._saved = module.train_state
                else:
                    self._saved = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if self._saved is None:
                return
            module = pl_module.module
            if isinstance(self._saved, dict):
                module.load_state_dict(self._saved)
            else:
                module.train_state = self._saved

    return KeepBest


def epoch_history(history: Mapping[str, Any] | None) -> list[dict[str, float]]:
    """scvi-tools' ``model.history`` (metric -> DataFrame indexed by 0-based epoch) as one dict per epoch,
    ``{"epoch": 1-based, metric: value, ...}``; a metric not logged in an epoch is absent from it."""
    rows: dict[int, dict[str, float]] = {}
    for key, frame in (history or {}).items():
        if key == "kl_weight" or frame is None or len(frame) == 0:
            continue
        for epoch, value in zip(frame.index, frame.iloc[:, 0]):
            rows.setdefault(int(epoch), {"epoch": int(epoch) + 1})[key] = float(value)
    return [rows[e] for e in sorted(rows)]


def convergence_record(
    method: Method, history: list[dict[str, float]], keep: Any, train_key: str, val_key: str, monitor: str
) -> dict[str, Any]:
    """The ``convergence_["training"]`` record of an scvi-tools based fit (same fields as our models')."""
    p = method.params
    ran = max((h["epoch"] for h in history), default=0)
    stopping = keep is not None
    return {
        "unit": "epoch", "monitor": monitor, "cap": int(p["max_epochs"]),
        "patience": int(p["patience"]) if stopping else None, "min_delta": 0.0 if stopping else None,
        "stopped": stopping and ran < int(p["max_epochs"]), "last": int(ran),
        "best": keep.best_epoch if stopping else None, "best_val": keep.best if stopping else None,
        "history": [{"step": h["epoch"], "train": h.get(train_key, float("nan")), "val": h.get(val_key, float("nan"))}
                    for h in history],
    }


def _counts_adata(adata: AnnData) -> AnnData:
    """A lean AnnData with only what scVI reads: the counts layer."""
    counts = counts_of(adata)
    out = AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    out.layers["counts"] = out.X
    return out


class SCVI(Method):
    name = "scVI"
    # stochastic: a reconstruction decodes one posterior sample of the latent
    capabilities = Capabilities(embedding="shared", unexplained=False, reconstruct=True, counterfactual=False,
                                stochastic=True)
    preload_modules = ("scvi",)
    presets = {
        # stops on the validation ELBO of a held-out tenth (benchmarks/convergence.py,
        # docs/convergence.md): on synthetic 5,000 x 2,000 it gains < 0.2% after epoch ~110 and
        # its best is at 162, where patience 20 stops it (~182); the cap is scvi-tools' own heuristic
        "quick": {"n_latent": 10, "n_hidden": 128, "n_layers": 1, "max_epochs": 400, "batch_size": 128, "lr": 1e-3,
                  "early_stopping": True, "val_fraction": 0.1, "patience": 20, "check_val_every_n_epoch": 1},
        # scvi-tools' defaults; its own heuristic picks ~400 epochs for small data (no early stopping)
        "paper": {"n_latent": 10, "n_hidden": 128, "n_layers": 1, "max_epochs": 400, "batch_size": 128, "lr": 1e-3,
                  "early_stopping": False, "val_fraction": 0.1, "patience": 45, "check_val_every_n_epoch": 1},
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
        # scvi-tools' default monitor: the ELBO (reconstruction + KL, not the warm-up-weighted loss)
        stop, keep = stopping_kwargs(self, train.n_obs, "elbo_validation")
        self.model_.train(
            max_epochs=p["max_epochs"],
            batch_size=p["batch_size"],
            accelerator=lightning_accelerator(self.device),
            plan_kwargs={"lr": p["lr"]},
            enable_progress_bar=False,
            logger=None,  # scvi-tools' in-memory logger: model.history, nothing written to disk
            enable_checkpointing=False,
            callbacks=[*lightning_progress(self), *([keep] if keep else [])],
            **stop,
        )
        self.history_ = epoch_history(self.model_.history)
        self.convergence_ = {"training": convergence_record(
            self, self.history_, keep, "elbo_train", "elbo_validation", "elbo_validation (scvi-tools)")}

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

    # --- persistence: the manifest (Method.save) plus scvi-tools' own save in scvi_model/ -------
    def _save_state(self, path: Path) -> None:
        self.model_.save(str(path / "scvi_model"), overwrite=True, save_anndata=False)

    def _load_state(self, path: Path, device: str) -> None:
        import scvi

        quiet_lightning()
        assert self.var_names_ is not None
        # scvi-tools needs an AnnData to rebuild the model: one cell with the training genes suffices
        # (all-zero would be mistaken for scvi's "minified" data and refused)
        stub = AnnData(X=sp.csr_matrix(np.ones((1, len(self.var_names_)), dtype=np.float32)))
        stub.var_names = self.var_names_
        stub.layers["counts"] = stub.X
        scvi.model.SCVI.setup_anndata(stub, layer="counts")
        self.model_ = scvi.model.SCVI.load(str(path / "scvi_model"), adata=stub, accelerator=lightning_accelerator(device))

    @classmethod
    def _load_legacy(cls, path: Path, device: str) -> SCVI | None:
        old = read_legacy_adapter(path)
        if old is None:
            return super()._load_legacy(path, device)
        obj = cls._restore(old, device)
        obj._load_state(path, device)
        return obj


def read_legacy_adapter(path: Path) -> dict[str, Any] | None:
    """The ``adapter.json`` the scvi-tools based adapters (scVI, scGen, Biolord) wrote beside the package's
    own save before the manifest existed (preset, parameters, spec, genes, categories and each adapter's
    extras), or None when ``path`` has none."""
    f = path / LEGACY_ADAPTER_FILE
    if not f.is_file():
        return None
    old = read_saved_json(f)
    if not isinstance(old, dict):
        raise BenchError(f"{f} is not a saved adapter state; train the model again")
    return old
