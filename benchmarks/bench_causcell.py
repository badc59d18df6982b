"""Benchmark of CausCell's quick preset on the `synthetic` SCM dataset.

Measures, on one ID fold of 3,000 cells x 500 genes:

- training time of CausCell, CausCell_IND and scVI;
- disentanglement: per-concept probe accuracy (own concept and off-diagonal)
  of CausCell's per-concept embeddings vs scVI's shared latent;
- reconstruction: mean per-cell PCC of DDIM-50 vs ancestral-1000 sampling and
  their wall times (target: DDIM >= 15x faster, PCC within 0.02);
- counterfactuals do(age = a) for every age value, CausCell vs CausCell_IND,
  against the simulator's exact counterfactuals: counterfactual PCC, effect
  PCC, and causal consistency of the descendant `celltype` (a classifier of
  real cells on the generated cells vs the true counterfactual labels; also
  restricted to the cells whose true cell type changes).

Usage::

    python benchmarks/bench_causcell.py --out bench_out/causcell.json
    python benchmarks/bench_causcell.py --params '{"n_steps": 500}' --skip-scvi --skip-ancestral
    python benchmarks/bench_causcell.py --ablation   # + CausCell with the paper's objective
    python benchmarks/bench_causcell.py --ablate --n-cells 1500 --n-genes 250 --steps 1500 --out bench_out/ablate.json

``--ablate`` starts from the ``paper`` preset (the authors' choice for every switch, trained for
``--steps`` updates) and turns each of our deviations on alone; see :func:`ablate`.

Timings are wall-clock on whatever machine runs this; on a shared machine
they are inflated by other load.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causcell_bench.datasets import load, make_splits, preprocess, true_counterfactual
from causcell_bench.methods.base import dense_rows
from causcell_bench.methods.causcell import CausCell, CausCellIND
from causcell_bench.metrics import (
    pearson_per_cell,
    predict_labels,
    realism_scores,
    score_counterfactual,
    score_disentanglement,
)
from causcell_bench.metrics.expression import combination_labels, mean_level

ABLATION = "CausCell (paper objective)"


def _timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _timed_cpu(fn: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process): CPU time is what a loaded machine does not inflate."""
    c = time.process_time()
    out, wall = _timed(fn)
    return out, wall, time.process_time() - c


def _disent(method: Any, train: Any, test: Any, spec: Any) -> dict[str, float]:
    return score_disentanglement(
        method.embed(train), train.obs, method.embed(test), test.obs, spec.concepts, spec.fine_labels, seed=0
    )


def _counterfactual(method: Any, train: Any, test: Any, values: list[str], seed: int,
                    factual: np.ndarray | None = None) -> dict[str, Any]:
    """do(age = a) for each a: scores against the simulator's truth, averaged over a."""
    if factual is None:
        factual = method.generate(test, seed=seed)
    per: dict[str, dict[str, float]] = {}
    for a in values:
        obs_cf, x_cf, x_f = true_counterfactual(test, {"age": a})
        pred_cf = method.generate(test, do={"age": a}, seed=seed)
        pred_ct = predict_labels(train.X, train.obs["celltype"].astype(str).to_numpy(), pred_cf, seed=0)
        true_ct = obs_cf["celltype"].astype(str).to_numpy()
        s = score_counterfactual(pred_cf, x_cf, factual, x_f, descendant_labels={"celltype": (pred_ct, true_ct)})
        changed = true_ct != test.obs["celltype"].astype(str).to_numpy()
        s["causal_acc_changed:celltype"] = float(np.mean(pred_ct[changed] == true_ct[changed])) if changed.any() else float("nan")
        s["frac_celltype_changed"] = float(changed.mean())
        # latent-level check: does the model's own celltype predictor read the true cf label off z_cf?
        s["latent_causal_acc_changed:celltype"] = _latent_consistency(method, test, a, true_ct, changed, seed)
        per[a] = s
    keys = sorted({k for s in per.values() for k in s})
    mean = {k: float(np.nanmean([per[a][k] for a in values])) for k in keys}
    return {"mean": mean, "per_value": per}


