"""A self-contained HTML report (``report/index.html``) of one run.

One file a reader can open offline or mail around: figures are embedded as
base64 PNG data URIs, CSS and the table-sorting script are inline, nothing is
fetched from the network. Built from the tables :func:`~causcell_bench.leaderboard.build_report`
already computed (tidy, summary, scores, status) plus the run directory
(``config.json`` and the cell files' package versions). Every string that comes
from a run (method, dataset and metric names, errors, config values) is
escaped: a plugin's name or an exception message must not become markup.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from causcell_bench.fileio import atomic_write_text
from causcell_bench.leaderboard.common import (
    EMBEDDING_FLAG,
    GROUP_ORDER,
    HEATMAP_METRICS,
    KEYS,
    KIND_ORDER,
    TRIVIAL_LABEL,
    finite,
    kind_by_name,
    rank_label,
)
from causcell_bench.leaderboard.scoring import cross_dataset_overall
from causcell_bench.leaderboard.tables import scored_rows, trivial_values
from causcell_bench.leaderboard.verdict import LEGEND as VERDICT_LEGEND
from causcell_bench.leaderboard.verdict import verdict_tables
from causcell_bench.metrics import CATEGORIES

CATEGORY_OF = {g: cat for cat, groups in CATEGORIES.items() for g in groups}
CATEGORY_COLOUR = {"disentanglement": "#3a7dbf", "fidelity": "#d0533c", "realism": "#e08a2c",
                   "counterfactual": "#3d9a50", "other": "#7f7f7f"}
# score_table columns with a fixed place in the scores table; any other column is shown after them
_SCORE_KNOWN = {*KEYS, "embedding", "note", "kind", "overall", "overall_sd", "rank", "rank_lo", "rank_hi",
                "rank_basis", "tied", *GROUP_ORDER, *CATEGORIES}


# --- small helpers -----------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(v: Any, digits: int = 3, sd: Any = None) -> str:
    """A table cell for a number: the sort key in data-v, n/a for missing values."""
    if not finite(v):
        return '<td class="na" data-v="">n/a</td>'
    text = f"{float(v):.{digits}f}"
    if finite(sd):
        text += f' <span class="sd">± {float(sd):.{digits}f}</span>'
    return f'<td class="num" data-v="{float(v)!r}">{text}</td>'


# a reference's trivial value: shown as what it is, sorted with the n/a cells
_TRIVIAL_CELL = (f'<td class="na" data-v="" title="the reference returns the input cell as its reconstruction: '
                 f'perfect by construction, not scored">{TRIVIAL_LABEL}</td>')


def _cell(v: Any) -> str:
    """A table cell for a value of unknown type (extra columns the lead or a plugin adds)."""
    if isinstance(v, (bool, np.bool_)):
        return f"<td>{_e(v)}</td>"
    if isinstance(v, (int, np.integer)):
        return _num(v, 0)
    if isinstance(v, (float, np.floating)):
        return _num(v)
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return '<td class="na" data-v=""></td>'
    return f"<td>{_e(v)}</td>"


def method_kinds(tables: Iterable[pd.DataFrame], methods: Iterable[str]) -> dict[str, str]:
    """method | control | reference per method: the tables' ``kind`` column where they have one
    (a plugin may declare its own controls), else the built-in names."""
    given: dict[str, str] = {}
    for table in tables:
        if table is not None and {"kind", "method"} <= set(table.columns):
            for m, k in zip(table["method"], table["kind"]):
                if isinstance(k, str) and k:
                    given.setdefault(str(m), k)
    out = {}
    for m in methods:
        m = str(m)
        out[m] = given.get(m) or kind_by_name(m)
    return out


def _order(score_table: pd.DataFrame, methods: Iterable[str], kinds: Mapping[str, str]) -> list[str]:
    """The leaderboard's order: ranked methods by rank, then other methods, references and controls,
    each by overall score; methods without a score last."""
    methods = list(dict.fromkeys([*(str(m) for m in methods), *score_table.get("method", [])]))
    sc = score_table.drop_duplicates("method").set_index("method") if not score_table.empty else pd.DataFrame()

    def num(m: str, col: str) -> float:
        v = sc.at[m, col] if m in sc.index and col in sc.columns else np.nan
        return float(v) if finite(v) else math.nan

    def key(m: str) -> tuple[int, float, float, str]:
        tier = 1 + KIND_ORDER.get(kinds.get(m, "method"), 0)
        rank, overall = num(m, "rank"), num(m, "overall")
        if math.isfinite(rank):
            tier = 0
        return (tier, rank if math.isfinite(rank) else 0.0, -overall if math.isfinite(overall) else math.inf, m)

    return sorted(methods, key=key)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fig_uri(fig: Any, dpi: int = 90) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return _png_uri(buf.getvalue())


class _Ids:
    """Unique, safe anchor ids from arbitrary names."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, *parts: Any) -> str:
        base = "-".join("".join(ch if ch.isalnum() else "-" for ch in str(p)) for p in parts).strip("-") or "s"
        out, i = base, 2
        while out in self.used:
            out, i = f"{base}-{i}", i + 1
        self.used.add(out)
        return out


