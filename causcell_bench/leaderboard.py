"""Leaderboard: tidy tables, fold aggregation, control-scaled scores, a markdown
table and a funky heatmap, all rebuilt from a run directory's cell JSONs.

Scaling (metrics.md, "Aggregation"): each metric's fold mean is scaled
between the negative and positive control of the same dataset and setting,
``(v - neg) / (pos - neg)`` clipped to [0, 1], averaged within metric groups,
groups averaged into ``overall``. Where a control has no value for a metric
(e.g. the positive control has no counterfactuals), the worst (for neg) or
best (for pos) value any method reached stands in, and the table says so.
Raw values stay in the tables.
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

from causcell_bench.store import ResultStore

DISENTANGLEMENT_GROUPS = ("predictive", "granularity", "dci_mig")
RECONSTRUCTION_GROUPS = ("trend", "geometry", "marker")
COUNTERFACTUAL_GROUPS = ("counterfactual", "distribution")
GROUP_ORDER = DISENTANGLEMENT_GROUPS + RECONSTRUCTION_GROUPS + COUNTERFACTUAL_GROUPS
POS, NEG = "positive_control", "negative_control"
KEYS = ["dataset", "method", "setting"]


def _info(metric: str) -> Any:
    from causcell_bench.metrics import metric_info

    try:
        return metric_info(metric)
    except Exception:  # noqa: BLE001 - a metric from a newer version: keep it, unscored
        return None


def tidy_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per (dataset, method, setting, fold, seed, metric) of the successful cells."""
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        emb = (r.get("capabilities") or {}).get("embedding", "none")
        for metric, value in (r.get("metrics") or {}).items():
            info = _info(metric)
            rows.append({
                "dataset": r["dataset"], "method": r["method"], "setting": r["setting"], "fold": r["fold"],
                "seed": r["seed"], "metric": metric, "value": np.nan if value is None else float(value),
                "group": info.group if info else "other",
                "higher_is_better": info.higher_is_better if info else True,
                "aggregate": info.aggregate if info else False,
                "embedding": emb,
            })
    cols = ["dataset", "method", "setting", "fold", "seed", "metric", "value", "group", "higher_is_better",
            "aggregate", "embedding"]
    return pd.DataFrame(rows, columns=cols)


