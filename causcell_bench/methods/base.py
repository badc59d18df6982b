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

Persistence: :meth:`Method.save` writes the manifest ``method.json`` (class, state version, preset,
parameters, spec, genes, categories) and calls the method's :meth:`Method._save_state` hook for its
fitted state; :meth:`Method.load` reads the manifest, builds the method on the requested device and
calls :meth:`Method._load_state`. Directories saved before the manifest existed (``method.pkl``, and
the adapters' own older layouts) load through :meth:`Method._load_legacy`.
"""

from __future__ import annotations

import abc
import copy
import functools
import json
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from causcell_bench.datasets.spec import DatasetSpec
from causcell_bench.errors import BenchError, NotFittedError
from causcell_bench.fileio import atomic_dir, atomic_open, atomic_write_json
from causcell_bench.interrupts import check_interrupt

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

    stochastic:
        ``generate`` draws samples (its output changes with the seed), as CausCell's diffusion
        sampler and MichiGAN's generator do. Where the benchmark scores a point estimate against
        an expected profile (the simulator's noiseless counterfactuals), it scores the mean of
        several draws (:meth:`Method.expected_generate`); a deterministic decoder's mean is its
        single output. Controls keep it False: their outputs define the scale.

    reconstruction_is_input:
        ``generate`` without ``do`` returns the input cells unchanged (no_change, additive_shift,
        the positive control). Its fidelity and realism are then perfect by construction, so a
        reference that declares it is not scored on them (a control still anchors the scale).
    """

    embedding: EmbeddingKind = "none"
    unexplained: bool = False
    reconstruct: bool = False
    counterfactual: bool = False
    uses_dag: bool = False
    stochastic: bool = False
    reconstruction_is_input: bool = False

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

MANIFEST_FILE = "method.json"
"""The manifest :meth:`Method.save` writes in a saved method's directory."""
MANIFEST_FORMAT = "causcell-bench-method"
MANIFEST_VERSION = 1
"""Version of the manifest's own layout (a method's state has its :attr:`Method.state_version`)."""
STATE_FILE = "state.pkl"
"""Where the default :meth:`Method._save_state` writes the fitted state."""
LEGACY_PICKLE = "method.pkl"
"""The whole-object pickle the base class wrote before the manifest existed."""
_MANIFEST_ATTRS = frozenset({"preset", "device", "params", "spec_", "var_names_", "categories_"})
"""Instance attributes the manifest holds (the default state hook leaves them out)."""

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
    param_bounds: ClassVar[dict[str, tuple[float | None, float | None]]] = {}
    """Ranges [lo, hi) of numeric parameters (None: open) where the general rule of
    :func:`causcell_bench.config.param_bounds` does not fit; values outside are refused before training."""
    kind: ClassVar[str] = "method"
    """One of "method" | "control" | "reference": controls and references are shown but not ranked."""
    # heavy, fork-safe modules the runner imports once before forking grid cells
    # (importing scvi-tools takes seconds; paying it per cell would dominate small cells)
    preload_modules: ClassVar[tuple[str, ...]] = ()
    generate_options: ClassVar[dict[str, str]] = {}
    """Keyword arguments ``generate`` takes besides ``do`` and ``seed`` (name -> one-line description):
    the options a caller may pass, e.g. CausCell's ``mode``; others are refused
    (:func:`causcell_bench.counterfactual.generate`)."""
    state_version: ClassVar[int] = 1
    """Version of what :meth:`_save_state` writes: raise it when a change makes earlier saves unreadable;
    :meth:`load` refuses a save of another version with a clear message."""
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

    def expected_generate(
        self, adata: AnnData, do: Mapping[str, str] | None = None, *, seed: int, n_draws: int
    ) -> np.ndarray:
        """The expected cells: the mean of ``n_draws`` draws of :meth:`generate` (seeds derived from
        ``seed``) when ``capabilities.stochastic``, else the one deterministic output.

        A sample is a plausible cell, not an estimate of a cell's expected profile: scored against
        an expectation it loses by its own sampling noise. Methods with a cheaper way to average
        (CausCell: several chains in one call) override this.
        """
        if n_draws < 1:
            raise BenchError(f"n_draws must be at least 1, got {n_draws}")
        if n_draws == 1 or not type(self).capabilities.stochastic:
            return self.generate(adata, do, seed=seed)
        total: np.ndarray | None = None
        for i in range(n_draws):
            # seed, then seeds no other call of this cell uses (generate is called with `seed` elsewhere)
            x = np.asarray(self.generate(adata, do, seed=seed if i == 0 else _draw_seed(seed, i)), dtype=np.float64)
            total = x if total is None else total + x
        assert total is not None
        return (total / n_draws).astype(np.float32)

    # --- persistence -------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the fitted method into directory ``path``: its fitted state (:meth:`_save_state`), then
        the manifest ``method.json`` (class, state version, preset, parameters, spec, genes, categories).

        Everything is written next to ``path`` first and moved in when complete
        (:func:`causcell_bench.fileio.atomic_dir`; other files in ``path`` are kept), the manifest
        last: a failed save (a full disk: :class:`~causcell_bench.errors.DiskError`) leaves the old
        save, or nothing.
        """
        if not self.is_fitted:
            raise NotFittedError(f"{self.name} is not fitted; call fit() before save()")
        check_interrupt()  # a fit that a library let run on after Ctrl-C is not saved
        with atomic_dir(Path(path), last=(MANIFEST_FILE,)) as tmp:
            self._save_state(tmp)
            atomic_write_json(tmp / MANIFEST_FILE, self._manifest())

    def _manifest(self) -> dict[str, Any]:
        assert self.spec_ is not None
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "class": class_path(type(self)),
            "method": self.name,
            "state_version": self.state_version,
            "preset": self.preset,
            "params": dict(self.params),
            "device": self.device,  # where it was fitted, for the record: load() takes the device to use
            "spec": self.spec_.model_dump(mode="json"),
            "var_names": list(self.var_names_ or []),
            "categories": {c: list(v) for c, v in (self.categories_ or {}).items()},
        }

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Self:
        """The fitted method saved in directory ``path`` by :meth:`save`, on ``device`` ("auto": CUDA when
        present; a model fitted on a GPU loads on a CPU-only machine). A directory saved before the
        manifest existed is read the old way (:meth:`_load_legacy`)."""
        path = Path(path)
        name = getattr(cls, "name", cls.__name__)
        try:
            manifest = read_method_manifest(path)
            if manifest is None:
                legacy = cls._load_legacy(path, device)
                if legacy is None:
                    raise BenchError(
                        f"no saved {name} in {path} (no {MANIFEST_FILE}); save a fitted model there first, "
                        "or train the model again"
                    )
                return legacy
            cls._check_manifest(manifest, path)
            try:
                obj = cls._restore(manifest, device)
            except BenchError as e:  # e.g. a parameter this version no longer has
                raise BenchError(f"the {name} saved in {path} does not fit this version ({e}); train the model again") from None
            obj._load_state(path, device)
        except BenchError:
            raise
        except Exception as e:  # noqa: BLE001 - pickle, torch and the packages each fail their own way
            raise BenchError(
                f"cannot load the {name} saved in {path} ({type(e).__name__}: {' '.join(str(e).split())[:160]}): "
                "a file is missing, truncated, corrupt or from an incompatible version; train the model again"
            ) from None
        return obj

    @classmethod
    def _check_manifest(cls, manifest: Mapping[str, Any], path: Path) -> None:
        """Refuse a manifest of another class, or of a state version this class does not read."""
        f = path / MANIFEST_FILE
        name = getattr(cls, "name", cls.__name__)
        saved_class, saved_name = manifest.get("class"), manifest.get("method")
        # the same class whether it moved module (same name) or was renamed (same class path)
        if saved_class != class_path(cls) and saved_name != name:
            raise BenchError(
                f"{path} holds a {saved_name} model ({saved_class}), not a {name}; load it with that method's class"
            )
        version = manifest.get("state_version")
        if version != cls.state_version:
            raise BenchError(
                f"{f} was saved with version {version} of {name}'s state; this causcell-bench reads version "
                f"{cls.state_version} only. Train the model again (or load it with the causcell-bench that saved it)"
            )
        missing = [k for k in ("preset", "params", "spec", "var_names", "categories") if k not in manifest]
        if missing:
            raise BenchError(f"{f} lacks {missing}; it is incomplete or damaged: train the model again")

    @classmethod
    def _restore(cls, saved: Mapping[str, Any], device: str) -> Self:
        """The method built with the saved preset and parameters on ``device``, with the spec, genes and
        categories it remembered at fit time (its fitted state is not loaded yet). ``saved``: a manifest,
        or an older save's equivalent fields."""
        obj = cls(preset=saved["preset"], device=device, **saved["params"])
        obj.spec_ = DatasetSpec.model_validate(saved["spec"])
        obj.var_names_ = [str(g) for g in saved["var_names"]]
        cats = saved["categories"]
        order = [c for c in obj.spec_.concepts if c in cats] + [c for c in cats if c not in obj.spec_.concepts]
        obj.categories_ = {c: [str(v) for v in cats[c]] for c in order}
        return obj

    def _save_state(self, path: Path) -> None:
        """Write the fitted state that the manifest does not hold into directory ``path``.

        Default: every other instance attribute (the progress callback left out), pickled to
        ``state.pkl``, torch modules as CPU state dicts (:class:`SavedNet`), so that a model fitted on a
        GPU loads on a CPU-only machine. Override it, with :meth:`_load_state`, for state that needs its
        own files (a package's saved model, a torch file read with ``weights_only``).
        """
        state = {k: saved_net(v) if _is_module(v) else v
                 for k, v in self.__getstate__().items() if k not in _MANIFEST_ATTRS}
        with atomic_open(path / STATE_FILE, "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)

    def _load_state(self, path: Path, device: str) -> None:
        """Read back what :meth:`_save_state` wrote in ``path`` into this freshly built method, its torch
        modules onto ``device`` (also ``self.device``)."""
        with open(path / STATE_FILE, "rb") as fh:
            state = pickle.load(fh)
        if not isinstance(state, dict):
            raise BenchError(f"{path / STATE_FILE} holds a {type(state).__name__}, not a saved state; train the model again")
        self.__dict__.update(self._on_device(state))

    def _on_device(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` with every :class:`SavedNet` rebuilt, and every torch module moved, onto this method's device."""
        if not any(isinstance(v, SavedNet) or _is_module(v) for v in state.values()):
            return dict(state)
        device = self.torch_device()
        return {k: rebuild_net(v, device) if isinstance(v, SavedNet) else v.to(device) if _is_module(v) else v
                for k, v in state.items()}

    @classmethod
    def _load_legacy(cls, path: Path, device: str) -> Self | None:
        """The method saved in ``path`` by a causcell-bench from before the manifest, or None when there is
        none. Default: the base class's former whole-object pickle ``method.pkl``. An adapter that had a
        layout of its own overrides this, and calls it for everything else."""
        f = path / LEGACY_PICKLE
        if not f.is_file():
            return None
        with open(f, "rb") as fh:
            obj = pickle.load(fh)
        if not isinstance(obj, cls):
            raise BenchError(f"{path} holds a {type(obj).__name__}, not a {cls.__name__}; load it with that class")
        state = obj.__dict__
        legacy_net = state.pop("net_state_", None)  # (class, config, CPU weights) of the former CpuPickledNet mixin
        if legacy_net is not None:
            net_cls, config, weights = legacy_net
            state["net_"] = SavedNet(net_cls, config, weights, training=False)
        obj.device = device
        obj.__dict__.update(obj._on_device(state))
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


@dataclass(frozen=True)
class SavedNet:
    """A torch module as the default :meth:`Method._save_state` saves it: its class, the arguments that
    build it (the module's ``config`` dict) and its weights on the CPU (:func:`saved_net`, :func:`rebuild_net`)."""

    cls: type
    config: dict[str, Any]
    weights: dict[str, Any]
    training: bool = False


def _draw_seed(seed: int, i: int) -> int:
    """The seed of draw ``i`` > 0 of :meth:`Method.expected_generate`: fixed by ``seed``, and unlike ``seed``."""
    return int(np.random.SeedSequence([int(seed), 0xD7A3, int(i)]).generate_state(1)[0])


def class_path(cls: type) -> str:
    """``module:QualifiedName`` of a class, as the manifest names it."""
    return f"{cls.__module__}:{cls.__qualname__}"


def read_saved_json(f: Path) -> Any:
    """The JSON in ``f``, a file of a saved model; a BenchError saying the save is damaged when it is not JSON."""
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"{f} is not valid JSON ({e}); the save is damaged: train the model again") from None


def read_method_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of a method saved in directory ``path`` (None when it has none), or a BenchError
    when it is unreadable or not a method manifest."""
    f = Path(path) / MANIFEST_FILE
    if not f.is_file():
        return None
    manifest = read_saved_json(f)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BenchError(f"{f} is not a causcell-bench method manifest; save the model with Method.save or train it again")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > MANIFEST_VERSION:
        raise BenchError(
            f"{f} has manifest version {manifest.get('version')!r}; this causcell-bench reads up to "
            f"{MANIFEST_VERSION}: upgrade causcell-bench, or train the model again"
        )
    return manifest


def _is_module(value: Any) -> bool:
    torch = sys.modules.get("torch")  # not imported: no value can be a torch module (nor need torch installed)
    return torch is not None and isinstance(value, torch.nn.Module)


def saved_net(net: Any) -> Any:
    """A torch module in savable form: a :class:`SavedNet` (CPU weights) when it has a ``config`` dict of
    its constructor's arguments, else a CPU copy of the whole module."""
    config = getattr(net, "config", None)
    if isinstance(config, dict):
        weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        return SavedNet(type(net), dict(config), weights, training=bool(net.training))
    return copy.deepcopy(net).cpu()


def rebuild_net(saved: SavedNet, device: Any) -> Any:
    """The module a :class:`SavedNet` describes, with its weights, on ``device``."""
    net = saved.cls(**saved.config)
    net.load_state_dict(saved.weights)
    return net.train(saved.training).to(device)


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
