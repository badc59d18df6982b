"""Experiment ``small_sample_trends``: can counterfactuals recover age trends that a small sample hides?

The synthetic-data counterpart of Fig. 2d/e of Gao, Dong et al., "Causal
disentanglement for single-cell representations and controllable
counterfactual generation" (Nat Commun 2025): with only 2 mice per age the
known age-trend genes of a cell type were no longer seen, but CausCell,
trained on that small set, generated old counterfactuals of young cells in
which 6 of 9 trends reappeared.

Here the ``synthetic`` SCM records its age-trend genes (an age x celltype
interaction: genes that rise or fall with age in ONE cell type; see
:func:`datasets.age_trend_genes`), so the truth is known:

1. simulate; pick a cell type (default: the one with most cells at both the
   youngest and oldest age); keep only ``n_per_age`` cells of it per age plus
   the cells of the other types; train each method on that;
2. generate old counterfactuals of the young cells of that type
   (do(age = oldest); with ``hold_celltype`` also do(celltype = itself), which
   keeps the cell's own cell-type representation, so the question is "the same
   cell, older"), ``n_cf_per_cell`` per cell;
3. test every gene (two-sided Mann-Whitney U, Benjamini-Hochberg across
   genes, q < alpha) in: the full data (all held-back cells of the type, old
   vs young: what a large study sees), the subsample (old vs young real
   cells), the counterfactuals vs the young real cells (the paper's
   analysis), and the counterfactuals vs the method's own reconstructions of
   the young cells (generated vs generated, which cancels generation
   artefacts). Paired Wilcoxon signed-rank results (counterfactual vs its
   source cell) are reported too;
4. count trend genes found with the right direction, and significant genes
   whose exact mean change (the simulator's counterfactual of the same young
   cells, in log1p CP10k) is negligible (spurious calls);
5. independent of any test: compare the model's predicted mean change per
   gene (counterfactual minus the same-seed reconstruction) with the exact
   one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from causcell_bench.errors import BenchError
from causcell_bench.experiments.common import (
    Timer,
    bh,
    build_method,
    dense,
    make_config,
    rank_sum_test,
    resolve_methods,
    signed_rank_test,
)
from causcell_bench.experiments.report import (
    figure_link,
    markdown_table,
    pyplot,
    save_figure,
    write_report,
    write_results,
)

if TYPE_CHECKING:
    from causcell_bench.datasets.spec import DatasetSpec

NAME = "small_sample_trends"
DEFAULT_METHODS = ("CausCell",)


@dataclasses.dataclass
class Config:
    """Options (``--set key=value``)."""

    n_cells: int = 3000
    n_genes: int = 300
    n_trend_genes: int = 10  # age-trend genes per cell type in the simulator
    n_per_age: int = 15  # cells of the chosen type kept per age group
    target_celltype: str | None = None
    young: str | None = None  # default: first age value
    old: str | None = None  # default: last age value
    n_other: int | None = None  # cells of the other types kept (default all)
    hold_celltype: bool = True
    n_cf_per_cell: int = 1  # counterfactuals per young cell (> 1 = augmentation)
    alpha: float = 0.05
    min_effect: float = 0.1  # true mean change (log1p CP10k) below which a significant gene is spurious
    mode: str | None = None


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    "paper": {"n_cells": 20000, "n_genes": 2000},
}


def _count(q: np.ndarray, diff: np.ndarray, alpha: float, trend_idx: np.ndarray, trend_dir: np.ndarray,
           effect: np.ndarray, min_effect: float) -> dict[str, int]:
    """Trend genes found (right / wrong direction) and significant genes with a real vs negligible true change."""
    sig = q < alpha
    real = np.abs(effect) >= min_effect
    return {
        "trend_right": int((sig[trend_idx] & (np.sign(diff[trend_idx]) == trend_dir)).sum()),
        "trend_wrong": int((sig[trend_idx] & (np.sign(diff[trend_idx]) != trend_dir)).sum()),
        "n_trend": int(trend_idx.size),
        "significant": int(sig.sum()),
        "changed_right": int((sig & real & (np.sign(diff) == np.sign(effect))).sum()),
        "n_changed": int(real.sum()),
        "negligible_sig": int((sig & ~real).sum()),
    }


@dataclasses.dataclass
class Data:
    """The simulated cells, the cell type and ages compared, and the small training set."""

    full: AnnData
    spec: DatasetSpec
    target: str  # the cell type whose age trends are sought
    young: str
    old: str
    train: AnnData  # n_per_age cells of ``target`` per age plus the other types' cells, preprocessed
    n_others: int  # cells of the other types in ``train``
    young_cells: AnnData  # the young ``target`` cells of ``train``: the ones intervened on
    young_real: np.ndarray
    old_real: np.ndarray
    ref_young: np.ndarray  # the held-back ``target`` cells: what a large study sees
    ref_old: np.ndarray


@dataclasses.dataclass
class Truth:
    """The simulator's recorded age-trend genes of the target type and the exact change of the young cells."""

    genes: list[str]
    trend_idx: np.ndarray
    trend_dir: np.ndarray  # +1 rises with age, -1 falls
    do: dict[str, str]
    effect: np.ndarray  # exact mean change per gene under ``do``, log1p(CP10k)