def _latent_consistency(method: Any, test: Any, a: str, true_ct: np.ndarray, changed: np.ndarray, seed: int) -> float:
    if not changed.any():
        return float("nan")
    model = method.model_
    concepts = method.spec_.concepts
    eps, z = model.encode(test.X)
    k = concepts.index("age")
    code = method.categories_["age"].index(a)
    donors = model.draw_donors(k, code, test.n_obs, np.random.default_rng(seed), "do")
    own = method._codes(test, "age") == code
    donors[own] = z[own, k]
    z_cf = model.intervene(eps, {k: donors}, mode="do")
    pred = model.predict_labels(z_cf)[concepts.index("celltype")]
    names = np.asarray(method.categories_["celltype"])[pred]
    return float(np.mean(names[changed] == true_ct[changed]))


# Our deviations from the authors' model, each switched on alone from the ``paper`` preset (issue #14).
# Training variants retrain; inference variants reuse the base model with other generate/embed settings.
TRAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "loss balance (mean recon, rescaled weights, 10/3 weights)": {
        "recon_reduction": "mean", "combo_weights": "rescaled", "recon_weight": 10.0, "pred_weight": 3.0},
    "label heads on logits": {"label_head": "logits"},
    "separate u adversaries": {"independence": "adversary"},
    "KL in nats": {"kl_units": "nats"},
    "extra penalties (excl + exo)": {"excl_weight": 1.0, "exo_weight": 1.0},
    "narrow network (256 wide, 2 blocks, 4x32 heads)": {
        "hidden": 256, "n_blocks": 2, "head_dim": 32, "time_mlp_mult": 1, "qkv_bias": False},
    "lr 1e-3 + grad clip, batch 128": {"lr": 1e-3, "grad_clip": 1.0, "batch_size": 128, "grad_accum": 1},
}
INFERENCE_VARIANTS: dict[str, dict[str, Any]] = {
    "EMA weights at inference": {"ema_at_inference": True},
    "clamp x0 >= 0": {"clamp_x0": True},
    "posterior-mean encoding (1 pass)": {"encode": "mean"},
    "DDIM-50 sampler": {"sampler": "ddim", "ddim_steps": 50},
    "1 encoding pass instead of 10": {"n_encodings": 1},
    "do() with training donors": {"cf_mode": "do", "cf_donors": "train"},
}
# the base keeps an EMA from step 0 (the authors start at 2,000): it never touches the online
# weights the base model uses, so the base is unchanged and the EMA variant needs no retraining
_BASE_EXTRA = {"ema_start": 0, "ema_every": 1}


def _ablation_scores(m: Any, train: Any, test: Any, spec: Any, n_eval: int, seed: int) -> dict[str, float]:
    """PCC, probe accuracy, DAG-aware exclusivity, u leakage and do(age) scores against the truth."""
    ancestors = {c: [a for a in spec.concepts if c in spec.descendants(a)] for c in spec.concepts}
    d = score_disentanglement(m.embed(train), train.obs, m.embed(test), test.obs, spec.concepts,
                              spec.fine_labels, seed=0, ancestors=ancestors)
    sub = test[np.random.default_rng(seed).choice(test.n_obs, size=min(n_eval, test.n_obs), replace=False)].copy()
    real = dense_rows(sub.X, slice(None))
    gen = m.generate(sub, seed=seed)
    values = [str(v) for v in train.obs["age"].cat.categories]
    cf = _counterfactual(m, train, sub, values, seed, factual=gen)["mean"]
    # realism per concept combination: what averaging several samples costs (a blur has a small
    # variance and a large E-distance to the real spread); NaN when no combination has 10 cells
    real_dist = realism_scores(real, gen, combination_labels(sub.obs, spec.concepts), seed=seed)
    level = mean_level(real, gen)  # per-cell PCC is blind to the level (docs/causcell.md)
    return {
        "pcc": float(pearson_per_cell(real, gen).mean()),
        "mse": float(np.mean((gen - real) ** 2)),
        "edist_group": real_dist["edist_group"],
        "var_log2ratio": real_dist["var_log2ratio"],
        "frac_negative": float(np.mean(gen < 0)),
        "level_slope": level["slope"],
        "level_r2": level["r2"],
        "total_ratio": level["total_ratio"],
        "probe_acc": float(np.mean([d[f"acc:{c}"] for c in spec.concepts])),
        "exclusivity_dag": float(np.nanmean([d[f"exclusivity_dag:{c}"] for c in spec.concepts])),
        "u_leak": float(d.get("u_leak", float("nan"))),
        "cf_pcc": cf["cf_pcc"],
        "effect_pcc": cf["effect_pcc"],
        "causal_acc": cf["causal_acc:celltype"],
        "causal_acc_changed": cf["causal_acc_changed:celltype"],
    }


