"""Atomic file writes and JSON-safe values, for every module that writes results or saved models.

A leaf module (it imports only our exception types), so that low-level modules such as the method base class
can write files atomically without importing the result store (which imports, through the run
configuration, the method base class: an import cycle). :mod:`causcell_bench.store` uses
:func:`atomic_write_json`, and its callers may import it from there too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from causcell_bench.errors import DiskError

# errors that mean "this storage cannot take the file", whatever the writer (h5py, torch, matplotlib)
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)
# libraries that wrap the OSError in their own exception keep its text
_DISK_WORDS = ("no space left", "disk quota", "read-only file system", "input/output error", "file write failed",
               "errno 28", "errno = 28", "error code: 28")


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: NaN/inf as null (read back as NaN), numpy scalars and arrays as
    numbers and lists, a DataFrame as a list of row dicts, a Path as its string, mapping keys as strings."""
    import numpy as np
    import pandas as pd

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return [jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return jsonable(obj.item())
    return obj


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file handle (``mode`` "w" or "wb") whose content replaces ``path`` only when the block ends
    without an error, so that a reader sees the old file or the whole new one, never a part (a
    temporary file in the same directory, fsync, rename)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = _tree_size(Path(tmp))
        Path(tmp).unlink(missing_ok=True)
        err = disk_error(e, path, written) if isinstance(e, Exception) else None
        if err is not None:
            raise err from e
        raise


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _disk_cause(e: BaseException) -> str | None:
    """Why ``e`` (or an exception it wraps) means the storage refused the file, or None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return os.strerror(e.errno).lower()
        text = str(e).lower()
        for word in _DISK_WORDS:
            if word in text:
                if "28" in word or "space" in word:
                    return "no space left on device"
                return "the write failed (a full or failing disk)" if word == "file write failed" else word
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return None


def disk_error(e: BaseException, path: Path, written: int = 0) -> DiskError | None:
    """A :class:`DiskError` naming ``path``, its folder, the free space and what was written before the
    failure, when ``e`` is a storage failure; None otherwise."""
    cause = _disk_cause(e)
    if cause is None:
        return None
    folder = Path(path).parent
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    need = f", {_size(written)} written before it failed" if written else ""
    # space cannot be freed on a read-only file system: only another folder helps there
    fix = ("choose an output folder you can write to" if "read-only" in cause
           else "free some space or choose another output folder")
    return DiskError(f"cannot write {Path(path).name} in {folder}: {cause} ({free}{need}); nothing was left "
                     f"half-written: {fix}, and run the command again")


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file path next to ``path`` (same suffix, for writers that read the format from it);
    when the block ends without an error it replaces ``path``, otherwise it is removed, so no partial
    file is ever left at ``path``. A full, failing or read-only disk raises :class:`DiskError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        written = _tree_size(tmp)
        tmp.unlink(missing_ok=True)
        err = disk_error(e, path, written) if isinstance(e, Exception) else None
        if err is not None:
            raise err from e
        raise


@contextlib.contextmanager
def atomic_dir(path: Path, *, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """A temporary folder next to ``path`` whose contents land in ``path`` when the block ends without
    an error, and which is removed otherwise: a failed write leaves ``path`` as it was.

    A new or empty ``path`` is replaced by the folder in one rename. Into a folder that holds other
    files, the new entries are moved one by one (same-named ones replaced, the others kept), the
    entries named in ``last`` (a manifest) removed first and moved in last, so a folder with a
    manifest never describes a mix of old and new files. A full, failing or read-only disk raises
    :class:`DiskError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        if not path.exists():
            os.replace(tmp, path)
            return
        for name in last:
            (path / name).unlink(missing_ok=True)
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name in last):
            target = path / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
        tmp.rmdir()
    except BaseException as e:
        written = _tree_size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        err = disk_error(e, path, written) if isinstance(e, Exception) else None
        if err is not None:
            raise err from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: Path, data: Any, *, indent: int = 1) -> None:
    """:func:`atomic_write_text` of ``data`` as JSON (made :func:`jsonable`, keys sorted)."""
    atomic_write_text(path, json.dumps(jsonable(data), indent=indent, sort_keys=True))
