"""The leaderboard as a reader sees it: the markdown table (:func:`markdown`) and the funky heatmap
in the paper's style (:func:`heatmap`)."""

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
from causcell_bench.fileio import atomic_path
from causcell_bench.leaderboard.common import (
    CATEGORY_ORDER,
    EMBEDDING_FLAG,
    GROUP_ORDER,
    HEATMAP_METRICS,
    KIND_ORDER,
    TRIVIAL_LABEL,
    overall_label,
    rank_label,
)
from causcell_bench.leaderboard.scoring import cross_dataset_overall
from causcell_bench.leaderboard.tables import headline, trivial_values
from causcell_bench.leaderboard.verdict import LEGEND as VERDICT_LEGEND
from causcell_bench.leaderboard.verdict import verdict_tables


def markdown(summary: pd.DataFrame, score_table: pd.DataFrame, status: pd.DataFrame | None = None,
             violation_table: pd.DataFrame | None = None, degenerate: pd.DataFrame | None = None,
             uninformative_table: pd.DataFrame | None = None, left_out: Iterable[str] = (),
             verdict: pd.DataFrame | None = None) -> str:
    """A markdown leaderboard: per dataset and setting, ranked methods by overall score (with rank
    intervals), then partial methods, references and controls; headline metrics; on held-out settings
    the verdict against the references (``verdict``: :func:`~causcell_bench.leaderboard.verdict.heldout_verdict`);
    notes on what the references show, bracketing violations, degenerate metrics and failed cells."""
    verdicts = {(d, s): (t, note) for d, s, t, note in verdict_tables(verdict)} if verdict is not None else {}
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
    parts += _across_datasets(score_table)
    for (dataset, setting), block in head.groupby(["dataset", "setting"], sort=False):
        sc = score_table[(score_table.dataset == dataset) & (score_table.setting == setting)].set_index("method")
        present = set(block["metric"])
        metrics = [m for m in HEATMAP_METRICS if m in present]
        table = block.pivot_table(index="method", columns="metric", values="mean", aggfunc="first")
        sds = block.pivot_table(index="method", columns="metric", values="sd", aggfunc="first")
        trivial = trivial_values(block)
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
                cells.append(TRIVIAL_LABEL if (method, m) in trivial else _fmt(v, sd))
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
        parts += _reference_note(block, sc)
        if (dataset, setting) in verdicts:
            table, basis = verdicts[(dataset, setting)]
            parts += ["Held-out populations: does each model beat the references on R^2 of the held-out mean?", "",
                      *_md_table(table), "", f"{VERDICT_LEGEND} {basis}", ""]
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
         "only, with a 95% bootstrap interval over folds x seeds when there are several (with one fold and "
         "seed, over parts of its test cells scored separately: see `rank_basis` in scores.csv); methods "
         "whose intervals overlap are tied. n/a: the method cannot produce that output; a degenerate metric "
         "(listed below) is left out."),
        ("† label-lookup embeddings (identical within a label): not ranked on disentanglement. "
         "* one shared latent for every concept: the probe measures informativeness, not disentanglement. "
         "Controls anchor the scale; references (group_mean, additive_shift, no_change) are the field's "
         "simple baselines: shown after the methods, never ranked, with category scores only where they make "
         f"a real prediction and no overall. `{TRIVIAL_LABEL}`: additive_shift and no_change return the cell "
         "itself as their reconstruction, a value that is perfect by construction and not scored."),
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
        parts += ["## Degenerate metrics", "", ("Not measurable on these test folds (NaN, left out of every score), "
                   "or not separating the controls on this data (every method scores 0):"), ""]
        d = degenerate.groupby(["dataset", "setting", "fold", "reason"], sort=False)["metric"].apply(
            lambda m: ", ".join(sorted(set(m))))
        for (dataset, setting, fold, reason), ms in d.items():
            where = "all folds" if fold == "all" else f"fold {fold}"
            parts.append(f"- {dataset} {setting} {where}: {reason} ({ms})")
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
        tier = 0 if np.isfinite(r.get("rank", np.nan)) else 1 + KIND_ORDER.get(kind, 0)
        overall = r.get("overall", np.nan)
        return (tier, -(overall if np.isfinite(overall) else -1.0))
    return sorted(dict.fromkeys([*sc.index, *methods]), key=key)


def _md_table(table: pd.DataFrame) -> list[str]:
    """A table of text cells as markdown lines."""
    cell = lambda v: str(v).replace("|", "\\|")
    return ["| " + " | ".join(map(cell, table.columns)) + " |", "|" + "---|" * len(table.columns),
            *("| " + " | ".join(map(cell, row)) + " |" for row in table.itertuples(index=False))]


