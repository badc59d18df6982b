"""Run configuration (pydantic): what grid to run and how.

A run directory holds ``config.json`` (this model), the saved splits and one
JSON per grid cell; its hash per cell decides whether a stored result is still
valid on resume.
"""

from __future__ import annotations

import difflib
import inspect
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from causcell_bench.errors import BenchError
from causcell_bench.threads import resolve_threads

Setting = Literal["ID", "OOD", "HOLDOUT"]
# test: the quick preset shrunk to seconds (Method.test_params), for smoke runs of the whole pipeline
PRESETS = ("quick", "paper", "test")


class RunConfig(BaseModel):
    """One benchmark grid: datasets x methods x settings x folds x seeds."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    settings: list[Setting] = Field(default_factory=lambda: ["ID", "OOD"])
    n_folds: int = Field(default=5, ge=1)  # 1: only for folds given as files (make_splits says so)
    folds: list[int] | None = Field(default=None, description="subset of fold indices to run (default: all)")
    seeds: list[int] = Field(default_factory=lambda: [0])
    split_seed: int = 0
    preset: str = "quick"
    device: str = "auto"
    jobs: int = Field(default=1, ge=1)
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads per cell (default 1; $CAUSCELL_BENCH_THREADS overrides)"
    )
    dataset_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="passed to every dataset loader (e.g. n_cells for synthetic)"
    )
    method_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-method hyperparameter overrides on top of the preset"
    )
    concepts: list[str] | None = None
    edges: list[tuple[str, str]] | None = None
    n_hvg: int | None = None
    data_dir: str | None = None
    probe: Literal["logreg", "knn"] = "logreg"
    counterfactual: bool = True
    holdout: list[dict[str, str]] | None = Field(
        default=None, description="user-chosen held-out label combinations: the HOLDOUT setting's single fold")
    cf_concept: str | None = Field(
        default=None, description="concept the OOD held-out population task intervenes on (default: the "
        "spec's perturbation, else every concept in turn)")
    truth_samples: int = Field(
        default=10, ge=1, description="a stochastic method's counterfactuals scored against the simulator's "
        "expected (noiseless) counterfactuals are the mean of this many draws (1: a single sample)")
    # not in the cell hash: the parts change no metric, they only add the within-fold rank intervals
    cell_parts: int = Field(
        default=5, ge=0, description="when a setting runs one fold x seed, its test cells are also scored in "
        "this many parts, which stand in for folds in the leaderboard's rank bootstrap (0 or 1: off)")

    @field_validator("datasets", "methods", "settings", "folds", "seeds")
    @classmethod
    def _unique(cls, v: list[Any] | None) -> list[Any] | None:
        # `--folds 0,0` would otherwise run (and store over) the same cell twice
        return None if v is None else list(dict.fromkeys(v))

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, v: list[int]) -> list[int]:
        bad = [x for x in v if not 0 <= x <= 2**32 - 1]
        if bad:
            raise ValueError(f"seed {bad[0]} is out of range; give numbers in 0..{2**32 - 1}")
        return v

    @classmethod
    def request(cls, *, param_flag: str = "--param", check_gpu: bool = True, **fields: Any) -> RunConfig:
        """The one checked constructor of a run request, used by ``causcell-bench run`` and
        :func:`causcell_bench.benchmark` alike: every field validated, method parameters checked
        against their methods (names, types, ranges), HOLDOUT added when ``holdout`` is given, fold
        indices in range, the device present (``check_gpu``). Every refusal is a :class:`BenchError`
        with one line; the data-dependent checks follow in :func:`causcell_bench.runner.prepare`."""
        if fields.get("holdout") and "HOLDOUT" not in (fields.get("settings") or ["ID", "OOD"]):
            fields["settings"] = [*(fields.get("settings") or ["ID", "OOD"]), "HOLDOUT"]
        try:
            config = cls(**fields)
        except ValidationError as e:
            raise BenchError(validation_line(e)) from None
        config = config.model_copy(update={
            "method_params": check_method_params(config.method_params, config.methods, config.preset, param_flag)})
        try:
            config.fold_indices()
        except ValueError as e:
            raise BenchError(f"folds: {e}; give indices below n_folds ({config.n_folds})") from None
        check_device(config.device, visible=check_gpu)
        return config

    def oversubscription(self, cores: int | None = None) -> str | None:
        """A warning when jobs x threads per cell exceed the CPU cores (cells then slow each other)."""
        import os

        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        want = self.jobs * self.effective_threads()
        if want <= cores:
            return None
        return (f"{self.jobs} jobs x {self.effective_threads()} threads = {want} threads on {cores} CPU cores: "
                "cells will slow each other down; lower --jobs or --threads")

    @model_validator(mode="after")
    def _holdout_setting(self) -> RunConfig:
        if "HOLDOUT" in self.settings and not self.holdout:
            raise ValueError("the HOLDOUT setting needs the combination to hold out: --holdout 'concept=value,...'")
        return self

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose one of {list(PRESETS)}")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError(f"unknown device {v!r}; use auto, cpu or cuda")
        return v

    def folds_of(self, setting: str) -> list[int]:
        """The fold indices a setting runs: HOLDOUT has one fold (0), the others :meth:`fold_indices`."""
        return [0] if setting == "HOLDOUT" else self.fold_indices()

    def single_unit(self, setting: str) -> bool:
        """Whether ``setting`` runs one fold x seed only (then rank intervals come from cell parts)."""
        return len(self.folds_of(setting)) * len(self.seeds) == 1

    def fold_indices(self) -> list[int]:
        if self.folds is None:
            return list(range(self.n_folds))
        bad = [f for f in self.folds if not 0 <= f < self.n_folds]
        if bad:
            raise ValueError(f"fold(s) {bad} out of range 0..{self.n_folds - 1}")
        return list(self.folds)

    def data_key(self) -> dict[str, Any]:
        """Everything that determines the data a cell sees (not the method)."""
        return {
            "dataset_kwargs": self.dataset_kwargs, "concepts": self.concepts, "edges": self.edges,
            "n_hvg": self.n_hvg, "n_folds": self.n_folds, "split_seed": self.split_seed,
            **({"holdout": self.holdout} if self.holdout else {}),
        }

    def effective_threads(self) -> int:
        """CPU threads each cell runs with: $CAUSCELL_BENCH_THREADS, else ``threads``, else 1 (never --jobs)."""
        return resolve_threads(self.threads)

    def cell_hash(self, dataset: str, method: str, setting: str, fold: int, seed: int,
                  threads: int | None = None) -> str:
        """Hash of everything that determines one cell's result (:func:`causcell_bench.grid.record.cell_hash`)."""
        from causcell_bench.grid.record import CellKey, cell_hash

        return cell_hash(self, CellKey(dataset, method, setting, fold, seed), threads=threads)


