"""The grid runner: expand (dataset x method x setting x fold x seed) cells, run
them, store one JSON each, resume without redoing finished cells.

Each cell runs in a forked child process: the parent loads every dataset and
computes the splits once, children inherit them copy-on-write (data is read
once, not once per cell), a crash or out-of-memory kill in one method is
recorded as that cell's failure, and the per-cell peak memory is the child's
own.

Forking is unsafe in a parent that has already run OpenMP-parallel code (a
notebook that trained a model with several threads: GNU OpenMP's pool does not
survive a fork, and the child can hang). Such callers pass
``start_method="spawn"`` (or ``"forkserver"``): each child then starts a fresh
interpreter and loads its dataset itself, as a Ray worker does.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import resource
import signal
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from causcell_bench.config import RunConfig
from causcell_bench.errors import BenchError
from causcell_bench.store import CellKey, ResultStore, atomic_write_json

VERSIONED = ("causcell-bench", "torch", "numpy", "scanpy", "anndata", "scikit-learn", "scvi-tools", "biolord", "pertpy")

# Datasets loaded before forking (or once per Ray worker), keyed by name and everything in the
# run config that shapes the data, so two runs in one process never share a stale copy.
_DATA: dict[tuple[str, str], Any] = {}
_SPLITS: dict[tuple[str, str, str], Any] = {}


START_METHODS = ("fork", "spawn", "forkserver")


def _data_id(name: str, config: RunConfig) -> tuple[str, str]:
    return (name, json.dumps(config.data_key(), sort_keys=True, default=str) + str(config.data_dir))


@dataclass
class CellOutcome:
    key: CellKey
    status: str  # "ok" | "failed" | "skipped" (done before) | "skipped_redundant" (see redundant_cells)
    seconds: float
    error: str | None = None


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def expand_grid(config: RunConfig) -> list[CellKey]:
    return [
        CellKey(d, m, s, f, seed)
        for d in config.datasets
        for s in config.settings
        for f in config.folds_of(s)
        for m in config.methods
        for seed in config.seeds
    ]


# --- data preparation (parent) ---------------------------------------------
def load_dataset(name: str, config: RunConfig) -> tuple[Any, Any]:
    """Load one dataset with the run's overrides applied (concepts, DAG, HVGs)."""
    from causcell_bench.datasets import validate_adata
    from causcell_bench.registry import dataset_loader

    kw = dict(config.dataset_kwargs)
    if config.data_dir:
        kw.setdefault("data_dir", config.data_dir)
    if name.endswith((".h5ad", ".toml")) and not Path(name).expanduser().is_file():
        raise BenchError(f"dataset file {name} does not exist; check the path")
    if name.endswith(".h5ad"):
        # a bare h5ad has no spec: the concepts and DAG come from --concepts / --dag
        if config.concepts is None:
            raise BenchError(f"{name} is a bare .h5ad: name its concept columns with --concepts a,b,c "
                             "(and the DAG with --dag 'a->c,b->c'), or write a TOML spec")
        kw.update(concepts=config.concepts, edges=config.edges or [])
    adata, spec = dataset_loader(name)(**kw)
    if config.concepts is not None or config.edges is not None:
        spec = spec.with_overrides(concepts=config.concepts, edges=config.edges)
    if config.n_hvg is not None:
        spec = spec.model_copy(update={"n_hvg": config.n_hvg})
    validate_adata(adata, spec, n_folds=config.n_folds)
    return adata, spec


def prepare(config: RunConfig, run_dir: Path, log: Callable[[str], None] = print) -> dict[tuple[str, str], str]:
    """Load datasets and make (or reuse) the saved splits. Returns {(dataset, setting): error} for
    pairs whose splits cannot be made, so their cells are recorded as failed instead of aborting."""
    from causcell_bench.datasets import load_splits, make_holdout_split, make_splits, save_splits

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.model_dump())
    problems: dict[tuple[str, str], str] = {}
    for name in config.datasets:
        did = _data_id(name, config)
        if did not in _DATA:
            _DATA[did] = load_dataset(name, config)
        adata, spec = _DATA[did]
        stamp = run_dir / "splits" / _safe(name) / "data_key.json"
        key_now = json.loads(json.dumps(config.data_key(), default=str))
        if stamp.is_file() and json.loads(stamp.read_text()) != key_now:
            raise BenchError(
                f"{run_dir} was made with other data settings for {name} (cells, genes, folds, concepts or DAG); "
                "use a new --out directory for this run"
            )
        for setting in config.settings:
            path = run_dir / "splits" / _safe(name) / f"{setting}.json"
            try:
                if path.is_file():
                    splits = load_splits(path)
                else:
                    splits = (make_holdout_split(adata, spec, config.holdout or [], seed=config.split_seed)
                              if setting == "HOLDOUT" else
                              make_splits(adata, spec, setting, n_folds=config.n_folds, seed=config.split_seed))
                    save_splits(splits, path)
                    atomic_write_json(stamp, key_now)
                _SPLITS[(*did, setting)] = splits
            except BenchError as e:
                problems[(name, setting)] = str(e)
                log(f"[yellow]cannot make {setting} splits for {name}: {e}[/yellow]")
    return problems


