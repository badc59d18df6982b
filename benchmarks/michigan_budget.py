"""MichiGAN quick's training budget against CausCell quick's, on the README demo's data and a real dataset.

Fits one method on the training part of ID fold 0 (as a grid cell does: ``make_splits`` then
``preprocess``) with torch at one thread, and appends one JSON line to ``--out``: the fit's CPU
seconds (this process's, all threads), MichiGAN's per-stage CPU seconds and convergence record
(where each stage stopped, the GAN's validation energy-distance curve), and two test scores: the
mean per-cell Pearson r of the reconstructions of the test cells and the energy distance between
those reconstructions and the real test cells. docs/convergence.md ("MichiGAN's budget") quotes it.

    python benchmarks/michigan_budget.py --data demo --method MichiGAN
    python benchmarks/michigan_budget.py --data /path/kang_pbmc_ifnb_valid.h5ad --method CausCell
    python benchmarks/michigan_budget.py --data demo --method MichiGAN --param gan_steps=15000 --label before

``demo``: ``synthetic`` at 1,500 cells x 300 genes (the README demo). An ``.h5ad`` path: its
``cell_type`` and ``condition`` columns are the concepts (``cell_type -> condition``), 2,000 HVGs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def load_fold(data: str) -> tuple[Any, Any, Any]:
    """(train, test, spec): ID fold 0, preprocessed."""
    from causcell_bench.datasets import load, preprocess
    from causcell_bench.datasets.splits import make_splits

    if data == "demo":
        raw, spec = load("synthetic", n_cells=1500, n_genes=300, seed=0)
        n_hvg = None
    else:
        raw, spec = load(data, concepts=["cell_type", "condition"], edges=["cell_type->condition"])
        n_hvg = 2000
    split = make_splits(raw, spec, "ID", n_folds=5, seed=0)[0]
    train, test = preprocess(raw[split.train_idx], raw[split.test_idx], spec, n_hvg=n_hvg)
    return train, test, spec


def scores(method: Any, test: Any) -> dict[str, float]:
    """Mean per-cell Pearson r of the reconstructions, and their energy distance to the real test cells."""
    import numpy as np

    from causcell_bench.metrics.distribution import e_distance
    from causcell_bench.metrics.expression import pcc_rows

    real = test.X.toarray() if hasattr(test.X, "toarray") else np.asarray(test.X)
    gen = np.asarray(method.generate(test, seed=0))
    return {"recon_pcc": float(pcc_rows(real, gen).mean()), "e_distance": e_distance(gen, real)}


def eta_ratios(reports: list[tuple[str, int, int, float]]) -> dict[str, dict[str, float]]:
    """Per phase, the progress bar's ETA (elapsed / done x (total - done), as
    :func:`causcell_bench.progress.describe` computes it, here on CPU seconds) over the time the phase
    really had left, at the first report past a quarter, half and three quarters of the phase's time.
    1 is exact; above 1 the bar overestimates (a total beyond where the run stops)."""
    out: dict[str, dict[str, float]] = {}
    for what in dict.fromkeys(r[0] for r in reports):
        rows = [r for r in reports if r[0] == what]
        start, end = rows[0][3], rows[-1][3]
        ratios: dict[str, float] = {}
        for share in (0.25, 0.5, 0.75):
            at = next((r for r in rows if r[3] - start >= share * (end - start) and 0 < r[1] < r[2]), None)
            if at is not None and end > at[3]:
                eta = (at[3] - start) / at[1] * (at[2] - at[1])
                ratios[f"{share:.0%}"] = round(eta / (end - at[3]), 2)
        out[what] = ratios
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="demo", help="'demo' or an .h5ad path (Kang PBMC)")
    ap.add_argument("--method", default="MichiGAN", choices=["MichiGAN", "CausCell"])
    ap.add_argument("--param", action="append", default=[], help="key=value (JSON value) override of the quick preset")
    ap.add_argument("--label", default="", help="a name for this run in the output")
    ap.add_argument("--out", default="runs/michigan_budget.jsonl")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from causcell_bench.registry import get_method

    params = {k: json.loads(v) for k, _, v in (p.partition("=") for p in args.param)}
    train, test, spec = load_fold(args.data)
    method = get_method(args.method)(preset="quick", device="cpu", **params)
    reports: list[tuple[str, int, int, float]] = []
    method.progress_callback = lambda r: reports.append((r.what, r.done, r.total, time.process_time()))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    method.fit(train, spec, seed=0)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    row: dict[str, Any] = {
        "label": args.label, "data": "demo" if args.data == "demo" else Path(args.data).stem,
        "n_train": train.n_obs, "n_genes": train.n_vars, "method": args.method, "params": params,
        "fit_cpu_s": round(cpu, 1), "fit_wall_s": round(wall, 1), **scores(method, test),
        "eta_ratio": eta_ratios(reports),
    }
    if args.method == "MichiGAN":
        row["timings"] = {k: round(v, 1) for k, v in method.timings_.items()}
        row["convergence"] = {phase: {k: v for k, v in rec.items()} for phase, rec in method.convergence_.items()}
    with open(args.out, "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
    brief = {k: v for k, v in row.items() if k != "convergence"}
    for phase, rec in row.get("convergence", {}).items():
        brief[phase] = f"ran {rec['last']} of cap {rec['cap']}, best {rec['best']}, stopped {rec['stopped']}"
    print(json.dumps(brief, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
