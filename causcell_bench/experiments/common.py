"""Pieces shared by the experiments: options, methods, data and statistics."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import stats

from causcell_bench.assignments import assignment_dict
from causcell_bench.errors import BenchError


# --- options ------------------------------------------------------------------------------
def parse_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``["n_cells=1000", "values=[\"age_1\"]"]`` -> {"n_cells": 1000, ...}: the ``--set`` options, values
    read as JSON when they parse (the rules of :mod:`causcell_bench.assignments`)."""
    return assignment_dict(items, flag="--set", form="key=value", example="n_cells=1000", typed=True)


def make_config(
    cls: type, presets: Mapping[str, Mapping[str, Any]], preset: str, options: Mapping[str, Any] | None
) -> Any:
    """An experiment config dataclass from a preset plus user options (unknown keys refused)."""
    if preset not in presets:
        raise BenchError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise BenchError(f"unknown experiment option(s) {unknown}; options are {sorted(fields)}")
    try:
        return cls(**{**presets[preset], **dict(options or {})})
    except (TypeError, ValueError) as e:
        raise BenchError(f"invalid experiment options: {e}") from None


# --- methods ---------------------------------------------------------------------------------
def resolve_methods(methods: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """User's method list (``all`` = every counterfactual-capable method) validated, or ``default``."""
    from causcell_bench.counterfactual import counterfactual_methods, method_class, require_counterfactuals

    names = list(methods) if methods else list(default)
    out: list[str] = []
    for n in names:
        if n.lower() == "all":
            out += [m for m in counterfactual_methods() if m not in out]
            continue
        cls = method_class(n)
        require_counterfactuals(cls)
        if cls.name not in out:
            out.append(cls.name)
    if not out:
        raise BenchError("no methods to run")
    return out


def build_method(name: str, preset: str, device: str, params: Mapping[str, Mapping[str, Any]] | None) -> Any:
    """An unfitted instance of method ``name`` with its ``params`` (looked up by canonical or given name)."""
    from causcell_bench.counterfactual import method_class

    cls = method_class(name)
    own = dict((params or {}).get(cls.name, (params or {}).get(name, {})))
    return cls(preset=preset, device=device, **own)


class Timer:
    """Wall-clock seconds of named steps."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, key: str) -> Any:
        timer = self

        class _Ctx:
            def __enter__(self) -> None:
                self.t0 = time.perf_counter()

            def __exit__(self, *exc: object) -> None:
                timer.times[key] = round(timer.times.get(key, 0.0) + time.perf_counter() - self.t0, 3)

        return _Ctx()


# --- expression helpers -----------------------------------------------------------------------
def dense(x: Any) -> np.ndarray:
    """A (small) matrix as dense float32: experiments densify only the selected cells."""
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def marker_genes(x: Any, labels: np.ndarray, group: str, n: int) -> np.ndarray:
    """Column indices of the ``n`` genes most up in ``group`` vs the rest (Welch t on log expression)."""
    mask = np.asarray(labels).astype(str) == str(group)
    if mask.sum() < 2 or (~mask).sum() < 2:
        raise BenchError(f"cell type {group!r} has too few cells to find marker genes")
    a, b = x[mask], x[~mask]

    def mv(m: Any) -> tuple[np.ndarray, np.ndarray]:
        mean = np.asarray(m.mean(0)).ravel()
        sq = np.asarray(m.multiply(m).mean(0)).ravel() if sp.issparse(m) else (np.asarray(m) ** 2).mean(0)
        return mean, np.maximum(sq - mean**2, 0.0)

    (ma, va), (mb, vb) = mv(a), mv(b)
    t = (ma - mb) / np.sqrt(va / a.shape[0] + vb / b.shape[0] + 1e-12)
    return np.argsort(-t, kind="stable")[:n]


# --- statistics -----------------------------------------------------------------------------
def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN treated as 1)."""
    p = np.where(np.isfinite(p), p, 1.0)
    return stats.false_discovery_control(p, method="bh")


def rank_sum_test(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gene, two-sided Mann-Whitney U of ``a`` vs ``b`` (cells x genes): (p, mean(a) - mean(b))."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = stats.mannwhitneyu(a, b, axis=0, alternative="two-sided", method="asymptotic").pvalue
    return np.where(np.isfinite(p), p, 1.0), a.mean(0) - b.mean(0)


def signed_rank_test(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gene, two-sided Wilcoxon signed-rank test of paired rows ``a - b``: (p, mean difference)."""
    d = a - b
    p = np.ones(d.shape[1])
    ok = np.flatnonzero((d != 0).any(0))
    if ok.size:
        with np.errstate(invalid="ignore", divide="ignore"):
            p[ok] = stats.wilcoxon(d[:, ok], axis=0, zero_method="wilcox", method="asymptotic").pvalue
    return np.where(np.isfinite(p), p, 1.0), d.mean(0)
