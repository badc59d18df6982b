"""Result store: one JSON file per grid cell, written atomically, plus the claims that let several
processes share one run directory.

A cell's file appears complete or not at all (write to a temporary file in the
same directory, fsync, rename), so a run killed at any moment loses at most
the cells in flight, and a rerun can trust every file it finds.

Before a process runs a cell it claims it: ``OUT/claims/<dataset>/<method>/<setting>/foldF_seedS.json``
is created with ``O_CREAT | O_EXCL`` (one winner, on a local or NFS filesystem) and holds the host,
pid and start time of the claimant; it is removed once the cell's record is written. Another process
skips a claimed cell, and takes the claim over only when its owner is dead (same host, no such pid)
or the claim is older than a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from causcell_bench.errors import BenchError
# the atomic writers live in a leaf module that the method base class can import without this one;
# atomic_write_json is importable from here too, as are CellKey and key_of, which live with the record
from causcell_bench.fileio import atomic_write_json
from causcell_bench.grid.record import CellKey, CellRecord, cell_hash, key_of

if TYPE_CHECKING:
    from causcell_bench.config import RunConfig

RECORD_FIELDS = ("dataset", "method", "setting", "fold", "seed", "status")
CLAIM_TIMEOUT_S = 24 * 3600.0
# a claim file is created empty and filled a moment later: an empty one older than this lost its writer
_EMPTY_CLAIM_GRACE_S = 60.0


def parse_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a readable cell file, else (None, why it cannot be used)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot be read ({type(e).__name__}: {e})"
    if not text.strip():
        return None, "is empty"
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"is not valid JSON (truncated?): {e}"
    if not isinstance(rec, dict):
        return None, f"holds a JSON {type(rec).__name__}, not a cell record (an object)"
    missing = [f for f in RECORD_FIELDS if f not in rec]
    if missing:
        return None, f"is not a cell record (no {', '.join(missing)})"
    try:
        key = key_of(rec)
    except (TypeError, ValueError):
        return None, "has a fold or seed that is not a number"
    if not path.as_posix().endswith(key.relpath):
        return None, f"describes {key}, which belongs in {key.relpath}"
    problem = _content_problem(rec)
    if problem is not None:
        return None, problem
    return rec, None


def _content_problem(rec: dict[str, Any]) -> str | None:
    """Why a well-formed record still cannot be mixed into this version's tables: written by another
    version of the package, a metric this version does not know, or a metric value that is not a number."""
    import causcell_bench

    written_by = (rec.get("versions") or {}).get("causcell-bench") if isinstance(rec.get("versions"), dict) else None
    if written_by is not None and str(written_by) != causcell_bench.__version__:
        return (f"was written by causcell-bench {written_by} (this is {causcell_bench.__version__}); delete it to "
                "recompute the cell, or read the run with that version")
    metrics = rec.get("metrics")
    if metrics is None:
        return None
    if not isinstance(metrics, dict):
        return f"holds metrics as a JSON {type(metrics).__name__}, not an object"
    text = [k for k, v in metrics.items() if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))]
    if text:
        return f"holds metric value(s) that are not numbers ({text[0]}={metrics[text[0]]!r}); was it edited?"
    return None


def unknown_metrics(rec: dict[str, Any]) -> list[str]:
    """The metric keys of a record that this version does not declare (a renamed or retired metric)."""
    import causcell_bench.metrics  # noqa: F401 - importing the package declares every metric
    from causcell_bench.metrics import registry

    metrics = rec.get("metrics")
    return sorted(k for k in metrics if registry.base_name(k) not in registry.METRICS) if isinstance(metrics, dict) else []


class ResultStore:
    """The cell files of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)

    def path(self, key: CellKey) -> Path:
        return self.root / key.relpath

    def write(self, key: CellKey, record: dict[str, Any]) -> None:
        atomic_write_json(self.path(key), record)

    def write_record(self, record: CellRecord) -> None:
        self.write(record.key, record.to_dict())

    def remove(self, key: CellKey) -> None:
        self.path(key).unlink(missing_ok=True)

    def read(self, key: CellKey) -> dict[str, Any] | None:
        """The cell's record, or None when absent or unusable (a cell to run again)."""
        p = self.path(key)
        if not p.is_file():
            return None
        rec, _ = parse_record(p)
        return rec

    def read_record(self, key: CellKey) -> CellRecord | None:
        """:meth:`read` as a :class:`CellRecord`."""
        rec = self.read(key)
        return None if rec is None else CellRecord.from_dict(rec)

    def files(self) -> list[Path]:
        return sorted((self.root / "cells").glob("**/*.json"))

    def records(self) -> Iterator[dict[str, Any]]:
        """Every usable record (stale ones included; :func:`read_run` separates those)."""
        for p in self.files():
            rec, _ = parse_record(p)
            if rec is not None:
                yield rec