# --- checks run before any data is loaded ------------------------------------------------------
def validation_line(e: ValidationError) -> str:
    """A pydantic error as one line: each field, what is wrong and the value given, joined by "; " (no
    URLs, no tables). The CLI's error boundary and :meth:`RunConfig.request` both say it this way."""
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err.get("loc", ())) or "request"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        given = err.get("input")
        shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
        parts.append(f"{where}: {msg}{shown}")
    return "; ".join(parts)


def _close(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if not close:
        close = [k for k in known if k.lower() == name.lower()]
    return f" Did you mean {', '.join(close)}?" if close else ""


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a table ({...})"}


def value_kind(default: Any) -> type | None:
    for t in (bool, int, float, str, list, dict):  # bool before int: True is an int to Python
        if isinstance(default, t if t is not list else (list, tuple)):
            return t
    return None


def value_fits(kind: type | None, value: Any) -> bool:
    if kind is None:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def method_param_defaults(cls: type, preset: str) -> dict[str, Any]:
    """The parameters a method takes under ``preset`` with their defaults (None: any type), from its
    preset table and the keyword arguments its own ``__init__`` names."""
    from causcell_bench.methods.base import Method

    out: dict[str, Any] = dict(getattr(cls, "presets", {}).get(preset, {}))
    if cls.__init__ is not Method.__init__:
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name not in ("self", "preset", "device") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                out.setdefault(p.name, None if p.default is p.empty else p.default)
    return out


def check_params(cls: type, preset: str, params: dict[str, Any], flag: str = "--param") -> dict[str, Any]:
    """Refuse a parameter ``cls`` does not take, or a value whose type differs from the preset default's
    (``n_latent=abc`` would otherwise fail deep inside torch); ints are accepted where floats are."""
    name = getattr(cls, "name", cls.__name__)
    if preset not in getattr(cls, "presets", {}):
        raise BenchError(f"{name} has no preset {preset!r}; choose one of {sorted(cls.presets)}")
    defaults = method_param_defaults(cls, preset)
    for key, value in params.items():
        if key not in defaults:
            if not defaults:
                raise BenchError(f"{flag} {name}.{key}: {name} takes no parameters; drop the {flag}")
            raise BenchError(f"{flag} {name}.{key}: {name} has no parameter {key!r}.{_close(key, sorted(defaults))} "
                             f"Its parameters: {', '.join(sorted(defaults))}")
        kind = value_kind(defaults[key])
        shown = json.dumps(value) if not isinstance(value, str) else value
        if not value_fits(kind, value):
            raise BenchError(f"{flag} {name}.{key}={shown}: "
                             f"{key} takes {_TYPE_WORDS[kind]} (the {preset} preset's default is "  # type: ignore[index]
                             f"{json.dumps(defaults[key])}); give a value of that type")
        lo, hi = param_bounds(cls, key, defaults[key])
        if kind in (int, float) and ((lo is not None and value < lo) or (hi is not None and value >= hi)):
            where = (f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g})") if lo is not None else f"< {hi:g}"
            raise BenchError(f"{flag} {name}.{key}={shown}: {key} must be {where} (the {preset} preset's default "
                             f"is {json.dumps(defaults[key])}); give a value in that range")
    return dict(params)


