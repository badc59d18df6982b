"""The local executor: each cell in a child process of this machine, up to ``config.jobs`` at a time.

With the default ``fork`` start method the children inherit the datasets and splits the parent
loaded (:data:`~causcell_bench.grid.data.DATA_CACHE`, copy-on-write: data is read once, not once per
cell); a crash or out-of-memory kill in one method is recorded as that cell's failure, and the
per-cell peak memory is the child's own.

Forking is unsafe in a parent that has already run OpenMP-parallel code (a notebook that trained a
model with several threads: GNU OpenMP's pool does not survive a fork, and the child can hang). Such
callers pass ``start_method="spawn"`` (or ``"forkserver"``): each child then starts a fresh
interpreter and loads its dataset itself, as a Ray worker does.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causcell_bench.config import RunConfig
from causcell_bench.errors import BenchError
from causcell_bench.grid.cell import collect, execute_cell
from causcell_bench.grid.executors.base import Finished, Started, TryClaim
from causcell_bench.grid.record import CellKey
from causcell_bench.store import ResultStore
from causcell_bench.threads import fork_problem

START_METHODS = ("fork", "spawn", "forkserver")


@dataclass(frozen=True)
class LocalExecutor:
    """:class:`~causcell_bench.grid.executors.base.Executor` running cells as child processes."""

    start_method: str = "fork"

    def __post_init__(self) -> None:
        if self.start_method not in START_METHODS:
            raise BenchError(f"unknown start method {self.start_method!r}; use one of {', '.join(START_METHODS)}")

    def run_cells(self, keys: list[CellKey], config: RunConfig, run_dir: Path, *, started: Started,
                  finished: Finished, claim: TryClaim | None = None) -> None:
        # claimed one by one as a process slot frees: a cell waiting here stays free for other processes
        run_cells_local(config, run_dir, keys, started=started, finished=finished, start_method=self.start_method,
                        claim=claim)


def run_cells_local(
    config: RunConfig,
    run_dir: Path,
    keys: list[CellKey],
    *,
    started: Started,
    finished: Finished,
    start_method: str = "fork",
    claim: TryClaim | None = None,
) -> None:
    """Up to ``config.jobs`` child processes at a time, one per cell.

    ``claim(key)``, called just before a cell starts, may return False to skip it (another process has it).
    """
    # not cores // jobs: the thread count changes the numbers, and --jobs must not
    threads = config.effective_threads()
    if start_method == "fork" and (problem := fork_problem()) is not None:
        raise BenchError(problem)
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
