"""Experiment ``causal_consistency``: do counterfactuals move descendants as the causal DAG says?

The synthetic-data counterpart of Fig. 2b/c of Gao, Dong et al., "Causal
disentanglement for single-cell representations and controllable
counterfactual generation" (Nat Commun 2025), where CausCell and its no-DAG
ablation CausCell_IND were asked for counterfactuals under interventions on a
parent concept and the infection score of the generated cells was compared.
Here the truth is known: the ``synthetic`` SCM has age -> celltype <- domain,
and under do(age = a) a cell's TRUE counterfactual cell type is recomputed
with its own Gumbel noise (some cells change type).

For each value ``a`` of the intervened concept and each method:

- test cells of an ID fold whose concept value is not already ``a`` are
  intervened on; the method's counterfactuals are compared with the
  simulator's exact counterfactuals;
- causal consistency: a classifier of the descendant (PCA + logistic
  regression, fit on the real training cells, :func:`metrics.predict_labels`)
  labels the counterfactual cells; accuracy against the true counterfactual
  labels, over all intervened cells and over the cells whose type changes
  (where a model that ignores the DAG must fail). Two references bracket it:
  keeping every cell's type (what a model ignoring the DAG does at best) and
  the most probable counterfactual type given only the cell's observed labels
  under the exact SCM (:func:`datasets.counterfactual_label_posterior`): the
  Gumbel noise that decides WHICH cells change leaves no trace in expression,
  so no model can beat that reference except by chance (a generator that
  samples the type from that posterior, as one sampling exogenous noise may,
  is the third reference, scored by its expected accuracy);
- expression: effect PCC, per-cell PCC and MSE against the noiseless truth
  (:func:`metrics.score_counterfactual`);
- a marker-gene score of the descendant: the mean expression of the top
  marker genes of the cell type the SCM moves most cells into, per cell, for
  the observed cells, the true counterfactuals (counts sampled from the true
  counterfactual mean with each cell's library size and the gene
  dispersions, so they carry the same measurement noise as real cells) and
  each method's counterfactuals; shown as box plots like the paper's
  infection score.
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
    build_method,
    dense,
    make_config,
    marker_genes,
    resolve_methods,
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

NAME = "causal_consistency"
DEFAULT_METHODS = ("all",)  # CausCell, CausCell_IND and every other counterfactual-capable method
TRUTH = "true counterfactual"
NOOP = "keep factual type (no-op)"
POSTERIOR = "SCM posterior (noise unseen)"
POSTERIOR_SAMPLED = "SCM posterior, sampled"
OBSERVED = "observed"


@dataclasses.dataclass
class Config:
    """Options (``--set key=value``)."""

    n_cells: int = 3000
    n_genes: int = 300
    n_folds: int = 5
    fold: int = 0
    concept: str = "age"
    values: list[str] | None = None  # intervention values; default every value of the concept
    descendant: str = "celltype"
    n_markers: int = 20
    max_test_cells: int | None = None
    dag: str = "default"  # "none": the control where the DAG should not help
    # do / exogenous / both (DAG-aware methods with modes); None = the method's own. For a root concept
    # (age here) the two modes coincide: a root's z is its eps.
    mode: str | None = None


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    "paper": {"n_cells": 20000, "n_genes": 2000},
}


def sampled_truth(x_expected: np.ndarray, adata: AnnData, seed: int) -> np.ndarray:
    """Counts drawn around the true (noiseless) expression, then log1p(CP10k): a measured counterfactual.

    NB(mean = library * proportion, dispersion theta_g) with the cell's own simulated
    library size and the simulator's gene dispersions (``var['dispersion']``).
    """
    rng = np.random.default_rng([seed, 7])
    prop = np.expm1(x_expected.astype(np.float64)) / 1e4
    lib = adata.obs["library_size"].to_numpy(np.float64)[:, None]
    theta = adata.var["dispersion"].to_numpy(np.float64)[None, :]
    mean = lib * prop
    counts = rng.poisson(mean * rng.gamma(theta, 1.0 / theta, size=mean.shape))
    tot = counts.sum(1, keepdims=True)
    return np.log1p(counts / np.maximum(tot, 1) * 1e4).astype(np.float32)


def _accuracies(pred: np.ndarray, true_cf: np.ndarray, changed: np.ndarray,
                hit: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy over all cells, over cells whose true label changes / stays, and their mean (balanced).

    ``hit``: per-cell probability of a correct label (a stochastic predictor's expected accuracy) instead
    of ``pred == true_cf``."""
    hit = (pred == true_cf) if hit is None else hit
    acc_c = float(hit[changed].mean()) if changed.any() else float("nan")
    acc_u = float(hit[~changed].mean()) if (~changed).any() else float("nan")
    return {"causal_acc": float(hit.mean()), "causal_acc_changed": acc_c, "causal_acc_unchanged": acc_u,
            "causal_bacc": float(np.nanmean([acc_c, acc_u]))}


