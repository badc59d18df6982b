"""The grid runner: expand (dataset x method x setting x fold x seed) cells, run
them, store one JSON each, resume without redoing finished cells.

This module orchestrates: it checks the methods, loads every dataset and makes (or reuses) the saved
splits once (:func:`prepare`), skips the cells already stored, claims cells so that several processes
can share one run directory, and hands the rest to an executor
(:mod:`causcell_bench.grid.executors`: ``local``, one child process per cell, or ``ray``, one Ray
task per cell). The code of a cell and the data it runs on are in :mod:`causcell_bench.grid`.
"""

from __future__ import annotations

import importlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from causcell_bench.config import RunConfig
from causcell_bench.errors import BenchError
from causcell_bench.grid.cell import CellOutcome
from causcell_bench.grid.data import DATA_CACHE, data_fingerprint, dataset_names, splits_dir
from causcell_bench.grid.executors.base import Executor
from causcell_bench.grid.executors.local import START_METHODS, LocalExecutor
from causcell_bench.grid.executors.ray import RayExecutor
from causcell_bench.grid.record import CellKey, CellRecord, cell_hash
from causcell_bench.progress import ProgressMonitor, log_path
from causcell_bench.store import CLAIM_TIMEOUT_S, Claim, ClaimStore, ResultStore, atomic_write_json, file_lock


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
def prepare(config: RunConfig, run_dir: Path, log: Callable[[str], None] = print) -> dict[tuple[str, str], str]:
    """Load datasets and make (or reuse) the saved splits. A split that cannot be made from the request
    (more folds than cells or combinations, a HOLDOUT leaving a value untrained) or ``cell_parts`` its
    test cells cannot fill is refused with a BenchError before anything is written. Returns
    {(dataset name, setting): error} for splits that fail only at the locked second pass (another
    process's saved splits), so their cells are recorded as failed instead of aborting.

    Nothing is written until every dataset has loaded and validated and matches what ``run_dir``
    already holds (data settings, data fingerprint, saved splits' cells): a rejected run leaves no trace.
    """
    from causcell_bench.datasets import make_holdout_split, make_splits, save_splits

    names = list(dict.fromkeys(dataset_names(config).values()))
    premade: dict[tuple[str, str], Any] = {}
    for name in names:
        DATA_CACHE.data(name, config)
    for name in names:
        adata, spec = DATA_CACHE.data(name, config)
        _check_saved(run_dir, name, adata, spec, config)
        # the user's own choices are refused outright (not recorded as failed cells): exit 2, no trace
        if config.cf_concept is not None and config.cf_concept not in spec.concepts:
            raise BenchError(f"--cf-concept {config.cf_concept!r} is not a concept of {name}; concepts are {spec.concepts}")
        # pre-flight: every requested split is made now, so that an impossible request (more folds than
        # cells or label combinations, a HOLDOUT leaving a value untrained) is refused before any cell runs
        for setting in config.settings:
            if (splits_dir(run_dir, name) / f"{setting}.json").is_file():
                continue  # saved splits are checked against this data below
            try:
                premade[(name, setting)] = (
                    make_holdout_split(adata, spec, config.holdout or [], seed=config.split_seed)
                    if setting == "HOLDOUT" else
                    make_splits(adata, spec, setting, n_folds=config.n_folds, seed=config.split_seed))
            except BenchError as e:
                raise BenchError(f"cannot make the {setting} splits of {name}: {e}") from None
            _check_cell_parts(config, name, setting, premade[(name, setting)])
    run_dir.mkdir(parents=True, exist_ok=True)
    problems: dict[tuple[str, str], str] = {}
    # several processes may share run_dir: one makes the splits, the others then load them
    with file_lock(run_dir / "splits" / ".lock"):
        for name in names:
            _check_saved(run_dir, name, *DATA_CACHE.data(name, config), config)
        atomic_write_json(run_dir / "config.json", config.model_dump())
        for name in names:
            adata, spec = DATA_CACHE.data(name, config)
            folder = splits_dir(run_dir, name)
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
                        splits = premade.get((name, setting)) or (
                            make_holdout_split(adata, spec, config.holdout or [], seed=config.split_seed)
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


def _check_cell_parts(config: RunConfig, name: str, setting: str, splits: Any) -> None:
    """Refuse ``cell_parts`` chosen by the user that the test cells of a single-unit setting cannot fill
    (they would be dropped without a word, and the leaderboard would have no rank intervals)."""
    from causcell_bench.grid.evaluate import MIN_CELLS_PER_PART

    default = type(config).model_fields["cell_parts"].default
    # the default asks for nothing: small test folds simply get no parts (and no rank intervals)
    if config.cell_parts < 2 or config.cell_parts == default or not config.single_unit(setting):
        return
    folds = set(config.folds_of(setting))
    n_test = min((len(s.test_idx) for s in splits if s.fold in folds), default=0)
    if n_test < config.cell_parts * MIN_CELLS_PER_PART:
        most = n_test // MIN_CELLS_PER_PART
        raise BenchError(f"--cell-parts {config.cell_parts}: the {setting} test cells of {name} ({n_test}) make at "
                         f"most {most} parts of {MIN_CELLS_PER_PART} cells; give --cell-parts {most if most >= 2 else 0}"
                         f" or fewer (0: off)")


def _check_saved(run_dir: Path, name: str, adata: Any, spec: Any, config: RunConfig) -> None:
    """Refuse a run directory whose saved data settings, data fingerprint or splits are for other data."""
    folder = splits_dir(run_dir, name)
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
    if record.get("config_hash") != cell_hash(config, key):
        return False  # stale: settings changed since it ran
    if record.get("status") == "skipped_redundant":
        return key.method == IND and _ind_mirrors_causcell(config)  # else CausCell_IND must run after all
    # "interrupted" (stopped by Ctrl-C or SIGTERM) is never done: the cell simply runs again
    return record.get("status") == "ok" or (record.get("status") == "failed" and not retry_failed)


IND = "CausCell_IND"


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


def make_executor(name: str, *, ray_address: str | None = None, start_method: str = "fork") -> Executor:
    """The executor called ``name`` (``local`` or ``ray``); a bad name or start method fails before any work."""
    if name not in ("local", "ray"):
        raise BenchError(f"unknown executor {name!r}; use local or ray")
    if start_method not in START_METHODS:  # checked for either executor, as the CLI passes it to both
        raise BenchError(f"unknown start method {start_method!r}; use one of {', '.join(START_METHODS)}")
    return RayExecutor(ray_address) if name == "ray" else LocalExecutor(start_method)


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

    ``executor``: ``local`` or ``ray`` (:func:`make_executor`). ``start_method`` (local executor): how cell
    processes start; see :mod:`causcell_bench.grid.executors.local`.
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

    backend = make_executor(executor, ray_address=ray_address, start_method=start_method)
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
            store.write_record(CellRecord.failed(config, key, problems[(key.dataset, key.setting)],
                                                 threads=config.effective_threads()))
            outcomes.append(CellOutcome(key, "failed", 0.0, problems[(key.dataset, key.setting)]))
        elif key in redundant:
            store.write_record(CellRecord.redundant(config, key))
            outcomes.append(CellOutcome(key, "skipped_redundant", 0.0))
        else:
            todo.append(key)
    if outcomes and todo:
        log(f"resuming: {len(outcomes)} of {len(keys)} cells already done")
    # a process killed between writing a record and releasing its claim leaves the claim behind
    claims.clear_stale(o.key for o in outcomes)

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
                backend.run_cells(pending, config, run_dir, started=started, finished=finished, claim=claim)
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


def summarize_outcomes(outcomes: Iterable[CellOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return counts
