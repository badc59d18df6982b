"""Training time of the clean-room baselines (quick preset) on the `synthetic` SCM dataset.

Each method trains on 3,000 simulated cells x 500 genes (a further 750 cells
are held out) and is timed for fit, embed and generate; a held-out mean
per-cell Pearson correlation of the reconstruction is reported as a sanity
check. One function per method; ``METHODS`` maps a method name to it, so other
clean-room baselines add one entry.

Usage::

    python benchmarks/bench_baselines_cleanroom.py --out bench_out/baselines_cleanroom.json
    python benchmarks/bench_baselines_cleanroom.py --methods scDisInFact,CPA --threads 1

Timings are wall-clock on whatever machine runs this; on a shared machine
they are inflated by other load.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from causcell_bench.datasets import DatasetSpec, load, preprocess
from causcell_bench.methods.base import Method, dense_rows

N_TRAIN, N_TEST, N_GENES = 3000, 750, 500


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _mean_cell_pcc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    r = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(r.mean())


def _bench(method: Method, train: AnnData, test: AnnData, spec: DatasetSpec, seed: int) -> dict[str, Any]:
    """Fit, embed and generate once; timings in seconds plus a reconstruction sanity check."""
    cpu0 = time.process_time()
    _, fit_s = _timed(lambda: method.fit(train, spec, seed=seed))
    fit_cpu_s = time.process_time() - cpu0  # CPU seconds: less inflated than wall time on a shared machine
    _, embed_s = _timed(lambda: method.embed(test))
    gen, gen_s = _timed(lambda: method.generate(test, seed=seed))
    epochs = method.params.get("epochs")
    return {
        "fit_s": round(fit_s, 2),
        "fit_cpu_s": round(fit_cpu_s, 2),
        "epochs": epochs,
        "s_per_epoch": round(fit_s / epochs, 3) if epochs else None,
        "embed_s": round(embed_s, 3),
        "generate_s": round(gen_s, 3),
        "recon_pcc": round(_mean_cell_pcc(gen, dense_rows(test.X, slice(None))), 4),
        "params": method.params,
    }


def bench_scdisinfact(train: AnnData, test: AnnData, spec: DatasetSpec, *, preset: str, device: str, seed: int) -> dict[str, Any]:
    from causcell_bench.methods.scdisinfact import ScDisInFact

    m = ScDisInFact(preset=preset, device=device)
    out = _bench(m, train, test, spec, seed)
    out["final_condition_acc"] = round(m.history_[-1]["acc"], 4)  # training classifier accuracy on z_d
    return out


def bench_cpa(train: AnnData, test: AnnData, spec: DatasetSpec, *, preset: str, device: str, seed: int) -> dict[str, Any]:
    from causcell_bench.methods.cpa import CPA

    m = CPA(preset=preset, device=device)
    out = _bench(m, train, test, spec, seed)
    out["adv_acc_peak"] = round(max(h["adv_acc_mean"] for h in m.history_), 4)
    out["adv_acc_final"] = round(m.history_[-1]["adv_acc_mean"], 4)
    out["adv_majority_rate"] = round(float(np.mean(list(m.majority_.values()))), 4)
    return out


def bench_michigan(train: AnnData, test: AnnData, spec: DatasetSpec, *, preset: str, device: str, seed: int) -> dict[str, Any]:
    from causcell_bench.methods.michigan import MichiGAN
    from causcell_bench.models.michigan import estimate_total_correlation

    m = MichiGAN(preset=preset, device=device)
    out = _bench(m, train, test, spec, seed)
    out["epochs"], out["gan_steps"] = m.params["vae_epochs"], m.params["gan_steps"]  # stage 1 epochs, stage 2 generator updates
    out.update({k: round(v, 2) for k, v in m.timings_.items()})  # vae_s, gan_s
    out["code_tc"] = round(estimate_total_correlation(*m.code_stats(test)), 4)  # held-out TC of the code (nats)
    return out


BenchFn = Callable[..., dict[str, Any]]
METHODS: dict[str, BenchFn] = {
    "scDisInFact": bench_scdisinfact,
    "CPA": bench_cpa,
    "MichiGAN": bench_michigan,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {list(METHODS)}")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", default="bench_out/baselines_cleanroom.json")
    args = ap.parse_args()
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    raw, spec = load("synthetic", n_cells=N_TRAIN + N_TEST, n_genes=N_GENES, seed=args.seed)
    held_out = np.zeros(raw.n_obs, dtype=bool)
    held_out[np.random.default_rng(args.seed).choice(raw.n_obs, N_TEST, replace=False)] = True
    train, test = preprocess(raw[~held_out].copy(), raw[held_out].copy(), spec, n_hvg=None)

    results: dict[str, Any] = {}
    for name in names:
        results[name] = METHODS[name](train, test, spec, preset=args.preset, device=args.device, seed=args.seed)
        r = results[name]
        extra = {k: v for k, v in r.items() if k not in ("params", "fit_s", "epochs", "s_per_epoch")}
        print(f"{name:12s} fit {r['fit_s']:7.1f} s ({r['epochs']} epochs, {r['s_per_epoch']} s/epoch)  {extra}")

    record = {
        "benchmark": "baselines_cleanroom",
        "data": {"dataset": "synthetic", "n_train": int(train.n_obs), "n_test": int(test.n_obs), "n_genes": int(train.n_vars)},
        "preset": args.preset,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.platform(),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
