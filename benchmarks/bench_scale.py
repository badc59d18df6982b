"""Scale benchmark: one CausCell grid cell on a large `synthetic` dataset, stage by stage.

Stages (each timed, with this process's peak resident memory sampled in a background thread):

1. ``load``        - ``datasets.load("synthetic", n_cells=N, n_genes=G)`` (simulation included)
2. ``splits``      - ID folds (``make_splits``)
3. ``preprocess``  - one fold: log1p CP10k + HVG choice on the training part
4. ``fit``         - CausCell quick preset for a fixed number of optimiser steps (``--steps``)
5. ``embed``       - per-concept embeddings of the train and test parts
6. ``generate``    - reconstruction of the whole test fold (DDIM, the quick preset's sampler)
7. ``score_disentanglement`` / ``score_reconstruction`` - all metrics of the cell

The target is a peak RSS <= 8 GB for 100,000 cells x 2,000 genes: data stays sparse, models train
and generate in minibatches, quadratic metrics subsample.

Usage::

    python benchmarks/bench_scale.py                       # 100k x 2k, 200 steps -> bench_out/scale.json
    python benchmarks/bench_scale.py --n-cells 20000 --steps 50 --out bench_out/scale_small.json

Wall times are whatever this machine gives; on a shared machine they are inflated by other load
(the load average at start and end is recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

GB = 1024**3


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds; ``peak()`` since the last ``reset()``."""

    def __init__(self, interval: float = 0.05) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> int:
        rss = self.proc.memory_info().rss
        with self._lock:
            self._peak = max(self._peak, rss)
        return rss

    def reset(self) -> int:
        rss = self.proc.memory_info().rss
        with self._lock:
            self._peak = rss
        return rss

    def peak(self) -> int:
        self.sample()
        with self._lock:
            return self._peak

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Stages:
    """Times stages and records RSS at their start, their end and their sampled peak."""

    def __init__(self, sampler: RssSampler) -> None:
        self.sampler = sampler
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str, **info: Any) -> Iterator[dict[str, Any]]:
        start_rss = self.sampler.reset()
        row: dict[str, Any] = {"stage": name, **info}
        print(f"... {name}", flush=True)
        t0 = time.perf_counter()
        yield row
        row["seconds"] = time.perf_counter() - t0
        row["rss_start_gb"] = start_rss / GB
        row["rss_end_gb"] = self.sampler.sample() / GB
        row["rss_peak_gb"] = self.sampler.peak() / GB
        self.rows.append(row)
        print(f"    {row['seconds']:.1f} s, peak RSS {row['rss_peak_gb']:.2f} GB", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-cells", type=int, default=100_000)
    ap.add_argument("--n-genes", type=int, default=2000)
    ap.add_argument("--n-folds", type=int, default=5, help="ID folds; the test fold is n_cells / n_folds")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200, help="CausCell optimiser steps (param n_steps)")
    ap.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps (default: the quick preset's)")
    ap.add_argument("--params", type=json.loads, default={}, help="more CausCell overrides as JSON")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; 1 is faster on an oversubscribed machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-gb", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=Path("bench_out/scale.json"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from causcell_bench.datasets import load, make_splits, preprocess
    from causcell_bench.methods.causcell import CausCell
    from causcell_bench.metrics import score_disentanglement, score_reconstruction

    if args.threads:
        torch.set_num_threads(args.threads)
    params = {"n_steps": args.steps, **args.params}
    if args.ddim_steps is not None:
        params["ddim_steps"] = args.ddim_steps
    meta: dict[str, Any] = {
        "n_cells": args.n_cells, "n_genes": args.n_genes, "n_folds": args.n_folds, "fold": args.fold,
        "causcell_params": params, "device": args.device, "seed": args.seed,
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_start": os.getloadavg(), "target_gb": args.target_gb,
    }
    with RssSampler() as sampler:
        st = Stages(sampler)
        meta["rss_baseline_gb"] = sampler.sample() / GB
        with st.stage("load") as row:
            adata, spec = load("synthetic", n_cells=args.n_cells, n_genes=args.n_genes, seed=args.seed)
            x = adata.layers["counts"] if "counts" in adata.layers else adata.X
            row["shape"] = list(adata.shape)
            sparse = hasattr(x, "nnz")
            row["counts_nnz"] = int(x.nnz if sparse else np.count_nonzero(x))
            row["counts_sparse"] = sparse
        with st.stage("splits", setting="ID") as row:
            split = make_splits(adata, spec, "ID", n_folds=args.n_folds, seed=0)[args.fold]
            row["n_train"], row["n_test"] = int(split.train_idx.size), int(split.test_idx.size)
        with st.stage("preprocess") as row:
            train, test = preprocess(adata[split.train_idx], adata[split.test_idx], spec)
            row["n_genes_kept"] = int(train.n_vars)
            row["x_sparse"] = bool(hasattr(train.X, "nnz"))
        del x  # the full AnnData stays alive, as in a runner cell (inherited from the parent process)
        method = CausCell(preset="quick", device=args.device, **params)
        with st.stage("fit", steps=args.steps) as row:
            method.fit(train, spec, seed=args.seed)
            row["device"] = str(method._model().device)
            row["final_loss"] = {k: float(v) for k, v in (method.history_[-1] if method.history_ else {}).items()}
        with st.stage("embed"):
            emb_train = method.embed(train)
            emb_test = method.embed(test)
        with st.stage("generate", cells=int(test.n_obs), sampler=method.params["sampler"],
                      ddim_steps=int(method.params["ddim_steps"])):
            gen = method.generate(test, seed=args.seed)
        st.rows[-1]["cells_per_s"] = test.n_obs / st.rows[-1]["seconds"]
        with st.stage("score_disentanglement") as row:
            dis = score_disentanglement(emb_train, train.obs, emb_test, test.obs, spec.concepts, spec.fine_labels,
                                        seed=args.seed)
            row["n_metrics"] = len(dis)
        with st.stage("score_reconstruction") as row:
            rec = score_reconstruction(test.X, gen, test.obs, spec.concepts, list(test.var_names), seed=args.seed)
            row["n_metrics"] = len(rec)
            row["n_cells_clustered"] = int(rec.get("n_cells_clustered", -1))
        peak_sampled = max(r["rss_peak_gb"] for r in st.rows)
    meta["loadavg_end"] = os.getloadavg()
    # ru_maxrss (KiB on Linux) catches spikes shorter than the sampling interval
    peak_kernel = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    result = {
        **meta, "stages": st.rows, "peak_rss_gb_sampled": peak_sampled, "peak_rss_gb_kernel": peak_kernel,
        "within_target": max(peak_sampled, peak_kernel) <= args.target_gb,
        "total_seconds": sum(r["seconds"] for r in st.rows),
        "metrics": {**{k: dis[k] for k in sorted(dis) if k.startswith(("acc:", "dci", "mig", "nmi_fine"))},
                    **{k: rec[k] for k in ("pcc", "pcc_ct", "mse", "nmi_geom", "ari_geom", "marker", "marker_ct")
                       if k in rec}},
    }
    _print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(f"written: {args.out}")
    return result


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table("stage", "wall s", "RSS start GB", "RSS peak GB", "RSS end GB", "notes",
              title=f"bench_scale: synthetic {result['n_cells']:,} x {result['n_genes']:,}")
    skip = {"stage", "seconds", "rss_start_gb", "rss_peak_gb", "rss_end_gb", "final_loss"}
    for r in result["stages"]:
        notes = ", ".join(f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if k not in skip)
        t.add_row(r["stage"], f"{r['seconds']:.1f}", f"{r['rss_start_gb']:.2f}", f"{r['rss_peak_gb']:.2f}",
                  f"{r['rss_end_gb']:.2f}", notes)
    console = Console(width=160)
    console.print(t)
    verdict = "within" if result["within_target"] else "ABOVE"
    console.print(f"peak RSS {result['peak_rss_gb_sampled']:.2f} GB sampled, {result['peak_rss_gb_kernel']:.2f} GB "
                  f"(kernel ru_maxrss): {verdict} the {result['target_gb']:.0f} GB target; total "
                  f"{result['total_seconds']:.0f} s; load average {result['loadavg_start'][0]:.1f} -> "
                  f"{result['loadavg_end'][0]:.1f} on {result['cpus']} CPUs")


if __name__ == "__main__":
    main()
