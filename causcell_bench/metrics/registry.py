"""What every metric is: its group, direction, inputs and the function that computes it.

Each metric is declared once, with :func:`declare`, right below the scorer that
emits it (``metrics/disentanglement.py``, ``reconstruction.py``, ``counterfactual.py``,
``distribution.py``); the leaderboard's groups, categories and headline columns
are derived from these declarations. Definitions in words: ``docs/metrics.md``.

Scorers return flat ``{full_name: value}`` dicts. A full name is a base name
optionally followed by a qualifier after a colon: ``"acc:age"`` (concept age),
``"offdiag_acc:age|celltype"`` (embedding of age predicting celltype),
``"causal_acc:celltype"``. :func:`metric_info` strips the qualifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from causcell_bench.errors import BenchError

#: metric groups by category; ``overall`` = mean over categories of the mean over their groups, so
#: per-cell fidelity and distribution-level realism weigh the same (neither artefact dominates)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "disentanglement": ("predictive", "granularity", "dci_mig"),
    "fidelity": ("trend", "geometry", "marker"),
    "realism": ("realism",),
    "counterfactual": ("cf_truth", "distribution"),
}
GROUPS: tuple[str, ...] = tuple(g for gs in CATEGORIES.values() for g in gs)
CATEGORY_OF: dict[str, str] = {g: cat for cat, gs in CATEGORIES.items() for g in gs}

NEEDS: frozenset[str] = frozenset({"embeddings", "generated", "true_counterfactual", "heldout_population"})


@dataclass(frozen=True)
class MetricInfo:
    """One metric.

    ``aggregate=False`` marks CT controls and diagnostics kept out of the overall score;
    ``superseded_by`` names a DAG-aware variant that, where a run measured it (the dataset has a
    DAG), is scored instead of this metric (which stays in the tables as a diagnostic);
    ``headline`` metrics are the leaderboard's and the heatmap's columns (every metric stays in
    the tables); ``defined_in`` names the function that computes it.
    """

    name: str
    group: str
    higher_is_better: bool
    needs: frozenset[str]
    description: str
    aggregate: bool = True
    qualified: bool = False  # carries a ":concept" qualifier
    headline: bool = False
    defined_in: str = ""
    superseded_by: str | None = None

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"unknown metric group {self.group!r}; groups are {list(GROUPS)}")
        if not self.needs <= NEEDS:
            raise ValueError(f"unknown needs {sorted(self.needs - NEEDS)}")

    @property
    def category(self) -> str:
        return CATEGORY_OF[self.group]

    @property
    def from_reconstruction(self) -> bool:
        """Computed from a method's reconstruction alone (fidelity, realism): says nothing about a
        method whose reconstruction is its input cell."""
        return self.needs == GEN


METRICS: dict[str, MetricInfo] = {}

EMB = frozenset({"embeddings"})
GEN = frozenset({"generated"})
CF = frozenset({"generated", "true_counterfactual"})
DIST = frozenset({"generated", "heldout_population"})


def declare(
    name: str,
    group: str,
    higher_is_better: bool,
    description: str,
    *,
    computed_by: Callable[..., Any],
    needs: frozenset[str],
    aggregate: bool = True,
    qualified: bool = False,
    headline: bool = False,
    superseded_by: str | None = None,
) -> MetricInfo:
    """Register one metric; called by the module that computes it, below the scorer ``computed_by``."""
    if name in METRICS:
        raise ValueError(f"metric {name!r} declared twice ({METRICS[name].defined_in})")
    info = MetricInfo(name, group, higher_is_better, needs, description, aggregate=aggregate,
                      qualified=qualified, headline=headline, superseded_by=superseded_by,
                      defined_in=f"{computed_by.__module__}.{computed_by.__qualname__}")
    METRICS[name] = info
    return info


def base_name(full_name: str) -> str:
    """``"acc:age|celltype"`` -> ``"acc"``."""
    return str(full_name).split(":", 1)[0]


def metric_info(full_name: str) -> MetricInfo:
    """The :class:`MetricInfo` of a (possibly qualified) metric name."""
    base = base_name(full_name)
    try:
        return METRICS[base]
    except KeyError:
        raise BenchError(f"unknown metric {full_name!r}; known metrics: {sorted(METRICS)}") from None


def list_metrics(group: str | None = None) -> list[MetricInfo]:
    """All metrics, or those of one group, in group order then declaration order."""
    if group is not None and group not in GROUPS:
        raise BenchError(f"unknown metric group {group!r}; choose one of {list(GROUPS)}")
    ordered = sorted(METRICS.values(), key=lambda m: GROUPS.index(m.group))
    return [m for m in ordered if group is None or m.group == group]


def headline_metrics() -> list[str]:
    """The leaderboard's headline columns, in group order."""
    return [m.name for m in list_metrics() if m.headline]