# --- reading a whole run (report, check) ------------------------------------------------
@dataclass
class RunContents:
    """What a run directory holds, sorted into what a table may use and what it must not."""

    records: list[dict[str, Any]] = field(default_factory=list)
    """Readable records that match the run's configuration."""
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    """(path, why) of cell files that cannot be used."""
    stale: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    """(path, record) of cells computed with other settings than the run's config.json."""
    claims: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    """(path, claim) of cells some process is running (or died running)."""
    config_note: str | None = None
    """Why staleness could not be checked (no or unreadable config.json), else None."""
    dropped: list[tuple[Path, list[str]]] = field(default_factory=list)
    """(path, metric keys) of records kept without metrics this version does not know."""


def run_config(run_dir: str | Path) -> Any:
    """The RunConfig in ``run_dir/config.json`` (the last run's), or raise ValueError saying why not."""
    from pydantic import ValidationError

    from causcell_bench.config import RunConfig

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        return RunConfig.model_validate(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__})") from None


def record_hash(config: RunConfig, record: dict[str, Any]) -> str:
    """The hash a record must carry to be current under ``config`` (with the threads it ran with)."""
    threads = record.get("threads")
    return cell_hash(config, key_of(record), threads=threads if isinstance(threads, int) and threads > 0 else None)


