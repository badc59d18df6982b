"""Leaderboard: tidy tables, fold aggregation, control-scaled scores, a markdown
table and a funky heatmap, all rebuilt from a run directory's cell JSONs.

Scaling (docs/metrics.md, "From metrics to scores"): each metric's fold mean is scaled
between the negative and positive control of the same dataset and setting,
``(v - neg) / (pos - neg)`` clipped to [0, 1] (:func:`_scale`: a control that wins
gives 0, never NaN), averaged within metric groups, groups within categories, and
categories into ``overall``. Where a control has no value for a metric (e.g. the
positive control has no counterfactuals), the worst (for neg) or best (for pos)
value a method reached stands in, and the table says so. Only capability-complete
methods are ranked. Raw values stay in the tables; :func:`violations` and
:func:`uninformative` list where the scale cannot be trusted.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from causcell_bench import metrics as _metrics
from causcell_bench.registry import CONTROLS, REFERENCES
from causcell_bench.store import RunContents, read_run

POS, NEG = "positive_control", "negative_control"
KEYS = ["dataset", "method", "setting"]
CONTROL_NAMES, REFERENCE_NAMES = CONTROLS, REFERENCES  # the registry's built-in names
N_BOOTSTRAP = 200


# groups, categories and headline columns come from the metric registry (declared next to each scorer;
# importing the metrics package runs those declarations)
GROUP_ORDER: tuple[str, ...] = _metrics.GROUPS
CATEGORY_ORDER: tuple[str, ...] = tuple(_metrics.CATEGORIES)
#: the leaderboard's and the figure's columns (all metrics stay in the tables), in group order
HEATMAP_METRICS: tuple[str, ...] = tuple(_metrics.headline_metrics())


def _info(metric: str) -> Any:
    from causcell_bench.metrics import metric_info

    try:
        return metric_info(metric)
    except Exception:  # a metric from a newer version: keep it, unscored
        return None


def _kind(record: dict[str, Any]) -> str:
    """method | control | reference (records written before the field existed: by name)."""
    return str(record.get("kind") or kind_by_name(str(record.get("method"))))


def kind_by_name(method: str) -> str:
    """The kind of a built-in control or reference by its name; anything else is a method."""
    return "control" if method in CONTROL_NAMES else "reference" if method in REFERENCE_NAMES else "method"


def tidy_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per (dataset, method, setting, fold, seed, metric) of the successful cells."""
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        emb = (r.get("capabilities") or {}).get("embedding", "none")
        kind = _kind(r)
        for metric, value in (r.get("metrics") or {}).items():
            info = _info(metric)
            rows.append({
                "dataset": r["dataset"], "method": r["method"], "setting": r["setting"], "fold": r["fold"],
                "seed": r["seed"], "metric": metric, "value": np.nan if value is None else float(value),
                "group": info.group if info else "other",
                "higher_is_better": info.higher_is_better if info else True,
                "aggregate": info.aggregate if info else False,
                "embedding": emb, "kind": kind,
            })
    cols = ["dataset", "method", "setting", "fold", "seed", "metric", "value", "group", "higher_is_better",
            "aggregate", "embedding", "kind"]
    return pd.DataFrame(rows, columns=cols)


def degenerate_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per metric a cell could not measure (NaN with a reason: one population, one label...)."""
    rows = [{"dataset": r.get("dataset"), "method": r.get("method"), "setting": r.get("setting"),
             "fold": r.get("fold"), "seed": r.get("seed"), "metric": m, "reason": why}
            for r in records if r.get("status") == "ok" for m, why in (r.get("degenerate") or {}).items()]
    return pd.DataFrame(rows, columns=["dataset", "method", "setting", "fold", "seed", "metric", "reason"])


def status_table(records: Iterable[dict[str, Any]], claims: Iterable[tuple[Any, dict[str, Any]]] = ()) -> pd.DataFrame:
    """One row per cell: status, error, timings and memory (failures included); plus one row per claimed
    cell (``claims`` from :func:`causcell_bench.store.read_run`), status ``claimed`` (a process is running
    it) or ``abandoned`` (its claim is stale: the next run takes it over)."""
    rows = []
    for _, c in claims:
        parts = str(c.get("cell", "")).split("/")
        if len(parts) != 5:
            continue
        dataset, method, setting, fold, seed = parts
        rows.append({
            "dataset": dataset, "method": method, "setting": setting, "fold": int(fold.removeprefix("fold")),
            "seed": int(seed.removeprefix("seed")), "status": "abandoned" if c.get("stale") else "claimed",
            "error": c.get("stale"), "note": f"claimed by {c.get('host')} pid {c.get('pid')} since {c.get('started')}",
        })
    for r in records:
        t = r.get("timings") or {}
        rows.append({
            "dataset": r.get("dataset"), "method": r.get("method"), "setting": r.get("setting"),
            "fold": r.get("fold"), "seed": r.get("seed"), "status": r.get("status"), "error": r.get("error"),
            "fit_s": t.get("fit_s"), "total_s": r.get("total_s"), "peak_rss_mb": r.get("peak_rss_mb"),
            "threads": r.get("threads"), "note": r.get("note"),
        })
    return pd.DataFrame(rows, columns=["dataset", "method", "setting", "fold", "seed", "status", "error",
                                       "fit_s", "total_s", "peak_rss_mb", "threads", "note"])


SUMMARY_META = ["group", "higher_is_better", "aggregate", "embedding", "kind"]


def summarize(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count over folds (and seeds) per (dataset, method, setting, metric)."""
    meta = [m for m in SUMMARY_META if m in tidy.columns]
    if tidy.empty:
        return pd.DataFrame(columns=[*KEYS, "metric", *meta, "mean", "sd", "n"])
    g = tidy.groupby([*KEYS, "metric"], sort=False)
    out = g["value"].agg(mean="mean", sd="std", n="count").reset_index()
    first = g[meta].first().reset_index()
    return first.merge(out, on=[*KEYS, "metric"])[[*KEYS, "metric", *meta, "mean", "sd", "n"]]


