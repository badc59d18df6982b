"""Training curves of every trained method's quick preset: does the validation loss flatten before the cap?

Trains each method (one at a time, in this process) on the built-in ``synthetic`` dataset at
``--n-cells`` x ``--n-genes`` (default 5,000 x 2,000), on the training part of ID fold 0 (as a
benchmark grid cell does: ``make_splits`` then ``preprocess``), and writes to ``--out``:

- ``curves.csv``: one row per validation check (method, phase, step, train, val);
- ``curves.png``: one panel per method and phase: training loss (left axis), validation loss
  (right axis), the kept (best) check and the cap;
- ``results.json``: all of the above per method, so that ``--update`` can rerun some methods and keep
  the others' results;
- ``summary.csv`` and ``summary.md``: per method and phase the steps run, the best (kept) step,
  the cap, whether early stopping ended the run, whether the validation loss had flattened, the
  best validation value, and the fit's CPU and wall seconds (of the whole fit, on a method's first
  row; a method that times its stages, MichiGAN, adds each stage's own in parentheses).

A method's curves come from its ``convergence_`` record (``{phase: {"unit", "monitor", "cap",
"patience", "stopped", "last", "best", "best_val", "history": [{"step", "train", "val"}, ...]}}``,
as written by the adapters with early stopping). A method without one but with a ``history_`` of
``{"step", "total", ...}`` records (CausCell) is shown with its training loss only; one with
neither is listed as skipped.

"Flattened": the run stopped early (no improvement in ``patience`` checks), or, run to the cap,
the best validation value of its last quarter improved on the best before it by less than 1% of
the whole run's improvement.

    python benchmarks/convergence.py                                  # every method, 5,000 x 2,000
    python benchmarks/convergence.py --methods CPA,scVI --n-cells 2000 --n-genes 500
    python benchmarks/convergence.py --methods CPA --param CPA.epochs=600 --param CPA.patience=50
    python benchmarks/convergence.py --methods scVI --update      # rerun scVI, keep the others' results
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

METHODS = ("scVI", "scGen", "Biolord", "CPA", "scDisInFact", "MichiGAN", "CausCell")
FLAT_SHARE = 0.01  # "flattened": the last quarter improved the best by less than this share of the run's gain


def _cpu_seconds() -> float:
    """User + system CPU of this process (all its threads) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_fold(n_cells: int, n_genes: int, seed: int = 0, fold: int = 0) -> tuple[Any, Any, Any]:
    """(train, test, spec): ID fold ``fold`` of ``synthetic`` at this size, preprocessed as a grid cell does."""
    from causcell_bench.datasets import load, preprocess
    from causcell_bench.datasets.splits import make_splits

    raw, spec = load("synthetic", n_cells=n_cells, n_genes=n_genes, seed=seed)
    split = make_splits(raw, spec, "ID", n_folds=5, seed=seed)[fold]
    train, test = preprocess(raw[split.train_idx], raw[split.test_idx], spec)
    return train, test, spec


def parse_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.key=value`` (value as JSON, else a string) -> {method: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        method, dot, key = target.partition(".")
        if not sep or not dot or not method or not key:
            raise SystemExit(f"--param {item!r}: write METHOD.key=value, e.g. CPA.epochs=400")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method, {})[key] = value
    return out


def records_of(method: Any) -> dict[str, dict[str, Any]] | None:
    """The method's per-phase convergence records, or None if it keeps no curve."""
    conv = getattr(method, "convergence_", None)
    if conv:
        return conv
    hist = getattr(method, "history_", None)
    if isinstance(hist, list) and hist and isinstance(hist[0], dict) and "step" in hist[0]:
        key = "total" if "total" in hist[0] else next(k for k in hist[0] if k != "step")
        cap = method.params.get("n_steps", int(hist[-1]["step"]))
        return {"training": {
            "unit": "step", "monitor": f"none (training {key} only)", "cap": cap, "patience": None, "stopped": False,
            "last": int(hist[-1]["step"]), "best": None, "best_val": None,
            "history": [{"step": h["step"], "train": h[key], "val": math.nan} for h in hist],
        }}
    return None


