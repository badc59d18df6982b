"""Which metrics a fold cannot measure: undefined or degenerate for its test cells.

A test fold with a single label of a concept makes precision/recall/F1 of that concept 1.0 for any
predictor (the negative control included); a fold holding one concept combination gives the
geometry clustering and the marker test nothing to separate. Such values are not evidence for or
against a method: the runner sets them to NaN, records the reason, and the leaderboard leaves them
out of every score and footnotes them (distinct from "n/a", a capability the method lacks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from causcell_bench.metrics.expression import combination_labels

PER_CONCEPT = ("acc", "precision_w", "recall_w", "f1_w", "exclusivity", "exclusivity_dag")
POPULATION = ("nmi_geom", "ari_geom", "marker", "marker_ct")


def degenerate_metrics(
    test_obs: pd.DataFrame,
    concepts: Sequence[str],
    fine_labels: Mapping[str, str] | None = None,
    *,
    n_clusters: int = 8,
) -> dict[str, str]:
    """``{full metric name: reason}`` for the metrics this test fold cannot measure."""
    out: dict[str, str] = {}
    for c in concepts:
        if test_obs[c].astype(str).nunique() < 2:
            reason = f"degenerate: one label of {c} in the test fold"
            out.update({f"{m}:{c}": reason for m in PER_CONCEPT})
    n_groups = len(set(combination_labels(test_obs, concepts))) if len(concepts) else 0
    if n_groups < 2:
        out.update({m: "degenerate: one population (concept combination) in the test fold" for m in POPULATION})
    elif len(test_obs) < n_clusters:
        reason = f"degenerate: {len(test_obs)} test cells, fewer than the {n_clusters} clusters"
        out.update({m: reason for m in ("nmi_geom", "ari_geom")})
    for c, col in (fine_labels or {}).items():
        if col in test_obs.columns and test_obs[col].dropna().astype(str).nunique() < 2:
            reason = f"degenerate: one fine label of {c} ({col}) in the test fold"
            out.update({f"nmi_fine:{c}": reason, f"ari_fine:{c}": reason})
    return out
