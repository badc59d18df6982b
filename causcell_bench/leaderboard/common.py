"""Names the leaderboard's tables, scores and reports share: the key columns, the controls'
names, the metric groups, categories and headline columns (from the metric registry), method kinds
and how an overall score is written.
"""

from __future__ import annotations

import math
from typing import Any

from causcell_bench import metrics as _metrics
from causcell_bench.registry import CONTROLS, REFERENCES

POS, NEG = "positive_control", "negative_control"
KEYS = ["dataset", "method", "setting"]
CONTROL_NAMES, REFERENCE_NAMES = CONTROLS, REFERENCES  # the registry's built-in names


# groups, categories and headline columns come from the metric registry (declared next to each scorer;
# importing the metrics package runs those declarations)
GROUP_ORDER: tuple[str, ...] = _metrics.GROUPS
CATEGORY_ORDER: tuple[str, ...] = tuple(_metrics.CATEGORIES)
#: the leaderboard's and the figure's columns (all metrics stay in the tables), in group order
HEATMAP_METRICS: tuple[str, ...] = tuple(_metrics.headline_metrics())

EMBEDDING_FLAG = {"label_lookup": " †", "shared": " *"}
#: how the tables show a reference's ``trivial`` value (its reconstruction is the input cell: no evidence)
TRIVIAL_LABEL = "input"


#: the order of kinds in every table and figure: methods, then references, then controls (anchors last)
KIND_ORDER = {"method": 0, "reference": 1, "control": 2}


def kind_by_name(method: str) -> str:
    """The kind of a built-in control or reference by its name; anything else is a method."""
    return "control" if method in CONTROL_NAMES else "reference" if method in REFERENCE_NAMES else "method"



def finite(v: Any) -> bool:
    """Whether ``v`` is a finite number (None, NaN, inf and non-numbers are not)."""
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def rank_label(rank: Any, lo: Any = None, hi: Any = None) -> str:
    """A rank with its 95% interval when known: ``rank 2 [1–3]``; empty when there is no rank."""
    if not finite(rank):
        return ""
    text = f"rank {float(rank):.0f}"
    return text + f" [{float(lo):.0f}–{float(hi):.0f}]" if finite(lo) and finite(hi) else text


def overall_label(value: Any, sd: Any = None) -> str:
    """The overall score as text, with its fold sd when known: ``0.63 ± 0.04``."""
    if not finite(value):
        return "n/a"
    return f"{float(value):.2f} ± {float(sd):.2f}" if finite(sd) else f"{float(value):.2f}"
