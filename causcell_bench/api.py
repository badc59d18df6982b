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
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from causcell_bench.errors import BenchError
from causcell_bench.fileio import atomic_path, atomic_write_text
from causcell_bench.interrupts import check_interrupt, watching


@dataclass
class BenchmarkResult:
    """What :func:`benchmark` returns: the run directory and its tables (``report/`` holds the files).

    Attributes
    ----------
    run_dir : Path
        The run directory (one JSON per grid cell; calling :func:`benchmark` again resumes it).
    results : DataFrame
        Tidy metrics, one row per dataset x method x setting x fold x seed x metric.
    summary : DataFrame
        Mean, sd and n of every metric over folds and seeds.
    scores : DataFrame
        Control-scaled group, category and overall scores and ranks.
    status : DataFrame
        One row per cell: status, error, timings, memory.
    failed : DataFrame
        The rows of ``status`` whose cell failed or was interrupted, with the error of each.
    files : dict
        The report's files by name (empty with ``report=False``).
    """

    run_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    scores: pd.DataFrame
    status: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> pd.DataFrame:
        return self.status[self.status["status"].isin(["failed", "interrupted"])]

    def __repr__(self) -> str:
        ok = int((self.status["status"] == "ok").sum()) if len(self.status) else 0
        methods = list(dict.fromkeys(self.status["method"])) if len(self.status) else []
        return (f"BenchmarkResult(run_dir={str(self.run_dir)!r}, methods={methods}, cells: {ok} ok, "
                f"{len(self.failed)} failed)")

    def plot(self, path: str | Path | None = None) -> Any:
        """Draw the funky heatmap and return the matplotlib figure.

        Parameters
        ----------
        path : str or Path, optional
            The file to write, its format taken from the extension (``fig.png``, ``fig.pdf``,
            ``fig.svg``). Default: PNG and SVG under ``run_dir/report/``.

        Returns
        -------
        matplotlib.figure.Figure
            The figure (a notebook shows it).
        """
        from causcell_bench.leaderboard import heatmap

        if self.summary.empty:
            raise BenchError("no results to plot: every cell failed (see .failed)")
        figures: list[Any] = []
        if path is None:
            target, exact = self.run_dir / "report" / "heatmap", False
        else:
            target, exact = Path(path), True
            if target.is_dir() or str(path).endswith(("/", "\\")) or not target.suffix:
                raise BenchError(f"plot({str(path)!r}): give a file name with an extension, e.g. fig.png, fig.pdf "
                                 "or fig.svg")
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            heatmap(self.summary, self.scores, target, exact=exact, figures=figures)
        except BenchError:  # a full disk included (DiskError)
            raise
        except OSError as e:
            raise BenchError(f"plot: cannot write {target} ({e.strerror or e}); choose a writable location") from e
        except Exception as e:  # a plotting library's failure: one line, as the CLI's report says it
            raise BenchError(f"the heatmap could not be drawn ({type(e).__name__}: {e}); the tables "
                             "(res.summary, res.scores) are complete") from e
        return figures[0] if len(figures) == 1 else figures


def _legacy_fingerprint(adata: AnnData, layer: str | None) -> str:
    """The fingerprint stamped before labels and count values were covered (names, shape, total): a run
    directory stamped with it is accepted when it matches, and its stamp upgraded."""
    x = adata.layers[layer] if layer else adata.X
    total = float(np.asarray(x.sum(dtype=np.float64)))
    h = hashlib.sha256()
    for part in (list(map(str, adata.obs_names)), list(map(str, adata.var_names)), [repr(total), str(x.shape)]):
        h.update(json.dumps(part).encode())
    return h.hexdigest()[:16]


def _fingerprint(adata: AnnData, layer: str | None, concepts: Sequence[str]) -> str:
    """Identity of an AnnData's cells, genes, counts and concept labels (to refuse a different one in
    the same run): names, shape, the count total and a hash of the count values and of obs[concepts]."""
    import scipy.sparse as sp

    x = adata.layers[layer] if layer else adata.X
    h = hashlib.sha256()
    for part in (list(map(str, adata.obs_names)), list(map(str, adata.var_names)), [str(x.shape)]):
        h.update(json.dumps(part).encode())
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        for a in (x.indptr, x.indices, x.data):
            h.update(np.ascontiguousarray(a).tobytes())
    else:
        h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
    for c in concepts:
        h.update(json.dumps([c, adata.obs[c].astype(str).tolist()]).encode())
    return "v2:" + h.hexdigest()[:16]