def ablate(args: argparse.Namespace) -> dict[str, Any]:
    """Our deviations from the authors' model, one at a time, from either end.

    ``--ablate-from paper`` (the default): from ``paper`` (trained ``args.steps`` updates), switch each
    of our choices on alone; also scores ``quick`` at the same number of updates (all our choices
    together). ``--ablate-from quick``: from ``quick`` (early stopping off, ``args.steps`` updates),
    switch each of our choices back to the authors' alone (quick minus one). Every variant is trained
    and scored with the same data, split and seed.
    """
    raw, spec = load("synthetic", n_cells=args.n_cells, n_genes=args.n_genes, seed=args.seed)
    split = make_splits(raw, spec, "ID", n_folds=5, seed=args.seed)[0]
    train, test = preprocess(*split.subset(raw), spec)
    steps = {"n_steps": args.steps}
    rows: dict[str, dict[str, Any]] = {}

    def run(name: str, preset: str, params: dict[str, Any], model: Any = None) -> Any:
        c0, t0 = time.process_time(), time.perf_counter()
        if model is None:
            model = CausCell(preset=preset, **{**steps, **params})
            model.fit(train, spec, seed=args.seed)
        fit_cpu = time.process_time() - c0
        scores = _ablation_scores(model, train, test, spec, args.n_eval, args.seed)
        rows[name] = {**scores, "train_cpu_s": fit_cpu, "total_cpu_s": time.process_time() - c0,
                      "wall_s": time.perf_counter() - t0, "params": params}
        print(f"{name}: " + " ".join(f"{k}={v:.3f}" for k, v in scores.items()), flush=True)
        return model

    from_quick = args.ablate_from == "quick"
    preset = "quick" if from_quick else "paper"
    # quick stops early by default: a fixed number of updates keeps the variants comparable
    extra = {"early_stopping": False} if from_quick else dict(_BASE_EXTRA)
    own = CausCell.presets[preset]

    def switched(over: dict[str, Any]) -> dict[str, Any]:
        # from quick, a row restores the authors' values of the keys that make up one of our choices
        return {k: CausCell.presets["paper"][k] for k in over} if from_quick else over

    base_name = "quick (our choices), fixed length" if from_quick else "paper (authors' choices)"
    label = (lambda n: f"without: {n}") if from_quick else (lambda n: n)
    base = run(base_name, preset, dict(extra))
    for name, over in INFERENCE_VARIANTS.items():
        over = switched(over)
        base.params.update(over)
        if "ema_at_inference" in over:
            base.model_.ema_at_inference = bool(over["ema_at_inference"])
        run(label(name), preset, {**extra, **over}, model=base)
        base.params.update({k: extra.get(k, own[k]) for k in over})
        base.model_.ema_at_inference = bool(base.params["ema_at_inference"])
    for name, over in TRAIN_VARIANTS.items():
        run(label(name), preset, {**extra, **switched(over)})
    if not from_quick:
        run("quick (all our choices)", "quick", {"early_stopping": False})
    return {
        "dataset": {"name": "synthetic", "n_cells": args.n_cells, "n_genes": args.n_genes,
                    "n_train": train.n_obs, "n_test": test.n_obs, "n_eval": min(args.n_eval, test.n_obs),
                    "split": "ID fold 0 of 5"},
        "from": preset, "steps": args.steps, "seed": args.seed, "torch_threads": torch.get_num_threads(),
        "variants": rows,
    }