def read_run(run_dir: str | Path) -> RunContents:
    """Every cell file of a run, sorted into usable, unreadable and stale records, plus live claims."""
    run_dir = Path(run_dir)
    out = RunContents()
    try:
        config = run_config(run_dir)
    except ValueError as e:
        config, out.config_note = None, f"{e}: cells are not checked against the run's settings"
    for p in ResultStore(run_dir).files():
        rec, why = parse_record(p)
        if rec is None:
            out.unreadable.append((p, str(why)))
        elif config is not None and rec.get("config_hash") != record_hash(config, rec):
            out.stale.append((p, rec))
        else:
            unknown = unknown_metrics(rec)
            if unknown:  # a retired or renamed metric: left out of the tables by name, the rest kept
                rec = {**rec, "metrics": {k: v for k, v in rec["metrics"].items() if k not in unknown}}
                out.dropped.append((p, unknown))
            out.records.append(rec)
    done = {str(key_of(r)) for r in out.records}
    # a dead process's claim on a cell whose record it did write is a harmless leftover
    out.claims = [(p, c) for p, c in ClaimStore(run_dir).all() if not (c.get("stale") and c.get("cell") in done)]
    return out


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a run of ours: a config.json that ``run`` wrote (a JSON object naming its
    datasets and methods), a cells/ folder, or the data/*.fingerprint that :func:`causcell_bench.api.benchmark`
    writes before its first cell."""
    path = Path(path)
    if (path / "cells").is_dir() or any((path / "data").glob("*.fingerprint")):
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and {"datasets", "methods"} <= set(config)


def check_run_out(path: str | Path, *, flag: str, force: str) -> None:
    """Refuse to spread a run's folders (cells/, claims/, logs/, splits/, report/, config.json) among a
    user's files: a BenchError when ``path`` is a folder that holds files but no run. A new or empty
    folder, or a run directory (to resume), passes. ``flag`` names the option, ``force`` how to allow it."""
    path = Path(path)
    if not path.is_dir() or is_run_dir(path):
        return
    refuse_other_files(path, flag=flag, lacks="is not a run directory (no config.json or cells/)", force=force,
                       what="the run")


def refuse_other_files(path: Path, *, flag: str, lacks: str, force: str, what: str) -> None:
    """A BenchError when folder ``path`` holds any file: an output would be spread among the user's files.
    ``lacks`` says what would have made it ours, ``force`` how to allow it, ``what`` what is written."""
    names = sorted(p.name for p in path.iterdir())
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise BenchError(f"{flag} {path} holds other files ({shown}) and {lacks}; give a new or empty folder, or "
                         f"{force} to write {what} among them")


# --- claims -------------------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from /proc (Linux), or None: the start time tells a reused pid
    from the original, the state a zombie (dead, not yet reaped) from a live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def _proc_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and, given its ``start`` time, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: existence is all we know
    state, started = stat
    return state not in ("Z", "X") and (start is None or started == start)


@dataclass(frozen=True)
class Claim:
    key: CellKey
    path: Path
    token: str


class ClaimStore:
    """Atomic claims on the cells of one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path, timeout_s: float = CLAIM_TIMEOUT_S) -> None:
        self.root = Path(run_dir) / "claims"
        self.timeout_s = float(timeout_s)
        self.host = socket.gethostname()

    def path(self, key: CellKey) -> Path:
        return self.root / key.relpath.removeprefix("cells/")

    @staticmethod
    def read(path: Path) -> dict[str, Any] | None:
        """The claim's contents; {} for a claim still being written or garbled; None when there is none."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            info = json.loads(text)
        except json.JSONDecodeError:
            return {}
        return info if isinstance(info, dict) else {}

    def why_stale(self, path: Path, info: dict[str, Any]) -> str | None:
        """Why a claim no longer holds (its owner died or it timed out), or None while it holds."""
        now = time.time()
        if not info.get("pid"):
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                return "released"
            return f"unreadable claim {age:.0f}s old" if age > _EMPTY_CLAIM_GRACE_S else None
        age = now - float(info.get("started_epoch", now))
        if age > self.timeout_s:
            return f"claimed {age / 3600:.1f} h ago, over the {self.timeout_s / 3600:g} h timeout"
        if info.get("host") == self.host and not pid_alive(int(info["pid"]), info.get("pid_start")):
            return f"process {info['pid']} on {self.host} is gone"
        return None

    def acquire(self, key: CellKey) -> Claim | None:
        """Claim ``key`` for this process, taking over a dead or timed-out claim; None if another holds it."""
        path = self.path(key)
        claim = self._create(key, path)
        if claim is not None:
            return claim
        info = self.read(path)
        if info is None or self.why_stale(path, info) is not None:
            with self._lock():  # one taker-over at a time: two must not both remove and recreate
                info = self.read(path)
                if info is not None and self.why_stale(path, info) is None:
                    return None
                path.unlink(missing_ok=True)
                return self._create(key, path)
        return None

    def _create(self, key: CellKey, path: Path) -> Claim | None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        token = uuid.uuid4().hex
        info = {"host": self.host, "pid": os.getpid(), "pid_start": _proc_start(os.getpid()), "token": token,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "started_epoch": time.time(), "cell": str(key)}
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return Claim(key, path, token)

    def release(self, claim: Claim) -> None:
        """Remove the claim if it is still ours (it may have been taken over after a timeout)."""
        info = self.read(claim.path)
        if info is not None and info.get("token") == claim.token:
            claim.path.unlink(missing_ok=True)

    def clear_stale(self, keys: Iterable[CellKey]) -> list[CellKey]:
        """Remove the stale claims (dead owner or timed out) on ``keys``; return the cells cleared.

        A process killed after writing a cell's record but before releasing its claim leaves a claim
        on a finished cell that no rerun would otherwise touch (a rerun skips finished cells)."""
        cleared = []
        for key in keys:
            path = self.path(key)
            info = self.read(path)
            if info is None or self.why_stale(path, info) is None:
                continue
            with self._lock():  # the same check-then-remove as a takeover in acquire()
                info = self.read(path)
                if info is not None and self.why_stale(path, info) is not None:
                    path.unlink(missing_ok=True)
                    cleared.append(key)
        return cleared

    def holder(self, key: CellKey) -> dict[str, Any] | None:
        """The live claim on ``key`` (its contents), or None when it is free or its claim is stale."""
        path = self.path(key)
        info = self.read(path)
        if info is None or self.why_stale(path, info) is not None:
            return None
        return info

    def all(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every claim file with its contents (stale ones included, marked with ``"stale"``)."""
        out = []
        for p in sorted(self.root.glob("**/*.json")) if self.root.is_dir() else []:
            info = self.read(p)
            if info is None:
                continue
            why = self.why_stale(p, info)
            out.append((p, {**info, **({"stale": why} if why else {})}))
        return out

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / ".lock")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (flock on ``path``, created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): at worst two processes do the same work
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_out_dir(path: Path, flag: str = "--out") -> bool:
    """Refuse an output directory that cannot be made or written, checking without leaving anything
    behind; returns whether it exists already."""
    if path.exists() and not path.is_dir():
        raise BenchError(f"{flag} {path} is a file; give a directory path")
    check_writable(path, flag)
    return path.exists()


def check_writable(path: Path, flag: str) -> None:
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BenchError(f"{flag} {path}: {ancestor} is a file, so no directory can be made under it; give another path")
    try:  # os.access says yes to root on a read-only mount: try it
        tempfile.TemporaryDirectory(dir=ancestor, prefix=".causcell-bench-probe-").cleanup()
    except OSError as e:
        raise BenchError(f"{flag} {path}: cannot write in {ancestor} ({e.strerror or e}); choose a writable location") from None
