"""What a running grid cell is doing, shown by the process that runs the grid.

A cell reports through :attr:`Method.progress_callback` (steps or epochs done of the total, recent
loss); :class:`CellProgressWriter` turns each report into a small JSON file under
``OUT/progress/`` (atomic, so a reader never sees half a file), and :class:`ProgressMonitor`, a
thread in the grid's process, polls those files: under a terminal it draws one rich bar per
running cell below the grid bar (with its ETA); in a pipe or CI log it prints a line per running
cell every ``line_every`` seconds. Files work the same for forked, spawned and Ray cells on a
shared run directory, and a display bug can never touch a cell.

Third-party libraries' own progress bars and warnings (Lightning, scvi-tools, JAX) go to the cell's
log file instead of the terminal (:func:`cell_output_to`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from causcell_bench.grid.record import CellKey
from causcell_bench.store import atomic_write_json


def progress_path(run_dir: str | Path, key: CellKey) -> Path:
    return Path(run_dir) / "progress" / key.relpath.removeprefix("cells/")


def log_path(run_dir: str | Path, key: CellKey) -> Path:
    """Where a cell's third-party output (progress bars, warnings, logging) is written."""
    return (Path(run_dir) / "logs" / key.relpath.removeprefix("cells/")).with_suffix(".log")


class CellProgressWriter:
    """A :data:`~causcell_bench.methods.base.ProgressFn` that writes each report of one cell to its file."""

    def __init__(self, run_dir: str | Path, key: CellKey) -> None:
        self.path = progress_path(run_dir, key)
        self.started = time.time()
        self._phase: tuple[Any, ...] | None = None
        self._first: tuple[int, float] = (0, self.started)

    def __call__(self, p: Any) -> None:
        now = time.time()
        # the rate is measured from the first report of a phase on: data loading, set-up and a JIT
        # compilation before it (scGen's first epoch is ~100x the others) would otherwise inflate the ETA,
        # and a second phase (MichiGAN's GAN after its VAE) has a rate of its own
        if (p.what, p.unit, p.total) != self._phase:
            self._phase, self._first = (p.what, p.unit, p.total), (p.done, now)
        atomic_write_json(self.path, {"done": p.done, "total": p.total, "unit": p.unit, "what": p.what,
                                      "loss": p.loss, "time": now, "started": self.started,
                                      "since_done": self._first[0], "since": self._first[1]})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def read_progress(run_dir: str | Path, key: CellKey) -> dict[str, Any] | None:
    try:
        return json.loads(progress_path(run_dir, key).read_text())
    except (OSError, ValueError):
        return None  # not started reporting yet, or a method that does not report


def describe(p: dict[str, Any] | None) -> str:
    """One line: ``training 450/1500 steps, loss 0.412, ETA 1m10s``."""
    if not p:
        return "starting"
    done, total = p.get("done", 0), p.get("total", 0)
    text = f"{p.get('what', 'training')} {done}/{total} {p.get('unit', 'steps')}"
    if p.get("loss") is not None:
        text += f", loss {p['loss']:.4g}"
    # the rate since the phase's first report (files of older versions: since the cell started)
    base, since = p.get("since_done", 0), p.get("since", p.get("started", 0))
    elapsed = max(p.get("time", 0) - since, 0.0)
    if base < done < total and elapsed > 0:
        text += f", ETA {_duration(elapsed / (done - base) * (total - done))}"
    return text


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressMonitor:
    """Polls the progress files of the running cells and shows them (see the module docstring)."""

    def __init__(self, run_dir: str | Path, bar: Any | None, log: Callable[[str], None], *,
                 interactive: bool, interval: float = 1.0, line_every: float = 30.0) -> None:
        self.run_dir, self.bar, self.log = Path(run_dir), bar, log
        self.interactive, self.interval, self.line_every = interactive, interval, line_every
        self._running: dict[CellKey, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cell-progress", daemon=True)
        self._last_line = time.monotonic()

    def __enter__(self) -> ProgressMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._running):
            self.finished(key)

    def started(self, key: CellKey) -> None:
        with self._lock:
            task = self.bar.add_task(f"  {key.method}/{key.setting}/fold{key.fold}", total=None) \
                if self.interactive and self.bar is not None else None
            self._running[key] = task

    def finished(self, key: CellKey) -> None:
        with self._lock:
            task = self._running.pop(key, None)
            if task is not None and self.bar is not None:
                self.bar.remove_task(task)
        progress_path(self.run_dir, key).unlink(missing_ok=True)

    def poll(self) -> None:
        """One round: update the bars, or print the lines when they are due."""
        with self._lock:
            running = dict(self._running)
        now = time.monotonic()
        line_due = not self.interactive and now - self._last_line >= self.line_every
        for key, task in running.items():
            p = read_progress(self.run_dir, key)
            if task is not None and p and self.bar is not None:
                with contextlib.suppress(KeyError):  # the cell finished meanwhile
                    self.bar.update(task, total=p["total"], completed=p["done"],
                                    description=f"  {key.method}/{key.setting}/fold{key.fold}: {describe(p)}")
            if line_due:
                self.log(f"  {key}: {describe(p)}")
        if line_due:
            self._last_line = now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as e:  # the display must never stop the grid
                warnings.warn(f"progress display failed: {e}", RuntimeWarning, stacklevel=1)
                return


@contextlib.contextmanager
def cell_output_to(path: str | Path) -> Iterator[Path]:
    """Send this process's stdout, stderr (file descriptors 1 and 2, so C-level and Lightning output
    too), Python warnings and logging to ``path`` for the duration; restore them afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as fh, warnings.catch_warnings():
        warnings.simplefilter("default")  # each distinct warning once, into the log
        handler = logging.StreamHandler(fh)
        root = logging.getLogger()
        root.addHandler(handler)
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            root.removeHandler(handler)
    if path.stat().st_size == 0:
        path.unlink()  # a quiet cell leaves no empty log behind
