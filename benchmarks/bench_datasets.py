"""Timings of the datasets subpackage: synthetic generation and fold making.

    python benchmarks/bench_datasets.py [--out bench_out/datasets.json] [--cells 50000 --genes 2000 --split-cells 1000000]

Prints a small table and writes the numbers (wall and CPU seconds, load
average, core count) as JSON. Targets: synthetic 50k x 2000 in <= 15 s on 2
cores; make_splits on 1M cells in <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _timed(fn, repeat: int = 1) -> tuple[float, float, object]:
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu, out


def _million_cell_obs(n: int, seed: int = 0) -> pd.DataFrame:
    """Labels shaped like a large atlas: 3 ages x 8 domains x 10 cell types, unbalanced."""
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 3, n)
    domain = rng.integers(0, 8, n)
    ctype = (rng.zipf(1.6, n) + age + domain) % 10
    return pd.DataFrame(
        {
            "age": pd.Categorical.from_codes(age, [f"age_{i}" for i in range(3)]),
            "domain": pd.Categorical.from_codes(domain, [f"domain_{i}" for i in range(8)]),
            "celltype": pd.Categorical.from_codes(ctype, [f"type_{i}" for i in range(10)]),
        },
        index=pd.RangeIndex(n).astype(str),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/datasets.json")
    ap.add_argument("--cells", type=int, default=50_000)
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--split-cells", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    from causcell_bench.datasets import make_splits, simulate, synthetic_spec, true_counterfactual

    rows = []
    load_before = os.getloadavg()[0]
    wall, cpu, adata = _timed(lambda: simulate(args.cells, args.genes, seed=0), args.repeat)
    rows.append({"task": f"simulate {args.cells} x {args.genes}", "wall_s": wall, "cpu_s": cpu,
                 "target_s": 15.0, "nnz": int(adata.layers["counts"].nnz)})
    sub = adata[: min(5000, adata.n_obs)].copy()
    wall, cpu, _ = _timed(lambda: true_counterfactual(sub, {"age": "age_2"}), args.repeat)
    rows.append({"task": f"true_counterfactual {sub.n_obs} cells", "wall_s": wall, "cpu_s": cpu, "target_s": None})
    del adata, sub

    obs = _million_cell_obs(args.split_cells)
    spec = synthetic_spec()
    for setting in ("ID", "OOD"):
        wall, cpu, splits = _timed(lambda: make_splits(obs, spec, setting, n_folds=5, seed=0), args.repeat)
        rows.append({"task": f"make_splits {setting} {args.split_cells} cells", "wall_s": wall, "cpu_s": cpu,
                     "target_s": 5.0, "test_sizes": [int(s.test_idx.size) for s in splits]})

    meta = {
        "python": platform.python_version(), "cores": len(os.sched_getaffinity(0)),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
        "note": "wall times are inflated when other processes share the cores; cpu_s is this process only",
    }
    print(f"{'task':45s} {'wall s':>8s} {'cpu s':>8s} {'target':>7s}")
    for r in rows:
        tgt = f"{r['target_s']:.0f}" if r["target_s"] else "-"
        print(f"{r['task']:45s} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {tgt:>7s}")
    print(f"cores={meta['cores']} loadavg {meta['loadavg_before']:.1f} -> {meta['loadavg_after']:.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": rows, "meta": meta}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