def headline(summary: pd.DataFrame, *, scored_only: bool = True) -> pd.DataFrame:
    """Per-concept metrics (``acc:age``...) averaged into one value per base metric; with
    ``scored_only`` only the metrics that enter the overall score (not diagnostics or CT controls)."""
    s = summary[summary["aggregate"].astype(bool)].copy() if scored_only else summary.copy()
    s["base"] = s["metric"].str.split(":").str[0]
    if "kind" not in s.columns:
        s["kind"] = "method"
    g = s.groupby([*KEYS, "base"], sort=False)
    out = g.agg(mean=("mean", "mean"), sd=("sd", "mean"), group=("group", "first"),
                higher_is_better=("higher_is_better", "first"), embedding=("embedding", "first"),
                kind=("kind", "first")).reset_index()
    return out.rename(columns={"base": "metric"})


def _scale(vals: dict[str, float], hib: bool, references: Iterable[str] = ()) -> tuple[dict[str, float], list[str]]:
    """Control-scaled values (0 = negative control, 1 = positive control), never NaN because a control won.

    A missing control is stood in for by the worst / best value of any method, the negative control
    included (a negative control that beats every method is then the best: every method scores 0).
    When the negative control is at least as good as the positive one, the metric cannot separate
    anything on this data: every method gets 0 and the note says so.
    """
    good = {m: (v if hib else -v) for m, v in vals.items() if v is not None and math.isfinite(v)}
    notes: list[str] = []
    skip = {*CONTROL_NAMES, *references}
    others = {m: v for m, v in good.items() if m not in skip}
    pool = {**others, **({NEG: good[NEG]} if NEG in good else {})}
    if POS in good:
        p = good[POS]
    else:
        p, _ = max(pool.values(), default=np.nan), notes.append("best value stands in for the positive control")
    if NEG in good:
        n = good[NEG]
    else:
        n, _ = min(others.values(), default=np.nan), notes.append("worst method stands in for the negative control")
    out: dict[str, float] = {}
    degenerate = not (math.isfinite(p) and math.isfinite(n)) or p <= n
    if degenerate:
        notes.append("negative control at least as good as the positive control: every method scores 0")
    for m in vals:
        if m not in good:
            out[m] = np.nan
        elif degenerate:
            out[m] = 1.0 if m == POS else 0.0
        else:
            out[m] = float(np.clip((good[m] - n) / (p - n), 0.0, 1.0))
    return out, notes


def violations(summary: pd.DataFrame) -> pd.DataFrame:
    """Every scored metric value outside [negative control, positive control], per method (controls
    themselves excluded): the cases control scaling clips, listed so that none is hidden."""
    head = headline(summary)
    rows = []
    for (dataset, setting, metric), block in head.groupby(["dataset", "setting", "metric"], sort=False):
        vals = dict(zip(block["method"], block["mean"]))
        hib = bool(block["higher_is_better"].iloc[0])
        sign = 1.0 if hib else -1.0
        for ctrl, worse in ((NEG, True), (POS, False)):
            cv = vals.get(ctrl, np.nan)
            if cv is None or not math.isfinite(cv):
                continue
            for method, v in vals.items():
                if method in CONTROL_NAMES or not math.isfinite(v):
                    continue
                if (worse and sign * (v - cv) < 0) or (not worse and sign * (v - cv) > 0):
                    rows.append({"dataset": dataset, "setting": setting, "method": method, "metric": metric,
                                 "value": v, "control": ctrl, "control_value": cv,
                                 "violation": "worse than the negative control" if worse
                                 else "better than the positive control"})
    return pd.DataFrame(rows, columns=["dataset", "setting", "method", "metric", "value", "control",
                                       "control_value", "violation"])


#: references whose reconstruction is the input cell (only their counterfactuals predict anything)
_INPUT_AS_RECONSTRUCTION = ("no_change", "additive_shift")


def uninformative(summary: pd.DataFrame, references: Iterable[str] = ("no_change", "group_mean")) -> pd.DataFrame:
    """Scored metrics on which a trivial reference (``no_change``, ``group_mean``) beats every method:
    on this dataset the metric cannot show that any model learned more than the reference."""
    head = headline(summary)
    rows = []
    for (dataset, setting, metric), block in head.groupby(["dataset", "setting", "metric"], sort=False):
        hib = bool(block["higher_is_better"].iloc[0])
        methods = block[(block["kind"] == "method") & np.isfinite(block["mean"].astype(float))]
        if methods.empty:
            continue
        best = methods.loc[methods["mean"].idxmax() if hib else methods["mean"].idxmin()]
        category = _metrics.metric_info(metric).category
        for ref in references:
            if ref in _INPUT_AS_RECONSTRUCTION and category in ("fidelity", "realism"):
                continue  # its "reconstruction" is the cell itself: no evidence about the metric
            r = block[block["method"] == ref]
            if r.empty or not np.isfinite(r["mean"].iloc[0]):
                continue
            v = float(r["mean"].iloc[0])
            if (v > best["mean"]) if hib else (v < best["mean"]):
                rows.append({"dataset": dataset, "setting": setting, "metric": metric, "reference": ref,
                             "reference_value": v, "best_method": best["method"], "best_value": float(best["mean"])})
    return pd.DataFrame(rows, columns=["dataset", "setting", "metric", "reference", "reference_value",
                                       "best_method", "best_value"])


