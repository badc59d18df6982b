"""What every metric is: its group, direction and inputs (DESIGN.md "Metrics", specs/metrics.md).

Scorers return flat ``{full_name: value}`` dicts. A full name is a base name
optionally followed by a qualifier after a colon: ``"acc:age"`` (concept age),
``"offdiag_acc:age|celltype"`` (embedding of age predicting celltype),
``"causal_acc:celltype"``. :func:`metric_info` strips the qualifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from causcell_bench.errors import BenchError

GROUPS: tuple[str, ...] = (
    "predictive",
    "granularity",
    "dci_mig",
    "trend",
    "geometry",
    "marker",
    "counterfactual",
    "distribution",
)

NEEDS: frozenset[str] = frozenset({"embeddings", "generated", "true_counterfactual", "heldout_population"})


@dataclass(frozen=True)
class MetricInfo:
    """One metric: ``aggregate=False`` marks CT controls and diagnostics kept out of the overall score."""

    name: str
    group: str
    higher_is_better: bool
    needs: frozenset[str]
    description: str
    aggregate: bool = True
    qualified: bool = field(default=False)  # carries a ":concept" qualifier

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"unknown metric group {self.group!r}")
        if not self.needs <= NEEDS:
            raise ValueError(f"unknown needs {sorted(self.needs - NEEDS)}")


_EMB = frozenset({"embeddings"})
_GEN = frozenset({"generated"})
_CF = frozenset({"generated", "true_counterfactual"})
_DIST = frozenset({"generated", "heldout_population"})

_ALL = [
    # predictive ability: probe on train-fold z_c -> y_c, scored on the test fold
    MetricInfo("acc", "predictive", True, _EMB, "probe accuracy of concept c from its own embedding", True, True),
    MetricInfo("precision_w", "predictive", True, _EMB, "probe precision (weighted by class support)", True, True),
    MetricInfo("recall_w", "predictive", True, _EMB, "probe recall (weighted by class support)", True, True),
    MetricInfo("f1_w", "predictive", True, _EMB, "probe F1 (weighted by class support)", True, True),
    MetricInfo(
        "offdiag_acc", "predictive", False, _EMB,
        "accuracy of the probe from embedding c to another concept j (name 'offdiag_acc:c|j'); a diagnostic",
        False, True,
    ),
    MetricInfo(
        "exclusivity", "predictive", True, _EMB,
        "own-concept lift over the majority baseline minus the mean lift on the other concepts",
        True, True,
    ),
    # granularity
    MetricInfo("nmi_fine", "granularity", True, _EMB, "NMI of Ward clusters of z_c vs fine labels", True, True),
    MetricInfo("ari_fine", "granularity", True, _EMB, "ARI of Ward clusters of z_c vs fine labels", True, True),
    MetricInfo("n_cells_fine", "granularity", True, _EMB, "test cells clustered for nmi_fine/ari_fine", False, True),
    # DCI / MIG on the concatenated embedding
    MetricInfo("dci_d", "dci_mig", True, _EMB, "DCI disentanglement (Eastwood & Williams 2018)"),
    MetricInfo("dci_c", "dci_mig", True, _EMB, "DCI completeness (Eastwood & Williams 2018)"),
    MetricInfo("dci_i", "dci_mig", True, _EMB, "DCI informativeness: mean test accuracy of the tree ensembles"),
    MetricInfo("mig", "dci_mig", True, _EMB, "mutual information gap (Chen et al. 2018)"),
    # reconstruction: trend
    MetricInfo("pcc", "trend", True, _GEN, "mean per-cell Pearson r between real and generated cells"),
    MetricInfo("mse", "trend", False, _GEN, "mean squared error over all cells x genes"),
    MetricInfo("pcc_ct", "trend", True, _GEN, "CT control of pcc: generated rows randomly permuted", False),
    MetricInfo("mse_ct", "trend", False, _GEN, "CT control of mse: generated rows randomly permuted", False),
    # geometry
    MetricInfo("nmi_geom", "geometry", True, _GEN, "NMI of Ward clusterings of real and of generated cells"),
    MetricInfo("ari_geom", "geometry", True, _GEN, "ARI of Ward clusterings of real and of generated cells"),
    MetricInfo("n_cells_clustered", "geometry", True, _GEN, "cells used for the geometry clustering", False),
    # marker genes
    MetricInfo("marker", "marker", True, _GEN, "per-cell overlap of top-k Wilcoxon marker genes, real vs generated"),
    MetricInfo("marker_ct", "marker", True, _GEN, "CT control of marker: generated rows randomly permuted", False),
    # counterfactual (ground truth known)
    MetricInfo("cf_pcc", "counterfactual", True, _CF, "mean per-cell Pearson r, predicted vs true counterfactual"),
    MetricInfo("cf_mse", "counterfactual", False, _CF, "MSE between predicted and true counterfactual"),
    MetricInfo("effect_pcc", "counterfactual", True, _CF, "mean per-cell Pearson r of predicted vs true effects"),
    MetricInfo(
        "causal_acc", "counterfactual", True, _CF,
        "accuracy of a real-cell classifier's labels for a descendant concept on counterfactual cells",
        True, True,
    ),
    # distribution level
    MetricInfo("edist", "distribution", False, _DIST, "energy distance between predicted and real populations"),
    MetricInfo("mean_pcc", "distribution", True, _DIST, "Pearson r of the mean expression profiles"),
    MetricInfo("deg_overlap", "distribution", True, _DIST, "overlap of top-k DEGs vs the source population"),
    MetricInfo(
        "n_cells_edist", "distribution", True, _DIST,
        "predicted + real cells used by the E-distance (mean over held-out populations)", False,
    ),
    MetricInfo("n_populations", "distribution", True, _DIST, "held-out populations scored and averaged", False),
]

METRICS: dict[str, MetricInfo] = {m.name: m for m in _ALL}


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
    """All metrics, or those of one group, in a stable order."""
    if group is None:
        return list(METRICS.values())
    if group not in GROUPS:
        raise BenchError(f"unknown metric group {group!r}; choose one of {list(GROUPS)}")
    return [m for m in METRICS.values() if m.group == group]