class Tests:
    """The rows of the counts table and the per-gene q values of the trend genes, one analysis at a time."""

    def __init__(self, cfg: Config, truth: Truth) -> None:
        self.cfg, self.truth = cfg, truth
        self.rows: list[dict[str, Any]] = []
        self.per_gene: dict[str, np.ndarray] = {}

    def add(self, analysis: str, method: str, n_a: int, n_b: int, p: np.ndarray, diff: np.ndarray) -> None:
        """Record one analysis: BH across genes, then the counts of :func:`_count`."""
        t, q = self.truth, bh(p)
        self.rows.append({"analysis": analysis, "method": method, "n_a": n_a, "n_b": n_b,
                          **_count(q, diff, self.cfg.alpha, t.trend_idx, t.trend_dir, t.effect, self.cfg.min_effect)})
        self.per_gene[f"q {analysis}" + ("" if method == "-" else f" [{method}]")] = q[t.trend_idx]


def run(
    out: str | Path,
    *,
    preset: str = "quick",
    seed: int = 0,
    methods: list[str] | None = None,
    device: str = "auto",
    params: dict[str, dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the experiment; writes ``out/report.md``, ``out/results.json`` and figures. Returns the results."""
    cfg = make_config(Config, PRESETS, preset, options)
    names = resolve_methods(methods, DEFAULT_METHODS)
    if cfg.n_per_age < 3:
        raise BenchError(f"n_per_age={cfg.n_per_age}: keep at least 3 cells per age group")
    if cfg.n_cf_per_cell < 1:
        raise BenchError(f"n_cf_per_cell={cfg.n_cf_per_cell}: generate at least 1 counterfactual per cell")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()

    data = load_data(cfg, seed, timer)
    truth = true_trends(cfg, data)
    tests = Tests(cfg, truth)
    with timer("tests_s"):
        tests.add("full data: old vs young (real)", "-", data.ref_old.shape[0], data.ref_young.shape[0],
                  *rank_sum_test(data.ref_old, data.ref_young))
        tests.add("subsample: old vs young (real)", "-", data.old_real.shape[0], data.young_real.shape[0],
                  *rank_sum_test(data.old_real, data.young_real))
    cf_of, change_of, fit_info, diag = counterfactual_tests(cfg, data, truth, tests, names, preset, device, params,
                                                            seed, timer)
    table = pd.DataFrame(tests.rows)
    diag_table = pd.DataFrame(diag)
    figures = plot(cfg, data, truth, out, table, cf_of[names[0]], names[0])

    gene_table = pd.DataFrame({"gene": [truth.genes[g] for g in truth.trend_idx], "direction": truth.trend_dir,
                               "true_change": truth.effect[truth.trend_idx]})
    for n in names:
        gene_table[f"predicted_change [{n}]"] = change_of[n][truth.trend_idx]
    for key, q in tests.per_gene.items():
        gene_table[key] = q
    blocks = report_blocks(cfg, data, truth, table, diag_table, gene_table, names, figures, timer)
    config = {"experiment": NAME, "preset": preset, "seed": seed, "methods": names, "device": device,
              "params": params or {}, "target_celltype_used": data.target, "intervention": truth.do,
              **dataclasses.asdict(cfg)}
    report = write_report(out, "Age trends from a small sample via counterfactuals (paper Fig. 2d/e, synthetic SCM)",
                          blocks, config)
    results = {
        "experiment": NAME, "config": config, "counts": table, "change": diag_table, "trend_genes": gene_table,
        "fit": fit_info,
        "timings": timer.times, "figures": list(figures), "report": str(report),
    }
    write_results(out, results)
    return results


def load_data(cfg: Config, seed: int, timer: Timer) -> Data:
    """Simulate (with age x celltype trends), choose the ages and the cell type, and keep ``n_per_age`` cells
    of that type per age plus the other types' cells for training; the rest of the type is the reference."""
    from causcell_bench.datasets import load, preprocess

    with timer("data_s"):
        full, spec = load("synthetic", n_cells=cfg.n_cells, n_genes=cfg.n_genes, seed=seed,
                          n_trend_genes=cfg.n_trend_genes, interaction=True)
    ages = [str(a) for a in full.obs["age"].cat.categories]
    types = [str(t) for t in full.obs["celltype"].cat.categories]
    young = cfg.young or ages[0]
    old = cfg.old or ages[-1]
    for v in (young, old):
        if v not in ages:
            raise BenchError(f"age {v!r} is not simulated; ages are {ages}")
    if young == old:
        raise BenchError("young and old must be different ages")
    age = full.obs["age"].astype(str).to_numpy()
    ctype = full.obs["celltype"].astype(str).to_numpy()
    if cfg.target_celltype is None:
        def n_at(t: str, a: str) -> int:
            return int(((ctype == t) & (age == a)).sum())

        target = max(types, key=lambda t: min(n_at(t, young), n_at(t, old)))
    else:
        target = str(cfg.target_celltype)
        if target not in types:
            raise BenchError(f"cell type {target!r} is not simulated; types are {types}")
    for v in (young, old):
        have = int(((ctype == target) & (age == v)).sum())
        if have < cfg.n_per_age + 3:
            raise BenchError(f"{target} has only {have} cells of {v}; need n_per_age + 3 = {cfg.n_per_age + 3} "
                             "(more n_cells, or a smaller n_per_age)")

    # the small training set
    rng = np.random.default_rng([seed, 11])
    small = []
    for v in ages:
        cand = np.flatnonzero((ctype == target) & (age == v))
        small.append(np.sort(rng.choice(cand, size=min(cfg.n_per_age, cand.size), replace=False)))
    small_idx = np.concatenate(small)
    others = np.flatnonzero(ctype != target)
    if cfg.n_other is not None and others.size > cfg.n_other:
        others = np.sort(rng.choice(others, size=int(cfg.n_other), replace=False))
    train_idx = np.sort(np.concatenate([small_idx, others]))
    held = np.setdiff1d(np.flatnonzero(ctype == target), small_idx)  # the "large study" reference
    with timer("preprocess_s"):
        train, ref = preprocess(full[train_idx], full[held], spec)
    t_age = train.obs["age"].astype(str).to_numpy()
    t_type = train.obs["celltype"].astype(str).to_numpy()
    young_cells = train[(t_type == target) & (t_age == young)].copy()
    r_age = ref.obs["age"].astype(str).to_numpy()
    return Data(
        full=full, spec=spec, target=target, young=young, old=old, train=train, n_others=int(others.size),
        young_cells=young_cells, young_real=dense(young_cells.X),
        old_real=dense(train[(t_type == target) & (t_age == old)].X),
        ref_young=dense(ref[r_age == young].X), ref_old=dense(ref[r_age == old].X),
    )


def true_trends(cfg: Config, data: Data) -> Truth:
    """The recorded trend genes of the target type, and the exact mean change of the young training cells
    under do(age = old) (and celltype held with ``hold_celltype``)."""
    from causcell_bench.datasets import age_trend_genes, true_counterfactual

    genes = [str(g) for g in data.full.var_names]
    trends = age_trend_genes(data.full)
    trends = trends[trends["celltype"].astype(str) == data.target]
    pos = {g: i for i, g in enumerate(genes)}
    trend_idx = np.array([pos[g] for g in trends["gene"].astype(str)], dtype=np.int64)
    trend_dir = trends["direction"].to_numpy(np.int64)
    do = {"age": data.old, **({"celltype": data.target} if cfg.hold_celltype else {})}
    _, x_cf_true, x_f_true = true_counterfactual(data.young_cells, do)
    # in log1p(CP10k), renormalisation included: what a test on measured cells can see
    effect = (x_cf_true - x_f_true).mean(0)
    return Truth(genes, trend_idx, trend_dir, do, effect)


def counterfactual_tests(
    cfg: Config, data: Data, truth: Truth, tests: Tests, names: list[str], preset: str, device: str,
    params: dict[str, dict[str, Any]] | None, seed: int, timer: Timer,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Fit each method, generate old counterfactuals of the young cells and test them (added to ``tests``):
    (counterfactuals, predicted mean change, fit info, per-method change diagnostics)."""
    from causcell_bench.counterfactual import generate

    cf_of: dict[str, np.ndarray] = {}
    change_of: dict[str, np.ndarray] = {}
    fit_info: dict[str, dict[str, Any]] = {}
    diag: list[dict[str, Any]] = []
    young_cells, young_real, effect = data.young_cells, data.young_real, truth.effect
    trend_idx, trend_dir = truth.trend_idx, truth.trend_dir
    reps = [seed + k for k in range(cfg.n_cf_per_cell)]
    for name in names:
        m = build_method(name, preset, device, params)
        t = Timer()
        with t("fit_s"):
            m.fit(data.train, data.spec, seed=seed)
        mode = cfg.mode if "mode" in getattr(m, "params", {}) else None
        with t("generate_s"):
            # k counterfactuals per young cell (different donors and generation noise), each with
            # the factual prediction made with the same seed, so that generation noise cancels
            cfs = [generate(m, young_cells, truth.do, s_, mode) for s_ in reps]
            recons = [generate(m, young_cells, None, s_, None) for s_ in reps]
        cf, recon = np.vstack(cfs), np.vstack(recons)
        cf_of[name] = cf
        change = (cf - recon).mean(0)  # the model's predicted mean change of these cells
        change_of[name] = change
        fit_info[name] = {**t.times, "mode": str(getattr(m, "params", {}).get("mode", "n/a"))}
        timer.times[f"{name}_s"] = round(sum(t.times.values()), 3)
        tests.add("counterfactual old vs young (real)", name, cf.shape[0], young_real.shape[0],
                  *rank_sum_test(cf, young_real))
        tests.add("counterfactual old vs reconstructed young", name, cf.shape[0], recon.shape[0],
                  *rank_sum_test(cf, recon))
        cf_mean = np.mean(cfs, axis=0)  # one profile per source cell for the paired test
        tests.add("paired: counterfactual vs its young source", name, cf_mean.shape[0], young_real.shape[0],
                  *signed_rank_test(cf_mean, young_real))
        varies = change.std() > 0
        diag.append({
            "method": name,
            "change_pcc_all_genes": float(np.corrcoef(change, effect)[0, 1]) if varies else 0.0,
            "trend_sign_agreement": float(np.mean(np.sign(change[trend_idx]) == trend_dir)),
            "trend_change_ratio": float(np.mean(change[trend_idx] * trend_dir)
                                        / np.mean(effect[trend_idx] * trend_dir)),
        })
    return cf_of, change_of, fit_info, diag


def plot(cfg: Config, data: Data, truth: Truth, out: Path, table: pd.DataFrame, cf: np.ndarray,
         first: str) -> tuple[str, str]:
    """The per-analysis counts and the trend genes' box plots (young, few old, old counterfactuals of
    method ``first``); returns their file names."""
    trend_idx, trend_dir, genes = truth.trend_idx, truth.trend_dir, truth.genes
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(table) + 1.2))
    labels = [f"{r.analysis}" + ("" if r.method == "-" else f" [{r.method}]") for r in table.itertuples()]
    y = np.arange(len(table))
    ax.barh(y - 0.2, table["trend_right"], 0.4, label="trend genes found (right direction)")
    ax.barh(y + 0.2, table["negligible_sig"], 0.4, label=f"significant genes with true |change| < {cfg.min_effect}")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(len(trend_idx), color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"genes (q < {cfg.alpha}); dashed: {len(trend_idx)} true trend genes of {data.target}")
    ax.legend(fontsize=7, loc="lower right")
    fig_counts = save_figure(fig, out, "trend_gene_counts.png")

    show = trend_idx[: min(10, trend_idx.size)]
    ncol = min(5, max(1, show.size))
    nrow = int(np.ceil(show.size / ncol)) if show.size else 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.3 * ncol, 2.9 * nrow), squeeze=False)
    groups = [("young", data.young_real), ("old\n(few)", data.old_real), ("old\n(cf)", cf)]
    for k, ax in enumerate(axes.ravel()):
        if k >= show.size:
            ax.axis("off")
            continue
        g = show[k]
        ax.boxplot([x[:, g] for _, x in groups], showfliers=False)
        ax.set_xticks(range(1, len(groups) + 1), [lab for lab, _ in groups], fontsize=7)
        arrow = "up" if trend_dir[k] > 0 else "down"
        ax.set_title(f"{genes[g]} ({arrow} with age)", fontsize=8)
    fig.suptitle(f"Age-trend genes of {data.target}: young ({data.young}) cells, the few old ({data.old}) cells, "
                 f"and old counterfactuals of the young cells ({first})", fontsize=9)
    fig.tight_layout()
    fig_genes = save_figure(fig, out, "trend_gene_boxplots.png")
    return fig_counts, fig_genes


def report_blocks(
    cfg: Config, data: Data, truth: Truth, table: pd.DataFrame, diag_table: pd.DataFrame, gene_table: pd.DataFrame,
    names: list[str], figures: tuple[str, str], timer: Timer,
) -> list[str]:
    """The report's text: the setup, the counts in words, the tables, the figures and the timings."""
    fig_counts, fig_genes = figures
    target, full, do, trend_idx = data.target, data.full, truth.do, truth.trend_idx
    first = names[0]

    def hits(analysis: str, method: str = "-") -> str:
        r = table[(table.analysis == analysis) & (table.method == method)].iloc[0]
        return f"{r.trend_right}/{r.n_trend} trend genes ({r.negligible_sig} negligible-change genes called)"

    lines = [
        (f"- Full data ({data.ref_old.shape[0]} old vs {data.ref_young.shape[0]} young {target} cells): "
        f"{hits('full data: old vs young (real)')}."),
        (f"- Subsample ({data.old_real.shape[0]} old vs {data.young_real.shape[0]} young): "
        f"{hits('subsample: old vs young (real)')}."),
    ]
    for n in names:
        lines.append(
            f"- {n} counterfactuals vs young real cells: {hits('counterfactual old vs young (real)', n)}; "
            f"vs its own reconstructions: {hits('counterfactual old vs reconstructed young', n)}; "
            f"paired: {hits('paired: counterfactual vs its young source', n)}."
        )
    blocks = [
        (f"Synthetic SCM with an age x celltype interaction ({full.n_obs} cells x {full.n_vars} genes, "
        f"{len(trend_idx)} recorded age-trend genes in {target}). Training set: {cfg.n_per_age} {target} cells per age "
        f"plus {data.n_others} cells of other types. "
        f"Counterfactuals: do({', '.join(f'{k}={v}' for k, v in do.items())}) "
        f"of the {data.young_cells.n_obs} young {target} training cells, {cfg.n_cf_per_cell} per cell "
        "(more than one per cell is augmentation: the extra cells are not independent evidence). "
        f"Tests: two-sided Mann-Whitney U per gene (paired: Wilcoxon signed-rank on the per-cell mean "
        f"counterfactual), Benjamini-Hochberg over all {full.n_vars} genes, q < {cfg.alpha}. A trend gene counts "
        "when significant with the recorded direction. `n_changed`: genes whose exact mean change in these young "
        f"cells (simulator, log1p CP10k) is at least {cfg.min_effect}; `changed_right`: those found with the right "
        f"sign; `negligible_sig`: significant genes whose true change is below {cfg.min_effect} (spurious calls; "
        "in the large full-data test also tiny real shifts from renormalisation)."),
        "## Counts\n\n" + "\n".join(lines),
        markdown_table(table),
        ("## Does the model predict the right change?\n\n`change_pcc_all_genes`: Pearson r over genes between the "
        "predicted mean change (counterfactual minus the same-seed reconstruction of each young cell) and the "
        "exact mean change; `trend_sign_agreement`: share of trend genes whose predicted change has the recorded "
        "sign; `trend_change_ratio`: predicted / true change along the trend directions (1 = right size)."),
        markdown_table(diag_table),
        "## Trend genes (true and predicted mean change; BH q per analysis)",
        markdown_table(gene_table, digits=3),
        "## Figures",
        figure_link(fig_counts, "Trend genes recovered, and negligible-change genes called, per analysis."),
        figure_link(fig_genes, f"Expression of the trend genes: young real, old real (subsample) and old "
                    f"counterfactuals ({first})."),
        "## Timings (s; shared CPU, indicative only)\n\n" + ", ".join(f"{k} {v:.1f}" for k, v in timer.times.items()),
    ]
    return blocks
