"""Run grid cells as Ray tasks (``causcell-bench run --executor ray``).

One grid cell is one Ray task. The task calls the same
:func:`causcell_bench.grid.cell.execute_cell` as the local executor, so it writes
the same JSON record through the same :class:`~causcell_bench.store.ResultStore`
and a run started under one executor resumes under the other. Nothing in a
method knows which executor runs it.

Resources per task: 1 GPU when the run's device is ``cuda`` (or ``auto`` and the
cluster has GPUs), plus ``cores // jobs`` CPUs, where ``cores`` is this machine's
core count for a local Ray instance and the smallest node's core count on a
cluster (so ``jobs`` is "cells at a time per node" there). A worker process
keeps the datasets it loaded (:data:`causcell_bench.grid.data.DATA_CACHE`), so each
worker reads a dataset once however many cells it runs.

A task whose worker dies (killed, out of memory, node lost) is retried once
(``max_retries=1``); only that cell is lost if the retry dies too, and it is
recorded as failed. On a multi-node cluster the run directory should be on a
shared filesystem; where a worker cannot see it, the task runs in a scratch
directory with the splits shipped from the driver (seeded into the worker's
cache with :meth:`~causcell_bench.grid.data.DataCache.seed_splits`), and the driver
writes the record it returns.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from causcell_bench.config import RunConfig
from causcell_bench.errors import BenchError
from causcell_bench.grid.cell import CellOutcome, collect, execute_cell
from causcell_bench.grid.data import DATA_CACHE
from causcell_bench.grid.executors.base import Finished, Started, TryClaim
from causcell_bench.grid.record import CellKey, CellRecord
from causcell_bench.store import ResultStore
from causcell_bench.threads import cpu_count

INSTALL_HINT = "Ray is not installed; install the extra with: pip install 'causcell-bench[ray]'"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise BenchError(INSTALL_HINT) from e
    return ray


def _wants_gpu(device: str, cluster_gpus: float) -> bool:
    if device.startswith("cuda"):
        if cluster_gpus < 1:
            # a task asking for a GPU that no node has would wait forever: fail now instead
            raise BenchError(
                f"device={device!r} but the Ray cluster has no GPU; use --device auto or cpu, "
                "or start the Ray nodes with GPUs"
            )
        return True
    return device == "auto" and cluster_gpus >= 1


def task_resources(config: RunConfig, node_cpus: list[float], cluster_gpus: float) -> dict[str, float]:
    """``{"num_cpus": ..., "num_gpus": ...}`` for one cell's task.

    ``node_cpus`` are the CPU counts of the cluster's nodes (one entry for a local instance).
    """
    cores = int(min(node_cpus)) if node_cpus else 1
    return {
        "num_cpus": max(1, cores // config.jobs),
        "num_gpus": 1 if _wants_gpu(config.device, cluster_gpus) else 0,
    }


def _capacity(ray: Any, res: dict[str, float]) -> int:
    """How many cell tasks the cluster can run at once (>= 1): keeps submissions in step with
    what runs, so ``started`` is called when a cell actually starts rather than when it is queued."""
    total = 0
    for node in ray.nodes():
        if not node.get("Alive", False):
            continue
        r = node.get("Resources", {})
        fit = int(r.get("CPU", 0) // res["num_cpus"])
        if res["num_gpus"]:
            fit = min(fit, int(r.get("GPU", 0) // res["num_gpus"]))
        total += fit
    return max(1, total)


def cell_task(config: RunConfig, key: CellKey, run_dir: str, threads: int,
              splits: list[Any] | None) -> tuple[CellRecord, bool]:
    """Body of one Ray task: run the cell through the shared cell code.

    ``splits``: the driver's folds for the cell's (dataset, setting), used only where this worker
    cannot see ``run_dir``. Returns (record, whether it was written to the run directory).
    """
    if (Path(run_dir) / "config.json").is_file():
        return execute_cell(config, key, run_dir, threads), True
    # this node does not see the driver's run directory (no shared filesystem): work in a
    # scratch directory with the driver's splits; the driver stores the returned record
    if splits is not None:  # None: the driver could not make them, and the cell fails saying so
        DATA_CACHE.seed_splits(key.dataset, config, key.setting, splits)
    with tempfile.TemporaryDirectory(prefix="causcell-bench-cell-") as scratch:
        return execute_cell(config, key, scratch, threads), False


def _ray_init(ray: Any, address: str | None) -> bool:
    """Connect to ``address`` or start a quiet local instance; True if this call started Ray."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a benchmark run
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
             "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=cpu_count(), **quiet)
    except ConnectionError as e:
        if "AuthToken" in str(e.__cause__ or ""):
            hint = ("the cluster uses token authentication: set RAY_AUTH_MODE=token and the cluster's token "
                    "(RAY_AUTH_TOKEN or ~/.ray/auth_token) on this machine")
        else:
            hint = "check --ray-address (e.g. HEAD_IP:6379, ray://HEAD_IP:10001 or auto)"
        raise BenchError(f"cannot connect to the Ray cluster at {address!r} ({e}); {hint}") from e
    return True


