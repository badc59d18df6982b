"""The code of one grid cell, whichever executor runs it: its inputs, fit and score, the record it
writes whatever happens (:func:`execute_cell`), and the outcome the executor reports
(:func:`collect`), which records a cell whose worker died before it could.
"""

from __future__ import annotations

import resource
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causcell_bench.config import RunConfig
from causcell_bench.grid.data import DATA_CACHE
from causcell_bench.grid.record import INTERRUPTED_NOTE, CellKey, CellRecord, RunStamp, cell_hash
from causcell_bench.interrupts import check_interrupt, interrupt_signal, interrupted, watching
from causcell_bench.progress import CellProgressWriter, cell_output_to, log_path
from causcell_bench.store import ResultStore


@dataclass
class CellOutcome:
    key: CellKey
    # "ok" | "failed" | "interrupted" (rerun next time) | "skipped" (done before) | "elsewhere" (another
    # process sharing the run directory ran it) | "skipped_redundant" (see runner.redundant_cells)
    status: str
    seconds: float
    error: str | None = None


def cell_inputs(config: RunConfig, key: CellKey, run_dir: Path) -> tuple[Any, Any, Any]:
    """(AnnData, spec, split) of a cell: inherited from the parent when forked, else loaded once per
    worker process (as a Ray worker does), with the splits seeded into :data:`DATA_CACHE` or, failing
    that, those the parent saved in the run directory."""
    adata, spec = DATA_CACHE.data(key.dataset, config)
    return adata, spec, DATA_CACHE.splits(key.dataset, config, key.setting, run_dir)[key.fold]


def evaluate_cell(config: RunConfig, key: CellKey, run_dir: Path) -> dict[str, Any]:
    """Fit one method on one fold and score it; returns the result part of the record."""
    from causcell_bench.datasets import preprocess
    from causcell_bench.grid.evaluate import fit_and_score
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
        return fit_and_score(config, key, method, train, test, spec, split, t)


def execute_cell(config: RunConfig, key: CellKey, run_dir: str | Path, threads: int | None = None) -> CellRecord:
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
    stamp = RunStamp.now(config)
    failure: tuple[str, str] | None = None
    try:
        # a library can swallow the cell's Ctrl-C (Lightning stops training early and returns): the
        # flag makes such a cell end as interrupted, never as an "ok" record of a cut-short fit
        with watching():
            try:
                result = evaluate_cell(config, key, Path(run_dir))
            except Exception:
                if interrupted():  # e.g. scvi-tools' NameError while it handles the KeyboardInterrupt
                    raise KeyboardInterrupt from None
                raise
            check_interrupt()
    except (KeyboardInterrupt, SystemExit) as e:
        # stopped, not failed (Lightning turns SIGTERM into a SystemExit): the record says so and the
        # next run reruns the cell
        how = interrupt_signal() or type(e).__name__  # the signal when the cell's own handler saw it
        store.write_record(CellRecord.interrupted(config, key, f"{INTERRUPTED_NOTE} ({how})",
                                                  threads=threads, total_s=time.perf_counter() - t0, stamp=stamp))
        raise
    except Exception as e:  # noqa: BLE001 - a failing method is recorded and the grid goes on
        failure = (f"{type(e).__name__}: {e}", traceback.format_exc(limit=20)[-4000:])
    total_s = time.perf_counter() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if failure is None:
        record = CellRecord.ok(config, key, result, threads=threads, stamp=stamp, total_s=total_s,
                               peak_rss_mb=peak_rss_mb)
    else:
        record = CellRecord.failed(config, key, failure[0], threads=threads, stamp=stamp, traceback=failure[1],
                                   total_s=total_s, peak_rss_mb=peak_rss_mb)
    store.write_record(record)
    return record


def collect(store: ResultStore, key: CellKey, exitcode: int | None, seconds: float, config: RunConfig) -> CellOutcome:
    """The outcome of a finished cell. A cell whose worker died without writing a current record (an
    older one with other settings does not count) is recorded as interrupted (SIGINT/SIGTERM, exit
    130: rerun next time) or failed (killed otherwise, out of memory, crashed)."""
    threads = config.effective_threads()
    rec = store.read_record(key)
    if rec is not None and rec.config_hash == cell_hash(config, key, threads=threads):
        return CellOutcome(key, rec.status, seconds, rec.error)
    if exitcode is not None and (exitcode in (-signal.SIGINT, -signal.SIGTERM) or exitcode == 130):
        how = f"signal {signal.Signals(-exitcode).name}" if exitcode < 0 else "exit code 130"
        err = f"worker process stopped ({how}): {INTERRUPTED_NOTE}"
        store.write_record(CellRecord.interrupted(config, key, err, threads=threads, total_s=seconds))
        return CellOutcome(key, "interrupted", seconds, err)
    why = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    if exitcode == -signal.SIGKILL:
        why += " (killed; out of memory?)"
    err = f"worker process died ({why}) before writing a result"
    store.write_record(CellRecord.failed(config, key, err, threads=threads, total_s=seconds))
    return CellOutcome(key, "failed", seconds, err)
