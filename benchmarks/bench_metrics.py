"""Timing benchmark of causcell_bench.metrics.

Reconstruction metrics on 20,000 cells x 2,000 genes (random counts -> log1p CP10k, ~60
concept-combination groups; real as CSR, generated = real + noise, dense) and the embedding
metrics on 100,000 training cells. Prints a table of wall and CPU seconds (CPU time is the
fairer number on a shared machine) and writes JSON.

    python benchmarks/bench_metrics.py --out bench_out/metrics.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from causcell_bench.metrics import (
    dci,
    geometry_scores,
    granularity_scores,
    marker_overlap,
    mig,
    probe_predict,
    score_disentanglement,
    score_distribution,
    score_reconstruction,
)
from causcell_bench.metrics.expression import combination_labels, paired_stats

SIZES = {"celltype": 5, "age": 4, "domain": 3}  # 60 combinations


def expression(n: int, g: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({c: pd.Categorical([f"{c}{v}" for v in rng.integers(0, k, n)]) for c, k in SIZES.items()})
    log_mu = rng.normal(0, 1, g)
    for c, k in SIZES.items():
        eff = rng.normal(0, 1.0, (k, g)) * (rng.random((k, g)) < 0.1)
        log_mu = log_mu + eff[obs[c].cat.codes.to_numpy()]
    p = np.exp(log_mu - log_mu.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    counts = rng.poisson(p * rng.lognormal(np.log(3000), 0.3, (n, 1))).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1
    x = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    gen = (x + rng.normal(0, 0.3, x.shape).astype(np.float32)).clip(0)
    return sp.csr_matrix(x), gen, obs


def embeddings(n: int, seed: int, dim: int = 16) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({c: pd.Categorical([f"{c}{v}" for v in rng.integers(0, k, n)]) for c, k in SIZES.items()})
    obs["celltype_fine"] = obs["celltype"].astype(str) + "_" + rng.integers(0, 2, n).astype(str)
    emb = {}
    for c, k in SIZES.items():
        proj = rng.normal(0, 1, (k, dim))
        emb[c] = (proj[obs[c].cat.codes.to_numpy()] + rng.normal(0, 1.0, (n, dim))).astype(np.float32)
    return emb, obs


def timed(table: list[dict[str, Any]], name: str, fn: Callable[[], Any]) -> Any:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    table.append(
        {"step": name, "seconds": round(time.perf_counter() - t, 2), "cpu_seconds": round(time.process_time() - c, 2)}
    )
    print(f"  {name:<44s} {table[-1]['seconds']:8.2f} s wall {table[-1]['cpu_seconds']:8.2f} s cpu", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/metrics.json")
    ap.add_argument("--cells", type=int, default=20_000, help="cells for the reconstruction metrics")
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--probe-cells", type=int, default=100_000, help="training cells for the embedding metrics")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    table: list[dict[str, Any]] = []
    print(f"reconstruction: {args.cells} cells x {args.genes} genes")
    real, gen, obs = expression(args.cells, args.genes, args.seed)
    genes = [f"g{i}" for i in range(args.genes)]
    concepts = list(SIZES)
    perm = np.random.default_rng(0).permutation(args.cells)
    timed(table, "trend: pcc + mse (+ CT)", lambda: paired_stats(real, gen, (None, perm)))
    timed(table, "geometry: Ward x2 (5,000-cell subsample)", lambda: geometry_scores(real, gen, 8))
    groups = combination_labels(obs, concepts)
    timed(table, "marker: Wilcoxon top-50 (no CT)", lambda: marker_overlap(real, gen, groups, genes))
    rec = timed(
        table, "score_reconstruction (all, with CT)", lambda: score_reconstruction(real, gen, obs, concepts, genes)
    )

    print(f"embeddings: {args.probe_cells} train cells, {args.probe_cells // 4} test cells, 3 concepts x 16 dims")
    emb, obs_all = embeddings(args.probe_cells + args.probe_cells // 4, args.seed + 1)
    n_tr = args.probe_cells
    emb_tr = {c: z[:n_tr] for c, z in emb.items()}
    emb_te = {c: z[n_tr:] for c, z in emb.items()}
    obs_tr, obs_te = obs_all.iloc[:n_tr], obs_all.iloc[n_tr:]
    for probe in ("logreg", "knn"):
        timed(
            table,
            f"one {probe} probe (20,000-cell subsample)",
            lambda: probe_predict(emb_tr["age"], obs_tr["age"], emb_te["age"], probe=probe),
        )
    ztr = np.concatenate([emb_tr[c] for c in concepts], 1)
    zte = np.concatenate([emb_te[c] for c in concepts], 1)
    timed(
        table,
        "DCI (extra-trees on 10,000 cells)",
        lambda: dci(ztr, obs_tr[concepts], z_test=zte, factors_test=obs_te[concepts]),
    )
    timed(table, "MIG (test cells)", lambda: mig(zte, obs_te[concepts]))
    timed(
        table,
        "granularity (5,000-cell subsample)",
        lambda: granularity_scores(emb_te["celltype"], obs_te["celltype_fine"]),
    )
    dis = timed(
        table,
        "score_disentanglement (all, 9 probes)",
        lambda: score_disentanglement(emb_tr, obs_tr, emb_te, obs_te, concepts, {"celltype": "celltype_fine"}),
    )

    # a held-out population (celltype0) predicted by the generated cells, vs a source (celltype1)
    pop = np.flatnonzero(obs["celltype"] == "celltype0")
    src = np.flatnonzero(obs["celltype"] == "celltype1")
    print(f"distribution: {pop.size} predicted vs {pop.size} real cells, {src.size} source cells (5,000 max)")
    dst = timed(
        table,
        "score_distribution (edist, mean_pcc, DEGs)",
        lambda: score_distribution(gen[pop], real[pop], real[src], genes),
    )

    result = {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "config": vars(args),
        "timings": table,
        "values": {"reconstruction": rec, "disentanglement": dis, "distribution": dst},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{'step':<46s} {'wall s':>8s} {'cpu s':>8s}")
    for row in table:
        print(f"{row['step']:<46s} {row['seconds']:8.2f} {row['cpu_seconds']:8.2f}")
    print(f"(cpu s sums all threads; load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