# How one trained quick model is sampled: encoding (posterior mean or one stochastic draw per pass)
# x samples averaged (1 or 10). Separates what stochastic encoding does from what averaging does.
SAMPLING_VARIANTS: dict[str, dict[str, Any]] = {
    "mean encoding, 1 chain (quick)": {"encode": "mean", "n_samples": 1},
    "stochastic encoding, 1 pass": {"encode": "sample", "n_encodings": 1, "n_samples": 1},
    "mean encoding, 10 chains averaged": {"encode": "mean", "n_samples": 10},
    "stochastic encoding, 10 passes averaged (authors')": {"encode": "sample", "n_encodings": 10, "n_samples": 1},
}
SAMPLING_COLS = ["pcc", "level_slope", "level_r2", "total_ratio", "edist_group", "var_log2ratio", "probe_acc", "exclusivity_dag", "cf_pcc", "effect_pcc",
                 "causal_acc", "causal_acc_changed"]


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    """Inference variants of ``quick`` (as the grid trains it) over several seeds (``--seeds``).

    For each seed: simulate the data with that seed, train ``quick`` once, then score every entry of
    :data:`SAMPLING_VARIANTS` on the same model and cells (per-cell PCC, realism per concept
    combination, probes, do(age) against the truth). Returns per-seed rows and mean/sd per variant.
    """
    seeds = [int(x) for x in args.seeds.split(",")]
    per_seed: dict[str, dict[str, dict[str, float]]] = {name: {} for name in SAMPLING_VARIANTS}
    info: dict[str, Any] = {}
    for seed in seeds:
        raw, spec = load("synthetic", n_cells=args.n_cells, n_genes=args.n_genes, seed=seed)
        split = make_splits(raw, spec, "ID", n_folds=5, seed=seed)[0]
        train, test = preprocess(*split.subset(raw), spec)
        m = CausCell(preset="quick")
        c0 = time.process_time()
        m.fit(train, spec, seed=seed)
        info[str(seed)] = {"n_train": train.n_obs, "n_test": test.n_obs, "train_cpu_s": time.process_time() - c0,
                           "updates": int(m.model_.n_updates)}
        fitted = dict(m.params)
        for name, over in SAMPLING_VARIANTS.items():
            m.params.update(over)
            c1 = time.process_time()
            row = _ablation_scores(m, train, test, spec, args.n_eval, seed)
            row["score_cpu_s"] = time.process_time() - c1
            per_seed[name][str(seed)] = row
            m.params.clear()
            m.params.update(fitted)
            print(f"seed {seed} {name}: " + " ".join(f"{k}={row[k]:.3f}" for k in SAMPLING_COLS), flush=True)
    def mean_sd(values: list[float]) -> dict[str, float]:
        v = np.asarray(values, dtype=float)
        v = v[~np.isnan(v)]  # a metric a seed cannot measure (too few cells per combination)
        return {"mean": float(v.mean()) if v.size else float("nan"),
                "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan")}

    summary = {name: {k: mean_sd([r[k] for r in rows.values()]) for k in [*SAMPLING_COLS, "score_cpu_s"]}
               for name, rows in per_seed.items()}
    return {"dataset": {"name": "synthetic", "n_cells": args.n_cells, "n_genes": args.n_genes,
                        "split": "ID fold 0 of 5", "n_eval": args.n_eval},
            "seeds": seeds, "torch_threads": torch.get_num_threads(), "fits": info,
            "per_seed": per_seed, "summary": summary}