def scores(summary: pd.DataFrame, *, tidy: pd.DataFrame | None = None, n_boot: int = N_BOOTSTRAP,
           seed: int = 0) -> pd.DataFrame:
    """Control-scaled scores per group, per category and overall, per (dataset, method, setting).

    ``overall`` is the mean over categories (disentanglement, fidelity, realism, counterfactual) of
    the mean over each category's groups. Ranked methods (``kind == "method"``) must have every
    category that any method of that dataset and setting has: a method lacking one (scVI has no
    counterfactuals; label-lookup embeddings are not ranked on disentanglement) keeps its partial
    overall, marked ``complete = False``, and gets no rank. Controls and references are shown, never
    ranked. With ``tidy`` holding several folds or seeds, ``rank_lo``/``rank_hi`` give a 95% bootstrap
    interval of each ranked method's rank (folds x seeds resampled ``n_boot`` times) and ``tied``
    lists the neighbours whose intervals overlap.
    """
    groups, categories = _metrics.GROUPS, _metrics.CATEGORIES
    base = _scores_once(summary)
    if base.empty:
        return base
    if tidy is not None and not tidy.empty:
        base = _bootstrap_ranks(base, tidy, n_boot=n_boot, seed=seed)
    cols = [*KEYS, "kind", "embedding", *[g for g in groups if g in base.columns],
            *[c for c in categories if c in base.columns], "overall", "overall_sd", "complete", "rank",
            "rank_lo", "rank_hi", "tied", "note"]
    return base[[c for c in dict.fromkeys(cols) if c in base.columns]]


def _scores_once(summary: pd.DataFrame) -> pd.DataFrame:
    head = headline(summary)
    empty_cols = [*KEYS, "kind", "embedding", "overall", "complete", "rank", "note"]
    if head.empty:
        return pd.DataFrame(columns=empty_cols)
    rows = []
    for (dataset, setting, metric), block in head.groupby(["dataset", "setting", "metric"], sort=False):
        vals = dict(zip(block["method"], block["mean"]))
        refs = block.loc[block["kind"] == "reference", "method"]
        scaled, notes = _scale(vals, bool(block["higher_is_better"].iloc[0]), refs)
        note = "; ".join(f"{metric}: {n}" for n in notes)
        for method, v in scaled.items():
            rows.append({"dataset": dataset, "setting": setting, "method": method, "metric": metric,
                         "group": block["group"].iloc[0], "scaled": v, "note": note})
    scaled_df = pd.DataFrame(rows)
    first = head.groupby(KEYS, sort=False)[["embedding", "kind"]].first()
    per_group = scaled_df.groupby([*KEYS, "group"], sort=False)["scaled"].mean().unstack("group")
    per_group = per_group.reindex(columns=[g for g in _metrics.GROUPS if g in per_group.columns]).join(first)
    # label-lookup embeddings are identical within a label: not ranked on disentanglement
    lookup = per_group["embedding"] == "label_lookup"
    for g in _metrics.CATEGORIES["disentanglement"]:
        if g in per_group.columns:
            per_group.loc[lookup, g] = np.nan
    cats = []
    for cat, gs in _metrics.CATEGORIES.items():
        present = [g for g in gs if g in per_group.columns]
        if present:
            per_group[cat] = per_group[present].mean(axis=1, skipna=True)  # a one-group category keeps its name
            cats.append(cat)
    per_group["overall"] = per_group[cats].mean(axis=1, skipna=True)
    ranked = per_group["kind"] == "method"
    required = [c for c in cats if per_group.loc[ranked, c].notna().any()] if ranked.any() else cats
    per_group["complete"] = per_group[required].notna().all(axis=1) if required else True
    missing = per_group[required].isna().apply(lambda r: [c for c, m in r.items() if m], axis=1) \
        if required else pd.Series([[]] * len(per_group), index=per_group.index)
    per_group["rank"] = np.nan
    for (dataset, setting), idx in per_group.groupby(level=["dataset", "setting"], sort=False).groups.items():
        block = per_group.loc[idx]
        ok = block[(block["kind"] == "method") & block["complete"].astype(bool)]
        if ok.empty:
            continue
        ranks = ok["overall"].rank(ascending=False, method="min")
        per_group.loc[ranks.index, "rank"] = ranks
    notes = scaled_df.groupby(KEYS, sort=False)["note"].apply(lambda s: "; ".join(sorted({n for n in s if n})))
    per_group = per_group.join(notes.rename("note"))
    partial = missing.map(lambda m: f"partial overall: no {', '.join(m)}" if m else "")
    per_group["note"] = [("; ".join(x for x in (p, n) if x)) for p, n in zip(partial, per_group["note"].fillna(""))]
    return per_group.reset_index()


