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
from causcell_bench.metrics import pearson_per_cell, predict_labels, score_counterfactual, score_disentanglement

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


def _counterfactual(method: Any, train: Any, test: Any, values: list[str], seed: int) -> dict[str, Any]:
    """do(age = a) for each a: scores against the simulator's truth, averaged over a."""
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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
