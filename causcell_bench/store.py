"""Result store: one JSON file per grid cell, written atomically.

A cell's file appears complete or not at all (write to a temporary file in the
same directory, fsync, rename), so a run killed at any moment loses at most
the cells in flight, and a rerun can trust every file it finds.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
        safe = self.dataset.replace("/", "_").replace("\\", "_")
        return f"cells/{safe}/{self.method}/{self.setting}/fold{self.fold}_seed{self.seed}.json"

    def __str__(self) -> str:
        return f"{self.dataset}/{self.method}/{self.setting}/fold{self.fold}/seed{self.seed}"


def _jsonable(obj: Any) -> Any:
    """NaN/inf are not JSON: store them as null (read back as NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _jsonable(obj.item())
    return obj


def atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_jsonable(data), fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """The cell files of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)

    def path(self, key: CellKey) -> Path:
        return self.root / key.relpath

    def write(self, key: CellKey, record: dict[str, Any]) -> None:
        atomic_write_json(self.path(key), record)

    def read(self, key: CellKey) -> dict[str, Any] | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, OSError):
            return None  # unreadable: treat as not done

    def records(self) -> Iterator[dict[str, Any]]:
        for p in sorted((self.root / "cells").glob("**/*.json")):
            try:
                yield json.loads(p.read_text())
            except (json.JSONDecodeError, OSError):
                continue