def _bootstrap_ranks(base: pd.DataFrame, tidy: pd.DataFrame, *, n_boot: int, seed: int) -> pd.DataFrame:
    """Add ``overall_sd`` (sd of the overall over folds x seeds) and, with at least two units,
    ``rank_lo``/``rank_hi`` (2.5/97.5% of bootstrap ranks) and ``tied``."""
    base = base.copy()
    units = tidy[["fold", "seed"]].drop_duplicates().to_records(index=False).tolist()
    per_unit = []
    for fold, sd in units:
        one = _scores_once(summarize(tidy[(tidy["fold"] == fold) & (tidy["seed"] == sd)]))
        per_unit.append(one.set_index(KEYS)["overall"])
    if len(per_unit) >= 2:
        base["overall_sd"] = base.set_index(KEYS).index.map(pd.concat(per_unit, axis=1).std(axis=1).to_dict())
    else:
        base["overall_sd"] = np.nan
    base["rank_lo"] = base["rank_hi"] = np.nan
    base["tied"] = ""
    if len(units) < 2:
        return base
    rng = np.random.default_rng(seed)
    unit_rows = {u: tidy[(tidy["fold"] == u[0]) & (tidy["seed"] == u[1])] for u in units}
    boots: dict[tuple[str, str, str], list[float]] = {}
    for b in range(n_boot):
        pick = rng.integers(0, len(units), size=len(units))
        # each drawn unit is relabelled as its own fold so repeats count as separate folds
        sample = pd.concat([unit_rows[units[i]].assign(fold=j, seed=0) for j, i in enumerate(pick)])
        one = _scores_once(summarize(sample))
        for _, r in one.iterrows():
            if np.isfinite(r["rank"]):
                boots.setdefault((r["dataset"], r["method"], r["setting"]), []).append(float(r["rank"]))
    for i, r in base.iterrows():
        got = boots.get((r["dataset"], r["method"], r["setting"]))
        if got and np.isfinite(r["rank"]):
            base.loc[i, "rank_lo"], base.loc[i, "rank_hi"] = np.percentile(got, [2.5, 97.5])
    for (dataset, setting), block in base.groupby(["dataset", "setting"], sort=False):
        ranked = block[np.isfinite(block["rank"].astype(float))]
        for i, r in ranked.iterrows():
            ties = [m for j, m in zip(ranked.index, ranked["method"]) if j != i
                    and ranked.at[j, "rank_lo"] <= r["rank_hi"] and r["rank_lo"] <= ranked.at[j, "rank_hi"]]
            base.loc[i, "tied"] = ", ".join(ties)
    return base


EMBEDDING_FLAG = {"label_lookup": " †", "shared": " *"}


