"""Run configuration (pydantic): what grid to run and how.

A run directory holds ``config.json`` (this model), the saved splits and one
JSON per grid cell; its hash per cell decides whether a stored result is still
valid on resume.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from causcell_bench.threads import resolve_threads

Setting = Literal["ID", "OOD", "HOLDOUT"]
PRESETS = ("quick", "paper")


class RunConfig(BaseModel):
    """One benchmark grid: datasets x methods x settings x folds x seeds."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    settings: list[Setting] = Field(default_factory=lambda: ["ID", "OOD"])
    n_folds: int = Field(default=5, ge=2)
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

    @field_validator("datasets", "methods", "settings", "folds", "seeds")
    @classmethod
    def _unique(cls, v: list[Any] | None) -> list[Any] | None:
        # `--folds 0,0` would otherwise run (and store over) the same cell twice
        return None if v is None else list(dict.fromkeys(v))

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
        """Hash of everything that determines one cell's result; a changed hash means recompute.

        ``threads``: the count the cell ran with (default :meth:`effective_threads`); float results
        depend on it, as they do on the device.
        """
        payload = {
            "dataset": dataset, "method": method, "setting": setting, "fold": fold, "seed": seed,
            "preset": self.preset, "params": self.method_params.get(method, {}), "probe": self.probe,
            "counterfactual": self.counterfactual, "device": self.device,
            "threads": threads or self.effective_threads(), **self.data_key(),
            **({"cf_concept": self.cf_concept} if self.cf_concept else {}),
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