def _sampling_markdown(r: dict[str, Any]) -> str:
    d = r["dataset"]
    lines = ["# CausCell quick: how the trained model is sampled", "",
             (f"synthetic, {d['n_cells']} cells x {d['n_genes']} genes, {d['split']}, {d['n_eval']} test cells "
              f"generated, seeds {', '.join(map(str, r['seeds']))} (each seed simulates its own data and trains "
              f"`quick` once), {r['torch_threads']} torch thread(s). Mean ± sd over seeds; every variant "
              "samples the same trained model."), "",
             "| variant | " + " | ".join([*SAMPLING_COLS, "score CPU s"]) + " |",
             "|---|" + "---|" * (len(SAMPLING_COLS) + 1)]
    for name, v in r["summary"].items():
        cells = [f"{v[c]['mean']:.3f} ± {v[c]['sd']:.3f}" for c in SAMPLING_COLS]
        cells.append(f"{v['score_cpu_s']['mean']:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ablation_markdown(r: dict[str, Any]) -> str:
    d = r["dataset"]
    cols = ["pcc", "probe_acc", "exclusivity_dag", "u_leak", "cf_pcc", "effect_pcc", "causal_acc",
            "causal_acc_changed", "frac_negative", "level_slope", "level_r2", "total_ratio", "train_cpu_s"]
    base = next(iter(r["variants"].values()))
    what = ("the `quick` preset (early stopping off) with one of our choices switched back to the authors'"
            if r.get("from") == "quick" else "the `paper` preset with one of our choices on")
    lines = ["# CausCell ablation: our deviations from the authors' model, one at a time", "",
             (f"synthetic, {d['n_cells']} cells x {d['n_genes']} genes, {d['split']} ({d['n_train']} train, "
              f"{d['n_eval']} test cells generated), {r['steps']} updates, seed {r['seed']}, "
              f"{r['torch_threads']} torch thread(s). Each row: {what} "
              "(difference to the first row in brackets)."), "",
             "| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, v in r["variants"].items():
        cells = []
        for c in cols:
            if c.endswith("_s"):
                cells.append(f"{v[c]:.0f}")
            elif v is base:
                cells.append(f"{v[c]:.3f}")
            else:
                cells.append(f"{v[c]:.3f} ({v[c] - base[c]:+.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/causcell.json")
    ap.add_argument("--n-cells", type=int, default=3000)
    ap.add_argument("--n-genes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="{}", help="JSON overrides of the CausCell quick preset")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--skip-scvi", action="store_true")
    ap.add_argument("--skip-ind", action="store_true")
    ap.add_argument("--skip-ancestral", action="store_true")
    ap.add_argument("--ablation", action="store_true",
                    help="also train CausCell with the paper's objective (excl_weight = exo_weight = 0)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--ablate", action="store_true",
                    help="ablation of our deviations from the paper preset (see ablate()); ignores --params")
    ap.add_argument("--ablate-from", choices=["paper", "quick"], default="paper",
                    help="--ablate: switch our choices on one at a time from paper, or off one at a time from quick")
    ap.add_argument("--steps", type=int, default=1500, help="--ablate: training updates of every variant")
    ap.add_argument("--n-eval", type=int, default=100, help="--ablate/--sampling: test cells generated per variant")
    ap.add_argument("--sampling", action="store_true",
                    help="inference variants of quick (encoding x samples averaged) over --seeds; see sampling()")
    ap.add_argument("--seeds", default="0,1,2", help="--sampling: comma-separated seeds")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    study = (sampling, _sampling_markdown) if args.sampling else (ablate, _ablation_markdown) if args.ablate else None
    if study is not None:
        run_study, markdown = study
        res = run_study(args)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        out.with_suffix(".md").write_text(markdown(res))
        print(f"wrote {out} and {out.with_suffix('.md')}")
        return
    params = json.loads(args.params)
    if args.progress:
        params["progress"] = True

    raw, spec = load("synthetic", n_cells=args.n_cells, n_genes=args.n_genes, seed=args.seed)
    split = make_splits(raw, spec, "ID", n_folds=5, seed=args.seed)[0]
    train, test = preprocess(*split.subset(raw), spec)
    real = dense_rows(test.X, slice(None))
    expected = true_counterfactual(test, {})[2]  # noiseless mean expression of each test cell
    result: dict[str, Any] = {
        "dataset": {"name": "synthetic", "n_cells": args.n_cells, "n_genes": args.n_genes,
                    "n_train": train.n_obs, "n_test": test.n_obs, "split": "ID fold 0 of 5"},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "params_override": params,
    }

    models: dict[str, Any] = {}
    variants: list[tuple[str, Any, dict[str, Any]]] = [("CausCell", CausCell, params)]
    if not args.skip_ind:
        variants.append(("CausCell_IND", CausCellIND, params))
    if args.ablation:
        variants.append((ABLATION, CausCell, {**params, "excl_weight": 0.0, "exo_weight": 0.0}))
    for name, cls, kw in variants:
        m = cls(preset="quick", **kw)
        _, t_fit, c_fit = _timed_cpu(lambda m=m: m.fit(train, spec, seed=args.seed))
        models[name] = m
        result.setdefault("train_seconds", {})[name] = t_fit
        result.setdefault("train_cpu_seconds", {})[name] = c_fit
        result.setdefault("n_parameters", {})[name] = m.model_.n_parameters()
        result.setdefault("final_losses", {})[name] = m.history_[-1]
        print(f"{name}: fit {t_fit:.1f}s wall, {c_fit:.1f}s CPU; last losses {m.history_[-1]}", flush=True)

    if not args.skip_scvi:
        from causcell_bench.methods.scvi import SCVI

        s = SCVI(preset="quick")
        _, t_fit, c_fit = _timed_cpu(lambda: s.fit(train, spec, seed=args.seed))
        models["scVI"] = s
        result["train_seconds"]["scVI"] = t_fit
        result["train_cpu_seconds"]["scVI"] = c_fit
        print(f"scVI: fit {t_fit:.1f}s", flush=True)

    result["disentanglement"] = {}
    for name, m in models.items():
        d = _disent(m, train, test, spec)
        result["disentanglement"][name] = d
        print(name, {k: round(v, 3) for k, v in d.items() if k.startswith(("acc:", "offdiag", "exclusivity"))}, flush=True)

    cc = models["CausCell"]
    rec: dict[str, Any] = {}
    samplers = [("ddim50", {"sampler": "ddim", "steps": 50})]
    if not args.skip_ancestral:
        samplers.append(("ancestral1000", {"sampler": "ancestral"}))
    for label, kw in samplers:
        gen, t, c = _timed_cpu(lambda kw=kw: cc.generate(test, seed=args.seed, n_samples=1, **kw))
        rec[label] = {
            "seconds": t,
            "cpu_seconds": c,
            "pcc": float(pearson_per_cell(real, gen).mean()),
            "pcc_vs_expected": float(pearson_per_cell(expected, gen).mean()),
            "mse": float(np.mean((gen - real) ** 2)),
        }
        print(label, rec[label], flush=True)
    if "ancestral1000" in rec:
        rec["speedup_ddim"] = rec["ancestral1000"]["seconds"] / rec["ddim50"]["seconds"]
        rec["speedup_ddim_cpu"] = rec["ancestral1000"]["cpu_seconds"] / rec["ddim50"]["cpu_seconds"]
        rec["pcc_gap"] = rec["ancestral1000"]["pcc"] - rec["ddim50"]["pcc"]
    rec["reference_pcc_expected_vs_real"] = float(pearson_per_cell(real, expected).mean())
    result["reconstruction"] = rec

    values = [str(v) for v in train.obs["age"].cat.categories]
    result["counterfactual_do_age"] = {}
    for name in ("CausCell", "CausCell_IND", ABLATION):
        if name in models:
            cf = _counterfactual(models[name], train, test, values, args.seed)
            result["counterfactual_do_age"][name] = cf
            print(name, "do(age)", {k: round(v, 3) for k, v in cf["mean"].items()}, flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(_markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def _markdown(r: dict[str, Any]) -> str:
    f = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = [("# CausCell quick-preset benchmark (synthetic, " f"{r['dataset']['n_cells']} cells x {r['dataset']['n_genes']} genes)"), ""]
    lines += ["## Training time", "", "| method | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {r['train_cpu_seconds'][k]:.1f} |" for k, v in r["train_seconds"].items()]
    lines += ["", "## Probe accuracy (row: embedding, column: concept predicted)", ""]
    concepts = ["age", "domain", "celltype"]
    lines += ["| method | embedding | " + " | ".join(concepts) + " | exclusivity |", "|---|---|" + "---|" * (len(concepts) + 1)]
    for name, d in r["disentanglement"].items():
        for c in concepts:
            row = [f(d[f"acc:{c}"]) if j == c else f(d.get(f"offdiag_acc:{c}|{j}", float("nan"))) for j in concepts]
            lines.append(f"| {name} | {c} | " + " | ".join(row) + f" | {f(d[f'exclusivity:{c}'])} |")
    lines += ["", "## Reconstruction (test cells, one sample per cell)", "",
              "| sampler | wall s | CPU s | PCC vs real | PCC vs noiseless truth | MSE |", "|---|---|---|---|---|---|"]
    for k in ("ddim50", "ancestral1000"):
        if k in r["reconstruction"]:
            v = r["reconstruction"][k]
            lines.append(f"| {k} | {v['seconds']:.1f} | {v['cpu_seconds']:.1f} | {f(v['pcc'])} | {f(v['pcc_vs_expected'])} | {f(v['mse'])} |")
    rec = r["reconstruction"]
    if "speedup_ddim" in rec:
        lines.append(f"\nDDIM-50 speed-up {rec['speedup_ddim']:.1f}x wall, {rec['speedup_ddim_cpu']:.1f}x CPU; "
                     f"PCC gap (ancestral - DDIM) {rec['pcc_gap']:+.3f}.")
    lines.append(f"Noiseless truth vs real test cells (ceiling): PCC {rec['reference_pcc_expected_vs_real']:.3f}.")
    lines += ["", "## Counterfactual do(age = a), mean over a", ""]
    keys = ["cf_pcc", "effect_pcc", "causal_acc:celltype", "causal_acc_changed:celltype",
            "latent_causal_acc_changed:celltype", "frac_celltype_changed"]
    lines += ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, cf in r["counterfactual_do_age"].items():
        lines.append(f"| {name} | " + " | ".join(f(cf["mean"].get(k, float("nan"))) for k in keys) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
