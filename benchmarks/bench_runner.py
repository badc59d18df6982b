"""Runner overhead per grid cell (excluding model fit) and time to resume a finished grid.

    python benchmarks/bench_runner.py [--out bench_out/runner.json]

Overhead per cell = the cell's wall time seen by the parent (fork, data hand-over,
preprocessing, JSON write) minus the method's fit, embed and generate time and the
metric scoring time, measured with the positive control on `synthetic` (3,000 x 500).
Resume = rerunning the same finished grid (every cell skipped), end to end in a new process,
including start-up, dataset loading and split checks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from causcell_bench.config import RunConfig
from causcell_bench.runner import run_grid
from causcell_bench.store import ResultStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench_out/runner.json")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench_runner_"))
    cfg = RunConfig(datasets=["synthetic"], methods=["positive_control", "negative_control"], n_folds=args.folds,
                    settings=["ID", "OOD"], device="cpu")
    t0 = time.perf_counter()
    outcomes = run_grid(cfg, run_dir, progress=False, log=lambda s: None)
    first = time.perf_counter() - t0
    records = {str(o.key): o for o in outcomes}
    overheads, plumbing = [], []
    for rec in ResultStore(run_dir).records():
        wall = records[f"{rec['dataset']}/{rec['method']}/{rec['setting']}/fold{rec['fold']}/seed{rec['seed']}"].seconds
        t = rec["timings"]
        model = t.get("fit_s", 0) + t.get("embed_s", 0) + t.get("generate_s", 0)
        scoring = sum(v for k, v in t.items() if k.startswith("score_") or k == "counterfactual_s")
        overheads.append(wall - model - scoring)
        plumbing.append(wall - model)
    cmd = [sys.executable, "-m", "causcell_bench.cli", "run", "--methods", "controls", "--dataset", "synthetic",
           "--n-folds", str(args.folds), "--device", "cpu", "--out", str(run_dir), "--no-report"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    resume = time.perf_counter() - t0
    result = {
        "cells": len(overheads), "first_run_s": round(first, 2),
        "overhead_per_cell_s_mean": round(sum(overheads) / len(overheads), 3),
        "overhead_per_cell_s_max": round(max(overheads), 3),
        "overhead_incl_scoring_s_mean": round(sum(plumbing) / len(plumbing), 3),
        "resume_finished_grid_s": round(resume, 2),
        "targets": {"overhead_per_cell_s": 2.0, "resume_s": 10.0},
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
