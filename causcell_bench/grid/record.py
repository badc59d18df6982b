"""A grid cell's identity (:class:`CellKey`), the hash that says whether its stored result is current
(:func:`cell_hash`), and the record every cell file holds (:class:`CellRecord`).

The record's JSON is the run directory's format: :meth:`CellRecord.to_dict` writes exactly the keys
each kind of record has always had (absent fields are left out, not written as null), so run
directories made before this class existed resume, and :meth:`CellRecord.from_dict` reads any
record back without losing a key it does not know.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from causcell_bench.config import RunConfig

INTERRUPTED_NOTE = "interrupted before the cell finished; the next run reruns it"
REDUNDANT_NOTE = "identical to CausCell: the dataset has no DAG edges"


def safe_name(name: str) -> str:
    """A dataset name as one path component (a spec's name may hold slashes)."""
    return name.replace("/", "_").replace("\\", "_")


@dataclass(frozen=True)
class CellKey:
    """One grid cell: the unit of work, caching and parallelism."""

    dataset: str
    method: str
    setting: str
    fold: int
    seed: int

    @property
    def relpath(self) -> str:
        return f"cells/{safe_name(self.dataset)}/{self.method}/{self.setting}/fold{self.fold}_seed{self.seed}.json"

    def __str__(self) -> str:
        return f"{self.dataset}/{self.method}/{self.setting}/fold{self.fold}/seed{self.seed}"


def key_of(record: Mapping[str, Any]) -> CellKey:
    """The cell a record describes (its five key fields)."""
    return CellKey(str(record["dataset"]), str(record["method"]), str(record["setting"]), int(record["fold"]),
                   int(record["seed"]))


def cell_hash(config: RunConfig, key: CellKey, threads: int | None = None) -> str:
    """Hash of everything that determines one cell's result; a changed hash means recompute.

    ``threads``: the count the cell ran with (default ``config.effective_threads()``); float results
    depend on it, as they do on the device.
    """
    payload = {
        "dataset": key.dataset, "method": key.method, "setting": key.setting, "fold": key.fold, "seed": key.seed,
        "preset": config.preset, "params": config.method_params.get(key.method, {}), "probe": config.probe,
        "counterfactual": config.counterfactual, "device": config.device,
        "threads": threads or config.effective_threads(), **config.data_key(),
        **({"cf_concept": config.cf_concept} if config.cf_concept else {}),
        **({"truth_samples": config.truth_samples} if _averages_for_truth(key.method) else {}),
        # parts are scored only where the setting runs one fold x seed; the default keeps the hashes
        # of records written before cell_parts was hashed
        **({"cell_parts": config.cell_parts}
           if config.cell_parts != type(config).model_fields["cell_parts"].default
           and config.single_unit(key.setting) else {}),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _averages_for_truth(method: str) -> bool:
    """Whether ``method`` samples its counterfactuals (``Capabilities.stochastic`` and ``.counterfactual``):
    only then does the number of draws averaged for the truth task change its metrics (and its hash)."""
    from causcell_bench.registry import get_method

    try:
        caps = get_method(method).capabilities
    except Exception:  # noqa: BLE001 - an unknown or broken method fails later, with its own message
        return False
    return bool(caps.stochastic and caps.counterfactual)


@dataclass(frozen=True)
class RunStamp:
    """What a cell that ran in this process was run with, stamped on each of its outcomes."""

    preset: str
    device: str
    versions: dict[str, str]
    started: str

    @classmethod
    def now(cls, config: RunConfig) -> RunStamp:
        from causcell_bench.provenance import package_versions

        return cls(config.preset, config.device, package_versions(), time.strftime("%Y-%m-%dT%H:%M:%S"))


# the fields of a successful cell's result (what grid.cell.evaluate_cell returns)
RESULT_FIELDS = ("metrics", "na", "timings", "degenerate", "kind", "n_train", "n_test", "n_genes", "capabilities")


@dataclass
class CellRecord:
    """The JSON record of one cell.

    ``status``: ok | failed | interrupted (stopped by Ctrl-C or SIGTERM: rerun next time) |
    skipped_redundant (see ``runner.redundant_cells``). Fields left None are not written. ``extra``
    holds what :meth:`from_dict` found and this class has no field for (a newer version's keys,
    explicit nulls), so a record read and written again is unchanged.
    """

    key: CellKey
    status: str
    config_hash: str | None = None
    threads: int | None = None
    preset: str | None = None
    device: str | None = None
    versions: dict[str, str] | None = None
    started: str | None = None
    error: str | None = None
    traceback: str | None = None
    total_s: float | None = None
    peak_rss_mb: float | None = None
    executor: str | None = None
    same_as: str | None = None
    note: str | None = None
    # the result of an ok cell (RESULT_FIELDS)
    metrics: dict[str, float] | None = None
    na: list[str] | None = None
    timings: dict[str, float] | None = None
    degenerate: dict[str, str] | None = None
    kind: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    n_genes: int | None = None
    capabilities: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # --- the records the grid writes ------------------------------------------------------------
    @classmethod
    def _of(cls, config: RunConfig, key: CellKey, status: str, threads: int | None,
            stamp: RunStamp | None, **fields: Any) -> CellRecord:
        """``threads`` None: the hash uses the config's thread count and the record names none."""
        rec = cls(key, status, config_hash=cell_hash(config, key, threads=threads), threads=threads, **fields)
        if stamp is not None:
            rec.preset, rec.device = stamp.preset, stamp.device
            rec.versions, rec.started = stamp.versions, stamp.started
        return rec

    @classmethod
    def ok(cls, config: RunConfig, key: CellKey, result: Mapping[str, Any], *, threads: int, stamp: RunStamp,
           total_s: float, peak_rss_mb: float) -> CellRecord:
        """A cell that fitted and scored; ``result`` holds :data:`RESULT_FIELDS`."""
        known = {k: v for k, v in result.items() if k in RESULT_FIELDS}
        rec = cls._of(config, key, "ok", threads, stamp, total_s=total_s, peak_rss_mb=peak_rss_mb, **known)
        rec.extra = {k: v for k, v in result.items() if k not in RESULT_FIELDS}
        return rec

    @classmethod
    def failed(cls, config: RunConfig, key: CellKey, error: str, *, threads: int | None,
               stamp: RunStamp | None = None, traceback: str | None = None, total_s: float | None = None,
               peak_rss_mb: float | None = None, executor: str | None = None) -> CellRecord:
        """A cell that raised, whose worker died, or whose data could not be split."""
        return cls._of(config, key, "failed", threads, stamp, error=error, traceback=traceback, total_s=total_s,
                       peak_rss_mb=peak_rss_mb, executor=executor)

    @classmethod
    def interrupted(cls, config: RunConfig, key: CellKey, error: str, *, threads: int, total_s: float,
                    stamp: RunStamp | None = None) -> CellRecord:
        """A cell stopped by Ctrl-C or SIGTERM: never done, so the next run reruns it."""
        return cls._of(config, key, "interrupted", threads, stamp, error=error, total_s=total_s)

    @classmethod
    def redundant(cls, config: RunConfig, key: CellKey) -> CellRecord:
        """A CausCell_IND cell not run because it would repeat the CausCell cell (no DAG edges)."""
        return cls._of(config, key, "skipped_redundant", config.effective_threads(), None, preset=config.preset,
                       device=config.device, same_as="CausCell", note=REDUNDANT_NOTE)

    # --- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The record as stored: key fields, status, then every field that is set, then ``extra``."""
        k = self.key
        out: dict[str, Any] = {"dataset": k.dataset, "method": k.method, "setting": k.setting, "fold": k.fold,
                               "seed": k.seed, "status": self.status}
        for f in _VALUE_FIELDS:
            v = getattr(self, f)
            if v is not None:
                out[f] = v
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CellRecord:
        """A stored record (as :func:`causcell_bench.store.parse_record` accepts it) as a CellRecord."""
        values = {f: record[f] for f in _VALUE_FIELDS if record.get(f) is not None}
        extra = {k: v for k, v in record.items() if k not in _KEY_FIELDS and k not in values}
        return cls(key_of(record), str(record["status"]), **values, extra=extra)


_KEY_FIELDS = ("dataset", "method", "setting", "fold", "seed", "status")
_VALUE_FIELDS = tuple(f.name for f in dataclasses.fields(CellRecord) if f.name not in ("key", "status", "extra"))