def markdown(summary: pd.DataFrame, score_table: pd.DataFrame, status: pd.DataFrame | None = None,
             violation_table: pd.DataFrame | None = None, degenerate: pd.DataFrame | None = None,
             uninformative_table: pd.DataFrame | None = None, left_out: Iterable[str] = ()) -> str:
    """A markdown leaderboard: per dataset and setting, ranked methods by overall score (with rank
    intervals), then partial methods, references and controls; headline metrics; notes on what the
    references show, bracketing violations, degenerate metrics and failed cells."""
    head = headline(summary, scored_only=False)
    head = head[head["metric"].isin(HEATMAP_METRICS)]
    parts = ["# causcell-bench leaderboard", ""]
    left_out = list(left_out)
    if left_out:
        # first, not last: a reader must know the table is incomplete before reading it
        parts += ["## Cells left out of this table", "",
                  ("These cell files are not in any number below. Unreadable and abandoned cells: rerun the "
                   "`causcell-bench run` command; stale cells: rerun with the settings they should have."), ""]
        parts += [f"- {line}" for line in left_out]
        parts.append("")
    for (dataset, setting), block in head.groupby(["dataset", "setting"], sort=False):
        sc = score_table[(score_table.dataset == dataset) & (score_table.setting == setting)].set_index("method")
        present = set(block["metric"])
        metrics = [m for m in HEATMAP_METRICS if m in present]
        table = block.pivot_table(index="method", columns="metric", values="mean", aggfunc="first")
        sds = block.pivot_table(index="method", columns="metric", values="sd", aggfunc="first")
        order = _display_order(sc, list(table.index))
        cats = [c for c in CATEGORY_ORDER if c in sc.columns]
        parts += [f"## {dataset} — {setting}", ""]
        cols = ["method", "rank", "overall", *cats, *metrics]
        parts.append("| " + " | ".join(cols) + " |")
        parts.append("|" + "---|" * len(cols))
        for method in order:
            r = sc.loc[method] if method in sc.index else pd.Series(dtype=object)
            flag = EMBEDDING_FLAG.get(str(r.get("embedding", "")), "")
            kind = str(r.get("kind", "method"))
            label = f"{method}{flag}" if kind == "method" else f"*{method}* ({kind})"
            cells = [label, _fmt_rank(r), _fmt(r.get("overall", np.nan), r.get("overall_sd", np.nan))
                     + ("" if bool(r.get("complete", True)) or kind != "method" else " (partial)")]
            cells += [_fmt(r.get(c, np.nan)) for c in cats]
            for m in metrics:
                v = table.at[method, m] if method in table.index and m in table.columns else np.nan
                sd = sds.at[method, m] if method in sds.index and m in sds.columns else np.nan
                cells.append(_fmt(v, sd))
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
        parts += _reference_note(block, sc)
        partial = [f"{m}: {n.split(';')[0]}" for m, n in sc.get("note", pd.Series(dtype=str)).items()
                   if isinstance(n, str) and n.startswith("partial overall") and sc.at[m, "kind"] == "method"]
        if partial:
            parts += ["Not ranked (a category the others have is missing, so the overall would not compare): "
                      + "; ".join(partial) + ".", ""]
    parts += [
        ("Headline metrics (per-concept values averaged over concepts); every metric is in summary.csv. "
         "Values are means ± sd over folds. `overall` is the control-scaled score (0 = negative control, "
         "1 = positive control, clipped) averaged within the categories disentanglement, fidelity "
         "(per-cell: trend, geometry, marker), realism (distribution per concept combination) and "
         "counterfactual, then over categories; ± its sd over folds. `rank` is among ranked methods "
         "only, with a 95% bootstrap interval over folds x seeds when there are several; methods whose "
         "intervals overlap are tied. n/a: the method cannot produce that output; a degenerate metric "
         "(listed below) is left out."),
        ("† label-lookup embeddings (identical within a label): not ranked on disentanglement. "
         "* one shared latent for every concept: the probe measures informativeness, not disentanglement. "
         "Controls anchor the scale; references (group_mean, additive_shift, no_change) are the field's "
         "simple baselines: shown, never ranked; additive_shift and no_change return the cell itself as "
         "their reconstruction, so only their counterfactual columns say anything."),
        "",
    ]
    if violation_table is not None and not violation_table.empty:
        parts += ["## Control bracketing violations", "",
                  "Values outside [negative control, positive control]; the scaled score clips them "
                  "(to 0 or 1). A control that beats the methods marks a metric that is uninformative on "
                  "this data, or methods that are undertrained. Also in `violations.csv`.", "",
                  "| dataset | setting | method | metric | value | control | control value |",
                  "|---|---|---|---|---|---|---|"]
        for _, v in violation_table.iterrows():
            parts.append(f"| {v.dataset} | {v.setting} | {v.method} | {v.metric} | {v.value:.3f} | "
                         f"{v.control} | {v.control_value:.3f} |")
        parts.append("")
    if uninformative_table is not None and not uninformative_table.empty:
        parts += ["## Metrics a trivial reference wins", "",
                  "On these, `no_change` (the source cell itself) or `group_mean` (the training mean of its "
                  "labels) beats every method: the metric shows nothing learned beyond them here. Also in "
                  "`uninformative.csv`.", "",
                  "| dataset | setting | metric | reference | value | best method | its value |", "|---|---|---|---|---|---|---|"]
        for _, u in uninformative_table.iterrows():
            parts.append(f"| {u.dataset} | {u.setting} | {u.metric} | {u.reference} | {u.reference_value:.3f} | "
                         f"{u.best_method} | {u.best_value:.3f} |")
        parts.append("")
    if degenerate is not None and not degenerate.empty:
        parts += ["## Degenerate metrics", "", "Not measurable on these test folds (NaN, left out of every score):", ""]
        d = degenerate.groupby(["dataset", "setting", "fold", "reason"], sort=False)["metric"].apply(
            lambda m: ", ".join(sorted(set(m))))
        for (dataset, setting, fold, reason), ms in d.items():
            parts.append(f"- {dataset} {setting} fold {fold}: {reason} ({ms})")
        parts.append("")
    if status is not None and not status.empty:
        redundant = status[status.status == "skipped_redundant"]
        if not redundant.empty:
            parts += ["## Cells not run", ""]
            for (dataset, method, note), block in redundant.groupby(["dataset", "method", "note"], sort=False):
                parts.append(f"- {dataset} / {method} ({len(block)} cells): {note}")
            parts.append("")
        failed = status[status.status == "failed"]
        if not failed.empty:
            parts += ["## Failed cells", "", "| dataset | method | setting | fold | error |", "|---|---|---|---|---|"]
            for _, r in failed.iterrows():
                err = str(r["error"]).replace("|", "\\|").replace("\n", " ")[:200]
                parts.append(f"| {r.dataset} | {r.method} | {r.setting} | {r.fold} | {err} |")
            parts.append("")
    return "\n".join(parts)


def _display_order(sc: pd.DataFrame, methods: list[str]) -> list[str]:
    """Ranked methods by rank, then partial methods, references and controls, each by overall."""
    def key(m: str) -> tuple[int, float]:
        if m not in sc.index:
            return (4, 0.0)
        r = sc.loc[m]
        kind = str(r.get("kind", "method"))
        tier = 0 if np.isfinite(r.get("rank", np.nan)) else 1 if kind == "method" else 2 if kind == "reference" else 3
        overall = r.get("overall", np.nan)
        return (tier, -(overall if np.isfinite(overall) else -1.0))
    return sorted(dict.fromkeys([*sc.index, *methods]), key=key)


def _fmt_rank(r: pd.Series) -> str:
    rank = r.get("rank", np.nan)
    if rank is None or not np.isfinite(rank):
        return ""
    lo, hi = r.get("rank_lo", np.nan), r.get("rank_hi", np.nan)
    text = f"{rank:.0f}"
    if lo is not None and np.isfinite(lo):
        text += f" [{lo:.0f}-{hi:.0f}]"
    if isinstance(r.get("tied"), str) and r.get("tied"):
        text += " (tied)"
    return text