def _target_type(factual: np.ndarray, cf: np.ndarray, types: list[str]) -> str:
    """The type with the largest net gain of cells under the intervention (first type when nothing moves)."""
    gain = [int((cf == t).sum()) - int((factual == t).sum()) for t in types]
    return types[int(np.argmax(gain))]


@dataclasses.dataclass
class Data:
    """The cells of the experiment: an ID fold of the simulator, preprocessed, and what is intervened on."""

    train: AnnData
    test: AnnData
    spec: DatasetSpec
    values: list[str]  # the values of ``concept`` that are set, one intervention each
    types: list[str]  # the values of ``descendant``


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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()

    with timer("data_s"):
        data = load_data(cfg, seed)
    with timer("truth_s"):
        truth = {v: true_effects(cfg, data, v, seed) for v in data.values}
    preds, fit_info = generate_all(cfg, data, truth, names, preset, device, params, seed, timer)
    with timer("classify_s"):
        pred_of = classify(cfg, data, truth, preds, seed)
    table, summary, scores = score(cfg, data, truth, preds, pred_of)
    figures = plot(cfg, data, out, truth, scores, table, list(preds))

    config = {"experiment": NAME, "preset": preset, "seed": seed, "methods": names, "device": device,
              "params": params or {}, "rows": list(preds), **dataclasses.asdict(cfg)}
    blocks = report_blocks(cfg, data, summary, table, figures, list(preds), timer)
    report = write_report(out, "Causal consistency of counterfactuals (paper Fig. 2b/c, synthetic SCM)", blocks, config)
    results = {
        "experiment": NAME, "config": config, "summary": summary, "per_intervention": table,
        "targets": {v: truth[v]["target"] for v in data.values}, "fit": fit_info, "timings": timer.times,
        "figures": list(figures), "report": str(report),
    }
    write_results(out, results)
    return results


def load_data(cfg: Config, seed: int) -> Data:
    """Simulate, split (ID fold ``cfg.fold``), preprocess, and check the concept, values and mode asked for."""
    from causcell_bench.datasets import load, make_splits, preprocess

    adata, spec = load("synthetic", n_cells=cfg.n_cells, n_genes=cfg.n_genes, seed=seed, dag=cfg.dag)
    for c in (cfg.concept, cfg.descendant):
        if c not in spec.concepts:
            raise BenchError(f"{c!r} is not a concept of the synthetic data; concepts are {spec.concepts}")
    split = make_splits(adata, spec, "ID", n_folds=cfg.n_folds, seed=seed)[cfg.fold]
    train, test = preprocess(adata[split.train_idx], adata[split.test_idx], spec)
    if cfg.max_test_cells and test.n_obs > cfg.max_test_cells:
        keep = np.sort(np.random.default_rng(seed).choice(test.n_obs, cfg.max_test_cells, replace=False))
        test = test[keep].copy()
    values = [str(v) for v in (cfg.values or list(train.obs[cfg.concept].cat.categories))]
    known = [str(v) for v in train.obs[cfg.concept].cat.categories]
    bad = [v for v in values if v not in known]
    if bad:
        raise BenchError(f"values {bad} are not values of {cfg.concept}; known: {known}")
    if cfg.mode not in (None, "do", "exogenous", "both"):
        raise BenchError(f"mode={cfg.mode!r}: choose do, exogenous, both or null")
    types = [str(t) for t in train.obs[cfg.descendant].cat.categories]
    return Data(train, test, spec, values, types)


