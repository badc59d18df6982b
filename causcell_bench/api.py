"""A notebook entry point in the spirit of scib-metrics' ``Benchmarker``: hand over an AnnData, get
tidy DataFrames and a figure back.

    import causcell_bench as cb
    res = cb.benchmark(adata, concepts=["condition", "cell_type"], dag=[("condition", "cell_type")],
                       methods=["CausCell", "scVI"], folds=[0], out="runs/nb")
    res.scores          # control-scaled scores, ranks
    res.plot()          # the funky heatmap

It runs the same grid as ``causcell-bench run`` (one JSON per cell under ``out``), so calling it again
resumes: finished cells are kept, only missing or changed ones run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from causcell_bench.errors import BenchError


@dataclass
class BenchmarkResult:
    """What :func:`benchmark` returns: the run directory and its tables (see ``report/`` for files)."""

    run_dir: Path
    results: pd.DataFrame  # tidy: one row per dataset x method x setting x fold x seed x metric
    summary: pd.DataFrame  # mean, sd and n over folds and seeds
    scores: pd.DataFrame  # control-scaled group, category and overall scores, ranks
    status: pd.DataFrame  # one row per cell: status, error, timings, memory
    files: dict[str, Path] = field(default_factory=dict)

    def plot(self, path: str | Path | None = None) -> Any:
        """Draw the funky heatmap; returns the written PNG path(s) and, in a notebook, shows the image."""
        from causcell_bench.leaderboard import heatmap

        out = Path(path) if path else self.run_dir / "report" / "heatmap"
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = [p for p in heatmap(self.summary, self.scores, out) if p.suffix == ".png"]
        try:  # inline display when running under IPython; a plain script just gets the paths
            from IPython.display import Image, display

            for p in paths:
                display(Image(filename=str(p)))
        except ImportError:
            pass
        return paths


def _fingerprint(adata: AnnData, layer: str | None) -> str:
    """Cheap identity of an AnnData's cells, genes and counts (to refuse a different one in the same run)."""
    x = adata.layers[layer] if layer else adata.X
    total = float(np.asarray(x.sum(dtype=np.float64)))
    h = hashlib.sha256()
    for part in (list(map(str, adata.obs_names)), list(map(str, adata.var_names)), [repr(total), str(x.shape)]):
        h.update(json.dumps(part).encode())
    return h.hexdigest()[:16]


def benchmark(
    adata: AnnData,
    *,
    concepts: Sequence[str],
    dag: Iterable[Any] | str | None = None,
    methods: str | Sequence[str] = "all",
    settings: Sequence[str] = ("ID", "OOD"),
    folds: Sequence[int] | None = None,
    n_folds: int = 5,
    seeds: Sequence[int] = (0,),
    out: str | Path = "runs/notebook",
    name: str = "adata",
    counts_layer: str | None = None,
    fine_labels: Mapping[str, str] | None = None,
    perturbation: str | None = None,
    n_hvg: int | None = None,
    holdout: Sequence[Mapping[str, str]] | None = None,
    preset: str = "quick",
    device: str = "auto",
    jobs: int = 1,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    start_method: str = "spawn",
    progress: bool = True,
    report: bool = True,
    force_out: bool = False,
) -> BenchmarkResult:
    """Benchmark ``methods`` on ``adata`` (raw counts in ``X`` or ``layers[counts_layer]``; ``concepts``
    are obs columns, ``dag`` their causal edges as ``(parent, child)`` pairs or ``"a->b"`` strings).

    The data is written once to ``out/data/<name>.h5ad`` so that every cell process (and a Ray worker)
    reads the same cells; a later call with another AnnData in the same ``out`` is refused. Cells start
    with ``start_method="spawn"`` by default: forking a notebook process that already ran threaded
    code can hang. An ``out`` folder that holds other files and no run is refused unless ``force_out``.
    Everything else is as ``causcell-bench run`` (see its ``--help``).
    """
    from causcell_bench.config import RunConfig
    from causcell_bench.datasets.loaders import as_edges
    from causcell_bench.leaderboard import build_report, part_table, scores, status_table, summarize, tidy_table
    from causcell_bench.registry import resolve_methods
    from causcell_bench.runner import run_grid
    from causcell_bench.store import check_run_out, read_run

    if not isinstance(adata, AnnData):
        raise BenchError(f"benchmark() needs an AnnData, got {type(adata).__name__}")
    missing = [c for c in concepts if c not in adata.obs.columns]
    if missing:
        raise BenchError(f"concept column(s) {missing} not in adata.obs; available: {list(adata.obs.columns)}")
    if counts_layer is not None and counts_layer not in adata.layers:
        raise BenchError(f"counts_layer {counts_layer!r} not in adata.layers; layers are {list(adata.layers)}")
    run_dir = Path(out)
    if not force_out:
        check_run_out(run_dir, flag="out=", force="pass force_out=True")
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    h5ad, stamp = (data_dir / f"{name}.h5ad").resolve(), data_dir / f"{name}.fingerprint"
    fp = _fingerprint(adata, counts_layer)
    if stamp.is_file() and stamp.read_text().strip() != fp:
        raise BenchError(f"{run_dir} already holds another dataset named {name!r}; pass another out= or name=")
    if not h5ad.is_file() or not stamp.is_file():
        adata.write_h5ad(h5ad)
        stamp.write_text(fp + "\n")

    kw: dict[str, Any] = {}
    if counts_layer:
        kw["counts_layer"] = counts_layer
    if fine_labels:
        kw["fine_labels"] = dict(fine_labels)
    if perturbation:
        kw["perturbation"] = perturbation
    settings = list(settings) + (["HOLDOUT"] if holdout and "HOLDOUT" not in settings else [])
    config = RunConfig(
        datasets=[str(h5ad)], methods=resolve_methods(methods if isinstance(methods, str) else list(methods)),
        settings=settings, n_folds=n_folds, folds=list(folds) if folds is not None else None,  # type: ignore[arg-type]
        seeds=list(seeds), preset=preset, device=device, jobs=jobs, dataset_kwargs=kw,
        method_params={k: dict(v) for k, v in (params or {}).items()}, concepts=list(concepts),
        edges=as_edges(dag or []), n_hvg=n_hvg, holdout=[dict(h) for h in holdout] if holdout else None,
    )
    run_grid(config, run_dir, progress=progress, start_method=start_method)
    records = read_run(run_dir).records  # current cells only: stale and unreadable ones are left out
    tidy = tidy_table(records)
    summary = summarize(tidy)
    files = build_report(run_dir) if report else {}
    # the report already computed the scores (its bootstrap is the slow part): read them back
    score_table = pd.read_csv(files["scores"]) if "scores" in files else scores(summary, tidy=tidy, parts=part_table(records))
    return BenchmarkResult(run_dir, tidy, summary, score_table, status_table(records), files)