def _as_list(value: str | Sequence[Any] | None, what: str) -> list[Any] | None:
    """A comma-separated string or a sequence as a list (``concepts="treatment"`` is one concept)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    try:
        return list(value)
    except TypeError:
        raise BenchError(f"{what}={value!r}: give a list or a comma-separated string") from None


def _check_concept_columns(adata: AnnData, concepts: Sequence[str]) -> None:
    for c in concepts:
        kind = pd.api.types.infer_dtype(adata.obs[c], skipna=True)
        if kind.startswith("mixed"):
            types = sorted({type(v).__name__ for v in adata.obs[c].dropna()})
            raise BenchError(f"concept column {c!r} mixes value types ({', '.join(types)}); make it one type, e.g. "
                             f"adata.obs[{c!r}] = adata.obs[{c!r}].astype(str)")


def _default_start_method() -> str:
    """``spawn`` under an IPython kernel or shell, ``fork`` in a plain interpreter (see :func:`benchmark`)."""
    import sys

    ipython = sys.modules.get("IPython")
    try:
        in_ipython = ipython is not None and ipython.get_ipython() is not None
    except Exception:  # noqa: BLE001 - a broken IPython install is not a reason to fail
        in_ipython = False
    return "spawn" if in_ipython or sys.platform == "win32" else "fork"


def _spawned_child() -> bool:
    """Whether this process is a spawned cell process re-running the user's script (no main guard)."""
    import multiprocessing as mp

    return mp.parent_process() is not None and mp.current_process().name != "MainProcess"