def _reference_note(block: pd.DataFrame, sc: pd.DataFrame) -> list[str]:
    """Which ranked methods beat additive_shift on each counterfactual headline metric."""
    from causcell_bench.metrics import metric_info

    ref = block[block["method"] == "additive_shift"]
    if ref.empty:
        return []
    lines = []
    methods = [m for m in sc.index if sc.at[m, "kind"] == "method"] if "kind" in sc.columns else []
    for _, r in ref.iterrows():
        info = metric_info(r["metric"])
        if info.category != "counterfactual" or not info.aggregate or not np.isfinite(r["mean"]):
            continue
        mb = block[(block["metric"] == r["metric"]) & block["method"].isin(methods)]
        better = mb[(mb["mean"] > r["mean"]) if info.higher_is_better else (mb["mean"] < r["mean"])]
        names = ", ".join(better["method"]) if not better.empty else "none"
        lines.append(f"{r['metric']} ({r['mean']:.3f}): {names}")
    return ["Methods that beat `additive_shift` — " + "; ".join(lines) + ".", ""] if lines else []


def _fmt(v: float, sd: float | None = None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    if sd is not None and math.isfinite(sd):
        return f"{v:.3f} ± {sd:.3f}"
    return f"{v:.3f}"


def heatmap(summary: pd.DataFrame, score_table: pd.DataFrame, path: str | Path) -> list[Path]:
    """A funky heatmap in the paper's style: methods as rows, metric groups as column groups per
    setting, bars proportional to direction-aware min-max normalised means, the overall score also
    written as a number (± its fold sd when the score table has ``overall_sd``). One figure per
    dataset, plus ``heatmap_all`` (datasets as column groups of their overall and group scores, and
    an overall across datasets) when the run holds several. Writes PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import funkyheatmappy
    import matplotlib.pyplot as plt
    from funkyheatmappy.position_arguments import position_arguments

    from causcell_bench.report_html import cross_dataset_overall, overall_label

    head = headline(summary)
    path = Path(path)
    written: list[Path] = []
    # 101-step ramps indexed by the scaled value: dark = best
    palettes = {name: [matplotlib.colors.to_hex(matplotlib.colormaps[cmap](i / 100)) for i in range(101)]
                for name, cmap in (("overall", "Greys"), ("disentanglement", "Blues"),
                                   ("fidelity", "Reds"), ("realism", "Purples"), ("counterfactual", "Greens"))}
    categories = _metrics.CATEGORIES
    category_of = {g: c for c, gs in categories.items() for g in gs}
    has_sd = "overall_sd" in score_table.columns
    kinds = dict(zip(score_table["method"], score_table["kind"])) if "kind" in score_table.columns else {}
    # methods missing a category (not ranked) come after the ranked ones, as in the tables
    partial = set(score_table.loc[~score_table["complete"].astype(bool) & (score_table["kind"] == "method"), "method"]) \
        if {"complete", "kind"} <= set(score_table.columns) else set()
    short = {"disentanglement": "disent.", "fidelity": "fid.", "realism": "real.", "counterfactual": "cf."}

    def fit_label(setting: str, category: str, n_columns: int) -> str:
        # a group label wider than its columns runs into the next group's: abbreviate it to fit
        # (about 0.3 x-units per character at funkyheatmappy's text size, 1.1 per column)
        label = f"{setting} {category}"
        return label if 0.3 * len(label) <= 1.1 * n_columns - 0.2 else f"{setting} {short.get(category, category)}"

    def overall_columns(prefix: str, group: str, values: dict[str, tuple[float, float]],
                        data: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        # the funkyrect, then its value as text: the paper's figure printed the number beside it
        for method, (v, sd) in values.items():
            data.setdefault(method, {})[f"{prefix}_overall"] = v
            data[method][f"{prefix}_overall_label"] = overall_label(v, sd)
        width = 2.9 if has_sd else 1.4
        return [{"id": f"{prefix}_overall", "name": "overall", "geom": "funkyrect", "group": group,
                 "palette": "overall", "options": {}},
                {"id": f"{prefix}_overall_label", "name": "", "geom": "text", "group": group,
                 "palette": np.nan, "options": {"width": width, "ha": 0, "size": 3}}]

    def draw(data: dict[str, dict[str, Any]], col_rows: list[dict[str, Any]], groups: list[dict[str, Any]],
             rank_cols: list[str], stem: str) -> None:
        df = pd.DataFrame.from_dict(data, orient="index")
        # ranked methods by overall, then unranked ones, references, controls (as in the tables)
        mean = df.reindex(columns=rank_cols).astype(float).mean(axis=1).fillna(-1.0)
        tier = pd.Series([_TIER.get(kinds.get(m, "method"), 0) + (0.5 if m in partial else 0.0) for m in df.index],
                         index=df.index)
        order = pd.DataFrame({"tier": tier, "neg": -mean}).sort_values(["tier", "neg"], kind="stable").index
        df = df.loc[order].reset_index(names="id")
        df.insert(1, "method", [f"{m}{EMBEDDING_FLAG.get(_emb(score_table, m), '')}"
                                + ("" if kinds.get(m, "method") == "method" else f" ({kinds[m]})")
                                for m in df["id"]])
        column_info = pd.DataFrame([{"id": "method", "name": "", "geom": "text", "group": "method",
                                     "palette": np.nan, "options": {"width": 5, "ha": 0}}] + col_rows)
        column_info = column_info[column_info.id.isin(df.columns)]
        column_info.index = column_info["id"]
        column_groups = pd.DataFrame([{"group": "method", "level1": "", "palette": "overall"}, *groups])
        labels = [c for c in df.columns if c.endswith("_label")]
        # funkyheatmappy cannot draw NaN: n/a cells are drawn empty (0), the tables keep n/a
        numeric = [c for c in df.columns if c not in ("id", "method", *labels)]
        df[numeric] = df[numeric].astype(float).fillna(0.0)
        df[labels] = df[labels].fillna("n/a")
        position = {**position_arguments(), "col_annot_offset": 3, "col_annot_angle": 30, "expand_xmax": 3}
        # funkyheatmappy prints what it infers about legends: keep a grid's log readable
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = funkyheatmappy.funky_heatmap(
                df, column_info=column_info, column_groups=column_groups, palettes=palettes,
                scale_column=False, add_abc=False, position_args=position,
            )
        # funkyheatmappy gives its legends a row as wide as the figure and a fixed share of a height
        # sized for the heatmap alone, which shrinks a few-method heatmap to a strip: lay out by hand,
        # the heatmap at full size and the legends as a compact row under its left half
        w, h = fig.get_size_inches()
        legend_h = 1.1
        fig.set_layout_engine("none")
        fig.set_size_inches(w, h + legend_h)
        total = h + legend_h
        fig.axes[0].set_position([0.0, legend_h / total, 1.0, h / total])
        leg_w = min(0.9 / max(len(fig.axes) - 1, 1), 2.6 / w)
        for i, ax in enumerate(fig.axes[1:]):
            ax.set_position([0.02 + i * (leg_w + 0.25 / w), 0.0, leg_w, 0.8 * legend_h / total])
        for suffix in (".png", ".svg"):
            out = path.with_name(f"{path.stem}_{stem}{suffix}")
            fig.savefig(out, dpi=150, bbox_inches="tight")
            written.append(out)
        plt.close(fig)

    def sd_of(sc: pd.DataFrame) -> dict[str, float]:
        return dict(zip(sc.method, sc.overall_sd)) if has_sd else {}

    for dataset, dblock in head.groupby("dataset", sort=False):
        data: dict[str, dict[str, Any]] = {}
        col_rows: list[dict[str, Any]] = []
        groups_seen = []
        for setting in ("ID", "OOD", "HOLDOUT"):
            block = dblock[dblock.setting == setting]
            if block.empty:
                continue
            sc = score_table[(score_table.dataset == dataset) & (score_table.setting == setting)]
            sds = sd_of(sc)
            col_rows += overall_columns(setting, f"{setting}_score",
                                        {m: (v, sds.get(m, np.nan)) for m, v in zip(sc.method, sc.overall)}, data)
            groups_seen.append({"group": f"{setting}_score", "level1": setting, "palette": "overall"})
            for category, cat_groups in categories.items():
                cb = block[block.group.isin(cat_groups) & block.metric.isin(HEATMAP_METRICS)]
                if cb.empty:
                    continue
                for metric in [m for m in HEATMAP_METRICS if m in set(cb.metric)]:
                    mb = cb[cb.metric == metric]
                    cid = f"{setting}_{metric}"
                    vals = dict(zip(mb.method, mb["mean"]))
                    hib = bool(mb.higher_is_better.iloc[0])
                    finite = np.array([v for v in vals.values() if math.isfinite(v)])
                    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
                    for method, v in vals.items():
                        s = 0.0 if hi == lo else (v - lo) / (hi - lo)
                        data.setdefault(method, {})[cid] = s if hib else 1.0 - s
                    col_rows.append({"id": cid, "name": metric, "geom": "bar", "group": f"{setting}_{category}",
                                     "palette": category, "options": {}})
                groups_seen.append({"group": f"{setting}_{category}", "palette": category,
                                    "level1": fit_label(setting, category, cb.metric.nunique())})
        if data:
            draw(data, col_rows, groups_seen, [c["id"] for c in col_rows if c["id"].endswith("_overall")],
                 _safe(str(dataset)))

    datasets = list(dict.fromkeys(score_table["dataset"])) if "dataset" in score_table.columns else []
    if len(datasets) > 1 and "overall" in score_table.columns:
        # one figure for the whole run: the across-datasets overall first, then per dataset and
        # setting its overall score and the group scores behind it (already in [0, 1])
        wide = cross_dataset_overall(score_table)
        data = {}
        col_rows = overall_columns("all", "all", {m: (v, np.nan) for m, v in wide["overall"].items()}, data)
        groups_seen = [{"group": "all", "level1": "all datasets", "palette": "overall"}]
        for i, dataset in enumerate(datasets):
            dsc = score_table[score_table.dataset == dataset]
            for setting in dict.fromkeys(dsc.setting):
                sc = dsc[dsc.setting == setting]
                gid = f"d{i}_{setting}"
                sds = sd_of(sc)
                col_rows += overall_columns(gid, gid, {m: (v, sds.get(m, np.nan))
                                                       for m, v in zip(sc.method, sc.overall)}, data)
                for g in [g for g in GROUP_ORDER if g in sc.columns and sc[g].notna().any()]:
                    for m, v in zip(sc.method, sc[g]):
                        data.setdefault(m, {})[f"{gid}_{g}"] = v
                    col_rows.append({"id": f"{gid}_{g}", "name": g, "geom": "bar", "group": gid,
                                     "palette": category_of.get(g, "overall"), "options": {}})
                groups_seen.append({"group": gid, "level1": f"{dataset} {setting}", "palette": "overall"})
        draw(data, col_rows, groups_seen, ["all_overall"], "all")
    return written


_TIER = {"method": 0, "reference": 1, "control": 2}


def _emb(score_table: pd.DataFrame, method: str) -> str:
    v = score_table.loc[score_table.method == method, "embedding"]
    return str(v.iloc[0]) if len(v) else ""


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, figure: bool = True,
                 contents: RunContents | None = None) -> dict[str, Path]:
    """Rebuild every table and figure of a run from its cell JSONs; return the written paths.

    ``contents``: the run as :func:`causcell_bench.store.read_run` sorted it (read here if None);
    unreadable and stale cells are left out of every table and listed first in the leaderboard."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    contents = contents if contents is not None else read_run(run_dir)
    records = contents.records  # readable and current: unreadable and stale cells are left out, and listed
    tidy, status = tidy_table(records), status_table(records, contents.claims)
    summary = summarize(tidy)
    score_table = scores(summary, tidy=tidy)
    viol, degenerate, uninf = violations(summary), degenerate_table(records), uninformative(summary)
    paths = {
        "results": out / "results.csv", "summary": out / "summary.csv", "scores": out / "scores.csv",
        "status": out / "status.csv", "markdown": out / "leaderboard.md", "violations": out / "violations.csv",
        "degenerate": out / "degenerate.csv", "uninformative": out / "uninformative.csv",
    }
    uninf.to_csv(paths["uninformative"], index=False)
    viol.to_csv(paths["violations"], index=False)
    degenerate.to_csv(paths["degenerate"], index=False)
    tidy.to_csv(paths["results"], index=False)
    try:
        tidy.to_parquet(out / "results.parquet", index=False)
        paths["parquet"] = out / "results.parquet"
    except ImportError:  # pyarrow is a dependency, but a stripped install should still get CSVs
        pass
    summary.to_csv(paths["summary"], index=False)
    score_table.to_csv(paths["scores"], index=False)
    status.to_csv(paths["status"], index=False)
    paths["markdown"].write_text(markdown(summary, score_table, status, viol, degenerate, uninf,
                                          left_out=left_out_lines(contents, run_dir)))
    if figure and not summary.empty:
        try:
            for p in heatmap(summary, score_table, out / "heatmap"):
                paths[p.name] = p
        except Exception as e:  # the figure must never cost the user the tables
            (out / "heatmap_error.txt").write_text(f"{type(e).__name__}: {e}\n")
            paths["heatmap_error"] = out / "heatmap_error.txt"
    from causcell_bench.report_html import write_index_html  # here: report_html imports this module

    paths["html"] = write_index_html(out, run_dir, tidy, summary, score_table, status, dict(paths), records=records)
    return paths


def left_out_lines(contents: RunContents, run_dir: str | Path) -> list[str]:
    """One line per cell file a table leaves out (unreadable, stale) or cannot include yet (claimed)."""
    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(run_dir))
        except ValueError:
            return str(p)

    lines = [f"unreadable: {rel(p)} {why}" for p, why in contents.unreadable]
    lines += [f"stale: {rel(p)} was computed with other settings than {rel(Path(run_dir) / 'config.json')} "
              "(the last run's)" for p, _ in contents.stale]
    lines += [f"interrupted: {r['dataset']}/{r['method']}/{r['setting']}/fold{r['fold']}/seed{r['seed']} stopped "
              "before it finished (the next run reruns it)" for r in contents.records if r.get("status") == "interrupted"]
    for p, c in contents.claims:
        lines.append(f"abandoned: {c.get('cell')} (claim {rel(p)}: {c['stale']})" if c.get("stale") else
                     f"running: {c.get('cell')} (claimed by {c.get('host')} pid {c.get('pid')} since {c.get('started')})")
    return lines