def _row_open(method: str, kinds: Mapping[str, str], emb: str = "") -> str:
    kind = kinds.get(method, "method")
    flag = EMBEDDING_FLAG.get(emb, "")
    return (f'<tr class="{_e(kind)}"><th scope="row" data-v="{_e(method)}">{_e(method)}{_e(flag)}</th>'
            f'<td data-v="{_e(kind)}">{_e(kind)}</td>')


def _generic_table(df: pd.DataFrame, cls: str = "sortable") -> str:
    """Any DataFrame as a sortable table (violations, extra tables the lead adds)."""
    head = "".join(f'<th data-col="{i}">{_e(c)}</th>' for i, c in enumerate(df.columns))
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f'<div class="wrap"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# --- sections ------------------------------------------------------------------
def _heatmap_section(figures: Mapping[str, Path], datasets: list[str]) -> str:
    pngs = {Path(p).name: Path(p) for p in figures.values() if Path(p).suffix == ".png" and Path(p).is_file()}
    heat = [n for n in pngs if n.startswith("heatmap")]
    # the cross-dataset figure first, then one per dataset in run order
    rank = {f"heatmap_{''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in d)}.png": i + 1
            for i, d in enumerate(datasets)}
    heat.sort(key=lambda n: (0 if n == "heatmap_all.png" else rank.get(n, len(rank) + 1), n))
    parts = []
    for name in heat:
        caption = "all datasets" if name == "heatmap_all.png" else name.removeprefix("heatmap_").removesuffix(".png")
        parts.append(f'<figure><img src="{_png_uri(pngs[name].read_bytes())}" alt="funky heatmap: {_e(caption)}">'
                     f"<figcaption>{_e(caption)} ({_e(name)}; the SVG beside it in the report folder)"
                     "</figcaption></figure>")
    err = figures.get("heatmap_error")
    if err is not None and Path(err).is_file():
        parts.append(f'<p class="warn">The heatmap could not be drawn: {_e(Path(err).read_text().strip())}</p>')
    if not parts:
        parts.append("<p>No heatmap was drawn for this run.</p>")
    return "".join(parts)