def flattened(rec: dict[str, Any], lower_is_better: bool = True) -> bool | None:
    """Did the validation curve flatten (see the module docstring)? None without a validation curve."""
    pts = [(h["step"], h["val"]) for h in rec["history"] if h.get("val") is not None and math.isfinite(h["val"])]
    if len(pts) < 4:
        return None
    if rec.get("stopped"):
        return True
    vals = [v if lower_is_better else -v for _, v in pts]
    cut = int(len(vals) * 0.75)
    best_before, best_after = min(vals[:cut]), min(vals)
    gain = vals[0] - best_after
    return gain <= 0 or (best_before - best_after) < FLAT_SHARE * gain


def run_method(name: str, params: dict[str, Any], train: Any, spec: Any, seed: int, device: str) -> dict[str, Any]:
    """Fit ``name``'s quick preset; return its records and timings (or why it was skipped)."""
    from causcell_bench.registry import get_method

    cls = get_method(name)
    method = cls(preset="quick", device=device, **params)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    method.fit(train, spec, seed=seed)
    cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    return {"records": records_of(method), "cpu_s": cpu, "wall_s": wall, "params": method.params,
            "timings": dict(getattr(method, "timings_", None) or {})}


def summary_rows(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    recs = result.get("records")
    if not recs:
        return [{"method": name, "phase": "", "note": result.get("error") or "no convergence record: skipped"}]
    for i, (phase, rec) in enumerate(recs.items()):
        higher = "higher is better" in str(rec.get("monitor", ""))
        flat = flattened(rec, lower_is_better=not higher)
        rows.append({
            "method": name, "phase": phase, "unit": rec["unit"], "monitor": rec["monitor"],
            "ran": rec["last"], "best": rec["best"], "cap": rec["cap"], "patience": rec["patience"],
            "stopped_early": bool(rec["stopped"]), "flattened": "" if flat is None else flat,
            "best_val": "" if rec["best_val"] is None else f"{rec['best_val']:.6g}",
            "cpu_s": f"{result['cpu_s']:.0f}" if i == 0 else "", "wall_s": f"{result['wall_s']:.0f}" if i == 0 else "",
            "phase_cpu_s": _phase_time(result, phase, "_cpu_s"), "phase_wall_s": _phase_time(result, phase, "_s"),
            "note": "",
        })
    return rows


def _phase_time(result: dict[str, Any], phase: str, suffix: str) -> str:
    """A stage's own seconds where the method times its stages (MichiGAN's ``timings_``: ``vae_s``, ``vae_cpu_s``)."""
    value = result.get("timings", {}).get(f"{phase.lower()}{suffix}")
    return "" if value is None else f"{value:.0f}"


def write_outputs(out: Path, results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, default=str, indent=1))
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "phase", "unit", "step", "train", "val"])
        for name, res in results.items():
            for phase, rec in (res.get("records") or {}).items():
                for h in rec["history"]:
                    w.writerow([name, phase, rec["unit"], h["step"], h["train"], h["val"]])
    rows = [r for name, res in results.items() for r in summary_rows(name, res)]
    fields = ["method", "phase", "unit", "monitor", "ran", "best", "cap", "patience", "stopped_early", "flattened",
              "best_val", "cpu_s", "wall_s", "phase_cpu_s", "phase_wall_s", "note"]
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    header = (f"synthetic {meta['n_cells']} cells x {meta['n_genes']} genes, ID fold 0 training part "
              f"({meta['n_train']} cells), seed {meta['seed']}, {meta['threads']} thread(s)")
    lines = [header, "",
             "| method | phase | ran | best (kept) | cap | patience | stopped early | flattened | CPU s | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    # a stage's own time, where the method reports it, in parentheses after the fit's
    for r in rows:
        if r.get("phase_cpu_s"):
            r["cpu_s"] = f"{r['cpu_s']} ({r['phase_cpu_s']})".strip()
            r["wall_s"] = f"{r['wall_s']} ({r['phase_wall_s']})".strip()
    for r in rows:
        if r.get("note"):
            lines.append(f"| {r['method']} | {r['note']} | | | | | | | | |")
            continue
        lines.append(f"| {r['method']} | {r['phase']} | {r['ran']} {r['unit']}s | {r['best'] if r['best'] is not None else ''} "
                     f"| {r['cap']} | {r['patience'] if r['patience'] is not None else ''} | {r['stopped_early']} "
                     f"| {r['flattened']} | {r['cpu_s']} | {r['wall_s']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(out / "curves.png", results)


def plot(path: Path, results: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, phase, rec) for name, res in results.items() for phase, rec in (res.get("records") or {}).items()]
    if not panels:
        return
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, phase, rec) in zip(axes.ravel(), panels):
        hist = rec["history"]
        steps = [h["step"] for h in hist]
        train = [h["train"] for h in hist]
        ax.plot(steps, train, color="0.5", lw=1, label="train")
        _zoom(ax, train)
        ax.set_xlabel(rec["unit"])
        ax.set_ylabel("training loss", color="0.4")
        val = [(h["step"], h["val"]) for h in hist if h.get("val") is not None and math.isfinite(h["val"])]
        if val:
            ax2 = ax.twinx()
            ax2.plot([s for s, _ in val], [v for _, v in val], color="tab:blue", lw=1.2, label="validation")
            ax2.set_ylabel(str(rec["monitor"])[:40], color="tab:blue", fontsize=7)
            _zoom(ax2, [v for _, v in val], higher="higher is better" in str(rec["monitor"]))
        if rec.get("best") is not None:
            ax.axvline(rec["best"], color="tab:green", ls="--", lw=0.8)
        ax.axvline(rec["cap"], color="tab:red", ls=":", lw=0.8)
        ax.set_xlim(0, max(rec["cap"], max(steps, default=1)) * 1.02)
        title = f"{name}" if phase == "training" else f"{name} ({phase})"
        ax.set_title(f"{title}: {rec['last']} of {rec['cap']}" + (" (stopped)" if rec.get("stopped") else ""), fontsize=9)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("grey: training loss (left); blue: validation (right); green: kept; red: cap", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _zoom(ax: Any, values: list[float], higher: bool = False) -> None:
    """Y range from the curve's tenth onwards: the first epochs' drop would flatten the rest into a line."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 5:
        return
    tail = finite[len(finite) // 10:]
    lo, hi = min(tail), max(tail)
    pad = 0.05 * (hi - lo) or 0.01 * abs(hi) or 1.0
    ax.set_ylim(lo - pad, hi + pad)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default: {','.join(METHODS)})")
    ap.add_argument("--n-cells", type=int, default=5000)
    ap.add_argument("--n-genes", type=int, default=2000)
    ap.add_argument("--out", default="runs/convergence")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per fit (torch, BLAS, numba)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--param", action="append", default=[], help="METHOD.key=value override (repeatable)")
    ap.add_argument("--replot", action="store_true", help="rewrite the tables and plot from OUT/results.json; no training")
    ap.add_argument("--update", action="store_true",
                    help="keep the other methods' results in OUT/results.json (same data settings only)")
    args = ap.parse_args(argv)

    from causcell_bench.registry import BUILTIN_METHODS
    from causcell_bench.threads import apply_thread_budget

    out = Path(args.out)
    if args.replot:
        saved = json.loads((out / "results.json").read_text())
        write_outputs(out, saved["results"], saved["meta"])
        print(f"rewrote {out}/summary.md, summary.csv, curves.csv, curves.png from results.json")
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in BUILTIN_METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; built-ins: {sorted(BUILTIN_METHODS)}")
    overrides = parse_params(args.param)
    apply_thread_budget(args.threads)
    t0 = time.perf_counter()
    train, _, spec = load_fold(args.n_cells, args.n_genes, seed=args.seed)
    print(f"data: {train.n_obs} training cells x {train.n_vars} genes ({time.perf_counter() - t0:.0f} s)", flush=True)
    meta = {"n_cells": args.n_cells, "n_genes": args.n_genes, "n_train": train.n_obs, "seed": args.seed,
            "threads": args.threads}
    results: dict[str, dict[str, Any]] = {}
    previous = out / "results.json"
    if args.update and previous.is_file():
        saved = json.loads(previous.read_text())
        if saved.get("meta") != meta:
            raise SystemExit(f"{previous} was made with {saved.get('meta')}, not {meta}; drop --update or change --out")
        results = {k: v for k, v in saved["results"].items() if k not in methods}
    for name in methods:
        print(f"{name}: fitting ...", flush=True)
        try:
            results[name] = run_method(name, overrides.get(name, {}), train, spec, args.seed, args.device)
        except Exception as e:  # noqa: BLE001 - one method failing must not lose the others' curves
            traceback.print_exc()
            results[name] = {"records": None, "error": f"failed: {type(e).__name__}: {e}"}
        res = results[name]
        for r in summary_rows(name, res):
            print("  " + ", ".join(f"{k}={v}" for k, v in r.items() if v not in ("", None)), flush=True)
        write_outputs(out, results, meta)  # after every method: a long run keeps what it has
    print(f"wrote {out}/summary.md, summary.csv, curves.csv, curves.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
