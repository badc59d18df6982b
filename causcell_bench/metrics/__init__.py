"""Metrics: pure functions, arrays and labels in, numbers out (docs/metrics.md).

The disentanglement and reconstruction scenarios follow the CausCell paper (Gao, Dong et al.,
"Causal disentanglement for single-cell representations and controllable counterfactual
generation", Nat Commun 2025); DCI (Eastwood & Williams 2018), MIG (Chen et al. 2018),
counterfactual and distribution metrics are added. The high-level scorers return flat
``{full_metric_name: value}`` dicts; :data:`METRICS` says what each name means.
"""

from causcell_bench.metrics.ceiling import population_scores, replicate_ceiling
from causcell_bench.metrics.clustering import geometry_scores, granularity_scores, ward_labels
from causcell_bench.metrics.counterfactual import (
    effect_pcc,
    predict_labels,
    score_counterfactual,
)
from causcell_bench.metrics.dci_mig import dci, dci_from_importance, mig
from causcell_bench.metrics.degenerate import degenerate_metrics
from causcell_bench.metrics.disentanglement import score_disentanglement
from causcell_bench.metrics.distribution import (
    change_scores,
    deg_overlap,
    e_distance,
    mean_expression_pcc,
    population_rank,
    score_distribution,
    score_populations,
)
from causcell_bench.metrics.expression import marker_overlap, mean_level, mse, pearson_per_cell, wilcoxon_z
from causcell_bench.metrics.perturbation import (
    NEEDS_TWO_POPULATIONS,
    centroid_scores,
    de_genes,
    de_weights,
    des,
    discrimination,
    pseudobulk_mae,
    score_perturbation,
    weighted_scores,
)
from causcell_bench.metrics.predictive import (
    classification_scores,
    exclusivity_gap,
    lift,
    majority_baseline,
    probe_predict,
)
from causcell_bench.metrics.reconstruction import realism_scores, score_reconstruction
from causcell_bench.metrics.registry import (
    CATEGORIES,
    GROUPS,
    METRICS,
    MetricInfo,
    base_name,
    headline_metrics,
    list_metrics,
    metric_info,
)

__all__ = [
    "CATEGORIES",
    "GROUPS",
    "METRICS",
    "NEEDS_TWO_POPULATIONS",
    "MetricInfo",
    "base_name",
    "centroid_scores",
    "change_scores",
    "classification_scores",
    "dci",
    "dci_from_importance",
    "de_genes",
    "de_weights",
    "deg_overlap",
    "degenerate_metrics",
    "des",
    "discrimination",
    "e_distance",
    "effect_pcc",
    "exclusivity_gap",
    "geometry_scores",
    "granularity_scores",
    "headline_metrics",
    "lift",
    "list_metrics",
    "majority_baseline",
    "marker_overlap",
    "mean_expression_pcc",
    "mean_level",
    "metric_info",
    "mig",
    "mse",
    "pearson_per_cell",
    "population_rank",
    "population_scores",
    "predict_labels",
    "probe_predict",
    "pseudobulk_mae",
    "realism_scores",
    "replicate_ceiling",
    "score_counterfactual",
    "score_disentanglement",
    "score_distribution",
    "score_perturbation",
    "score_populations",
    "score_reconstruction",
    "ward_labels",
    "weighted_scores",
    "wilcoxon_z",
]