def benchmark(
    adata: AnnData,
    *,
    concepts: str | Sequence[str],
    dag: Iterable[Any] | str | None = None,
    methods: str | Sequence[str] = "all",
    settings: str | Sequence[str] = ("ID", "OOD"),
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
    cf_concept: str | None = None,
    preset: str = "quick",
    device: str = "auto",
    jobs: int = 1,
    threads: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    probe: str = "logreg",
    cell_parts: int = 5,
    truth_samples: int = 10,
    retry_failed: bool = False,
    start_method: str | None = None,
    progress: bool = True,
    report: bool = True,
    force_out: bool = False,
) -> BenchmarkResult:
    """Benchmark ``methods`` on ``adata``: the grid of ``causcell-bench run``, from a notebook.

    The request is checked as the CLI checks it (:meth:`causcell_bench.config.RunConfig.request`, then
    the splits) before anything trains; every refusal raises :class:`~causcell_bench.errors.BenchError`
    with the CLI's one-line message. The data is written once to ``out/data/<name>.h5ad`` so that every
    cell process reads the same cells; calling again with the same data resumes (finished cells are
    kept), with other data or labels in the same ``out`` is refused.

    Parameters
    ----------
    adata : AnnData
        Raw counts in ``X`` or ``layers[counts_layer]``.
    concepts : str or list of str
        obs columns of the concepts (a string is one column, or several separated by commas).
    dag : list of (parent, child) pairs, or "a->b" strings, optional
        Causal edges between concepts.
    methods : str or list of str
        Method names, ``"all"`` or ``"controls"``.
    settings : str or list of str
        ``"ID"``, ``"OOD"`` or both; ``"HOLDOUT"`` is added when ``holdout`` is given.
    folds : list of int, optional
        Fold indices to run (default: all ``n_folds``).
    n_folds : int
        Folds of each split.
    seeds : list of int
        Model seeds.
    out : str or Path
        Run directory.
    name : str
        Dataset name in the results.
    counts_layer : str, optional
        Layer with the raw counts (default: ``X``).
    fine_labels : dict, optional
        Concept -> obs column of finer labels (NMI/ARI).
    perturbation : str, optional
        The concept CPA treats as the perturbation, and held-out population tasks intervene on.
    n_hvg : int, optional
        Highly variable genes to keep (chosen on training cells).
    holdout : list of dict, optional
        Label combinations held out as the HOLDOUT setting's fold, e.g.
        ``[{"condition": "stimulated", "cell_type": "CD4T"}]``.
    cf_concept : str, optional
        Concept the held-out population task intervenes on.
    preset : str
        ``"quick"``, ``"paper"`` or ``"test"``.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    jobs : int
        Grid cells run in parallel.
    threads : int, optional
        CPU threads per cell (default 1).
    params : dict, optional
        Per-method parameter overrides, e.g. ``{"scVI": {"n_latent": 5}}``.
    probe : str
        ``"logreg"`` or ``"knn"``.
    cell_parts : int
        With one fold x seed, test cells scored in this many parts for rank intervals (0: off).
    truth_samples : int
        Draws a stochastic method averages against simulated counterfactual truths.
    retry_failed : bool
        Rerun cells recorded as failed.
    start_method : str, optional
        How cell processes start: ``"fork"``, ``"spawn"`` or ``"forkserver"``. Default: ``"spawn"`` in
        Jupyter/IPython (forking a kernel that already ran threaded code can hang), ``"fork"`` elsewhere
        (a script, ``python -c``, stdin), where spawned processes would re-run the caller's script.
    progress : bool
        Show progress bars.
    report : bool
        Build ``out/report/`` (tables, heatmap, HTML).
    force_out : bool
        Write into an ``out`` folder that holds other files and no run.

    Returns
    -------
    BenchmarkResult
        Tables of the run; ``.failed`` lists cells that failed (each also given in a warning).

    Raises
    ------
    BenchError
        For every refused input, with one line naming the problem and the fix; also when every cell
        failed (the errors are listed).
    """
    import warnings

    from causcell_bench.config import RunConfig
    from causcell_bench.datasets.loaders import as_edges
    from causcell_bench.grid.executors.local import START_METHODS
    from causcell_bench.leaderboard import build_report, part_table, scores, status_table, summarize, tidy_table
    from causcell_bench.registry import resolve_methods
    from causcell_bench.runner import run_grid
    from causcell_bench.store import check_out_dir, check_run_out, read_run

    if _spawned_child():
        raise BenchError("benchmark() was called again inside a cell process: a script that calls it must do so "
                         "under `if __name__ == \"__main__\":` (spawned processes re-run the script), or pass "
                         "start_method=\"fork\"")
    if not isinstance(adata, AnnData):
        raise BenchError(f"benchmark() needs an AnnData, got {type(adata).__name__}")
    concept_list = _as_list(concepts, "concepts") or []
    if not concept_list:
        raise BenchError("concepts is empty; name the obs columns of the concepts, e.g. concepts=['condition', 'cell_type']")
    missing = [c for c in concept_list if c not in adata.obs.columns]
    if missing:
        raise BenchError(f"concept column(s) {missing} not in adata.obs; available: {list(adata.obs.columns)}")
    _check_concept_columns(adata, concept_list)
    if counts_layer is not None and counts_layer not in adata.layers:
        raise BenchError(f"counts_layer {counts_layer!r} not in adata.layers; layers are {list(adata.layers)}")
    for what, value in (("retry_failed", retry_failed), ("progress", progress), ("report", report),
                        ("force_out", force_out)):
        if not isinstance(value, bool):
            raise BenchError(f"{what}={value!r}: give True or False")
    if not isinstance(cell_parts, int) or cell_parts < 0:
        raise BenchError(f"cell_parts={cell_parts!r}: give 0 (off) or a number of parts such as 5")
    kw: dict[str, Any] = {}
    if counts_layer:
        kw["counts_layer"] = counts_layer
    if fine_labels:
        kw["fine_labels"] = dict(fine_labels)
    if perturbation:
        kw["perturbation"] = perturbation
    run_dir = Path(out)
    check_out_dir(run_dir, flag="out=")
    data_dir = run_dir / "data"
    h5ad, stamp = (data_dir / f"{name}.h5ad").resolve(), data_dir / f"{name}.fingerprint"
    # every option is checked before anything is written
    config = RunConfig.request(
        param_flag="params:", datasets=[str(h5ad)],
        methods=resolve_methods(methods if isinstance(methods, str) else list(methods)),
        settings=_as_list(settings, "settings"), n_folds=n_folds,
        folds=_as_list(folds, "folds") if folds is not None else None, seeds=_as_list(seeds, "seeds"),
        preset=preset, device=device, jobs=jobs, threads=threads, dataset_kwargs=kw,
        method_params={k: dict(v) for k, v in (params or {}).items()}, concepts=concept_list,
        edges=as_edges(dag or []), n_hvg=n_hvg, holdout=[dict(h) for h in holdout] if holdout else None,
        cf_concept=cf_concept, probe=probe, cell_parts=cell_parts, truth_samples=truth_samples,
    )
    if (crowded := config.oversubscription()) is not None:
        warnings.warn(crowded, stacklevel=2)
    method = start_method or _default_start_method()
    if method not in START_METHODS:
        raise BenchError(f"start_method={method!r}: use one of {', '.join(START_METHODS)}")
    if not force_out:
        check_run_out(run_dir, flag="out=", force="pass force_out=True")
    created = not run_dir.exists()
    fp = _fingerprint(adata, counts_layer, concept_list)
    if stamp.is_file() and stamp.read_text().strip() == _legacy_fingerprint(adata, counts_layer):
        atomic_write_text(stamp, fp + "\n")  # stamped by an older version that did not cover labels: take it over
    if stamp.is_file() and stamp.read_text().strip() != fp:
        raise BenchError(f"{run_dir} already holds another dataset named {name!r} (other cells, counts or concept "
                         f"labels); pass another out= or name=, or delete {run_dir} to start afresh")
    if not h5ad.is_file() or not stamp.is_file():
        with atomic_path(h5ad) as tmp:
            adata.write_h5ad(tmp)
        atomic_write_text(stamp, fp + "\n")

    try:
        # Ctrl-C (a notebook's interrupt) raises KeyboardInterrupt as usual; one a library swallowed
        # still stops the call before any result is read
        with watching():
            run_grid(config, run_dir, progress=progress, start_method=method, retry_failed=retry_failed)
            check_interrupt()
    except BenchError:
        if created and {p.name for p in run_dir.iterdir()} <= {"data"}:
            shutil.rmtree(run_dir, ignore_errors=True)  # a refused request leaves nothing behind
        raise
    records = read_run(run_dir).records  # current cells only: stale and unreadable ones are left out
    asked = set(config.methods)
    records = [r for r in records if r.get("method") in asked]
    status = status_table(records)
    # a cell stopped in its own process (a signal to it, or an interrupt a library swallowed there) is
    # not done either: named like a failure, and the next call reruns it
    failed = status[status["status"].isin(["failed", "interrupted"])]
    lines = [f"{r.method}/{r.setting}/fold{r.fold}/seed{r.seed}: {r.error}" for r in failed.itertuples()]
    if len(failed) and not (status["status"] == "ok").any():
        raise BenchError(f"every cell failed or was interrupted ({len(failed)}): " + "; ".join(lines[:3])
                         + (f"; and {len(lines) - 3} more (their records are in {run_dir / 'cells'})"
                            if len(lines) > 3 else ""))
    for r, line in zip(failed.itertuples(), lines, strict=True):
        warnings.warn(f"cell failed: {line} (retry with retry_failed=True)" if r.status == "failed" else
                      f"cell interrupted: {line} (calling again reruns it)", stacklevel=2)
    tidy = tidy_table(records)
    summary = summarize(tidy)
    files = build_report(run_dir) if report else {}
    if "heatmap_error" in files:  # the tables are complete without it, but the user must not miss the gap
        why = " ".join(Path(files["heatmap_error"]).read_text().split())[:200]
        warnings.warn(f"the heatmap could not be drawn ({why}; {files['heatmap_error']}); the tables and "
                      "leaderboard are complete", stacklevel=2)
    # the report already computed the scores (its bootstrap is the slow part): read them back
    score_table = pd.read_csv(files["scores"]) if "scores" in files else scores(summary, tidy=tidy, parts=part_table(records))
    if "method" in score_table.columns:
        score_table = score_table[score_table["method"].isin(asked)]
    return BenchmarkResult(run_dir, tidy, summary, score_table, status, files)