def true_effects(cfg: Config, data: Data, v: str, seed: int) -> dict[str, Any]:
    """The truth under do(concept = v) for the test cells not already at v: the simulator's exact
    counterfactual (labels and noiseless expression), the SCM posterior of the descendant, the cell
    type most cells move into and its marker genes, and the observed and sampled expression."""
    from causcell_bench.datasets import counterfactual_label_posterior, true_counterfactual

    idx = np.flatnonzero(data.test.obs[cfg.concept].astype(str).to_numpy() != v)
    sub = data.test[idx]
    obs_cf, x_cf, x_f = true_counterfactual(sub, {cfg.concept: v})
    fact = sub.obs[cfg.descendant].astype(str).to_numpy()
    cf_t = obs_cf[cfg.descendant].astype(str).to_numpy()
    target = _target_type(fact, cf_t, data.types)
    post = counterfactual_label_posterior(sub, {cfg.concept: v}, concept=cfg.descendant, seed=seed)
    train = data.train
    return {
        "idx": idx, "x_cf": x_cf, "x_f": x_f, "factual_type": fact, "cf_type": cf_t,
        "changed": fact != cf_t, "target": target, "posterior_type": post.idxmax(axis=1).to_numpy(str),
        "posterior_hit": post.to_numpy()[np.arange(len(cf_t)), post.columns.get_indexer(cf_t)],
        "markers": marker_genes(train.X, train.obs[cfg.descendant].to_numpy(), target, cfg.n_markers),
        "observed": dense(sub.X), "sampled": sampled_truth(x_cf, sub, seed),
    }


def generate_all(
    cfg: Config, data: Data, truth: dict[str, dict[str, Any]], names: list[str], preset: str, device: str,
    params: dict[str, dict[str, Any]] | None, seed: int, timer: Timer,
) -> tuple[dict[str, dict[str, dict[str, np.ndarray]]], dict[str, dict[str, Any]]]:
    """Fit each method and generate every intervention's counterfactuals and factual predictions:
    ({row label: {value: {"cf", "factual"}}}, {row label: mode and timings}). A DAG-aware method with
    modes is asked in both modes under ``mode=both`` (one row each, no refit)."""
    from causcell_bench.counterfactual import generate

    preds: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    fit_info: dict[str, dict[str, Any]] = {}
    test = data.test
    for name in names:
        m = build_method(name, preset, device, params)
        t = Timer()
        with t("fit_s"):
            m.fit(data.train, data.spec, seed=seed)
        own_modes = "mode" in getattr(m, "params", {})
        if own_modes and cfg.mode == "both" and m.capabilities.uses_dag:
            modes: list[str | None] = ["do", "exogenous"]
        else:
            modes = [cfg.mode if own_modes and cfg.mode != "both" else None]
        with t("generate_s"):
            # the factual prediction of the same cells with the same seed: for a seeded sampler the
            # generation noise then cancels in the predicted effect (cf - factual)
            factual = {v: generate(m, test[truth[v]["idx"]], None, seed, None) for v in data.values}
            for md in modes:
                label = name if len(modes) == 1 else f"{name} ({md})"
                preds[label] = {
                    v: {"cf": generate(m, test[truth[v]["idx"]], {cfg.concept: v}, seed, md), "factual": factual[v]}
                    for v in data.values
                }
                fit_info[label] = {"mode": md or str(getattr(m, "params", {}).get("mode", "n/a"))}
        for label in fit_info:
            if label == name or label.startswith(f"{name} ("):
                fit_info[label].update(t.times)
        timer.times[f"{name}_s"] = round(sum(t.times.values()), 3)
    return preds, fit_info


