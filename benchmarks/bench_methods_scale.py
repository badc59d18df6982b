"""How every method's `quick` fit and generation grow with the number of cells (issue #26).

For each size N (default 2,000, 10,000 and 50,000 cells of `synthetic` x 2,000 genes), ID fold 0 is
made and preprocessed as a grid cell does it (``make_splits`` then ``preprocess``: 80% training cells),
and each method runs in a fresh subprocess at one torch thread: ``fit`` on the training cells, then
``generate`` (reconstruction) of the test cells. A line of JSON per (method, N) is appended to
``--out``: fit and generate CPU seconds (the process's, all threads) and wall seconds, the process's
peak resident memory, and where the method stopped (its convergence record, when it keeps one).

    python benchmarks/bench_methods_scale.py --sizes 2000,10000 --out bench_out/scale_methods.jsonl
    python benchmarks/bench_methods_scale.py --table bench_out/scale_methods.jsonl   # markdown table

The table gives, per method, the seconds and peak memory at each size and the growth exponent b of
the fit's CPU time (t ~ N^b, least squares on log-log over the sizes measured): b <= 1 is at most
linear. docs/performance.md quotes it. Run it alone on the machine: wall times are inflated by other
load, CPU seconds much less.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = ["CausCell", "scDisInFact", "Biolord", "CPA", "MichiGAN", "scVI", "scGen"]


def one(method_name: str, n_cells: int, n_genes: int) -> dict[str, Any]:
    """Fit and generate one method at one size, in this process (the parent runs it as a subprocess)."""
    from causcell_bench.threads import apply_thread_budget

    apply_thread_budget(1)
    from causcell_bench.datasets import load, preprocess
    from causcell_bench.datasets.splits import make_splits
    from causcell_bench.registry import get_method

    raw, spec = load("synthetic", n_cells=n_cells, n_genes=n_genes, seed=0)
    split = make_splits(raw, spec, "ID", n_folds=5, seed=0)[0]
    train, test = preprocess(raw[split.train_idx], raw[split.test_idx], spec)
    method = get_method(method_name)(preset="quick", device="cpu")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    method.fit(train, spec, seed=0)
    fit_cpu, fit_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    method.generate(test, seed=0)
    gen_cpu, gen_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    conv = getattr(method, "convergence_", None) or {}
    stopped = {phase: {k: rec.get(k) for k in ("last", "cap", "best", "stopped", "unit") if k in rec}
               for phase, rec in conv.items() if isinstance(rec, dict)}
    return {
        "method": method_name, "n_cells": n_cells, "n_train": train.n_obs, "n_test": test.n_obs,
        "n_genes": train.n_vars, "fit_cpu_s": round(fit_cpu, 1), "fit_wall_s": round(fit_wall, 1),
        "generate_cpu_s": round(gen_cpu, 1), "generate_wall_s": round(gen_wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "convergence": stopped,
    }


def exponent(sizes: list[float], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) on log(sizes): t ~ N^b."""
    xs, ys = [math.log(s) for s in sizes], [math.log(max(t, 1e-3)) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ok = [r for r in rows if "error" not in r]
    sizes = sorted({r["n_cells"] for r in ok})
    head = "| method | " + " | ".join(f"{n:,} cells: fit / generate CPU s (peak MB)" for n in sizes)
    head += " | fit growth b |\n|---|" + "---|" * (len(sizes) + 1)
    lines = [head]
    for m in dict.fromkeys(r["method"] for r in rows):
        by = {r["n_cells"]: r for r in ok if r["method"] == m}
        cells = [f"{by[n]['fit_cpu_s']:,.0f} / {by[n]['generate_cpu_s']:,.0f} ({by[n]['peak_rss_mb']:,})"
                 if n in by else "not run" for n in sizes]
        have = sorted(by)
        b = exponent([by[n]["n_train"] for n in have], [by[n]["fit_cpu_s"] for n in have]) if len(have) > 1 else float("nan")
        failed = [r for r in rows if r["method"] == m and "error" in r]
        note = "; ".join(f"{r['n_cells']:,}: {r['error']}" for r in failed)
        grow = f"{b:.2f}" if math.isfinite(b) else "–"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {grow}{' (' + note + ')' if note else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2000,10000,50000")
    ap.add_argument("--n-genes", type=int, default=2000)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="bench_out/scale_methods.jsonl")
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds one (method, size) may take")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--table", type=Path, help="print the markdown table of a results file and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table), end="")
        return 0
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.n_genes)))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in (int(s) for s in args.sizes.split(",")):
        for m in args.methods.split(","):
            cmd = [sys.executable, __file__, "--one", m, str(n), "--n-genes", str(args.n_genes)]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                last = p.stdout.strip().splitlines()[-1:] if p.returncode == 0 else []
                row = json.loads(last[0]) if last else {
                    "method": m, "n_cells": n, "error": (p.stderr.strip().splitlines() or ["exit " + str(p.returncode)])[-1][:200]}
            except subprocess.TimeoutExpired:
                row = {"method": m, "n_cells": n, "error": f"over {args.timeout:.0f} s"}
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "convergence"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
