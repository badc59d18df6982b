"""One CPU thread budget per grid cell, applied to every library that keeps its own thread pool.

torch, numba and the BLAS/OpenMP runtimes size their pools separately, and they reset one
another: scanpy's numba-parallel HVG selection leaves torch's OpenMP team at numba's size
(both share the OpenMP runtime). A cell's numbers depend on its thread count (the order of
floating-point reductions), so the count is set on all of them, recorded and hashed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from causcell_bench.errors import BenchError

ENV_VAR = "CAUSCELL_BENCH_THREADS"
# read by OpenMP, MKL, OpenBLAS and numba when they start: covers libraries loaded later and child processes
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

_budget: int | None = None
_limits: Any = None  # threadpoolctl handle: its BLAS/OpenMP limits hold while it is referenced


def cpu_count() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_threads(configured: int | None = None) -> int:
    """Threads per cell: ``$CAUSCELL_BENCH_THREADS`` if set, else ``configured``, else 1.

    The default does not depend on ``--jobs`` or the core count, so a grid gives the same
    numbers on any machine and with any number of parallel cells.
    """
    raw = os.environ.get(ENV_VAR, "").strip()
    if raw and raw != "0":  # "0" meant "unset" in earlier versions
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise BenchError(f"{ENV_VAR}={raw!r} is not a positive whole number; set it to e.g. 1 or unset it")
        return n
    return configured if configured else 1


# numba's "omp" threading layer (GNU OpenMP in numba's wheels) ends a forked process that runs a
# parallel kernel with SIGTERM. Grid cells are forked after the parent ran scanpy's numba kernels (HVG
# selection): every cell of a second benchmark() call in a notebook died "interrupted". Its built-in
# "workqueue" layer survives a fork; a layer the user chose is left alone.
FORK_SAFE_NUMBA_LAYER = "workqueue"


def prefer_fork_safe_numba() -> None:
    """Make numba start its fork-safe threading layer, unless the user chose one or a layer already runs."""
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    os.environ["NUMBA_THREADING_LAYER"] = FORK_SAFE_NUMBA_LAYER  # read when numba is imported
    numba = _numba()
    if numba is not None and not _numba_started():
        numba.config.THREADING_LAYER = FORK_SAFE_NUMBA_LAYER


def _numba_started() -> bool:
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(parallel, "_is_initialized", False))


def fork_problem() -> str | None:
    """Why forked cells would die in this process (numba's OpenMP layer already running), or None."""
    numba = _numba()
    if numba is None or not _numba_started():
        return None
    try:
        layer = numba.threading_layer()
    except ValueError:  # not started after all
        return None
    if layer != "omp":
        return None
    chosen = os.environ.get("NUMBA_THREADING_LAYER", "")
    if chosen and chosen != FORK_SAFE_NUMBA_LAYER:
        return (f"NUMBA_THREADING_LAYER={chosen} runs numba's OpenMP threading layer, which terminates forked grid "
                f"cells that use it; unset it or set it to {FORK_SAFE_NUMBA_LAYER}")
    return ("numba's OpenMP threading layer is already running in this process (started by numba-parallel "
            "code such as scanpy's before causcell_bench was imported), and forked cells that use it are "
            "terminated; import causcell_bench first, or set NUMBA_THREADING_LAYER=workqueue before importing "
            "numba or scanpy, or use start_method='spawn'")


def _numba() -> Any | None:
    # only a numba that is already loaded: one imported later reads NUMBA_NUM_THREADS (set below)
    return sys.modules.get("numba")


def _set_numba(numba: Any, n: int) -> None:
    numba.set_num_threads(max(1, min(n, int(numba.config.NUMBA_NUM_THREADS))))  # above its max it raises


def apply_thread_budget(n: int) -> None:
    """Limit this process (and its children) to ``n`` threads in torch, numba, BLAS and OpenMP."""
    global _budget, _limits
    if n < 1:
        raise BenchError(f"a thread budget of {n} is not possible; use 1 or more threads")
    for var in THREAD_ENV_VARS:
        if var == "NUMBA_NUM_THREADS" and _numba() is not None:
            # numba reads it again at every compilation and refuses a value other than the one its
            # pool started with; once loaded it is sized by numba.set_num_threads (below) instead
            continue
        os.environ[var] = str(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a scikit-learn dependency, normally present
        threadpool_limits = None
    release_thread_budget()  # a new budget replaces the previous one, it does not nest
    if threadpool_limits is not None:
        _limits = threadpool_limits(limits=n)
    _budget = n
    reassert_thread_budget()


def reassert_thread_budget() -> int | None:
    """Set torch and numba back to the budget (after code that resized them); returns it, or None if unset."""
    if _budget is None:
        return None
    import torch

    numba = _numba()
    if numba is not None:
        _set_numba(numba, _budget)
    torch.set_num_threads(_budget)  # after numba: starting numba's OpenMP pool resets the shared team size
    return _budget


def release_thread_budget() -> None:
    """Undo :func:`apply_thread_budget`'s BLAS/OpenMP limits and forget the budget (env vars stay)."""
    global _budget, _limits
    if _limits is not None:
        _limits.restore_original_limits()
    _budget, _limits = None, None


def thread_budget() -> int | None:
    """The budget last applied in this process, or None."""
    return _budget


@contextmanager
def keep_thread_counts() -> Iterator[None]:
    """Put torch's and numba's thread counts back as they were before the block, whatever it did."""
    import torch

    torch_before = torch.get_num_threads()
    numba = _numba()
    numba_before = numba.get_num_threads() if numba is not None else None
    try:
        yield
    finally:
        if numba is not None and numba_before is not None:
            _set_numba(numba, numba_before)
        torch.set_num_threads(torch_before)  # last: numba's pool shares the OpenMP team size with torch