def _overview_section(score_table: pd.DataFrame, kinds: Mapping[str, str]) -> str:
    wide = cross_dataset_overall(score_table)
    datasets = list(dict.fromkeys(score_table["dataset"]))
    settings = {d: list(dict.fromkeys(score_table.loc[score_table.dataset == d, "setting"])) for d in datasets}
    sd = {}
    if "overall_sd" in score_table.columns:
        sd = {(r.dataset, r.setting, r.method): r.overall_sd for r in score_table.itertuples()}
    top = ('<tr><th rowspan="2" data-col="0">method</th><th rowspan="2" data-col="1">kind</th>'
           '<th rowspan="2" data-col="2" class="grp">all datasets</th>')
    top += "".join(f'<th colspan="{len(settings[d])}" class="grp">{_e(d)}</th>' for d in datasets) + "</tr>"
    sub, col = "<tr>", 3
    for d in datasets:
        for s in settings[d]:
            sub += f'<th data-col="{col}">{_e(s)}</th>'
            col += 1
    sub += "</tr>"
    body = []
    # the leaderboard's order (methods, references, controls), by the across-datasets overall
    ranked = pd.DataFrame({"method": wide.index, "overall": wide["overall"].to_numpy()})
    for method in _order(ranked, [], kinds):
        r = wide.loc[method]
        n = int(r["n_datasets"])
        cell = _num(r["overall"])
        if n < len(datasets):  # a mean over fewer datasets is not comparable: say so
            cell = cell.replace("</td>", f' <span class="sd">({n}/{len(datasets)})</span></td>')
        if rank := rank_label(r.get("rank_all"), r.get("rank_all_lo"), r.get("rank_all_hi")):
            cell = cell.replace("</td>", f' <span class="sd">{_e(rank)}</span></td>')
        row = _row_open(str(method), kinds) + cell
        row += "".join(_num(r.get(f"{d}|{s}"), sd=sd.get((d, s, method))) for d in datasets for s in settings[d])
        body.append(row + "</tr>")
    return (f'<div class="wrap"><table class="sortable"><thead>{top}{sub}</thead><tbody>{"".join(body)}</tbody>'
            "</table></div><p class=\"note\">Control-scaled overall scores (0 = negative control, 1 = positive "
            "control). <em>all datasets</em>: the mean over datasets of each dataset's mean over settings; "
            "(k/N) marks a method scored on only k of the N datasets; <em>rank</em>: among the methods ranked in "
            "every dataset and setting, with its 95% bootstrap interval (the units of each dataset's ranks "
            "resampled together).</p>")


def _rank_cell(r: pd.Series) -> str:
    rank = r.get("rank")
    if not finite(rank):
        return '<td class="na" data-v="">–</td>'
    text = f"{float(rank):.0f}"
    lo, hi = r.get("rank_lo"), r.get("rank_hi")
    if finite(lo) and finite(hi):
        text += f' <span class="sd">[{float(lo):.0f}–{float(hi):.0f}]</span>'
    tied, basis = r.get("tied"), r.get("rank_basis")
    about = [f"95% interval over {basis}"] if isinstance(basis, str) and basis else []
    about += [f"tied with {tied}"] if isinstance(tied, str) and tied else []
    title = f' title="{_e("; ".join(about))}"' if about else ""
    mark = " ≈" if isinstance(tied, str) and tied else ""
    return f'<td class="num" data-v="{float(rank)!r}"{title}>{text}{mark}</td>'