def status_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell: status, error, timings and memory (failures included)."""
    rows = []
    for r in records:
        t = r.get("timings") or {}
        rows.append({
            "dataset": r.get("dataset"), "method": r.get("method"), "setting": r.get("setting"),
            "fold": r.get("fold"), "seed": r.get("seed"), "status": r.get("status"), "error": r.get("error"),
            "fit_s": t.get("fit_s"), "total_s": r.get("total_s"), "peak_rss_mb": r.get("peak_rss_mb"),
        })
    return pd.DataFrame(rows, columns=["dataset", "method", "setting", "fold", "seed", "status", "error",
                                       "fit_s", "total_s", "peak_rss_mb"])


def summarize(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count over folds (and seeds) per (dataset, method, setting, metric)."""
    meta = ["group", "higher_is_better", "aggregate", "embedding"]
    if tidy.empty:
        return pd.DataFrame(columns=[*KEYS, "metric", *meta, "mean", "sd", "n"])
    g = tidy.groupby([*KEYS, "metric"], sort=False)
    out = g["value"].agg(mean="mean", sd="std", n="count").reset_index()
    first = g[meta].first().reset_index()
    return first.merge(out, on=[*KEYS, "metric"])[[*KEYS, "metric", *meta, "mean", "sd", "n"]]


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Per-concept metrics (``acc:age``...) averaged into one headline value per base metric."""
    s = summary[summary["aggregate"].astype(bool)].copy()
    s["base"] = s["metric"].str.split(":").str[0]
    g = s.groupby([*KEYS, "base"], sort=False)
    out = g.agg(mean=("mean", "mean"), sd=("sd", "mean"), group=("group", "first"),
                higher_is_better=("higher_is_better", "first"), embedding=("embedding", "first")).reset_index()
    return out.rename(columns={"base": "metric"})


def scores(summary: pd.DataFrame) -> pd.DataFrame:
    """Control-scaled scores per group and overall, per (dataset, method, setting)."""
    head = headline(summary)
    if head.empty:
        return pd.DataFrame(columns=[*KEYS, "embedding", *GROUP_ORDER, "overall", "note"])
    rows = []
    for (dataset, setting, metric), block in head.groupby(["dataset", "setting", "metric"], sort=False):
        vals = dict(zip(block["method"], block["mean"]))
        hib = bool(block["higher_is_better"].iloc[0])
        finite = [v for v in vals.values() if v is not None and math.isfinite(v)]
        if not finite:
            continue
        best, worst = (max(finite), min(finite)) if hib else (min(finite), max(finite))
        pos, neg = vals.get(POS, np.nan), vals.get(NEG, np.nan)
        note = []
        if not math.isfinite(pos):
            pos, note = best, note + [f"{metric}: best method stands in for the positive control"]
        if not math.isfinite(neg):
            neg, note = worst, note + [f"{metric}: worst method stands in for the negative control"]
        for method, v in vals.items():
            scaled = np.nan if pos == neg or not math.isfinite(v) else float(np.clip((v - neg) / (pos - neg), 0, 1))
            rows.append({"dataset": dataset, "setting": setting, "method": method, "metric": metric,
                         "group": block["group"].iloc[0], "scaled": scaled, "note": "; ".join(note)})
    scaled = pd.DataFrame(rows)
    emb = head.groupby(KEYS, sort=False)["embedding"].first()
    per_group = scaled.groupby([*KEYS, "group"], sort=False)["scaled"].mean().unstack("group")
    per_group = per_group.reindex(columns=[g for g in GROUP_ORDER if g in per_group.columns])
    per_group = per_group.join(emb)
    # label-lookup embeddings are identical within a label: not ranked on disentanglement
    lookup = per_group["embedding"] == "label_lookup"
    for g in DISENTANGLEMENT_GROUPS:
        if g in per_group.columns:
            per_group.loc[lookup, g] = np.nan
    group_cols = [g for g in GROUP_ORDER if g in per_group.columns]
    per_group["overall"] = per_group[group_cols].mean(axis=1, skipna=True)
    notes = scaled.groupby(KEYS, sort=False)["note"].apply(lambda s: "; ".join(sorted({n for n in s if n})))
    per_group = per_group.join(notes.rename("note")).reset_index()
    return per_group[[*KEYS, "embedding", *group_cols, "overall", "note"]]


# the figure shows these headline metrics (all metrics stay in the tables), in this order
HEATMAP_METRICS = ("acc", "f1_w", "exclusivity", "nmi_fine", "ari_fine", "dci_d", "mig",
                   "pcc", "mse", "nmi_geom", "ari_geom", "marker",
                   "effect_pcc", "cf_pcc", "causal_acc", "edist", "mean_pcc", "deg_overlap")
EMBEDDING_FLAG = {"label_lookup": " †", "shared": " *"}


def markdown(summary: pd.DataFrame, score_table: pd.DataFrame, status: pd.DataFrame | None = None) -> str:
    """A markdown leaderboard: per dataset and setting, methods by overall score, headline metrics."""
    head = headline(summary)
    parts = ["# causcell-bench leaderboard", ""]
    for (dataset, setting), block in head.groupby(["dataset", "setting"], sort=False):
        sc = score_table[(score_table.dataset == dataset) & (score_table.setting == setting)].set_index("method")
        present = set(block["metric"])
        metrics = [m for m in HEATMAP_METRICS if m in present]  # headline columns; summary.csv has all
        table = block.pivot_table(index="method", columns="metric", values="mean", aggfunc="first")
        sds = block.pivot_table(index="method", columns="metric", values="sd", aggfunc="first")
        order = sc["overall"].sort_values(ascending=False).index.tolist() if "overall" in sc else list(table.index)
        order += [m for m in table.index if m not in order]
        parts += [f"## {dataset} — {setting}", ""]
        cols = ["method", "overall", *metrics]
        parts.append("| " + " | ".join(cols) + " |")
        parts.append("|" + "---|" * len(cols))
        for method in order:
            flag = EMBEDDING_FLAG.get(str(sc["embedding"].get(method, "")) if "embedding" in sc else "", "")
            cells = [f"{method}{flag}", _fmt(sc["overall"].get(method, np.nan) if "overall" in sc else np.nan)]
            for m in metrics:
                v = table.at[method, m] if method in table.index and m in table.columns else np.nan
                s = sds.at[method, m] if method in sds.index and m in sds.columns else np.nan
                cells.append(_fmt(v, s))
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    parts += [
        ("Headline metrics (per-concept values averaged over concepts); every metric is in summary.csv. "
        "Values are means ± sd over folds; `overall` is the control-scaled score (0 = negative control, "
        "1 = positive control) averaged over metric groups. n/a: the method cannot produce that output."),
        ("† label-lookup embeddings (identical within a label): not ranked on disentanglement. "
        "* one shared latent for every concept: the probe measures informativeness, not disentanglement."),
        "",
    ]
    if status is not None and not status.empty:
        failed = status[status.status == "failed"]
        if not failed.empty:
            parts += ["## Failed cells", "", "| dataset | method | setting | fold | error |", "|---|---|---|---|---|"]
            for _, r in failed.iterrows():
                err = str(r["error"]).replace("|", "\\|").replace("\n", " ")[:200]
                parts.append(f"| {r.dataset} | {r.method} | {r.setting} | {r.fold} | {err} |")
            parts.append("")
    return "\n".join(parts)


def _fmt(v: float, sd: float | None = None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    if sd is not None and math.isfinite(sd):
        return f"{v:.3f} ± {sd:.3f}"
    return f"{v:.3f}"


def heatmap(summary: pd.DataFrame, score_table: pd.DataFrame, path: str | Path) -> list[Path]:
    """A funky heatmap in the paper's style: methods as rows, metric groups as column groups per
    setting, bars proportional to direction-aware min-max normalised means. Writes PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import funkyheatmappy
    import matplotlib.pyplot as plt
    from funkyheatmappy.position_arguments import position_arguments

    head = headline(summary)
    path = Path(path)
    written: list[Path] = []
    for dataset, dblock in head.groupby("dataset", sort=False):
        data: dict[str, dict[str, float]] = {}
        col_rows = []
        groups_seen = []
        for setting in ("ID", "OOD"):
            block = dblock[dblock.setting == setting]
            if block.empty:
                continue
            sc = score_table[(score_table.dataset == dataset) & (score_table.setting == setting)]
            cid = f"{setting}_overall"
            for _, r in sc.iterrows():
                data.setdefault(r.method, {})[cid] = r.overall
            col_rows.append({"id": cid, "name": "overall", "geom": "funkyrect", "group": f"{setting}_score",
                             "palette": "overall"})
            groups_seen.append({"group": f"{setting}_score", "level1": setting, "palette": "overall"})
            for category, cat_groups in (("disentanglement", DISENTANGLEMENT_GROUPS),
                                         ("reconstruction", RECONSTRUCTION_GROUPS),
                                         ("counterfactual", COUNTERFACTUAL_GROUPS)):
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
                                     "palette": category})
                groups_seen.append({"group": f"{setting}_{category}", "level1": f"{setting} {category}",
                                    "palette": category})
        if not data:
            continue
        df = pd.DataFrame.from_dict(data, orient="index")
        order = df[[c for c in df.columns if c.endswith("overall")]].mean(axis=1).sort_values(ascending=False).index
        df = df.loc[order].reset_index(names="id")
        df.insert(1, "method", [f"{m}{EMBEDDING_FLAG.get(_emb(score_table, m), '')}" for m in df["id"]])
        column_info = pd.DataFrame([{"id": "method", "name": "", "geom": "text", "group": "method",
                                     "palette": np.nan}] + col_rows)
        column_info = column_info[column_info.id.isin(df.columns)]
        column_info.index = column_info["id"]
        column_info["options"] = [{"width": 5, "ha": 0}] + [{}] * (len(column_info) - 1)
        column_groups = pd.DataFrame([{"group": "method", "level1": "", "palette": "overall"},
                                      *groups_seen])
        # 101-step ramps indexed by the scaled value: dark = best
        palettes = {name: [matplotlib.colors.to_hex(matplotlib.colormaps[cmap](i / 100)) for i in range(101)]
                    for name, cmap in (("overall", "Greys"), ("disentanglement", "Blues"),
                                       ("reconstruction", "Reds"), ("counterfactual", "Greens"))}
        position = {**position_arguments(), "col_annot_offset": 3, "col_annot_angle": 30, "expand_xmax": 3}
        # funkyheatmappy prints what it infers about legends: keep a grid's log readable
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # funkyheatmappy cannot draw NaN: n/a cells are drawn empty (0), the tables keep n/a
            fig = funkyheatmappy.funky_heatmap(
                df.fillna(0.0), column_info=column_info, column_groups=column_groups, palettes=palettes,
                scale_column=False, add_abc=False, position_args=position,
            )
        for suffix in (".png", ".svg"):
            out = path.with_name(f"{path.stem}_{_safe(dataset)}{suffix}")
            fig.savefig(out, dpi=150, bbox_inches="tight")
            written.append(out)
        plt.close(fig)
    return written


