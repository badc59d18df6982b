"""The common method interface (docs/methods.md describes it and the capabilities).

Every method in the benchmark, ours or a plugin's, is a :class:`Method`.

Data contract — what ``fit``/``embed``/``generate`` receive (the runner's
preprocessing guarantees it; :func:`causcell_bench.testing.tiny_dataset`
builds the same for tests):

- ``adata.X``: log1p(counts / library * 1e4), float32, usually scipy CSR.
- ``adata.layers["counts"]``: the raw integer counts of the same genes.
- ``adata.obs[c]`` for every ``c`` in ``spec.concepts``: pandas Categorical.

``generate`` returns a dense float32 array in the same log1p(CP10k) space as
``adata.X``, one row per input cell.

Progress: a caller may set ``method.progress_callback`` (a :data:`ProgressFn`)
before ``fit``; trained methods then report :class:`Progress` through
:meth:`Method.report_progress`. The callback is never pickled or saved.
"""

from __future__ import annotations

import abc
import functools
import pickle
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError, NotFittedError

ConceptEmbeddings = dict[str, np.ndarray]
"""Concept name -> (n_cells, d) array; plus ``"unexplained"`` where a method has one."""

UNEXPLAINED = "unexplained"

EmbeddingKind = Literal["per_concept", "label_lookup", "shared", "none"]


@dataclass(frozen=True)
class Capabilities:
    """What a method can do; the runner asks only for these and records n/a otherwise.

    embedding:
        ``per_concept`` — a distinct single-cell embedding per concept (CausCell, scDisInFact);
        ``label_lookup`` — per-concept vectors identical for all cells sharing a label
        (Biolord, CPA): flagged and excluded from the disentanglement ranking;
        ``shared`` — one latent returned for every concept (scVI, scGen, MichiGAN);
        ``none`` — no embedding.
    """

    embedding: EmbeddingKind = "none"
    unexplained: bool = False
    reconstruct: bool = False
    counterfactual: bool = False
    uses_dag: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    """One progress report of a method's training.

    ``done`` of ``total`` ``unit`` ("steps" or "epochs") of the phase ``what`` ("training", or
    e.g. "VAE training" then "GAN training" for a method trained in stages: each phase runs from
    its first report to ``done == total``). ``loss`` is the mean training loss reported since the
    previous report (None if the method logs none). When training stops early, the last report
    has ``total`` shrunk to ``done``.
    """

    done: int
    total: int
    unit: str = "steps"
    what: str = "training"
    loss: float | None = None


ProgressFn = Callable[[Progress], None]
"""A progress callback: shown to the user, so it must be quick; whatever it raises is swallowed."""

ModelProgressFn = Callable[[int, int, float | None], None]
"""The plain ``callback(done, total, loss)`` our torch models accept (``models.utils.StepCallback``;
the models know no Method, and this module does not import torch)."""

PROGRESS_SECONDS = 2.0
"""Besides every 1% of the budget, a report is forwarded when this long has passed since the last one."""


@dataclass
class _ProgressState:
    """Throttling state of :meth:`Method.report_progress` for the current phase."""

    what: str
    total: int
    done: int = -1
    percent: int = -1
    time: float = 0.0
    loss_sum: float = 0.0
    loss_n: int = 0


