"""The data of a grid's cells: dataset names, loading with the run's overrides, the per-process
cache (:data:`DATA_CACHE`), where a run directory keeps its splits, and the data fingerprint that
tells a replaced dataset file from the one a run was made on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from causcell_bench.config import RunConfig
from causcell_bench.errors import BenchError
from causcell_bench.grid.record import safe_name


def splits_dir(run_dir: str | Path, name: str) -> Path:
    """The folder a run keeps dataset ``name``'s splits and data stamps in."""
    return Path(run_dir) / "splits" / safe_name(name)


def split_path(run_dir: str | Path, name: str, setting: str) -> Path:
    """Where a run saves the splits of one (dataset, setting)."""
    return splits_dir(run_dir, name) / f"{setting}.json"


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


def load_dataset(name: str, config: RunConfig) -> tuple[Any, Any]:
    """Load one dataset with the run's overrides applied (concepts, DAG, HVGs)."""
    from causcell_bench.datasets import validate_adata
    from causcell_bench.registry import dataset_loader

    kw = dict(config.dataset_kwargs)
    if "n_genes" in kw and name.lower() != "synthetic" and any(d.lower() == "synthetic" for d in config.datasets):
        del kw["n_genes"]  # a run beside synthetic: --n-genes sizes the simulator, the other datasets keep theirs
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
