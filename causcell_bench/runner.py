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
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from causcell_bench.config import RunConfig
from causcell_bench.errors import BenchError
from causcell_bench.progress import CellProgressWriter, ProgressMonitor, cell_output_to, log_path
from causcell_bench.store import (
    CLAIM_TIMEOUT_S,
    CellKey,
    Claim,
    ClaimStore,
    ResultStore,
    atomic_write_json,
    file_lock,
)

VERSIONED = ("causcell-bench", "torch", "numpy", "scanpy", "anndata", "scikit-learn", "scvi-tools", "biolord", "pertpy")

START_METHODS = ("fork", "spawn", "forkserver")


class DataCache:
    """The datasets and splits this process holds, so data is read once per process, not per cell.

    Entries are keyed by the dataset name and everything in the run config that shapes its data
    (:meth:`RunConfig.data_key` and the data directory), so two runs in one process (a notebook,
    a reused Ray worker) never share a stale copy.
    """

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._splits: dict[tuple[str, str, str], list[Any]] = {}

    @staticmethod
    def _id(name: str, config: RunConfig) -> tuple[str, str]:
        return (name, json.dumps(config.data_key(), sort_keys=True, default=str) + str(config.data_dir))

    def data(self, name: str, config: RunConfig) -> tuple[Any, Any]:
        """(AnnData, spec) of dataset ``name`` under ``config``; loaded on first use."""
        did = self._id(name, config)
        if did not in self._data:
            # ``name`` is the cell's dataset name (a spec's ``name``); load from what the user gave
            self._data[did] = load_dataset(dataset_arg(config, name), config)
        return self._data[did]

    def splits(self, name: str, config: RunConfig, setting: str, run_dir: str | Path) -> list[Any]:
        """The folds of ``setting``: seeded ones if any, else read from the run directory on first use."""
        sid = (*self._id(name, config), setting)
        if sid not in self._splits:
            from causcell_bench.datasets import load_splits

            adata, _ = self.data(name, config)  # also checks the saved splits refer to these cells
            self._splits[sid] = load_splits(split_path(run_dir, name, setting), adata)
        return self._splits[sid]

    def cached_splits(self, name: str, config: RunConfig, setting: str) -> list[Any] | None:
        """The folds of ``setting`` if this process holds them; never reads a file."""
        return self._splits.get((*self._id(name, config), setting))

    def seed_splits(self, name: str, config: RunConfig, setting: str, splits: list[Any]) -> None:
        """Hold ``splits`` for ``setting``, replacing any held before: the driver made them (or a worker
        that cannot see the run directory was handed them), so they are the ones the run uses."""
        self._splits[(*self._id(name, config), setting)] = splits

    def clear(self) -> None:
        self._data.clear()
        self._splits.clear()


# Module level so that forked cell processes inherit what the parent loaded (copy-on-write);
# a spawned child or a Ray worker starts with an empty one and fills it on first use.
DATA_CACHE = DataCache()


def split_path(run_dir: str | Path, name: str, setting: str) -> Path:
    """Where a run saves the splits of one (dataset, setting)."""
    return Path(run_dir) / "splits" / _safe(name) / f"{setting}.json"


@dataclass
class CellOutcome:
    key: CellKey
    # "ok" | "failed" | "interrupted" (rerun next time) | "skipped" (done before) | "elsewhere" (another
    # process sharing the run directory ran it) | "skipped_redundant" (see redundant_cells)
    status: str
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


def dataset_names(config: RunConfig) -> dict[str, str]:
    """{dataset argument: name its cells are stored and reported under} (a spec file's ``name``, see
    :func:`causcell_bench.datasets.loaders.dataset_name`); two different datasets with one name are refused."""
    from causcell_bench.datasets.loaders import dataset_name

    out: dict[str, str] = {}
    for arg in config.datasets:
        name = dataset_name(arg)
        other = next((a for a, n in out.items() if n == name), None)
        if other is not None and _identity(other) != _identity(arg):
            raise BenchError(f"datasets {other} and {arg} are both named {name!r}; give each spec its own name "
                             "(or run them into separate --out directories)")
        out[arg] = name
    return out


def _identity(arg: str) -> str:
    """What a dataset argument refers to: a resolved path for files, the name otherwise."""
    return str(Path(arg).expanduser().resolve()) if arg.lower().endswith((".toml", ".h5ad")) else arg.lower()


def dataset_arg(config: RunConfig, name: str) -> str:
    """The dataset argument (as the user gave it) behind a cell's dataset name."""
    for arg, n in dataset_names(config).items():
        if n == name:
            return arg
    raise BenchError(f"dataset {name!r} is not in this run's datasets {config.datasets}")