def classify(
    cfg: Config, data: Data, truth: dict[str, dict[str, Any]], preds: dict[str, dict[str, dict[str, np.ndarray]]],
    seed: int,
) -> dict[tuple[str, str], np.ndarray]:
    """The descendant label of every matrix (observed, sampled truth, each row's counterfactuals), per
    (row, value), read by one classifier of the real training cells fitted once."""
    from causcell_bench.metrics import predict_labels

    blocks: list[np.ndarray] = []
    keys: list[tuple[str, str]] = []
    for v in data.values:
        for key, x in [(OBSERVED, truth[v]["observed"]), (TRUTH, truth[v]["sampled"])] + [
            (n, preds[n][v]["cf"]) for n in preds
        ]:
            blocks.append(x)
            keys.append((key, v))
    train = data.train
    labels = predict_labels(train.X, train.obs[cfg.descendant].astype(str).to_numpy(), np.vstack(blocks), seed=seed)
    pred_of: dict[tuple[str, str], np.ndarray] = {}
    start = 0
    for key, x in zip(keys, blocks):
        pred_of[key] = labels[start:start + x.shape[0]]
        start += x.shape[0]
    return pred_of


def score(
    cfg: Config, data: Data, truth: dict[str, dict[str, Any]], preds: dict[str, dict[str, dict[str, np.ndarray]]],
    pred_of: dict[tuple[str, str], np.ndarray],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """(per-intervention table, its mean per row, per-cell marker scores per value and row): the
    references (no-op, SCM posterior, sampled posterior, truth) and every method."""
    from causcell_bench.metrics import score_counterfactual

    rows = []
    scores: dict[str, dict[str, np.ndarray]] = {}
    for v in data.values:
        tv = truth[v]
        mk = tv["markers"]
        true_score = tv["x_cf"][:, mk].mean(1)
        obs_score = tv["observed"][:, mk].mean(1)
        scores[v] = {OBSERVED: obs_score, TRUTH: tv["sampled"][:, mk].mean(1)}
        obs_pred = pred_of[(OBSERVED, v)]
        base = {
            "intervention": f"{cfg.concept}={v}", "n_cells": int(tv["idx"].size), "n_changed": int(tv["changed"].sum()),
            "target_type": tv["target"], "true_flip_rate": float(tv["changed"].mean()),
        }
        # the no-op reference: every cell keeps its factual type
        rows.append({**base, "method": NOOP, **_accuracies(tv["factual_type"], tv["cf_type"], tv["changed"])})
        # the attainable ceiling: the exact SCM, the noise abducted from the observed labels only
        rows.append({**base, "method": POSTERIOR, **_accuracies(tv["posterior_type"], tv["cf_type"], tv["changed"]),
                     "pred_flip_rate": float(np.mean(tv["posterior_type"] != tv["factual_type"]))})
        # a generator that samples the counterfactual type from that posterior (as a sampler of exogenous
        # noise may): its expected accuracy
        rows.append({**base, "method": POSTERIOR_SAMPLED,
                     **_accuracies(tv["cf_type"], tv["cf_type"], tv["changed"], hit=tv["posterior_hit"])})
        for key in [TRUTH, *preds]:
            pl = pred_of[(key, v)]
            row = {**base, "method": key, **_accuracies(pl, tv["cf_type"], tv["changed"]),
                   "pred_flip_rate": float(np.mean(pl != obs_pred))}
            x = tv["sampled"] if key == TRUTH else preds[key][v]["cf"]
            s = x[:, mk].mean(1)
            scores[v][key] = s
            row["marker_shift"] = float(s.mean() - obs_score.mean())
            if key != TRUTH:
                sc = score_counterfactual(x, tv["x_cf"], preds[key][v]["factual"], tv["x_f"])
                row.update(effect_pcc=sc["effect_pcc"], cf_pcc=sc["cf_pcc"], cf_mse=sc["cf_mse"])
                varies = s.std() > 0 and true_score.std() > 0
                row["marker_r"] = float(np.corrcoef(s, true_score)[0, 1]) if varies else 0.0
            rows.append(row)
    table = pd.DataFrame(rows)
    cols = ["method", "intervention", "n_cells", "n_changed", "causal_acc", "causal_acc_changed",
            "causal_acc_unchanged", "causal_bacc", "true_flip_rate", "pred_flip_rate", "effect_pcc", "cf_pcc",
            "cf_mse", "marker_shift", "marker_r"]
    table = table[[c for c in cols if c in table.columns]]
    summary = (
        table.drop(columns=["intervention"]).groupby("method", sort=False).mean(numeric_only=True).reset_index()
    )
    return table, summary, scores


def plot(
    cfg: Config, data: Data, out: Path, truth: dict[str, dict[str, Any]], scores: dict[str, dict[str, np.ndarray]],
    table: pd.DataFrame, labels_run: list[str],
) -> tuple[str, str]:
    """The marker-score box plots and the accuracy bars; returns their file names."""
    values = data.values
    plt = pyplot()
    groups = [OBSERVED, TRUTH, *labels_run]
    fig, axes = plt.subplots(1, len(values), figsize=(3.2 + 1.1 * len(groups) * len(values), 4.2), squeeze=False)
    for ax, v in zip(axes[0], values):
        ax.boxplot([scores[v][g] for g in groups], showfliers=False)
        ax.set_xticks(range(1, len(groups) + 1), groups, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"do({cfg.concept}={v})\nmarkers of {truth[v]['target']}", fontsize=9)
        ax.set_ylabel("marker score (mean log1p CP10k)" if v == values[0] else "")
    fig.suptitle(f"{cfg.descendant} marker score of intervened test cells", fontsize=10, y=1.04)
    fig_box = save_figure(fig, out, "marker_score_boxplot.png")

    bar_methods = [TRUTH, POSTERIOR, POSTERIOR_SAMPLED, NOOP, *labels_run]
    width = 0.8 / len(bar_methods)
    fig, axes = plt.subplots(1, 2, figsize=(2.0 + 2.8 * len(values), 3.8), squeeze=False)
    panels = [("causal_acc_changed", "cells whose true type changes"), ("causal_bacc", "balanced (changed / kept)")]
    for ax, (col, what) in zip(axes[0], panels):
        for i, meth in enumerate(bar_methods):
            sel = table[table.method == meth].set_index("intervention")[col]
            ax.bar(np.arange(len(values)) + i * width, [sel[f"{cfg.concept}={v}"] for v in values], width, label=meth)
        ax.set_xticks(np.arange(len(values)) + 0.4 - width / 2, [f"{cfg.concept}={v}" for v in values])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{cfg.descendant} accuracy: {what}", fontsize=9)
    axes[0][1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig_bar = save_figure(fig, out, "causal_accuracy.png")
    return fig_box, fig_bar


def report_blocks(
    cfg: Config, data: Data, summary: pd.DataFrame, table: pd.DataFrame, figures: tuple[str, str],
    labels_run: list[str], timer: Timer,
) -> list[str]:
    """The report's text: the summary in words (each row, the references, CausCell vs CausCell_IND),
    the tables, the figures and the timings."""
    fig_box, fig_bar = figures
    train, test = data.train, data.test
    is_desc = cfg.descendant in data.spec.descendants(cfg.concept)
    by = summary.set_index("method")
    lines = []
    for n in labels_run:
        if n in by.index:
            lines.append(
                f"- **{n}**: {cfg.descendant} balanced accuracy {by.loc[n, 'causal_bacc']:.3f} "
                f"(cells whose true {cfg.descendant} changes: {by.loc[n, 'causal_acc_changed']:.3f}; cells whose "
                f"it keeps: {by.loc[n, 'causal_acc_unchanged']:.3f}; all: {by.loc[n, 'causal_acc']:.3f}); "
                f"effect PCC {by.loc[n, 'effect_pcc']:.3f}."
            )
    lines.append(
        f"- References (balanced accuracy): keeping every cell's factual type (a model that ignores the DAG, done "
        f"perfectly) {by.loc[NOOP, 'causal_bacc']:.3f} (0 on changed cells, {by.loc[NOOP, 'causal_acc']:.3f} over "
        f"all); the exact SCM with each cell's noise abducted from its observed labels, {POSTERIOR}, "
        f"{by.loc[POSTERIOR, 'causal_bacc']:.3f} ({by.loc[POSTERIOR, 'causal_acc_changed']:.3f} on changed cells; "
        "the attainable ceiling: which cells change is decided by noise that leaves no trace in expression); "
        f"sampling the type from that posterior instead, {by.loc[POSTERIOR_SAMPLED, 'causal_bacc']:.3f} in "
        f"expectation ({by.loc[POSTERIOR_SAMPLED, 'causal_acc_changed']:.3f} on changed cells); the "
        f"classifier on sampled true counterfactuals {by.loc[TRUTH, 'causal_bacc']:.3f} (stored noise: unattainable)."
    )
    gap = by.loc[POSTERIOR, "causal_bacc"] - by.loc[NOOP, "causal_bacc"]
    if "CausCell_IND" in by.index:
        ind = by.loc["CausCell_IND"]
        smp = by.loc[POSTERIOR_SAMPLED]
        for n in [x for x in labels_run if x == "CausCell" or x.startswith("CausCell (")]:
            r = by.loc[n]
            d_b = r["causal_bacc"] - ind["causal_bacc"]
            d_c = r["causal_acc_changed"] - ind["causal_acc_changed"]
            # the DAG's job: move the right cells (changed-cell accuracy) without breaking the others (balanced)
            verdict = ("the DAG helps here" if d_c > 0.05 and d_b > 0.0
                       else "it moves more cells right but breaks more kept ones" if d_c > 0.05
                       else "no clear benefit of the DAG in this run")
            share = r["causal_acc_changed"] / smp["causal_acc_changed"] if smp["causal_acc_changed"] > 0 else np.nan
            closed = (r["causal_bacc"] - by.loc[NOOP, "causal_bacc"]) / gap if gap > 0 else float("nan")
            lines.append(
                f"- {n} vs CausCell_IND: changed cells {d_c:+.3f}, balanced accuracy {d_b:+.3f} ({verdict}). On "
                f"changed cells {n} reaches {share:.0%} of what sampling from the exact SCM posterior reaches; by "
                f"balanced accuracy it closes {closed:.0%} of the gap between the no-op and the posterior's mode."
            )
    blocks = [
        "The synthetic SCM (age -> celltype <- domain; "
        f"DAG `{cfg.dag}`) is intervened on with do({cfg.concept} = a) for every test cell of ID fold {cfg.fold} "
        f"not already at a ({test.n_obs} test cells, {train.n_obs} training cells, {train.n_vars} genes). "
        f"The descendant {cfg.descendant} of each counterfactual is read by a PCA + logistic-regression classifier "
        "trained on the real training cells and compared with the simulator's exact counterfactual label. "
        + ("" if is_desc else f"Note: {cfg.descendant} is NOT a descendant of {cfg.concept} in this DAG, so its true "
           "label never changes."),
        "## Summary (mean over interventions)\n\n" + "\n".join(lines),
        markdown_table(summary),
        ("## Per intervention\n\n`causal_acc`: classifier label of the counterfactual == true counterfactual label; "
        "`_changed` / `_unchanged`: only cells whose true label changes / stays; `causal_bacc`: the mean of those two "
        "(0.5 for a perfect no-op; random cells score their type frequencies); `true_flip_rate` / `pred_flip_rate`: share of cells whose "
        "(true / classifier-read) type differs from the classifier's reading of the observed cell; `effect_pcc`, "
        "`cf_pcc`, `cf_mse`: against the noiseless truth; `marker_shift`: mean marker score minus that of the "
        "observed cells; `marker_r`: per-cell correlation of the marker score with the noiseless truth's."),
        markdown_table(table),
        "## Figures",
        figure_link(fig_box, "Marker-gene score of the cell type each intervention moves cells into: observed cells, "
                    "true counterfactuals (measurement noise sampled), and each method's counterfactuals."),
        figure_link(fig_bar, f"{cfg.descendant} accuracy of the counterfactuals: on cells whose true type changes, "
                    "and balanced over changed and kept cells."),
        "## Timings (s; shared CPU, indicative only)\n\n" + ", ".join(f"{k} {v:.1f}" for k, v in timer.times.items()),
    ]
    return blocks