class Method(abc.ABC):
    """Base class of every benchmarked method.

    Subclasses set ``name``, ``capabilities`` and ``presets`` (hyperparameters
    per preset: ``quick`` for CPU demos/CI, ``paper`` for the authors'
    settings). Keyword arguments to ``__init__`` override the preset.

    A third preset, ``test``, is derived for every subclass as the ``quick`` preset
    with ``test_params`` on top: a model tiny enough to fit in seconds, for the
    conformance tests and smoke runs. A subclass that writes ``presets["test"]``
    itself keeps its own.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    presets: ClassVar[dict[str, dict[str, Any]]] = {"quick": {}, "paper": {}, "test": {}}
    test_params: ClassVar[dict[str, Any]] = {}
    """Overrides of the ``quick`` preset that make the ``test`` preset; only keys ``quick`` has."""
    kind: ClassVar[str] = "method"
    """One of "method" | "control" | "reference": controls and references are shown but not ranked."""
    # heavy, fork-safe modules the runner imports once before forking grid cells
    # (importing scvi-tools takes seconds; paying it per cell would dominate small cells)
    preload_modules: ClassVar[tuple[str, ...]] = ()
    # class-level defaults too, so objects unpickled without them (or saved before they existed) have them
    progress_callback: ProgressFn | None = None
    _progress_state: _ProgressState | None = None
    _progress_warned: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("presets")
        if own is not None and "test" in own:
            return  # written by hand
        # re-derive when this class changes either ingredient; an inherited test preset is already right.
        # A new dict, so that the parent's presets (maybe inherited from) stay as they are.
        if (own is not None or "test_params" in cls.__dict__) and "quick" in cls.presets:
            cls.presets = {**cls.presets, "test": {**cls.presets["quick"], **cls.test_params}}

    def __init__(self, preset: str = "quick", device: str = "auto", **params: Any) -> None:
        if preset not in self.presets:
            raise BenchError(
                f"{self.name} has no preset {preset!r}; choose one of {sorted(self.presets)}"
            )
        defaults = self.presets[preset]
        unknown = sorted(set(params) - set(defaults))
        if unknown and defaults:
            raise BenchError(
                f"{self.name} has no parameter(s) {unknown}; known parameters: {sorted(defaults)}"
            )
        self.preset = preset
        self.device = device
        self.params: dict[str, Any] = {**defaults, **params}
        self.spec_: DatasetSpec | None = None
        self.var_names_: list[str] | None = None
        self.categories_: dict[str, list[str]] | None = None
        self.progress_callback = None

    # --- the interface ---------------------------------------------------
    @abc.abstractmethod
    def fit(self, train: AnnData, spec: DatasetSpec, *, seed: int) -> None:
        """Train on ``train``; call :meth:`_remember` first."""

    def embed(self, adata: AnnData) -> ConceptEmbeddings:
        raise NotImplementedError(f"{self.name} gives no embeddings (capabilities.embedding = 'none')")

    def generate(
        self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int
    ) -> np.ndarray:
        raise NotImplementedError(f"{self.name} cannot generate cells")

    def save(self, path: str | Path) -> None:
        """Write the fitted method into directory ``path`` (default: pickle of self)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with open(path / "method.pkl", "wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, path: str | Path) -> Method:
        path = Path(path)
        f = path / "method.pkl"
        if not f.is_file():
            raise BenchError(f"no saved {cls.__name__} in {path} (expected {f.name})")
        with open(f, "rb") as fh:
            obj = pickle.load(fh)
        if not isinstance(obj, cls):
            raise BenchError(f"{path} holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj

    # --- progress ------------------------------------------------------------
    def report_progress(
        self, done: int, total: int, *, unit: str = "steps", what: str = "training", loss: float | None = None
    ) -> None:
        """Report ``done`` of ``total`` ``unit`` of phase ``what`` to :attr:`progress_callback`, if set.

        Call it as often as convenient (every step is fine): a report reaches the callback at the
        start of a phase, once per 1% of ``total``, after :data:`PROGRESS_SECONDS` without one, and
        at ``done >= total``, with the mean of the losses given since the last report. It never
        raises: a failing display must not fail the fit (the first failure is warned about).
        """
        fn = self.progress_callback
        if fn is None:
            return
        try:
            state = self._progress_state
            if state is None or state.what != what or state.total != total or done < state.done:
                state = self._progress_state = _ProgressState(what=what, total=total)
            if loss is not None:
                state.loss_sum += float(loss)
                state.loss_n += 1
            now = time.monotonic()
            percent = done * 100 // total if total > 0 else 100
            due = state.done < 0 or done >= total or percent != state.percent or now - state.time >= PROGRESS_SECONDS
            if not due:
                state.done = done
                return
            mean_loss = state.loss_sum / state.loss_n if state.loss_n else None
            state.done, state.percent, state.time, state.loss_sum, state.loss_n = done, percent, now, 0.0, 0
            fn(Progress(done=int(done), total=int(total), unit=unit, what=what, loss=mean_loss))
        except Exception as e:  # noqa: BLE001 - a display bug must not kill a grid cell
            if not self._progress_warned:
                self._progress_warned = True
                warnings.warn(
                    f"{self.name}: the progress callback raised {type(e).__name__}: {e}; further errors are ignored",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def progress_hook(self, what: str = "training", unit: str = "steps") -> ModelProgressFn | None:
        """A plain ``callback(done, total, loss)`` for a model's training loop, or None when no one listens
        (the loop then runs exactly as without progress reporting)."""
        if self.progress_callback is None:
            return None

        def hook(done: int, total: int, loss: float | None = None) -> None:
            self.report_progress(done, total, unit=unit, what=what, loss=loss)

        return hook

    def __getstate__(self) -> dict[str, Any]:
        # the callback belongs to the caller's display (often a lambda or a queue): never pickle it
        state = self.__dict__.copy()
        for key in ("progress_callback", "_progress_state", "_progress_warned"):
            state.pop(key, None)
        return state

    # --- shared bookkeeping for subclasses ------------------------------
    def torch_device(self) -> Any:
        """The torch device for ``self.device`` ("auto": CUDA when present), or a clear BenchError."""
        from causcell_bench.models.utils import resolve_device

        try:
            return resolve_device(self.device)
        except ValueError as e:
            raise BenchError(str(e)) from None

    def _remember(self, train: AnnData, spec: DatasetSpec) -> None:
        """Store genes, concept values and spec seen at fit time (for query checks)."""
        missing = [c for c in spec.concepts if c not in train.obs.columns]
        if missing:
            raise BenchError(
                f"concept column(s) {missing} not in adata.obs; available: {list(train.obs.columns)}"
            )
        self.spec_ = spec
        self.var_names_ = [str(g) for g in train.var_names]
        self.categories_ = {c: [str(v) for v in category_values(train.obs[c])] for c in spec.concepts}

    @property
    def is_fitted(self) -> bool:
        return self.spec_ is not None

    def _check_query(self, adata: AnnData, do: Mapping[str, str] | None = None) -> None:
        """Refuse data (or interventions) the fitted model does not know, with a clear message."""
        if self.spec_ is None or self.var_names_ is None or self.categories_ is None:
            raise NotFittedError(f"{self.name} is not fitted; call fit() first")
        genes = [str(g) for g in adata.var_names]
        if genes != self.var_names_:
            unknown = [g for g in genes if g not in set(self.var_names_)]
            hint = f"{len(unknown)} unknown, e.g. {unknown[:5]}" if unknown else "same genes, other order"
            raise BenchError(
                f"{self.name} was trained on {len(self.var_names_)} genes; this data has "
                f"{len(genes)} ({hint}). Subset/reorder it to the training genes first."
            )
        for c in self.spec_.concepts:
            if c not in adata.obs.columns:
                raise BenchError(f"concept column {c!r} missing from adata.obs; the model was trained with {self.spec_.concepts}")
        for c, v in (do or {}).items():
            if c not in self.categories_:
                raise BenchError(
                    f"cannot intervene on {c!r}: not a concept of this model; concepts are {list(self.categories_)}"
                )
            if str(v) not in self.categories_[c]:
                raise BenchError(
                    f"cannot set {c} = {v!r}: value never seen in training; seen values are {self.categories_[c]}"
                )

    def _codes(self, adata: AnnData, concept: str) -> np.ndarray:
        """Integer codes of ``concept`` under the mapping fixed at fit time (-1 = unseen value)."""
        assert self.categories_ is not None
        lut = {v: i for i, v in enumerate(self.categories_[concept])}
        return np.array([lut.get(str(v), -1) for v in adata.obs[concept].astype(str)], dtype=np.int64)


class CpuPickledNet:
    """Mixin for adapters holding a torch module in ``self.net_`` (with a ``config`` dict of its constructor's
    arguments): pickles it as a CPU state dict, so a model fitted on a GPU loads on a CPU-only machine."""

    def __getstate__(self) -> dict[str, Any]:
        # Method.__getstate__ (next in the MRO) drops the progress callback
        state = dict(super().__getstate__())  # type: ignore[misc]
        net = state.pop("net_", None)
        if net is not None:
            weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            state["net_state_"] = (type(net), net.config, weights)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("net_state_", None)
        self.__dict__.update(state)
        if saved is not None:
            net_cls, config, weights = saved
            net = net_cls(**config)
            net.load_state_dict(weights)
            self.net_ = net.eval()


# --- helpers shared by adapters --------------------------------------------
def category_values(series: Any) -> list[Any]:
    """Values of a label column in a stable order: categories if categorical, else sorted unique."""
    if hasattr(series, "cat"):
        present = set(series.astype(str))
        return [c for c in series.cat.categories if str(c) in present]
    return sorted(set(series.astype(str)))


def counts_of(adata: AnnData) -> Any:
    """The raw counts matrix (``layers['counts']``), sparse or dense as stored."""
    if "counts" not in adata.layers:
        raise BenchError("adata.layers['counts'] is missing; preprocess the data with causcell_bench.datasets.preprocess")
    return adata.layers["counts"]


def dense_rows(x: Any, idx: np.ndarray | slice) -> np.ndarray:
    """Rows ``idx`` of a sparse or dense matrix as a dense float32 array (densifies only these rows)."""
    rows = x[idx]
    if sp.issparse(rows):
        rows = rows.toarray()
    return np.asarray(rows, dtype=np.float32)


def iter_batches(n: int, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Index batches over ``n`` rows, shuffled when ``rng`` is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def lightning_accelerator(device: str) -> str:
    """Map our ``--device`` value to a Lightning ``accelerator`` (for scvi-tools based adapters)."""
    if device == "auto":
        return "auto"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        return "gpu"
    raise BenchError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")


def lightning_progress(method: Method, loss_key: str = "train_loss") -> list[Any]:
    """Lightning callbacks (for a scvi-tools ``train(callbacks=...)``) that report epochs done of
    ``max_epochs`` with the epoch's logged ``loss_key`` to ``method``; [] when no one listens."""
    if method.progress_callback is None:
        return []
    return [_lightning_progress_class()(method, loss_key)]


@functools.cache
def _lightning_progress_class() -> type:
    from lightning.pytorch.callbacks import Callback

    class EpochProgress(Callback):  # type: ignore[misc]
        """Reports epoch e when epoch e + 1 starts, and the last when training ends: a module that logs its
        loss in its own ``on_train_epoch_end`` (biolord) does so after the callbacks' hook of that name."""

        def __init__(self, method: Method, loss_key: str) -> None:
            self.method, self.loss_key = method, loss_key

        def _loss(self, trainer: Any) -> float | None:
            value = trainer.callback_metrics.get(self.loss_key)  # biolord's str-Enum keys match plain strings
            return None if value is None else float(value)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            done = int(trainer.current_epoch)
            if done > 0:
                self.method.report_progress(done, _max_epochs(trainer, done), unit="epochs", loss=self._loss(trainer))

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            done = int(trainer.current_epoch)
            # total = done: the whole budget, or, stopped early, the budget shrunk to what ran
            self.method.report_progress(done, done, unit="epochs", loss=self._loss(trainer))

    return EpochProgress


def _max_epochs(trainer: Any, done: int) -> int:
    """The trainer's epoch budget (``done`` when it has none)."""
    total = trainer.max_epochs
    return int(total) if total is not None and total > 0 else done


def quiet_lightning(*extra_loggers: str) -> None:
    """Silence Lightning's per-run banners and seed messages (scvi-tools based adapters):
    a grid would print pages of them. lightning.fabric and lightning.pytorch set their own
    level and handler, so the parent "lightning" logger's level alone does not reach them."""
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning",
                 "scvi", *extra_loggers):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*num_workers.*")
