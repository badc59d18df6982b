"""Atomic file writes and JSON-safe values, for every module that writes results or saved models.

A leaf module (it imports nothing of ours), so that low-level modules such as the method base class
can write files atomically without importing the result store (which imports, through the run
configuration, the method base class: an import cycle). :mod:`causcell_bench.store` uses
:func:`atomic_write_json`, and its callers may import it from there too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


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
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: Path, data: Any, *, indent: int = 1) -> None:
    """:func:`atomic_write_text` of ``data`` as JSON (made :func:`jsonable`, keys sorted)."""
    atomic_write_text(path, json.dumps(jsonable(data), indent=indent, sort_keys=True))
