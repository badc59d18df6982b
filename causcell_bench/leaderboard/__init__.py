"""Leaderboard: tidy tables, fold aggregation, control-scaled scores, a markdown table, a funky
heatmap and an HTML report, all rebuilt from a run directory's cell JSONs.

- :mod:`.tables`: records -> tidy, status and degenerate tables; fold means; headline metrics
- :mod:`.scoring`: control scaling, scores and bootstrap ranks, bracketing violations, metrics a
  trivial reference wins (how, in docs/metrics.md, "From metrics to scores")
- :mod:`.rendering`: the markdown leaderboard and the heatmap figures
- :mod:`.verdict`: on held-out populations, which models beat which reference on R^2 of the mean
- :mod:`.html`: the self-contained ``index.html``
- :mod:`.report`: :func:`build_report` (every table and figure of a run), :func:`left_out_lines`,
  and :func:`check` against a reference table
- :mod:`.common`: the names the others share
"""

from causcell_bench.leaderboard.common import (
    CATEGORY_ORDER,
    CONTROL_NAMES,
    EMBEDDING_FLAG,
    GROUP_ORDER,
    HEATMAP_METRICS,
    KEYS,
    NEG,
    POS,
    REFERENCE_NAMES,
    kind_by_name,
    overall_label,
)
from causcell_bench.leaderboard.html import write_index_html
from causcell_bench.leaderboard.rendering import heatmap, markdown
from causcell_bench.leaderboard.report import DEFAULT_TOLERANCE, build_report, check, left_out_lines
from causcell_bench.leaderboard.scoring import (
    N_BOOTSTRAP,
    cross_dataset_overall,
    scale,
    scores,
    uninformative,
    unseparated,
    violations,
)
from causcell_bench.leaderboard.tables import (
    SUMMARY_META,
    degenerate_table,
    headline,
    part_table,
    status_table,
    summarize,
    metric_role,
    tidy_table,
)
from causcell_bench.leaderboard.verdict import heldout_verdict, verdict_tables

__all__ = [
    "CATEGORY_ORDER", "CONTROL_NAMES", "DEFAULT_TOLERANCE", "EMBEDDING_FLAG", "GROUP_ORDER", "HEATMAP_METRICS", "KEYS",
    "NEG", "N_BOOTSTRAP", "POS", "REFERENCE_NAMES", "SUMMARY_META", "build_report", "check", "cross_dataset_overall",
    "degenerate_table", "headline", "heatmap", "heldout_verdict", "kind_by_name", "left_out_lines", "markdown",
    "metric_role", "overall_label", "verdict_tables",
    "part_table", "scale", "scores", "status_table", "summarize", "tidy_table", "uninformative",
    "unseparated", "violations", "write_index_html",
]
