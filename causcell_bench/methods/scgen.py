"""scGen (Lotfollahi, Wolf & Theis, Nat Methods 16, 715, 2019) through pertpy's `pertpy.tl.Scgen`.

A VAE on log-normalised expression without disentanglement: its one latent is
returned for every concept (the probe then measures informativeness, not
disentanglement). Reconstruction decodes each cell's posterior mean through the
model's generative path; a counterfactual ``do(c = v)`` is scGen's latent
arithmetic, applied per intervened concept:
``z + mean_z(training cells with c = v) - mean_z(training cells with the cell's own c)``.

Training stops early (scvi-tools' early stopping) on ``validation_loss``, scGen's own objective
(reconstruction + ``kl_weight`` x KL) over a seeded random tenth of the training cells, keeping the
best check's weights (as the scVI adapter; :mod:`causcell_bench.methods.scvi`); ``history_`` and
``convergence_`` record the curves. Not scvi-tools' default monitor, ``elbo_validation``: that
weighs the KL fully, while scGen minimises it with a weight of ``kl_weight`` (5e-5).

pertpy is optional and heavy (JAX): it is imported only when the method is used;
install it with ``pip install 'causcell-bench[scgen]'``. (PyPI ``scgen`` itself
does not import with scvi-tools >= 0.20; pertpy maintains the reimplementation.)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError
from causcell_bench.fileio import atomic_open
from causcell_bench.methods.base import (
    Capabilities,
    ConceptEmbeddings,
    Method,
    dense_rows,
    lightning_accelerator,
    lightning_progress,
    quiet_lightning,
)
from causcell_bench.methods.scvi import convergence_record, epoch_history, read_legacy_adapter, stopping_kwargs

_STUB_ROWS = 8  # rows of the stand-in AnnData used to rebuild a saved model (see ScGen._load_model)
CENTROIDS_FILE = "centroids.npz"
_BATCH = 512  # inference batch (fixed, so JAX compiles once)


def _scgen_class() -> Any:
    """``pertpy.tl.Scgen``, imported on first use (pertpy pulls in JAX and much else)."""
    try:
        from pertpy.tools._scgen import Scgen
    except ImportError as e:
        raise BenchError(
            f"scGen needs pertpy with JAX, which is not importable here ({e}); "
            "install it with: pip install 'causcell-bench[scgen]'"
        ) from e
    return Scgen


def _lean(adata: AnnData) -> AnnData:
    """An AnnData with only what scGen reads: the log-normalised expression in X."""
    x = adata.X if sp.issparse(adata.X) else np.asarray(adata.X)
    out = AnnData(X=x.astype(np.float32, copy=False))
    out.obs_names = [str(o) for o in adata.obs_names]
    out.var_names = [str(g) for g in adata.var_names]
    return out


class ScGen(Method):
    name = "scGen"
    capabilities = Capabilities(
        embedding="shared", unexplained=False, reconstruct=True, counterfactual=True, uses_dag=False
    )
    presets = {
        # CPU-sized network; same objective. Stops on the validation loss of a held-out tenth
        # (benchmarks/convergence.py, docs/convergence.md): on synthetic 5,000 x 2,000 it gains
        # < 0.3% after epoch ~50, best at 78, where patience 20 stops it (~98)
        "quick": {
            "n_hidden": 256, "n_latent": 32, "n_layers": 2, "dropout_rate": 0.2, "kl_weight": 5e-5, "lr": 1e-3,
            "max_epochs": 300, "batch_size": 128,
            "early_stopping": True, "val_fraction": 0.1, "patience": 20, "check_val_every_n_epoch": 1,
        },
        # the authors' defaults (scGen / pertpy): 800 hidden, 100 latent, 100 epochs of batch 32, early
        # stopping with patience 25
        "paper": {
            "n_hidden": 800, "n_latent": 100, "n_layers": 2, "dropout_rate": 0.2, "kl_weight": 5e-5, "lr": 1e-3,
            "max_epochs": 100, "batch_size": 32,
            "early_stopping": True, "val_fraction": 0.1, "patience": 25, "check_val_every_n_epoch": 1,
        },
    }
    # one batch per epoch on the tiny data (a single batch shape: JAX compiles the step once), many cheap
    # epochs, and a fixed budget: with one update per epoch the validation loss of the 18 held-out cells
    # swings 5x from epoch to epoch (eval-mode BatchNorm statistics lag the weights), so early stopping kept
    # epochs 5-75 of seeds 0-2 and the counterfactual check's smallest gain fell to -0.08-0.42 (0.22-0.55
    # without); early stopping itself is tested in test_scgen and test_early_stopping
    test_params: ClassVar[dict[str, Any]] = {
        "max_epochs": 150, "batch_size": 256, "n_hidden": 128, "n_latent": 10, "lr": 3e-3, "early_stopping": False,
    }

    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        Scgen = _scgen_class()
        import scvi

        quiet_lightning("jax")
        self._remember(train, spec)
        scvi.settings.seed = seed  # also seeds the JAX module's PRNG key, read at construction
        p = self.params
        data = _lean(train)
        Scgen.setup_anndata(data)
        self.model_ = Scgen(
            data, n_hidden=p["n_hidden"], n_latent=p["n_latent"], n_layers=p["n_layers"],
            dropout_rate=p["dropout_rate"], kl_weight=p["kl_weight"],
        )
        stop, keep = stopping_kwargs(self, train.n_obs, "validation_loss")
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
            self, self.history_, keep, "train_loss", "validation_loss", "validation_loss (scGen's objective)")}
        self._fns = None
        # latent centroids of the training cells per concept label: scGen's arithmetic deltas
        z = self._latent(train)
        self.centroids_: dict[str, np.ndarray] = {}
        assert self.categories_ is not None
        for c in spec.concepts:
            codes = self._codes(train, c)
            self.centroids_[c] = np.stack([z[codes == k].mean(0) for k in range(len(self.categories_[c]))])

    # Inference runs the package module's own ``inference``/``generative`` methods under one
    # jax.jit per fitted model, on batches padded to a fixed size. (``get_latent_representation``
    # builds a fresh jitted function on every call and compiles once per batch shape: seconds of
    # XLA compilation for every embed/generate call.)
    def _jitted(self) -> tuple[Any, Any]:
        if getattr(self, "_fns", None) is None:
            import jax

            module = self.model_.module
            module.eval()  # batch norm on running statistics, no dropout

            def encode(variables: Any, x: Any, key: Any) -> Any:
                return module.apply(variables, x, rngs={"z": key}, method="inference")["qz"].mean

            def decode(variables: Any, z: Any) -> Any:
                return module.apply(variables, z, method="generative")["px"]

            self._fns = (jax.jit(encode), jax.jit(decode))
        return self._fns

    def _variables(self) -> dict[str, Any]:
        module = self.model_.module
        return {"params": module.params, **module.state}

    def _batched(self, fn: Any, rows: Any, n: int, width: int) -> np.ndarray:
        """Apply ``fn`` to fixed-size, zero-padded row batches (one XLA compilation for any ``n``)."""
        out = np.zeros((n, width), dtype=np.float32)
        for start in range(0, n, _BATCH):
            stop = min(start + _BATCH, n)
            chunk = rows(start, stop)
            block = np.zeros((_BATCH, chunk.shape[1]), dtype=np.float32)
            block[: stop - start] = chunk
            out[start:stop] = np.asarray(fn(block))[: stop - start]
        return out

    def _latent(self, adata: AnnData) -> np.ndarray:
        import jax

        encode, _ = self._jitted()
        variables, key = self._variables(), jax.random.PRNGKey(0)  # the key only feeds the unused z sample
        return self._batched(lambda b: encode(variables, b, key), lambda a, b: dense_rows(adata.X, slice(a, b)),
                             adata.n_obs, self.params["n_latent"])

    def _decode(self, z: np.ndarray) -> np.ndarray:
        _, decode = self._jitted()
        variables = self._variables()
        assert self.var_names_ is not None
        return self._batched(lambda b: decode(variables, b), lambda a, b: z[a:b], len(z), len(self.var_names_))

    def embed(self, adata: AnnData) -> ConceptEmbeddings:
        self._check_query(adata)
        z = self._latent(adata)
        assert self.spec_ is not None
        return {c: z for c in self.spec_.concepts}

    def generate(self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int) -> np.ndarray:
        """Decode each cell's posterior mean, shifted by scGen's latent arithmetic for every ``do`` concept.

        Deterministic (posterior means, no sampling), so ``seed`` is not needed.
        """
        self._check_query(adata, do)
        assert self.categories_ is not None
        z = self._latent(adata).astype(np.float64)
        for c, v in (do or {}).items():
            codes = self._codes(adata, c)
            if (codes < 0).any():
                unseen = sorted(set(adata.obs[c].astype(str)[codes < 0]))
                raise BenchError(
                    f"scGen cannot shift cells with {c} = {unseen[:5]}: no training cells carry that label, "
                    f"so its latent centroid is unknown; seen values are {self.categories_[c]}"
                )
            target = self.categories_[c].index(str(v))
            z += self.centroids_[c][target] - self.centroids_[c][codes]
        x = self._decode(z.astype(np.float32))
        # the Gaussian decoder can dip below zero; log1p(CP10k) cannot
        return np.clip(x, 0.0, None).astype(np.float32)

    # --- persistence: the manifest (Method.save), pertpy's own save and the latent centroids ---
    def _save_state(self, path: Path) -> None:
        """pertpy's own save (``scgen_model/``) and the latent centroids (``centroids.npz``, in the spec's
        concept order: a concept name need not be a valid array name)."""
        assert self.spec_ is not None
        self.model_.save(str(path / "scgen_model"), overwrite=True, save_anndata=False)
        with atomic_open(path / CENTROIDS_FILE, "wb") as fh:
            np.savez(fh, *[self.centroids_[c] for c in self.spec_.concepts])

    def _load_state(self, path: Path, device: str) -> None:
        assert self.spec_ is not None
        with np.load(path / CENTROIDS_FILE, allow_pickle=False) as saved:
            self.centroids_ = {c: saved[f"arr_{i}"] for i, c in enumerate(self.spec_.concepts)}
        self._load_model(path, device)

    @classmethod
    def _load_legacy(cls, path: Path, device: str) -> ScGen | None:
        old = read_legacy_adapter(path)
        if old is None:
            return super()._load_legacy(path, device)
        obj = cls._restore(old, device)
        # float32, as fit() computes them (JSON holds their values exactly): the fitted model's outputs
        obj.centroids_ = {c: np.asarray(v, dtype=np.float32) for c, v in old["centroids"].items()}
        obj._load_model(path, device)
        return obj

    def _load_model(self, path: Path, device: str) -> None:
        """pertpy's saved model, without the training data.

        scvi-tools rebuilds a JAX model by running one training step on an AnnData before it
        loads the saved weights over the result; a few all-zero cells with the training genes
        suffice for that step (its outcome is overwritten), so one is built here.
        """
        if not (path / "scgen_model").is_dir():
            raise BenchError(f"no saved scGen model in {path} (expected scgen_model/); train the model again")
        Scgen = _scgen_class()
        quiet_lightning("jax")
        assert self.var_names_ is not None
        stub = AnnData(X=np.zeros((_STUB_ROWS, len(self.var_names_)), dtype=np.float32))
        stub.var_names = self.var_names_
        Scgen.setup_anndata(stub)
        # that one training step shows Lightning's progress bar (scvi-tools gives load() no
        # switch for it): swallow that output
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.model_ = Scgen.load(str(path / "scgen_model"), adata=stub, accelerator=lightning_accelerator(device))
        self._fns = None