def _safe(name: str) -> str:
    return name.replace("/", "_").replace("\\", "_")


# --- one cell (child) --------------------------------------------------------
def cell_inputs(config: RunConfig, key: CellKey, run_dir: Path) -> tuple[Any, Any, Any]:
    """(AnnData, spec, split) of a cell: inherited from the parent when forked, else loaded once per
    worker process (as a Ray worker does) with the splits the parent saved in the run directory."""
    from causcell_bench.datasets import load_splits

    did = _data_id(key.dataset, config)
    if did not in _DATA:
        _DATA[did] = load_dataset(key.dataset, config)
    if (*did, key.setting) not in _SPLITS:
        _SPLITS[(*did, key.setting)] = load_splits(run_dir / "splits" / _safe(key.dataset) / f"{key.setting}.json")
    adata, spec = _DATA[did]
    return adata, spec, _SPLITS[(*did, key.setting)][key.fold]


def evaluate_cell(config: RunConfig, key: CellKey, run_dir: Path) -> dict[str, Any]:
    """Fit one method on one fold and score it; returns the metrics part of the record."""
    from causcell_bench import metrics as M
    from causcell_bench.datasets import preprocess
    from causcell_bench.registry import get_method

    adata, spec, split = cell_inputs(config, key, run_dir)
    t = {}
    t0 = time.perf_counter()
    train, test = preprocess(adata[split.train_idx], adata[split.test_idx], spec)
    t["preprocess_s"] = time.perf_counter() - t0

    cls = get_method(key.method)
    method = cls(preset=config.preset, device=config.device, **config.method_params.get(key.method, {}))
    caps = cls.capabilities
    t0 = time.perf_counter()
    method.fit(train, spec, seed=key.seed)
    t["fit_s"] = time.perf_counter() - t0

    values: dict[str, float] = {}
    na: list[str] = []
    if caps.embedding != "none":
        t0 = time.perf_counter()
        emb_train, emb_test = method.embed(train), method.embed(test)
        t["embed_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ancestors = {c: [a for a in spec.concepts if c in spec.descendants(a)] for c in spec.concepts}
        values.update(M.score_disentanglement(
            emb_train, train.obs, emb_test, test.obs, spec.concepts, spec.fine_labels,
            probe=config.probe, seed=key.seed, ancestors=ancestors if spec.edges else None,
        ))
        t["score_disentanglement_s"] = time.perf_counter() - t0
    else:
        na.append("disentanglement")
    if caps.reconstruct:
        t0 = time.perf_counter()
        gen = method.generate(test, seed=key.seed)
        t["generate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        values.update(M.score_reconstruction(test.X, gen, test.obs, spec.concepts, list(test.var_names), seed=key.seed))
        t["score_reconstruction_s"] = time.perf_counter() - t0
    else:
        na.append("reconstruction")
    if caps.counterfactual and config.counterfactual:
        from causcell_bench import evaluation

        t0 = time.perf_counter()
        if evaluation.has_truth(test):
            values.update(evaluation.score_against_truth(
                method, train, test, spec, seed=key.seed, factual=gen if caps.reconstruct else None))
        if key.setting in ("OOD", "HOLDOUT") and split.held_out:
            values.update(evaluation.score_heldout_populations(
                method, train, test, spec, split.held_out, seed=key.seed, cf_concept=config.cf_concept))
        t["counterfactual_s"] = time.perf_counter() - t0
    else:
        na.append("counterfactual")
    degenerate = M.degenerate_metrics(test.obs, spec.concepts, spec.fine_labels)
    if values.get("n_populations") == 1.0 and "pop_rank" in values:
        degenerate["pop_rank"] = "degenerate: one held-out population (a rank needs two)"
    degenerate = {m: why for m, why in degenerate.items() if m in values}
    values.update({m: float("nan") for m in degenerate})
    return {
        "metrics": values, "na": na, "timings": t, "degenerate": degenerate, "kind": getattr(cls, "kind", "method"),
        "n_train": int(train.n_obs), "n_test": int(test.n_obs), "n_genes": int(train.n_vars),
        "capabilities": caps.as_dict(),
    }


def execute_cell(config: RunConfig, key: CellKey, run_dir: str | Path, threads: int | None = None) -> dict[str, Any]:
    """Run one cell and write its record, whatever happens; return the record.

    Executor-agnostic: the local executor calls it in a forked child, a Ray task calls it in a worker.
    ``threads`` (default ``config.effective_threads()``): the executor passes the driver's value, so the
    hash written here matches the driver's even where a worker's environment differs.
    """
    from causcell_bench.threads import apply_thread_budget

    threads = threads or config.effective_threads()
    apply_thread_budget(threads)  # torch, numba, BLAS/OpenMP and env vars: one budget for the whole cell
    store = ResultStore(run_dir)
    t0 = time.perf_counter()
    base = {
        "dataset": key.dataset, "method": key.method, "setting": key.setting, "fold": key.fold, "seed": key.seed,
        "config_hash": config.cell_hash(key.dataset, key.method, key.setting, key.fold, key.seed, threads=threads),
        "preset": config.preset, "device": config.device, "threads": threads, "versions": package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        result = evaluate_cell(config, key, Path(run_dir))
        record = {**base, "status": "ok", **result}
    except Exception as e:  # noqa: BLE001 - a failing method is recorded and the grid goes on
        record = {
            **base, "status": "failed", "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=20)[-4000:],
        }
    record["total_s"] = time.perf_counter() - t0
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    store.write(key, record)
    return record


def _child(config: RunConfig, key: CellKey, run_dir: str, threads: int) -> None:
    """Cell process body: Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    execute_cell(config, key, run_dir, threads)


# --- the grid (parent) -------------------------------------------------------
def preload(methods: Iterable[str]) -> None:
    """Import what every cell needs once in the parent, so forked cells start warm."""
    import scanpy  # noqa: F401
    import sklearn.cluster
    import sklearn.linear_model  # noqa: F401
    import torch  # noqa: F401

    from causcell_bench import metrics  # noqa: F401
    from causcell_bench.registry import get_method

    for name in methods:
        for module in get_method(name).preload_modules:
            try:
                importlib.import_module(module)
            except ImportError:
                pass  # the cell itself will report the missing package


def _is_done(record: dict[str, Any] | None, config: RunConfig, key: CellKey, retry_failed: bool) -> bool:
    if record is None:
        return False
    if record.get("config_hash") != config.cell_hash(key.dataset, key.method, key.setting, key.fold, key.seed):
        return False  # stale: settings changed since it ran
    if record.get("status") == "skipped_redundant":
        return key.method == IND and _ind_mirrors_causcell(config)  # else CausCell_IND must run after all
    return record.get("status") == "ok" or (record.get("status") == "failed" and not retry_failed)


IND = "CausCell_IND"
REDUNDANT_NOTE = "identical to CausCell: the dataset has no DAG edges"


def _ind_mirrors_causcell(config: RunConfig) -> bool:
    """True if this run's CausCell_IND cells would train the same models as its CausCell cells on a
    dataset without DAG edges: both run, with the same hyperparameters."""
    return ("CausCell" in config.methods and IND in config.methods
            and config.method_params.get("CausCell", {}) == config.method_params.get(IND, {}))


def redundant_cells(config: RunConfig, keys: Iterable[CellKey]) -> list[CellKey]:
    """The CausCell_IND cells that repeat a CausCell cell of the run (dataset has no DAG edges).
    Needs the datasets loaded (:func:`prepare`)."""
    if not _ind_mirrors_causcell(config):
        return []
    return [k for k in keys if k.method == IND and not _DATA[_data_id(k.dataset, config)][1].edges]


def redundant_record(config: RunConfig, key: CellKey) -> dict[str, Any]:
    """The record stored for a cell skipped by :func:`redundant_cells`: no metrics, a note why."""
    return {
        "dataset": key.dataset, "method": key.method, "setting": key.setting, "fold": key.fold, "seed": key.seed,
        "status": "skipped_redundant", "same_as": "CausCell", "note": REDUNDANT_NOTE,
        "config_hash": config.cell_hash(key.dataset, key.method, key.setting, key.fold, key.seed),
        "preset": config.preset, "device": config.device, "threads": config.effective_threads(),
    }


def run_grid(
    config: RunConfig,
    run_dir: str | Path,
    *,
    retry_failed: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    start_method: str = "fork",
) -> list[CellOutcome]:
    """Run every cell not already done; return one outcome per cell (skipped ones included).

    ``start_method`` (local executor): how cell processes start; see the module docstring.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from causcell_bench.registry import get_method

    if executor not in ("local", "ray"):
        raise BenchError(f"unknown executor {executor!r}; use local or ray")
    if start_method not in START_METHODS:
        raise BenchError(f"unknown start method {start_method!r}; use one of {', '.join(START_METHODS)}")
    console = Console(stderr=True, quiet=not progress)
    log = log or console.print
    run_dir = Path(run_dir)
    for m in config.methods:
        get_method(m)  # unknown names and missing packages fail before any work
    store = ResultStore(run_dir)
    keys = expand_grid(config)
    # a finished grid resumes without importing models or loading data
    if any(not _is_done(store.read(k), config, k, retry_failed) for k in keys):
        preload(config.methods)
        problems = prepare(config, run_dir, log=log)
        redundant = set(redundant_cells(config, keys))
    else:
        problems, redundant = {}, set()
    outcomes: list[CellOutcome] = []
    todo: list[CellKey] = []
    for key in keys:
        rec = store.read(key)
        if _is_done(rec, config, key, retry_failed):
            outcomes.append(CellOutcome(key, "skipped", 0.0, rec.get("error") if rec else None))
        elif (key.dataset, key.setting) in problems:
            store.write(key, {
                "dataset": key.dataset, "method": key.method, "setting": key.setting, "fold": key.fold,
                "seed": key.seed, "status": "failed", "error": problems[(key.dataset, key.setting)],
                "config_hash": config.cell_hash(key.dataset, key.method, key.setting, key.fold, key.seed),
            })
            outcomes.append(CellOutcome(key, "failed", 0.0, problems[(key.dataset, key.setting)]))
        elif key in redundant:
            store.write(key, redundant_record(config, key))
            outcomes.append(CellOutcome(key, "skipped_redundant", 0.0))
        else:
            todo.append(key)
    if outcomes and todo:
        log(f"resuming: {len(outcomes)} of {len(keys)} cells already done")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=not progress) as bar:
        task = bar.add_task("grid", total=len(todo))

        def started(key: CellKey) -> None:
            bar.update(task, description=f"running {key}")

        def finished(outcome: CellOutcome) -> None:
            outcomes.append(outcome)
            bar.advance(task)
            mark = "[green]ok[/green]" if outcome.status == "ok" else f"[red]failed[/red]: {outcome.error}"
            log(f"{outcome.key}  {outcome.seconds:.1f}s  {mark}")

        try:
            if executor == "ray":
                from causcell_bench.ray_executor import run_cells_ray

                run_cells_ray(config, run_dir, todo, address=ray_address, started=started, finished=finished)
            else:
                run_cells_local(config, run_dir, todo, started=started, finished=finished, start_method=start_method)
        except KeyboardInterrupt:
            done = sum(o.status in ("ok", "failed", "skipped") for o in outcomes)
            log(f"[yellow]interrupted: {done} of {len(keys)} cells are stored in {run_dir}; "
                "rerun the same command to resume.[/yellow]")
            raise
    return outcomes


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_cells_local(
    config: RunConfig,
    run_dir: Path,
    keys: list[CellKey],
    *,
    started: Callable[[CellKey], None],
    finished: Callable[[CellOutcome], None],
    start_method: str = "fork",
) -> None:
    """The local executor: up to ``config.jobs`` child processes at a time, one per cell."""
    # not cores // jobs: the thread count changes the numbers, and --jobs must not
    threads = config.effective_threads()
    store = ResultStore(run_dir)
    ctx = mp.get_context(start_method)
    running: dict[Any, tuple[CellKey, float]] = {}
    queue = list(keys)
    try:
        while queue or running:
            while queue and len(running) < config.jobs:
                key = queue.pop(0)
                proc = ctx.Process(target=_child, args=(config, key, str(run_dir), threads), daemon=False)
                proc.start()
                running[proc] = (key, time.perf_counter())
                started(key)
            time.sleep(0.05)
            for proc in [p for p in running if not p.is_alive()]:
                key, t0 = running.pop(proc)
                proc.join()
                finished(collect(store, key, proc.exitcode, time.perf_counter() - t0, config))
    except KeyboardInterrupt:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.join(5)
        raise


def collect(store: ResultStore, key: CellKey, exitcode: int | None, seconds: float, config: RunConfig) -> CellOutcome:
    """The outcome of a finished cell; a cell whose worker died without writing is recorded as failed."""
    rec = store.read(key)
    if rec is None:
        # the child died before writing (killed, out of memory, segfault): record why
        why = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        if exitcode == -signal.SIGKILL:
            why += " (killed; out of memory?)"
        err = f"worker process died ({why}) before writing a result"
        store.write(key, {
            "dataset": key.dataset, "method": key.method, "setting": key.setting, "fold": key.fold,
            "seed": key.seed, "status": "failed", "error": err, "total_s": seconds,
            "config_hash": config.cell_hash(key.dataset, key.method, key.setting, key.fold, key.seed),
        })
        return CellOutcome(key, "failed", seconds, err)
    return CellOutcome(key, rec.get("status", "failed"), seconds, rec.get("error"))


def summarize_outcomes(outcomes: Iterable[CellOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return counts
