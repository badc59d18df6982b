"""The held-out verdict: on the held-out populations (OOD and HOLDOUT settings), which models beat
which simple reference on R^2 of the held-out mean (``r2_mean``, and on the top DEGs ``r2_mean_deg``).

:func:`heldout_verdict` is the tidy table (``report/heldout_verdict.csv``): one row per dataset,
setting, method, metric and reference, with the method's mean and sd over folds x seeds, the
reference's mean, their difference with a 95% interval and the verdict ``>`` / ``<`` / ``=``.
:func:`verdict_tables` lays it out for a reader (rows = methods, trained models first); the markdown
leaderboard and ``index.html`` both render those tables, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from causcell_bench.leaderboard.common import KIND_ORDER, REFERENCE_NAMES

HELDOUT_SETTINGS = ("OOD", "HOLDOUT")
VERDICT_METRICS = ("r2_mean", "r2_mean_deg")
N_BOOTSTRAP = 1000
COLUMNS = ["dataset", "setting", "method", "kind", "metric", "mean", "sd", "n", "reference", "reference_mean",
           "diff", "diff_lo", "diff_hi", "verdict", "basis"]


def _unit_values(rows: pd.DataFrame, unit: list[str]) -> pd.DataFrame:
    """Units (folds x seeds, or parts) x methods: each unit's value, per-concept values averaged
    (``r2_mean:age`` and ``r2_mean:celltype`` when every concept is intervened on in turn)."""
    return rows.groupby([*unit, "method"])["value"].mean().unstack("method")


def heldout_verdict(tidy: pd.DataFrame, parts: pd.DataFrame | None = None, *,
                    references: Iterable[str] = REFERENCE_NAMES, n_boot: int = N_BOOTSTRAP,
                    seed: int = 0) -> pd.DataFrame:
    """Does each method beat each reference on ``r2_mean`` and ``r2_mean_deg`` of the held-out
    populations? One row per (dataset, setting, method, metric, reference).

    ``diff`` is the method's mean minus the reference's (over the folds x seeds both have);
    ``diff_lo``/``diff_hi`` a 95% bootstrap interval of it from the paired per-unit differences:
    over folds x seeds when there are several, else over the cell parts of the one fold (``parts``,
    :func:`~causcell_bench.leaderboard.tables.part_table`; the parts give the spread only, the
    whole fold the value, as for the rank intervals). ``verdict``: ``>`` (beats it: the interval is
    above 0), ``<`` (below 0), ``=`` (the interval holds 0); with one fold and no parts there is no
    interval and the verdict compares the means (``basis`` says which).
    """
    references = tuple(references)
    if tidy.empty:
        return pd.DataFrame(columns=COLUMNS)
    base = tidy["metric"].str.split(":").str[0]
    sel = tidy[tidy["setting"].isin(HELDOUT_SETTINGS) & base.isin(VERDICT_METRICS)].assign(base=base)
    part_rows = pd.DataFrame() if parts is None or parts.empty else \
        parts[parts["setting"].isin(HELDOUT_SETTINGS)].assign(base=parts["metric"].str.split(":").str[0])
    rng = np.random.default_rng(seed)
    out = []
    for (dataset, setting, metric), block in sel.groupby(["dataset", "setting", "base"], sort=False):
        whole = _unit_values(block, ["fold", "seed"])
        kinds = block.groupby("method")["kind"].first()
        spread, basis = whole, "folds x seeds"
        if len(whole) < 2 and not part_rows.empty:
            pb = part_rows[(part_rows["dataset"] == dataset) & (part_rows["setting"] == setting)
                           & (part_rows["base"] == metric)]
            # parts only when every method has them, as for the rank intervals
            if pb["part"].nunique() >= 2 and set(pb["method"]) == set(whole.columns):
                spread, basis = _unit_values(pb, ["part"]), f"{pb['part'].nunique()} cell parts of one fold"
        if len(spread) < 2:
            basis = "one fold: means compared, no interval"
        hib = bool(block["higher_is_better"].iloc[0])
        for method in whole.columns:
            vals = whole[method].dropna()
            if vals.empty:
                continue
            for ref in references:
                if ref == method or ref not in whole.columns:
                    continue
                both = whole[[method, ref]].dropna()
                if both.empty:
                    continue
                diff = float((both[method] - both[ref]).mean())
                lo = hi = diff
                paired = (spread[method] - spread[ref]).dropna().to_numpy() if ref in spread else np.array([])
                if paired.size >= 2:
                    # the spread of the paired mean difference, centred on the whole-fold difference
                    boot = paired[rng.integers(0, paired.size, size=(n_boot, paired.size))].mean(axis=1)
                    lo, hi = diff + np.percentile(boot - paired.mean(), [2.5, 97.5])
                better, worse = (lo > 0, hi < 0) if hib else (hi < 0, lo > 0)
                out.append({"dataset": dataset, "setting": setting, "method": method, "kind": kinds[method],
                            "metric": metric, "mean": float(vals.mean()),
                            "sd": float(vals.std()) if len(vals) > 1 else np.nan, "n": len(vals),
                            "reference": ref, "reference_mean": float(both[ref].mean()), "diff": diff,
                            "diff_lo": float(lo), "diff_hi": float(hi),
                            "verdict": ">" if better else "<" if worse else "=", "basis": basis})
    return pd.DataFrame(out, columns=COLUMNS)


def verdict_tables(verdict: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, str]]:
    """Per (dataset, setting), the verdict as a reader sees it: one row per method (trained models
    first, then references and controls, each by ``r2_mean``), the metrics as ``mean ± sd``, and per
    reference its verdicts on ``r2_mean / r2_mean_deg``; and what the verdicts rest on. Text cells,
    rendered as they are by the markdown and the HTML report."""
    tables = []
    for (dataset, setting), block in verdict.groupby(["dataset", "setting"], sort=False):
        metrics = [m for m in VERDICT_METRICS if m in set(block["metric"])]
        refs = list(dict.fromkeys(block["reference"]))
        stats = block.drop_duplicates(["method", "metric"]).set_index(["method", "metric"])
        calls = block.set_index(["method", "metric", "reference"])["verdict"]
        kinds = block.groupby("method", sort=False)["kind"].first()
        lead = {m: (stats.at[(m, metrics[0]), "mean"] if (m, metrics[0]) in stats.index else np.nan)
                for m in kinds.index}
        order = sorted(kinds.index, key=lambda m: (KIND_ORDER.get(kinds[m], len(KIND_ORDER)),
                                                   -lead[m] if np.isfinite(lead[m]) else np.inf, m))
        rows = []
        for m in order:
            row = {"method": m, "kind": kinds[m]}
            for metric in metrics:
                if (m, metric) not in stats.index:
                    row[metric] = "n/a"
                    continue
                mean, sd = stats.at[(m, metric), "mean"], stats.at[(m, metric), "sd"]
                row[metric] = f"{mean:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd) else "")
            for ref in refs:
                row[f"vs {ref}"] = " / ".join(str(calls.get((m, metric, ref), "")) or "·" for metric in metrics) \
                    if m != ref else ""
            rows.append(row)
        basis = "; ".join(dict.fromkeys(block["basis"]))
        tables.append((dataset, setting, pd.DataFrame(rows), f"Verdicts rest on: {basis}."))
    return tables


#: what the verdict tables say, for the markdown and the HTML report
LEGEND = ("R^2 of the real held-out mean expression by the predicted one (all genes; `r2_mean_deg`: the "
          "top DEGs), mean ± sd over folds x seeds. `vs REF`: the verdicts on r2_mean / r2_mean_deg: `>` "
          "beats the reference, `<` falls below it, `=` the 95% interval of the paired difference (over folds "
          "x seeds, else cell parts of the one fold) holds 0; `·` not measured. Also in `heldout_verdict.csv`.")
