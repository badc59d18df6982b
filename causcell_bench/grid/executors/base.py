"""The interface every executor implements."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from causcell_bench.config import RunConfig
from causcell_bench.grid.cell import CellOutcome
from causcell_bench.grid.record import CellKey

Started = Callable[[CellKey], None]
Finished = Callable[[CellOutcome], None]
TryClaim = Callable[[CellKey], bool]


class Executor(Protocol):
    """Runs grid cells and reports each as it starts and ends."""

    def run_cells(self, keys: list[CellKey], config: RunConfig, run_dir: Path, *, started: Started,
                  finished: Finished, claim: TryClaim | None = None) -> None:
        """Run ``keys`` (each writes its record in ``run_dir``); return when all have finished.

        ``started(key)`` is called as a cell starts and ``finished(outcome)`` as it ends, in the
        calling thread. ``claim(key)`` (if given) must return True before a cell may run: False means
        another process has it, and the cell is skipped without a report. Ctrl-C (KeyboardInterrupt)
        stops the running cells and is re-raised.
        """
        ...