def _scores_table(sc: pd.DataFrame, order: list[str], kinds: Mapping[str, str]) -> str:
    sc = sc.drop_duplicates("method").set_index("method")
    has_rank = "rank" in sc.columns
    # categories, then the groups behind them (a one-group category shares its group's name)
    cats = [c for c in CATEGORIES if c in sc.columns and sc[c].notna().any()]
    groups = [g for g in GROUP_ORDER if g in sc.columns and g not in cats and sc[g].notna().any()]
    extra = [c for c in sc.columns if c not in _SCORE_KNOWN]
    heads = ["method", "kind", *(["rank"] if has_rank else []), "overall", *cats, *groups, *extra]
    classes = ["", "", *([""] if has_rank else []), "", *cats, *[CATEGORY_OF.get(g, "other") for g in groups],
               *[""] * len(extra)]
    asc = {"rank"}  # a low rank is best: sort it ascending first
    hib0 = ' data-hib="0"'
    th = "".join(f'<th data-col="{i}" class="{_e(c)}"{hib0 if h in asc else ""}>{_e(h)}</th>'
                 for i, (h, c) in enumerate(zip(heads, classes)))
    body = []
    for m in order:
        if m not in sc.index:
            continue
        r = sc.loc[m]
        row = _row_open(m, kinds, str(r.get("embedding", "")))
        row += _rank_cell(r) if has_rank else ""
        row += _num(r.get("overall"), sd=r.get("overall_sd"))
        row += "".join(_num(r.get(g)) for g in (*cats, *groups))
        row += "".join(_cell(r.get(c)) for c in extra)
        body.append(row + "</tr>")
    notes = sorted({n for v in sc.get("note", pd.Series(dtype=str)).dropna() for n in str(v).split("; ") if n})
    # one line per metric and setting can run long: folded, the table stays in view
    note = (f'<details class="note"><summary>Scaling notes ({len(notes)})</summary><ul>'
            + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></details>") if notes else ""
    return (f'<div class="wrap"><table class="sortable scores"><thead><tr>{th}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{note}')


def _metric_table(block: pd.DataFrame, order: list[str], kinds: Mapping[str, str], emb: Mapping[str, str]) -> str:
    """Every metric of one dataset and setting: methods as rows, metrics as columns grouped by
    category, mean ± sd over folds."""
    meta = block.drop_duplicates("metric").set_index("metric")
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    metrics = sorted(meta.index, key=lambda m: (rank.get(meta.at[m, "group"], len(rank)),
                                                 list(meta.index).index(m)))
    cat = {m: CATEGORY_OF.get(str(meta.at[m, "group"]), "other") for m in metrics}
    top = '<tr><th rowspan="2" data-col="0">method</th><th rowspan="2" data-col="1">kind</th>'
    runs: list[list[str]] = []  # consecutive metrics of one category share a header cell
    for m in metrics:
        if runs and cat[runs[-1][0]] == cat[m]:
            runs[-1].append(m)
        else:
            runs.append([m])
    top += "".join(f'<th colspan="{len(r)}" class="grp {cat[r[0]]}">{_e(cat[r[0]])}</th>' for r in runs) + "</tr>"
    sub = "<tr>"
    for i, m in enumerate(metrics, start=2):
        hib = bool(meta.at[m, "higher_is_better"])
        arrow = "↑" if hib else "↓"
        sub += (f'<th data-col="{i}" data-hib="{int(hib)}" class="{cat[m]}" '
                f'title="{_e(meta.at[m, "group"])}; {"higher" if hib else "lower"} is better">{_e(m)} {arrow}</th>')
    sub += "</tr>"
    mean = block.pivot_table(index="method", columns="metric", values="mean", aggfunc="first", dropna=False)
    sd = block.pivot_table(index="method", columns="metric", values="sd", aggfunc="first", dropna=False)
    trivial = trivial_values(block)
    body = []
    for m in order:
        if m not in mean.index:
            continue
        row = _row_open(m, kinds, emb.get(m, ""))
        row += "".join(_TRIVIAL_CELL if (m, k) in trivial else
                       _num(mean.at[m, k] if k in mean.columns else np.nan,
                            sd=sd.at[m, k] if k in sd.columns else np.nan) for k in metrics)
        body.append(row + "</tr>")
    return (f'<div class="wrap"><table class="sortable metrics"><thead>{top}{sub}</thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def fold_headline(tidy: pd.DataFrame, dataset: str, setting: str) -> pd.DataFrame:
    """Per fold (and seed), per-concept metrics averaged into one headline value per base metric:
    the points behind the bar charts' means and error bars."""
    t = tidy[(tidy.dataset == dataset) & (tidy.setting == setting) & scored_rows(tidy)].copy()
    if t.empty:
        return pd.DataFrame(columns=["method", "fold", "seed", "metric", "value", "group", "higher_is_better"])
    t["base"] = t["metric"].str.split(":").str[0]
    g = t.groupby(["method", "fold", "seed", "base"], sort=False)
    out = g.agg(value=("value", "mean"), group=("group", "first"),
                higher_is_better=("higher_is_better", "first")).reset_index()
    return out.rename(columns={"base": "metric"})


def bar_chart(tidy: pd.DataFrame, dataset: str, setting: str, order: list[str],
              kinds: Mapping[str, str]) -> str | None:
    """Small multiples of the headline metrics for one dataset and setting: a bar per method at its
    mean over folds, error bars ±1 sd over folds, the folds as dots. A PNG data URI, or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = fold_headline(tidy, dataset, setting)
    if pts.empty:
        return None
    present = set(pts["metric"])
    metrics = [m for m in HEATMAP_METRICS if m in present] or sorted(present)[:18]
    methods = [m for m in order if m in set(pts["method"])] + sorted(set(pts["method"]) - set(order))
    ncols = min(6, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, sharey=True, squeeze=False,
                             figsize=(2.1 * ncols + 1.2, 0.32 * len(methods) * nrows + 0.9 * nrows))
    y = np.arange(len(methods))
    for ax, metric in zip(axes.flat, metrics):
        mp = pts[pts.metric == metric]
        stats = mp.groupby("method")["value"].agg(["mean", "std"]).reindex(methods)
        category = CATEGORY_OF.get(str(mp["group"].iloc[0]), "other")
        colours = [CATEGORY_COLOUR[category] if kinds.get(m, "method") == "method" else "#c8c8c8" for m in methods]
        ax.barh(y, stats["mean"].fillna(0.0), xerr=stats["std"].fillna(0.0), color=colours, height=0.7,
                error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"})
        for i, m in enumerate(methods):
            vals = mp.loc[mp.method == m, "value"].dropna()
            if vals.empty:
                ax.text(0, i, " n/a", va="center", ha="left", fontsize=7, color="#888888")
            elif len(vals) > 1:
                ax.plot(vals, np.full(len(vals), i), "o", ms=2.5, color="#222222", alpha=0.7, zorder=3)
        hib = bool(mp["higher_is_better"].iloc[0])
        ax.set_title(f"{metric} {'↑' if hib else '↓'}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.axvline(0, color="#999999", lw=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    axes[0, 0].set_yticks(y, methods)
    axes[0, 0].invert_yaxis()
    for r in range(nrows):
        for lab in axes[r, 0].get_yticklabels():
            if kinds.get(lab.get_text(), "method") != "method":
                lab.set_color("#777777")
                lab.set_fontstyle("italic")
    fig.tight_layout()
    uri = _fig_uri(fig)
    plt.close(fig)
    return uri


def _failed_section(status: pd.DataFrame) -> str:
    if status is None or status.empty or "status" not in status.columns:
        return "<p>No cells recorded.</p>"
    failed = status[status["status"] == "failed"]
    if failed.empty:
        return '<p class="ok">Every cell ran: no failures.</p>'
    cols = [c for c in ("dataset", "method", "setting", "fold", "seed") if c in failed.columns]
    head = "".join(f'<th data-col="{i}">{_e(c)}</th>' for i, c in enumerate(cols))
    head += f'<th data-col="{len(cols)}">reason</th>'
    body = []
    for _, r in failed.iterrows():
        err = "" if pd.isna(r.get("error")) else str(r.get("error"))
        first = err.strip().splitlines()[-1] if err.strip() else "(no error recorded)"  # a traceback ends with it
        reason = _e(first[:300])
        if err.strip() and err.strip() != first:
            reason = f"<details><summary>{reason}</summary><pre>{_e(err)}</pre></details>"
        body.append("<tr>" + "".join(_cell(r[c]) for c in cols) + f'<td class="err" data-v="{_e(first)}">'
                    f"{reason}</td></tr>")
    return (f'<div class="wrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _versions(run_dir: Path, records: Iterable[Mapping[str, Any]] | None) -> dict[str, dict[str, int]]:
    from causcell_bench.store import read_run

    out: dict[str, dict[str, int]] = {}
    if records is None:  # called on its own: read the run (build_report hands its records over)
        try:
            records = read_run(run_dir).records
        except Exception:  # provenance is best effort; the tables must still be written
            return out
    for r in records:
        for pkg, ver in (r.get("versions") or {}).items():
            out.setdefault(str(pkg), {}).setdefault(str(ver), 0)
            out[str(pkg)][str(ver)] += 1
    return out


def _provenance_section(run_dir: Path, status: pd.DataFrame,
                        records: Iterable[Mapping[str, Any]] | None = None) -> str:
    parts = [f"<p>Run directory: <code>{_e(run_dir.resolve())}</code></p>"]
    versions = _versions(run_dir, records)
    if versions:
        rows = []
        for pkg in sorted(versions, key=str.lower):
            vs = versions[pkg]
            # several versions in one run make its cells incomparable: show each with its cell count
            text = ", ".join(f"{v} ({n} cells)" for v, n in vs.items()) if len(vs) > 1 else next(iter(vs))
            cls = ' class="warn"' if len(vs) > 1 else ""
            rows.append(f"<tr{cls}><td>{_e(pkg)}</td><td>{_e(text)}</td></tr>")
        parts.append('<h3 id="versions">Package versions</h3><table class="plain"><thead><tr><th>package</th>'
                     f'<th>version</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    cfg = run_dir / "config.json"
    if cfg.is_file():
        try:
            config = json.loads(cfg.read_text())
        except ValueError:
            config = None
        if isinstance(config, dict):
            # one row per setting, values as compact JSON: short enough to read at a glance
            rows = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(json.dumps(v, sort_keys=True))}</code></td></tr>"
                           for k, v in sorted(config.items()))
            content = f'<table class="plain"><tbody>{rows}</tbody></table>'
        else:
            content = f'<pre class="config">{_e(cfg.read_text())}</pre>'
        parts.append(f'<h3 id="config">Run config (config.json)</h3>{content}')
    if status is not None and not status.empty:
        st = status.drop(columns=[c for c in ("error",) if c in status.columns])
        total = pd.to_numeric(st.get("total_s", pd.Series(dtype=float)), errors="coerce").sum()
        peak = pd.to_numeric(st.get("peak_rss_mb", pd.Series(dtype=float)), errors="coerce").max()
        sums = f"{len(st)} cells, {total:.1f} s of cell time in all"
        sums += f", largest peak memory {peak:.0f} MB" if finite(peak) else ""
        parts.append('<h3 id="timings">Timings and peak memory per cell</h3>'
                     f"<p class=\"note\">{_e(sums)}. fit_s: training; total_s: the whole cell (data, training, "
                     "scoring); peak_rss_mb: the cell process's peak resident memory.</p>" + _generic_table(st))
    return "".join(parts)


# --- page ----------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;
 max-width:1500px;padding:1rem 2rem;color:#222;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin-top:1.4rem}.meta{color:#555;margin-top:0}
nav.toc{background:#f6f7f9;border:1px solid #e1e4e8;padding:.5rem 1rem;display:inline-block;min-width:20rem}
nav.toc ul{margin:.2rem 0;padding-left:1.2rem}nav.toc li.l3{margin-left:1.2rem;list-style:circle}
.wrap{overflow-x:auto;max-width:100%;margin:.4rem 0}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #dde;padding:3px 7px;white-space:nowrap}
thead th{background:#eef1f5;position:sticky;top:0}
th[data-col]{cursor:pointer;user-select:none}
th[data-col]:hover{background:#dfe6ef}
th[aria-sort=ascending]::after{content:" ▲";font-size:10px}
th[aria-sort=descending]::after{content:" ▼";font-size:10px}
tbody th{text-align:left;font-weight:600;background:#fff;position:sticky;left:0}
td.num{text-align:right}td.na{color:#aaa;text-align:center}
.sd{color:#777;font-size:11px}
tr.control td,tr.control th,tr.reference td,tr.reference th{color:#808080;font-style:italic;font-weight:normal}
tr.reference td,tr.reference th{background:#f4f4f4}
th.disentanglement{border-top:3px solid #3a7dbf}
th.counterfactual{border-top:3px solid #3d9a50}th.other{border-top:3px solid #999}
th.grp{text-align:left}
th.fidelity{border-top:3px solid #d0533c}th.realism{border-top:3px solid #e08a2c}
.legend{border:1px solid #e1e4e8;background:#fbfbfc;padding:.4rem .8rem;font-size:13px;display:inline-block}
.legend span.k{display:inline-block;padding:0 .4rem;margin-right:.3rem}
.legend .control{color:#808080;font-style:italic}.legend .reference{color:#808080;font-style:italic;background:#f4f4f4}
figure{margin:.6rem 0;overflow-x:auto}
figure img{max-width:100%;height:auto;border:1px solid #eee;cursor:zoom-in;box-sizing:border-box}
figure img.full{max-width:none;cursor:zoom-out}
figcaption{color:#666;font-size:12px}
.note{color:#555;font-size:12px;max-width:75rem}.warn{color:#a33}.ok{color:#2a7a2a}
td.err{white-space:normal;max-width:60rem;color:#a33}
pre{background:#f6f7f9;padding:.5rem;overflow-x:auto;font-size:12px;white-space:pre-wrap}
pre.config{max-height:30rem}
table.plain td{white-space:normal}
"""

# click a header to sort by that column (numbers by data-v; n/a always last); the first click puts
# the best first (descending, or ascending for lower-is-better metrics), the next one reverses
JS = """
(function () {
  function key(cell) {
    if (!cell) return {n: true};
    var v = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
    if (v === "") return {n: true};
    var x = Number(v);
    return isNaN(x) ? {s: v.toLowerCase()} : {x: x};
  }
  function cmp(a, b, dir) {
    if (a.n || b.n) return (a.n ? 1 : 0) - (b.n ? 1 : 0);
    if (a.x !== undefined && b.x !== undefined) return dir * (a.x - b.x);
    var s = String(a.x !== undefined ? a.x : a.s), t = String(b.x !== undefined ? b.x : b.s);
    return dir * (s < t ? -1 : s > t ? 1 : 0);
  }
  function sortBy(table, th) {
    var col = Number(th.getAttribute("data-col"));
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var numeric = rows.some(function (r) { return key(r.cells[col]).x !== undefined; });
    var first = numeric && th.getAttribute("data-hib") !== "0" ? "descending" : "ascending";
    var cur = th.getAttribute("aria-sort");
    var next = cur ? (cur === "ascending" ? "descending" : "ascending") : first;
    var dir = next === "ascending" ? 1 : -1;
    rows.sort(function (a, b) { return cmp(key(a.cells[col]), key(b.cells[col]), dir); });
    table.querySelectorAll("th[aria-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", next);
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th[data-col]").forEach(function (th) {
      th.title = (th.title ? th.title + " — " : "") + "click to sort";
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortBy(table, th); });
    });
    table.setAttribute("data-sort-ready", "1");
  });
  // wide figures are shrunk to the page: a click shows one at full size (scroll sideways)
  document.querySelectorAll("figure img").forEach(function (img) {
    img.title = "click to zoom";
    img.addEventListener("click", function () { img.classList.toggle("full"); });
  });
})();
"""

LEGEND = (
    '<div class="legend"><b>Legend.</b> '
    '<span class="k">method</span> a method under test; '
    '<span class="k control">control</span> positive / negative control: they anchor every score at 1 and 0; '
    '<span class="k reference">reference</span> a simple baseline (group_mean, additive_shift, no_change) '
    "that a useful method should beat.<br>"
    "† label-lookup embeddings (identical within a label): not ranked on disentanglement. "
    "* one shared latent for every concept: the probe measures informativeness, not disentanglement. "
    "↑/↓: higher / lower is better. Values: mean <span class=\"sd\">± sd</span> over folds; n/a: the method "
    "cannot produce that output. Click a column header to sort.</div>"
)


def write_index_html(out_dir: str | Path, run_dir: str | Path, tidy: pd.DataFrame, summary: pd.DataFrame,
                     score_table: pd.DataFrame, status: pd.DataFrame,
                     figures: Mapping[str, Path] | None = None,
                     records: Iterable[Mapping[str, Any]] | None = None,
                     verdict: pd.DataFrame | None = None) -> Path:
    """Write ``out_dir/index.html``: heatmaps, per dataset and setting the scores, the held-out verdict
    against the references (``verdict``: :func:`~causcell_bench.leaderboard.verdict.heldout_verdict`),
    every metric and bar charts, the cross-dataset overview, violations, failed cells and provenance.
    Returns its path."""
    verdicts = {(d, s): (t, note) for d, s, t, note in verdict_tables(verdict)} if verdict is not None else {}
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    figures = dict(figures or {})
    ids = _Ids()
    datasets = list(dict.fromkeys([*summary.get("dataset", []), *score_table.get("dataset", [])]))
    all_methods = [*summary.get("method", []), *score_table.get("method", []),
                   *(status["method"].dropna() if status is not None and "method" in status else [])]
    kinds = method_kinds([score_table, summary, status], all_methods)
    toc: list[str] = []
    body: list[str] = []

    def section(title: str, content: str, level: int = 2) -> None:
        anchor = ids(title)
        toc.append(f'<li class="l{level}"><a href="#{anchor}">{_e(title)}</a></li>')
        body.append(f'<h{level} id="{anchor}">{_e(title)}</h{level}>{content}')

    section("Heatmaps", _heatmap_section(figures, datasets) + "<p class=\"note\">Rows: methods by overall score. "
            "Columns: the control-scaled overall score (its value, ± sd over folds where known, beside it) and the "
            "headline metrics, bars min-max normalised per column so that longer is better.</p>")
    if len(datasets) > 1 and not score_table.empty:
        section("Overview across datasets", _overview_section(score_table, kinds))
    emb = {}
    if "embedding" in summary.columns:
        emb = {str(m): str(e) for m, e in zip(summary["method"], summary["embedding"])}
    for dataset in datasets:
        dsum = summary[summary.dataset == dataset]
        section(f"Dataset {dataset}", "")
        for setting in dict.fromkeys(dsum["setting"]):
            block = dsum[dsum.setting == setting]
            sc = score_table[(score_table.dataset == dataset) & (score_table.setting == setting)]
            order = _order(sc, block["method"], kinds)
            parts = []
            if not sc.empty:
                parts.append("<h4>Scores</h4>" + _scores_table(sc, order, kinds))
            if (dataset, setting) in verdicts:
                table, basis = verdicts[(dataset, setting)]
                parts.append("<h4>Held-out verdict: R^2 of the held-out mean against the references</h4>"
                             + _generic_table(table, cls="sortable verdict")
                             + f'<p class="note">{_e(VERDICT_LEGEND)} {_e(basis)}</p>')
            parts.append("<h4>Every metric (mean ± sd over folds)</h4>" + _metric_table(block, order, kinds, emb))
            try:
                uri = bar_chart(tidy, dataset, setting, order, kinds)
            except Exception as e:  # a chart must not cost the reader the tables
                uri, parts = None, parts + [f'<p class="warn">Bar charts failed: {_e(type(e).__name__)}: {_e(e)}</p>']
            if uri:
                parts.append("<h4>Headline metrics per method</h4><figure>"
                             f'<img src="{uri}" alt="bar charts: {_e(dataset)} {_e(setting)}">'
                             "<figcaption>Bars: mean over folds; whiskers: ± 1 sd over folds; dots: the folds. "
                             "Grey bars: controls and references.</figcaption></figure>")
            section(f"{dataset} — {setting}", "".join(parts), level=3)
    # tables the leaderboard writes beside the report, shown when present
    for name, title, blurb, empty in (
        ("violations.csv", "Violations",
         "Scored values outside [negative control, positive control]: control scaling clips them.",
         "No value falls outside its controls."),
        ("degenerate.csv", "Degenerate metrics",
         "Metrics a cell could not measure on its data (NaN with a reason).", "None."),
    ):
        csv = out_dir / name
        if csv.is_file():
            try:
                df = pd.read_csv(csv)
            except (ValueError, pd.errors.EmptyDataError):
                df = pd.DataFrame()
            content = _generic_table(df) if not df.empty else f'<p class="ok">{_e(empty)}</p>'
            section(title, f'<p class="note">{_e(blurb)} ({_e(name)})</p>{content}')
    section("Failed cells", _failed_section(status))
    section("Provenance", _provenance_section(run_dir, status, records))

    n_ok = int((status["status"] == "ok").sum()) if status is not None and "status" in status else 0
    n_failed = int((status["status"] == "failed").sum()) if status is not None and "status" in status else 0
    n_methods = len({m for m in all_methods})
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    title = f"causcell-bench report — {run_dir.resolve().name}"
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f'<p class="meta">{len(datasets)} dataset(s): {_e(", ".join(map(str, datasets)))} · {n_methods} methods · '
        f"{n_ok} cells ok, {n_failed} failed · generated {_e(stamp)}</p>"
        f'<nav class="toc"><b>Contents</b><ul>{"".join(toc)}</ul></nav><br>{LEGEND}'
        f'{"".join(body)}<script>{JS}</script></body></html>\n'
    )
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    return path