@dataclass(frozen=True)
class RayExecutor:
    """:class:`~causcell_bench.grid.executors.base.Executor` running cells as Ray tasks on the cluster at
    ``address`` (None: a local Ray instance this executor starts and stops)."""

    address: str | None = None

    def run_cells(self, keys: list[CellKey], config: RunConfig, run_dir: Path, *, started: Started,
                  finished: Finished, claim: TryClaim | None = None) -> None:
        # every cell is claimed before any is submitted: the cluster queues them all at once
        batch = [k for k in keys if claim(k)] if claim is not None else list(keys)
        if batch:
            run_cells_ray(config, run_dir, batch, address=self.address, started=started, finished=finished)


def run_cells_ray(
    config: RunConfig,
    run_dir: str | Path,
    keys: list[CellKey],
    *,
    address: str | None = None,
    started: Started,
    finished: Finished,
) -> None:
    """Run ``keys`` as Ray tasks on the cluster at ``address`` (None: a local Ray instance).

    ``started(key)`` is called as a cell is handed to a free slot, ``finished(outcome)`` as it ends
    (a :class:`causcell_bench.grid.cell.CellOutcome`). Ctrl-C cancels the outstanding tasks and re-raises.
    """
    ray = _import_ray()
    if not keys:
        return
    run_dir = Path(run_dir).resolve()  # workers may run in another working directory
    store = ResultStore(run_dir)
    owns = _ray_init(ray, address)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive", False)]
        # nodes without CPUs (a head started with --num-cpus 0) run no cells
        node_cpus = [c for n in nodes if (c := n.get("Resources", {}).get("CPU", 0)) > 0] or [1]
        res = task_resources(config, node_cpus, ray.cluster_resources().get("GPU", 0))
        threads = config.effective_threads()
        remote = ray.remote(max_retries=1, **res)(cell_task)
        # ship each (dataset, setting)'s splits once (prepare() put them in the driver's cache);
        # used only by workers that cannot see the run directory
        split_refs: dict[tuple[str, str], Any] = {}
        for pair in dict.fromkeys((k.dataset, k.setting) for k in keys):
            held = DATA_CACHE.cached_splits(pair[0], config, pair[1])
            if held is not None:
                split_refs[pair] = ray.put(held)

        queue = list(keys)
        running: dict[Any, tuple[CellKey, float]] = {}
        try:
            while queue or running:
                room = _capacity(ray, res) - len(running)
                while queue and room > 0:
                    key = queue.pop(0)
                    # the driver's thread count, not the task's CPUs: it changes the numbers and is hashed
                    ref = remote.remote(config, key, str(run_dir), threads,
                                        split_refs.get((key.dataset, key.setting)))
                    running[ref] = (key, time.perf_counter())
                    started(key)
                    room -= 1
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in done:
                    key, t0 = running.pop(ref)
                    finished(_outcome(ray, ref, key, store, config, time.perf_counter() - t0))
        except KeyboardInterrupt:
            for ref in running:
                ray.cancel(ref, force=True)
            raise
    finally:
        if owns:
            ray.shutdown()


def _outcome(ray: Any, ref: Any, key: CellKey, store: ResultStore, config: RunConfig, seconds: float) -> CellOutcome:
    """Turn a finished task into a CellOutcome, storing what the worker could not."""
    try:
        record, stored = ray.get(ref)
    except Exception as e:  # noqa: BLE001 - the worker died twice (or the task was lost): fail this cell only
        old = store.read_record(key)
        failed = CellRecord.failed(
            config, key, f"Ray worker died before writing a result, after 1 retry ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})",
            threads=None, total_s=seconds, executor="ray")
        # an ok record with the current hash was written just before the worker died: keep it
        if not (old is not None and old.status == "ok" and old.config_hash == failed.config_hash):
            store.write_record(failed)
        return collect(store, key, None, seconds, config)
    if not stored:  # the worker wrote to its own scratch directory
        store.write_record(record)
    return collect(store, key, 0, seconds, config)