# --- regression check --------------------------------------------------------
DEFAULT_TOLERANCE = {"abs": 0.05, "rel": 0.25}


def check(summary: pd.DataFrame, reference: pd.DataFrame, tolerance: dict[str, float] | None = None,
          strict: bool = False) -> list[str]:
    """Compare fold means with a reference summary; return one line per regression.

    A metric regresses when it is worse than the reference by more than
    ``max(abs, rel * |ref|)`` in its own direction (or, with ``strict``, differs
    either way), or when a reference row is missing from the run.
    """
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    if "tolerance" in reference.columns:
        per_row_tol = reference.set_index([*KEYS, "metric"])["tolerance"].to_dict()
    else:
        per_row_tol = {}
    cur = summary.set_index([*KEYS, "metric"])
    problems = []
    for _, ref in reference.iterrows():
        key = (ref.dataset, ref.method, ref.setting, ref.metric)
        if key not in cur.index:
            problems.append(f"missing: {'/'.join(map(str, key))} (reference {ref['mean']:.4f})")
            continue
        new = float(cur.loc[key, "mean"])
        old = float(ref["mean"])
        if not math.isfinite(old) and not math.isfinite(new):
            continue
        if math.isfinite(old) != math.isfinite(new):
            problems.append(f"changed: {'/'.join(map(str, key))}: {old} -> {new}")
            continue
        allowed = per_row_tol.get(key)
        if allowed is None or not math.isfinite(allowed):
            allowed = max(tol["abs"], tol["rel"] * abs(old))
        hib = bool(cur.loc[key, "higher_is_better"])
        worse = (old - new) if hib else (new - old)
        if worse > allowed or (strict and abs(new - old) > allowed):
            problems.append(f"{'regressed' if worse > allowed else 'changed'}: {'/'.join(map(str, key))}: "
                            f"{old:.4f} -> {new:.4f} (tolerance {allowed:.4f})")
    return problems