def expand_grid(config: RunConfig) -> list[CellKey]:
    names = dataset_names(config)
    keys = [
        CellKey(names[d], m, s, f, seed)
        for d in config.datasets
        for s in config.settings
        for f in config.folds_of(s)
        for m in config.methods
        for seed in config.seeds
    ]
    return list(dict.fromkeys(keys))  # one dataset given twice (same file, two spellings) runs once


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
    """Load datasets and make (or reuse) the saved splits. Returns {(dataset name, setting): error} for
    pairs whose splits cannot be made, so their cells are recorded as failed instead of aborting.

    Nothing is written until every dataset has loaded and validated and matches what ``run_dir``
    already holds (data settings, data fingerprint, saved splits' cells): a rejected run leaves no trace.
    """
    from causcell_bench.datasets import make_holdout_split, make_splits, save_splits

    names = list(dict.fromkeys(dataset_names(config).values()))
    for name in names:
        DATA_CACHE.data(name, config)
    for name in names:
        adata, spec = DATA_CACHE.data(name, config)
        _check_saved(run_dir, name, adata, spec, config)
        # the user's own choices are refused outright (not recorded as failed cells): exit 2, no trace
        if config.cf_concept is not None and config.cf_concept not in spec.concepts:
            raise BenchError(f"--cf-concept {config.cf_concept!r} is not a concept of {name}; concepts are {spec.concepts}")
        if config.holdout:
            make_holdout_split(adata, spec, config.holdout, seed=config.split_seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    problems: dict[tuple[str, str], str] = {}
    # several processes may share run_dir: one makes the splits, the others then load them
    with file_lock(run_dir / "splits" / ".lock"):
        for name in names:
            _check_saved(run_dir, name, *DATA_CACHE.data(name, config), config)
        atomic_write_json(run_dir / "config.json", config.model_dump())
        for name in names:
            adata, spec = DATA_CACHE.data(name, config)
            folder = run_dir / "splits" / _safe(name)
            if not (folder / "data_key.json").is_file():
                atomic_write_json(folder / "data_key.json", _key_now(config))
            if not (folder / "data_fingerprint.json").is_file():
                atomic_write_json(folder / "data_fingerprint.json", {"sha256": data_fingerprint(adata, spec)})
            for setting in config.settings:
                path = folder / f"{setting}.json"
                try:
                    if path.is_file():
                        splits = _load_checked_splits(path, adata, name, run_dir)
                    else:
                        splits = (make_holdout_split(adata, spec, config.holdout or [], seed=config.split_seed)
                                  if setting == "HOLDOUT" else
                                  make_splits(adata, spec, setting, n_folds=config.n_folds, seed=config.split_seed))
                        save_splits(splits, path)
                    DATA_CACHE.seed_splits(name, config, setting, splits)
                except _StaleRunDir:
                    raise
                except BenchError as e:
                    problems[(name, setting)] = str(e)
                    log(f"[yellow]cannot make {setting} splits for {name}: {e}[/yellow]")
    return problems


class _StaleRunDir(BenchError):
    """The run directory's saved data settings or splits belong to other data."""


def _key_now(config: RunConfig) -> Any:
    return json.loads(json.dumps(config.data_key(), default=str))


def data_fingerprint(adata: Any, spec: Any) -> str:
    """A hash of the cells, genes, concept labels and per-cell and per-gene count totals: tells a
    replaced dataset file from the one the saved splits and results were made on, even at equal shape."""
    import hashlib

    import numpy as np

    from causcell_bench.datasets.validate import counts_matrix

    h = hashlib.sha256()
    for names in (adata.obs_names, adata.var_names, *(adata.obs[c].astype(str) for c in spec.concepts)):
        h.update("\x1f".join(map(str, names)).encode())
        h.update(b"\x1e")
    x = counts_matrix(adata, spec)
    for axis in (0, 1):
        h.update(np.asarray(x.sum(axis=axis), dtype=np.float64).ravel().tobytes())
    return h.hexdigest()[:16]


def _check_saved(run_dir: Path, name: str, adata: Any, spec: Any, config: RunConfig) -> None:
    """Refuse a run directory whose saved data settings, data fingerprint or splits are for other data."""
    folder = run_dir / "splits" / _safe(name)
    stamp, fp = folder / "data_key.json", folder / "data_fingerprint.json"
    if stamp.is_file() and _read_json(stamp) != _key_now(config):
        raise _StaleRunDir(
            f"{run_dir} was made with other data settings for {name} (cells, genes, folds, concepts or DAG); "
            "use a new --out directory for this run"
        )
    if fp.is_file() and (_read_json(fp) or {}).get("sha256") != data_fingerprint(adata, spec):
        raise _StaleRunDir(
            f"the data of {name} changed since {run_dir} was made (other cells, labels or counts: was the "
            "dataset file replaced?); use a new --out directory for this data"
        )
    for setting in config.settings:
        if (folder / f"{setting}.json").is_file():
            _load_checked_splits(folder / f"{setting}.json", adata, name, run_dir)


def _load_checked_splits(path: Path, adata: Any, name: str, run_dir: Path) -> Any:
    from causcell_bench.datasets import load_splits

    try:
        return load_splits(path, adata)  # checks the saved cell names against this data's
    except BenchError as e:
        raise _StaleRunDir(f"the saved splits {path} do not fit the data of {name} ({e}); "
                           f"use a new --out directory instead of {run_dir}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # unreadable: differs from anything expected, so the caller refuses


def _safe(name: str) -> str:
    return name.replace("/", "_").replace("\\", "_")


# --- one cell (child) --------------------------------------------------------
def cell_inputs(config: RunConfig, key: CellKey, run_dir: Path) -> tuple[Any, Any, Any]:
    """(AnnData, spec, split) of a cell: inherited from the parent when forked, else loaded once per
    worker process (as a Ray worker does), with the splits seeded into :data:`DATA_CACHE` or, failing
    that, those the parent saved in the run directory."""
    adata, spec = DATA_CACHE.data(key.dataset, config)
    return adata, spec, DATA_CACHE.splits(key.dataset, config, key.setting, run_dir)[key.fold]


def evaluate_cell(config: RunConfig, key: CellKey, run_dir: Path) -> dict[str, Any]:
    """Fit one method on one fold and score it; returns the metrics part of the record."""
    from causcell_bench.datasets import preprocess
    from causcell_bench.registry import get_method

    adata, spec, split = cell_inputs(config, key, run_dir)
    # what third-party libraries print (Lightning bars, scanpy and JAX warnings) goes to the cell's
    # log, not to the terminal; what the method reports goes to OUT/progress/ (the grid shows it)
    with cell_output_to(log_path(run_dir, key)):
        t = {}
        t0 = time.perf_counter()
        train, test = preprocess(adata[split.train_idx], adata[split.test_idx], spec)
        t["preprocess_s"] = time.perf_counter() - t0
        cls = get_method(key.method)
        method = cls(preset=config.preset, device=config.device, **config.method_params.get(key.method, {}))
        method.progress_callback = CellProgressWriter(run_dir, key)
        return _fit_and_score(config, key, method, train, test, spec, split, t)


def _fit_and_score(config: RunConfig, key: CellKey, method: Any, train: Any, test: Any, spec: Any, split: Any,
                   t: dict[str, float]) -> dict[str, Any]:
    from causcell_bench import metrics as M

    cls = type(method)
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
    except (KeyboardInterrupt, SystemExit) as e:
        # stopped, not failed (Lightning turns SIGTERM into a SystemExit): the record says so and the
        # next run reruns the cell
        record = {**base, "status": "interrupted", "error": f"{INTERRUPTED_NOTE} ({type(e).__name__})",
                  "total_s": time.perf_counter() - t0}
        store.write(key, record)
        raise
    except Exception as e:  # noqa: BLE001 - a failing method is recorded and the grid goes on
        record = {
            **base, "status": "failed", "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=20)[-4000:],
        }
    record["total_s"] = time.perf_counter() - t0
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    store.write(key, record)
    return record


INTERRUPTED_NOTE = "interrupted before the cell finished; the next run reruns it"


def _child(config: RunConfig, key: CellKey, run_dir: str, threads: int) -> None:
    """Cell process body: Ctrl-C and SIGTERM are the parent's to handle (it records the cell as
    interrupted), and the cell dies with the parent that claimed it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    try:
        execute_cell(config, key, run_dir, threads)
    except (KeyboardInterrupt, SystemExit):
        raise SystemExit(130) from None  # the record says interrupted; no traceback on the terminal


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so that an orphaned cell never races the
    process that takes its claim over."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


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
    # "interrupted" (stopped by Ctrl-C or SIGTERM) is never done: the cell simply runs again
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
    return [k for k in keys if k.method == IND and not DATA_CACHE.data(k.dataset, config)[1].edges]


def redundant_record(config: RunConfig, key: CellKey) -> dict[str, Any]:
    """The record stored for a cell skipped by :func:`redundant_cells`: no metrics, a note why."""
    return {
        "dataset": key.dataset, "method": key.method, "setting": key.setting, "fold": key.fold, "seed": key.seed,
        "status": "skipped_redundant", "same_as": "CausCell", "note": REDUNDANT_NOTE,
        "config_hash": config.cell_hash(key.dataset, key.method, key.setting, key.fold, key.seed),
        "preset": config.preset, "device": config.device, "threads": config.effective_threads(),
    }


def _record_base(config: RunConfig, key: CellKey) -> dict[str, Any]:
    """The fields every record the runner writes carries (the thread count makes its hash checkable)."""
    threads = config.effective_threads()
    return {
        "dataset": key.dataset, "method": key.method, "setting": key.setting, "fold": key.fold, "seed": key.seed,
        "config_hash": config.cell_hash(key.dataset, key.method, key.setting, key.fold, key.seed, threads=threads),
        "threads": threads,
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
    claim_timeout_s: float = CLAIM_TIMEOUT_S,
    poll_s: float = 1.0,
) -> list[CellOutcome]:
    """Run every cell not already done; return one outcome per cell (skipped ones included).

    ``start_method`` (local executor): how cell processes start; see the module docstring.
    Several processes may run the same grid into one ``run_dir``: each claims a cell before running it
    (see :mod:`causcell_bench.store`), skips cells others hold, and at the end waits for those
    (polling every ``poll_s`` seconds) so that it returns only when the whole grid is stored. A claim
    whose process died on this host, or older than ``claim_timeout_s``, is taken over.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
    claims = ClaimStore(run_dir, claim_timeout_s)
    keys = expand_grid(config)
    initial = {k: store.read(k) for k in keys}
    # a finished grid resumes without importing models or loading data
    if any(not _is_done(initial[k], config, k, retry_failed) for k in keys):
        preload(config.methods)
        problems = prepare(config, run_dir, log=log)
        redundant = set(redundant_cells(config, keys))
    else:
        problems, redundant = {}, set()
        atomic_write_json(run_dir / "config.json", config.model_dump())  # `report` judges cells by this
    outcomes: list[CellOutcome] = []
    todo: list[CellKey] = []
    for key in keys:
        rec = initial[key]
        if _is_done(rec, config, key, retry_failed):
            outcomes.append(CellOutcome(key, "skipped", 0.0, rec.get("error") if rec else None))
        elif (key.dataset, key.setting) in problems:
            store.write(key, {**_record_base(config, key), "status": "failed",
                              "error": problems[(key.dataset, key.setting)]})
            outcomes.append(CellOutcome(key, "failed", 0.0, problems[(key.dataset, key.setting)]))
        elif key in redundant:
            store.write(key, redundant_record(config, key))
            outcomes.append(CellOutcome(key, "skipped_redundant", 0.0))
        else:
            todo.append(key)
    if outcomes and todo:
        log(f"resuming: {len(outcomes)} of {len(keys)} cells already done")

    held: dict[CellKey, Claim] = {}
    deferred: list[CellKey] = []

    def done_elsewhere(key: CellKey) -> dict[str, Any] | None:
        """The record another process stored for ``key`` since this run started, if it finished the cell."""
        rec = store.read(key)
        if rec is not None and rec != initial[key] and _is_done(rec, config, key, retry_failed=False):
            return rec
        return None

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    # under a terminal one bar per running cell below the grid bar; in a pipe or CI log a line per
    # running cell every 30 s (the grid bar itself is not drawn there)
    interactive = progress and console.is_terminal
    with Progress(*columns, console=console, transient=False, disable=not progress) as bar, \
            ProgressMonitor(run_dir, bar, log, interactive=interactive) as monitor:
        task = bar.add_task("grid", total=len(todo))

        def elsewhere(key: CellKey, rec: dict[str, Any]) -> None:
            outcomes.append(CellOutcome(key, "elsewhere", 0.0, rec.get("error")))
            bar.advance(task)
            log(f"{key}  run by another process: {rec.get('status')}")

        def claim(key: CellKey) -> bool:
            """Claim ``key`` for this process; False if another process holds it or has finished it."""
            c = claims.acquire(key)
            if c is None:
                deferred.append(key)
                return False
            rec = done_elsewhere(key)
            if rec is not None:
                claims.release(c)
                elsewhere(key, rec)
                return False
            # a stale, retried or interrupted result must not outlive a rerun that gets killed
            store.remove(key)
            held[key] = c
            return True

        def started(key: CellKey) -> None:
            bar.update(task, description=f"running {key}")
            if progress:
                monitor.started(key)

        def finished(outcome: CellOutcome) -> None:
            c = held.pop(outcome.key, None)
            if c is not None:
                claims.release(c)  # after the record is written: a claim-free cell is done or free
            monitor.finished(outcome.key)
            outcomes.append(outcome)
            bar.advance(task)
            mark = ("[green]ok[/green]" if outcome.status == "ok" else
                    f"[yellow]{outcome.status}[/yellow]: {outcome.error}" if outcome.status == "interrupted" else
                    f"[red]{outcome.status}[/red]: {outcome.error}")
            log(f"{outcome.key}  {outcome.seconds:.1f}s  {mark}")
            cell_log = log_path(run_dir, outcome.key)
            if outcome.status == "failed" and cell_log.is_file():
                log(f"  its log: {cell_log}")

        def wait_for_others() -> list[CellKey]:
            """Poll the cells other processes hold until some are done (recorded) or free to run."""
            waiting_logged = False
            while deferred:
                ready = []
                for key in list(deferred):
                    if claims.holder(key) is not None:
                        continue
                    deferred.remove(key)
                    rec = done_elsewhere(key)
                    if rec is not None:
                        elsewhere(key, rec)
                    else:
                        ready.append(key)  # released unfinished, or its process died: run it here
                if ready:
                    return ready
                if deferred and not waiting_logged:
                    log(f"waiting for {len(deferred)} cell(s) other processes are running "
                        f"(claims in {claims.root}; a dead process's claim is taken over)")
                    waiting_logged = True
                if deferred:
                    time.sleep(poll_s)
            return []

        old_term = _terminate_as_interrupt()
        try:
            pending = todo
            while pending:
                if executor == "ray":
                    from causcell_bench.ray_executor import run_cells_ray

                    batch = [k for k in pending if claim(k)]
                    if batch:
                        run_cells_ray(config, run_dir, batch, address=ray_address, started=started,
                                      finished=finished)
                else:
                    run_cells_local(config, run_dir, pending, started=started, finished=finished,
                                    start_method=start_method, claim=claim)
                pending = wait_for_others()
        except KeyboardInterrupt:
            done = sum(o.status in ("ok", "failed", "skipped", "elsewhere") for o in outcomes)
            log(f"[yellow]interrupted: {done} of {len(keys)} cells are stored in {run_dir}; "
                "rerun the same command to resume.[/yellow]")
            raise
        finally:
            for c in held.values():
                claims.release(c)
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
    return outcomes


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM (a scheduler's or `kill`'s stop) unwind like Ctrl-C, so running cells are recorded
    as interrupted and claims released; returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


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
    claim: Callable[[CellKey], bool] | None = None,
) -> None:
    """The local executor: up to ``config.jobs`` child processes at a time, one per cell.

    ``claim(key)``, called just before a cell starts, may return False to skip it (another process has it).
    """
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
                if claim is not None and not claim(key):
                    continue
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
        for proc, (key, t0) in running.items():
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            # what the cell wrote, else "interrupted": rerun next time, never a permanent failure
            finished(collect(store, key, proc.exitcode, time.perf_counter() - t0, config))
        raise


def collect(store: ResultStore, key: CellKey, exitcode: int | None, seconds: float, config: RunConfig) -> CellOutcome:
    """The outcome of a finished cell. A cell whose worker died without writing a current record (an
    older one with other settings does not count) is recorded as interrupted (SIGINT/SIGTERM, exit
    130: rerun next time) or failed (killed otherwise, out of memory, crashed)."""
    base = _record_base(config, key)
    rec = store.read(key)
    if rec is not None and rec.get("config_hash") == base["config_hash"]:
        return CellOutcome(key, rec.get("status", "failed"), seconds, rec.get("error"))
    if exitcode is not None and (exitcode in (-signal.SIGINT, -signal.SIGTERM) or exitcode == 130):
        how = f"signal {signal.Signals(-exitcode).name}" if exitcode < 0 else "exit code 130"
        err = f"worker process stopped ({how}): {INTERRUPTED_NOTE}"
        store.write(key, {**base, "status": "interrupted", "error": err, "total_s": seconds})
        return CellOutcome(key, "interrupted", seconds, err)
    why = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    if exitcode == -signal.SIGKILL:
        why += " (killed; out of memory?)"
    err = f"worker process died ({why}) before writing a result"
    store.write(key, {**base, "status": "failed", "error": err, "total_s": seconds})
    return CellOutcome(key, "failed", seconds, err)


def summarize_outcomes(outcomes: Iterable[CellOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return counts