def _emb(score_table: pd.DataFrame, method: str) -> str:
    v = score_table.loc[score_table.method == method, "embedding"]
    return str(v.iloc[0]) if len(v) else ""


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, figure: bool = True) -> dict[str, Path]:
    """Rebuild every table and figure of a run from its cell JSONs; return the written paths."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    records = list(ResultStore(run_dir).records())
    tidy, status = tidy_table(records), status_table(records)
    summary = summarize(tidy)
    score_table = scores(summary)
    paths = {
        "results": out / "results.csv", "summary": out / "summary.csv", "scores": out / "scores.csv",
        "status": out / "status.csv", "markdown": out / "leaderboard.md",
    }
    tidy.to_csv(paths["results"], index=False)
    try:
        tidy.to_parquet(out / "results.parquet", index=False)
        paths["parquet"] = out / "results.parquet"
    except ImportError:  # pyarrow is a dependency, but a stripped install should still get CSVs
        pass
    summary.to_csv(paths["summary"], index=False)
    score_table.to_csv(paths["scores"], index=False)
    status.to_csv(paths["status"], index=False)
    paths["markdown"].write_text(markdown(summary, score_table, status))
    if figure and not summary.empty:
        try:
            for p in heatmap(summary, score_table, out / "heatmap"):
                paths[p.name] = p
        except Exception as e:  # noqa: BLE001 - the figure must never cost the user the tables
            (out / "heatmap_error.txt").write_text(f"{type(e).__name__}: {e}\n")
            paths["heatmap_error"] = out / "heatmap_error.txt"
    return paths


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