def _across_datasets(score_table: pd.DataFrame) -> list[str]:
    """With several datasets, the paper's Fig. 1 as a table: each method's overall per dataset (mean
    over its settings) and across datasets, with its rank there and the rank's interval."""
    if "dataset" not in score_table.columns or score_table["dataset"].nunique() < 2:
        return []
    wide = cross_dataset_overall(score_table)
    datasets = list(dict.fromkeys(score_table["dataset"]))
    per = score_table.groupby(["method", "dataset"], sort=False)["overall"].mean()
    kinds = score_table.groupby("method")["kind"].first().to_dict() if "kind" in score_table.columns else {}
    lines = ["## All datasets", "", "| method | rank | overall | " + " | ".join(datasets) + " |",
             "|---|---|---|" + "---|" * len(datasets)]
    ranked = wide.assign(_r=wide.get("rank_all", pd.Series(np.nan, index=wide.index)).fillna(np.inf))
    for method, r in ranked.sort_values(["_r", "overall"], ascending=[True, False]).iterrows():
        if not np.isfinite(r["overall"]):
            continue  # references: no overall
        rank = rank_label(r.get("rank_all"), r.get("rank_all_lo"), r.get("rank_all_hi")).removeprefix("rank ")
        cells = [_fmt(per.get((method, d), np.nan)) for d in datasets]
        kind = kinds.get(method, "method")
        label = method if kind == "method" else f"*{method}* ({kind})"
        lines.append(f"| {label} | {rank} | {_fmt(r['overall'])} | " + " | ".join(cells) + " |")
    lines += ["", ("`overall`: the mean over datasets of each dataset's mean over settings (every dataset weighs "
                   "the same); `rank` among the methods ranked in every dataset and setting, with its 95% "
                   "bootstrap interval. Per dataset and setting below."), ""]
    return lines


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


def heatmap(summary: pd.DataFrame, score_table: pd.DataFrame, path: str | Path, *, exact: bool = False,
            figures: list[Any] | None = None) -> list[Path]:
    """A funky heatmap in the paper's style: methods as rows, metric groups as column groups per
    setting, bars proportional to direction-aware min-max normalised means, the overall score also
    written as a number (± its fold sd when the score table has ``overall_sd``). One figure per
    dataset, plus ``heatmap_all`` (datasets as column groups of their overall and group scores, and
    an overall across datasets) when the run holds several. Writes PNG and SVG, named
    ``<path stem>_<dataset>``; with ``exact``, the one figure of a one-dataset table goes to ``path``
    itself, in the format of its extension. Figures are closed unless ``figures`` collects them."""
    import matplotlib

    matplotlib.use("Agg")
    import funkyheatmappy
    import matplotlib.pyplot as plt
    from funkyheatmappy.position_arguments import position_arguments

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
        tier = pd.Series([KIND_ORDER.get(kinds.get(m, "method"), 0) + (0.5 if m in partial else 0.0) for m in df.index],
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
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _funkyrects_sized_like_circles():
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
        targets = [path] if exact else [path.with_name(f"{path.stem}_{stem}{suffix}") for suffix in (".png", ".svg")]
        for out in targets:
            with atomic_path(out) as tmp:  # a full disk leaves no truncated figure
                fig.savefig(tmp, dpi=150, bbox_inches="tight", format=out.suffix.lstrip(".") or None)
            written.append(out)
        if figures is None:
            plt.close(fig)
        else:
            figures.append(fig)

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
                        # tied (one method): every value is the best, a full bar in either direction
                        s = np.nan if not math.isfinite(v) else 1.0 if hi == lo else (v - lo) / (hi - lo)
                        data.setdefault(method, {})[cid] = s if hib or hi == lo else 1.0 - s
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
        if "rank_all" in wide.columns:  # the rank across datasets and its interval beside the score
            for m, r in wide.iterrows():
                if rank := rank_label(r["rank_all"], r.get("rank_all_lo"), r.get("rank_all_hi")):
                    data[m]["all_overall_label"] += f"  {rank}"
            col_rows[1]["options"]["width"] = 4.2
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


@contextlib.contextmanager
def _funkyrects_sized_like_circles() -> Any:
    """While drawing: give every funky rectangle the circle's x, y, r, start and end columns.

    funkyheatmappy (0.7) sizes the figure from the ``x``/``r`` of its funky rectangles, which only
    values under 0.8 (drawn as circles) carry: a figure whose every overall score is 0.8 or more (a
    run with one good method) failed with ``KeyError: 'x'``. A rectangle gets its centre and r = 0,
    inside its cell, so the bounds do not change; start/end NaN keep it drawn as a rectangle."""
    from funkyheatmappy import calculate_positions as positions

    original = getattr(positions, "score_to_funkyrectangle", None)
    if original is None:  # another funkyheatmappy layout: nothing to mend
        yield
        return

    def shape(*args: Any, **kwargs: Any) -> pd.DataFrame | None:
        out = original(*args, **kwargs)
        if out is not None and "x" not in out.columns:
            out = out.assign(x=(out["xmin"] + out["xmax"]) / 2, y=(out["ymin"] + out["ymax"]) / 2, r=0.0,
                             start=np.nan, end=np.nan)
        return out

    positions.score_to_funkyrectangle = shape
    try:
        yield
    finally:
        positions.score_to_funkyrectangle = original


def _emb(score_table: pd.DataFrame, method: str) -> str:
    v = score_table.loc[score_table.method == method, "embedding"]
    return str(v.iloc[0]) if len(v) else ""


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)