def param_bounds(cls: type, key: str, default: Any) -> tuple[float | None, float | None]:
    """The range [lo, hi) a numeric parameter must lie in (None: open), so that a value no model can use
    (``n_latent=-5``, ``z_d_dim=0``, ``val_fraction=1.5``) is refused before any training.

    A method's ``param_bounds`` class attribute declares its exceptions; otherwise: fractions, dropout
    rates and decays lie in [0, 1); a count whose default is >= 1 (sizes, steps, epochs, patience,
    batch sizes) must be >= 1 unless it is a floor (``min_*``); any other parameter with a non-negative
    default (rates, weights, floors) must be >= 0."""
    declared = getattr(cls, "param_bounds", {}) or {}
    if key in declared:
        return declared[key]
    kind = value_kind(default)
    if kind not in (int, float):
        return None, None
    if any(w in key for w in ("fraction", "dropout", "decay")):
        return 0.0, 1.0
    if kind is int and default >= 1 and not key.startswith("min_") and "_min_" not in key:
        return 1, None
    return (0, None) if default >= 0 else (None, None)


def check_method_params(method_params: dict[str, dict[str, Any]], methods: list[str], preset: str,
                        flag: str = "--param") -> dict[str, dict[str, Any]]:
    """``method_params`` with method names matched case-insensitively to ``methods`` (the run's), every
    parameter checked by :func:`check_params`. A method that is unknown or not in the run is an error:
    its parameters would otherwise be silently ignored."""
    from causcell_bench.registry import get_method, method_names

    out: dict[str, dict[str, Any]] = {}
    folded = {m.lower(): m for m in methods}
    for given, params in method_params.items():
        name = folded.get(given.lower())
        if name is None:
            known = method_names()
            if given.lower() not in {k.lower() for k in known}:
                raise BenchError(f"{flag} {given}.{next(iter(params), '')}: unknown method {given!r}.{_close(given, known)} "
                                 f"Methods: {', '.join(known)}")
            raise BenchError(f"{flag} {given}.{next(iter(params), '')}: {given} is not among this run's methods "
                             f"({', '.join(methods)}); add it to --methods or drop the parameter")
        out.setdefault(name, {}).update(check_params(get_method(name), preset, params, flag))
    return out


def check_device(device: str, visible: bool = True) -> None:
    """``device`` must be auto, cpu or cuda[:N], and (``visible``) a cuda device one torch can see here:
    fail now, not in the first cell."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise BenchError(f"--device {device}: choose auto, cpu or cuda (cuda:N for one GPU)")
    if not device.startswith("cuda") or not visible:
        return
    import torch

    if not torch.cuda.is_available():
        raise BenchError(f"--device {device}: torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                         "use --device auto or cpu")
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise BenchError(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0; "
                         "give one of those")
